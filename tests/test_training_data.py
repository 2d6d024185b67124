import json

import pytest
from transformers import AutoTokenizer

from loraship.handler.pipelines.instruction import END_KEY, format_prompt, format_response
from loraship.training.data import (
    FAQ_CSV,
    IGNORE_INDEX,
    DataError,
    check_rows,
    collate,
    encode_example,
    encode_rows,
    read_qa_csv,
    read_rows,
    split_rows,
)

DOLLY = [
    {
        "instruction": "Summarise the text.",
        "context": "SageMaker is a managed ML service.",
        "response": "A managed ML service.",
        "category": "summarization",
    },
    {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"},
]


@pytest.fixture(scope="module")
def default_model():
    from loraship.core.models import prepare_default

    return prepare_default()


@pytest.fixture(params=["tiny_neox", "tiny_llama", "default_model"])
def tokenizer(request):
    return AutoTokenizer.from_pretrained(request.getfixturevalue(request.param))


def test_faq_file_reads_as_question_answer_rows():
    rows = read_qa_csv(FAQ_CSV)
    assert len(rows) == 154
    assert rows[0]["instruction"] == "What is Amazon SageMaker?"  # BOM gone
    assert rows[0]["row"] == 1 and rows[0]["context"] == ""
    assert all(r["instruction"] and r["response"] for r in rows)


def test_tutorial_split_is_deterministic_and_pinned():
    rows = read_qa_csv(FAQ_CSV)
    train, test = split_rows(rows, 14, 0)
    # numpy.random.default_rng(0).permutation, as datasets.Dataset.train_test_split(test_size=14, seed=0)
    assert [r["row"] for r in test] == [100, 106, 75, 153, 99, 149, 139, 53, 95, 112, 54, 65, 72, 55]
    assert len(train) == 140 and {r["row"] for r in train}.isdisjoint(r["row"] for r in test)
    assert split_rows(rows, 14, 0) == (train, test)
    assert split_rows(rows, 14, 1)[1] != test
    assert len(split_rows(rows, 0.1, 0)[1]) == 16  # ceil, as datasets does
    with pytest.raises(DataError, match="leaves 0 of 154 rows"):
        split_rows(rows, 154, 0)


def test_csv_with_header_bom_and_dolly_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes('\ufeffinstruction,context,response\nQ1,C1,A1\n"Q2\nmore",,A2\n'.encode())
    rows = read_rows(path)
    assert [(r["instruction"], r["context"], r["response"], r["row"]) for r in rows] == [
        ("Q1", "C1", "A1", 2),
        ("Q2\nmore", "", "A2", 3),
    ]


def test_csv_named_columns_and_optional_context(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nQ,A\n")
    assert read_qa_csv(path, {"instruction": "question", "response": "answer", "context": "ctx"})[0] == {
        "instruction": "Q",
        "context": "",
        "response": "A",
        "row": 2,
    }
    with pytest.raises(DataError, match="no header row"):
        read_qa_csv(path, {"instruction": "question", "response": "answer"}, header=False)
    with pytest.raises(DataError, match="has no column"):
        read_qa_csv(path, {"instruction": "q", "response": "answer"}, header=True)


def test_csv_short_row_is_named(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("Q1,A1\nQ2\n")
    with pytest.raises(DataError, match="row 2 has 1 column"):
        read_qa_csv(path)


def test_dolly_jsonl_puts_context_in_the_prompt(tmp_path, tiny_llama):
    path = tmp_path / "dolly.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in DOLLY))
    rows = read_rows(path)
    assert rows[0]["context"] == DOLLY[0]["context"] and rows[1]["row"] == 2
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ex = encode_example(tok, rows[0])
    prompt = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE_INDEX])
    assert prompt == format_prompt(DOLLY[0]["instruction"], DOLLY[0]["context"])
    assert "Input:\nSageMaker is a managed ML service." in prompt


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2 is not JSON"),
        ("[1, 2]", "line 2 is a list"),
        ('{"instruction": "Q"}', "line 2 has no key 'response'"),
        ('{"instruction": "Q", "response": 3}', "line 2: 'response' is a int"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(DOLLY[1]) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_rows(path)


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="set data.format"):
        read_rows(tmp_path / "d.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_rows(tmp_path / "nope.csv")


def test_empty_instruction_or_response_is_named_or_dropped(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("Q1,A1\n,A2\nQ3,\nQ4,A4\n")
    rows = read_rows(path, columns={"instruction": 0, "response": 1})
    with pytest.raises(DataError, match=r"row 2 \(instruction\), row 3 \(response\); set data.drop_empty"):
        check_rows(rows)
    kept, dropped = check_rows(rows, drop_empty=True)
    assert [r["row"] for r in kept] == [1, 4] and dropped == 2


def test_mask_covers_exactly_the_prompt(tokenizer):
    """On real tokenisations: the prompt ids are what serving feeds, the labels are the response,
    its end marker and EOS, and nothing of the prompt is scored."""
    rows = read_qa_csv(FAQ_CSV)[:25] + [{"instruction": "Summarise", "context": "Some text.", "response": "Ok."}]
    for row in rows:
        ex = encode_example(tokenizer, row)
        prompt_ids = tokenizer(format_prompt(row["instruction"], row.get("context")))["input_ids"]
        n = len(prompt_ids)
        assert ex["input_ids"][:n] == prompt_ids
        assert ex["labels"][:n] == [IGNORE_INDEX] * n
        assert ex["labels"][n:] == ex["input_ids"][n:] and IGNORE_INDEX not in ex["labels"][n:]
        assert ex["labels"][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ex["labels"][n:-1]) == format_response(row["response"])
        assert tokenizer.decode(ex["labels"][n:-1]).endswith(END_KEY)


def test_eos_stays_supervised_when_pad_is_eos(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rows = read_qa_csv(FAQ_CSV)[:3]
    examples = [encode_example(tok, r) for r in rows]
    batch = collate(examples, pad_id=tok.eos_token_id)
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        assert batch["labels"][i, n - 1] == tok.eos_token_id  # the real EOS is a label
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()  # padding (also EOS ids) is not
        assert batch["attention_mask"][i].sum() == n
        assert (batch["input_ids"][i, n:] == tok.eos_token_id).all()


def test_long_rows_are_dropped_and_counted_not_truncated(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rows = read_qa_csv(FAQ_CSV)[:20]
    lengths = [len(encode_example(tok, r)["input_ids"]) for r in rows]
    limit = sorted(lengths)[10]
    kept, dropped = encode_rows(tok, rows, max_length=limit)
    assert dropped == [r["row"] for r, n in zip(rows, lengths) if n > limit] and dropped
    assert len(kept) + len(dropped) == 20
    assert all(len(ex["input_ids"]) <= limit and ex["labels"][-1] == tok.eos_token_id for ex in kept)

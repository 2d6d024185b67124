"""Continuous batching in-process: rows join and leave between decode steps, each with its own adapter,
length and sampling, and every row's result is what the same request gives alone."""

import threading

import pytest
import torch
from harness import init_input
from tiny_models import save_random_adapter

from loraship.handler.batching import Engine, keep, merge
from loraship.handler.pipelines.instruction import format_prompt
from loraship.handler.requests import GenerationParams
from loraship.handler.scheduler import Job, Scheduler

QUESTIONS = [
    "What is Amazon SageMaker?",
    "How do I train a model?",
    "Which regions are supported?",
    "Can I use my own container?",
    "What does a notebook instance cost?",
]


@pytest.fixture(scope="module")
def service(tiny_neox, tmp_path_factory):
    from loraship.handler.service import HandlerService

    root = tmp_path_factory.mktemp("sched-adapters")
    svc = HandlerService()
    svc.handle(init_input({"model_id": str(tiny_neox), "model_dir": str(tiny_neox), "adapter_roots": str(root)}))
    for name, seed in (("alpha", 1), ("beta", 2)):
        svc.register(name, str(save_random_adapter(tiny_neox, root / name, seed=seed)))
    return svc


def engine(svc) -> Engine:
    gen = svc.generator
    return Engine(gen.tokenizer, gen.device, gen.eos_ids, gen.stop_sequences)


def ids(svc, question: str) -> list[int]:
    return svc.generator.tokenizer(format_prompt(question))["input_ids"]


def alone(svc, question: str, params: GenerationParams, adapter: str = ""):
    """The static path, one request at a time: the reference."""
    model = svc.adapters.ensure_loaded([adapter])
    return svc.generator.generate([format_prompt(question)], params, [adapter], model=model)[0]


def test_rows_that_join_at_different_steps_equal_their_greedy_result_alone(service):
    """Three adapters (and the base), five prompts, lengths 3 to 40, joining in three waves."""
    plan = [
        (QUESTIONS[i % 5], adapter, n)
        for i, (adapter, n) in enumerate(
            [("", 40), ("alpha", 7), ("beta", 25), ("alpha", 3), ("", 12), ("beta", 33), ("", 5), ("alpha", 18)]
        )
    ]
    sched = Scheduler(engine(service), service.adapters.ensure_loaded, max_rows=8)
    done = threading.Semaphore(0)
    jobs = []
    try:
        for wave in (plan[:3], plan[3:6], plan[6:]):
            steps = sched.steps
            for question, adapter, n in wave:
                seq = sched.engine.new_sequence(ids(service, question), GenerationParams(max_new_tokens=n), adapter)
                jobs.append(sched.submit(Job(seq, lambda s, t: None, lambda s, t: done.release())))
            while sched.steps < steps + 4 and not all(j.seq.done for j in jobs):
                threading.Event().wait(0.01)
        for _ in jobs:
            assert done.acquire(timeout=60)
    finally:
        sched.close()
    for job, (question, adapter, n) in zip(jobs, plan):
        ref = alone(service, question, GenerationParams(max_new_tokens=n), adapter)
        got = job.seq
        assert (got.text, len(got.tokens), got.finish_reason) == (ref.text, ref.generated_tokens, ref.finish_reason)
    assert len({j.seq.text for j in jobs}) > 4  # the adapters and lengths made a difference
    assert sched.batch is None and sched.running == []  # nothing is left holding a cache


def test_finished_rows_leave_at_once_and_their_padding_is_trimmed(service):
    eng = engine(service)
    model = service.adapters.ensure_loaded([""])
    short, mid, long = (ids(service, q) for q in ("Hi?", QUESTIONS[1], QUESTIONS[4]))
    assert len(short) < len(mid) < len(long)
    seqs = [eng.new_sequence(p, GenerationParams(max_new_tokens=n, min_new_tokens=n)) for p, n in
            ((long, 2), (short, 6), (mid, 4))]  # fmt: skip
    batch = eng.prefill(model, seqs)
    sizes, widths = [len(batch)], [batch.mask.shape[1]]
    while batch is not None:
        batch = eng.step(model, batch)
        if batch is not None:
            sizes.append(len(batch))
            widths.append(batch.mask.shape[1])
            # the cache holds no column that is padding in every row
            assert bool(batch.mask[:, 0].any())
            assert all(layer.keys.shape[2] == batch.mask.shape[1] for layer in batch.cache.layers)
    assert sizes == [3, 2, 2, 1, 1]
    assert widths[2] < len(long) + 3  # the long prompt's row left: its columns went with it


def test_merge_and_keep_are_inverse_on_rows(service):
    eng = engine(service)
    model = service.adapters.ensure_loaded([""])
    a = eng.prefill(model, [eng.new_sequence(ids(service, QUESTIONS[0]), GenerationParams(max_new_tokens=9))])
    b = eng.prefill(model, [eng.new_sequence(ids(service, QUESTIONS[4]), GenerationParams(max_new_tokens=9))])
    both = merge(a, b)
    assert len(both) == 2 and both.mask.shape[1] == max(a.mask.shape[1], b.mask.shape[1])
    back = keep(both, [0])
    assert back.mask.shape == a.mask.shape
    assert torch.equal(back.cache.layers[0].keys, a.cache.layers[0].keys)
    assert keep(both, []) is None


def test_seeded_sampling_in_a_batch_equals_the_same_seed_alone(service):
    eng = engine(service)
    model = service.adapters.ensure_loaded(["", "alpha"])
    sampled = GenerationParams(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=7)

    def run(seqs):
        batch = eng.prefill(model, seqs)
        while batch is not None:
            batch = eng.step(model, batch)
        return seqs

    (lone,) = run([eng.new_sequence(ids(service, QUESTIONS[2]), sampled, "alpha")])
    crowd = run(
        [
            eng.new_sequence(ids(service, QUESTIONS[0]), GenerationParams(max_new_tokens=20)),
            eng.new_sequence(ids(service, QUESTIONS[2]), sampled, "alpha"),
            eng.new_sequence(ids(service, QUESTIONS[3]), sampled.__class__(max_new_tokens=5, do_sample=True, seed=3)),
        ]
    )
    assert crowd[1].tokens == lone.tokens
    other_seed = run(
        [eng.new_sequence(ids(service, QUESTIONS[2]), sampled.__class__(**{**vars(sampled), "seed": 8}), "alpha")]
    )
    assert other_seed[0].tokens != lone.tokens


def test_streamed_pieces_add_up_to_the_text_and_hold_back_the_stop_marker(service):
    sched = Scheduler(engine(service), service.adapters.ensure_loaded)
    pieces, finished = [], threading.Event()
    params = GenerationParams(max_new_tokens=30, stop=("e",))  # a stop string the tiny model meets soon
    try:
        seq = sched.engine.new_sequence(ids(service, QUESTIONS[0]), params)
        reports = []

        def done(s, tokens):
            reports.append(tokens)
            finished.set()

        sched.submit(Job(seq, lambda s, t: reports.append(t), done))
        assert finished.wait(60)
    finally:
        sched.close()
    tokens = [t for report in reports for t in report]
    pieces = [text for _, text in tokens]
    assert seq.finish_reason == "stop" and len(reports) > 1
    assert [i for i, _ in tokens] == list(range(len(seq.tokens)))  # every token once, in order
    assert "".join(pieces) == seq.text == alone(service, QUESTIONS[0], params).text
    assert "e" not in "".join(text for report in reports[:-1] for _, text in report)  # held back, then cut


def test_a_cancelled_row_leaves_and_frees_its_slot(service):
    sched = Scheduler(engine(service), service.adapters.ensure_loaded, max_rows=1)
    ended = {}
    started = threading.Event()
    try:
        long = sched.engine.new_sequence(
            ids(service, QUESTIONS[0]), GenerationParams(max_new_tokens=400, min_new_tokens=400)
        )
        short = sched.engine.new_sequence(ids(service, QUESTIONS[1]), GenerationParams(max_new_tokens=4))
        first = sched.submit(
            Job(long, lambda s, t: started.set(), lambda s, t: ended.setdefault("long", s.finish_reason))
        )
        sched.submit(Job(short, lambda s, t: None, lambda s, t: ended.setdefault("short", s.finish_reason)))
        assert started.wait(60)
        assert len(sched.running) == 1  # max_rows: the short one waits
        sched.cancel(first)
        for _ in range(600):
            if "short" in ended:
                break
            threading.Event().wait(0.05)
    finally:
        sched.close()
    assert ended["long"] == "cancelled" and len(long.tokens) < 400
    assert ended["short"] in ("length", "eos", "stop")


def test_admission_keeps_to_the_row_and_token_budgets(service):
    prompt = ids(service, QUESTIONS[0])
    budget = 2 * (len(prompt) + 10)  # two rows of 10 new tokens fit, a third does not
    sched = Scheduler(engine(service), service.adapters.ensure_loaded, max_rows=8, max_batch_tokens=budget)
    widest, done = [0], threading.Semaphore(0)

    def seen(seq, delta):
        widest[0] = max(widest[0], len(sched.running))

    try:
        for _ in range(5):
            seq = sched.engine.new_sequence(prompt, GenerationParams(max_new_tokens=10, min_new_tokens=10))
            sched.submit(Job(seq, seen, lambda s, t: done.release()))
        for _ in range(5):
            assert done.acquire(timeout=60)
    finally:
        sched.close()
    assert widest[0] == 2


def test_perf_continuous_figures_run_on_a_tiny_model(tiny_neox):
    """`loraship perf --continuous` end to end on the tiny model (figures only; nothing asserts a speed)."""
    from loraship.perf import run_continuous

    fig = run_continuous(str(tiny_neox), tokens=4, concurrency=3, requests_total=60)
    assert fig["mix"] == ["perf1", "perf2", ""]
    assert fig["step_one_adapter_s"] > 0 and fig["mixed_vs_one_adapter_step"] > 0
    assert fig["engine_vs_generate_speed"] > 0
    assert len(fig["rss_mb_every_50_requests"]) == 2

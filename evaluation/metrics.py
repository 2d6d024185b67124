"""Per-sample answer metrics: ROUGE-L F1, token F1 and exact match, on normalised text.

Normalisation is SQuAD's (and fmeval's): lower-case, drop punctuation, the articles a/an/the and
extra whitespace. ROUGE-L is Google's ``rouge-score`` with the Porter stemmer (fmeval's default),
so nothing is downloaded. Every function scores one prediction against one reference.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall over normalised tokens (SQuAD's F1)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence) with stemming; 0.0 when either side is empty."""
    if not prediction.strip() or not reference.strip():
        return float(prediction.strip() == reference.strip())
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure

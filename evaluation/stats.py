"""Paired bootstrap over documents: how sure is an adapter-minus-base difference?

Base and adapter are scored on the same documents, so each resample draws documents (with
replacement) and takes the difference of the two means on *those* documents. Pairing removes the
document-to-document spread that both share, which is most of the noise on a small test set.
"""

from __future__ import annotations

import math

import numpy as np

CHUNK = 1_000


def paired_bootstrap(
    base, adapter, *, higher_is_better: bool, iterations: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict:
    """Mean difference (adapter - base) with a percentile confidence interval, and per-document wins.

    ``better`` / ``worse`` / ``same`` count documents where the adapter beat, trailed or tied the
    base in the metric's good direction. With any NaN among the scores, every figure is NaN.
    """
    base = np.asarray(base, dtype=float)
    adapter = np.asarray(adapter, dtype=float)
    if base.shape != adapter.shape or base.ndim != 1:
        raise ValueError(f"paired scores must be two equal-length lists, got {base.shape} and {adapter.shape}")
    n = len(base)
    out = {
        "n": n,
        "delta": math.nan,
        "ci": [math.nan, math.nan],
        "level": level,
        "iterations": iterations,
        "seed": seed,
        "better": 0,
        "worse": 0,
        "same": 0,
    }
    if n == 0 or not (np.isfinite(base).all() and np.isfinite(adapter).all()):
        return out
    diff = adapter - base
    sign = 1.0 if higher_is_better else -1.0
    out.update(
        delta=float(diff.mean()),
        better=int((sign * diff > 0).sum()),
        worse=int((sign * diff < 0).sum()),
        same=int((diff == 0).sum()),
    )
    rng = np.random.default_rng(seed)
    means = []
    for done in range(0, iterations, CHUNK):
        idx = rng.integers(0, n, size=(min(CHUNK, iterations - done), n))
        means.append(diff[idx].mean(axis=1))
    means = np.concatenate(means)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    out["ci"] = [float(lo), float(hi)]
    return out

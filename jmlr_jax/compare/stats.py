"""Statistics over questions: bootstrap intervals for means and paired mean differences, McNemar for accuracies."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean of a - b over paired questions and its percentile bootstrap interval (questions resampled)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired_bootstrap needs two equal-length non-empty vectors, got {a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"n": int(len(d)), "mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": float(d.mean()),
            "lo": float(lo), "hi": float(hi), "excludes_0": bool(lo > 0 or hi < 0)}


def bootstrap_mean(a: Sequence[float], *, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of `a` over questions and its percentile bootstrap interval (questions resampled)."""
    a = np.asarray(a, np.float64)
    if a.ndim != 1 or not len(a):
        raise ValueError(f"bootstrap_mean needs a non-empty vector, got shape {a.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    lo, hi = np.quantile(a[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
    return {"n": int(len(a)), "mean": float(a.mean()), "lo": float(lo), "hi": float(hi)}


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """Exact McNemar test (two-sided binomial on the discordant pairs) of accuracy a vs b."""
    from scipy.stats import binomtest

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape or not len(a):
        raise ValueError(f"mcnemar needs two equal-length non-empty vectors, got {a.shape} and {b.shape}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"n": int(len(a)), "acc_a": float(a.mean()), "acc_b": float(b.mean()), "diff": float(a.mean() - b.mean()),
            "only_a": only_a, "only_b": only_b, "p": float(p)}

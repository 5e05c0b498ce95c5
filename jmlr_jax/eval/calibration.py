"""Answer-letter prior removal for option log-likelihood scores (a label-free diagnostic).

Small models often prefer one option position whatever the question ("A" for most questions). Dividing each
question's option distribution by the set's average distribution over positions (the prior the model puts on
each letter, estimated without labels from the same questions; Zheng et al. 2023, "Large Language Models Are
Not Robust Multiple Choice Selectors", PriDe, and Zhao et al. 2021, contextual calibration) shows how much
the scores know beyond the letter prior. Reported next to, never instead of, the plain accuracy.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log of the option distribution from option log-likelihoods (last axis)."""
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def remove_letter_prior(logliks: Sequence[Sequence[float]]) -> list[int]:
    """Predicted option per question after dividing out the mean option distribution.

    Questions are grouped by their number of options (the prior is per position, so a 5-option question does
    not share it with 4-option ones). Returns argmax_i [log p_q(i) - log mean_q' p_q'(i)] for each question.
    """
    preds = [-1] * len(logliks)
    by_count: dict[int, list[int]] = {}
    for q, ll in enumerate(logliks):
        if len(ll) == 0:
            raise ValueError(f"question {q} has no option scores")
        by_count.setdefault(len(ll), []).append(q)
    for qs in by_count.values():
        logp_QxO = log_softmax([logliks[q] for q in qs])
        log_prior_O = np.log(np.exp(logp_QxO).mean(axis=0))
        for q, p in zip(qs, np.argmax(logp_QxO - log_prior_O, axis=1)):
            preds[q] = int(p)
    return preds

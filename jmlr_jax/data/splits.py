"""Training / held-out splits, fixed by record id (never by position, so they survive re-ordered files).

Training questions: MedMCQA dev minus a held-out part (ids whose hash falls in the held-out bucket) and
the PubMedQA PQA-L half that is not in the 500-question test split. Evaluation: MMLU-Med, PubMedQA test,
the MedMCQA held-out part. `training_records` refuses to return an evaluation question.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import gin

from jmlr_jax.data.sources import QARecord, read_qa
from jmlr_jax.errors import InputError


def heldout_bucket(record_id: str, fraction: float) -> bool:
    """Deterministic by id: sha1(id) mod 10,000 < fraction * 10,000."""
    h = int(hashlib.sha1(record_id.encode()).hexdigest()[:8], 16) % 10_000
    return h < fraction * 10_000


def split_medmcqa(records: Sequence[QARecord], heldout_fraction: float = 0.1):
    """-> (train, held-out)."""
    held = [r for r in records if heldout_bucket(r.id, heldout_fraction)]
    held_ids = {r.id for r in held}
    return [r for r in records if r.id not in held_ids], held


def pubmedqa_test_ids(path: str) -> set[str]:
    """PMIDs of the standard 500-question test split (`test_ground_truth.json`: PMID -> label)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PubMedQA test split not found: {path}")
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected a JSON object PMID -> answer")
    return set(map(str, data))


def split_pubmedqa(records: Sequence[QARecord], test_ids: set[str]):
    """-> (train, test)."""
    return [r for r in records if r.id not in test_ids], [r for r in records if r.id in test_ids]


@gin.configurable
def training_records(data_dir: str = "../shared/data", heldout_fraction: float = 0.1, include_medmcqa: bool = True,
                     include_pubmedqa: bool = True, max_examples: int = 0) -> list[QARecord]:
    """The JMLR training questions (see module doc); max_examples > 0 keeps the first N in a fixed order."""
    out: list[QARecord] = []
    test_ids = pubmedqa_test_ids(os.path.join(data_dir, "pubmedqa", "test_ground_truth.json"))
    if include_medmcqa:
        train, held = split_medmcqa(read_qa("medmcqa", os.path.join(data_dir, "medmcqa", "dev.jsonl")),
                                    heldout_fraction)
        assert not {r.id for r in train} & {r.id for r in held}
        out += train
    if include_pubmedqa:
        train, test = split_pubmedqa(read_qa("pubmedqa", os.path.join(data_dir, "pubmedqa", "ori_pqal.json")),
                                     test_ids)
        out += train
    leaked = [r.id for r in out if r.dataset == "pubmedqa" and r.id in test_ids]
    if leaked:
        raise InputError(f"evaluation questions in the training set: {leaked[:5]}")
    # Interleave datasets deterministically so a truncated run still sees both.
    out.sort(key=lambda r: hashlib.sha1(f"{r.dataset}/{r.id}".encode()).hexdigest())
    return out[:max_examples] if max_examples else out

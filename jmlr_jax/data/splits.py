"""Training / held-out splits, fixed by record id (never by position, so they survive re-ordered files).

Training questions: MedMCQA dev minus a held-out part (ids whose hash falls in the held-out bucket) and
the PubMedQA PQA-L half that is not in the 500-question test split, plus any files a run names
(`DataConfig.train_files`, e.g. MedQA's training set, as the paper trains on). Evaluation: MMLU-Med, PubMedQA
test, the MedMCQA held-out part. `training_records` refuses to return an evaluation question: the built-in splits
cannot hold one, and a named file's questions that are evaluation questions (the same stem and options) are left
out and counted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from typing import Iterable, Sequence

import numpy as np

import gin

from jmlr_jax.data.sources import MMLU_MED_SUBJECTS, QARecord, pubmedqa_ids, read_qa
from jmlr_jax.errors import InputError, check_counts
from jmlr_jax.retrieval.corpus import resolve_path


def heldout_bucket(record_id: str, fraction: float) -> bool:
    """Deterministic by id: sha1(id) mod 10,000 < fraction * 10,000."""
    h = int(hashlib.sha1(record_id.encode()).hexdigest()[:8], 16) % 10_000
    return h < fraction * 10_000


def split_medmcqa(records: Sequence[QARecord], heldout_fraction: float = 0.1):
    """-> (train, held-out)."""
    held = [r for r in records if heldout_bucket(r.id, heldout_fraction)]
    held_ids = {r.id for r in held}
    return [r for r in records if r.id not in held_ids], held


def split_pubmedqa(records: Sequence[QARecord], test_ids: set[str]):
    """-> (train, test)."""
    return [r for r in records if r.id not in test_ids], [r for r in records if r.id in test_ids]


# Options that point at other options ("all of the above", "both A and B") lose their meaning when moved.
_REFERS_TO_OPTIONS = re.compile(r"\b(above|below)\b|\b(both|all|none|neither)\b.*\b(these|of them)\b"
                                r"|\b[a-e]\s*(,|&|and|or)\s*[a-e]\b", re.IGNORECASE)


def shuffle_options(r: QARecord, seed: int = 0) -> QARecord:
    """The record with its options in a random order fixed by (seed, dataset, id); answer_idx follows.

    Teaches the generator to read the options rather than a letter prior (MedMCQA's answers are 32% A).
    Records whose options refer to other options, and unlabelled ones, are returned unchanged.
    """
    if r.answer_idx < 0 or any(_REFERS_TO_OPTIONS.search(o) for o in r.options):
        return r
    h = int(hashlib.sha1(f"{seed}/{r.dataset}/{r.id}".encode()).hexdigest()[:16], 16)
    perm = np.random.default_rng(h).permutation(len(r.options))
    return dataclasses.replace(r, options=tuple(r.options[i] for i in perm),
                               answer_idx=int(np.flatnonzero(perm == r.answer_idx)[0]))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a run's data lives and which training questions it uses (evaluation splits derive from it)."""

    data_dir: str = ""  # no default location: bind DATA in gin (configs/data/medical_qa.gin)
    heldout_fraction: float = 0.1  # of MedMCQA dev, held out for evaluation (fixed by id)
    include_medmcqa: bool = True
    include_pubmedqa: bool = True
    # More training questions: (kind, path) pairs, kind a `data.sources` reader (medqa, medmcqa, pubmedqa, mmlu),
    # path under data_dir unless absolute; e.g. (("medqa", "/data/MedQA/US/4_options/phrases_no_exclude_train.jsonl"),)
    train_files: tuple = ()
    # Questions never trained on besides the built-in evaluation sets, e.g. (("medqa", "medqa/us_4_options_dev.jsonl"),)
    # for the MedQA file a run is evaluated on.
    exclude_files: tuple = ()
    max_examples: int = 0
    option_shuffle_seed: int | None = None
    # The built-in sets' files, under data_dir unless absolute. The defaults are ../shared/data's layout; the
    # releases' own layouts work too, e.g. medmcqa_file = "medmcqa/dev.json" (MedMCQA's data.zip: JSON lines; the
    # Hugging Face copy's 0-based answers are told by their values, medmcqa_cop_base = 0 or 1 forces a base),
    # mmlu_dir = "mmlu/data/test" (all 57 subjects; mmlu_subjects picks the medical ones, () = every file; or one
    # file of the Hugging Face copy's records, e.g. its "all" test split as Parquet), pubmedqa_test_file = a Hugging
    # Face test split's records; any JSON lines may be Parquet.
    medmcqa_file: str = "medmcqa/dev.jsonl"
    medmcqa_cop_base: int | None = None
    pubmedqa_file: str = "pubmedqa/ori_pqal.json"
    pubmedqa_test_file: str = "pubmedqa/test_ground_truth.json"
    mmlu_dir: str = "mmlu_med"
    mmlu_subjects: tuple = MMLU_MED_SUBJECTS

    def __post_init__(self):
        check_counts(self, nonnegative=("max_examples",))
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"DataConfig: heldout_fraction={self.heldout_fraction!r} must be in [0, 1)")
        if self.medmcqa_cop_base not in (None, 0, 1):
            raise ValueError(f"DataConfig: medmcqa_cop_base={self.medmcqa_cop_base!r} must be 0, 1 or None (the "
                             f"file's)")

    def path(self, rel: str) -> str:
        """A data path (relative = under data_dir)."""
        return resolve_path(rel, self.require_dir())

    def medmcqa_records(self) -> list[QARecord]:
        """All of medmcqa_file, in file order."""
        return read_qa("medmcqa", self.path(self.medmcqa_file), cop_base=self.medmcqa_cop_base)

    def medmcqa_split(self) -> tuple[list[QARecord], list[QARecord]]:
        """(training part, held-out part) of medmcqa_file, fixed by id."""
        return split_medmcqa(self.medmcqa_records(), self.heldout_fraction)

    def pubmedqa_test_ids(self) -> set[str]:
        """PMIDs of the standard 500-question test split (`test_ground_truth.json`, or a copy's test records)."""
        return pubmedqa_ids(self.path(self.pubmedqa_test_file))

    def pubmedqa_split(self) -> tuple[list[QARecord], list[QARecord]]:
        """(non-test half, test half) of pubmedqa_file."""
        return split_pubmedqa(read_qa("pubmedqa", self.path(self.pubmedqa_file)), self.pubmedqa_test_ids())

    def mmlu_records(self) -> list[QARecord]:
        return read_qa("mmlu", self.path(self.mmlu_dir), subjects=self.mmlu_subjects)

    def require_dir(self) -> str:
        if not self.data_dir:
            raise InputError("DataConfig.data_dir is not set: bind DATA = '/path/to/data' in gin "
                             "(configs/data/medical_qa.gin) or --gin.DataConfig.data_dir=\"'...'\"")
        if not os.path.isdir(self.data_dir):  # said once, not as the first file some reader fails to open
            raise InputError(f"DataConfig.data_dir {self.data_dir!r} is not a directory: bind it to the directory "
                             "that holds medmcqa/, pubmedqa/, medquad/, guidelines/ ... (--gin.DataConfig.data_dir="
                             "\"'/path/to/data'\"; gin files set it from DATA)")
        return self.data_dir


def fingerprint(items: Iterable) -> str:
    """sha1 of data items in order (records as dataclasses, or JSON values): the same data, wherever read."""
    h = hashlib.sha1()
    for x in items:
        h.update(json.dumps(dataclasses.astuple(x) if dataclasses.is_dataclass(x) else x).encode())
    return h.hexdigest()


def training_records(cfg: DataConfig) -> list[QARecord]:
    """The JMLR training questions (see module doc); max_examples > 0 keeps the first N in a fixed order.

    option_shuffle_seed: when set, each question's options are permuted (`shuffle_options`); the
    questions and their order do not change.
    """
    data_dir, max_examples = cfg.require_dir(), cfg.max_examples
    out: list[QARecord] = []
    test_path = cfg.path(cfg.pubmedqa_test_file)
    test_ids = pubmedqa_ids(test_path) if cfg.include_pubmedqa or os.path.isfile(test_path) else set()
    if cfg.include_medmcqa:
        train, held = cfg.medmcqa_split()
        assert not {r.id for r in train} & {r.id for r in held}
        out += train
    if cfg.include_pubmedqa:
        out += cfg.pubmedqa_split()[0]
    leaked = [r.id for r in out if r.dataset == "pubmedqa" and r.id in test_ids]
    if leaked:
        raise InputError(f"evaluation questions in the training set: {leaked[:5]}")
    if cfg.train_files:
        out += _named_training_files(cfg, data_dir, test_ids)
    if not out:
        raise InputError("no training questions: DataConfig.include_medmcqa / include_pubmedqa are off and "
                         "DataConfig.train_files names none (or only evaluation questions)")
    # Interleave datasets deterministically so a truncated run still sees both.
    out.sort(key=lambda r: hashlib.sha1(f"{r.dataset}/{r.id}".encode()).hexdigest())
    out = out[:max_examples] if max_examples else out
    seed = cfg.option_shuffle_seed
    return out if seed is None else [shuffle_options(r, seed) for r in out]


def question_key(r: QARecord) -> str:
    """The same question in any file: its stem and its options (as a set), case and whitespace folded. The stem alone
    would not do: MedMCQA repeats stems such as "All of the following are true except" with other options."""
    fold = lambda t: " ".join(t.lower().split())  # noqa: E731
    return "\x1f".join([fold(r.question), *sorted(fold(o) for o in r.options)])


def _read_pairs(pairs: Sequence, data_dir: str, what: str) -> list[tuple[str, list[QARecord]]]:
    out = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise InputError(f"DataConfig.{what}: expected (kind, path) pairs, got {pair!r}")
        kind, path = pair
        out.append((path, read_qa(kind, resolve_path(path, data_dir))))
    return out


def _named_training_files(cfg: DataConfig, data_dir: str, pubmedqa_test: set[str]) -> list[QARecord]:
    """DataConfig.train_files' questions, ids prefixed with their file's name (files may reuse ids), minus every
    evaluation question: the built-in sets whose files are in data_dir (MMLU-Med, PubMedQA test, MedMCQA held-out)
    and DataConfig.exclude_files."""
    evaluation: list[QARecord] = []
    if os.path.exists(cfg.path(cfg.mmlu_dir)):
        evaluation += cfg.mmlu_records()
    pqa = cfg.path(cfg.pubmedqa_file)
    if os.path.isfile(pqa):
        evaluation += split_pubmedqa(read_qa("pubmedqa", pqa), pubmedqa_test)[1]
    if os.path.isfile(cfg.path(cfg.medmcqa_file)):
        evaluation += cfg.medmcqa_split()[1]
    evaluation += [r for _, recs in _read_pairs(cfg.exclude_files, data_dir, "exclude_files") for r in recs]
    keys = {question_key(r) for r in evaluation}
    ids = {(r.dataset, r.id) for r in evaluation if r.dataset in ("pubmedqa", "medmcqa")}  # ids that name a question
    out = []
    for path, recs in _read_pairs(cfg.train_files, data_dir, "train_files"):
        kept = [r for r in recs if question_key(r) not in keys and (r.dataset, r.id) not in ids]
        if len(kept) < len(recs):
            print(f"warning: {path}: {len(recs) - len(kept)} of {len(recs)} questions are evaluation questions; "
                  "left out of training", file=sys.stderr, flush=True)
        name = os.path.basename(path)
        out += [dataclasses.replace(r, id=f"{name}:{r.id}") for r in kept]
    return out

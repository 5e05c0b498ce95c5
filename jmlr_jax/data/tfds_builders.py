"""TFDS builders for the QA datasets (manual download, array_record files, no TensorFlow needed).

The datasets' licences forbid redistribution, so each builder reads the files a user downloaded into
`manual_dir` with the readers in data/sources.py (same formats, same file:line errors) and writes
array_record shards that `tfds.data_source` / grain read with random access:

    python launch/build_tfds.py --dataset=medmcqa --manual_dir=/data/medmcqa --data_dir=~/tensorflow_datasets
    records = tfds_records("medmcqa", "validation", data_dir="~/tensorflow_datasets")   # -> list[QARecord]

manual_dir contents (the public release file names, or a Hugging Face copy's Parquet files):
  medqa     train.jsonl / dev.jsonl / test.jsonl (any file whose name holds train / dev / test; or *.parquet so
            named, validation-*.parquet for dev), 4 or 5 options
  medmcqa   train.json / dev.json / test.json (JSON lines; .jsonl accepted); test is unlabelled (answer_idx -1);
            or the Hugging Face copy's train-* / validation-* / test-*.parquet (cop 0-based there)
  pubmedqa  ori_pqal.json (or the Hugging Face pqa_labeled *.parquet) + test_ground_truth.json -> splits train
            (the 500 non-test) and test (500)
  mmlu_med  <subject>_test.csv / _dev.csv / _val.csv, or the Hugging Face copy's test-* / dev-* /
            validation-*.parquet -> splits test / dev / validation, subject per record; only the medical subjects
            (sources.MMLU_MED_SUBJECTS), so a folder of all 57 subjects (or the "all" files) works
"""
from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from jmlr_jax.data.sources import (MMLU_MED_SUBJECTS, DataError, QARecord, mmlu_subject, pubmedqa_ids, read_medmcqa,
                                   read_medqa, read_mmlu, read_pubmedqa)

_TEXT = ("id", "dataset", "question", "context", "rationale", "subject")


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({**{k: tfds.features.Text() for k in _TEXT},
                                       "options": tfds.features.Sequence(tfds.features.Text()),
                                       "answer_idx": np.int32})


def _example(r: QARecord) -> tuple[str, dict]:
    return r.id, {**{k: getattr(r, k) for k in _TEXT}, "options": list(r.options), "answer_idx": r.answer_idx}


def _find(manual_dir: str, patterns: dict[str, tuple[str, ...]], what: str) -> dict[str, list[str]]:
    """split -> files matching its patterns in manual_dir (splits without files left out); none at all is an
    error."""
    out = {split: sorted(f for pat in pats for f in glob.glob(os.path.join(manual_dir, pat)))
           for split, pats in patterns.items()}
    out = {k: v for k, v in out.items() if v}
    if not out:
        looked = ", ".join(p for pats in patterns.values() for p in pats)
        raise DataError(f"{manual_dir}: no {what} files (looked for {looked}); see jmlr_jax/data/tfds_builders.py")
    return out


class _QABuilder(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=_features(), supervised_keys=None)


class MedQA(_QABuilder):
    """MedQA (USMLE) JSONL: question, options {A..}, answer, answer_idx."""

    def _split_generators(self, dl_manager):
        files = _find(dl_manager.manual_dir, {"train": ("*train*.jsonl", "*train*.parquet"),
                                              "validation": ("*dev*.jsonl", "*dev*.parquet", "validation-*.parquet"),
                                              "test": ("*test*.jsonl", "*test*.parquet")}, "MedQA")
        return {split: self._generate_examples(f) for split, f in files.items()}

    def _generate_examples(self, files):
        for f in files:
            for r in read_medqa(f):
                yield _example(r)


class MedMCQA(_QABuilder):
    """MedMCQA JSON lines: opa..opd, cop (1-based; 0-based in the Hugging Face copy: read from the values), exp,
    subject_name; test split unlabelled."""

    def _split_generators(self, dl_manager):
        files = _find(dl_manager.manual_dir, {"train": ("train.json*", "train-*.parquet"),
                                              "validation": ("dev.json*", "validation-*.parquet"),
                                              "test": ("test.json*", "test-*.parquet")}, "MedMCQA")
        return {split: self._generate_examples(f, split == "test") for split, f in files.items()}

    def _generate_examples(self, files, unlabelled):
        for f in files:
            for r in read_medmcqa(f, allow_unlabelled=unlabelled):
                yield _example(r)


class PubMedQA(_QABuilder):
    """PubMedQA PQA-L: ori_pqal.json split by test_ground_truth.json into train (500) and test (500)."""

    def _split_generators(self, dl_manager):
        files = _find(dl_manager.manual_dir, {"data": ("ori_pqal.json", "*.parquet"),
                                              "test": ("test_ground_truth.json",)}, "PubMedQA")
        if len(files) < 2 or len(files["data"]) > 1:
            raise DataError(f"{dl_manager.manual_dir}: PubMedQA needs one ori_pqal.json (or the Hugging Face "
                            "pqa_labeled .parquet) and test_ground_truth.json")
        test = pubmedqa_ids(files["test"][0])
        return {"train": self._generate_examples(files["data"][0], test, False),
                "test": self._generate_examples(files["data"][0], test, True)}

    def _generate_examples(self, path, test_ids, in_test):
        for r in read_pubmedqa(path):
            if (r.id in test_ids) == in_test:
                yield _example(r)


class MmluMed(_QABuilder):
    """MMLU medical subjects: headerless CSV per subject (question, A, B, C, D, answer), or the Hugging Face
    copy's records (subject per record)."""

    def _split_generators(self, dl_manager):
        files = _find(dl_manager.manual_dir, {"test": ("*_test.csv", "test-*.parquet"),
                                              "dev": ("*_dev.csv", "dev-*.parquet"),
                                              "validation": ("*_val.csv", "validation-*.parquet")},
                      "MMLU <subject>_<split>.csv or Hugging Face <split>-*.parquet")
        files = {k: [f for f in v if not f.endswith(".csv") or mmlu_subject(f) in MMLU_MED_SUBJECTS]
                 for k, v in files.items()}
        if not any(files.values()):
            raise DataError(f"{dl_manager.manual_dir}: no MMLU file of the medical subjects {MMLU_MED_SUBJECTS}")
        return {split: self._generate_examples(f) for split, f in files.items() if f}

    def _generate_examples(self, files):
        for f in files:
            for r in read_mmlu(f):
                if r.subject in MMLU_MED_SUBJECTS:  # the Hugging Face "all" files hold every subject
                    yield _example(r)


BUILDERS = {"medqa": MedQA, "medmcqa": MedMCQA, "pubmedqa": PubMedQA, "mmlu_med": MmluMed}


def build(dataset: str, manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Reads manual_dir, writes array_record shards under data_dir; a second call reuses them."""
    if dataset not in BUILDERS:
        raise DataError(f"unknown dataset {dataset!r}; known: {sorted(BUILDERS)}")
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir not found: {manual_dir}")
    builder = BUILDERS[dataset](data_dir=os.path.expanduser(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def tfds_records(dataset: str, split: str, data_dir: str) -> list[QARecord]:
    """The prepared split as QA records, in id order (random-access array_record source underneath)."""
    builder = BUILDERS[dataset](data_dir=os.path.expanduser(data_dir), file_format="array_record")
    if not builder.is_prepared():
        raise FileNotFoundError(f"{dataset} is not prepared under {data_dir}; run launch/build_tfds.py first")
    if split not in builder.info.splits:
        raise DataError(f"{dataset} has no split {split!r}; it has {sorted(builder.info.splits)}")
    source = builder.as_data_source(split=split)
    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)  # noqa: E731
    out = [QARecord(**{k: text(ex[k]) for k in _TEXT}, options=tuple(text(o) for o in ex["options"]),
                    answer_idx=int(ex["answer_idx"])) for ex in (source[i] for i in range(len(source)))]
    return sorted(out, key=lambda r: r.id)

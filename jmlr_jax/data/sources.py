"""Medical QA readers into one record type, following each dataset's public format.

  medqa     JSONL: {"question", "options": {"A": .., "B": ..}, "answer", "answer_idx": "A", "meta_info"?}
            (4- or 5-option files; `answer_idx` may be absent, then `answer` must equal one option); or the
            "-hf" copies' records {"id", "sent1": question, "sent2", "ending0".."ending3", "label": 0-based}
            (GBaker/MedQA-USMLE-4-options-hf, lm-evaluation-harness' medqa_4options)
  medmcqa   JSON lines: {"id", "question", "opa".."opd", "cop", "exp", "subject_name", ...}; `cop` is 1-based in
            the released files, 0-based in the Hugging Face copy: read from the file's values (a 0 or a 4; neither:
            0 for Parquet, the hub's format, 1 for JSON lines) unless cop_base says; unlabelled test rows (cop
            missing or -1) are an error unless allow_unlabelled=True
  pubmedqa  JSON object PMID -> {"QUESTION", "CONTEXTS", "LONG_ANSWER", "final_decision"} (the release's
            ori_pqal.json / ori_pqaa.json), or the Hugging Face copy's records {"pubid", "question",
            "context": {"contexts"}, "long_answer", "final_decision"} as JSON lines or a JSON list;
            options are yes / no / maybe; the abstract is the record's `context`
  mmlu      CSV rows: question, A, B, C, D, answer letter (the release's files have no header; a first row
            whose last column is "answer" or "target", as CSV exports of the hub copy have, is one); the subject
            is the file name without "_test.csv" / "_dev.csv" / "_val.csv"; a directory holds one file per
            subject (the release's data/test holds all 57: `subjects` picks some, e.g. MMLU_MED_SUBJECTS); or
            the Hugging Face copy's records {"question", "subject", "choices": [4 texts], "answer": 0-3 or a letter}
            (e.g. its "all" test split; or {"input", "A".."D", "target": letter}, as CSV-derived copies name them),
            `subjects` picking records; ids "<subject>-<n>" count per subject as the CSV's lines do, so both
            copies give the same ids

Every JSON-lines input may also be a Parquet file (`*.parquet`: a Hugging Face dataset as downloaded from the hub,
e.g. openlifescienceai/medmcqa, qiaojin/PubMedQA, cais/mmlu, lavita/MedQuAD), read row by row with the same checks.
Errors name the file and line (Parquet: row), or the record key, and say what is wrong.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import string
from typing import Callable, Iterator, Sequence

from jmlr_jax.errors import InputError

LETTERS = string.ascii_uppercase
# MMLU's medical subjects, as medical LLM papers (Med-PaLM, PMC-LLaMA, MEDITRON) report "MMLU-Medical".
MMLU_MED_SUBJECTS = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                     "professional_medicine")


class DataError(InputError):
    """A malformed QA record; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class QARecord:
    id: str
    dataset: str
    question: str
    options: tuple[str, ...]  # option i has letter LETTERS[i]
    answer_idx: int  # index into options; -1 when unlabelled
    context: str = ""  # e.g. the PubMedQA abstract
    rationale: str = ""  # MedMCQA explanation, PubMedQA long answer
    subject: str = ""

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer_idx] if self.answer_idx >= 0 else ""

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_idx] if self.answer_idx >= 0 else ""


def _text(v) -> str:
    return v.strip() if isinstance(v, str) else ""


def file_records(path: str, errors: str = "raise") -> Iterator[tuple[int, str, dict | DataError]]:
    """(record number, "file:line" or "file: row N", object) for each record of a JSON-lines file (blank lines
    skipped) or a Parquet file; malformed JSON or a non-object is a DataError, raised, or with errors="yield" put in
    the object's place (the caller skips or raises it; reading goes on). An unreadable Parquet file raises."""
    if path.endswith(".parquet"):
        yield from _parquet_rows(path)
        return
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
                err = None if isinstance(rec, dict) else DataError(f"{where}: expected a JSON object")
            except json.JSONDecodeError as e:
                err = DataError(f"{where}: malformed JSON ({e.msg})")
            if err is not None and errors == "raise":
                raise err
            yield n, where, rec if err is None else err


def _parquet_rows(path: str, columns: Sequence[str] | None = None) -> Iterator[tuple[int, str, dict]]:
    """`file_records` of a Parquet file; with `columns`, only those of them the file has (a scan of one field)."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        if columns is not None:
            columns = [c for c in columns if c in f.schema_arrow.names]
        batches = f.iter_batches(batch_size=1024, columns=columns)
        n = 0
        for batch in batches:
            for rec in batch.to_pylist():  # nested structs come as dicts, lists as lists
                n += 1
                yield n, f"{path}: row {n}", rec
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def _medqa_from_endings(rec: dict, where: str) -> dict:
    """A "-hf" copy's record (module doc) in the release's keys."""
    endings = [rec[f"ending{i}"] for i in range(len(LETTERS)) if rec.get(f"ending{i}") is not None]
    label = rec.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise DataError(f"{where}: label {label!r} is not the 0-based index of one of its {len(endings)} endings")
    question = " ".join(t for t in (_text(rec["sent1"]), _text(rec.get("sent2"))) if t)
    return {"id": rec.get("id"), "question": question, "options": dict(zip(LETTERS, endings)),
            "answer_idx": LETTERS[label]}


def read_medqa(path: str) -> Iterator[QARecord]:
    for n, (_, where, rec) in enumerate(file_records(path)):
        if "sent1" in rec and "options" not in rec:
            rec = _medqa_from_endings(rec, where)
        q, opts = _text(rec.get("question")), rec.get("options")
        if not q:
            raise DataError(f"{where}: empty or missing question")
        if isinstance(opts, list):  # some redistributions: [{"key": "A", "value": ...}] or plain strings
            opts = {o["key"]: o["value"] for o in opts} if opts and isinstance(opts[0], dict) else dict(zip(LETTERS, opts))
        if isinstance(opts, dict):  # a Parquet struct of 4- and 5-option rows has E = null in the 4-option ones
            opts = {k: v for k, v in opts.items() if v is not None}
        if not isinstance(opts, dict) or len(opts) < 2:
            raise DataError(f"{where}: options must map letters to texts (got {type(opts).__name__})")
        letters = sorted(opts)
        if letters != list(LETTERS[: len(letters)]) or not all(_text(opts[k]) for k in letters):
            raise DataError(f"{where}: options must be non-empty and lettered A, B, ... (got {letters})")
        options = tuple(_text(opts[k]) for k in letters)
        idx_letter = _text(rec.get("answer_idx"))
        if idx_letter:
            if idx_letter not in opts:
                raise DataError(f"{where}: answer_idx {idx_letter!r} is not one of the options {letters}")
            answer = letters.index(idx_letter)
        elif _text(rec.get("answer")) in options:
            answer = options.index(_text(rec.get("answer")))
        else:
            raise DataError(f"{where}: no answer_idx and the answer text matches no option")
        yield QARecord(str(rec.get("id") if rec.get("id") is not None else n), "medqa", q, options, answer,
                       subject=_text(rec.get("meta_info")))


def medmcqa_cop_base(path: str) -> int:
    """Whether a MedMCQA file's `cop` counts from 0 (the Hugging Face copy) or 1 (the release), from its values:
    a 0 says 0, a 4 says 1, both is an error; neither (every answer B-D or C: a small file) is the format's own
    convention, 0 for Parquet (only the hub's copy is), 1 for JSON lines."""
    first = {}
    rows = _parquet_rows(path, ["cop"]) if path.endswith(".parquet") else file_records(path, errors="yield")
    for _, where, rec in rows:  # bad records are reported by the reading pass
        if isinstance(rec, dict) and rec.get("cop") in (0, 4):
            first.setdefault(rec["cop"], where)
    if len(first) == 2:
        raise DataError(f"{first[4]}: cop=4 in a file whose {first[0]} has cop=0: answers neither 0-based (the "
                        f"Hugging Face copy) nor 1-based (the release)")
    if first:
        return 0 if 0 in first else 1
    return 0 if path.endswith(".parquet") else 1


def read_medmcqa(path: str, cop_base: int | None = None, allow_unlabelled: bool = False) -> Iterator[QARecord]:
    if cop_base is None:
        cop_base = medmcqa_cop_base(path)
    for n, (_, where, rec) in enumerate(file_records(path)):
        q = _text(rec.get("question"))
        options = tuple(_text(rec.get(k)) for k in ("opa", "opb", "opc", "opd"))
        if not q:
            raise DataError(f"{where}: empty or missing question")
        if not all(options):
            raise DataError(f"{where}: options opa..opd must all be non-empty strings")
        cop = rec.get("cop")
        if cop is None or cop == -1:
            if not allow_unlabelled:
                raise DataError(f"{where}: no answer (cop); pass allow_unlabelled=True for the unlabelled test set")
            answer = -1
        else:
            if not isinstance(cop, int) or not 0 <= cop - cop_base < 4:
                raise DataError(f"{where}: cop={cop!r} out of range for {cop_base}-based answers")
            answer = cop - cop_base
        yield QARecord(str(rec.get("id", n)), "medmcqa", q, options, answer, rationale=_text(rec.get("exp")),
                       subject=_text(rec.get("subject_name")))


PUBMEDQA_OPTIONS = ("yes", "no", "maybe")


def pubmedqa_entries(path: str) -> Iterator[tuple[str, str, dict | DataError]]:
    """(PMID, where, record in the release's keys) for every PubMedQA record of either format (module doc); a
    malformed JSON line, a record that is not an object, or a Hugging Face record without pubid comes as a
    DataError (PMID "" when unknown); a malformed single-JSON file raises."""
    data = None  # None: one record per JSON line or Parquet row
    if not path.endswith(".parquet"):
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # more than one JSON value: JSON lines
                raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if isinstance(data, dict) and "pubid" not in data:  # the release: PMID -> record
        for pmid, rec in data.items():
            where = f"{path}: record {pmid}"
            yield str(pmid), where, rec if isinstance(rec, dict) else DataError(f"{where}: expected a JSON object")
        return
    if isinstance(data, dict):  # JSON lines of one record
        rows = [(f"{path}:1", data)]
    elif isinstance(data, list):
        rows = [(f"{path}: item {i}", rec) for i, rec in enumerate(data)]
    elif data is None:
        rows = [(where, rec) for _, where, rec in file_records(path, errors="yield")]
    else:
        raise DataError(f"{path}: expected a JSON object PMID -> record, or Hugging Face records")
    for where, rec in rows:
        if isinstance(rec, DataError):
            yield "", where, rec
            continue
        if not isinstance(rec, dict) or rec.get("pubid") in (None, ""):
            yield "", where, DataError(f"{where}: expected a PubMedQA record with a pubid")
            continue
        ctx = rec.get("context")
        yield str(rec["pubid"]), where, {"QUESTION": rec.get("question"), "LONG_ANSWER": rec.get("long_answer"),
                                         "CONTEXTS": ctx.get("contexts") if isinstance(ctx, dict) else ctx,
                                         "final_decision": rec.get("final_decision")}


def read_pubmedqa(path: str) -> Iterator[QARecord]:
    for pmid, where, rec in pubmedqa_entries(path):
        if isinstance(rec, DataError):
            raise rec
        if not _text(rec.get("QUESTION")):
            raise DataError(f"{where}: missing QUESTION")
        ctx = rec.get("CONTEXTS")
        if not isinstance(ctx, list) or not all(isinstance(c, str) for c in ctx):
            raise DataError(f"{where}: CONTEXTS must be a list of strings")
        decision = _text(rec.get("final_decision")).lower()
        if decision not in PUBMEDQA_OPTIONS:
            raise DataError(f"{where}: final_decision {rec.get('final_decision')!r} not in yes/no/maybe")
        yield QARecord(pmid, "pubmedqa", rec["QUESTION"].strip(), PUBMEDQA_OPTIONS,
                       PUBMEDQA_OPTIONS.index(decision), context=" ".join(c.strip() for c in ctx),
                       rationale=_text(rec.get("LONG_ANSWER")))


def pubmedqa_ids(path: str) -> set[str]:
    """The PMIDs a file names: a JSON object keyed by PMID (the release's test_ground_truth.json, or a records
    file) or Hugging Face records (e.g. the test split's JSON lines)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PubMedQA id file not found: {path}")
    ids = set()
    for pmid, _, rec in pubmedqa_entries(path):
        if isinstance(rec, DataError) and not pmid:
            raise rec
        ids.add(pmid)
    if not ids:
        raise DataError(f"{path}: no PMIDs (expected a JSON object PMID -> answer, or PubMedQA records)")
    return ids


def mmlu_subject(path: str) -> str:
    name = os.path.basename(path)
    for suffix in ("_test.csv", "_dev.csv", "_val.csv", ".csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_mmlu(path: str) -> Iterator[QARecord]:
    if not path.endswith(".csv"):
        yield from _mmlu_records(path)
        return
    subject, header = mmlu_subject(path), 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            where = f"{path}:{n}"
            if n == 1 and row and row[-1].strip().lower() in ("answer", "target"):
                header = 1  # ids count records, as in the headerless release
                continue
            if not row:
                continue
            if len(row) != 6:
                raise DataError(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
            question, *options, letter = (c.strip() for c in row)
            if letter not in ("A", "B", "C", "D"):
                raise DataError(f"{where}: answer {letter!r} is not one of A, B, C, D")
            if not question:
                raise DataError(f"{where}: empty question")
            yield QARecord(f"{subject}-{n - header}", "mmlu", question, tuple(options), "ABCD".index(letter),
                           subject=subject)


def _mmlu_records(path: str) -> Iterator[QARecord]:
    """The Hugging Face copy's records (module doc); ids count per subject as the release's CSV lines do."""
    seen: dict[str, int] = {}
    for _, where, rec in file_records(path):
        if "input" in rec and "question" not in rec:  # the CSV-derived copies' names (e.g. lukaemon/mmlu)
            rec = {"question": rec["input"], "choices": [rec.get(k) for k in "ABCD"], "answer": rec.get("target"),
                   "subject": rec.get("subject")}
        question, choices, answer = _text(rec.get("question")), rec.get("choices"), rec.get("answer")
        subject = _text(rec.get("subject")) or mmlu_subject(path)
        if not question:
            raise DataError(f"{where}: empty or missing question")
        if not (isinstance(choices, list) and len(choices) == 4 and all(_text(c) for c in choices)):
            raise DataError(f"{where}: choices must be a list of 4 non-empty texts")
        if isinstance(answer, str) and answer.strip() in ("A", "B", "C", "D"):
            answer = "ABCD".index(answer.strip())
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < 4:
            raise DataError(f"{where}: answer {answer!r} is not 0-3 or one of A, B, C, D")
        seen[subject] = seen.get(subject, 0) + 1
        yield QARecord(f"{subject}-{seen[subject]}", "mmlu", question, tuple(_text(c) for c in choices), answer,
                       subject=subject)


READERS: dict[str, Callable[..., Iterator[QARecord]]] = {
    "medqa": read_medqa, "medmcqa": read_medmcqa, "pubmedqa": read_pubmedqa, "mmlu": read_mmlu,
}


def read_qa(kind: str, path: str, *, subjects: Sequence[str] = (), **kw) -> list[QARecord]:
    """All records of one file (for MMLU, those whose subject is in `subjects`, all when empty; a directory: its
    *.csv files of those subjects, sorted by subject)."""
    if kind not in READERS:
        raise InputError(f"unknown QA dataset {kind!r}; known: {sorted(READERS)}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{kind} data not found: {path}")
    if kind == "mmlu" and os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".csv"))
        files = [os.path.join(path, f) for f in found if not subjects or mmlu_subject(f) in subjects]
        if found and not files:
            raise DataError(f"{path}: none of its {len(found)} MMLU files is a subject of {tuple(subjects)} "
                            f"(e.g. {found[0]})")
        records = [r for f in files for r in read_mmlu(f)]
    elif kind == "mmlu":  # one file: a subject's CSV or records of many subjects
        records = list(read_mmlu(path))
        if records and subjects:
            records = [r for r in records if r.subject in subjects]
            if not records:
                raise DataError(f"{path}: none of its MMLU records is of a subject in {tuple(subjects)}")
    else:
        records = list(READERS[kind](path, **kw))
    if not records:
        raise DataError(f"{path}: no {kind} records")
    return records

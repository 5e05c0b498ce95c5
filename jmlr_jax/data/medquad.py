"""MedQuAD question-answer pairs (Ben Abacha & Demner-Fushman, 2019), from its public release or a JSONL copy.

  XML    the public release (github.com/abachaa/MedQuAD): a directory tree of `<Document id source url>` files, each
         with `<Focus>` and `<QAPair><Question qid qtype>..</Question><Answer>..</Answer></QAPair>`. Three MedlinePlus
         collections ship with empty answers (removed for copyright): those pairs are left out, not errors.
  JSONL  one pair per line: {"id", "source", "url", "focus", "qtype", "question", "answer"} (the copy in
         ../shared/data); Hugging Face copies' names "question_id", "document_source", "document_url",
         "question_focus", "question_type" are read too (in any letter case: "Question", "Answer"), and their
         Parquet files (e.g. lavita/MedQuAD) as JSONL.
  CSV    a header row naming the same fields, then one pair per record (answers may span lines; "file:line" is
         where the record starts): e.g. the Kaggle copy's "question", "answer", "source", "focus_area".

Both give the same records for the same pairs: answers have each line's whitespace collapsed and blank lines
dropped (the XML indents them), and `n` numbers the pairs with answers in path order. The JSONL copy in
../shared/data is exactly that: the release's 16,407 answered pairs in path order, one per line (checked against
the release at commit 577bd37 by launch/check_medquad.py: every field of every pair equal), so its line numbers
are the XML's `n`.

Every consumer reads MedQuAD through `iter_medquad` and decides what a malformed pair costs it: the corpus and the
evidence tasks can skip and count, the pipelines' data raises.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import xml.etree.ElementTree as ET
from typing import Iterator

from jmlr_jax.data.sources import DataError, file_records

LICENCE = "CC BY 4.0 (MedQuAD, Ben Abacha & Demner-Fushman 2019)"

# field -> the names JSONL copies give it (this project's copy first)
_JSONL_NAMES = {"id": ("id", "question_id"), "source": ("source", "document_source"),
                "url": ("url", "document_url"), "focus": ("focus", "question_focus", "focus_area"),
                "qtype": ("qtype", "question_type"), "question": ("question",), "answer": ("answer",)}


@dataclasses.dataclass(frozen=True)
class MedQuADPair:
    n: int  # 1-based number of the pair among those with answers (the JSONL copy's line)
    where: str  # "file:line" (JSONL) or "file (qid)" (XML), for error messages
    id: str  # the release's question id, e.g. "0000001_1-1" (ids repeat across collections)
    source: str  # e.g. "CancerGov", "GHR"
    url: str
    focus: str  # the disease, drug or test asked about; "" for 14 released pairs
    qtype: str  # e.g. "treatment", "symptoms"
    question: str
    answer: str


def clean_answer(text: str) -> str:
    """Each line's whitespace collapsed, blank lines dropped (the release indents its answers)."""
    return "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def iter_medquad(path: str) -> Iterator[MedQuADPair | DataError]:
    """Every pair of a MedQuAD JSONL / Parquet / CSV file or XML directory tree, in order, or a DataError (naming
    file and line) for each malformed one, which the caller raises or skips. A missing path is a
    FileNotFoundError."""
    if os.path.isdir(path):
        yield from _xml_pairs(path)
    elif os.path.isfile(path) and path.lower().endswith(".csv"):
        yield from _csv_pairs(path)
    elif os.path.isfile(path):
        yield from _jsonl_pairs(path)
    else:
        raise FileNotFoundError(f"MedQuAD not found: {path} (a JSONL file or the public release's XML directory)")


def _checked(n: int, where: str, fields: dict) -> MedQuADPair | DataError:
    missing = [k for k in ("question", "answer") if not fields[k].strip()]
    if missing:
        return DataError(f"{where}: missing {' and '.join(missing)} (a MedQuAD pair needs a question and an answer)")
    return MedQuADPair(n, where, fields["id"] or str(n), fields["source"], fields["url"], fields["focus"].strip(),
                       fields["qtype"], fields["question"].strip(), clean_answer(fields["answer"]))


def _fields(rec: dict) -> dict:
    """A record's MedQuAD fields by any of their names, letter case ignored ("" when absent)."""
    rec = {str(k).strip().lower(): v for k, v in rec.items()}
    return {k: next((str(rec[name]) for name in names if isinstance(rec.get(name), (str, int))), "")
            for k, names in _JSONL_NAMES.items()}


def _jsonl_pairs(path: str) -> Iterator[MedQuADPair | DataError]:
    for n, where, rec in file_records(path, errors="yield"):
        yield rec if isinstance(rec, DataError) else _checked(n, where, _fields(rec))


def _csv_pairs(path: str) -> Iterator[MedQuADPair | DataError]:
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        try:
            header = [str(h).strip().lower() for h in reader.fieldnames or []]
        except csv.Error as e:
            raise DataError(f"{path}:1: malformed CSV header ({e})") from None
        if not {"question", "answer"} <= set(header):
            raise DataError(f"{path}:1: a MedQuAD CSV needs a header row with question and answer columns "
                            f"(got {header[:8]})")
        n = 0
        while True:
            start = reader.line_num + 1
            try:
                rec = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # e.g. a NUL byte: the rest of the file cannot be trusted
                raise DataError(f"{path}:{start}: malformed CSV ({e})") from None
            n += 1
            yield _checked(n, f"{path}:{start}", _fields({k: v for k, v in rec.items() if k is not None}))


def _xml_pairs(root: str) -> Iterator[MedQuADPair | DataError]:
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".xml"))
    if not files:
        yield DataError(f"{root}: no MedQuAD .xml files under this directory")
    n = 0
    for path in files:
        try:
            doc = ET.parse(path).getroot()
        except ET.ParseError as e:
            yield DataError(f"{path}:{e.position[0]}: malformed XML ({e})")
            continue
        focus = doc.findtext("Focus") or ""
        for pair in doc.iter("QAPair"):
            answer = pair.findtext("Answer") or ""
            if not answer.strip():
                continue  # answers removed from the release (MedlinePlus copyright): not an error
            n += 1
            q = pair.find("Question")
            qid = (q.get("qid") if q is not None else None) or ""
            fields = {"id": qid, "source": doc.get("source", ""), "url": doc.get("url", ""), "focus": focus,
                      "qtype": (q.get("qtype") if q is not None else None) or "", "answer": answer,
                      "question": (q.text if q is not None else None) or ""}
            yield _checked(n, f"{path} ({qid or 'QAPair ' + pair.get('pid', '?')})", fields)

"""Guideline corpus: records -> overlapping word-window passages with stable ids and provenance."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator


@dataclasses.dataclass(frozen=True)
class Passage:
    id: str  # "{doc_id}#{chunk index}": stable across runs for the same text and chunking
    doc_id: str
    title: str
    text: str
    source: str
    licence: str


def chunk_words(text: str, size: int = 100, overlap: int = 20) -> list[str]:
    """Windows of `size` words, consecutive windows sharing `overlap` words; the last may be shorter."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    words = text.split()
    step = size - overlap
    return [" ".join(words[i: i + size]) for i in range(0, max(len(words) - overlap, 1), step) if words[i: i + size]]


def _jsonl(path: str) -> Iterator[tuple[int, dict]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"corpus file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            yield n, rec


def read_guidelines(path: str, size: int = 100, overlap: int = 20) -> list[Passage]:
    """NGC / USPSTF guideline summaries (JSONL with id, title, text, open_basis) -> passages."""
    out: list[Passage] = []
    for n, rec in _jsonl(path):
        missing = [k for k in ("id", "title", "text") if not isinstance(rec.get(k), str) or not rec[k].strip()]
        if missing:
            raise ValueError(f"{path}:{n}: record lacks non-empty {', '.join(missing)}")
        licence = rec.get("open_basis") or ("public domain" if rec.get("public_domain") else "see source")
        for i, chunk in enumerate(chunk_words(rec["text"], size, overlap)):
            out.append(Passage(f"{rec['id']}#{i}", rec["id"], rec["title"], chunk, "ngc_guidelines", str(licence)))
    if not out:
        raise ValueError(f"{path}: no passages (empty corpus)")
    return out

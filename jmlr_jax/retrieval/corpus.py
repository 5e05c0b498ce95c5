"""Retrieval corpus: source readers -> overlapping word-window passages with stable ids and provenance.

Readers (one record = one document, then chunked):
  guidelines   NGC / USPSTF guideline summaries, JSONL (id, title, text, open_basis), or Meditron's clinical
               guidelines as released (epfl-llm/guidelines: id, source, title, clean_text, ...)
  medquad      MedQuAD answers: JSONL / CSV (id, source, question, answer, ...) or the public XML directory tree
  pubmedqa     PubMedQA abstracts: the PQA-L/A/U JSON object PMID -> {QUESTION, CONTEXTS, ...}; the question
               is *not* put in the passage (PubMedQA questions are the article titles: that would leak)
  documents    a user's own JSONL or TSV with columns id, title, text (TSV needs a header row)
Every JSONL source may be a Parquet file instead (a Hugging Face copy as downloaded).

Malformed records raise an error naming file and line (or record key), or, with on_error="skip", are
skipped and counted. The corpus checksum covers every passage's id, title, text and the chunking
settings, so an index built on one corpus can never be silently used with another.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import os
from typing import Callable, Iterable, Iterator, Sequence

import gin

from jmlr_jax.data.medquad import LICENCE as MEDQUAD_LICENCE
from jmlr_jax.data.medquad import iter_medquad
from jmlr_jax.data.sources import DataError, file_records, pubmedqa_entries, pubmedqa_ids
from jmlr_jax.errors import InputError, check_counts


@dataclasses.dataclass(frozen=True)
class Passage:
    id: str  # "{doc_id}#{chunk index}": stable across runs for the same text and chunking
    doc_id: str
    title: str
    text: str
    source: str
    licence: str

    @property
    def with_title(self) -> str:
        """The text the encoder and the generator read: "title | text" when there is a title."""
        return f"{self.title} | {self.text}" if self.title else self.text


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    source: str
    licence: str


class CorpusError(InputError):
    """A malformed corpus record; the message names the file and line."""


@dataclasses.dataclass
class Corpus:
    passages: list[Passage]
    settings: dict
    skipped: int = 0  # malformed records skipped under on_error="skip"
    duplicates: int = 0  # passages dropped because an earlier one had the same text

    def __len__(self) -> int:
        return len(self.passages)

    def checksum(self) -> str:
        h = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode())
        for p in self.passages:
            for field in (p.id, p.title, p.text):
                h.update(field.encode())
                h.update(b"\x00")
        return h.hexdigest()[:16]


def chunk_words(text: str, size: int = 100, overlap: int = 20) -> list[str]:
    """Windows of `size` words, consecutive windows sharing `overlap` words; the last may be shorter."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    words = text.split()
    step = size - overlap
    return [" ".join(words[i: i + size]) for i in range(0, max(len(words) - overlap, 1), step) if words[i: i + size]]


# ---------------------------------------------------------------------------------------------- readers

Yield = Iterator["Document | CorpusError"]  # readers yield errors; load_corpus raises or counts them


def _jsonl(path: str) -> Iterator[tuple[str, dict | CorpusError]]:
    for _, where, rec in file_records(path, errors="yield"):
        yield where, rec if isinstance(rec, dict) else CorpusError(str(rec))


def _require(where: str, rec: dict, *keys: str) -> CorpusError | None:
    missing = [k for k in keys if not isinstance(rec.get(k), (str, int)) or not str(rec[k]).strip()]
    return CorpusError(f"{where}: record lacks non-empty {', '.join(missing)}") if missing else None


def read_guidelines(path: str) -> Yield:
    """Guidelines, JSONL: the NGC / USPSTF summaries of ../shared/data (id, title, text, open_basis), or Meditron's
    clinical guidelines as released (epfl-llm/guidelines: id, source, title, clean_text, raw_text, url, overview;
    the cleaned text is read, a missing title is allowed)."""
    for where, rec in _jsonl(path):
        meditron = isinstance(rec, dict) and "text" not in rec and "clean_text" in rec
        text_key = "clean_text" if meditron else "text"
        err = rec if isinstance(rec, CorpusError) else _require(where, rec, "id", *(() if meditron else ("title",)),
                                                                 text_key)
        if err:
            yield err
            continue
        source = f"guidelines:{rec['source']}" if meditron and rec.get("source") else "ngc_guidelines"
        licence = rec.get("open_basis") or ("public domain" if rec.get("public_domain") else "see source")
        yield Document(str(rec["id"]), str(rec.get("title") or ""), rec[text_key], source, str(licence))


def read_medquad(path: str) -> Yield:
    """MedQuAD answers (the question is the title): a JSONL copy or the public release's XML directory tree."""
    for pair in iter_medquad(path):
        if isinstance(pair, DataError):
            yield CorpusError(str(pair))
        else:
            yield Document(pair.id, pair.question, pair.answer, f"medquad:{pair.source}", MEDQUAD_LICENCE)


def read_pubmedqa(path: str, exclude_ids: Sequence[str] = ()) -> Yield:
    """PubMedQA abstracts (CONTEXTS joined), either format `data.sources` reads; `exclude_ids` leaves out e.g. the
    test PMIDs. Decisions are not needed: the unlabelled PQA-U file is a corpus too."""
    excluded = set(map(str, exclude_ids))
    try:
        for pmid, where, rec in pubmedqa_entries(path):
            ctx = rec.get("CONTEXTS") if isinstance(rec, dict) else None
            if not isinstance(ctx, list) or not all(isinstance(c, str) for c in ctx) or not "".join(ctx).strip():
                yield CorpusError(str(rec) if isinstance(rec, DataError) else
                                  f"{where}: CONTEXTS must be a non-empty list of strings")
            elif pmid not in excluded:
                yield Document(f"pmid-{pmid}", "", " ".join(ctx), "pubmedqa", "MIT (PubMedQA)")
    except DataError as e:  # malformed JSON: nothing after it can be read
        yield CorpusError(str(e))


def read_documents(path: str, source: str = "user", licence: str = "user-provided") -> Yield:
    """A user's own documents: JSONL or TSV (header row) with columns id, title, text."""
    if path.endswith((".tsv", ".tab")):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            missing = {"id", "title", "text"} - set(reader.fieldnames or ())
            if missing:
                yield CorpusError(f"{path}:1: TSV header lacks column(s) {', '.join(sorted(missing))}")
                return
            for rec in reader:
                where = f"{path}:{reader.line_num}"
                err = _require(where, rec, "id", "text")
                yield err or Document(rec["id"], rec.get("title") or "", rec["text"], source, licence)
        return
    for where, rec in _jsonl(path):
        err = rec if isinstance(rec, CorpusError) else _require(where, rec, "id", "text")
        yield err or Document(str(rec["id"]), str(rec.get("title") or ""), str(rec["text"]), source, licence)


READERS: dict[str, Callable[..., Yield]] = {
    "guidelines": read_guidelines, "medquad": read_medquad, "pubmedqa": read_pubmedqa, "documents": read_documents,
}


def resolve_path(path: str, data_dir: str) -> str:
    """A relative data path is relative to the run's data directory (DataConfig.data_dir); absolute stays."""
    if os.path.isabs(path) or not path:
        return path
    if not data_dir:
        raise InputError(f"relative data path {path!r} but no data directory: bind DATA (DataConfig.data_dir) in gin")
    return os.path.join(data_dir, path)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """The retrieval corpus of a run; relative paths are under DataConfig.data_dir."""

    sources: tuple[tuple[str, str], ...] = ()  # (kind, path) pairs, kinds: READERS
    chunk_size: int = 100
    overlap: int = 20
    on_error: str = "raise"
    dedupe: bool = True
    pubmedqa_exclude_file: str = ""  # e.g. pubmedqa/test_ground_truth.json: evaluation abstracts stay out

    def __post_init__(self):
        check_counts(self, ("chunk_size",), ("overlap",))
        if self.overlap >= self.chunk_size or self.on_error not in ("raise", "skip"):
            raise ValueError(f"CorpusConfig: need overlap < chunk_size and on_error 'raise' or 'skip'; got "
                             f"chunk_size={self.chunk_size}, overlap={self.overlap}, on_error={self.on_error!r}")

    def load(self, data_dir: str, pubmedqa_exclude: bool = True) -> "Corpus":
        """The corpus (pubmedqa_exclude=False keeps the excluded abstracts: gold documents for recall)."""
        if not self.sources:
            raise InputError("CorpusConfig.sources is empty: no corpus to retrieve from")
        return load_corpus([(k, resolve_path(p, data_dir)) for k, p in self.sources], chunk_size=self.chunk_size,
                           overlap=self.overlap, on_error=self.on_error, dedupe=self.dedupe,
                           pubmedqa_exclude_file=resolve_path(self.pubmedqa_exclude_file, data_dir)
                           if pubmedqa_exclude else "")


def load_corpus(sources: Sequence[tuple[str, str]], *, chunk_size: int = 100, overlap: int = 20,
                on_error: str = "raise", dedupe: bool = True, pubmedqa_exclude_file: str = "") -> Corpus:
    """Reads (kind, path) sources in order, chunks every document, and drops duplicate passage texts.

    on_error: "raise" (first malformed record is an error naming file and line) or "skip" (counted).
    pubmedqa_exclude_file: a JSON object keyed by PMID (e.g. PubMedQA's test_ground_truth.json) whose
    abstracts are left out of the corpus.
    """
    exclude: set[str] = set()
    if pubmedqa_exclude_file:
        if not os.path.isfile(pubmedqa_exclude_file):
            raise FileNotFoundError(f"pubmedqa_exclude_file not found: {pubmedqa_exclude_file}")
        exclude = pubmedqa_ids(pubmedqa_exclude_file)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    skipped = 0

    def documents() -> Iterator[Document]:
        nonlocal skipped
        for kind, path in sources:
            if kind not in READERS:
                raise ValueError(f"unknown corpus source kind {kind!r}; known: {sorted(READERS)}")
            if not os.path.exists(path):
                raise FileNotFoundError(f"corpus source {kind!r} not found: {path}")
            kw = {"exclude_ids": exclude} if kind == "pubmedqa" else {}
            for doc in READERS[kind](path, **kw):
                if isinstance(doc, CorpusError):
                    if on_error == "raise":
                        raise doc
                    skipped += 1
                    continue
                yield doc

    corpus = corpus_from_documents(documents(), chunk_size=chunk_size, overlap=overlap, dedupe=dedupe,
                                   where=str([p for _, p in sources]))
    corpus.skipped = skipped
    return corpus


def corpus_from_documents(docs: Iterable[Document], *, chunk_size: int = 100, overlap: int = 20, dedupe: bool = True,
                          where: str = "the documents") -> Corpus:
    """Chunks documents (in order) into passages, dropping passages whose text an earlier one had."""
    passages: list[Passage] = []
    seen: set[str] = set()
    doc_ids: collections.Counter = collections.Counter()
    duplicates = 0
    for doc in docs:
        # Real data repeats ids (MedQuAD reuses question ids across focuses): suffix "~N" in file order.
        doc_ids[doc.id] += 1
        doc_id = doc.id if doc_ids[doc.id] == 1 else f"{doc.id}~{doc_ids[doc.id]}"
        for i, chunk in enumerate(chunk_words(doc.text, chunk_size, overlap)):
            key = hashlib.sha1(chunk.encode()).hexdigest()
            if dedupe and key in seen:
                duplicates += 1
                continue
            seen.add(key)
            passages.append(Passage(f"{doc_id}#{i}", doc_id, doc.title, chunk, doc.source, doc.licence))
    if not passages:
        raise CorpusError(f"no passages in {where} (empty corpus)")
    dup = next((i for i, n in collections.Counter(p.id for p in passages).items() if n > 1), None)
    if dup is not None:
        raise CorpusError(f"passage id {dup!r} occurs twice (a document id ends in '~N'?); rename that document")
    settings = {"chunk_size": chunk_size, "overlap": overlap, "dedupe": dedupe}  # exclusions: in the passages
    return Corpus(passages, settings, 0, duplicates)

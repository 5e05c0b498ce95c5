"""Evidence-dependent generative QA: MedQuAD by focus and PubMedQA long answers, with their evidence in the corpus.

  MedQuAD  JSONL, one QA pair per line: {"id", "source", "focus", "qtype", "question", "answer", ...} (the public
           release's fields; ids repeat across files, so a record is named by file line). Task: question -> answer.
           Split by `focus` (a disease or drug): training / dev / held-out focuses never share a focus, and every
           answer of every selected focus is in the corpus (open-domain QA). Passages are answer text only: no
           question, no title that repeats it.
  PubMedQA PQA-L object PMID -> {QUESTION, CONTEXTS, LONG_ANSWER, final_decision}. Task: question -> "Yes. <long
           answer>" (decision first, so the decision is the first answer token and can be scored by likelihood).
           Evidence: the record's own abstract; test abstracts stay out of the corpus (added only to measure recall).

Gold evidence of a question: every corpus passage whose text is a chunk of its evidence document (by text, so a
chunk deduplicated into another document's identical passage still counts).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterator, Sequence

from jmlr_jax.data.medquad import iter_medquad
from jmlr_jax.data.sources import DataError, QARecord
from jmlr_jax.data.splits import DataConfig
from jmlr_jax.data.templates import PromptTemplate
from jmlr_jax.retrieval.corpus import MEDQUAD_LICENCE, Corpus, Document, chunk_words

# Generative QA prompt: no options; the target is the answer text itself.
GENERATIVE_TEMPLATE = PromptTemplate(question="Question: {question}\nAnswer:", option="", answer=" {text}")


@dataclasses.dataclass(frozen=True)
class EvidenceQA:
    id: str
    task: str  # "medquad" or "pubmedqa"
    question: str
    answer: str  # the target text
    evidence: str  # the text of the document that answers it (MedQuAD answer, PubMedQA abstract)
    evidence_id: str  # its corpus document id
    focus: str = ""  # MedQuAD focus; PubMedQA: ""
    decision: str = ""  # PubMedQA yes / no / maybe

    def as_record(self) -> QARecord:
        """The record the JMLR pipeline reads (one "option": the answer), with GENERATIVE_TEMPLATE."""
        return QARecord(self.id, self.task, self.question, (self.answer,), 0, subject=self.focus)


def _sha(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def read_medquad_qa(path: str, on_error: str = "raise") -> tuple[list[EvidenceQA], list[str]]:
    """MedQuAD QA pairs (a JSONL copy or the public XML release, `data.medquad`) and the problems skipped. A pair
    without question, answer or focus, or a malformed line, is an error naming file and line; on_error="skip"
    skips it and lists the message instead (the release has 14 answered pairs without a focus). Records are
    named by their number (`medquad-<n>`: the JSONL line), since the release's ids repeat across collections."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    out, skipped = [], []
    for pair in iter_medquad(path):
        if not isinstance(pair, DataError) and not pair.focus:
            pair = DataError(f"{pair.where}: empty focus (MedQuAD records need question, answer and focus)")
        if isinstance(pair, DataError):
            if on_error == "raise":
                raise pair
            skipped.append(str(pair))
            continue
        doc = f"medquad-{pair.n}"
        out.append(EvidenceQA(doc, "medquad", pair.question, pair.answer, pair.answer, doc, pair.focus))
    if not out:
        raise DataError(f"{path}: no MedQuAD records")
    return out, skipped


@dataclasses.dataclass(frozen=True)
class FocusSplit:
    train: list[EvidenceQA]  # training questions
    dev: list[EvidenceQA]  # questions of dev focuses (settings are chosen here, never on held-out focuses)
    heldout_focus: list[EvidenceQA]  # questions of held-out focuses (unseen diseases)
    heldout_doc: list[EvidenceQA]  # unseen questions of training focuses, kept out of training
    corpus_docs: list[EvidenceQA]  # every answer of every selected focus (the corpus's MedQuAD part)
    extra_train: list[EvidenceQA] = dataclasses.field(default_factory=list)  # every question of the extra focuses


def split_by_focus(records: Sequence[EvidenceQA], *, train_focuses: int, dev_focuses: int, heldout_focuses: int,
                   min_questions: int = 3, seed: int = 0, extra_train_focuses: int = 0) -> FocusSplit:
    """Focuses with >= min_questions answers, ordered by sha1(seed/focus), are cut into train / dev / held-out.

    Of each training focus, the question with the smallest hash goes to `heldout_doc`, the rest to `train`.
    `extra_train_focuses` more focuses, taken after the held-out ones (so the other splits do not move), give
    `extra_train`: all their questions, focus by focus (so fewer extra focuses give a prefix of it); their answers
    are not in `corpus_docs` (the caller decides where they may be searched)."""
    by_focus: dict[str, list[EvidenceQA]] = {}
    for r in records:
        by_focus.setdefault(r.focus.lower(), []).append(r)
    eligible = sorted((f for f, rs in by_focus.items() if len(rs) >= min_questions), key=lambda f: _sha(f"{seed}/{f}"))
    need = train_focuses + dev_focuses + heldout_focuses
    if len(eligible) < need + extra_train_focuses:
        raise DataError(f"{len(eligible)} focuses have >= {min_questions} answered questions; the split needs "
                        f"{need + extra_train_focuses}")
    tr, dv, ho = (eligible[:train_focuses], eligible[train_focuses: train_focuses + dev_focuses],
                  eligible[train_focuses + dev_focuses: need])
    order = lambda rs: sorted(rs, key=lambda r: _sha(f"{seed}/{r.id}"))  # noqa: E731
    train, heldout_doc = [], []
    for f in tr:
        rs = order(by_focus[f])
        heldout_doc.append(rs[0])
        train += rs[1:]
    pick = lambda fs: order([r for f in fs for r in by_focus[f]])  # noqa: E731
    extra = [r for f in eligible[need: need + extra_train_focuses] for r in order(by_focus[f])]
    return FocusSplit(order(train), pick(dv), pick(ho), order(heldout_doc), [r for f in tr + dv + ho
                                                                            for r in by_focus[f]], extra)


DECISION_TEXT = {"yes": "Yes", "no": "No", "maybe": "Maybe"}


def pubmedqa_long_answer(data_dir: str) -> tuple[list[EvidenceQA], list[EvidenceQA]]:
    """(train half, test half) of PubMedQA PQA-L as question -> "<Decision>. <long answer>" with its abstract."""
    train, test = DataConfig(data_dir=data_dir).pubmedqa_split()

    def conv(r: QARecord) -> EvidenceQA:
        decision = r.options[r.answer_idx]
        if not r.rationale:
            raise DataError(f"PubMedQA record {r.id}: no LONG_ANSWER")
        return EvidenceQA(r.id, "pubmedqa", r.question, f"{DECISION_TEXT[decision]}. {r.rationale}", r.context,
                          f"pmid-{r.id}", decision=decision)

    return [conv(r) for r in train], [conv(r) for r in test]


def evidence_documents(records: Sequence[EvidenceQA]) -> Iterator[Document]:
    """One corpus document per distinct evidence id: text only (no question, no title)."""
    seen = set()
    for r in records:
        if r.evidence_id in seen:
            continue
        seen.add(r.evidence_id)
        source, licence = (("medquad", MEDQUAD_LICENCE) if r.task == "medquad" else ("pubmedqa", "MIT (PubMedQA)"))
        yield Document(r.evidence_id, "", r.evidence, source, licence)


def gold_passages(corpus: Corpus, records: Sequence[EvidenceQA]) -> list[list[int]]:
    """Per record, the indices of corpus passages that are chunks of its evidence (empty when none is)."""
    chunk_size, overlap = corpus.settings["chunk_size"], corpus.settings["overlap"]
    by_text: dict[str, list[int]] = {}
    for i, p in enumerate(corpus.passages):
        by_text.setdefault(_sha(p.text), []).append(i)
    return [sorted({i for c in chunk_words(r.evidence, chunk_size, overlap) for i in by_text.get(_sha(c), [])})
            for r in records]


def question_leaks(corpus: Corpus, records: Sequence[EvidenceQA]) -> list[str]:
    """Ids of records whose question text occurs verbatim in some passage (must be empty for a fair corpus)."""
    texts = [p.with_title.lower() for p in corpus.passages]
    return [r.id for r in records if any(r.question.lower() in t for t in texts)]

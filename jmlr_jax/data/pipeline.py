"""grain pipeline for the fused JMLR step: record index -> tokenised example with its C candidates -> batch.

Candidates (passage indices [N, C]) come from host retrieval, computed once per index version and
cached; the jitted step re-scores them with the live retriever. Every example is a pure function of its
index, so the order (a seeded shuffle) and the iterator state (small JSON) fully determine the data:
a restored iterator continues exactly where it stopped.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from jmlr_jax.data.sources import QARecord
from jmlr_jax.data.templates import Budgets, PromptTemplate, bos_block, encode_answer, encode_docs, encode_question
from jmlr_jax.models.colbert import ColBERTTokenizer
from jmlr_jax.parallel import host_rows
from jmlr_jax.retrieval.corpus import Passage
from jmlr_jax.tokenizers import Tokenizer


def retrieval_query(r: QARecord, with_options: bool = False) -> str:
    """The retriever's query for a question (optionally with its options)."""
    return r.question + (" " + " ".join(r.options) if with_options else "")


@dataclasses.dataclass(frozen=True)
class JMLRExamples:
    """Index -> dict of numpy arrays for one example (the step's batch layout without the batch axis)."""

    records: Sequence[QARecord]
    candidates: np.ndarray  # [N, C] passage indices
    passages: Sequence[Passage]
    tok: Tokenizer
    ctok: ColBERTTokenizer
    # default_factory, not a default instance: built when the examples are, so gin bindings apply
    template: PromptTemplate = dataclasses.field(default_factory=PromptTemplate)
    budgets: Budgets = dataclasses.field(default_factory=Budgets)
    query_with_options: bool = False
    # Frozen document side: candidates' token vectors [C, Ld, dim] from this index (TokenIndex over `passages`)
    # instead of their token ids, so the step encodes only the query.
    doc_index: Any = None
    doc_losses: np.ndarray | None = None  # [N, C] the frozen generator's answer loss per candidate

    def __post_init__(self):
        if len(self.candidates) != len(self.records):
            raise ValueError(f"{len(self.candidates)} candidate rows for {len(self.records)} records")
        if self.doc_losses is not None and self.doc_losses.shape != self.candidates.shape:
            raise ValueError(f"doc_losses {self.doc_losses.shape} do not match candidates {self.candidates.shape}")
        if self.doc_index is not None and len(self.doc_index.passages) != len(self.passages):
            raise ValueError(f"index holds {len(self.doc_index.passages)} passages, the corpus {len(self.passages)}")
        if (self.candidates < 0).any() or (self.candidates >= len(self.passages)).any():
            raise ValueError("candidate passage indices outside the corpus: index and corpus do not match")

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:  # grain checks a stable repr when restoring iterator state
        return f"JMLRExamples(n={len(self.records)}, C={self.candidates.shape[1]})"

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        r = self.records[int(i)]
        texts = [self.passages[c].with_title for c in self.candidates[i]]
        q_ids, q_mask = self.ctok.queries([retrieval_query(r, self.query_with_options)])
        if self.doc_index is None:
            d_ids, d_mask, d_keep = self.ctok.docs(texts)
            retriever_docs = {"r_d_ids": d_ids, "r_d_mask": d_mask, "r_d_keep": d_keep}
        else:
            d_emb, d_keep = self.doc_index.padded_embeddings(self.candidates[i], self.ctok.cfg.doc_maxlen)
            retriever_docs = {"r_d_emb": d_emb, "r_d_keep": d_keep}
        extra = {} if self.doc_losses is None else {"doc_losses": self.doc_losses[i].astype(np.float32)}
        docs, docs_valid = encode_docs(self.tok, self.template, texts, self.budgets.doc)
        question, question_valid = encode_question(self.tok, self.template, r, self.budgets.question)
        answer, answer_valid = encode_answer(self.tok, self.template, r, self.budgets.answer)
        bos, bos_valid = bos_block(self.tok)
        return {"example_id": np.int32(i), "candidates": self.candidates[i].astype(np.int32), "r_q_ids": q_ids[0],
                "r_q_mask": q_mask[0], **retriever_docs,
                "docs": docs, "docs_valid": docs_valid, "question": question, "question_valid": question_valid,
                "answer": answer, "answer_valid": answer_valid, "bos": bos, "bos_valid": bos_valid, **extra}


def make_dataset(examples: JMLRExamples, batch_size: int, seed: int, grad_accum: int = 1,
                 shard: tuple[int, int] = (0, 1)) -> grain.IterDataset:
    """Shuffled (seeded, reshuffled every epoch), repeated, batched; [A, B, ...] leaves when grad_accum > 1.

    `batch_size` is global; with shard = (index, count) this host reads only its rows (index::count of the
    global order), batch_size / count per batch, and the hosts' rows together form the one-host batch."""
    if len(examples) < batch_size * grad_accum:
        raise ValueError(f"{len(examples)} training examples < one batch of {batch_size} x {grad_accum}")
    index, count = shard
    rows = host_rows(batch_size, count)
    ds = grain.MapDataset.range(len(examples)).shuffle(seed=seed).repeat(None)
    ds = (ds[index::count] if count > 1 else ds).map(examples).batch(rows * grad_accum, drop_remainder=True)
    if grad_accum > 1:
        ds = ds.map(lambda b: {k: v.reshape(grad_accum, rows, *v.shape[1:]) for k, v in b.items()})
    return ds.to_iter_dataset()

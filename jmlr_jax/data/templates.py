"""Prompt template shared by training and evaluation, and tokenisation with explicit budgets per part.

The JMLR layout (reference documents first, best document last, right before the question):

    <bos>Reference:\n{doc_1}\n\n ... Reference:\n{doc_k}\n\nQuestion: {question}\nA. ..\nB. ..\nAnswer: C. {text}<eos>

Parts are tokenised separately into fixed-size blocks (docs / question / answer), each truncated to its
own budget, so the fused train step can assemble any choice of documents inside `jit` by gathering blocks.
Padding inside the assembled sequence is masked out of attention (segment id 0) and skipped by the
positions, so the model sees exactly the compact sequence. Loss is on answer tokens (+ EOS) only.
"""
from __future__ import annotations

import dataclasses
import string
from typing import Sequence

import gin
import jax.numpy as jnp
import numpy as np

from jmlr_jax.data.sources import LETTERS, QARecord
from jmlr_jax.errors import check_counts
from jmlr_jax.tokenizers import Tokenizer, bos_prefix


PLACEHOLDERS = {"doc": ("doc",), "context": ("context",), "question": ("question", "options"),
                "option": ("letter", "text"), "answer": ("letter", "text"), "rationale": ("rationale",)}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    doc: str = "Reference:\n{doc}\n\n"
    context: str = "Context: {context}\n"  # e.g. the PubMedQA abstract, when use_context
    question: str = "Question: {question}\n{options}Answer:"
    option: str = "{letter}. {text}\n"
    answer: str = " {letter}. {text}"
    rationale: str = "\nExplanation: {rationale}"  # appended to the target when with_rationale
    use_context: bool = False
    with_rationale: bool = False

    def __post_init__(self):
        # A misspelt placeholder would be a KeyError while the first batch is built, after the models loaded.
        for name, allowed in PLACEHOLDERS.items():
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f is not None}
            except ValueError as e:  # an unmatched brace
                raise ValueError(f"PromptTemplate.{name} {getattr(self, name)!r}: {e} (write a literal brace as "
                                 "{{ or }})")
            if used - set(allowed):
                raise ValueError(f"PromptTemplate.{name} {getattr(self, name)!r} uses "
                                 f"{', '.join('{' + f + '}' for f in sorted(used - set(allowed)))}; it may use "
                                 f"{', '.join('{' + f + '}' for f in allowed)}")

    def question_text(self, r: QARecord) -> str:
        options = "".join(self.option.format(letter=LETTERS[i], text=t) for i, t in enumerate(r.options))
        ctx = self.context.format(context=r.context) if self.use_context and r.context else ""
        return ctx + self.question.format(question=r.question, options=options)

    def answer_text(self, r: QARecord, letter_only: bool = False) -> str:
        out = self.answer.format(letter=r.answer_letter, text="" if letter_only else r.answer_text)
        if self.with_rationale and r.rationale and not letter_only:
            out += self.rationale.format(rationale=r.rationale)
        return out.rstrip() if letter_only else out

    def doc_text(self, doc: str) -> str:
        return self.doc.format(doc=doc)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Where a generated answer ends although no EOS came: the literal start of a next reference, context or
        question block ("Reference:", "Context:", "Question:"), which a model writes when it goes on past its
        answer (`generate.cut_at_stop`)."""
        leads = (next(string.Formatter().parse(getattr(self, name)))[0].strip() if getattr(self, name) else ""
                 for name in ("doc", "context", "question"))
        return tuple(dict.fromkeys(lead for lead in leads if lead))

    def shot_text(self, r: QARecord) -> str:
        """A solved example for few-shot evaluation: the question block and its answer (no rationale), then a
        blank line."""
        return self.question_text(r) + self.answer.format(letter=r.answer_letter, text=r.answer_text) + "\n\n"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Budgets:
    """Tokens per block. The generator sees n_docs * doc + question + answer tokens."""

    doc: int = 128
    question: int = 256
    answer: int = 32

    def __post_init__(self):
        check_counts(self, ("doc", "question", "answer"))


def _block(ids: Sequence[int], size: int, keep: str = "head", align: str = "left") -> tuple[np.ndarray, np.ndarray]:
    ids = list(ids)[:size] if keep == "head" else list(ids)[-size:] if size else []
    out = np.zeros(size, np.int32)
    valid = np.zeros(size, np.int32)
    sl = slice(0, len(ids)) if align == "left" else slice(size - len(ids), size)
    out[sl], valid[sl] = ids, 1
    return out, valid


def bos_block(tok: Tokenizer, batch_shape: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The sequence prefix (`bos_prefix`) as a block: [BOS] for Llama-2 and Llama 3, empty for SmolLM2."""
    n = len(bos_prefix(tok))
    return np.full((*batch_shape, n), tok.bos_id or 0, np.int32), np.ones((*batch_shape, n), np.int32)


def encode_question(tok: Tokenizer, tpl: PromptTemplate, r: QARecord, budget: int):
    """Question (+ options) block, truncated from the front so the options and 'Answer:' survive.

    Right-aligned: its last slot is always the last question token, the one that predicts the first
    answer token, so answer losses can be read off fixed positions of the assembled sequence.
    """
    ids = tok.encode(tpl.question_text(r))
    if not ids:
        raise ValueError(f"question {r.id} tokenises to nothing")
    return _block(ids, budget, keep="tail", align="right")


def encode_shots(tok: Tokenizer, tpl: PromptTemplate, shots: Sequence[QARecord], budget: int) -> list[int]:
    """Solved examples in order, as one token list of at most `budget`: whole examples are dropped from the front
    (the ones farthest from the question) until the rest fit."""
    ids = tok.encode_batch([tpl.shot_text(r) for r in shots]) if shots else []
    while ids and sum(map(len, ids)) > budget:
        ids = ids[1:]
    return [t for x in ids for t in x]


def encode_answer(tok: Tokenizer, tpl: PromptTemplate, r: QARecord, budget: int):
    """Target block: answer (+ rationale) tokens, then EOS (kept even when the text is truncated)."""
    ids = tok.encode(tpl.answer_text(r))
    eos = [tok.eos_id] if tok.eos_id is not None else []
    return _block(ids[: budget - len(eos)] + eos, budget)


def encode_docs(tok: Tokenizer, tpl: PromptTemplate, docs: Sequence[str], budget: int):
    """[n, budget] blocks, one per document."""
    rows = [_block(ids, budget) for ids in tok.encode_batch([tpl.doc_text(d) for d in docs])]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def assemble(blocks_tokens: Sequence[np.ndarray], blocks_valid: Sequence[np.ndarray]):
    """Concatenate blocks into one sequence: tokens, segment ids (1 valid / 0 pad), positions skipping pads.

    Works on numpy and jax arrays alike (used on the host for evaluation and inside the jitted step).
    """
    tokens = jnp.concatenate(list(blocks_tokens), axis=-1)
    valid = jnp.concatenate(list(blocks_valid), axis=-1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
    return tokens, valid, positions


def compact_sequence(tokens, valid, pos):
    """Valid tokens moved to the front in order (a stable gather), padding after; positions unchanged.

    The assembled sequences have padding between blocks; compacted, each row is one segment then padding,
    which every attention backend handles (cuDNN needs it; the blockwise kernel skips the padded tail).
    Returns tokens, valid and positions in the compact order; valid token i of a row lands at index pos[i].
    """
    L = tokens.shape[-1]
    n_valid = jnp.sum(valid, axis=-1, keepdims=True)
    dest = jnp.where(valid > 0, pos, n_valid + jnp.cumsum(1 - valid, axis=-1) - 1)  # a permutation of 0..L-1
    rows = jnp.arange(tokens.shape[0])[:, None]
    src = jnp.zeros_like(dest).at[rows, dest].set(jnp.broadcast_to(jnp.arange(L), dest.shape))
    take = lambda x: jnp.take_along_axis(x, src, axis=-1)  # noqa: E731
    return take(tokens), take(valid), take(pos)

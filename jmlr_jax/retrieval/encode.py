"""The retriever's weights and the document side of indexing: which ColBERT, and passages -> token vectors."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Sequence

import gin
import jax
import numpy as np
import tqdm

from jmlr_jax.errors import check_counts
from jmlr_jax.models.colbert import ColBERT, ColBERTConfig, ColBERTTokenizer
from jmlr_jax.retrieval.corpus import Passage


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RetrieverConfig:
    name: str = "all-minilm-l6-v2"  # preset or a local BERT directory
    query_maxlen: int = 32
    doc_maxlen: int = 180

    def __post_init__(self):
        check_counts(self, ("query_maxlen", "doc_maxlen"))


def retriever_preset(cfg: RetrieverConfig):
    """(ColBERTConfig, params, ColBERTTokenizer) from a preset name or a local BERT directory."""
    from jmlr_jax.convert import load_preset

    ccfg, params, tok = load_preset(cfg.name, query_maxlen=cfg.query_maxlen, doc_maxlen=cfg.doc_maxlen)
    return ccfg, params, ColBERTTokenizer(tok, ccfg)


def params_checksum(params) -> str:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


# Module-level jits keyed on the (hashable) config: every Retriever, refresh and index build of one ColBERT shares
# the traced encoder (a jit made per instance traced MiniLM again each time: ~0.5 s here, per shape).
@functools.partial(jax.jit, static_argnames="cfg")
def doc_embeddings(params, ids_BxL, attn_BxL, keep_BxL, *, cfg: ColBERTConfig) -> jax.Array:
    """Document token embeddings [B, L, dim] (`ColBERT.encode_doc`, jitted)."""
    return ColBERT(cfg).apply({"params": params}, ids_BxL, attn_BxL, keep_BxL, method="encode_doc")


@functools.partial(jax.jit, static_argnames="cfg")
def query_embeddings(params, ids_BxQ, attn_BxQ, *, cfg: ColBERTConfig) -> jax.Array:
    """Query token embeddings [B, Q, dim] (`ColBERT.encode_query`, jitted)."""
    return ColBERT(cfg).apply({"params": params}, ids_BxQ, attn_BxQ, method="encode_query")


def encode_passages(cfg: ColBERTConfig, params, ctok: ColBERTTokenizer, passages: Sequence[Passage],
                    batch: int = 64, length_buckets: Sequence[int] = (32, 64, 128, 256, 512),
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token embeddings of every passage, kept tokens only: (emb [T, dim] fp16, offsets [P + 1] int64).

    Passages are sorted by length and encoded in fixed-size batches per length bucket, so the jitted
    encoder compiles once per bucket, not once per batch, and short passages are not padded to long ones.
    """
    if not passages:
        raise ValueError("no passages to encode")
    maxlen = cfg.doc_maxlen
    ids, attn, keep = ctok.docs([p.with_title for p in passages], pad_to=maxlen)
    lengths = attn.sum(1)
    buckets = sorted({min(b, maxlen) for b in length_buckets} | {maxlen})
    per_passage: list[np.ndarray | None] = [None] * len(passages)
    order = np.argsort(lengths, kind="stable")
    bar = tqdm.tqdm(total=len(passages), desc="encoding passages", unit="psg", disable=not progress)
    for lo, hi in zip([0] + buckets[:-1], buckets):
        members = order[(lengths[order] > lo) & (lengths[order] <= hi)]
        for s in range(0, len(members), batch):
            rows = members[s: s + batch]
            pad = batch - len(rows)
            take = lambda a: np.pad(a[rows, :hi], ((0, pad), (0, 0)))  # noqa: E731
            emb = np.asarray(doc_embeddings(params, take(ids), take(attn), take(keep), cfg=cfg))
            for j, r in enumerate(rows):
                per_passage[r] = emb[j][keep[r, :hi] > 0].astype(np.float16)
            bar.update(len(rows))
    bar.close()
    counts = np.array([len(e) for e in per_passage], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return np.concatenate(per_passage), offsets

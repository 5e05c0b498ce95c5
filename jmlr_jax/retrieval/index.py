"""ColBERT token index: every kept document-token embedding in ScaNN, exact MaxSim rerank of candidates.

Search (ColBERTv1 end-to-end): each query token's `token_k` nearest document-token vectors (ScaNN,
dot product) -> the union of their passages -> exact MaxSim of the live query embedding against the
stored token embeddings of those candidates -> top-k. `exact_search` scores every passage with MaxSim
and is the reference the ScaNN path is measured against.

Two settings objects: `IndexConfig` says what an index stores (part of its version: change it and the index is
rebuilt); `SearchConfig` says how it is searched (taken from the caller when an index is loaded, no rebuild).
Storage and versions: retrieval/store.py; passage encoding: retrieval/encode.py.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time
from typing import Sequence

import gin
import jax.numpy as jnp
import numpy as np
import tqdm

from jmlr_jax.errors import check_counts
from jmlr_jax.models.colbert import ColBERTConfig, ColBERTTokenizer
from jmlr_jax.retrieval.corpus import Corpus, Passage
from jmlr_jax.retrieval.encode import encode_passages, params_checksum, query_embeddings


@gin.configurable
@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """What an index stores (and so its version)."""

    encode_batch: int = 64
    length_buckets: tuple[int, ...] = (32, 64, 96, 128, 160, 192, 256, 384, 512)  # one compile per bucket
    brute_force_below: int = 250_000  # token vectors; tree + AH + reorder above
    num_leaves: int = 0  # 0: ~sqrt(num token vectors)
    dims_per_block: int = 2
    aq_threshold: float = 0.2
    training_sample: int = 250_000

    def __post_init__(self):
        check_counts(self, ("encode_batch", "dims_per_block", "training_sample"), ("brute_force_below", "num_leaves"))
        if not self.length_buckets or not all(isinstance(b, int) and b > 0 for b in self.length_buckets):
            raise ValueError(f"IndexConfig: length_buckets={self.length_buckets!r} must be positive token counts")


# For an index only ever searched exactly (`Retriever.exact_search`, `search_all(exact=True)`): the cheapest ScaNN
# searcher, brute force, which builds in 0.1 s where a tree over the guidelines' 350k token vectors took 7 s
# (scratch measurement).
EXACT_INDEX = IndexConfig(brute_force_below=10**12)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How an index is searched: not part of its version."""

    leaves_to_search: int = 0  # 0: num_leaves // 10
    reorder: int = 256  # ScaNN re-scores at least this many AH candidates per query token exactly (token_k if more)
    token_k: int = 32  # nearest document tokens per query token (ColBERT's k')
    rerank_docs: int = 0  # exact-rerank only the best N candidates by approximate MaxSim; 0 = all candidates
    num_threads: int = 0  # search threads (ScaNN, and the exact rerank of one query per thread); 0 = all cores
    # Embeddings in memory (stored fp16 on disk either way). float32 doubles the memory but spares every query
    # the fp16 -> fp32 conversion of its candidates' tokens, which costs more than their MaxSim.
    resident_dtype: str = "float16"

    def __post_init__(self):
        check_counts(self, ("reorder", "token_k"), ("leaves_to_search", "rerank_docs", "num_threads"))
        if self.resident_dtype not in ("float16", "float32"):
            raise ValueError(f"SearchConfig: resident_dtype={self.resident_dtype!r} must be 'float16' or 'float32'")


RERANK_BLOCK = 320  # passages per exact-MaxSim block: their gathered fp32 tokens (~20 MB) stay in cache


def _scann_searcher(emb: np.ndarray, icfg: IndexConfig, scfg: SearchConfig):
    import scann

    n = len(emb)
    builder = scann.scann_ops_pybind.builder(emb, scfg.token_k, "dot_product")
    if n < icfg.brute_force_below:
        return builder.score_brute_force().build()
    leaves = icfg.num_leaves or int(np.sqrt(n))
    return (builder.tree(num_leaves=leaves, num_leaves_to_search=scfg.leaves_to_search or max(leaves // 10, 1),
                         training_sample_size=min(icfg.training_sample, n))
            .score_ah(icfg.dims_per_block, anisotropic_quantization_threshold=icfg.aq_threshold)
            .reorder(scfg.reorder).build())


def _segment_maxsim(Q_LxE: np.ndarray, tokens_TxE: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """MaxSim of one query against consecutive passages whose tokens start at `starts` (each non-empty)."""
    sims_LxT = Q_LxE @ tokens_TxE.T
    return np.maximum.reduceat(sims_LxT, starts, axis=1).sum(axis=0)


@dataclasses.dataclass
class TokenIndex:
    passages: list[Passage]
    emb: np.ndarray  # [T, dim] fp16
    offsets: np.ndarray  # [P + 1]
    icfg: IndexConfig
    search: SearchConfig
    version: str
    meta: dict
    searcher: object = None

    @property
    def token_doc(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.passages), dtype=np.int32), np.diff(self.offsets))

    def padded_embeddings(self, docs: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Token vectors of passages `docs` [K] as [K, length, dim] fp32 (zero padded) and keep masks [K, length]."""
        out = np.zeros((len(docs), length, self.emb.shape[1]), np.float32)
        keep = np.zeros((len(docs), length), np.int32)
        for j, d in enumerate(docs):
            e = self.emb[self.offsets[d]: self.offsets[d + 1]][:length]
            out[j, : len(e)], keep[j, : len(e)] = e, 1
        return out, keep

    # ------------------------------------------------------------------------------------- search
    def search_embeddings(self, Q_NxLxE: np.ndarray, k: int = 30) -> tuple[np.ndarray, np.ndarray]:
        """ScaNN candidates + exact MaxSim rerank. Returns passage indices [N, k] (-1 pads) and scores."""
        Q = np.asarray(Q_NxLxE, np.float32)
        N, L, E = Q.shape
        tree = len(self.emb) >= self.icfg.brute_force_below  # leaves_to_search is a query-time knob of the tree
        # A tree searcher returns at most pre_reorder_num_neighbors per query, so that is raised to token_k.
        nn_idx, nn_scores = self.searcher.search_batched_parallel(
            Q.reshape(N * L, E), final_num_neighbors=self.search.token_k,
            **(dict(leaves_to_search=self.search.leaves_to_search or None,
                    pre_reorder_num_neighbors=max(self.search.reorder, self.search.token_k)) if tree else {}))
        cand_docs = self.token_doc[np.asarray(nn_idx, np.int64)].reshape(N, L, -1)
        nn_scores = np.asarray(nn_scores, np.float32).reshape(N, L, -1)
        ids = np.full((N, k), -1, np.int64)
        scores = np.full((N, k), -np.inf, np.float32)

        def one(i: int) -> None:  # numpy releases the GIL in the gather, the conversion and the matmul
            docs = self._prune(cand_docs[i], nn_scores[i])
            s = self._rerank(Q[i], docs)
            top = np.argsort(-s, kind="stable")[:k]
            ids[i, : len(top)], scores[i, : len(top)] = docs[top], s[top]

        threads = min(self.search.num_threads or os.cpu_count() or 1, N)
        if threads > 1:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(N)))
        else:
            for i in range(N):
                one(i)
        return ids, scores

    def _prune(self, docs_LxK: np.ndarray, scores_LxK: np.ndarray) -> np.ndarray:
        """Candidate passages, keeping the best `rerank_docs` by approximate MaxSim: the sum over query tokens of
        the best retrieved token of the passage, 0 where a query token retrieved none of it. (Imputing the query
        token's k-th best score instead, an upper bound, ranked worse: recall@30 0.89 vs 0.94 on the test subset.)"""
        uniq, inv = np.unique(docs_LxK, return_inverse=True)
        n = self.search.rerank_docs
        if not n or len(uniq) <= n:
            return uniq
        L = docs_LxK.shape[0]
        best = np.full((L, len(uniq)), -np.inf, np.float32)
        np.maximum.at(best, (np.repeat(np.arange(L), docs_LxK.shape[1]), inv.ravel()), scores_LxK.ravel())
        approx = np.where(np.isneginf(best), 0.0, best).sum(axis=0)
        return np.sort(uniq[np.argpartition(-approx, n - 1)[:n]])

    def _rerank(self, Q_LxE: np.ndarray, docs: np.ndarray) -> np.ndarray:
        if len(docs) > RERANK_BLOCK:
            return np.concatenate([self._rerank(Q_LxE, docs[i: i + RERANK_BLOCK])
                                   for i in range(0, len(docs), RERANK_BLOCK)])
        return _segment_maxsim(Q_LxE, *self._gather(docs))

    def _gather(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fp32 token vectors of `docs`, concatenated [T, dim], and where each passage starts in them."""
        lo, hi = self.offsets[docs], self.offsets[docs + 1]
        counts = hi - lo
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        tok = np.repeat(lo - starts, counts) + np.arange(counts.sum())
        return self.emb[tok].astype(np.float32, copy=False), starts

    def exact_search(self, Q_NxLxE: np.ndarray, k: int = 30, chunk_tokens: int = 1 << 20):
        """Exact MaxSim against every passage (the reference). Same outputs as `search_embeddings`."""
        all_scores = self.exact_scores(Q_NxLxE, chunk_tokens)
        top = top_k(all_scores, k)
        return top, np.take_along_axis(all_scores, top, axis=1)

    def exact_scores(self, Q_NxLxE: np.ndarray, chunk_tokens: int = 1 << 20) -> np.ndarray:
        """MaxSim of every query against every passage, [N, passages] fp32."""
        Q = np.asarray(Q_NxLxE, np.float32)
        P = len(self.passages)
        all_scores = np.empty((Q.shape[0], P), np.float32)
        # passage-aligned chunks of about chunk_tokens tokens
        bounds = np.searchsorted(self.offsets, np.arange(0, self.offsets[-1], chunk_tokens), side="right") - 1
        bounds = np.unique(np.concatenate([bounds, [P]]))
        for a, b in zip(bounds[:-1], bounds[1:]):
            toks = self.emb[self.offsets[a]: self.offsets[b]].astype(np.float32, copy=False)
            starts = self.offsets[a:b] - self.offsets[a]
            for i in range(Q.shape[0]):
                all_scores[i, a:b] = _segment_maxsim(Q[i], toks, starts)
        return all_scores


def top_k(scores_NxP: np.ndarray, k: int) -> np.ndarray:
    """Every row's k best passage indices, best first (equal scores: the lower index first)."""
    return np.argsort(-scores_NxP, axis=1, kind="stable")[:, :k]


def index_version(corpus_checksum: str, encoder_checksum: str, cfg: ColBERTConfig, icfg: IndexConfig) -> str:
    """Checksum of what an index holds: corpus, encoder parameters, ColBERT config, IndexConfig."""
    blob = json.dumps([corpus_checksum, encoder_checksum, dataclasses.asdict(cfg), dataclasses.asdict(icfg)],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_index(corpus: Corpus, cfg: ColBERTConfig, params, ctok: ColBERTTokenizer, icfg: IndexConfig,
                search: SearchConfig, progress: bool = True) -> TokenIndex:
    """Encodes the corpus with the document encoder and builds the ScaNN token searcher."""
    return _build(list(corpus.passages), corpus.checksum(), cfg, params, ctok, icfg, search, progress)


def _build(passages: list[Passage], corpus_checksum: str, cfg: ColBERTConfig, params, ctok: ColBERTTokenizer,
           icfg: IndexConfig, search: SearchConfig, progress: bool) -> TokenIndex:
    t0 = time.time()
    emb, offsets = encode_passages(cfg, params, ctok, passages, icfg.encode_batch, icfg.length_buckets, progress)
    t1 = time.time()
    searcher = _scann_searcher(emb.astype(np.float32), icfg, search)
    enc_sum = params_checksum(params)
    meta = {"corpus_checksum": corpus_checksum, "encoder_checksum": enc_sum, "num_passages": len(passages),
            "num_tokens": int(offsets[-1]), "dim": int(emb.shape[1]), "encode_s": round(t1 - t0, 2),
            "scann_build_s": round(time.time() - t1, 2), "colbert": dataclasses.asdict(cfg)}
    version = index_version(meta["corpus_checksum"], enc_sum, cfg, icfg)
    return TokenIndex(passages, emb.astype(search.resident_dtype, copy=False), offsets, icfg, search, version, meta,
                      searcher)


class Retriever:
    """Live ColBERT query encoder + token index: `search(questions, k) -> (passage indices [Q, k], scores)`."""

    def __init__(self, cfg: ColBERTConfig, params, ctok: ColBERTTokenizer, index: TokenIndex):
        self.cfg, self.params, self.ctok, self.index = cfg, params, ctok, index

    def encode_queries(self, questions: Sequence[str]) -> np.ndarray:
        if not questions:
            raise ValueError("no questions to search")
        blank = [i for i, q in enumerate(questions) if not q.strip()]
        if blank:  # it would search with the [MASK] padding alone and still return passages
            raise ValueError(f"question {blank[0]} of {len(questions)} is empty: nothing to search with")
        ids, attn = self.ctok.queries(list(questions))
        return np.asarray(query_embeddings(self.params, jnp.asarray(ids), jnp.asarray(attn), cfg=self.cfg))

    def search(self, questions: Sequence[str], k: int = 30) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search_embeddings(self.encode_queries(questions), k)

    def exact_search(self, questions: Sequence[str], k: int = 30) -> tuple[np.ndarray, np.ndarray]:
        return self.index.exact_search(self.encode_queries(questions), k)

    def refresh(self, params, progress: bool = True) -> "Retriever":
        """Re-encodes the corpus with new retriever params and rebuilds the searcher (stale-index remedy)."""
        index = _build(self.index.passages, self.index.meta["corpus_checksum"], self.cfg, params, self.ctok,
                       self.index.icfg, self.index.search, progress)
        return Retriever(self.cfg, params, self.ctok, index)


def search_all(retriever: Retriever, queries: Sequence[str], k: int, exact: bool = False, batch: int = 64,
               progress: bool = False, desc: str = "searching") -> tuple[np.ndarray, np.ndarray]:
    """Every query, `batch` at a time: (passage indices [N, k], -1 where fewer were found; scores [N, k])."""
    if not queries:
        raise ValueError("no queries to search")
    fn = retriever.exact_search if exact else retriever.search
    ids, scores = [], []
    for i in tqdm.trange(0, len(queries), batch, desc=desc, disable=not progress):
        a, b = fn(list(queries[i: i + batch]), k)
        ids.append(a)
        scores.append(b)
    return np.concatenate(ids), np.concatenate(scores)

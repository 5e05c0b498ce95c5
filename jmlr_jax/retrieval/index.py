"""ColBERT token index: every kept document-token embedding in ScaNN, exact MaxSim rerank of candidates.

Search (ColBERTv1 end-to-end): each query token's `token_k` nearest document-token vectors (ScaNN,
dot product) -> the union of their passages -> exact MaxSim of the live query embedding against the
stored token embeddings of those candidates -> top-k. `exact_search` scores every passage with MaxSim
and is the reference the ScaNN path is measured against.

Storage: token embeddings in fp16 ([T, dim], only tokens that take part in MaxSim: no punctuation, no
padding) with per-passage offsets [P + 1]. The index version is a checksum of the corpus, the encoder
parameters and every setting, so loading against another corpus or encoder is an error.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jmlr_jax.errors import InputError
from jmlr_jax.models.colbert import ColBERT, ColBERTConfig, ColBERTTokenizer
from jmlr_jax.retrieval.corpus import Corpus, Passage

FORMAT_VERSION = 1


class IndexMismatchError(InputError):
    """The index on disk was built from a different corpus, encoder or settings."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class IndexConfig:
    encode_batch: int = 64
    length_buckets: tuple[int, ...] = (32, 64, 96, 128, 160, 192, 256, 384, 512)  # one compile per bucket
    brute_force_below: int = 250_000  # token vectors; tree + AH + reorder above
    num_leaves: int = 0  # 0: ~sqrt(num token vectors)
    leaves_to_search: int = 0  # 0: num_leaves // 10
    dims_per_block: int = 2
    aq_threshold: float = 0.2
    reorder: int = 256  # ScaNN re-scores at least this many AH candidates per query token exactly (token_k if more)
    training_sample: int = 250_000
    token_k: int = 32  # nearest document tokens per query token (ColBERT's k')
    rerank_docs: int = 0  # exact-rerank only the best N candidates by approximate MaxSim; 0 = all candidates
    num_threads: int = 0  # search threads (ScaNN, and the exact rerank of one query per thread); 0 = all cores
    # Embeddings in memory (stored fp16 on disk either way). float32 doubles the memory but spares every query
    # the fp16 -> fp32 conversion of its candidates' tokens, which costs more than their MaxSim.
    resident_dtype: str = "float16"


# Settings that only change how an index is searched, not what it stores: outside the index version, and taken
# from the caller's config when an index is loaded (so --gin.IndexConfig.token_k=... needs no rebuild).
SEARCH_FIELDS = ("leaves_to_search", "reorder", "token_k", "rerank_docs", "num_threads", "resident_dtype")
RERANK_BLOCK = 320  # passages per exact-MaxSim block: their gathered fp32 tokens (~20 MB) stay in cache


def params_checksum(params) -> str:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


def encode_passages(cfg: ColBERTConfig, params, ctok: ColBERTTokenizer, passages: Sequence[Passage],
                    icfg: IndexConfig, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token embeddings of every passage, kept tokens only: (emb [T, dim] fp16, offsets [P + 1] int64).

    Passages are sorted by length and encoded in fixed-size batches per length bucket, so the jitted
    encoder compiles once per bucket, not once per batch, and short passages are not padded to long ones.
    """
    if not passages:
        raise ValueError("no passages to encode")
    model = ColBERT(cfg)
    encode = jax.jit(lambda p, ids, attn, keep: model.apply({"params": p}, ids, attn, keep, method="encode_doc"))
    maxlen = cfg.doc_maxlen
    ids, attn, keep = ctok.docs([p.with_title for p in passages], pad_to=maxlen)
    lengths = attn.sum(1)
    buckets = sorted({min(b, maxlen) for b in icfg.length_buckets} | {maxlen})
    per_passage: list[np.ndarray | None] = [None] * len(passages)
    order = np.argsort(lengths, kind="stable")
    B = icfg.encode_batch
    bar = tqdm.tqdm(total=len(passages), desc="encoding passages", unit="psg", disable=not progress)
    for lo, hi in zip([0] + buckets[:-1], buckets):
        members = order[(lengths[order] > lo) & (lengths[order] <= hi)]
        for s in range(0, len(members), B):
            rows = members[s: s + B]
            pad = B - len(rows)
            take = lambda a: np.pad(a[rows, :hi], ((0, pad), (0, 0)))  # noqa: E731
            emb = np.asarray(encode(params, take(ids), take(attn), take(keep)))
            for j, r in enumerate(rows):
                per_passage[r] = emb[j][keep[r, :hi] > 0].astype(np.float16)
            bar.update(len(rows))
    bar.close()
    counts = np.array([len(e) for e in per_passage], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return np.concatenate(per_passage), offsets


def _scann_searcher(emb: np.ndarray, icfg: IndexConfig):
    import scann

    n = len(emb)
    builder = scann.scann_ops_pybind.builder(emb, icfg.token_k, "dot_product")
    if n < icfg.brute_force_below:
        return builder.score_brute_force().build()
    leaves = icfg.num_leaves or int(np.sqrt(n))
    return (builder.tree(num_leaves=leaves, num_leaves_to_search=icfg.leaves_to_search or max(leaves // 10, 1),
                         training_sample_size=min(icfg.training_sample, n))
            .score_ah(icfg.dims_per_block, anisotropic_quantization_threshold=icfg.aq_threshold)
            .reorder(icfg.reorder).build())


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
    version: str
    meta: dict
    searcher: object = None

    @property
    def token_doc(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.passages), dtype=np.int32), np.diff(self.offsets))

    # ------------------------------------------------------------------------------------- search
    def search_embeddings(self, Q_NxLxE: np.ndarray, k: int = 30) -> tuple[np.ndarray, np.ndarray]:
        """ScaNN candidates + exact MaxSim rerank. Returns passage indices [N, k] (-1 pads) and scores."""
        Q = np.asarray(Q_NxLxE, np.float32)
        N, L, E = Q.shape
        tree = len(self.emb) >= self.icfg.brute_force_below  # leaves_to_search is a query-time knob of the tree
        # A tree searcher returns at most pre_reorder_num_neighbors per query, so that is raised to token_k.
        nn_idx, nn_scores = self.searcher.search_batched_parallel(
            Q.reshape(N * L, E), final_num_neighbors=self.icfg.token_k,
            **(dict(leaves_to_search=self.icfg.leaves_to_search or None,
                    pre_reorder_num_neighbors=max(self.icfg.reorder, self.icfg.token_k)) if tree else {}))
        cand_docs = self.token_doc[np.asarray(nn_idx, np.int64)].reshape(N, L, -1)
        nn_scores = np.asarray(nn_scores, np.float32).reshape(N, L, -1)
        ids = np.full((N, k), -1, np.int64)
        scores = np.full((N, k), -np.inf, np.float32)

        def one(i: int) -> None:  # numpy releases the GIL in the gather, the conversion and the matmul
            docs = self._prune(cand_docs[i], nn_scores[i])
            s = self._rerank(Q[i], docs)
            top = np.argsort(-s, kind="stable")[:k]
            ids[i, : len(top)], scores[i, : len(top)] = docs[top], s[top]

        threads = min(self.icfg.num_threads or os.cpu_count() or 1, N)
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
        n = self.icfg.rerank_docs
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
        top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        return top, np.take_along_axis(all_scores, top, axis=1)

    # -------------------------------------------------------------------------------- persistence
    def save(self, directory: str) -> None:
        """Writes manifest.json, embeddings.npy, offsets.npy, passages.jsonl and the ScaNN artifacts."""
        tmp = directory.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "scann"))
        np.save(os.path.join(tmp, "embeddings.npy"), self.emb.astype(np.float16, copy=False))
        np.save(os.path.join(tmp, "offsets.npy"), self.offsets)
        with open(os.path.join(tmp, "passages.jsonl"), "w", encoding="utf-8") as f:
            for p in self.passages:
                f.write(json.dumps(dataclasses.asdict(p), ensure_ascii=False) + "\n")
        self.searcher.serialize(os.path.join(tmp, "scann"), relative_path=True)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(dict(self.meta, version=self.version, format=FORMAT_VERSION,
                           settings=dataclasses.asdict(self.icfg)), f, indent=2)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)  # a crash mid-save never leaves a half-written index in place


def index_version(corpus_checksum: str, encoder_checksum: str, cfg: ColBERTConfig, icfg: IndexConfig) -> str:
    stored = {k: v for k, v in dataclasses.asdict(icfg).items() if k not in SEARCH_FIELDS}
    blob = json.dumps([corpus_checksum, encoder_checksum, dataclasses.asdict(cfg), stored], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_index(corpus: Corpus, cfg: ColBERTConfig, params, ctok: ColBERTTokenizer, icfg: IndexConfig | None = None,
                progress: bool = True) -> TokenIndex:
    """Encodes the corpus with the document encoder and builds the ScaNN token searcher (icfg: gin-bound default)."""
    return _build(list(corpus.passages), corpus.checksum(), cfg, params, ctok, icfg or IndexConfig(), progress)


def _build(passages: list[Passage], corpus_checksum: str, cfg: ColBERTConfig, params, ctok: ColBERTTokenizer,
           icfg: IndexConfig, progress: bool) -> TokenIndex:
    t0 = time.time()
    emb, offsets = encode_passages(cfg, params, ctok, passages, icfg, progress)
    t1 = time.time()
    searcher = _scann_searcher(emb.astype(np.float32), icfg)
    enc_sum = params_checksum(params)
    meta = {"corpus_checksum": corpus_checksum, "encoder_checksum": enc_sum, "num_passages": len(passages),
            "num_tokens": int(offsets[-1]), "dim": int(emb.shape[1]), "encode_s": round(t1 - t0, 2),
            "scann_build_s": round(time.time() - t1, 2), "colbert": dataclasses.asdict(cfg)}
    version = index_version(meta["corpus_checksum"], enc_sum, cfg, icfg)
    return TokenIndex(passages, emb.astype(icfg.resident_dtype, copy=False), offsets, icfg, version, meta, searcher)


def cached_index(corpus: Corpus, cfg: ColBERTConfig, params, ctok: ColBERTTokenizer, icfg: IndexConfig, root: str,
                 also: Sequence[str] = (), fallback: str = "", progress: bool = True) -> TokenIndex:
    """The index of `corpus` under these encoder params and settings, from the first of:
    `root/index-<version>`; a directory in `also` that holds exactly that version; `fallback` (a prebuilt index
    that must match corpus and params: a mismatch is an error); else built and saved to `root/index-<version>`."""
    version = index_version(corpus.checksum(), params_checksum(params), cfg, icfg)
    own = os.path.join(root, f"index-{version}")
    for d in (own, *also):
        try:
            with open(os.path.join(d, "manifest.json")) as f:
                if json.load(f).get("version") == version:
                    return load_index(d, corpus=corpus, params=params, search=icfg)
        except (OSError, json.JSONDecodeError):
            continue
    if fallback:
        return load_index(fallback, corpus=corpus, params=params, search=icfg)
    build_index(corpus, cfg, params, ctok, icfg, progress=progress).save(own)
    return load_index(own, corpus=corpus, params=params, search=icfg)


def load_index(directory: str, corpus: Corpus | None = None, params=None,
               search: IndexConfig | None = None) -> TokenIndex:
    """Loads a saved index; with `corpus` / `params` given, checks they are what it was built from. The
    search-time settings (SEARCH_FIELDS) come from `search` when given, else from the index's manifest."""
    import scann

    manifest_path = os.path.join(directory, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"{directory}: no manifest.json (not an index directory, or an interrupted save)")
    try:
        with open(manifest_path) as f:
            meta = json.load(f)
        version, settings = meta.pop("version"), meta.pop("settings")
    except (json.JSONDecodeError, KeyError) as e:
        raise IndexMismatchError(f"{manifest_path}: corrupt manifest ({e})") from None
    if meta.pop("format", None) != FORMAT_VERSION:
        raise IndexMismatchError(f"{directory}: index format differs from {FORMAT_VERSION}; rebuild it")
    if corpus is not None and corpus.checksum() != meta["corpus_checksum"]:
        raise IndexMismatchError(f"{directory}: built from corpus {meta['corpus_checksum']}, but the given corpus is "
                                 f"{corpus.checksum()}; rebuild the index (launch/build_index.py)")
    if params is not None and params_checksum(params) != meta["encoder_checksum"]:
        raise IndexMismatchError(f"{directory}: built with encoder {meta['encoder_checksum']}, but the given "
                                 f"retriever params are {params_checksum(params)}; refresh the index")
    try:
        icfg = IndexConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    except TypeError as e:
        raise IndexMismatchError(f"{manifest_path}: unknown index settings ({e}); rebuild the index") from None
    try:
        emb = np.load(os.path.join(directory, "embeddings.npy"))
        offsets = np.load(os.path.join(directory, "offsets.npy"))
        with open(os.path.join(directory, "passages.jsonl"), encoding="utf-8") as f:
            passages = [Passage(**json.loads(line)) for line in f]
        searcher = scann.scann_ops_pybind.load_searcher(os.path.join(directory, "scann"))
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise IndexMismatchError(f"{directory}: corrupt or incomplete index files ({e})") from None
    if len(passages) != meta["num_passages"] or len(offsets) != len(passages) + 1 or len(emb) != offsets[-1]:
        raise IndexMismatchError(f"{directory}: embeddings, offsets and passages disagree; rebuild the index")
    if search is not None:
        icfg = dataclasses.replace(icfg, **{f: getattr(search, f) for f in SEARCH_FIELDS})
    return TokenIndex(passages, emb.astype(icfg.resident_dtype, copy=False), offsets, icfg, version, meta, searcher)


class Retriever:
    """Live ColBERT query encoder + token index: `search(questions, k) -> (passage indices [Q, k], scores)`."""

    def __init__(self, cfg: ColBERTConfig, params, ctok: ColBERTTokenizer, index: TokenIndex):
        self.cfg, self.params, self.ctok, self.index = cfg, params, ctok, index
        model = ColBERT(cfg)
        self._encode = jax.jit(lambda p, ids, attn: model.apply({"params": p}, ids, attn, method="encode_query"))

    def encode_queries(self, questions: Sequence[str]) -> np.ndarray:
        if not questions:
            raise ValueError("no questions to search")
        ids, attn = self.ctok.queries(list(questions))
        return np.asarray(self._encode(self.params, jnp.asarray(ids), jnp.asarray(attn)))

    def search(self, questions: Sequence[str], k: int = 30) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search_embeddings(self.encode_queries(questions), k)

    def exact_search(self, questions: Sequence[str], k: int = 30) -> tuple[np.ndarray, np.ndarray]:
        return self.index.exact_search(self.encode_queries(questions), k)

    def refresh(self, params, progress: bool = True) -> "Retriever":
        """Re-encodes the corpus with new retriever params and rebuilds the searcher (stale-index remedy)."""
        index = _build(self.index.passages, self.index.meta["corpus_checksum"], self.cfg, params, self.ctok,
                       self.index.icfg, progress)
        return Retriever(self.cfg, params, self.ctok, index)

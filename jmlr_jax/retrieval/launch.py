"""The entry points behind launch/build_index.py and launch/search.py (their own settings gin-bound here; the
corpus, retriever and index settings come from the root config the launcher built)."""
from __future__ import annotations

import time

import gin

from jmlr_jax.experiment import Experiment
from jmlr_jax.retrieval.encode import retriever_preset
from jmlr_jax.retrieval.index import Retriever, build_index
from jmlr_jax.retrieval.store import check_index_dir, load_index, save_index


@gin.configurable
def index_main(exp: Experiment, index_dir: str = gin.REQUIRED) -> str:
    """Reads the corpus, encodes it, builds the ScaNN token index and saves it to `index_dir`."""
    t0 = time.time()
    check_index_dir(index_dir)  # before minutes of encoding
    corpus = exp.corpus.load(exp.data.data_dir)
    print(f"corpus: {len(corpus)} passages ({corpus.skipped} malformed records skipped, {corpus.duplicates} "
          f"duplicate passages dropped), checksum {corpus.checksum()}")
    cfg, params, ctok = retriever_preset(exp.retriever)
    index = build_index(corpus, cfg, params, ctok, exp.index, exp.search)
    save_index(index, index_dir)
    m = index.meta
    print(f"index {index.version}: {m['num_tokens']} token vectors x {m['dim']} (fp16, "
          f"{index.emb.nbytes / 2**20:.0f} MiB); encode {m['encode_s']:.0f} s, ScaNN build {m['scann_build_s']:.0f} s; "
          f"total {time.time() - t0:.0f} s -> {index_dir}")
    return index_dir


def open_retriever(exp: Experiment, index_dir: str) -> Retriever:
    """Index from disk + the retriever it was built with (checked by the encoder checksum); search settings
    from exp.search."""
    cfg, params, ctok = retriever_preset(exp.retriever)
    return Retriever(cfg, params, ctok, load_index(index_dir, params=params, search=exp.search))


@gin.configurable
def search_main(exp: Experiment, question: str = gin.REQUIRED, index_dir: str = gin.REQUIRED, k: int = 10,
                exact: bool = False) -> None:
    """Prints the top-k passages (rank, score, id, title, source) for one question."""
    if not question.strip():
        raise ValueError("question is empty")  # the error line names search_main
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k={k!r} must be a positive integer")
    r = open_retriever(exp, index_dir)
    t = time.time()
    ids, scores = (r.exact_search if exact else r.search)([question], k)
    dt = time.time() - t
    print(f"{'exact MaxSim' if exact else 'ScaNN + MaxSim rerank'} over {len(r.index.passages)} passages "
          f"({dt * 1000:.0f} ms): {question}")
    for rank, (i, s) in enumerate(zip(ids[0], scores[0]), 1):
        if i < 0:
            break
        p = r.index.passages[i]
        print(f"{rank:3d}. {s:7.3f}  {p.id:24s} {(p.title or p.text)[:90]}  [{p.source}]")

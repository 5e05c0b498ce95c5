"""Where a ScaNN + exact-MaxSim search spends its time, per query, on the full corpus's saved index.

    python bench/retrieval_stages.py            # needs workdir/index_minilm (python bench/retrieval.py builds it)

Real candidates (PubMedQA questions through ScaNN), one thread for the rerank stages. Prints a markdown table:
ScaNN (all cores, per query) at two token_k, candidate pruning, and the exact rerank split into gathering the
candidates' token vectors, their MaxSim product and the per-passage max; then the rerank whole vs in blocks
(index.RERANK_BLOCK) and with fp16 vs fp32 embeddings in memory.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the rerank stages on one core; ScaNN has its own threads
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gin  # noqa: E402
import numpy as np  # noqa: E402

from jmlr_jax import config, experiment  # noqa: E402
from jmlr_jax.retrieval import index as index_lib  # noqa: E402
from jmlr_jax.retrieval import launch  # noqa: E402


def per_query_ms(fn, items) -> float:
    t = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - t) / len(items) * 1e3


def main() -> None:
    config.parse(["retrieval/minilm_index.gin"], config.split_gin_args(sys.argv[1:])[1])
    r = launch.open_retriever(experiment.from_gin(), gin.query_parameter("%INDEX_DIR"))
    idx = r.index
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "pubmedqa",
                           "ori_pqal.json")) as f:
        questions = [v["QUESTION"] for v in json.load(f).values()][:100]
    Q = r.encode_queries(questions)
    N, L, E = Q.shape
    narrow = dataclasses.replace(idx, emb=idx.emb.astype(np.float16, copy=False))
    wide = dataclasses.replace(idx, emb=idx.emb.astype(np.float32, copy=False))
    rows = []
    cands = {}
    for token_k in (256, 512):
        cfg = dataclasses.replace(idx.search, token_k=token_k)
        kw = dict(leaves_to_search=cfg.leaves_to_search or None, pre_reorder_num_neighbors=max(cfg.reorder, token_k))
        idx.searcher.search_batched_parallel(Q[:4].reshape(-1, E), final_num_neighbors=token_k, **kw)  # warm
        t = time.perf_counter()
        nn_idx, nn_s = idx.searcher.search_batched_parallel(Q.reshape(N * L, E), final_num_neighbors=token_k, **kw)
        rows.append((f"ScaNN, token_k {token_k} (all cores)", (time.perf_counter() - t) / N * 1e3))
        cands[token_k] = (idx.token_doc[np.asarray(nn_idx, np.int64)].reshape(N, L, -1),
                          np.asarray(nn_s, np.float32).reshape(N, L, -1))
    cd, sc = cands[idx.search.token_k] if idx.search.token_k in cands else cands[512]
    for n in (640, 1024):
        sub = dataclasses.replace(wide, search=dataclasses.replace(idx.search, rerank_docs=n))
        rows.append((f"prune to {n} candidates", per_query_ms(lambda i: sub._prune(cd[i], sc[i]), range(N))))
        docs = [sub._prune(cd[i], sc[i]) for i in range(N)]
        gathered = [sub._gather(d) for d in docs]
        sims = [Q[i] @ g[0].T for i, g in enumerate(gathered)]
        rows.append((f"  gather {n} candidates' tokens (fp32 resident)", per_query_ms(sub._gather, docs)))
        rows.append((f"  MaxSim product ({L} x {E} x ~{np.mean([len(g[0]) for g in gathered]):.0f} tokens)",
                     per_query_ms(lambda i: Q[i] @ gathered[i][0].T, range(N))))
        rows.append(("  per-passage max + sum", per_query_ms(
            lambda i: np.maximum.reduceat(sims[i], gathered[i][1], axis=1).sum(0), range(N))))
        default_block = index_lib.RERANK_BLOCK
        for name, ix in (("fp32", wide), ("fp16", narrow)):
            for block in (0, default_block):
                index_lib.RERANK_BLOCK = block or len(idx.passages)  # 0: one block
                ms = per_query_ms(lambda i: ix._rerank(Q[i], docs[i]), range(N))
                rows.append((f"exact rerank of {n}, {name} resident, {f'blocks of {block}' if block else 'whole'}", ms))
        index_lib.RERANK_BLOCK = default_block
    print(f"\n{N} PubMedQA questions, {len(idx.passages)} passages, {len(idx.emb)} token vectors; rerank stages on "
          f"one thread\n\n| stage | ms per query |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
    else:
        with config.exits_on_bad_input():  # no index yet: one line, exit 2
            main()

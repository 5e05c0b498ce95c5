"""Retrieval benchmark on the full real corpus: index build, ScaNN vs exact MaxSim, PubMedQA gold recall.

    python bench/retrieval.py                         # builds workdir/index_minilm if absent (~30 min on 2 cores)
    python bench/retrieval.py --rebuild               # force a rebuild (times the encode + ScaNN build)

Corpus and index settings come from configs/retrieval/minilm_index.gin. Queries are the 1,000 PubMedQA
(PQA-L) questions, whose abstracts are in the corpus. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import os
import resource
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gin  # noqa: E402
import numpy as np  # noqa: E402

from jmlr_jax import config, experiment  # noqa: E402
from jmlr_jax.retrieval import launch  # noqa: E402


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--exact_queries", type=int, default=200, help="queries compared against exact search")
    args, rest = ap.parse_known_args()
    config.parse(["retrieval/minilm_index.gin"], config.split_gin_args(rest)[1])
    index_dir = gin.query_parameter("%INDEX_DIR")
    exp = experiment.from_gin()
    if args.rebuild or not os.path.isdir(index_dir):
        t = time.time()
        launch.index_main(exp)
        print(f"build wall time {time.time() - t:.0f} s, peak RSS {rss_gib():.1f} GiB")
    t = time.time()
    r = launch.open_retriever(exp, index_dir)
    load_s = time.time() - t
    idx = r.index
    m = idx.meta
    print(f"\nindex: {m['num_passages']} passages, {m['num_tokens']} token vectors x {m['dim']}, "
          f"embeddings {idx.emb.size * 2 / 2**30:.2f} GiB fp16; build: encode {m['encode_s']:.0f} s + ScaNN "
          f"{m['scann_build_s']:.0f} s; load {load_s:.1f} s")

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "pubmedqa",
                           "ori_pqal.json")) as f:
        pq = json.load(f)
    questions = [v["QUESTION"] for v in pq.values()]
    gold = [f"pmid-{k}" for k in pq]
    test_ids = set(json.loads(pathlib.Path(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                           "data", "pubmedqa", "test_ground_truth.json").read_text()))
    t = time.time()
    Q = r.encode_queries(questions)
    enc_s = time.time() - t

    n_exact = min(args.exact_queries, len(questions))
    t = time.time()
    exact_ids, _ = idx.exact_search(Q[:n_exact], k=30)
    exact_qps = n_exact / (time.time() - t)

    rows = []
    leaves = idx.icfg.num_leaves or int(np.sqrt(len(idx.emb)))
    tree = len(idx.emb) >= idx.icfg.brute_force_below
    lts = (idx.search.leaves_to_search or leaves // 10) if tree else 0
    emb = {"float16": idx.emb.astype(np.float16, copy=False), "float32": idx.emb.astype(np.float32, copy=False)}
    # (token_k, rerank_docs, resident dtype): more nearest tokens per query token finds more of the exact top-30;
    # pruning the candidates by approximate MaxSim keeps the exact rerank (the expensive part) bounded.
    settings = [(32, 0, "float16"), (128, 512, "float16"), (256, 1024, "float16"), (128, 512, "float32"),
                (256, 768, "float32"), (256, 1024, "float32"), (512, 512, "float32"), (512, 640, "float32"),
                (1024, 640, "float32")]
    default_setting = (idx.search.token_k, idx.search.rerank_docs, idx.search.resident_dtype)  # the gin config's
    if default_setting not in settings:
        settings.append(default_setting)
    for token_k, rerank, dtype in settings:
        sub = dataclasses.replace(idx, emb=emb[dtype], search=dataclasses.replace(
            idx.search, token_k=token_k, rerank_docs=rerank, resident_dtype=dtype))
        sub.search_embeddings(Q[:8], k=30)  # warm
        t = time.time()
        ids, _ = sub.search_embeddings(Q, k=30)
        qps = len(Q) / (time.time() - t)
        recall = np.mean([len(set(a) & set(e)) / 30 for a, e in zip(ids[:n_exact], exact_ids)])
        rows.append((token_k, rerank, dtype, recall, qps, qps / exact_qps, ids))

    print(f"\nScaNN ({'tree ' + str(leaves) + ' leaves, ' + str(lts) + ' searched, AH + exact re-scoring of max(' + str(idx.search.reorder) + ', token_k)' if tree else 'brute force'}"
          f") + exact MaxSim rerank vs exact MaxSim over all passages; {len(Q)} PubMedQA questions "
          f"(recall over the first {n_exact}); query encoding {len(Q) / enc_s:.0f} q/s (not included below)\n")
    print("| token_k | exact rerank of | embeddings in memory | recall@30 vs exact | queries/s | speed-up vs exact |")
    print("|---|---|---|---|---|---|")
    for token_k, rerank, dtype, recall, qps, speedup, _ in rows:
        print(f"| {token_k} | {'best ' + str(rerank) if rerank else 'all candidates'} | {dtype} | {recall:.3f} | "
              f"{qps:.1f} | {speedup:.1f}x |")
    print(f"| exact | all passages | float16 | 1.000 | {exact_qps:.2f} | 1x |")

    default = next(rw for rw in rows if (rw[0], rw[1], rw[2]) == default_setting)
    print(f"\nPubMedQA gold abstract retrieved (token_k={default[0]}, rerank {default[1] or 'all'}, the setting in "
          f"retrieval/minilm_index.gin; question alone as query; "
          f"the 500 test abstracts are in the corpus):\n")
    print("| questions | n | top-1 | top-7 | top-30 |")
    print("|---|---|---|---|---|")
    for name, sel in (("all PQA-L", lambda g: True), ("test half", lambda g: g[5:] in test_ids)):
        hits = [[g == idx.passages[i].doc_id if i >= 0 else False for i in row] for row, g in zip(default[6], gold)
                if sel(g)]
        hits = np.asarray(hits)
        print(f"| {name} | {len(hits)} | {hits[:, :1].any(1).mean():.3f} | {hits[:, :7].any(1).mean():.3f} | "
              f"{hits[:, :30].any(1).mean():.3f} |")


if __name__ == "__main__":
    main()

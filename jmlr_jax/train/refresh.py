"""The training questions' candidates (host retrieval, cached per index version) and the index refresh
(re-encode the corpus with the live retriever: the stale-index remedy)."""
from __future__ import annotations

import glob
import os
import shutil
import time
from typing import Sequence

import numpy as np

from jmlr_jax.errors import InputError
from jmlr_jax.retrieval.index import Retriever, search_all
from jmlr_jax.retrieval.store import save_index
from jmlr_jax.workdir import save_npy


def training_candidates(retriever: Retriever, queries: Sequence[str], num_candidates: int, workdir: str,
                        progress: bool = True) -> np.ndarray:
    """[N, C] passage indices for the training questions, cached as candidates-<index version>.npy."""
    path = os.path.join(workdir, f"candidates-{retriever.index.version}.npy")
    if os.path.isfile(path):
        cands = np.load(path)
        if cands.shape == (len(queries), num_candidates):
            return cands
    cands, _ = search_all(retriever, queries, num_candidates, progress=progress, desc="retrieving candidates")
    if (cands < 0).any():
        raise InputError(f"the index returned fewer than {num_candidates} passages for some questions; "
                         "lower num_candidates or raise SearchConfig.token_k")
    save_npy(path, cands)  # hosts sharing the workdir write it aside, then rename
    return cands


def refresh(retriever: Retriever, params, workdir: str, recall_queries: Sequence[str], k: int,
            progress: bool = True) -> tuple[Retriever, dict]:
    """Re-encodes the corpus with `params`, rebuilds ScaNN, saves it as <workdir>/index-<version> (the last two
    kept) -> (new retriever, {"refresh_recall_vs_exact": ScaNN recall@k vs exact on the sample, "refresh_s"})."""
    t = time.time()
    new = retriever.refresh(params, progress=progress)
    save_index(new.index, os.path.join(workdir, f"index-{new.index.version}"))
    Q = new.encode_queries(list(recall_queries))
    approx, _ = new.index.search_embeddings(Q, k)
    exact, _ = new.index.exact_search(Q, k)
    recall = float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))
    prune_indexes(workdir)
    return new, {"refresh_recall_vs_exact": recall, "refresh_s": time.time() - t}


def prune_indexes(workdir: str, keep: int = 2) -> None:
    """Deletes all but the `keep` newest saved indexes under `workdir` (the latest checkpoint's is among them);
    another host's copy still being written aside (`*.tmp`, see workdir.tmp_name) is not an index: left alone."""
    saved = [d for d in glob.glob(os.path.join(workdir, "index-*")) if not d.endswith(".tmp")]
    for d in sorted(saved, key=os.path.getmtime)[:-keep]:
        shutil.rmtree(d, ignore_errors=True)

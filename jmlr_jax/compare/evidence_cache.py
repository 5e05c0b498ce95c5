"""The evidence comparison's training data and caches (jmlr_jax.compare.evidence): each training question's top-C
candidates, the base generator's answer loss with each candidate alone in context (computed once, resumable, reused
across candidate sets) and their published copies, and the fused-step examples built from them. A mixin of
Comparison, whose models, indexes and search these call."""
from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
import tqdm

from jmlr_jax.compare.evidence_setup import sha, write_json
from jmlr_jax.data.pipeline import JMLRExamples
from jmlr_jax.errors import InputError
from jmlr_jax.train.losses import answer_nll
from jmlr_jax.workdir import save_npy


class Caches:
    """Candidates, cached generator losses and fused-step examples for the training (or pool) questions."""

    def _records(self, pool: bool) -> list:
        return self.setup.pool if pool else self.setup.train

    def _cache(self, stem: str, pool: bool, mined_by: str = "") -> str:
        """A cache file's path in work_dir; a missing one is first restored from its published copy (see
        publish_cache) when that was made from the same corpus, questions, models and budgets."""
        tag = (f"-pool{len(self.setup.pool)}" if pool else "") + ("-kept" if pool and self._kept else "") + \
            (f"-{mined_by}" if mined_by else "")
        path = os.path.join(self.cfg.work_dir, f"{stem}-C{self.cfg.num_candidates}{tag}.npy")
        published = os.path.join(self.cfg.out_dir, "cache", os.path.basename(path))
        if not mined_by and not os.path.exists(path) and os.path.exists(published):
            with open(published + ".json") as f:
                made_for = json.load(f)
            if made_for == self._cache_key(pool):
                save_npy(path, np.load(published))
                self.log(f"[compare] {path}: restored from {published}")
            else:
                self.log(f"[compare] {published} was made for other data or settings ({made_for}); not used")
        return path

    def _cache_key(self, pool: bool) -> dict:
        """What the candidates and cached generator losses depend on."""
        c = self.cfg
        questions = sha(json.dumps([r.id for r in self._records(pool)]))
        return {"corpus": self.setup.corpus.checksum(), "questions": questions, "llm": c.llm, "retriever": c.retriever,
                "budgets": [c.doc_tokens, c.question_tokens, c.answer_tokens],
                **({"kept_candidates": len(self.setup.pool) - self.setup.n_extra} if pool and self._kept else {})}

    def publish_cache(self, pool: bool = True) -> list[str]:
        """Copies the base retriever's candidates and the generator's complete loss cache for these questions to
        out_dir/cache (small; committed), each with what it was made for, so a fresh checkout skips recomputing
        them (the pool with extra focuses: ~2 hours on 2 cores)."""
        os.makedirs(os.path.join(self.cfg.out_dir, "cache"), exist_ok=True)
        written = []
        for stem in ("candidates", "doc_losses"):
            path = self._cache(stem, pool)
            arr = np.load(path)
            if stem == "doc_losses" and np.isnan(arr).any():
                raise InputError(f"{path} is incomplete: finish caching before publishing it")
            out = os.path.join(self.cfg.out_dir, "cache", os.path.basename(path))
            np.save(out, arr.astype(np.int32) if stem == "candidates" else arr)
            write_json(out + ".json", self._cache_key(pool))
            written.append(out)
        return written

    def candidates(self, pool: bool = False, mined_by: str = "", rparams=None) -> np.ndarray:
        """The top-C for every training (or pool) question [N, C] (cached in work_dir): the base retriever's, or
        (mined_by = an index tag registered by refresh_index) `rparams`' over the corpus that tag's encoder encoded."""
        path = self._cache("candidates", pool, mined_by)
        if not os.path.exists(path):
            if mined_by and rparams is None:
                raise InputError(f"{path} is missing: candidates mined by {mined_by} need its retriever")
            rparams = self.models()[4] if rparams is None else rparams
            recs, docs, C = self._records(pool), mined_by or "base", self.cfg.num_candidates
            if pool and self._kept:  # eL's questions from the corpus alone (the prefix of the training view)
                n = len(recs) - self.setup.n_extra
                cands = np.concatenate([self.search(rparams, recs[:n], C, docs=docs, view="main"),
                                        self.search(rparams, recs[n:], C, docs=docs, view="train")])
            else:
                cands = self.search(rparams, recs, C, docs=docs, view="train")
            np.save(path, cands)
        return np.load(path)

    def examples(self, doc_losses: np.ndarray | None = None, pool: bool = False, n: int | None = None,
                 live_docs: bool = False, candidates: np.ndarray | None = None) -> JMLRExamples:
        """The first n training (or pool) questions as fused-step examples (candidates: indices into the "train"
        view, the base retriever's unless given); the candidates' token vectors come from the base index (frozen
        document side) unless live_docs (their tokens, encoded in the step)."""
        _, _, tok, _, _, ctok = self.models()
        train_view = self.index(view="train")
        n = n or len(self._records(pool))
        cands = self.candidates(pool) if candidates is None else candidates
        return JMLRExamples([r.as_record() for r in self._records(pool)[:n]], cands[:n],
                            train_view.passages, tok, ctok, self.template, self.budgets,
                            doc_index=None if live_docs else train_view,
                            doc_losses=None if doc_losses is None else doc_losses[:n])

    def _known_losses(self, n: int) -> dict[tuple[int, int], float]:
        """Every cached generator loss of the first n questions, keyed by (question row, passage): from the
        training set's and the pool's caches, base candidates or re-mined (rows are the pool's order, which starts
        with the training set)."""
        known: dict[tuple[int, int], float] = {}
        stem = os.path.join(self.cfg.work_dir, f"doc_losses-C{self.cfg.num_candidates}")
        for lpath in sorted(glob.glob(glob.escape(stem) + "*.npy")):
            cpath = os.path.join(self.cfg.work_dir, "candidates" + os.path.basename(lpath)[len("doc_losses"):])
            if ".tmp" in lpath or not os.path.exists(cpath):
                continue
            losses, cands = np.load(lpath)[:n], np.load(cpath)[:n]
            for i, j in zip(*np.nonzero(np.isfinite(losses))):
                known[int(i), int(cands[i, j])] = float(losses[i, j])
        return known

    def _loss_fn(self):
        """jit(params, batch of C rows) -> each row's answer loss with its one document, as the fused step has it."""
        llm_cfg = self.models()[0]

        @jax.jit
        def losses(params, b):
            return answer_nll(llm_cfg, params, [(b["bos"], b["bos_valid"]), (b["docs"], b["docs_valid"]),
                                                (b["question"], b["question_valid"])],
                              b["answer"], b["answer_valid"], train=True)
        return losses

    def doc_losses(self, pool: bool = False, candidates: np.ndarray | None = None, mined_by: str = "") -> np.ndarray:
        """The base generator's answer loss with each candidate alone in context [N, C] (candidates: the base
        retriever's unless given, then cached under mined_by), exactly as the fused step computes it; cached in
        work_dir and written every few batches so an interrupted run resumes. A (question, passage) pair cached
        for any candidate set of the same questions is reused, so re-mined candidates cost only their new pairs."""
        path = self._cache("doc_losses", pool, mined_by)
        examples = self.examples(pool=pool, candidates=candidates)
        cands = examples.candidates
        N, C = cands.shape
        out = np.load(path) if os.path.exists(path) else np.full((N, C), np.nan, np.float32)
        if out.shape != (N, C):
            raise InputError(f"{path} holds losses {out.shape}, the candidates are {(N, C)}: delete it")
        missing = int(np.isnan(out).sum())
        if missing:
            known = self._known_losses(N)
            for i, j in zip(*np.nonzero(np.isnan(out))):
                out[i, j] = known.get((int(i), int(cands[i, j])), np.nan)
            if np.isnan(out).sum() < missing:  # what other caches filled (publish_cache reads it, even when complete)
                save_npy(path, out)
        todo = list(zip(*np.nonzero(np.isnan(out))))
        if not todo:
            return out
        losses, llm_params = self._loss_fn(), self.models()[1]
        keys = ("bos", "bos_valid", "docs", "docs_valid", "question", "question_valid", "answer", "answer_valid")
        chunks = [todo[k: k + C] for k in range(0, len(todo), C)]  # C rows a call: one compiled shape
        for n, chunk in enumerate(tqdm.tqdm(chunks, desc=f"caching generator losses ({len(todo)} pairs)",
                                            disable=not self.progress)):
            rows = [(examples(int(i)), int(j)) for i, j in chunk]
            rows += [rows[-1]] * (C - len(rows))
            batch = {k: np.stack([ex[k][j] if k.startswith("docs") else ex[k] for ex, j in rows]) for k in keys}
            vals = np.asarray(losses(llm_params, batch))
            for (i, j), v in zip(chunk, vals):
                out[i, j] = v
            if n % 10 == 9 or n == len(chunks) - 1:
                save_npy(path, out)
        return out

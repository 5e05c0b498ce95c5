"""The JMLR comparison on evidence-dependent tasks (MedQuAD by focus, PubMedQA long answers), sized for 2 CPU cores.

    python launch/compare_evidence.py --gin_file=compare/evidence.gin            # everything, resumable
    python launch/compare_evidence.py --gin_file=compare/evidence.gin --parts=d_s0   # one seed of JMLR alone
    # the same rerun into workdir/check and compared with the committed JSON (jmlr_jax.compare.check):
    python launch/compare_evidence.py --gin_file=compare/evidence.gin --parts=data,d_s0 --check=workdir/check

Arms (same training questions, steps, budgets and learning rates):
  a       base generator, no retrieval          frozen  base generator + the base retriever's top-K (no training)
  b       generator fine-tuned, no retrieval    c_s*    RAG: generator fine-tuned on the frozen retriever's top-K
  d_s*    JMLR: generator + retriever trained together (rank loss from the live generator's losses)
  e_s*    retriever-only JMLR: generator frozen, its loss per (question, candidate) computed once and cached
  dg_s*   diagnostic: d_s*'s generator with the frozen retriever (no training; splits d - c into the generator's
          part, dg - c, and the trained retriever's part, d - dg); EvidenceConfig.diagnostic = False leaves it out
With a pool (compare/evidence_more_data.gin), more: scale (arm e on the first n pool questions, dev recall per n and
lr), passes (arm e on the whole pool, dev recall per number of passes) and eL_s* (arm e trained on the whole pool
at the lr and passes those chose; only arm e grows, its generator losses are cached once); negatives (arm e on the
whole pool in batches, without and with in-batch negatives) may change eL's batch; eB_s* (both_sides) train arm eL
with the document side too and are evaluated on the corpus re-encoded by their trained encoder (index refresh);
eR_s* (second_round) continue each eB for one more pass on the candidates its retriever re-mined from that corpus;
eT_s* and eTR_s* (sharp_posterior) are eB and eR at the KL target temperature part posterior chose on dev;
dL_s* and cL_s* (joint_pool_seeds) are arms d and c on the same pool at eL's settings, the generator trained live.
With extra training focuses (compare/evidence_more_focuses*.gin): focuses (or focuses_kept) and eF_s* (or eK_s*),
and with both_sides eFB_s* (or eKB_s*), eB's remedy on that pool.
Last, chat_<part> for every arm whose generator is the base (a, frozen, e and the e* pool arms): the base generator's
greedy answers in its own chat template with the passages <part> fed it (the plain template's answers of the
untrained instruct model are mostly empty, so they cannot tell these arms' retrievers apart), and chat_gold, the
same with the oracle passage (the first passage of the question's own answer): perfect retrieval's ceiling.
Retriever training moves the query encoder only (except eB, eR, eFB, eKB, eT, eTR): the candidates' token vectors
come from the index built by the base encoder (the document side is frozen), so the index never goes stale and the
held-out evaluation searches the whole corpus exactly (MaxSim against every passage) with each arm's own query
encoder.

Parts run in order (data, sweep, a, frozen, e for every seed, then d and c per seed, b once, dg per seed, then the
chat parts); each writes <out_dir>/<part>.json when it ends (per-question results, settings, seconds) and is
skipped when that file exists. Heavy intermediates (index, candidates, cached losses, trained weights) live in
work_dir and are rebuilt when missing. Configuration, splits and arm tables: evidence_setup; the dev-focus parts
that choose the retriever's settings: evidence_dev; the measures: evidence_measures.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np
import tqdm

from jmlr_jax.compare.evidence_dev import DevParts
from jmlr_jax.compare.evidence_measures import Measures
from jmlr_jax.compare.evidence_setup import (BASE_GENERATOR, BOTH_SIDES, CACHED, DIAGNOSTIC, EXTRA_ARMS, POOL_ARMS,
                                             REFRESHED, SECOND_ROUND, TRAINED, EvidenceConfig, build_setup, index_view,
                                             load_tree, save_tree, sha, write_json)
from jmlr_jax.convert import load_preset
from jmlr_jax.data import evidence as ev
from jmlr_jax.data.pipeline import JMLRExamples, make_dataset
from jmlr_jax.data.templates import Budgets
from jmlr_jax.errors import InputError
from jmlr_jax.retrieval.encode import RetrieverConfig, retriever_preset
from jmlr_jax.retrieval.index import IndexConfig, Retriever, SearchConfig, TokenIndex, build_index, search_all
from jmlr_jax.retrieval.store import load_index, save_index
from jmlr_jax.train.jmlr_step import JMLRConfig, StepConfigs, train_step
from jmlr_jax.train.losses import answer_nll
from jmlr_jax.train.state import OptimConfig, init_train_state, make_optimizer
from jmlr_jax.workdir import save_npy


class Comparison(DevParts, Measures):
    """The parts of the comparison (see module doc); `run(parts)` runs the named ones, skipping finished parts."""

    def __init__(self, cfg: EvidenceConfig, progress: bool = True, log: Callable[[str], None] = print):
        self.cfg, self.progress, self.log = cfg, progress, log
        os.makedirs(cfg.out_dir, exist_ok=True)
        os.makedirs(cfg.work_dir, exist_ok=True)
        self.setup = build_setup(cfg)
        self.template = ev.GENERATIVE_TEMPLATE
        self.budgets = Budgets(doc=cfg.doc_tokens, question=cfg.question_tokens, answer=cfg.answer_tokens)
        self._models = None
        self._indexes: dict[str, dict[str, TokenIndex]] = {}  # docs tag -> view (full, main, eval, train) -> index
        self._retrievers: dict[tuple[str, str], Retriever] = {}
        self._second_rounds: dict[tuple[str, int], tuple] = {}  # (first arm, seed) -> second_round's result

    # ------------------------------------------------------------------------------------------ parts
    def part_names(self) -> list[str]:
        c = self.cfg
        names = ["data", "sweep", "a", "frozen"] + [f"e_s{s}" for s in c.seeds]  # e is cheap: all seeds first
        for s in c.seeds:
            names += [f"d_s{s}", f"c_s{s}"] + (["b"] if s == c.seeds[0] else [])
        names += [f"dg_s{s}" for s in c.seeds] if c.diagnostic else []
        if c.extra_train_focuses:  # the more-focuses extension (a pool of its own: the more-data parts do not apply)
            names += [self._focuses_part] + [f"{self._extra_arm}_s{s}" for s in c.seeds] + \
                ([f"{self._extra_arm}B_s{s}" for s in c.seeds] if c.both_sides else [])
        elif len(self.setup.pool) > len(self.setup.train):  # the more-data extension
            names += (["scale"] if c.scale_sizes else []) + (["passes"] if c.pool_epochs else []) + \
                (["negatives"] if c.negatives_batch else []) + [f"eL_s{s}" for s in c.seeds] + \
                ([f"eB_s{s}" for s in c.seeds] if c.both_sides else []) + \
                ([f"eR_s{s}" for s in c.seeds] if c.both_sides and c.second_round else []) + \
                (["posterior"] if c.posterior_betas else []) + \
                ([f"eT_s{s}" for s in c.seeds] if c.both_sides and c.sharp_posterior else []) + \
                ([f"eTR_s{s}" for s in c.seeds] if c.both_sides and c.sharp_posterior and c.second_round else []) + \
                [f"{arm}_s{s}" for s in c.joint_pool_seeds for arm in ("dL", "cL", *(["dgL"] if c.diagnostic else []))]
        if c.chat_generate:  # last: each reads the passages its part fed; chat_gold feeds the oracle passage
            names += ["chat_gold"] + [f"chat_{n}" for n in names if n.partition("_s")[0] in BASE_GENERATOR]
        return names

    @property
    def _kept(self) -> bool:
        """Whether eL's pool questions keep eL's candidates (keep_pool_candidates, with extra focuses)."""
        return bool(self.cfg.keep_pool_candidates and self.cfg.extra_train_focuses)

    @property
    def _extra_arm(self) -> str:
        return "eK" if self._kept else "eF"

    @property
    def _focuses_part(self) -> str:
        return "focuses_kept" if self._kept else "focuses"

    def run(self, parts: Sequence[str] | None = None) -> None:
        names = list(parts or self.part_names())
        done = {n for n in names if os.path.exists(os.path.join(self.cfg.out_dir, f"{n}.json"))}
        for name in names:  # every name checked before any part runs: a typo must not wait hours behind others
            if name not in done:
                self._runner(name)
        for name in names:
            path = os.path.join(self.cfg.out_dir, f"{name}.json")
            if name in done:
                self.log(f"[compare] {name}: done ({path}), skipped")
                continue
            t0 = time.time()
            self.log(f"[compare] {name}: running")
            out = self._part(name)
            out["seconds"] = round(time.time() - t0, 1)
            write_json(path, out)
            self.log(f"[compare] {name}: {out['seconds']:.0f} s -> {path}")

    def _part(self, name: str) -> dict:
        return self._runner(name)()

    def _runner(self, name: str) -> Callable[[], dict]:
        """What part `name` runs, as a function; an unknown or misplaced name is an InputError (nothing runs)."""
        if name == "data":
            return self.data_part
        if name == "sweep":
            return self.sweep_part
        if name == "scale":
            return self.scale_part
        if name == "passes":
            return self.passes_part
        if name == "negatives":
            return self.negatives_part
        if name == "posterior":
            return self.posterior_part
        if self.cfg.extra_train_focuses and name == self._focuses_part:
            return self.focuses_part
        if name == "chat_gold":
            return functools.partial(self.chat_part, "gold")
        if name.startswith("chat_"):
            of = name[len("chat_"):]
            self._runner(of)  # a known part
            if of.partition("_s")[0] not in BASE_GENERATOR:
                raise InputError(f"part {name}: arm {of.partition('_s')[0]} does not answer with the base generator "
                                 f"(chat parts are for {', '.join(BASE_GENERATOR)}; the trained generators learned "
                                 "the plain template)")
            return functools.partial(self.chat_part, of)
        if name in ("a", "frozen", "b"):
            return functools.partial(self.arm_part, name, 0)
        arm, _, seed = name.partition("_s")
        if arm in POOL_ARMS and (arm in EXTRA_ARMS) != bool(self.cfg.extra_train_focuses):
            raise InputError(f"part {name}: arms eF / eK (eFB / eKB) train on the pool with extra focuses (compare/"
                             "evidence_more_focuses*.gin), arms eL / eB / eR / cL / dL on the pool without them "
                             "(compare/evidence_more_data.gin)")
        if DIAGNOSTIC.get(arm, arm) in POOL_ARMS and len(self.setup.pool) == len(self.setup.train):
            raise InputError(f"part {name}: arm {arm} trains on the pool, and this config has none: set "
                             "EvidenceConfig.pool_medquad (compare/evidence_more_data.gin)")
        if arm in EXTRA_ARMS and arm[:2] != self._extra_arm:
            raise InputError(f"part {name}: arm eK's pool keeps eL's candidates (EvidenceConfig.keep_pool_candidates = "
                             "True, compare/evidence_more_focuses_kept.gin), arm eF's does not")
        if arm in ("c", "d", "e", *DIAGNOSTIC, *POOL_ARMS) and seed.isdigit():
            return functools.partial(self.arm_part, arm, int(seed))
        raise InputError(f"unknown part {name!r}; parts: {self.part_names()}")

    # ------------------------------------------------------------------------------------------ models
    def models(self):
        """(llm cfg, llm params, tokenizer, retriever cfg, retriever params, ColBERT tokenizer), loaded once."""
        if self._models is None:

            llm_cfg, llm_params, tok = load_preset(self.cfg.llm)
            rcfg, rparams, ctok = retriever_preset(RetrieverConfig(name=self.cfg.retriever))
            self._models = (llm_cfg, llm_params, tok, rcfg, rparams, ctok)
        return self._models

    def index(self, docs: str = "base", view: str = "main") -> TokenIndex:
        """One view of the corpus: "main" (what evaluations search), "eval" (main + the test abstracts: PubMedQA
        recall) or "train" (main + the extra focuses' passages: training candidates), encoded by the base encoder
        (docs "base", built once) or by an arm's trained encoder (a tag registered by refresh_index)."""
        if docs not in self._indexes:
            if docs != "base":
                raise KeyError(f"no index encoded by {docs!r}: call refresh_index first")
            self.refresh_index("base", self.models()[4])
        return self._indexes[docs][view]

    def refresh_index(self, docs: str, rparams) -> str:
        """Encodes the whole corpus (test abstracts too) with `rparams`' document encoder, saved in
        work_dir/index[-docs] and loaded from there on a rerun (checked against the corpus and the encoder);
        returns `docs`, the tag that search / measure take."""
        _, _, _, rcfg, _, ctok = self.models()
        # the corpus with extra focuses' passages differs: its own directory, so both configs share one work_dir
        tag = ("" if docs == "base" else f"-{docs}") + (f"-extra{self.cfg.extra_train_focuses}"
                                                        if self.cfg.extra_train_focuses else "")
        path = os.path.join(self.cfg.work_dir, "index" + tag)
        if os.path.isfile(os.path.join(path, "manifest.json")):
            full = load_index(path, self.setup.corpus, rparams)
        else:
            full = build_index(self.setup.corpus, rcfg, rparams, ctok, IndexConfig(), SearchConfig(),
                               progress=self.progress)
            save_index(full, path)
        n, m, end = self.setup.n_main, self.setup.n_eval, len(self.setup.corpus)
        self._indexes[docs] = {"full": full, "main": index_view(full, [(0, n)]), "eval": index_view(full, [(0, m)]),
                               "train": index_view(full, [(0, n), (m, end)] if end > m else [(0, n)])}
        self._retrievers = {k: v for k, v in self._retrievers.items() if k[0] != docs}
        return docs

    def search(self, rparams, records: Sequence[ev.EvidenceQA], k: int, with_test: bool = False,
               docs: str = "base", view: str = "") -> np.ndarray:
        """Exact MaxSim top-k passage indices [N, k] into a view of the corpus (see index): "main", or "eval" when
        with_test; the passages encoded as `docs` says."""
        view = view or ("eval" if with_test else "main")
        if (docs, view) not in self._retrievers:  # one per index: its jitted query encoder compiles once
            _, _, _, rcfg, _, ctok = self.models()
            self._retrievers[docs, view] = Retriever(rcfg, rparams, ctok, self.index(docs, view))
        r = self._retrievers[docs, view]
        r.params = rparams  # the encoder takes params as an argument: new params, same compiled function
        return search_all(r, [x.question for x in records], k, exact=True)[0]

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

    def second_round(self, seed: int, arm: str = "eR") -> tuple[dict, np.ndarray, np.ndarray]:
        """A second-round arm's start (eR: eB's; eTR: eT's): the first arm's trained retriever for this seed, the
        pool's top-C it mines from the corpus it re-encoded (index-<first arm>_s*), and the generator's losses for those
        candidates (computed once per seed: arm_part times this step apart from the training that reads it)."""
        first = SECOND_ROUND[arm]
        if (first, seed) in self._second_rounds:
            return self._second_rounds[first, seed]
        tag = f"{first}_s{seed}"
        path = os.path.join(self.cfg.work_dir, "params", f"{tag}.safetensors")
        if not os.path.exists(path):
            raise InputError(f"part {arm}_s{seed} continues arm {first}'s training from {path}: run part {tag} first")
        rparams = load_tree(path)["retriever"]
        if not os.path.exists(self._cache("candidates", True, tag)):
            self.refresh_index(tag, rparams)
        cands = self.candidates(True, tag, rparams)
        self._second_rounds[first, seed] = rparams, cands, self.doc_losses(True, cands, tag)
        return self._second_rounds[first, seed]

    # ------------------------------------------------------------------------------------------ training
    def train(self, arm: str, seed: int, settings: dict | None = None,
              questions: int | None = None) -> tuple[dict, list[dict]]:
        """Trains one arm from the base weights (eR / eTR: from eB's / eT's); returns (params, per-step metrics). The
        pool arms, or `questions` given (arm e only), train on the first `questions` of the pool (default: all of it)
        instead of the training set; arms eB, eFB, eKB, eT and the second rounds train the document side too (their
        candidates encoded live), eR / eTR on the candidates eB's / eT's retriever re-mined (second_round)."""

        c = self.cfg
        settings = {**self.arm_settings(arm), **(settings or {})}
        llm_cfg, llm_params, _, rcfg, rparams, _ = self.models()
        trains_llm, trains_retriever = "llm" in TRAINED[arm], "retriever" in TRAINED[arm]
        cached = arm in CACHED
        pool = arm in POOL_ARMS or questions is not None
        if questions is not None and arm != "e":
            raise InputError(f"arm {arm}: training on a prefix of the pool (questions=) is for arm e only")
        n = questions or len(self._records(pool))
        if n > len(self._records(pool)):
            raise InputError(f"{n} training questions asked, the pool has {len(self._records(pool))} "
                             "(EvidenceConfig.pool_medquad)")
        batch_size = settings.get("batch_size", c.batch_size)
        jcfg = JMLRConfig(num_candidates=c.num_candidates, num_sampled=settings["num_sampled"],
                          num_docs=0 if arm == "b" else c.num_docs, rank_weight=1.0 if trains_retriever else 0.0,
                          rank_loss=settings["rank_loss"], cached_doc_losses=cached, compact=True,
                          in_batch_negatives=settings.get("in_batch_negatives", False),
                          kl_beta=settings.get("kl_beta", 1.0))
        steps = settings["epochs"] * n // batch_size
        optim = OptimConfig(llm_lr=c.llm_lr, retriever_lr=settings["retriever_lr"],
                            warmup_steps=max(1, int(c.warmup_fraction * steps)), decay_steps=steps,
                            llm_trainable=".*" if trains_llm else "", retriever_trainable=".*" if trains_retriever else "")
        if arm in SECOND_ROUND:  # a second round: from eB's (eT's) retriever, on the candidates it mined
            rparams, cands, losses = self.second_round(seed, arm)
            examples = self.examples(losses, pool=True, live_docs=True, candidates=cands)
        else:
            examples = self.examples(self.doc_losses(pool) if cached else None, pool=pool, n=n,
                                     live_docs=arm in BOTH_SIDES)
        params = {"llm": llm_params, "retriever": rparams}
        tx = make_optimizer(params, optim)
        state = init_train_state(params, tx, seed)
        step_fn = jax.jit(functools.partial(train_step, models=StepConfigs(llm_cfg, rcfg, jcfg, optim=optim), tx=tx))
        it = iter(make_dataset(examples, batch_size, seed))
        history = []

        for i in tqdm.trange(steps, desc=f"train {arm} seed {seed}", disable=not self.progress):
            state, m = step_fn(state, next(it))
            m = {k: round(float(v), 5) for k, v in jax.device_get(m).items()}
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(f"{arm} seed {seed}: non-finite loss at step {i}")
            history.append(m)
        return jax.device_get(state["params"]), history

    # ------------------------------------------------------------------------------------------ parts
    def data_part(self) -> dict:
        s = self.setup
        full, main = self.index(view="full"), self.index()
        leaks = ev.question_leaks(s.corpus, s.train + s.dev + [r for v in s.sets.values() for r in v])
        by_source: dict[str, int] = {}
        for p in s.corpus.passages[: s.n_main]:
            by_source[p.source] = by_source.get(p.source, 0) + 1
        return {"config": dataclasses.asdict(self.cfg), "passages": s.n_main, "test_abstract_passages":
                s.n_eval - s.n_main, "training_only_passages": len(s.corpus) - s.n_eval,
                "passages_by_source": by_source, "tokens": int(main.offsets[-1]),
                "encode_s": full.meta.get("encode_s"), "question_leaks": leaks, "medquad_skipped": s.skipped,
                "splits": {"train": [r.id for r in s.train], "dev": [r.id for r in s.dev],
                           **{k: [r.id for r in v] for k, v in s.sets.items()}},
                "focuses": {"train": sorted({r.focus for r in s.train if r.task == "medquad"}),
                            "dev": sorted({r.focus for r in s.dev}),
                            "heldout": sorted({r.focus for r in s.sets["heldout_focus"]})},
                "gold_missing": {k: sum(not g for g in v) for k, v in s.gold.items()}}

    def arm_part(self, arm: str, seed: int) -> dict:
        c = self.cfg
        jmlr = DIAGNOSTIC.get(arm)  # a diagnostic: the JMLR arm whose trained generator it evaluates
        d_path = jmlr and os.path.join(c.work_dir, "params", f"{jmlr}_s{seed}.safetensors")
        if jmlr and not os.path.exists(d_path):
            raise InputError(f"part {arm}_s{seed} needs JMLR's trained weights {d_path}: run part {jmlr}_s{seed} first")
        llm_cfg, llm_params, tok, rcfg, rparams, ctok = self.models()
        history: list[dict] = []
        if jmlr:  # JMLR's trained generator, evaluated with the frozen base retriever
            llm_params = load_tree(d_path)["llm"]
        elif arm in TRAINED:
            path = os.path.join(c.work_dir, "params", f"{arm}_s{seed}.safetensors")
            if os.path.exists(path):
                trained = load_tree(path)
            else:
                timing = {}
                if arm in SECOND_ROUND:  # mining and loss caching, timed apart from the training they feed
                    t0 = time.time()
                    self.second_round(seed, arm)
                    timing["mine_seconds"] = round(time.time() - t0, 1)
                t0 = time.time()
                params, history = self.train(arm, seed)
                trained = {k: params[k] for k in TRAINED[arm]}
                save_tree(path, trained)
                write_json(os.path.join(c.work_dir, "params", f"{arm}_s{seed}.history.json"),
                            {"history": history, "seconds": round(time.time() - t0, 1), **timing})
            if set(trained) != set(TRAINED[arm]):
                raise InputError(f"{path} holds {sorted(trained)}, arm {arm} trains {list(TRAINED[arm])}; delete it")
            llm_params = trained.get("llm", llm_params)
            rparams = trained.get("retriever", rparams)
        retrieval = arm not in ("a", "b")
        out = {"arm": arm, "seed": seed, "settings": self.arm_settings(arm),
               "train_history": history, "sets": {},
               "train_questions": len(self._records(arm in POOL_ARMS)) if arm in TRAINED else 0}
        docs = "base"
        if arm in REFRESHED:  # its document encoder moved: search a corpus it re-encoded (and dev, to compare)
            t0 = time.time()
            docs = self.refresh_index(f"{arm}_s{seed}", rparams)
            out["refresh_seconds"] = round(time.time() - t0, 1)
            out["dev_all"] = self.dev_recall(rparams, "dev_all", docs=docs)
        hist_path = os.path.join(c.work_dir, "params", f"{arm}_s{seed}.history.json")
        if os.path.exists(hist_path):
            with open(hist_path) as f:
                h = json.load(f)
            out["train_history"], out["train_seconds"] = h["history"], h["seconds"]
            out.update({k: h[k] for k in ("mine_seconds",) if k in h})
        for name, recs in self.setup.sets.items():
            out["sets"][name] = self.measure(name, recs, llm_params, rparams if retrieval else None,
                                             generate=c.eval_generate if name == "heldout_focus" else 0, docs=docs)
        if arm in ("a", "b") or (arm in ("c", "d") and seed in c.mcq_seeds):
            out["mcq"] = self.mcq(llm_params)
        return out

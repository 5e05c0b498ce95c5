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
weights (dev only) averages eL's seeds' retrievers and interpolates them with the base one in weight space,
weights_eB (dev only, with both_sides) interpolates eB seed 0's retriever the same way, each row on the corpus it
re-encodes; ensemble_eB (dev only, with both_sides) interpolates eB seed 0's and the base retriever's scores instead;
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
work_dir and are rebuilt when missing; a part's training checkpoints there too (arm_loop: a stopped or crashed
part resumes its training from the last checkpoint and reuses the trainings it had finished). Configuration,
splits and arm tables: evidence_setup; the dev-focus parts that choose the retriever's settings: evidence_dev;
the measures: evidence_measures; candidates, cached losses and training examples: evidence_cache.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Callable, Sequence

import numpy as np

from jmlr_jax.compare import arm_loop
from jmlr_jax.compare.evidence_cache import Caches
from jmlr_jax.compare.evidence_dev import DevParts
from jmlr_jax.compare.evidence_measures import Measures
from jmlr_jax.compare.evidence_setup import (BASE_GENERATOR, BOTH_SIDES, CACHED, DIAGNOSTIC, EXTRA_ARMS, POOL_ARMS,
                                             REFRESHED, SECOND_ROUND, TRAINED, EvidenceConfig, build_setup, index_view,
                                             load_tree, save_tree, write_json)
from jmlr_jax.convert import load_preset
from jmlr_jax.data import evidence as ev
from jmlr_jax.data.templates import Budgets
from jmlr_jax.errors import InputError
from jmlr_jax.retrieval.encode import RetrieverConfig, retriever_preset
from jmlr_jax.retrieval.index import EXACT_INDEX, Retriever, SearchConfig, TokenIndex, build_index, search_all
from jmlr_jax.retrieval.store import load_index, save_index
from jmlr_jax.train.jmlr_step import JMLRConfig, StepConfigs, train_step
from jmlr_jax.train.state import OptimConfig, make_optimizer

RESUMABLE = ("out_dir", "work_dir", "data_dir", "checkpoint_every")  # may change while a part's training resumes


class Comparison(Caches, DevParts, Measures):
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
        self.resumed_from = 0  # the step the last training resumed from (0: it started afresh)
        self._runs: list[str] = []  # the training directories of the part running (deleted once it is written)

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
                (["weights"] if c.weight_alphas else []) + \
                (["weights_eB"] if c.weight_alphas and c.both_sides else []) + \
                (["ensemble_eB"] if c.ensemble_weights and c.both_sides else []) + \
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
            self._runs = []
            out = self._part(name)
            out["seconds"] = round(time.time() - t0, 1)
            write_json(path, out)
            for d in self._runs:  # its finished trainings, kept until now for a rerun of this part
                shutil.rmtree(d, ignore_errors=True)
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
        if name == "weights":
            return self.weights_part
        if name == "weights_eB" and self.cfg.both_sides and not self.cfg.extra_train_focuses:
            return functools.partial(self.weights_part, "eB")
        if name == "ensemble_eB" and self.cfg.both_sides and not self.cfg.extra_train_focuses:
            return self.ensemble_part
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
            full = build_index(self.setup.corpus, rcfg, rparams, ctok, EXACT_INDEX, SearchConfig(),  # searched exactly
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
        r = self._retriever(rparams, docs, view or ("eval" if with_test else "main"))
        return search_all(r, [x.question for x in records], k, exact=True)[0]

    def scores(self, rparams, records: Sequence[ev.EvidenceQA], docs: str = "base", batch: int = 64) -> np.ndarray:
        """Exact MaxSim of every question against every passage evaluations search ("main"), [N, passages]."""
        r = self._retriever(rparams, docs, "main")
        return np.concatenate([r.index.exact_scores(r.encode_queries([x.question for x in records[i: i + batch]]))
                               for i in range(0, len(records), batch)])

    def _retriever(self, rparams, docs: str, view: str) -> Retriever:
        if (docs, view) not in self._retrievers:  # one per index: its jitted query encoder compiles once
            _, _, _, rcfg, _, ctok = self.models()
            self._retrievers[docs, view] = Retriever(rcfg, rparams, ctok, self.index(docs, view))
        r = self._retrievers[docs, view]
        r.params = rparams  # the encoder takes params as an argument: new params, same compiled function
        return r

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
        meta = {"arm": arm, "seed": seed, "settings": settings, "questions": n, "pool": pool,  # what it trains
                "config": {k: v for k, v in dataclasses.asdict(c).items() if k not in RESUMABLE}}
        root = os.path.join(c.work_dir, "training")
        self._runs.append(arm_loop.run_dir(root, meta))
        done = arm_loop.finished(root, meta)
        if done is not None:  # it ended in an earlier run of this part
            self.log(f"[compare] train {arm} seed {seed}: finished earlier ({self._runs[-1]})")
            self.resumed_from = steps
            return {**params, **done[0]}, done[1]
        loop = arm_loop.ArmLoop(root, meta, params, tx,
                                functools.partial(train_step, models=StepConfigs(llm_cfg, rcfg, jcfg, optim=optim),
                                                  tx=tx),
                                examples, jcfg=jcfg, llm="full" if trains_llm else "frozen", steps=steps,
                                batch_size=batch_size, seed=seed,
                                checkpoint_every=c.checkpoint_every, progress=self.progress)
        self.resumed_from = loop.resumed_from
        return loop.train(TRAINED[arm])

    def trained(self, arm: str, seed: int) -> dict:
        """An arm's trained parameters (the trees TRAINED[arm] names) from work_dir/params, else trained from the
        base weights and saved there with the step history and timing (history.json, which arm_part reports)."""
        c = self.cfg
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
            if self.resumed_from:  # its seconds count the run that finished it, from that step
                timing["resumed_from_step"] = self.resumed_from
            trained = {k: params[k] for k in TRAINED[arm]}
            save_tree(path, trained)
            write_json(self._history_path(arm, seed),
                       {"history": history, "seconds": round(time.time() - t0, 1), **timing})
            while self._runs:  # the part's training directories: work_dir/params holds what they trained now
                shutil.rmtree(self._runs.pop(), ignore_errors=True)
        if set(trained) != set(TRAINED[arm]):
            raise InputError(f"{path} holds {sorted(trained)}, arm {arm} trains {list(TRAINED[arm])}; delete it")
        return trained

    def _history_path(self, arm: str, seed: int) -> str:
        return os.path.join(self.cfg.work_dir, "params", f"{arm}_s{seed}.history.json")

    def saved_history(self, arm: str, seed: int) -> dict | None:
        """What `trained` saved beside an arm's weights (step history, training seconds; None if it saved none)."""
        path = self._history_path(arm, seed)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

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
            trained = self.trained(arm, seed)
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
        h = self.saved_history(arm, seed)
        if h is not None:
            out["train_history"], out["train_seconds"] = h["history"], h["seconds"]
            out.update({k: h[k] for k in ("mine_seconds", "resumed_from_step") if k in h})
        for name, recs in self.setup.sets.items():
            out["sets"][name] = self.measure(name, recs, llm_params, rparams if retrieval else None,
                                             generate=c.eval_generate if name == "heldout_focus" else 0, docs=docs)
        if arm in ("a", "b") or (arm in ("c", "d") and seed in c.mcq_seeds):
            out["mcq"] = self.mcq(llm_params)
        return out

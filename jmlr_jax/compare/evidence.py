"""The JMLR comparison on evidence-dependent tasks (MedQuAD by focus, PubMedQA long answers), sized for 2 CPU cores.

    python launch/compare_evidence.py --gin_file=compare/evidence.gin            # everything, resumable
    python launch/compare_evidence.py --gin_file=compare/evidence.gin --parts=d_s0   # one seed of JMLR alone

Arms (same training questions, steps, budgets and learning rates):
  a       base generator, no retrieval          frozen  base generator + the base retriever's top-K (no training)
  b       generator fine-tuned, no retrieval    c_s*    RAG: generator fine-tuned on the frozen retriever's top-K
  d_s*    JMLR: generator + retriever trained together (rank loss from the live generator's losses)
  e_s*    retriever-only JMLR: generator frozen, its loss per (question, candidate) computed once and cached
  dg_s*   diagnostic: d_s*'s generator with the frozen retriever (no training; splits d - c into the generator's
          part, dg - c, and the trained retriever's part, d - dg)
With a pool (compare/evidence_more_data.gin), more: scale (arm e on the first n pool questions, dev recall per n and
lr), passes (arm e on the whole pool, dev recall per number of passes) and eL_s* (arm e trained on the whole pool
at the lr and passes those chose; only arm e grows, its generator losses are cached once); negatives (arm e on the
whole pool in batches, without and with in-batch negatives) may change eL's batch; eB_s* (both_sides) train arm eL
with the document side too and are evaluated on the corpus re-encoded by their trained encoder (index refresh);
eR_s* (second_round) continue each eB for one more pass on the candidates its retriever re-mined from that corpus;
eT_s* and eTR_s* (sharp_posterior) are eB and eR at the KL target temperature part posterior chose on dev.
With extra training focuses (compare/evidence_more_focuses*.gin): focuses (or focuses_kept) and eF_s* (or eK_s*),
and with both_sides eFB_s* (or eKB_s*), eB's remedy on that pool.
Retriever training moves the query encoder only (except eB, eR, eFB, eKB, eT, eTR): the candidates' token vectors
come from the index built by the base encoder (the document side is frozen), so the index never goes stale and the
held-out evaluation searches the whole corpus exactly (MaxSim against every passage) with each arm's own query
encoder.

Parts run in order (data, sweep, a, frozen, e for every seed, then d and c per seed, b once, dg per seed); each writes <out_dir>/<part>.json when it ends (per-question results, settings, seconds) and is
skipped when that file exists. Heavy intermediates (index, candidates, cached losses, trained weights) live in
work_dir and are rebuilt when missing.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
import time
from typing import Callable, Sequence

import gin
import jax
import numpy as np
import tqdm

from jmlr_jax.compare.report import text_scores_per_question
from jmlr_jax.convert import load_preset
from jmlr_jax.data import evidence as ev
from jmlr_jax.data.pipeline import JMLRExamples, make_dataset
from jmlr_jax.data.splits import DataConfig
from jmlr_jax.data.templates import Budgets, PromptTemplate
from jmlr_jax.errors import InputError
from jmlr_jax.eval.harness import EvalConfig, eval_sets, evaluate
from jmlr_jax.eval.mcq import generate_answers, prompt_ids, score_options
from jmlr_jax.retrieval.corpus import corpus_from_documents
from jmlr_jax.retrieval.encode import RetrieverConfig, retriever_preset
from jmlr_jax.retrieval.index import IndexConfig, Retriever, SearchConfig, TokenIndex, build_index, search_all
from jmlr_jax.retrieval.store import load_index, save_index
from jmlr_jax.train.jmlr_step import JMLRConfig, StepConfigs, train_step
from jmlr_jax.train.losses import answer_nll
from jmlr_jax.train.state import OptimConfig, init_train_state, make_optimizer


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvidenceConfig:
    data_dir: str = ""
    out_dir: str = "results/comparison"  # per-part JSON (committed)
    work_dir: str = "workdir/evidence"  # index, candidates, cached losses, trained weights (not committed)
    llm: str = "smollm2-135m-instruct"
    retriever: str = "all-minilm-l6-v2"
    # data
    train_focuses: int = 120
    dev_focuses: int = 30
    heldout_focuses: int = 100
    train_medquad: int = 160
    train_pubmedqa: int = 40
    dev_questions: int = 60
    eval_heldout_focus: int = 150
    eval_heldout_doc: int = 100
    eval_pubmedqa: int = 100
    eval_generate: int = 80  # held-out-focus questions answered by greedy decoding
    mcq_per_set: int = 300  # MMLU-Med and MedQA-US dev, a fixed sample each (no-harm check)
    mcq_seeds: tuple = (0,)  # seeds of the trained arms whose generator also takes the MCQ check
    chunk_size: int = 100
    overlap: int = 20
    # the step
    num_candidates: int = 16
    num_sampled: int = 8
    num_docs: int = 1
    doc_tokens: int = 128
    question_tokens: int = 48
    answer_tokens: int = 64
    batch_size: int = 1
    epochs: int = 1
    llm_lr: float = 2e-5
    retriever_lr: float = 3e-5
    rank_loss: str = "ranknet"
    warmup_fraction: float = 0.1
    seeds: tuple = (0, 1, 2)
    # More training data for the retriever (compare/evidence_more_data.gin): a pool of the training focuses' MedQuAD
    # questions (the training set first, then further questions of the same 120 focuses; 0 = no pool). Part "scale"
    # trains arm e on the first n of the pool for each n in scale_sizes (seed 0; recall on every dev-focus
    # question) and each retriever lr in scale_lrs (empty: the sweep's); parts eL_s* train arm e on the whole pool at
    # the lr with the best dev recall@1 there, evaluated like the other arms. Part "passes" (pool_epochs given) trains
    # arm e on the whole pool at that lr for each further number of passes; eL takes the best of those and the scale
    # part's whole-pool row (fewer passes on a tie).
    pool_medquad: int = 0
    scale_sizes: tuple = ()
    scale_lrs: tuple = ()
    pool_epochs: tuple = ()
    # Part "negatives" (negatives_batch > 0): arm e on the whole pool at eL's lr and passes in batches of this many
    # questions, without and with in-batch negatives (JMLRConfig.in_batch_negatives: the other questions'
    # candidates); eL takes the best of those and its batch-1 row (the scale / passes part's).
    negatives_batch: int = 0
    # Part "posterior" (posterior_betas given): arm e on the whole pool at eL's settings with each temperature beta of
    # the KL's target, the LLM posterior softmax(-l / beta) over the scored candidates (l: mean NLL per answer token;
    # beta 1 everywhere else), against eL's own dev row (beta 1). RePlug's posterior uses the sequence likelihood,
    # i.e. beta = 1 / answer tokens here: far sharper.
    posterior_betas: tuple = ()
    # Parts eB_s* (both_sides, with a pool): arm eL's settings with both encoder sides trained (the candidates'
    # tokens encoded live in the step instead of read from the index), evaluated on an index re-encoded by the
    # trained encoder (work_dir/index-eB_s*, the stale-index remedy "refresh"); also its recall on every dev-focus
    # question, against eL's seed-0 row there. With extra_train_focuses: parts eFB_s* / eKB_s*, the same for arm eF /
    # eK's pool and settings.
    both_sides: bool = False
    # Parts eR_s* (second_round, with both_sides): arm eB's second round. Each seed's eB retriever re-mines the pool's
    # top-C candidates from the corpus it re-encoded (so they hold the passages it now ranks high, gold or not), the
    # generator's loss is cached for every (question, candidate) pair not cached before, and training continues from
    # eB's weights for the same passes at the same lr; evaluated on an index re-encoded again (index-eR_s*).
    second_round: bool = False
    # Parts eT_s* (sharp_posterior, with both_sides, after part posterior) and with second_round eTR_s*: arms eB and
    # eR at the KL target temperature the posterior part chose on the dev focuses (eL, eB and eR keep beta 1).
    sharp_posterior: bool = False
    # Parts focuses and eF_s* (extra_train_focuses > 0, with a pool; compare/evidence_more_focuses.gin): more
    # training focuses, taken after the held-out ones (no other split moves). All their questions join the pool
    # (last); their answers are a training-only extension of the corpus: training candidates are mined from the
    # corpus plus those passages, every evaluation searches the corpus without them (as for every other arm). Part
    # "focuses" trains arm e (seed 0, eL's settings) on the first n pool questions, n = the pool without the extra
    # focuses and the whole pool, at each lr in focus_lrs (dev recall on every dev-focus question), and chooses the
    # lr on the whole pool; eF_s* train arm e there with it (eL's settings otherwise), evaluated like every arm.
    extra_train_focuses: int = 0
    focus_lrs: tuple = ()
    # With extra focuses: eL's pool questions keep the candidates mined from the corpus alone (eL's, exactly: 15% of
    # them are extra passages when mined from the training view), only the extra focuses' questions are mined from
    # the training view (compare/evidence_more_focuses_kept.gin). Parts focuses_kept and eK_s* instead of focuses
    # and eF_s*.
    keep_pool_candidates: bool = False
    # the retriever settings sweep (arm e on the dev focuses): first rank loss x lr at num_sampled / epochs, then
    # at the best of those, each num_sampled x epochs (KL over all C candidates; more passes over the data)
    sweep_lrs: tuple = (1e-5, 3e-5, 1e-4)
    sweep_losses: tuple = ("ranknet", "kl")
    sweep_sampled: tuple = (8, 16)
    sweep_epochs: tuple = (1, 3)
    eval_batch: int = 8


TASK_SETS = ("heldout_focus", "heldout_doc", "pubmedqa_test")
# What each trained arm trains (and therefore saves and evaluates with): one table, read by train and arm_part.
TRAINED = {"b": ("llm",), "c": ("llm",), "d": ("llm", "retriever"), "e": ("retriever",), "eL": ("retriever",),
           "eB": ("retriever",), "eR": ("retriever",), "eF": ("retriever",), "eK": ("retriever",),
           "eFB": ("retriever",), "eKB": ("retriever",), "eT": ("retriever",), "eTR": ("retriever",)}
# arm e on the whole pool at the settings chosen there (eB, eR: both sides trained; eF: the pool with extra focuses;
# eK: the same pool, eL's questions keeping eL's candidates; eFB, eKB: eF, eK with both sides trained; eT, eTR: eB,
# eR at the KL temperature chosen on dev)
POOL_ARMS = ("eL", "eB", "eR", "eF", "eK", "eFB", "eKB", "eT", "eTR")
EXTRA_ARMS = ("eF", "eK", "eFB", "eKB")  # the arms of the pool with extra focuses
BOTH_SIDES = ("eB", "eFB", "eKB", "eT")  # arms whose candidates are encoded live (eR, eTR: too, from eB's / eT's)
SECOND_ROUND = {"eR": "eB", "eTR": "eT"}  # second-round arm -> the arm whose retriever it continues and re-mines with
REFRESHED = (*BOTH_SIDES, *SECOND_ROUND)  # arms whose document encoder moved: evaluated on the corpus it re-encoded
SHARP = ("eT", "eTR")  # arms trained at the KL target temperature the posterior part chose on dev


def _sha(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=None, separators=(",", ":"))
    os.replace(tmp, path)


def _save_npy(path: str, arr: np.ndarray) -> None:
    """np.save, atomically (an interrupted write never leaves a truncated cache)."""
    np.save(path + ".tmp.npy", arr)
    os.replace(path + ".tmp.npy", path)


@dataclasses.dataclass
class Setup:
    """Everything the parts share, deterministic from the config."""

    train: list
    dev: list
    pool: list  # training set + further questions of the training focuses (EvidenceConfig.pool_medquad); or train
    dev_all: list  # every dev-focus question (the scaling curve's evaluation)
    sets: dict  # name -> records
    corpus: object  # all passages: the corpus, the PubMedQA test abstracts, the extra focuses' answers
    n_main: int  # passages [0, n_main) are the corpus that evaluations search
    n_eval: int  # [n_main, n_eval): test abstracts (recall measure only); [n_eval, end): extra focuses' (training only)
    gold: dict  # set name / "train" / "dev" -> [[passage indices]]
    skipped: list  # malformed MedQuAD records left out (file:line: why)
    n_extra: int = 0  # the pool's last n_extra questions are the extra focuses' (EvidenceConfig.extra_train_focuses)


def build_setup(cfg: EvidenceConfig) -> Setup:
    """Splits, corpus and gold passages (seconds; recomputed on every run, so parts never disagree)."""
    if not cfg.data_dir:
        raise InputError("EvidenceConfig.data_dir is not set: bind DATA in gin (configs/data/paths.gin)")

    mq, skipped = ev.read_medquad_qa(os.path.join(cfg.data_dir, "medquad", "medquad.jsonl"), on_error="skip")
    split = ev.split_by_focus(mq, train_focuses=cfg.train_focuses, dev_focuses=cfg.dev_focuses,
                              heldout_focuses=cfg.heldout_focuses, extra_train_focuses=cfg.extra_train_focuses)
    pm_train, pm_test = ev.pubmedqa_long_answer(cfg.data_dir)
    by_hash = lambda rs: sorted(rs, key=lambda r: _sha(f"{r.task}/{r.id}"))  # noqa: E731
    train = by_hash(split.train[: cfg.train_medquad] + by_hash(pm_train)[: cfg.train_pubmedqa])
    seen_focus = {r.focus.lower() for r in train if r.task == "medquad"}
    sets = {"heldout_focus": split.heldout_focus[: cfg.eval_heldout_focus],
            "heldout_doc": [r for r in split.heldout_doc if r.focus.lower() in seen_focus][: cfg.eval_heldout_doc],
            "pubmedqa_test": by_hash(pm_test)[: cfg.eval_pubmedqa]}
    # Only the evaluated test questions' abstracts are appended (for their recall measure; never searched otherwise).
    test_ids = {r.evidence_id for r in sets["pubmedqa_test"]}
    main_docs = list(ev.evidence_documents(split.corpus_docs + pm_train))
    test_docs = list(ev.evidence_documents(sets["pubmedqa_test"]))
    extra_docs = list(ev.evidence_documents(split.extra_train))
    chunking = dict(chunk_size=cfg.chunk_size, overlap=cfg.overlap)
    corpus = corpus_from_documents(main_docs + test_docs + extra_docs, **chunking)
    # passages keep document order and drop texts seen earlier, so the eval part is this prefix of the whole
    n_eval = len(corpus_from_documents(main_docs + test_docs, **chunking)) if extra_docs else len(corpus)
    n_main = sum(p.doc_id not in test_ids for p in corpus.passages[:n_eval])
    if any(p.doc_id in test_ids for p in corpus.passages[:n_main]):
        raise AssertionError("test abstracts must come after the corpus")
    dev = split.dev[: cfg.dev_questions]
    if cfg.pool_medquad and cfg.pool_medquad < cfg.train_medquad:
        raise InputError(f"pool_medquad={cfg.pool_medquad} must be 0 or >= train_medquad={cfg.train_medquad}")
    if cfg.extra_train_focuses and not cfg.pool_medquad:
        raise InputError("extra_train_focuses grows the pool: set EvidenceConfig.pool_medquad too")
    # Nested: the pool starts with the training set, then the training focuses' other questions, then the extra
    # focuses' (focus by focus), so a smaller pool is a prefix of a larger one (cached generator losses are reused).
    pool = train + by_hash(split.train[cfg.train_medquad: cfg.pool_medquad]) + split.extra_train
    gold = {name: ev.gold_passages(corpus, recs)
            for name, recs in [("train", train), ("dev", dev), ("pool", pool), ("dev_all", split.dev), *sets.items()]}
    return Setup(train, dev, pool, split.dev, sets, corpus, n_main, n_eval, gold, skipped, len(split.extra_train))


def index_view(full: TokenIndex, ranges: Sequence[tuple[int, int]]) -> TokenIndex:
    """Passages [start, end) of each range, in order, as an index of their own (for exact search: no searcher)."""
    if len(ranges) == 1 and ranges[0][0] == 0:  # a prefix: array views, no copy
        n = ranges[0][1]
        return TokenIndex(full.passages[:n], full.emb[: full.offsets[n]], full.offsets[: n + 1], full.icfg,
                          full.search, full.version, full.meta)
    passages, embs, offsets = [], [], [np.zeros(1, full.offsets.dtype)]
    for a, b in ranges:
        passages += full.passages[a:b]
        embs.append(full.emb[full.offsets[a]: full.offsets[b]])
        offsets.append(full.offsets[a + 1: b + 1] - full.offsets[a] + offsets[-1][-1])
    return TokenIndex(passages, np.concatenate(embs), np.concatenate(offsets), full.icfg, full.search, full.version,
                      full.meta)


def _flatten(tree) -> dict[str, np.ndarray]:
    from flax.traverse_util import flatten_dict

    return {k: np.asarray(v) for k, v in flatten_dict(tree, sep="/").items()}


def save_tree(path: str, tree) -> None:
    """A parameter tree as safetensors ("/"-joined keys), written atomically."""
    from safetensors.numpy import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(_flatten(tree), path + ".tmp")
    os.replace(path + ".tmp", path)


def load_tree(path: str):
    from flax.traverse_util import unflatten_dict
    from safetensors.numpy import load_file

    return unflatten_dict(load_file(path), sep="/")


class Comparison:
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
        names += [f"dg_s{s}" for s in c.seeds]
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
                ([f"eTR_s{s}" for s in c.seeds] if c.both_sides and c.sharp_posterior and c.second_round else [])
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
        for name in parts or self.part_names():
            path = os.path.join(self.cfg.out_dir, f"{name}.json")
            if os.path.exists(path):
                self.log(f"[compare] {name}: done ({path}), skipped")
                continue
            t0 = time.time()
            self.log(f"[compare] {name}: running")
            out = self._part(name)
            out["seconds"] = round(time.time() - t0, 1)
            _write_json(path, out)
            self.log(f"[compare] {name}: {out['seconds']:.0f} s -> {path}")

    def _part(self, name: str) -> dict:
        if name == "data":
            return self.data_part()
        if name == "sweep":
            return self.sweep_part()
        if name == "scale":
            return self.scale_part()
        if name == "passes":
            return self.passes_part()
        if name == "negatives":
            return self.negatives_part()
        if name == "posterior":
            return self.posterior_part()
        if self.cfg.extra_train_focuses and name == self._focuses_part:
            return self.focuses_part()
        if name in ("a", "frozen", "b"):
            return self.arm_part(name, 0)
        arm, _, seed = name.partition("_s")
        if arm in POOL_ARMS and (arm in EXTRA_ARMS) != bool(self.cfg.extra_train_focuses):
            raise InputError(f"part {name}: arms eF / eK (eFB / eKB) train on the pool with extra focuses (compare/"
                             "evidence_more_focuses*.gin), arms eL / eB / eR on the pool without them "
                             "(compare/evidence_more_data.gin)")
        if arm in EXTRA_ARMS and arm[:2] != self._extra_arm:
            raise InputError(f"part {name}: arm eK's pool keeps eL's candidates (EvidenceConfig.keep_pool_candidates = "
                             "True, compare/evidence_more_focuses_kept.gin), arm eF's does not")
        if arm in ("c", "d", "e", "dg", *POOL_ARMS) and seed.isdigit():
            return self.arm_part(arm, int(seed))
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
                _save_npy(path, np.load(published))
                self.log(f"[compare] {path}: restored from {published}")
            else:
                self.log(f"[compare] {published} was made for other data or settings ({made_for}); not used")
        return path

    def _cache_key(self, pool: bool) -> dict:
        """What the candidates and cached generator losses depend on."""
        c = self.cfg
        questions = _sha(json.dumps([r.id for r in self._records(pool)]))
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
            _write_json(out + ".json", self._cache_key(pool))
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
                _save_npy(path, out)
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
                _save_npy(path, out)
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
    def settings(self) -> dict:
        """The settings the sweep chose (retriever lr, rank loss, num_sampled, epochs), else the configured ones."""
        c = self.cfg
        out = {"retriever_lr": c.retriever_lr, "rank_loss": c.rank_loss, "num_sampled": c.num_sampled,
               "epochs": c.epochs}
        out.update((self._saved("sweep") or {}).get("chosen", {}))  # an older sweep chose only lr and loss
        return out

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
        cached = arm in ("e", *POOL_ARMS)
        pool = arm in POOL_ARMS or questions is not None
        if pool and not cached:
            raise InputError(f"arm {arm} trains on the training set only; the pool is for arm e")
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

    def recall(self, rparams, records, gold, with_test=False, k: int = 30, docs: str = "base") -> list[dict]:
        """Per question: the top-10 passage ids and the gold evidence's rank (1-based; None beyond k)."""
        ids = self.search(rparams, records, k, with_test, docs)
        passages = self.index(docs, "eval").passages  # main is its prefix
        out = []
        for row, g in zip(ids, gold):
            hits = np.flatnonzero(np.isin(row, g))
            out.append({"top10": [passages[j].id for j in row[:10]], "gold_rank": int(hits[0]) + 1 if len(hits) else None,
                        "_top": row})
        return out

    def dev_recall(self, rparams, which: str = "dev", docs: str = "base") -> dict:
        """Recall@1 / @7 on the dev questions (which="dev_all": every dev-focus question) and each gold rank."""
        recs = self.setup.dev if which == "dev" else self.setup.dev_all
        ranks = [q["gold_rank"] for q in self.recall(rparams, recs, self.setup.gold[which], docs=docs)]
        return {"dev_recall@1": float(np.mean([r == 1 for r in ranks])),
                "dev_recall@7": float(np.mean([r is not None and r <= 7 for r in ranks])), "dev_ranks": ranks}

    def sweep_part(self) -> dict:
        """Arm e (cheap: cached generator losses) on the dev focuses; dev recall@1 chooses. Stage 1: rank loss x lr
        at the configured num_sampled / epochs; stage 2: num_sampled x epochs at stage 1's best loss and lr."""
        c = self.cfg
        rows = []
        base_r1 = self.dev_recall(self.models()[4])["dev_recall@1"]
        key = lambda r: (r["dev_recall@1"], r["dev_recall@7"])  # noqa: E731

        def row(stage: int, **settings) -> None:
            t0 = time.time()
            params, hist = self.train("e", c.seeds[0], settings)
            dev = self.dev_recall(params["retriever"])
            rows.append({"stage": stage, **settings, "dev_recall@1": dev["dev_recall@1"],
                         "dev_recall@7": dev["dev_recall@7"],
                         "train_agreement_last50": float(np.mean([h["agreement"] for h in hist[-50:]])),
                         "seconds": round(time.time() - t0, 1)})
            self.log(f"[sweep] {rows[-1]}")

        for loss in c.sweep_losses:
            for lr in c.sweep_lrs:
                row(1, retriever_lr=lr, rank_loss=loss, num_sampled=c.num_sampled, epochs=c.epochs)
        best = max(rows, key=key)
        for S in c.sweep_sampled:
            for epochs in c.sweep_epochs:
                if (S, epochs) != (c.num_sampled, c.epochs):
                    row(2, retriever_lr=best["retriever_lr"], rank_loss=best["rank_loss"], num_sampled=S, epochs=epochs)
        best = max(rows, key=key)
        return {"dev_questions": len(self.setup.dev), "base_dev_recall@1": base_r1, "rows": rows,
                "chosen": {k: best[k] for k in ("retriever_lr", "rank_loss", "num_sampled", "epochs")}}

    def _saved(self, part: str) -> dict | None:
        """A finished part's JSON (None before it has run)."""
        path = os.path.join(self.cfg.out_dir, f"{part}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def _whole_pool_rows(self, retriever_lr: float, epochs: int, batch_size: int | None = None,
                         in_batch_negatives: bool = False) -> list[dict]:
        """The saved scale / passes / negatives rows of arm e on the whole pool at these settings (batch: the
        configured one unless given), with every one of these settings filled in."""
        # a scale row makes the sweep's passes; scale and passes rows use the configured batch without negatives
        defaults = {"epochs": self.settings()["epochs"], "batch_size": self.cfg.batch_size, "in_batch_negatives": False}
        want = {"retriever_lr": retriever_lr, "epochs": epochs, "batch_size": batch_size or self.cfg.batch_size,
                "in_batch_negatives": in_batch_negatives}
        rows = [{**defaults, **r} for part in ("scale", "passes", "negatives")
                for r in (self._saved(part) or {"rows": []})["rows"]]
        return [r for r in rows if r["questions"] == len(self.setup.pool) and all(r[k] == v for k, v in want.items())]

    def _pool_row(self, questions: int, settings: dict) -> dict:
        """Arm e (seed 0) trained on the first `questions` of the pool with `settings`: its dev recall (every
        dev-focus question), gold ranks and seconds, as a row of the scale / passes / negatives tables."""
        t0 = time.time()
        params, _ = self.train("e", self.cfg.seeds[0], settings, questions=questions)
        return {"questions": questions, **settings, **self.dev_recall(params["retriever"], "dev_all"),
                "seconds": round(time.time() - t0, 1)}

    def scale_part(self) -> dict:
        """Arm e (seed 0, the sweep's settings) trained on the first n pool questions for each n in scale_sizes and
        each lr in scale_lrs; recall on every dev-focus question. Chooses arm eL's lr: the best dev recall@1 (then
        @7) on the whole pool."""
        c = self.cfg
        lrs = c.scale_lrs or (self.settings()["retriever_lr"],)
        return {**self._size_rows("scale", [(n, lr) for lr in lrs for n in c.scale_sizes]), "settings": self.settings()}

    def _size_rows(self, part: str, runs: Sequence[tuple[int, float]], settings: dict | None = None) -> dict:
        """Arm e (seed 0) on the first n pool questions at lr, for each (n, lr) in runs (other settings: the sweep's,
        updated by `settings`), after the base retriever's row; recall on every dev-focus question. The lr with the
        best dev recall@1 (then @7) on the whole pool is chosen."""
        s = self.setup
        self.doc_losses(pool=True)  # cached once, before any row is timed
        rows = [{"questions": 0, "retriever_lr": 0.0, **self.dev_recall(self.models()[4], "dev_all"), "seconds": 0.0}]
        for n, lr in runs:
            rows.append(self._pool_row(n, {**(settings or {}), "retriever_lr": lr}))
            self.log(f"[{part}] {n} questions, lr {lr:g}: dev recall@1 {rows[-1]['dev_recall@1']:.3f}")
        whole = [r for r in rows if r["questions"] == len(s.pool)] or rows[1:]
        best = max(whole, key=lambda r: (r["dev_recall@1"], r["dev_recall@7"]))
        return {"dev_questions": len(s.dev_all), "pool": len(s.pool), "rows": rows, "chosen_lr": best["retriever_lr"]}

    def focuses_part(self) -> dict:
        """Arm e (seed 0, eL's settings) on the pool without the extra training focuses (eL's, at eL's lr; its
        candidates mined from the training view, or from the corpus alone when kept), then on the whole pool at
        each lr in focus_lrs (default: eL's); recall on every dev-focus question. Chooses arm eF's (eK's, when
        eL's questions keep their candidates) lr on the whole pool."""
        c, s = self.cfg, self.setup
        el = self.pool_settings(extra=False)
        keep = {k: el[k] for k in ("epochs", "batch_size", "in_batch_negatives") if k in el}
        runs = [(len(s.pool) - s.n_extra, el["retriever_lr"])] + [(len(s.pool), lr)
                                                                   for lr in c.focus_lrs or (el["retriever_lr"],)]
        out = self._size_rows("focuses", runs, keep)
        self.publish_cache()
        leaks = ev.question_leaks(s.corpus, s.pool)
        return {**out, "settings": {**el, **keep}, "extra_focuses": c.extra_train_focuses, "extra_questions": s.n_extra,
                "training_only_passages": len(s.corpus) - s.n_eval, "question_leaks": leaks}

    def passes_part(self) -> dict:
        """Arm e (seed 0) on the whole pool at the scale part's lr, once for each number of passes in pool_epochs;
        recall on every dev-focus question. Chooses arm eL's epochs among these and the scale part's whole-pool row
        at that lr (the sweep's passes): the best dev recall@1, then @7, fewer passes on a tie."""
        c, s = self.cfg, self.setup
        scale = self._saved("scale")
        if scale is None:
            raise InputError("part passes starts from the scale part's choice: run part scale first "
                             f"({os.path.join(c.out_dir, 'scale.json')})")
        lr, epochs = scale["chosen_lr"], self.settings()["epochs"]
        done = self._whole_pool_rows(lr, epochs)
        self.doc_losses(pool=True)  # cached once, before any row is timed
        rows = []
        for e in sorted(set(c.pool_epochs) - {epochs}):
            rows.append(self._pool_row(len(s.pool), {"retriever_lr": lr, "epochs": e}))
            self.log(f"[passes] {e} passes, lr {lr:g}: dev recall@1 {rows[-1]['dev_recall@1']:.3f}")
        best = max(done + rows, key=lambda r: (r["dev_recall@1"], r["dev_recall@7"], -r["epochs"]))
        return {"dev_questions": len(s.dev_all), "pool": len(s.pool), "rows": rows, "chosen_epochs": best["epochs"]}

    def negatives_part(self) -> dict:
        """Arm e (seed 0) on the whole pool at eL's lr and passes, in batches of negatives_batch questions, without
        and with in-batch negatives; recall on every dev-focus question. Chooses eL's batch among these and the
        batch-1 row at that lr and passes (the scale or passes part's): the best dev recall@1, then @7, then the
        earlier row (batch 1, no negatives) on a tie."""
        c, s = self.cfg, self.setup
        settings = self.pool_settings()
        lr, epochs = settings["retriever_lr"], settings["epochs"]
        done = self._whole_pool_rows(lr, epochs)
        if not done:
            raise InputError(f"part negatives compares with the batch-1 row at eL's lr {lr:g} and {epochs} passes: "
                             "run parts scale (and passes) first")
        base = done[0]
        self.doc_losses(pool=True)  # cached once, before any row is timed
        rows = []
        for neg in (False, True):
            rows.append(self._pool_row(len(s.pool), {"retriever_lr": lr, "epochs": epochs,
                                                     "batch_size": c.negatives_batch, "in_batch_negatives": neg}))
            self.log(f"[negatives] batch {c.negatives_batch}, in-batch negatives {neg}: "
                     f"dev recall@1 {rows[-1]['dev_recall@1']:.3f}")
        ranked = [base] + rows
        best = max(range(len(ranked)), key=lambda i: (ranked[i]["dev_recall@1"], ranked[i]["dev_recall@7"], -i))
        return {"dev_questions": len(s.dev_all), "pool": len(s.pool), "baseline": base, "rows": rows,
                "chosen": {k: ranked[best][k] for k in ("batch_size", "in_batch_negatives")}}

    def posterior_part(self) -> dict:
        """Arm e (seed 0) on the whole pool at eL's settings with each KL target temperature in posterior_betas;
        recall on every dev-focus question, against eL's own row there (beta 1, from the scale / passes /
        negatives part). Dev only: it reports the best beta, it does not change eL's settings."""
        c, s = self.cfg, self.setup
        settings = self.pool_settings()  # eL's
        want = {"retriever_lr": settings["retriever_lr"], "epochs": settings["epochs"],
                "batch_size": settings.get("batch_size", c.batch_size),
                "in_batch_negatives": settings.get("in_batch_negatives", False)}
        base = [{**r, "kl_beta": 1.0} for r in self._whole_pool_rows(**want)]
        if not base:
            raise InputError(f"part posterior compares with eL's dev row ({want}): run parts scale (and passes, "
                             "negatives) first")
        self.doc_losses(pool=True)  # cached once, before any row is timed
        rows = []
        for beta in sorted(set(c.posterior_betas) - {1.0}):
            rows.append(self._pool_row(len(s.pool), {**want, "kl_beta": beta}))
            self.log(f"[posterior] beta {beta:g}: dev recall@1 {rows[-1]['dev_recall@1']:.3f}")
        ranked = base[:1] + rows
        best = max(range(len(ranked)), key=lambda i: (ranked[i]["dev_recall@1"], ranked[i]["dev_recall@7"], -i))
        return {"dev_questions": len(s.dev_all), "pool": len(s.pool), "baseline": base[0], "rows": rows,
                "best_beta": ranked[best]["kl_beta"]}

    def pool_settings(self, extra: bool | None = None) -> dict:
        """Arm eL's settings: the sweep's, with the retriever lr the scale part, the number of passes the passes
        part and the batch (with or without in-batch negatives) the negatives part chose on the whole pool (dev).
        With extra focuses (default: when configured), arm eF's or eK's: eL's with the lr their focuses part chose."""
        out = self.settings()
        for part, key, name in (("scale", "chosen_lr", "retriever_lr"), ("passes", "chosen_epochs", "epochs")):
            out[name] = (self._saved(part) or {}).get(key, out[name])
        out.update((self._saved("negatives") or {}).get("chosen", {}))
        if bool(self.cfg.extra_train_focuses) if extra is None else extra:
            out["retriever_lr"] = (self._saved(self._focuses_part) or {}).get("chosen_lr", out["retriever_lr"])
        return out

    def arm_settings(self, arm: str) -> dict:
        """The retriever settings an arm trains with: the sweep's, eL's for the pool arms, and for eT / eTR eL's at
        the KL target temperature the posterior part chose on dev."""
        if arm not in POOL_ARMS:
            return self.settings()
        out = self.pool_settings()
        if arm in SHARP:
            po = self._saved("posterior")
            if po is None:
                raise InputError(f"arm {arm} trains at the KL temperature part posterior chooses on the dev focuses: "
                                 "run part posterior first")
            out["kl_beta"] = po["best_beta"]
        return out

    def arm_part(self, arm: str, seed: int) -> dict:
        c = self.cfg
        d_path = os.path.join(c.work_dir, "params", f"d_s{seed}.safetensors")
        if arm == "dg" and not os.path.exists(d_path):
            raise InputError(f"part dg_s{seed} needs JMLR's trained weights {d_path}: run part d_s{seed} first")
        llm_cfg, llm_params, tok, rcfg, rparams, ctok = self.models()
        history: list[dict] = []
        if arm == "dg":  # JMLR's trained generator, evaluated with the frozen base retriever
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
                _write_json(os.path.join(c.work_dir, "params", f"{arm}_s{seed}.history.json"),
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

    # ------------------------------------------------------------------------------------------ measures
    def measure(self, name: str, records, llm_params, rparams, generate: int = 0, docs: str = "base") -> list[dict]:
        """Per question: retrieval (gold rank, top ids), target NLL with the top-K fed, generation scores,
        and for PubMedQA the decision read off the likelihood of Yes / No / Maybe; passages encoded as `docs`."""

        c = self.cfg
        llm_cfg, _, tok = self.models()[:3]
        rows = [{"id": r.id} for r in records]
        fed_idx: list[list[int]] = [[] for _ in records]
        if rparams is not None:
            gold = self.setup.gold[name]
            rec = self.recall(rparams, records, gold, with_test=name == "pubmedqa_test", docs=docs)
            fed = (self.search(rparams, records, c.num_docs, docs=docs) if name == "pubmedqa_test"
                   else [q["_top"] for q in rec])
            for row, q, f in zip(rows, rec, fed):
                row.update(gold_rank=q["gold_rank"], top10=q["top10"])
            fed_idx = [list(np.asarray(f)[: c.num_docs][::-1]) for f in fed]  # best last
        passages = self.index().passages
        for row, d in zip(rows, fed_idx):
            row["fed"] = [passages[j].id for j in d]
        prompts = [prompt_ids(tok, self.template, self.budgets, r.as_record(), [passages[j].with_title for j in d])
                   for r, d in zip(records, fed_idx)]
        targets = [tok.encode(self.template.answer.format(text=r.answer))[: c.answer_tokens] for r in records]
        ll = score_options(llm_cfg, llm_params, prompts, [[t] for t in targets], c.eval_batch, tok.pad_id or 0)
        for row, x, t in zip(rows, ll, targets):
            row["nll"] = round(float(-x[0] / len(t)), 5)
        if name == "pubmedqa_test":
            opts = [[tok.encode(f" {w}") for w in ("Yes", "No", "Maybe")]] * len(records)
            ll = score_options(llm_cfg, llm_params, prompts, opts, c.eval_batch, tok.pad_id or 0)
            for row, x, r in zip(rows, ll, records):
                pred = ("yes", "no", "maybe")[int(np.argmax(x))]
                row.update(decision=pred, correct=pred == r.decision)
        if generate:

            outs = generate_answers(llm_cfg, llm_params, tok, prompts[:generate], c.answer_tokens, c.eval_batch)
            refs = [tok.decode(t) for t in targets[:generate]]
            for row, o, s in zip(rows, outs, text_scores_per_question(outs, refs)):
                row.update(output=o, **s)
        return rows

    def mcq(self, llm_params) -> list[dict]:
        """MMLU-Med and MedQA-US dev (fixed samples), log-likelihood of the options, no retrieval."""

        llm_cfg, _, tok = self.models()[:3]
        sets = eval_sets(DataConfig(data_dir=self.cfg.data_dir), ("mmlu_med", "medqa"),
                         medqa_path="medqa/us_4_options_dev.jsonl", max_per_set=self.cfg.mcq_per_set)
        preds = evaluate(sets, llm_cfg, llm_params, tok, EvalConfig(name="mcq", batch_size=self.cfg.eval_batch),
                         PromptTemplate(), Budgets(), progress=self.progress)
        return [{"set": p["set"], "id": p["id"], "pred": p["pred_letter"], "correct": bool(p["correct"])}
                for p in preds]

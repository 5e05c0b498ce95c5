"""The evidence comparison's configuration, its splits and corpus (deterministic from the config), the arm tables
and the small file helpers its parts share (jmlr_jax.compare.evidence runs the parts)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Sequence

import gin
import numpy as np

from jmlr_jax.data import evidence as ev
from jmlr_jax.errors import InputError, check_counts
from jmlr_jax.retrieval.corpus import corpus_from_documents, resolve_path
from jmlr_jax.retrieval.index import TokenIndex
from jmlr_jax.workdir import write_text


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvidenceConfig:
    data_dir: str = ""
    out_dir: str = "results/comparison"  # per-part JSON (committed)
    work_dir: str = "workdir/evidence"  # index, candidates, cached losses, trained weights (not committed)
    llm: str = "smollm2-135m-instruct"
    retriever: str = "all-minilm-l6-v2"
    # data
    medquad: str = "medquad/medquad.jsonl"  # under data_dir unless absolute; or the public release's XML directory
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
    # Parts chat_<part> (chat_generate > 0): the base generator answers the first chat_generate held-out-focus
    # questions in its own chat template (ChatML, as for the pipelines' SFT) with the passages part <part> fed it
    # (its JSON's "fed"), for every arm whose generator is the base (a, frozen, e and the pool arms). Under the plain
    # "Question / Answer" template the untrained instruct model mostly ends its turn at once, so there the
    # generation scores cannot tell those arms' retrievers apart.
    chat_generate: int = 150
    # Parts dg_s* (diagnostic: each d seed's generator with the frozen retriever; dgL_s* the same for dL_s*). With
    # chat_generate = 0 and diagnostic = False the run holds exactly the arms and measures (~3 h here
    # instead of ~3.5).
    diagnostic: bool = True
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
    # A training part saves a checkpoint every this many steps (work_dir/training/<arm>_s<seed>-<hash>/, deleted when
    # its training ends): a part stopped by Ctrl-C / SIGTERM (after saving) or a crash resumes from there on a rerun.
    checkpoint_every: int = 100
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
    # Part "weights" (weight_alphas given; dev only, with a pool): arm eL's retrievers combined in weight space, the
    # two standard remedies for a fine-tuned model that generalises worse under a distribution shift (here: diseases
    # never trained on): a uniform soup, the mean of eL's seeds' weights (Wortsman et al. 2022, "Model soups"), and
    # WiSE-FT, (1 - alpha) * base + alpha * trained for seed 0 and for the soup at each alpha (Wortsman et al. 2022,
    # "Robust fine-tuning of zero-shot models"); recall on every dev-focus question. Reports; changes no arm. With
    # both_sides also part "weights_eB": eB seed 0 at each alpha, each row searching the corpus its weights re-encoded.
    weight_alphas: tuple = ()
    # Part "ensemble_eB" (ensemble_weights given, with both_sides; dev only): eB seed 0 and the base retriever
    # ensembled in output space instead, each passage scored (1 - w) * base MaxSim + w * eB MaxSim (each on the corpus
    # its own weights encoded) at each w; recall on every dev-focus question. Reports; changes no arm.
    ensemble_weights: tuple = ()
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
    # Parts cL_s* and dL_s* (with a pool, without extra focuses): arms (c) RAG and (d) JMLR trained on the whole pool
    # at eL's retriever settings, the generator trained live (its losses cannot be cached: ~1 h a seed of dL here),
    # so that JMLR - RAG and JMLR - eL are measured at the pool's size. The seeds to run (empty: none).
    joint_pool_seeds: tuple = ()
    # the retriever settings sweep (arm e on the dev focuses): first rank loss x lr at num_sampled / epochs, then
    # at the best of those, each num_sampled x epochs (KL over all C candidates; more passes over the data)
    sweep_lrs: tuple = (1e-5, 3e-5, 1e-4)
    sweep_losses: tuple = ("ranknet", "kl")
    sweep_sampled: tuple = (8, 16)
    sweep_epochs: tuple = (1, 3)
    eval_batch: int = 8

    def __post_init__(self):
        check_counts(self, ("num_candidates", "num_sampled", "batch_size", "epochs", "checkpoint_every", "eval_batch"))


TASK_SETS = ("heldout_focus", "heldout_doc", "pubmedqa_test")
# What each trained arm trains (and therefore saves and evaluates with): one table, read by train and arm_part.
TRAINED = {"b": ("llm",), "c": ("llm",), "d": ("llm", "retriever"), "e": ("retriever",), "eL": ("retriever",),
           "eB": ("retriever",), "eR": ("retriever",), "eF": ("retriever",), "eK": ("retriever",),
           "eFB": ("retriever",), "eKB": ("retriever",), "eT": ("retriever",), "eTR": ("retriever",),
           "cL": ("llm",), "dL": ("llm", "retriever")}
# arm e on the whole pool at the settings chosen there (eB, eR: both sides trained; eF: the pool with extra focuses;
# eK: the same pool, eL's questions keeping eL's candidates; eFB, eKB: eF, eK with both sides trained; eT, eTR: eB,
# eR at the KL temperature chosen on dev); cL, dL: arms c and d on the pool without extra focuses, at eL's settings
POOL_ARMS = ("eL", "eB", "eR", "eF", "eK", "eFB", "eKB", "eT", "eTR", "cL", "dL")
CACHED = ("e", *(a for a in POOL_ARMS if "llm" not in TRAINED[a]))  # generator frozen: its losses computed once
EXTRA_ARMS = ("eF", "eK", "eFB", "eKB")  # the arms of the pool with extra focuses
BOTH_SIDES = ("eB", "eFB", "eKB", "eT")  # arms whose candidates are encoded live (eR, eTR: too, from eB's / eT's)
SECOND_ROUND = {"eR": "eB", "eTR": "eT"}  # second-round arm -> the arm whose retriever it continues and re-mines with
REFRESHED = (*BOTH_SIDES, *SECOND_ROUND)  # arms whose document encoder moved: evaluated on the corpus it re-encoded
SHARP = ("eT", "eTR")  # arms trained at the KL target temperature the posterior part chose on dev
# diagnostic arm -> the JMLR arm whose trained generator it evaluates with the frozen base retriever
DIAGNOSTIC = {"dg": "d", "dgL": "dL"}
BASE_GENERATOR = ("a", "frozen", *(a for a, t in TRAINED.items() if "llm" not in t))  # arms with chat_<part> parts


def sha(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=None, separators=(",", ":")))  # atomic: written aside, then renamed


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

    mq, skipped = ev.read_medquad_qa(resolve_path(cfg.medquad, cfg.data_dir), on_error="skip")
    split = ev.split_by_focus(mq, train_focuses=cfg.train_focuses, dev_focuses=cfg.dev_focuses,
                              heldout_focuses=cfg.heldout_focuses, extra_train_focuses=cfg.extra_train_focuses)
    pm_train, pm_test = ev.pubmedqa_long_answer(cfg.data_dir)
    by_hash = lambda rs: sorted(rs, key=lambda r: sha(f"{r.task}/{r.id}"))  # noqa: E731
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

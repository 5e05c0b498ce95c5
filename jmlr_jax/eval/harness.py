"""Evaluation on medical multiple-choice QA, with or without retrieval, from a checkpoint or the base weights.

    python launch/evaluate.py --workdir=workdir/compare/d_jmlr --gin_file=compare/eval.gin [--gin.EvalConfig.retrieval=True]

The run's saved config (its workdir's config.json) gives the model, retriever, template, budgets, data and
corpus, so evaluation reads prompts exactly as training built them and holds out exactly what training did. Writes <output_dir>/<name>.json (settings, per-question
predictions, summary) and <name>.md (n, accuracy and standard error per dataset and subject).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from typing import Callable, Sequence

import gin
import numpy as np
import tqdm

from jmlr_jax import parallel, workdir as workdir_lib
from jmlr_jax.data.pipeline import retrieval_query
from jmlr_jax.data.sources import LETTERS, QARecord, read_qa
from jmlr_jax.data.splits import DataConfig, question_key, training_records
from jmlr_jax.data.templates import Budgets, PromptTemplate, encode_shots
from jmlr_jax.errors import InputError, check_counts
from jmlr_jax.experiment import Experiment
from jmlr_jax.eval.mcq import generate_answers, option_ids, prompt_ids, score_options
from jmlr_jax.eval.parse import parse_choice
from jmlr_jax.retrieval.corpus import resolve_path
from jmlr_jax.retrieval.index import Retriever, search_all
from jmlr_jax.retrieval.store import cached_index
from jmlr_jax.train.weights import base_params, on_mesh, restore_params

UNPARSEABLE_POLICY = "an answer the parser cannot read counts as wrong (jmlr_jax/eval/parse.py)"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    name: str = "eval"  # file name and table label
    from_checkpoint: bool = True  # the run's latest checkpoint; False = the run's base weights
    mode: str = "loglik"  # "loglik" (option log-likelihood) or "generate" (greedy, then parse)
    retrieval: bool = False  # top num_docs passages from the run's corpus, best last, before the question
    num_docs: int | None = None  # None: the run's JMLRConfig.num_docs (what the generator was trained to read)
    query_with_options: bool = False
    batch_size: int = 8
    max_new_tokens: int = 16  # generate mode
    gold_recall_ks: tuple = ()  # e.g. (1, 7, 30): PubMedQA gold abstract in top-k, test abstracts added to the corpus
    sets: tuple[str, ...] = ("mmlu_med", "pubmedqa_test", "medmcqa_heldout")
    medqa_path: str = ""  # for the "medqa" set (JSONL, 4 or 5 options); relative = under DataConfig.data_dir
    # More sets from files, evaluated with `sets`: (name, kind, path) or (name, kind, path, reader options), kind a
    # `data.sources` reader, e.g. ("medqa_test", "medqa", "/data/MedQA/US/4_options/phrases_no_exclude_test.jsonl")
    # or ("medmcqa_val", "medmcqa", "/data/medmcqa/validation-00000-of-00001.parquet"); with reader options,
    # ("anatomy", "mmlu", "/data/mmlu/all/test-00000-of-00001.parquet", {"subjects": ["anatomy"]}).
    set_files: tuple = ()
    max_per_set: int = 0  # > 0: a fixed sample of N per set (smallest sha1 of id)
    output_dir: str = ""  # default: <workdir>/eval
    # Few-shot: num_shots solved examples before each question (`shot_pools`, `choose_shots`: the question's
    # subject's first, a fixed pseudo-random choice per question), within shots_tokens (whole examples dropped
    # from the front). Pools are built in for
    # medmcqa_heldout (MedMCQA's training part) and pubmedqa_test (PubMedQA's train half); shot_files adds or
    # replaces them as (set, kind, path) triples, e.g. ("mmlu_med", "mmlu", "/data/mmlu/data/dev") (MMLU's dev
    # split, 5 per subject) or ("medqa", "medqa", "/data/MedQA/US/4_options/phrases_no_exclude_train.jsonl").
    num_shots: int = 0
    shots_tokens: int = 1536
    shot_files: tuple = ()

    def __post_init__(self):
        if self.mode not in ("loglik", "generate"):
            raise ValueError(f"EvalConfig.mode must be 'loglik' or 'generate', got {self.mode!r}")
        if self.num_shots < 0:
            raise ValueError(f"EvalConfig.num_shots must be >= 0, got {self.num_shots}")
        check_counts(self, ("batch_size", "max_new_tokens", "shots_tokens"), ("max_per_set",))
        if self.num_docs is not None and not (isinstance(self.num_docs, int) and self.num_docs >= 0):
            raise ValueError(f"EvalConfig.num_docs must be None (the run's) or >= 0, got {self.num_docs!r}")
        if not all(isinstance(k, int) and k >= 1 for k in self.gold_recall_ks):
            raise ValueError(f"EvalConfig.gold_recall_ks must be positive integers, got {self.gold_recall_ks!r}")
        if workdir_lib.is_remote(self.output_dir):  # a cloud run's results reach its workdir without it
            raise ValueError(f"EvalConfig.output_dir must be local, got {self.output_dir!r} (leave it empty: the "
                             "results then go to <workdir>/eval, a cloud workdir's too)")


def eval_sets(data: DataConfig, names: Sequence[str] = ("mmlu_med", "pubmedqa_test", "medmcqa_heldout"),
              medqa_path: str = "", max_per_set: int = 0, set_files: Sequence = ()) -> dict[str, list[QARecord]]:
    """Evaluation questions by set name, from the run's data config (so held-out = what training held out).

    mmlu_med: DataConfig.mmlu_dir's files of mmlu_subjects (subject = file name); pubmedqa_test: the 500 PQA-L
    test questions; medmcqa_heldout: the part of DataConfig.medmcqa_file held out from training (same fraction
    and hash as training_records); medmcqa_dev: all of that file; medqa: medqa_path (JSONL, 4 or 5 options).
    max_per_set > 0 keeps a fixed sample of N per set: the N ids with the smallest sha1 hash, so the sample
    is the same in every run and spread over subjects (a head of the file would be one MMLU subject).
    set_files (EvalConfig) add sets read from files; a warning counts their questions the run trained on.
    """
    data_dir = data.require_dir()
    loaders = {
        "mmlu_med": data.mmlu_records,
        "pubmedqa_test": lambda: data.pubmedqa_split()[1],
        "medmcqa_heldout": lambda: data.medmcqa_split()[1],
        "medmcqa_dev": data.medmcqa_records,
        "medqa": lambda: read_qa("medqa", resolve_path(medqa_path, data_dir)),
    }
    trained_keys = functools.cache(lambda: {question_key(r) for r in training_records(data)})  # once for all files
    for entry in set_files:
        if not (isinstance(entry, (tuple, list)) and len(entry) in (3, 4)
                and (len(entry) == 3 or isinstance(entry[3], dict))):
            raise InputError(f"EvalConfig.set_files: expected (name, kind, path[, reader options]), got {entry!r}")
        name, kind, path = entry[:3]
        if name in loaders:
            raise InputError(f"EvalConfig.set_files: set name {name!r} is taken ({sorted(loaders)})")
        loaders[name] = functools.partial(_file_set, trained_keys, name, kind, resolve_path(path, data_dir),
                                          **(entry[3] if len(entry) == 4 else {}))
    names = [*names, *(e[0] for e in set_files)]
    unknown = [n for n in names if n not in loaders]
    if unknown:
        raise InputError(f"unknown evaluation set(s) {unknown}; known: {sorted(loaders)}")
    if "medqa" in names and not medqa_path:
        raise InputError("evaluation set 'medqa' needs a MedQA file: EvalConfig.medqa_path (a pipeline's: "
                         "StageEvalConfig.medqa_path)")

    def sample(records: list[QARecord]) -> list[QARecord]:
        if not max_per_set or len(records) <= max_per_set:
            return records
        keep = set(sorted(range(len(records)), key=lambda i: hashlib.sha1(records[i].id.encode()).hexdigest())[:max_per_set])
        return [r for i, r in enumerate(records) if i in keep]

    return {n: sample(loaders[n]()) for n in names}


def _file_set(trained_keys: Callable[[], set], name: str, kind: str, path: str, **options) -> list[QARecord]:
    records = read_qa(kind, path, **options)
    trained = trained_keys()
    seen = sum(question_key(r) in trained for r in records)
    if seen:
        print(f"warning: evaluation set {name!r}: {seen} of {len(records)} questions are training questions of this "
              "run", file=sys.stderr, flush=True)
    return records


def shot_pools(data: DataConfig, sets: dict[str, list[QARecord]], shot_files: Sequence = ()) -> dict[str, list]:
    """Per evaluation set, the solved examples few-shot prompts draw from: the built-in pools, then shot_files'
    (EvalConfig); every question that is also an evaluated one (same stem and options) left out."""
    built_in = {"medmcqa_heldout": lambda: data.medmcqa_split()[0], "pubmedqa_test": lambda: data.pubmedqa_split()[0]}
    files = {}
    for entry in shot_files:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 3):
            raise InputError(f"EvalConfig.shot_files: expected (set, kind, path) triples, got {entry!r}")
        name, kind, path = entry
        if name not in sets:
            raise InputError(f"EvalConfig.shot_files names set {name!r}, which is not evaluated ({sorted(sets)})")
        files[name] = functools.partial(read_qa, kind, resolve_path(path, data.require_dir()),
                                        **({"subjects": data.mmlu_subjects} if kind == "mmlu" else {}))
    missing = [n for n in sets if n not in files and n not in built_in]
    if missing:
        raise InputError(f"few-shot evaluation has no examples for {missing}: add them to EvalConfig.shot_files as "
                         "(set, kind, path), e.g. ('mmlu_med', 'mmlu', '/data/mmlu/data/dev')")
    evaluated = {question_key(r) for recs in sets.values() for r in recs}
    return {n: [r for r in {**built_in, **files}[n]() if r.answer_idx >= 0 and question_key(r) not in evaluated]
            for n in sets}


def choose_shots(pool: Sequence[QARecord], r: QARecord, k: int) -> list[QARecord]:
    """k examples for `r`: its subject's first (MMLU's dev split: 5 per subject), then the rest of the pool; within
    each, a pseudo-random order fixed by the question's and the example's ids (sha1). Per question, as lm-eval's
    samplers do: one fixed set for every question repeats its last answer's letter as a bias over the whole set (a
    135M model answered "maybe" to all 500 PubMedQA test questions after five fixed examples ending in one)."""
    order = lambda x: (not (r.subject and x.subject == r.subject),  # noqa: E731
                       hashlib.sha1(f"{r.dataset}/{r.id}/{x.dataset}/{x.id}".encode()).hexdigest())
    return sorted(pool, key=order)[:k]


def evaluate(sets: dict[str, list[QARecord]], llm_cfg, llm_params, tok, ecfg: EvalConfig, template: PromptTemplate,
             budgets: Budgets, retriever: Retriever | None = None, num_docs: int = 0,
             progress: bool = True, pools: dict[str, list[QARecord]] | None = None) -> list[dict]:
    """Per-question predictions for every set (see module doc for the prompt); num_docs passages when
    ecfg.retrieval; ecfg.num_shots solved examples from `pools` (`shot_pools`) first when > 0."""
    tpl = template
    if ecfg.num_shots and pools is None:
        raise ValueError("num_shots > 0 needs example pools (shot_pools)")
    total = sum(len(v) for v in sets.values())
    preds: list[dict] = []
    bar = tqdm.tqdm(total=total, desc=f"{ecfg.name} ({ecfg.mode})", unit="q", disable=not progress)
    for set_name, records in sets.items():
        docs: list[list[int]] = [[] for _ in records]
        if ecfg.retrieval:
            if retriever is None:
                raise ValueError("retrieval=True needs a retriever")
            queries = [retrieval_query(r, ecfg.query_with_options) for r in records]
            ids, _ = search_all(retriever, queries, num_docs)
            docs = [list(row[row >= 0][::-1]) for row in ids]  # best last
        passages = retriever.index.passages if retriever is not None else []
        shots = [choose_shots(pools[set_name], r, ecfg.num_shots) if ecfg.num_shots else [] for r in records]
        prompts = [prompt_ids(tok, tpl, budgets, r, [passages[j].with_title for j in d],
                              encode_shots(tok, tpl, s, ecfg.shots_tokens)) for r, d, s in zip(records, docs, shots)]
        if ecfg.mode == "loglik":
            ll = score_options(llm_cfg, llm_params, prompts, [option_ids(tok, tpl, r, budgets.answer) for r in records],
                               ecfg.batch_size, tok.pad_id or 0, bar)
            outs = [{"pred": int(np.argmax(x)), "logliks": [round(float(v), 4) for v in x]} for x in ll]
        else:
            # cut where the model goes on to a next "Question:": its "Answer: C" would be parsed as this answer
            texts = generate_answers(llm_cfg, llm_params, tok, prompts, ecfg.max_new_tokens, ecfg.batch_size, bar,
                                     stop_strings=tpl.stop_strings)
            outs = []
            for r, t in zip(records, texts):
                p = parse_choice(t, r.options)
                outs.append({"pred": -1 if p is None else p, "output": t, "unparsed": p is None})
        for r, d, o, pr, s in zip(records, docs, outs, prompts, shots):
            preds.append({"set": set_name, "id": r.id, "subject": r.subject, "answer": r.answer_letter,
                          "pred_letter": LETTERS[o["pred"]] if o["pred"] >= 0 else "", "correct": o["pred"] == r.answer_idx,
                          "prompt_tokens": len(pr), "docs": [passages[j].id for j in d],
                          **({"shots": [x.id for x in s]} if s else {}), **o})
    bar.close()
    return preds


def summarize(preds: Sequence[dict]) -> list[dict]:
    """Rows (set, subject or "all", n, accuracy, standard error, unparsed); subjects only for MMLU."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in preds:
        groups.setdefault((p["set"], "all"), []).append(p)
        if p["set"].startswith("mmlu"):
            groups.setdefault((p["set"], p["subject"]), []).append(p)
    rows = []
    for (s, subject), ps in groups.items():
        n, acc = len(ps), float(np.mean([p["correct"] for p in ps]))
        rows.append({"set": s, "subject": subject, "n": n, "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n),
                     "unparsed": sum(bool(p.get("unparsed")) for p in ps)})
    return sorted(rows, key=lambda r: (r["set"], r["subject"] != "all", r["subject"]))


def paired(a: dict, b: dict) -> list[dict]:
    """Two evaluations of the same questions (their JSON results) per set: accuracy of each, b - a with its paired
    bootstrap 95% interval, McNemar's p, and each one's predicted letters; only questions both answered."""
    from jmlr_jax.compare.stats import mcnemar, paired_bootstrap

    by_b = {(p["set"], p["id"]): p for p in b["predictions"]}
    rows = []
    for s in sorted({p["set"] for p in a["predictions"]}):
        both = [(p, by_b[(s, p["id"])]) for p in a["predictions"] if p["set"] == s and (s, p["id"]) in by_b]
        if not both:
            continue
        ca, cb = [x["correct"] for x, _ in both], [y["correct"] for _, y in both]
        boot, test = paired_bootstrap(cb, ca), mcnemar(cb, ca)
        count = lambda xs: dict(sorted(collections.Counter(xs).items()))  # noqa: E731
        rows.append({"set": s, "n": len(both), "acc_a": float(np.mean(ca)), "acc_b": float(np.mean(cb)),
                     "diff": boot["diff"], "lo": boot["lo"], "hi": boot["hi"], "p": test["p"],
                     "letters_a": count(x["pred_letter"] for x, _ in both),
                     "letters_b": count(y["pred_letter"] for _, y in both),
                     "gold": count(x["answer"] for x, _ in both)})
    return rows


def markdown(rows: Sequence[dict], title: str, generate_mode: bool = False) -> str:
    head = "| set | subject | n | accuracy | s.e. |" + (" unparsed |" if generate_mode else "")
    lines = [f"**{title}**", "", head, "|" + "---|" * (6 if generate_mode else 5)]
    for r in rows:
        lines.append(f"| {r['set']} | {r['subject']} | {r['n']} | {r['accuracy']:.3f} | {r['se']:.3f} |"
                     + (f" {r['unparsed']} |" if generate_mode else ""))
    if generate_mode:
        lines += ["", f"Unparsed: {UNPARSEABLE_POLICY}."]
    return "\n".join(lines)


def gold_recall(retriever: Retriever, records: Sequence[QARecord], ks: Sequence[int]) -> dict[str, float]:
    """How often each PubMedQA question's own abstract (doc id pmid-<id>) is among its top-k passages."""
    ids, _ = search_all(retriever, [r.question for r in records], max(ks))
    hits = np.array([[j >= 0 and retriever.index.passages[j].doc_id == f"pmid-{r.id}" for j in row]
                     for r, row in zip(records, ids)], bool)
    return {f"top{kk}": float(np.mean(hits[:, :kk].any(axis=1))) for kk in ks}


def evaluate_main(exp: Experiment, ecfg: EvalConfig) -> dict:
    """Loads weights (the run's checkpoint or its base), retrieves if asked, scores every set, writes JSON +
    markdown. `exp` is the run's saved config (experiment.for_evaluation)."""
    t0 = time.time()
    run = exp.run
    out_dir = ecfg.output_dir or workdir_lib.eval_dir(run.workdir)
    os.makedirs(out_dir, exist_ok=True)
    mesh = parallel.evaluation_mesh(run.mesh_shape)  # the LLM sharded as it trained, batches split over it
    if ecfg.from_checkpoint:
        w = restore_params(run.workdir, exp=exp, mesh=mesh)
        llm_cfg, tok, llm_params, rcfg, ctok, r_params = w.llm_cfg, w.tok, w.llm_params, w.rcfg, w.ctok, w.r_params
        source = {"checkpoint": os.path.join(run.workdir, "checkpoints"), "step": w.meta["step"]}
    else:
        llm_cfg, tok, rcfg, ctok, params = base_params(exp, lora=False)
        llm_params, r_params = on_mesh(llm_cfg, params["llm"], mesh), params["retriever"]
        source = {"base": run.llm}
    sets = eval_sets(exp.data, ecfg.sets, ecfg.medqa_path, ecfg.max_per_set, ecfg.set_files)
    num_docs = exp.jmlr.num_docs if ecfg.num_docs is None else ecfg.num_docs
    retriever = None
    if ecfg.retrieval:
        index = cached_index(exp.corpus.load(exp.data.require_dir()), rcfg, r_params, ctok, exp.index, exp.search,
                             out_dir, also=[d for d in (run.initial_index,) if d])
        retriever = Retriever(rcfg, r_params, ctok, index)
    pools = shot_pools(exp.data, sets, ecfg.shot_files) if ecfg.num_shots else None
    preds = evaluate(sets, llm_cfg, llm_params, tok, ecfg, exp.template, exp.budgets, retriever, num_docs, pools=pools)
    rows = summarize(preds)
    result = {"name": ecfg.name, "source": source, "settings": {
        "eval": dict(dataclasses.asdict(ecfg), num_docs=num_docs), "template": dataclasses.asdict(exp.template),
        "budgets": dataclasses.asdict(exp.budgets), "llm": run.llm,
        "corpus_passages": len(retriever.index.passages) if retriever else 0,
        "unparseable_policy": UNPARSEABLE_POLICY if ecfg.mode == "generate" else None},
        "summary": rows}
    if ecfg.gold_recall_ks:
        corpus = exp.corpus.load(exp.data.data_dir, pubmedqa_exclude=False)  # test abstracts are the gold documents
        gold_r = Retriever(rcfg, r_params, ctok, cached_index(corpus, rcfg, r_params, ctok, exp.index, exp.search,
                                                              out_dir))
        tests = eval_sets(exp.data, ("pubmedqa_test",))["pubmedqa_test"]
        result["gold_recall"] = {"n": len(tests), "corpus_passages": len(corpus), **gold_recall(gold_r, tests,
                                                                                                ecfg.gold_recall_ks)}
    result["seconds"] = round(time.time() - t0, 1)
    result["predictions"] = preds
    path = os.path.join(out_dir, f"{ecfg.name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(rows, f"{ecfg.name}: {ecfg.mode}, {'with' if ecfg.retrieval else 'without'} retrieval",
                  ecfg.mode == "generate")
    if "gold_recall" in result:
        md += "\n\nPubMedQA gold abstract retrieved: " + ", ".join(
            f"{k} {v:.3f}" for k, v in result["gold_recall"].items() if k.startswith("top"))
    with open(os.path.join(out_dir, f"{ecfg.name}.md"), "w") as f:
        f.write(md + "\n")
    if not ecfg.output_dir:
        workdir_lib.upload(run.workdir)  # a cloud workdir: its eval/ from the local mirror
    print(md + f"\n\n-> {path} ({result['seconds']:.0f} s)")
    return result

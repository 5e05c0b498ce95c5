"""Tables and plots of the evidence comparison, regenerated from the per-question JSON in results/comparison/.

    python launch/compare_evidence.py --report_only          # rewrites the README section and the plots
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Sequence

import numpy as np

from jmlr_jax.compare.evidence_setup import BASE_GENERATOR
from jmlr_jax.compare.report_dev import arm_runs, dev_sections
from jmlr_jax.compare.stats import bootstrap_mean, mcnemar, paired_bootstrap

BEGIN, END = "<!-- evidence-comparison:begin -->", "<!-- evidence-comparison:end -->"
SETS = {"heldout_focus": "MedQuAD held-out focuses", "heldout_doc": "MedQuAD held-out questions of training focuses",
        "pubmedqa_test": "PubMedQA test"}
ARMS = {"a": "(a) base", "b": "(b) fine-tuned, no retrieval", "frozen": "frozen: base + frozen retriever",
        "c": "(c) RAG", "d": "(d) JMLR", "e": "(e) retriever-only JMLR",
        "dg": "(d)'s generator + frozen retriever", "eL": "(eL) retriever-only JMLR, larger training pool",
        "eB": "(eB) eL with both encoder sides trained, index refreshed",
        "eR": "(eR) eB's second round on candidates it re-mined",
        "eF": "(eF) eL's settings, pool with more training focuses",
        "eK": "(eK) eF with eL's questions keeping eL's candidates",
        "eFB": "(eFB) eF with both encoder sides trained, index refreshed",
        "eKB": "(eKB) eK with both encoder sides trained, index refreshed",
        "eT": "(eT) eB at the KL temperature chosen on dev",
        "eTR": "(eTR) eT's second round on candidates it re-mined",
        "cL": "(cL) RAG, larger training pool", "dL": "(dL) JMLR, larger training pool",
        "dgL": "(dL)'s generator + frozen retriever"}
# Parts chat_<part>: the base generator's answers in its chat template with the passages <part> fed it; chat_gold
# with the oracle passage (the first of the question's own answer).
CHAT_ARMS = (*BASE_GENERATOR, "gold")
ARMS["gold"] = "oracle: base + the gold passage"
ARMS.update({f"chat_{a}": f"{ARMS[a]}, chat template" for a in CHAT_ARMS})
RETRIEVER_ARMS = ("frozen", "d", "e", "eL", "eB", "eR", "eF", "eK", "eFB", "eKB", "eT", "eTR", "dL")
# (arm, its comparator, measures): JMLR - RAG, retriever-only - frozen; and JMLR - RAG split into the trained
# generator's part (same frozen retrieval, so no recall rows) and the trained retriever's part (same generator);
# the larger pool against the frozen retriever and against the comparison's arm e (retrieval and NLL only); the
# document side trained too against the frozen retriever and against the query side alone (eL); its second round
# against the frozen retriever and against its first (eB); more training focuses against the frozen retriever and
# against the same settings without them (eL), also when eL's questions keep their candidates (eK); both sides
# trained on that pool against the frozen retriever and against both sides trained without the extra focuses (eB);
# eB and eR at the temperature chosen on dev (eT, eTR) against the frozen retriever and against themselves at beta 1;
# JMLR - RAG on the pool (dL - cL, split by dgL as d - c by dg), JMLR's retriever against the retriever-only one
# on the same pool (recall only: their generators differ), and each against its arm on the comparison's 200
# questions;
# in the chat template (generation only), the frozen retriever's passage against none, and every trained
# retriever's and the oracle's against the frozen one's.
PAIRS = (("d", "c", "all"), ("e", "frozen", "all"), ("dg", "c", "generator"), ("d", "dg", "all"),
         ("eL", "frozen", "retrieval"), ("eL", "e", "retrieval"), ("eB", "frozen", "retrieval"),
         ("eB", "eL", "retrieval"), ("eR", "frozen", "retrieval"), ("eR", "eB", "retrieval"),
         ("eF", "frozen", "retrieval"), ("eF", "eL", "retrieval"), ("eK", "frozen", "retrieval"),
         ("eK", "eL", "retrieval"), ("eFB", "frozen", "retrieval"), ("eFB", "eB", "retrieval"),
         ("eKB", "frozen", "retrieval"), ("eKB", "eB", "retrieval"), ("eT", "frozen", "retrieval"),
         ("eT", "eB", "retrieval"), ("eTR", "frozen", "retrieval"), ("eTR", "eR", "retrieval"),
         ("dL", "cL", "all"), ("dgL", "cL", "generator"), ("dL", "dgL", "all"), ("dL", "eL", "recall"),
         ("dL", "d", "all"), ("cL", "c", "generator"),
         *((f"chat_{a}", "chat_frozen" if a != "frozen" else "chat_a", "text") for a in CHAT_ARMS if a != "a"))


def text_scores_per_question(outputs: Sequence[str], refs: Sequence[str]) -> list[dict]:
    """ROUGE-L F1 (rouge-score, stemmed) and sentence BLEU-1 (sacrebleu, brevity penalty included) per answer."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    bleu = sacrebleu.metrics.BLEU(max_ngram_order=1, effective_order=True)
    return [{"rougeL": round(scorer.score(r, o)["rougeL"].fmeasure, 5),
             "bleu1": round(bleu.sentence_score(o, [r]).score / 100, 5)} for o, r in zip(outputs, refs)]


def load(out_dir: str) -> dict[str, dict]:
    out = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
        with open(path) as f:
            out[os.path.basename(path)[:-5]] = json.load(f)
    return out


# Per-question measures: name -> (set, extractor of a value from a row or None when absent, binary?)
def _recall(k):
    return lambda row: None if "gold_rank" not in row else float(row["gold_rank"] is not None and row["gold_rank"] <= k)


MEASURES = {
    **{f"recall@{k} {s}": (s, _recall(k), True) for s in SETS for k in (1, 7, 30)},
    **{f"NLL {s}": (s, lambda row: row.get("nll"), False) for s in SETS},
    "ROUGE-L heldout_focus": ("heldout_focus", lambda row: row.get("rougeL"), False),
    "BLEU-1 heldout_focus": ("heldout_focus", lambda row: row.get("bleu1"), False),
    "decision acc pubmedqa_test": ("pubmedqa_test", lambda row: None if "correct" not in row else float(row["correct"]),
                                   True),
}


def pair_measures(which: str) -> list[str]:
    """The measures a PAIRS entry compares ("generator": both arms retrieve alike, so no recall; "retrieval":
    recall and NLL only, for two retrievers under the same frozen generator; "recall": recall only)."""
    if which == "recall":
        return [m for m in MEASURES if m.startswith("recall@")]
    if which == "retrieval":
        return [m for m in MEASURES if m.startswith(("recall@", "NLL"))]
    if which == "text":
        return ["ROUGE-L heldout_focus", "BLEU-1 heldout_focus"]
    return [m for m in MEASURES if not (which == "generator" and m.startswith("recall@"))]


def values(part: dict, measure: str) -> tuple[list[str], np.ndarray] | None:
    """(question ids, values) of the questions that have this measure (generation: the first eval_generate), or
    None when none has it (e.g. recall for an arm without retrieval)."""
    s, get, _ = MEASURES[measure]
    rows = [(r["id"], get(r)) for r in part["sets"][s]]
    rows = [(i, v) for i, v in rows if v is not None]
    if not rows:
        return None
    return [i for i, _ in rows], np.asarray([v for _, v in rows], np.float64)


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def summary_table(results: dict) -> str:
    """Mean of each measure per arm (over seeds: mean ± spread of the seed means)."""
    cols = [m for m in MEASURES if not m.startswith("recall@30")]
    lines = ["| arm | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for arm, label in ARMS.items():
        runs = arm_runs(results, arm)
        if not runs or arm.startswith("chat_"):  # those: chat_table
            continue
        cells = []
        for m in cols:
            means = [v[1].mean() for v in (values(p, m) for p in runs.values()) if v is not None]
            cells.append("-" if not means else _fmt(np.mean(means)) + (f" ± {_fmt(np.std(means))}" if len(means) > 1
                                                                       else ""))
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recall_table(results: dict) -> str:
    lines = ["| arm | " + " | ".join(f"{SETS[s]} r@{k}" for s in SETS for k in (1, 7, 30)) + " |",
             "|---|" + "---|" * 9]
    for arm in RETRIEVER_ARMS:
        runs = arm_runs(results, arm)
        if not runs:
            continue
        cells = []
        for s in SETS:
            for k in (1, 7, 30):
                means = [values(p, f"recall@{k} {s}")[1].mean() for p in runs.values()]
                cells.append(_fmt(np.mean(means)) + (f" ± {_fmt(np.std(means))}" if len(means) > 1 else ""))
        lines.append(f"| {ARMS[arm]} ({len(runs)} seed{'s' if len(runs) > 1 else ''}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pooled_interval(results: dict, arm: str, measure: str) -> dict | None:
    """An arm's mean of one measure with a 95% bootstrap interval over questions, seeds pooled as `paired` pools
    them (each question's value averaged over the arm's seeds, then one bootstrap over questions)."""
    runs = [values(p, measure) for _, p in sorted(arm_runs(results, arm).items())]
    if not runs or any(r is None for r in runs):
        return None
    if any(r[0] != runs[0][0] for r in runs):
        raise ValueError(f"{arm}'s seeds were measured on different questions ({measure})")
    return {**bootstrap_mean(np.mean([r[1] for r in runs], axis=0)), "seeds": len(runs)}


def interval_table(results: dict) -> str:
    """Held-out recall@1 per retriever arm with its interval: whether an arm's own recall reaches a goal (the
    issue's >= 0.70), which the paired differences do not say."""
    sets = ("heldout_focus", "heldout_doc")
    lines = ["| arm | seeds | " + " | ".join(f"{SETS[s]} r@1 [95% CI]" for s in sets) + " |", "|---|---|---|---|"]
    for arm in RETRIEVER_ARMS:
        r = [pooled_interval(results, arm, f"recall@1 {s}") for s in sets]
        if r[0] is None:
            continue
        cells = [f"{x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]" if x else "-" for x in r]
        lines.append(f"| {ARMS[arm]} | {r[0]['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(results: dict, arm: str, base: str, measure: str) -> dict | None:
    """Per seed and pooled paired differences arm - base on one measure (same questions in the same order).

    Pooled: each question's value averaged over the seeds both arms have, then one bootstrap over questions.
    Accuracy-like measures also get McNemar per seed."""
    runs, base_runs = arm_runs(results, arm), arm_runs(results, base)
    if not runs or not base_runs:
        return None
    binary = MEASURES[measure][2]
    out, per_a, per_b = {"per_seed": {}}, [], []
    seedless = base in results  # a, b, frozen: one run, paired with every seed; else only the seeds both have
    for seed, part in sorted(runs.items()):
        bpart = base_runs[0] if seedless else base_runs.get(seed)
        if bpart is None:
            continue
        va, vb = values(part, measure), values(bpart, measure)
        if va is None or vb is None:
            return None
        if va[0] != vb[0]:
            raise ValueError(f"{arm} seed {seed} and {base} were measured on different questions ({measure})")
        r = paired_bootstrap(va[1], vb[1], seed=seed)
        if binary:
            r["mcnemar_p"] = mcnemar(va[1] > 0.5, vb[1] > 0.5)["p"]
        out["per_seed"][seed] = r
        per_a.append(va[1])
        per_b.append(vb[1])
    if not per_a:
        return None
    out["pooled"] = paired_bootstrap(np.mean(per_a, axis=0), np.mean(per_b, axis=0))
    return out


def paired_table(results: dict) -> str:
    lines = ["| measure | difference | per seed: diff [95% CI] (McNemar p) | pooled over seeds: diff [95% CI] |",
             "|---|---|---|---|"]
    for arm, base, which in PAIRS:
        for m in pair_measures(which):
            r = paired(results, arm, base, m)
            if r is None:
                continue
            seeds = "; ".join(f"s{s}: {x['diff']:+.3f} [{x['lo']:+.3f}, {x['hi']:+.3f}]" +
                              (f" (p={x['mcnemar_p']:.2g})" if "mcnemar_p" in x else "")
                              for s, x in r["per_seed"].items())
            p = r["pooled"]
            lines.append(f"| {m} | {ARMS[arm]} - {ARMS[base]} | {seeds} | **{p['diff']:+.3f} [{p['lo']:+.3f}, "
                         f"{p['hi']:+.3f}]** |")
    return "\n".join(lines)


TOP1 = ("gold", "same focus, not gold", "another focus", "PubMedQA abstract")


def top1_table(results: dict, focus_of: dict[str, str]) -> str:
    """Where each retriever arm's top passage comes from on the MedQuAD held-out sets: the gold evidence, another
    answer about the question's own focus, an answer about another focus, or a PubMedQA abstract (fractions, mean ±
    s.d. over seeds). focus_of: MedQuAD record id -> focus (passage ids are '<record id>#<chunk>')."""
    sets = ("heldout_focus", "heldout_doc")
    lines = ["| arm | " + " | ".join(f"{SETS[s]}: {k}" for s in sets for k in TOP1) + " |", "|---|" + "---|" * 8]
    for arm in RETRIEVER_ARMS:
        runs = arm_runs(results, arm)
        if not runs:
            continue
        cells = []
        for s in sets:
            fractions = []
            for part in runs.values():
                kinds = []
                for row in part["sets"][s]:
                    doc = row["top10"][0].split("#")[0]
                    kinds.append(0 if row["gold_rank"] == 1 else 3 if doc not in focus_of else
                                 1 if focus_of[doc] == focus_of[row["id"]] else 2)
                fractions.append(np.bincount(kinds, minlength=4) / len(kinds))
            mean, sd = np.mean(fractions, 0), np.std(fractions, 0)
            cells += [_fmt(m) + (f" ± {_fmt(d)}" if len(runs) > 1 else "") for m, d in zip(mean, sd)]
        lines.append(f"| {ARMS[arm]} ({len(runs)} seed{'s' if len(runs) > 1 else ''}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chat_table(results: dict) -> str:
    """Per base-generator arm: its answers in the chat template (mean ± s.d. over seeds), their ROUGE-L split by
    whether the passage fed was the gold evidence (question-seed pairs pooled), beside the plain template's (the
    arm's own part, its first eval_generate questions)."""
    lines = ["| arm | seeds | questions | ROUGE-L | BLEU-1 | empty answers | ROUGE-L, gold passage fed / another "
             "| ROUGE-L, plain template |", "|---|---|---|---|---|---|---|---|"]
    cell = lambda xs: _fmt(np.mean(xs)) + (f" ± {_fmt(np.std(xs))}" if len(xs) > 1 else "")  # noqa: E731
    for arm in CHAT_ARMS:
        runs, plain = arm_runs(results, f"chat_{arm}"), arm_runs(results, arm)
        if not runs:
            continue
        rows = [p["sets"]["heldout_focus"] for p in runs.values()]
        plain_rl = [values(p, "ROUGE-L heldout_focus")[1] for p in plain.values()]
        split: dict[bool, list[float]] = {True: [], False: []}
        for p in runs.values():
            of = results[p["of"]]["sets"]["heldout_focus"] if p.get("of") in results else []
            rank = {q["id"]: q["gold_rank"] for q in of if "gold_rank" in q}  # arm a and the oracle retrieve nothing
            for q in p["sets"]["heldout_focus"]:
                if q["id"] in rank:
                    split[rank[q["id"]] == 1].append(q["rougeL"])
        by_gold = " / ".join(f"{_fmt(np.mean(split[g]))} (n={len(split[g])})" if split[g] else "-"
                             for g in (True, False)) if split[True] or split[False] else "-"
        lines.append(f"| {ARMS[arm]} | {len(runs)} | {len(rows[0])} | "
                     f"{cell([np.mean([q['rougeL'] for q in r]) for r in rows])} | "
                     f"{cell([np.mean([q['bleu1'] for q in r]) for r in rows])} | "
                     f"{cell([np.mean([not q['output'].strip() for q in r]) for r in rows])} | {by_gold} | "
                     f"{f'{cell([v.mean() for v in plain_rl])} (n={len(plain_rl[0])})' if plain_rl else '-'} |")
    return "\n".join(lines)


MCQ_SETS = {"mmlu_med": "MMLU-Med", "medqa": "MedQA-US dev"}
# Paired MCQ differences: each trained generator against the base (what fine-tuning cost), and JMLR against RAG.
# Arm (e) and the pool arms keep the base generator, so their MCQ accuracy is (a)'s by construction.
MCQ_PAIRS = (("b", "a"), ("c_s0", "a"), ("d_s0", "a"), ("d_s0", "c_s0"))


def _mcq_label(part: str) -> str:
    arm, _, seed = part.partition("_s")
    return ARMS[arm] + (f" (seed {seed})" if seed else "")


def mcq_correct(part: dict, which: str) -> dict[str, bool]:
    """Question id -> correct, for one MCQ set of a part."""
    return {r["id"]: bool(r["correct"]) for r in part["mcq"] if r["set"] == which}


def mcq_table(results: dict) -> str:
    """Accuracy per part with standard errors, then the paired differences of `MCQ_PAIRS` over the same questions
    (bootstrap interval, exact McNemar p)."""
    lines = ["| arm | " + " | ".join(f"{v} acc ± s.e." for v in MCQ_SETS.values()) + " |", "|---|---|---|"]
    for name, part in results.items():
        if "mcq" not in part:
            continue
        cells = []
        for s in MCQ_SETS:
            x = np.asarray(list(mcq_correct(part, s).values()), np.float64)
            cells.append(f"{x.mean():.3f} ± {x.std(ddof=1) / math.sqrt(len(x)):.3f} (n={len(x)})" if len(x) else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pairs = [(a, b) for a, b in MCQ_PAIRS if "mcq" in results.get(a, {}) and "mcq" in results.get(b, {})]
    if pairs:
        lines += ["", "| difference | " + " | ".join(f"{v}: diff [95% CI] (McNemar p)" for v in MCQ_SETS.values())
                  + " |", "|---|---|---|"]
    for a, b in pairs:
        cells = []
        for s in MCQ_SETS:
            ca, cb = mcq_correct(results[a], s), mcq_correct(results[b], s)
            if set(ca) != set(cb):
                raise ValueError(f"{a} and {b} answered different {s} questions")
            ids = sorted(ca)
            va, vb = [ca[i] for i in ids], [cb[i] for i in ids]
            r = paired_bootstrap(va, vb)
            cells.append(f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] (p={mcnemar(va, vb)['p']:.2g})")
        lines.append(f"| {_mcq_label(a)} - {_mcq_label(b)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(results: dict) -> str:
    """Minutes per part, with its training and (arm eR) its candidate mining + loss caching in parentheses."""
    lines = ["| part | minutes (training part; mining + loss cache) |", "|---|---|"]
    for name, part in results.items():
        inner = "; ".join(f"{part[k] / 60:.1f}" for k in ("train_seconds", "mine_seconds") if part.get(k))
        lines.append(f"| {name} | {part.get('seconds', 0) / 60:.1f}{f' ({inner})' if inner else ''} |")
    return "\n".join(lines)


def plots(results: dict, img_dir: str) -> list[str]:
    """recall@k per arm with seed error bars; training curves; paired differences with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(img_dir, exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, s in zip(axes, SETS):
        arms = [a for a in RETRIEVER_ARMS if arm_runs(results, a)]
        w = 0.8 / max(len(arms), 1)
        for j, arm in enumerate(arms):
            runs = arm_runs(results, arm)
            m = np.array([[values(p, f"recall@{k} {s}")[1].mean() for k in (1, 7, 30)] for p in runs.values()])
            ax.bar(np.arange(3) + w * (j - (len(arms) - 1) / 2), m.mean(0), w,
                   yerr=m.std(0) if len(m) > 1 else None, label=ARMS[arm], capsize=3)
        ax.set_xticks(range(3), ["@1", "@7", "@30"])
        ax.set_title(SETS[s], fontsize=9)
    axes[0].set_ylabel("gold-evidence recall")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    written.append(os.path.join(img_dir, "evidence_recall.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    smooth = lambda x: np.convolve(x, np.ones(20) / 20, mode="valid") if len(x) >= 20 else np.asarray(x)  # noqa: E731
    for name, part in results.items():
        h = part.get("train_history") or []
        if h and "lm_loss" in h[0]:
            axes[0].plot(smooth([x["lm_loss"] for x in h]), label=name, lw=1)
        if h and "agreement" in h[0]:
            axes[1].plot(smooth([x["agreement"] for x in h]), label=name, lw=1)
    axes[0].set_title("generator answer NLL (training, 20-step mean)", fontsize=9)
    axes[1].set_title("retriever / LLM pairwise agreement (training, 20-step mean)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    written.append(os.path.join(img_dir, "evidence_training.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    rows = []
    for arm, base, which in PAIRS:
        for m in pair_measures(which):
            if m.startswith("recall@30"):
                continue
            r = paired(results, arm, base, m)
            if r is not None:
                rows.append((f"{arm} - {base}: {m}", r["pooled"]))
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1))
        y = np.arange(len(rows))[::-1]
        d = np.array([p["diff"] for _, p in rows])
        ax.errorbar(d, y, xerr=[d - [p["lo"] for _, p in rows], [p["hi"] for _, p in rows] - d], fmt="o", ms=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, [n for n, _ in rows], fontsize=7)
        ax.set_title("paired differences, pooled over seeds (95% bootstrap CI)", fontsize=9)
        fig.tight_layout()
        written.append(os.path.join(img_dir, "evidence_paired.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def markdown(results: dict, focus_of: dict[str, str] | None = None) -> str:
    """The README section; with focus_of (MedQuAD record id -> focus) also where each top passage comes from."""
    parts = ["### Gold-evidence recall (exact MaxSim over the whole corpus; mean ± s.d. over seeds)", "",
             recall_table(results), "",
             "### Recall@1 with its interval (seeds pooled per question; bootstrap over questions, 10,000 resamples)",
             "", interval_table(results), "",
             *(["### Where the top passage comes from (MedQuAD held-out sets; fractions of questions)", "",
                top1_table(results, focus_of), ""] if focus_of else []),
             "### Every measure per arm", "", summary_table(results), "",
             "### Paired differences (bootstrap over questions, 10,000 resamples; McNemar for 0/1 measures)", "",
             paired_table(results), "",
             *(["### Answers in the model's chat template (base generator, MedQuAD held-out focuses)", "",
                chat_table(results), ""] if arm_runs(results, "chat_frozen") else []),
             "### MCQ no-harm check (no retrieval)", "", mcq_table(results), "",
             *dev_sections(results),
             "### Time per part (2 CPU cores)", "", timing_table(results)]
    return "\n".join(parts)


def write_readme(readme: str, md: str) -> None:
    with open(readme) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(readme, "w") as f:
        f.write(head + BEGIN + "\n" + md + "\n" + END + tail)

"""The README's comparison tables, generated from the evaluation JSON files (never edited by hand).

    python launch/compare_table.py --eval_dir=workdir/compare/eval [--readme=README.md]

Prints the tables; with --readme, replaces the text between the compare-table markers in the README.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os

from jmlr_jax.data.sources import LETTERS
from jmlr_jax.eval.calibration import log_softmax, remove_letter_prior

ARMS = [  # (eval file, arm, documents in the prompt at evaluation)
    ("a_base", "(a) base, no training", "no"),
    ("a_base_rag", "(a) base, no training", "top-3"),
    ("b_finetune", "(b) fine-tuned without retrieval", "no"),
    ("c_rag", "(c) RAG fine-tuned, frozen retriever", "no"),
    ("c_rag_rag", "(c) RAG fine-tuned, frozen retriever", "top-3"),
    ("d_jmlr", "(d) JMLR joint training", "no"),
    ("d_jmlr_rag", "(d) JMLR joint training", "top-3"),
]
SETS = [("mmlu_med", "MMLU-Med"), ("pubmedqa_test", "PubMedQA test"), ("medmcqa_heldout", "MedMCQA held-out")]
BEGIN, END = "<!-- compare-table:begin -->", "<!-- compare-table:end -->"


def training_minutes(result: dict) -> str:
    ckpt = result["source"].get("checkpoint")
    if not ckpt:
        return "-"
    path = os.path.join(os.path.dirname(ckpt), "metrics.jsonl")
    if not os.path.isfile(path):
        return "?"
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return f"{sum(r['step_s'] if 'step_s' in r else r['data_s'] + r['device_s'] for r in rows) / 60:.1f}"


def letter_bias(result: dict, set_name: str) -> str:
    preds = [p for p in result.get("predictions", []) if p["set"] == set_name]
    if not preds:
        return "-"
    top, n = collections.Counter(p["pred_letter"] for p in preds).most_common(1)[0]
    gold = sum(p["answer"] == top for p in preds)
    cell = f"{top or 'none'} {n / len(preds):.0%} (gold {gold / len(preds):.0%})"
    if all("logliks" in p for p in preds):  # how sure the arm is: near 1/options means flat option scores
        chosen = sum(math.exp(log_softmax(p["logliks"]).max()) for p in preds) / len(preds)
        cell += f", p {chosen:.2f}"
    return cell


def prior_removed_accuracy(result: dict, set_name: str) -> float | None:
    """Accuracy after dividing out the set's average option distribution (needs loglik scores)."""
    preds = [p for p in result.get("predictions", []) if p["set"] == set_name]
    if not preds or any("logliks" not in p for p in preds):
        return None
    fixed = remove_letter_prior([p["logliks"] for p in preds])
    return sum(LETTERS[i] == p["answer"] for i, p in zip(fixed, preds)) / len(preds)


def tables(eval_dir: str) -> str:
    results = {}
    for name, _, _ in ARMS:
        path = os.path.join(eval_dir, f"{name}.json")
        if os.path.isfile(path):
            with open(path) as f:
                results[name] = json.load(f)
    if not results:
        raise SystemExit(f"no evaluation results in {eval_dir}")
    any_r = next(iter(results.values()))
    s = any_r["settings"]
    ns = {row["set"]: row["n"] for row in any_r["summary"] if row["subject"] == "all"}
    out = [f"Scoring: {s['eval']['mode']} (option log-likelihood); prompt blocks: documents {s['budgets']['doc']} "
           f"tokens each, question {s['budgets']['question']}, answer {s['budgets']['answer']}; questions per set: "
           + ", ".join(f"{label} {ns.get(key, '-')}" for key, label in SETS) + ". Accuracy ± standard error.", "",
           "| arm | docs at eval | " + " | ".join(label for _, label in SETS) + " | mean | train min* |",
           "|---|---|" + "---|" * (len(SETS) + 2)]
    for name, arm, docs in ARMS:
        r = results.get(name)
        if r is None:
            out.append(f"| {arm} | {docs} | " + " | ".join("not run" for _ in SETS) + " | | |")
            continue
        by_set = {row["set"]: row for row in r["summary"] if row["subject"] == "all"}
        cells = [f"{by_set[k]['accuracy']:.3f} ± {by_set[k]['se']:.3f}" if k in by_set else "-" for k, _ in SETS]
        mean = sum(by_set[k]["accuracy"] for k, _ in SETS if k in by_set) / max(sum(k in by_set for k, _ in SETS), 1)
        out.append(f"| {arm} | {docs} | " + " | ".join(cells) + f" | {mean:.3f} | {training_minutes(r)} |")
    out += ["", "*Sum of the logged step times of the training run. Other jobs shared the two CPU "
                "cores during some runs, so these are not a clean cost comparison; bench/jmlr_step.py is."]
    gold = [(label, results[n]["gold_recall"]) for n, label in (("a_base_rag", "base MiniLM retriever (before)"),
                                                                ("d_jmlr_rag", "JMLR-trained retriever (after)"))
            if n in results and "gold_recall" in results[n]]
    if gold:
        g0 = gold[0][1]
        ks = [k for k in g0 if k.startswith("top")]
        out += ["", f"Retrieval quality: PubMedQA test question -> its own abstract among the top-k passages "
                    f"(n = {g0['n']}; corpus = the training corpus plus the test abstracts, {g0['corpus_passages']} "
                    f"passages; question alone as the query).", "",
                "| retriever | " + " | ".join(ks) + " |", "|---|" + "---|" * len(ks)]
        out += [f"| {label} | " + " | ".join(f"{g[k]:.3f}" for k in ks) + " |" for label, g in gold]
    out += ["", "Answer-letter bias: the letter each arm predicts most often, its share of predictions, and that "
                "letter's share among the correct answers (a model that always picks one letter scores the latter), "
                "and p, the mean probability of the chosen option (softmax over the option log-likelihoods; "
                "1 / options when the scores are flat).", "",
            "| arm | docs at eval | " + " | ".join(label for _, label in SETS) + " |", "|---|---|" + "---|" * len(SETS)]
    for name, arm, docs in ARMS:
        if name in results:
            out.append(f"| {arm} | {docs} | " + " | ".join(letter_bias(results[name], k) for k, _ in SETS) + " |")
    debiased = {n: [prior_removed_accuracy(results[n], k) for k, _ in SETS] for n, _, _ in ARMS if n in results}
    if any(a is not None for accs in debiased.values() for a in accs):
        out += ["", "The same scores with the answer-letter prior removed (each question's option distribution divided "
                    "by the set's average one, no labels used; `jmlr_jax/eval/calibration.py`): what the scores know "
                    "beyond a preferred letter. A diagnostic, not the result.", "",
                "| arm | docs at eval | " + " | ".join(label for _, label in SETS) + " | mean |",
                "|---|---|" + "---|" * (len(SETS) + 1)]
        for name, arm, docs in ARMS:
            if name in debiased:
                accs = [a for a in debiased[name] if a is not None]
                out.append(f"| {arm} | {docs} | " + " | ".join("-" if a is None else f"{a:.3f}" for a in debiased[name])
                           + f" | {sum(accs) / max(len(accs), 1):.3f} |")
    subjects = sorted({row["subject"] for r in results.values() for row in r["summary"]
                       if row["set"] == "mmlu_med" and row["subject"] != "all"})
    if subjects:
        present = [(n, arm, d) for n, arm, d in ARMS if n in results]
        out += ["", "MMLU-Med by subject (accuracy, n):", "",
                "| subject | n | " + " | ".join(f"{arm.split(' ')[0]} {d}" for _, arm, d in present) + " |",
                "|---|---|" + "---|" * len(present)]
        for subj in subjects:
            rows = [next((x for x in results[n]["summary"] if x["set"] == "mmlu_med" and x["subject"] == subj), None)
                    for n, _, _ in present]
            n = next(x["n"] for x in rows if x)
            out.append(f"| {subj} | {n} | " + " | ".join(f"{x['accuracy']:.3f}" if x else "-" for x in rows) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval_dir", default="workdir/compare/eval")
    ap.add_argument("--readme", default="")
    args = ap.parse_args()
    text = tables(args.eval_dir)
    print(text)
    if args.readme:
        with open(args.readme) as f:
            readme = f.read()
        if BEGIN not in readme or END not in readme:
            raise SystemExit(f"{args.readme}: markers {BEGIN} / {END} not found")
        head, rest = readme.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(args.readme, "w") as f:
            f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()

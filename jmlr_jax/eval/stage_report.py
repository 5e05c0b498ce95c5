"""The seed pipelines' evaluation table, from the per-model JSON that `stages.evaluate_pipeline` writes (kept in
<workdir>/eval; the README's tables are committed in results/pipelines/<name>/ and regenerate from there)."""
from __future__ import annotations

import json
import os
from typing import Sequence

from jmlr_jax.errors import InputError
from jmlr_jax.eval.stage_eval import StageEvalConfig
from jmlr_jax.train import stages


def load_results(results_dir: str, models: Sequence[str]) -> list[dict]:
    """<results_dir>/<model>.json for each model, in that order (the base first), each compared with the base as
    `stages.evaluate_pipeline` does; a missing one is an error."""
    out = []
    for name in models:
        path = os.path.join(results_dir, f"{name}.json")
        if not os.path.isfile(path):
            raise InputError(f"{path}: no evaluation of model {name!r} (launch/pipeline_eval.py writes it)")
        with open(path) as f:
            out.append(json.load(f))
    stages.against_base(out)
    return out


def yes_share(results: list[dict]) -> str:
    """How often each model answers "yes" (option A) on PubMedQA, from the stored per-question predictions."""
    shares = []
    for r in results:
        preds = [p for p in r.get("mcq_predictions", []) if p["set"] == "pubmedqa_test"]
        if preds:
            shares.append(f"{r['model']} {sum(p['pred_letter'] == 'A' for p in preds)}/{len(preds)}")
    gold = [p for p in results[0].get("mcq_predictions", []) if p["set"] == "pubmedqa_test"]
    return (f"; PubMedQA answered \"yes\": {', '.join(shares)} (gold \"yes\": {sum(p['answer'] == 'A' for p in gold)})"
            if shares else "")


def table(results: list[dict]) -> str:
    """The README's per-stage table and its footnote."""
    mcq_sets = [r["set"] for r in results[0].get("mcq", [])]
    head = ("| model | held-out ppl | MedQuAD BLEU-1 unigram precision | ROUGE-1 | ROUGE-L | ROUGE-L - base [95% CI] | "
            "pairs: logp chosen - rejected | reward acc. vs reference | " + " | ".join(mcq_sets) + " |")
    lines = [head, "|" + "---|" * (8 + len(mcq_sets))]
    for r in results:
        p, g, pr = r["perplexity"], r["medquad"], r["pairs"]
        acc = f"{pr['reward_accuracy']:.3f} ± {pr['reward_accuracy_se']:.3f}" if r.get("reference") else "-"
        vs_base = r.get("mcq_vs_base", {})
        p_of = lambda m: f" (p {vs_base[m['set']]['p']:.2f})" if m["set"] in vs_base else ""  # noqa: E731
        mcq = [f"{m['accuracy']:.3f} ± {m['se']:.3f}{p_of(m)}" for m in r.get("mcq", [])]
        d = g.get("rougeL_vs_base")
        vs = f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d else "-"
        lines.append(f"| {r['model']} | {p['perplexity']:.2f} | {g['bleu1_precision']:.3f} | {g['rouge1']:.3f} | "
                     f"{g['rougeL']:.3f} ± {g['rougeL_se']:.3f} | {vs} | {pr['logp_margin']:.2f} | {acc} | "
                     + " | ".join(mcq) + " |")
    r0 = results[0]
    lines += ["", f"Held-out text: {r0['perplexity']['documents']} documents ({r0['perplexity']['tokens']} target "
                  f"tokens); MedQuAD: {r0['medquad']['n']} questions of held-out focuses, greedy, "
                  f"{StageEvalConfig().max_new_tokens} new tokens; pairs: {r0['pairs']['n']} held-out MedMCQA pairs "
                  f"({stages.PAIR_TEXT[r0['pairs'].get('kind', 'options')]}); "
                  "ROUGE-L - base: paired over the same questions, percentile bootstrap; "
                  "MCQ: option log-likelihood, fixed samples, accuracy ± standard error (p: McNemar against the "
                  "base over the same questions)" + yes_share(results) + ". BLEU-1 with its brevity "
                  "penalty (answers cut at the token budget, references hundreds of words): "
                  + ", ".join(f"{r['model']} {r['medquad']['bleu1']:.2g}" for r in results) + "."]
    return "\n".join(lines)

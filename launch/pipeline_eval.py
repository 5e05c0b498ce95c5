"""Evaluate a seed pipeline's base model and every finished stage: python launch/pipeline_eval.py
--gin_file=pipelines/qilin_med.gin [--gin.StageEvalConfig.medquad_questions=50]

Writes <workdir>/eval/<model>.json as each model finishes (`train.stages.evaluate_pipeline`: a rerun reads those
back, evaluates a retrained stage again and brings a stored result up to date part by part) and
<workdir>/eval/table.md.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GLOG_minloglevel", "1")

from jmlr_jax import config  # noqa: E402
from jmlr_jax.data.lm_data import LMDataConfig  # noqa: E402
from jmlr_jax.data.splits import DataConfig  # noqa: E402
from jmlr_jax.eval.stage_eval import StageEvalConfig  # noqa: E402
from jmlr_jax.train import stages  # noqa: E402


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


def main() -> None:
    pipe, data, lm, ecfg = stages.PipelineConfig(), DataConfig(), LMDataConfig(), StageEvalConfig()
    text = table(stages.evaluate_pipeline(pipe, data, lm, ecfg))
    with open(os.path.join(pipe.workdir, "eval", "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    config.run_main(main, doc=__doc__)

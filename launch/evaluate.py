"""Evaluate a trained run on medical multiple-choice QA from its workdir alone:

    python launch/evaluate.py --workdir=workdir/compare/d_jmlr [--gin_file=compare/eval.gin]
        [--gin.EvalConfig.retrieval=True] [--gin.EvalConfig.from_checkpoint=False]  (the run's base weights)

Model, retriever, template, budgets, data and corpus come from the run's config.json; EvalConfig and search
settings from gin. A binding that contradicts the run (e.g. another Budgets.doc) is an error.
Writes JSON + markdown under EvalConfig.output_dir (default <workdir>/eval).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import cli  # noqa: E402

if __name__ == "__main__":
    cli.evaluate()

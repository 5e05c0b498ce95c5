"""Evaluate on medical multiple-choice QA: python launch/evaluate.py --gin_file=<run>.gin --gin_file=compare/eval.gin

Pass the gin files the run trained with (they give model, retriever, template, budgets, corpus, workdir)
plus evaluation bindings, e.g. --gin.EvalConfig.retrieval=True --gin.EvalConfig.mode="'generate'"
--gin.EvalConfig.from_checkpoint=False (base weights). Writes JSON + markdown under <workdir>/eval.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GLOG_minloglevel", "1")

from jmlr_jax import config  # noqa: E402
from jmlr_jax.eval import harness  # noqa: E402

if __name__ == "__main__":
    config.run_main(lambda: harness.evaluate_main())

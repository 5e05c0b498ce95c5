"""Evaluate a seed pipeline's base model and every finished stage: python launch/pipeline_eval.py
--gin_file=pipelines/qilin_med.gin [--gin.StageEvalConfig.medquad_questions=50] [--report_only=DIR]

The same command as `jmlr-pipeline-eval` (jmlr_jax/cli.py, whose --help says more).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import cli  # noqa: E402

if __name__ == "__main__":
    cli.pipeline_eval()

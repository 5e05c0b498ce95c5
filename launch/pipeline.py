"""Run a seed pipeline (PMC-LLaMA or Qilin-Med): python launch/pipeline.py --gin_file=pipelines/qilin_med.gin

The same command as `jmlr-pipeline` (jmlr_jax/cli.py, whose --help says more): stages run in order, each from the
previous stage's final weights; finished stages are skipped and an interrupted one resumes; --stage=NAME runs only
that stage.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import cli  # noqa: E402

if __name__ == "__main__":
    cli.pipeline()

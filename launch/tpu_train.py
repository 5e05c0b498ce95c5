"""Train JMLR: python launch/tpu_train.py --gin_file=quickstart_cpu.gin [--gin.RunConfig.num_steps=10 ...]

Resumes from the latest checkpoint in the workdir (RunConfig.workdir, or --workdir=DIR); a workdir that holds
a run resumes from its saved config alone (`--workdir=DIR`, no gin file); bindings may then change only how long
and where it runs (steps, logging, checkpoints, mesh), anything else is an error. SIGTERM, or a first Ctrl-C,
saves a checkpoint after the current step and exits (a second Ctrl-C stops at once). Works the same on one CPU
and on a multi-host TPU pod (every host runs this command; a SIGTERM to any host stops all at one step).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import cli  # noqa: E402

if __name__ == "__main__":
    cli.train()

"""Train JMLR: python launch/tpu_train.py --gin_file=quickstart_cpu.gin [--gin.RunConfig.num_steps=10 ...]

Resumes from the latest checkpoint in the workdir (RunConfig.workdir, or --workdir=DIR); a workdir that holds
a run resumes from its saved config alone (`--workdir=DIR`, no gin file); bindings may then change only how long
and where it runs (steps, logging, checkpoints, mesh), anything else is an error. SIGTERM saves and exits.
Works the same on one CPU and on a multi-host TPU pod (every host runs this command).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GLOG_minloglevel", "1")

from jmlr_jax import config, experiment  # noqa: E402
from jmlr_jax.train import loop  # noqa: E402


def main(workdir: str = "") -> None:
    last = loop.train_main(experiment.for_training(workdir))
    if last:
        print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))


if __name__ == "__main__":
    config.run_main(main, flags=("workdir",))

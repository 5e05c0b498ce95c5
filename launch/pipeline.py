"""Run a seed pipeline (PMC-LLaMA or Qilin-Med): python launch/pipeline.py --gin_file=pipelines/qilin_med.gin

Stages run in order, each from the previous stage's final weights; finished stages are skipped and an
interrupted one resumes (jmlr_jax/train/stages.py; SIGTERM or a first Ctrl-C saves the current step first).
--stage=NAME runs only that stage (its previous stage must have finished). Each stage's result is a Hugging Face
directory <workdir>/<k>-<name>/final. The workdir may be a cloud path (gs://...): a rerun on another machine
continues from it.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GLOG_minloglevel", "1")

from jmlr_jax import config  # noqa: E402
from jmlr_jax.data.lm_data import LMDataConfig  # noqa: E402
from jmlr_jax.data.splits import DataConfig  # noqa: E402
from jmlr_jax.errors import StoppedEarly  # noqa: E402
from jmlr_jax.train import stages  # noqa: E402


def main(stage: str = "") -> None:
    pipe = stages.PipelineConfig()
    config.save_operative_config(pipe.workdir)  # a local or cloud (gs://) workdir
    for s in stages.run_pipeline(pipe, DataConfig(), LMDataConfig(), only=stage):
        print(json.dumps(s))
        if "stopped_at" in s:  # saved, not finished: exit 130 / 143, not 0
            raise StoppedEarly(s["reason"], s["stopped_at"])


if __name__ == "__main__":
    config.run_main(main, flags=("stage",), doc=__doc__)

"""Evaluate a seed pipeline's base model and every finished stage: python launch/pipeline_eval.py
--gin_file=pipelines/qilin_med.gin [--gin.StageEvalConfig.medquad_questions=50]

Writes <workdir>/eval/<model>.json as each model finishes (`train.stages.evaluate_pipeline`: a rerun reads those
back, evaluates a retrained stage again and brings a stored result up to date part by part) and
<workdir>/eval/table.md. With --report_only=DIR (e.g. results/pipelines/qilin_med, the README's committed runs):
only the table, from DIR/<model>.json.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GLOG_minloglevel", "1")

from jmlr_jax import config  # noqa: E402
from jmlr_jax.data.lm_data import LMDataConfig  # noqa: E402
from jmlr_jax.data.splits import DataConfig  # noqa: E402
from jmlr_jax.eval.stage_eval import StageEvalConfig  # noqa: E402
from jmlr_jax.eval.stage_report import load_results, table  # noqa: E402
from jmlr_jax.train import stages  # noqa: E402
from jmlr_jax.workdir import eval_dir, upload, write_text  # noqa: E402


def main(report_only: str = "") -> None:
    pipe = stages.PipelineConfig()
    if report_only:  # a directory of stored per-model JSON, e.g. results/pipelines/qilin_med
        print(table(load_results(report_only, ["base"] + [s.name for s in pipe.stages])))
        return
    data, lm, ecfg = DataConfig(), LMDataConfig(), StageEvalConfig()
    text = table(stages.evaluate_pipeline(pipe, data, lm, ecfg))
    write_text(os.path.join(eval_dir(pipe.workdir), "table.md"), text + "\n")
    upload(pipe.workdir)  # a cloud workdir: from its local mirror
    print(text)


if __name__ == "__main__":
    config.run_main(main, flags=("report_only",), doc=__doc__)

"""Console entry points (`jmlr-train`, `jmlr-evaluate`, `jmlr-build-index`, `jmlr-search`, `jmlr-answer`,
`jmlr-export`, `jmlr-pipeline`, `jmlr-pipeline-eval`), the same commands as launch/*.py. Gin files are looked up
as given, then in the configs that ship with the package (`--gin_file=quickstart_cpu.gin` works from any
directory)."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("GLOG_minloglevel", "1")  # ScaNN's C++ logging

from jmlr_jax import config, experiment, workdir as workdir_lib  # noqa: E402


def _train(workdir: str = "") -> None:
    from jmlr_jax.train import loop

    last = loop.train_main(experiment.for_training(workdir))
    if last:
        print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))


def _evaluate(workdir: str = "") -> None:
    from jmlr_jax.eval import harness

    if not workdir:
        raise config.ConfigError("--workdir=DIR (a training run's workdir) is required")
    harness.evaluate_main(experiment.for_evaluation(workdir), harness.EvalConfig())


def _build_index() -> None:
    from jmlr_jax.retrieval import launch

    config.save_operative_config(launch.index_main(experiment.from_gin()))


def _search() -> None:
    from jmlr_jax.retrieval import launch

    launch.search_main(experiment.from_gin())


def _export(workdir: str = "", out: str = "", step: str = "") -> None:
    from jmlr_jax.export import export_run

    if not workdir or not out:
        raise config.ConfigError("--workdir=DIR (a training run) and --out=DIR (the export) are required")
    if workdir_lib.is_remote(out):  # the writers are local-file ones: it would be a local directory named "gs:"
        raise config.ConfigError(f"--out={out}: export to a local directory, then copy it (gsutil cp -r)")
    w = export_run(workdir, out, int(step) if step else None)
    print(f"exported step {w.meta['step']} of {workdir} to {out}/generator, {out}/retriever, {out}/README.md")


def _pipeline(stage: str = "") -> None:
    import json

    from jmlr_jax.data.lm_data import LMDataConfig
    from jmlr_jax.data.splits import DataConfig
    from jmlr_jax.errors import StoppedEarly
    from jmlr_jax.train import stages

    pipe = stages.PipelineConfig()
    config.save_operative_config(pipe.workdir)  # a local or cloud (gs://) workdir
    for s in stages.run_pipeline(pipe, DataConfig(), LMDataConfig(), only=stage):
        print(json.dumps(s))
        if "stopped_at" in s:  # saved, not finished: exit 130 / 143, not 0
            raise StoppedEarly(s["reason"], s["stopped_at"])


def _pipeline_eval(report_only: str = "") -> None:
    from jmlr_jax.data.lm_data import LMDataConfig
    from jmlr_jax.data.splits import DataConfig
    from jmlr_jax.eval.stage_eval import StageEvalConfig
    from jmlr_jax.eval.stage_report import load_results, table
    from jmlr_jax.train import stages

    pipe = stages.PipelineConfig()
    if report_only:  # a directory of stored per-model JSON, e.g. results/pipelines/qilin_med
        print(table(load_results(report_only, ["base"] + [s.name for s in pipe.stages])))
        return
    text = table(stages.evaluate_pipeline(pipe, DataConfig(), LMDataConfig(), StageEvalConfig()))
    workdir_lib.write_text(os.path.join(workdir_lib.eval_dir(pipe.workdir), "table.md"), text + "\n")
    workdir_lib.upload(pipe.workdir)  # a cloud workdir: from its local mirror
    print(text)


def train() -> None:
    """Train JMLR: --gin_file=F [--gin.X=Y ...] [--workdir=DIR] (a workdir alone resumes its run)."""
    config.run_main(_train, flags=("workdir",), doc=train.__doc__)


def evaluate() -> None:
    """Evaluate a run on medical MCQ from its workdir: --workdir=DIR [--gin_file=compare/eval.gin]."""
    from jmlr_jax.eval import harness  # noqa: F401  (EvalConfig known to gin before it parses the command line)

    config.run_main(_evaluate, flags=("workdir",), doc=evaluate.__doc__)


def build_index() -> None:
    """Build the ColBERT token index: --gin_file=retrieval/minilm_index.gin."""
    from jmlr_jax.retrieval import launch  # noqa: F401  (index_main's bindings known before gin parses)

    config.run_main(_build_index, doc=build_index.__doc__)


def search() -> None:
    """Top passages for --gin.search_main.question from a built index."""
    from jmlr_jax.retrieval import launch  # noqa: F401  (search_main's bindings known before gin parses)

    config.run_main(_search, doc=search.__doc__)


def answer() -> None:
    """Answer a question with cited guideline passages (argparse flags; see --help)."""
    from jmlr_jax import rag

    rag.main(sys.argv[1:])


def export() -> None:
    """Export a trained run as Hugging Face directories: --workdir=DIR --out=DIR [--step=N]."""
    config.run_main(_export, flags=("workdir", "out", "step"), doc=export.__doc__)


def pipeline() -> None:
    """Run a seed pipeline (PMC-LLaMA or Qilin-Med): --gin_file=pipelines/qilin_med.gin [--stage=NAME].

    Stages run in order, each from the previous stage's final weights; finished stages are skipped and an
    interrupted one resumes (jmlr_jax/train/stages.py; SIGTERM or a first Ctrl-C saves the current step first).
    --stage=NAME runs only that stage (its previous stage must have finished). Each stage's result is a Hugging Face
    directory <workdir>/<k>-<name>/final. The workdir may be a cloud path (gs://...): a rerun on another machine
    continues from it.
    """
    from jmlr_jax.train import stages  # noqa: F401  (the stages' configurables known before gin parses)

    config.run_main(_pipeline, flags=("stage",), doc=pipeline.__doc__)


def pipeline_eval() -> None:
    """Evaluate a seed pipeline's base model and every finished stage: --gin_file=pipelines/qilin_med.gin
    [--gin.StageEvalConfig.medquad_questions=50] [--report_only=DIR].

    Writes <workdir>/eval/<model>.json as each model finishes (`train.stages.evaluate_pipeline`: a rerun reads those
    back, evaluates a retrained stage again and brings a stored result up to date part by part) and
    <workdir>/eval/table.md. With --report_only=DIR (e.g. results/pipelines/qilin_med, the README's committed runs):
    only the table, from DIR/<model>.json.
    """
    from jmlr_jax.train import stages  # noqa: F401  (its configurables and StageEvalConfig known before gin parses)

    config.run_main(_pipeline_eval, flags=("report_only",), doc=pipeline_eval.__doc__)

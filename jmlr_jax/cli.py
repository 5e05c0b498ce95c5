"""Console entry points (`jmlr-train`, `jmlr-evaluate`, `jmlr-build-index`, `jmlr-search`, `jmlr-answer`,
`jmlr-export`), the same commands as launch/*.py. Gin files are looked up as given, then in the configs that
ship with the package (`--gin_file=quickstart_cpu.gin` works from any directory)."""
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

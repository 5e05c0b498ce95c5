"""Hyper-parameter sweeps in the XManager style: an experiment, one job per point of a product of sweeps.

A sweep definition is a Python file in configs/sweeps/ that sets `SWEEP = Sweep(...)`:

    SWEEP = Sweep(name="rank", gin_files=("quickstart_cpu.gin",), fixed={"RunConfig.num_steps": 20},
                  points=product(sweep("JMLRConfig.rank_weight", [0.5, 1.0]), sweep("RunConfig.seed", [0, 1])))

Each point is a job: `launch/tpu_train.py` with the sweep's gin files, its fixed bindings and the point's
bindings, in its own workdir `<root>/<sweep>/<k>-<key=value,...>`. The local executor runs jobs one after
another; a job that finished (a `job.json` with its exit status 0) is skipped on a rerun, an interrupted one
resumes from its checkpoints (the training loop does that). `collect` gathers every job's last metrics into one
table and plots the curves.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Iterable, Sequence

import gin

from jmlr_jax import config
from jmlr_jax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_DIR = os.path.join(config.CONFIG_DIR, "sweeps")
JOB_FILE = "job.json"


def sweep(name: str, values: Iterable[Any]) -> list[dict[str, Any]]:
    """One hyper-parameter over its values: [{name: v}, ...] (XManager's hyper.sweep)."""
    values = list(values)
    if not values:
        raise InputError(f"sweep {name!r}: no values")
    return [{name: v} for v in values]


def product(*sweeps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cartesian product of sweeps, the last varying fastest (XManager's hyper.product)."""
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*sweeps)]


def zipit(*sweeps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sweeps of equal length taken together, point by point (XManager's hyper.zipit)."""
    if len({len(s) for s in sweeps}) > 1:
        raise InputError(f"zipit: sweeps of different lengths {[len(s) for s in sweeps]}")
    return [{k: v for d in combo for k, v in d.items()} for combo in zip(*sweeps)]


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    gin_files: tuple[str, ...]
    points: list[dict[str, Any]]
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    launcher: str = "launch/tpu_train.py"


@dataclasses.dataclass(frozen=True)
class Job:
    index: int
    params: dict[str, Any]
    workdir: str
    argv: tuple[str, ...]  # the command, python interpreter first

    def command(self) -> str:
        """The command as a shell line (`python` standing for this interpreter)."""
        return " ".join(["python", *(_quote(a) for a in self.argv[1:])])


def _quote(a: str) -> str:
    if re.fullmatch(r"[\w./=:,+-]+", a):
        return a
    if not re.search(r'["$`\\]', a):
        return f'"{a}"'
    return "'" + a.replace("'", "'\\''") + "'"


def _gin_value(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def job_name(index: int, params: dict[str, Any]) -> str:
    """`<k>-<short key>=<value>,...`: readable, filesystem-safe, unique by its index."""
    parts = [f"{k.split('.')[-1]}={v}" for k, v in params.items()]
    return re.sub(r"[^\w.=,+-]", "_", f"{index:03d}-" + ",".join(parts))[:120]


def load_sweep(name_or_path: str) -> Sweep:
    """A sweep definition by file path or by name under configs/sweeps/."""
    path = name_or_path if name_or_path.endswith(".py") else os.path.join(SWEEP_DIR, name_or_path + ".py")
    if not os.path.isfile(path):
        known = sorted(f[:-3] for f in os.listdir(SWEEP_DIR) if f.endswith(".py")) if os.path.isdir(SWEEP_DIR) else []
        raise InputError(f"sweep {name_or_path!r} not found (looked for {path}; known: {known})")
    spec = importlib.util.spec_from_file_location(f"jmlr_sweep_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    s = getattr(module, "SWEEP", None)
    if not isinstance(s, Sweep):
        raise InputError(f"{path}: defines no SWEEP = Sweep(...)")
    if not s.points:
        raise InputError(f"{path}: sweep {s.name!r} has no points")
    return s


def expand(s: Sweep, root: str, python: str = sys.executable) -> list[Job]:
    """One job per point: its workdir under root/<sweep name>/ and its full command line."""
    jobs = []
    for i, point in enumerate(s.points):
        clash = sorted(set(point) & set(s.fixed))
        if clash:
            raise InputError(f"sweep {s.name!r}: {clash} both fixed and swept")
        workdir = os.path.join(root, s.name, job_name(i, point))
        bindings = {**s.fixed, **point, "RunConfig.workdir": workdir}
        argv = (python, s.launcher, *(f"--gin_file={f}" for f in s.gin_files),
                *(f"--gin.{k}={_gin_value(v)}" for k, v in bindings.items()))
        jobs.append(Job(i, dict(point), workdir, argv))
    return jobs


def check_configs(s: Sweep, jobs: Sequence[Job]) -> None:
    """Every job's gin config parsed and built here, before any job runs: a misspelt binding or a value its
    configurable rejects is one error naming the job, not one failure per job after they were launched. Sweeps of
    `launch/tpu_train.py` (the default launcher) only: another launcher's configurables are its own."""
    if os.path.normpath(s.launcher) != os.path.normpath(Sweep.launcher):
        return
    from jmlr_jax import experiment

    try:
        for job in jobs:
            files, bindings, _ = config.split_gin_args(job.argv[2:])
            try:
                config.parse(files, bindings)
                experiment.from_gin()
            except config.ConfigError as e:
                raise InputError(f"sweep {s.name!r}, job {os.path.basename(job.workdir)}: {e}") from None
    finally:
        gin.clear_config()


def finished(job: Job) -> bool:
    try:
        with open(os.path.join(job.workdir, JOB_FILE)) as f:
            return json.load(f).get("returncode") == 0
    except (OSError, json.JSONDecodeError):
        return False


def _wait(proc: subprocess.Popen, job: Job, log) -> tuple[int, bool]:
    """The job's exit code, and whether Ctrl-C stopped the sweep. The job got the Ctrl-C too (same terminal): it
    saves a checkpoint after its current step and exits, which may take a while; subprocess.run would kill it
    0.25 s later. A second Ctrl-C stops it at once."""
    try:
        return proc.wait(), False
    except KeyboardInterrupt:
        log(f"[{job.index}] Ctrl-C: waiting for the job to save a checkpoint (Ctrl-C again to stop it at once)")
        try:
            return proc.wait(), True
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise


def run_local(jobs: Sequence[Job], log=print) -> list[dict[str, Any]]:
    """Runs the jobs one after another on this machine (each its own process and workdir); skips finished
    ones; a failed job is reported and the others still run. Ctrl-C stops the sweep once the running job has
    saved (its status then says `"interrupted": true`). Returns one status dict per job run or skipped."""
    out = []
    for job in jobs:
        if finished(job):
            log(f"[{job.index}] done already: {job.workdir}")
            out.append({"index": job.index, "returncode": 0, "skipped": True})
            continue
        log(f"[{job.index}] {job.command()}")
        os.makedirs(job.workdir, exist_ok=True)
        t0 = time.time()
        with open(os.path.join(job.workdir, "job.log"), "a") as logf:
            rc, interrupted = _wait(subprocess.Popen(job.argv, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT),
                                    job, log)
        status = {"index": job.index, "params": job.params, "command": job.command(), "returncode": rc,
                  "seconds": round(time.time() - t0, 1)}
        if interrupted:
            status["interrupted"] = True
        with open(os.path.join(job.workdir, JOB_FILE), "w") as f:
            json.dump(status, f, indent=1)
        log(f"[{job.index}] exit {rc} after {status['seconds']:.0f} s" + ("" if rc == 0 else f"; see {job.workdir}/job.log"))
        out.append(status)
        if interrupted:
            log("sweep stopped by Ctrl-C; run the same command again to resume it")
            break
    return out


def _metrics(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def collect(jobs: Sequence[Job], keys: Sequence[str] = ("loss", "lm_loss", "rank_loss", "agreement")
            ) -> list[dict[str, Any]]:
    """One row per job: its swept values, status and last logged metrics (the mean of the last 5 steps)."""
    rows = []
    for job in jobs:
        lines = _metrics(job.workdir)
        tail = lines[-5:]
        row = {"job": os.path.basename(job.workdir), **job.params, "finished": finished(job),
               "steps": lines[-1]["step"] if lines else 0}
        for k in keys:
            vals = [x[k] for x in tail if k in x]
            row[k] = sum(vals) / len(vals) if vals else None
        rows.append(row)
    return rows


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    cols = list(rows[0])
    fmt = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]) + "\n"


def plot(jobs: Sequence[Job], path: str, keys: Sequence[str] = ("loss", "agreement")) -> str:
    """Curves of `keys` against step, one line per job (matplotlib, written as PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for job in jobs:
            pts = [(x["step"], x[k]) for x in _metrics(job.workdir) if k in x]
            if pts:
                ax.plot(*zip(*pts), label=",".join(f"{n.split('.')[-1]}={v}" for n, v in job.params.items()))
        ax.set_xlabel("step")
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Sweeps: expansion, workdir naming, the local executor (failures, resume of a half-finished sweep), the table."""
import json
import pathlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jmlr_jax import sweeps
from jmlr_jax.errors import InputError

# Stands in for launch/tpu_train.py: writes metrics.jsonl into its workdir; fails while FAIL_FLAG exists for lr=0.1.
FAKE = textwrap.dedent("""
    import json, os, sys
    args = dict(a[len("--gin."):].split("=", 1) for a in sys.argv[1:] if a.startswith("--gin."))
    workdir = args["RunConfig.workdir"].strip("'")
    with open(os.path.join(os.path.dirname(__file__), "calls.txt"), "a") as f:
        f.write(workdir + "\\n")
    if args["OptimConfig.llm_lr"] == "0.1" and os.path.exists(os.path.join(os.path.dirname(__file__), "FAIL_FLAG")):
        sys.exit(3)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step in range(1, 4):
            f.write(json.dumps({"step": step, "loss": float(args["OptimConfig.llm_lr"]) * step + int(args["RunConfig.seed"])}) + "\\n")
""")


def test_product_and_zipit():
    pts = sweeps.product(sweeps.sweep("a", [1, 2]), sweeps.sweep("b", ["x", "y", "z"]))
    assert len(pts) == 6 and pts[0] == {"a": 1, "b": "x"} and pts[1] == {"a": 1, "b": "y"}
    assert sweeps.zipit(sweeps.sweep("a", [1, 2]), sweeps.sweep("b", [3, 4])) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(InputError, match="different lengths"):
        sweeps.zipit(sweeps.sweep("a", [1]), sweeps.sweep("b", [3, 4]))
    with pytest.raises(InputError, match="no values"):
        sweeps.sweep("a", [])


def test_shipped_sweeps_expand(tmp_path):
    for name, n in (("jmlr_rank", 24), ("quickstart_4", 4)):
        s = sweeps.load_sweep(name)
        jobs = sweeps.expand(s, str(tmp_path))
        sweeps.check_configs(s, jobs)  # every job's gin config builds
        assert len(jobs) == n and len({j.workdir for j in jobs}) == n
        for j in jobs:
            assert j.workdir.startswith(os.path.join(str(tmp_path), name) + os.sep)
            assert f"--gin.RunConfig.workdir={j.workdir!r}" in j.argv and "--gin_file=quickstart_cpu.gin" in j.argv
            assert all(any(a.startswith(f"--gin.{k}=") for a in j.argv) for k in j.params)
    assert os.path.basename(jobs[1].workdir) == "001-rank_weight=0.5,retriever_lr=0.0003"
    with pytest.raises(InputError, match="not found"):
        sweeps.load_sweep("no_such_sweep")
    clash = sweeps.Sweep("c", ("x.gin",), sweeps.sweep("RunConfig.seed", [0]), fixed={"RunConfig.seed": 1})
    with pytest.raises(InputError, match="both fixed and swept"):
        sweeps.expand(clash, str(tmp_path))
    # a binding no job could run with: named with its job before any job is launched
    typo = sweeps.Sweep("t", ("quickstart_cpu.gin",), sweeps.product(sweeps.sweep("RunConfig.seed", [0, 1]),
                                                                      sweeps.sweep("OptimConfig.llm_lr", [1e-5, -1.0])))
    with pytest.raises(InputError, match=r"^sweep 't', job 001-seed=0,llm_lr=-1.0: OptimConfig: llm_lr=-1.0 must be"):
        sweeps.check_configs(typo, sweeps.expand(typo, str(tmp_path)))


def test_local_executor_resumes_a_half_finished_sweep(tmp_path):
    (tmp_path / "fake_train.py").write_text(FAKE)
    (tmp_path / "FAIL_FLAG").touch()
    s = sweeps.Sweep("t", ("quickstart_cpu.gin",), launcher=str(tmp_path / "fake_train.py"),
                     points=sweeps.product(sweeps.sweep("OptimConfig.llm_lr", [0.1, 0.2]), sweeps.sweep("RunConfig.seed", [0, 1])))
    jobs = sweeps.expand(s, str(tmp_path / "root"))
    first = sweeps.run_local(jobs, log=lambda *_: None)
    assert [r["returncode"] for r in first] == [3, 3, 0, 0]
    assert len((tmp_path / "calls.txt").read_text().split()) == 4

    os.remove(tmp_path / "FAIL_FLAG")
    second = sweeps.run_local(jobs, log=lambda *_: None)
    calls = (tmp_path / "calls.txt").read_text().split()
    assert len(calls) == 6 and calls[4:] == [jobs[0].workdir, jobs[1].workdir]  # only the failed ones ran again
    assert [r.get("skipped", False) for r in second] == [False, False, True, True]
    assert all(json.loads(pathlib.Path(j.workdir, sweeps.JOB_FILE).read_text())["returncode"] == 0 for j in jobs)

    rows = sweeps.collect(jobs, keys=("loss",))
    assert [r["steps"] for r in rows] == [3, 3, 3, 3] and all(r["finished"] for r in rows)
    assert rows[3]["loss"] == pytest.approx((0.2 * 1 + 0.2 * 2 + 0.2 * 3) / 3 + 1)  # mean of the logged steps
    table = sweeps.table_markdown(rows)
    assert table.count("\n") == 6 and "| OptimConfig.llm_lr | RunConfig.seed |" in table
    png = sweeps.plot(jobs, str(tmp_path / "curves.png"), keys=("loss",))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# Stands in for a training job that gets the terminal's Ctrl-C: it saves (a second later) and exits 130.
SAVING = textwrap.dedent("""
    import os, signal, sys, time
    here = os.path.dirname(__file__)
    if os.path.exists(os.path.join(here, "saved")):
        sys.exit(0)  # resumed from its checkpoint: finishes
    def on_sigint(*_):
        time.sleep(1.0)
        open(os.path.join(here, "saved"), "w").close()
        sys.exit(130)
    signal.signal(signal.SIGINT, on_sigint)
    with open(os.path.join(here, "started.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(here, "started.tmp"), os.path.join(here, "started"))
    time.sleep(60)
    sys.exit(0)
""")


def test_ctrl_c_lets_the_running_job_save_and_stops_the_sweep(tmp_path):
    """Ctrl-C reaches the executor and its job (one terminal): the executor waits for the job to save (it had
    killed it 0.25 s later), records it as not finished and starts no other job; the same command resumes."""
    (tmp_path / "fake_train.py").write_text(SAVING)
    s = sweeps.Sweep("t", ("quickstart_cpu.gin",), launcher=str(tmp_path / "fake_train.py"),
                     points=sweeps.sweep("RunConfig.seed", [0, 1]))
    jobs = sweeps.expand(s, str(tmp_path / "root"))

    def ctrl_c():
        while not (tmp_path / "started").exists():
            time.sleep(0.05)
        os.kill(int((tmp_path / "started").read_text()), signal.SIGINT)  # as the terminal does: the job,
        os.kill(os.getpid(), signal.SIGINT)  # and the executor

    threading.Thread(target=ctrl_c, daemon=True).start()
    said = []
    try:
        out = sweeps.run_local(jobs, log=said.append)
    except KeyboardInterrupt:
        pytest.fail("the executor did not wait for its job")
    assert [(r["index"], r["returncode"], r.get("interrupted")) for r in out] == [(0, 130, True)]
    assert (tmp_path / "saved").exists() and not sweeps.finished(jobs[0]) and not os.path.exists(jobs[1].workdir)
    assert any("waiting for the job to save" in x for x in said) and "resume" in said[-1]
    out = sweeps.run_local(jobs, log=said.append)
    assert [r["returncode"] for r in out] == [0, 0] and all(sweeps.finished(j) for j in jobs)


def test_launcher_names_a_missing_sweep_in_one_line(tmp_path):
    """`launch/xm_launch.py --sweep=<unknown>`: exit 2 and one line naming the sweep and the known ones; a sweep
    file without SWEEP or without points, a cloud --root (the local executor's): one line each."""
    launcher = os.path.join(os.path.dirname(__file__), "..", "launch", "xm_launch.py")
    r = subprocess.run([sys.executable, launcher, "--sweep=no_such_sweep", f"--root={tmp_path}", "--dry_run"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sweep 'no_such_sweep' not found"), lines
    assert "quickstart_4" in lines[0]
    for text, says in (("X = 1\n", "defines no SWEEP"),
                       ("from jmlr_jax import sweeps\nSWEEP = sweeps.Sweep('e', ('x.gin',), [])\n", "has no points")):
        bad = tmp_path / "bad.py"
        bad.write_text(text)
        r = subprocess.run([sys.executable, launcher, f"--sweep={bad}", f"--root={tmp_path}", "--dry_run"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    r = subprocess.run([sys.executable, launcher, "--sweep=quickstart_4", "--root=gs://b/sweeps", "--dry_run"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "give a local --root" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "gs:")

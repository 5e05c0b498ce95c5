"""Two real processes (two "hosts", one CPU device each, collectives over gloo) train as one run, with the
parameters FSDP-sharded across them: the JMLR loop, an SFT -> DPO pipeline and evaluation on its model give what
one process gives, a CPT stage trains on each host's own documents, what one host suffices for is written once
(metrics, exports), and resuming with another number of hosts is a clear error."""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import jax
import numpy as np
import pytest

from jmlr_jax import checkpoint
from jmlr_jax.convert import load_preset
from jmlr_jax.data import lm_data
from jmlr_jax.data.splits import DataConfig
from jmlr_jax.train import stages
from tests.eval.test_on_mesh import assert_same, measures
from tests.helpers import logged
from tests.train.test_loop import assets, params_of, trainer  # noqa: F401  (module fixture, reused)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args: str, command: Sequence[str] = (), cwds: Sequence[str] = (ROOT, ROOT), expect: int = 0,
           timeout: float = 600) -> list[str]:
    """`python -m tests.multiprocess_worker ARGS` (or `python COMMAND`) as processes 0 and 1 of one run, each in
    its directory of `cwds`; both must exit with `expect` (-> their output). A process that fails unexpectedly
    stops the other (which would wait for it at the next collective)."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    # The suite's compile flags (tests/conftest.py), with one device per process.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               XLA_FLAGS=" ".join(["--xla_force_host_platform_device_count=1", *flags]))
    argv = [sys.executable, *(command or ("-m", "tests.multiprocess_worker", *args))]
    with tempfile.TemporaryDirectory() as d:
        logs = [open(os.path.join(d, f"{i}.log"), "w+") for i in range(2)]
        procs = [subprocess.Popen(argv, cwd=cwds[i], env=dict(env, JAX_PROCESS_ID=str(i)), stdout=logs[i],
                                  stderr=subprocess.STDOUT)
                 for i in range(2)]
        end = time.time() + timeout
        while any(p.poll() is None for p in procs) and time.time() < end:
            if any(p.poll() not in (None, expect) for p in procs):
                break
            time.sleep(0.5)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        outs = []
        for log in logs:
            log.seek(0)
            outs.append(log.read())
            log.close()
    codes = [p.returncode for p in procs]
    # both processes' output: the one that failed first is often the one still waiting (killed, or timed out
    # at jax's shutdown barrier for the other)
    assert codes == [expect] * 2, f"exit codes {codes}, not {expect}:\n" + "\n".join(
        f"--- process {i} ---\n{out[-12000:]}" for i, out in enumerate(outs))
    return outs


def run_pipeline(workdir: str, llm: str, data_dir: str, mesh_shape=(1, 1, 1)) -> stages.PipelineConfig:
    """SFT (LoRA) -> DPO (full), two steps each, on the SFT and pair files under data_dir. (CPT packs each host's
    own documents, so its rows differ with the host count by design; SFT and DPO rows are the global order's.)"""
    pipe = stages.PipelineConfig(
        name="mp", workdir=workdir, llm=llm, progress=False, checkpoint_every=1, mesh_shape=tuple(mesh_shape), stages=(
            stages.StageConfig("sft", "sft", num_steps=2, batch_size=2, lr=1e-3, lora_rank=2),
            stages.StageConfig("dpo", "dpo", num_steps=2, batch_size=2, lr=1e-3, pairs="files")))
    lm = lm_data.LMDataConfig(seq_len=64, sft_files=("sft.jsonl",), pair_files=("pairs.jsonl",), builtin_sft=False)
    stages.run_pipeline(pipe, DataConfig(data_dir=data_dir), lm)
    return pipe


def run_cpt(workdir: str, llm: str, data_dir: str, mesh_shape=(1, 1, 1)) -> stages.PipelineConfig:
    """CPT alone, two steps of 4 packed rows, on text.jsonl under data_dir: each host packs its own documents."""
    pipe = stages.PipelineConfig(name="cpt", workdir=workdir, llm=llm, progress=False, checkpoint_every=1,
                                 mesh_shape=tuple(mesh_shape),
                                 stages=(stages.StageConfig("cpt", "cpt", num_steps=2, batch_size=4, lr=1e-3),))
    lm = lm_data.LMDataConfig(seq_len=64, guidelines="", medquad="", pubmedqa="", text_files=("text.jsonl",),
                              text_heldout_fraction=0.0)
    stages.run_pipeline(pipe, DataConfig(data_dir=data_dir), lm)
    return pipe


def test_two_hosts_train_the_jmlr_loop_as_one(assets, tmp_path):  # noqa: F811
    one = trainer(assets, tmp_path / "one", **{"RunConfig.num_steps": "4"})
    one.run()
    one.close()
    # A preemption notice (SIGTERM) reaches host 1 alone, during step 2: both hosts save the same step and exit
    # (a host saving alone would wait for the other in the checkpoint's collectives, the other in the step's).
    logs = launch("jmlr", str(tmp_path / "two"), *assets, "4", "1")
    said = [re.findall(r"preemption \(SIGTERM on some host\): saved checkpoint (\d+), exiting", log) for log in logs]
    assert said[0] == said[1] and len(said[0]) == 1 and 2 <= int(said[0][0]) < 4, said
    stopped = int(said[0][0])
    assert sorted(map(int, os.listdir(tmp_path / "two" / "checkpoints"))) == sorted({2, stopped})
    launch("jmlr", str(tmp_path / "two"), *assets, "4")  # the same command again: resumes to step 4
    losses = {n: logged(tmp_path / n) for n in ("one", "two")}
    assert [x["step"] for x in losses["two"]] == [1, 2, 3, 4]  # process 0 alone writes the metrics
    np.testing.assert_allclose([x["loss"] for x in losses["two"]], [x["loss"] for x in losses["one"]], rtol=2e-5)
    with np.load(tmp_path / "two" / "params.npz") as f:  # gathered from both hosts by the worker's process 0
        two = [f[f"arr_{i}"] for i in range(len(f.files))]
    # The tiny model's passages give near-equal answer losses, so the rank loss orders them by rounding: the
    # retriever (and then the passages fed) may differ by an Adam step (lr 1e-3) here and there. A shard gathered
    # into the wrong place would differ by the weights' own size (~0.05).
    for a, b in zip(params_of(one), two, strict=True):
        np.testing.assert_allclose(a, b, rtol=0.1, atol=1e-3)
    # each host saved its own data position: one process resuming it is told so, and nothing is moved aside
    with pytest.raises(checkpoint.HostCountError, match="saved by 2 processes .hosts.*resume it with 2"):
        trainer(assets, tmp_path / "two", **{"RunConfig.num_steps": "5"})
    assert sorted(map(int, os.listdir(tmp_path / "two" / "checkpoints"))) == sorted({2, stopped, 4})


def test_two_hosts_run_a_pipeline_as_one(assets, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    sft = [{"instruction": f"What treats condition {i}?", "input": "", "output": f"Drug {i} treats it."}
           for i in range(8)]
    (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    pairs = [{"prompt": f"What treats condition {i}?", "chosen": f"Drug {i}.", "rejected": f"Drug {i + 1}."}
             for i in range(8)]
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    llm = assets[0]
    one = run_pipeline(str(tmp_path / "one"), llm, str(data))
    launch("pipeline", str(tmp_path / "two"), llm, str(data))
    two = stages.PipelineConfig(workdir=str(tmp_path / "two"), stages=one.stages)
    for i in range(2):
        assert os.path.isfile(os.path.join(two.stage_dir(i), "done.json"))
        lines = open(os.path.join(two.stage_dir(i), "metrics.jsonl")).read().splitlines()
        assert [json.loads(x)["step"] for x in lines] == [1, 2]
        a = jax.tree_util.tree_leaves(load_preset(os.path.join(one.stage_dir(i), "final"))[1])
        b = jax.tree_util.tree_leaves(load_preset(os.path.join(two.stage_dir(i), "final"))[1])
        # Each stage's export is what one process exports: SFT within 6e-8, DPO 1.8e-5 (2026-12-04), but a fresh-clone
        # run on 2026-12-05 had one weight of 12,288 off by 1.8e-4. Adam normalises each gradient, so a weight whose
        # gradient is near 0 moves by up to lr (1e-3) a step in a direction the hosts' summation order can flip: a
        # rare outlier within 2 steps x lr, the rest within 1e-4. A misplaced or missing shard moves most weights
        # (~0.1); gradients of one host only flip the step of a large fraction of them.
        for x, y in zip(a, b, strict=True):
            diff = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
            off = int((diff > 1e-4 + 1e-4 * np.abs(y)).sum())
            assert off <= max(1, diff.size // 1000) and diff.max() <= 2e-3 + 1e-6, (i, x.shape, off, diff.max())
    assert not [f for f in os.listdir(two.stage_dir(1)) if f.endswith(".tmp")]

    # evaluation on both hosts (the DPO model split across them, each batch's rows too): what one process gives
    final = os.path.join(two.stage_dir(1), "final")
    launch("evaluate", final, str(tmp_path / "eval.json"))
    cfg, params, tok = load_preset(final)
    assert_same(measures(cfg, params, params, tok), json.loads((tmp_path / "eval.json").read_text()))

    # CPT: each host tokenizes and packs only its half of the documents (rows differ from one host's by design)
    (data / "text.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"Condition {i} is treated with "
                                                        f"drug {i}. " * (1 + i % 3)}) + "\n" for i in range(12)))
    launch("cpt", str(tmp_path / "cpt"), llm, str(data))
    cpt = stages.PipelineConfig(workdir=str(tmp_path / "cpt"), stages=(stages.StageConfig("cpt", "cpt"),))
    lines = logged(cpt.stage_dir(0))
    assert [x["step"] for x in lines] == [1, 2] and all(np.isfinite(x["loss"]) for x in lines)
    assert os.path.isfile(os.path.join(cpt.stage_dir(0), "final", "model.safetensors"))


def test_hosts_that_do_not_share_a_local_workdir_are_told_so(tmp_path):
    """Each host's own disk (a local workdir on a pod's VMs; here each process's own working directory, the same
    relative path): the launchers say so on every host, before anything is trained or restored. (The other tests
    here pass a directory both processes share, which the same check accepts.)"""
    disks = [str(tmp_path / f"host{i}") for i in range(2)]
    for d in disks:
        os.makedirs(d)
    for launcher, args, what in (("evaluate.py", ["--workdir=run"], "workdir"),
                                 ("tpu_train.py", ["--gin_file=quickstart_cpu.gin", "--gin.RunConfig.workdir='run'"],
                                  "RunConfig.workdir")):
        logs = launch(command=[os.path.join(ROOT, "launch", launcher), *args], cwds=disks, expect=2)
        for log in logs:
            assert f"error: {what} 'run' is not one directory shared by the 2 processes (process(es) [0, 1] do not " \
                   "see" in log, log[-2000:]

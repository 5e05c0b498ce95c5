"""Checkpoint faults without a model: a process killed during a save, damaged and incomplete checkpoints."""
import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jmlr_jax.checkpoint import CheckpointError, Checkpointer

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _state(step: int) -> dict:
    # many arrays: an aborted restore leaves many reads in flight
    return {"w": np.full((2048, 2048), float(step), np.float32), "step": np.int32(step),
            "layers": [np.full((64, 64), float(step), np.float32) for _ in range(32)]}


def _abstract():
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _state(0))


def test_killed_during_save_keeps_previous_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint import _state
        from jmlr_jax.checkpoint import Checkpointer
        c = Checkpointer({str(tmp_path)!r}, async_save=True)  # the accelerators' default
        c.save(1, _state(1), {{"i": 1}}, {{"step": 1}})
        c.wait()
        c.save(2, _state(2), {{"i": 2}}, {{"step": 2}})  # asynchronous: still writing when the process dies
        os._exit(9)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 9, out.stderr[-2000:]
    c = Checkpointer(str(tmp_path))
    state, data, meta = c.restore(_abstract())  # the newest complete checkpoint: 1, or 2 if it finished in time
    step = meta["step"]
    assert step in (1, 2) and data == {"i": step} and np.all(np.asarray(state["w"]) == step)
    c.save(3, _state(3), {"i": 3}, {"step": 3})  # the run goes on in the same directory
    c.close()
    assert Checkpointer(str(tmp_path)).restore(_abstract())[2]["step"] == 3


@pytest.mark.parametrize("async_save", [None, True])
def test_saves_are_synchronous_on_cpu_unless_asked(tmp_path, async_save):
    c = Checkpointer(str(tmp_path), async_save=async_save)
    assert c.async_save is bool(async_save)  # None: the backend decides, and this is a CPU
    c.save(1, _state(1), {"i": 1}, {"step": 1})
    if not async_save:  # complete on disk when save returns: another process could restore it now
        state, data, meta = Checkpointer(str(tmp_path)).restore(_abstract())
        assert meta["step"] == 1 and data == {"i": 1} and np.all(np.asarray(state["w"]) == 1)
    c.save(2, _state(2), {"i": 2}, {"step": 2})
    c.close()
    state, data, meta = Checkpointer(str(tmp_path)).restore(_abstract())
    assert meta["step"] == 2 and data == {"i": 2} and np.all(np.asarray(state["layers"][5]) == 2)
    with pytest.raises(CheckpointError, match=r"no checkpoint 7; saved: \[1, 2\]"):  # e.g. export --step=7
        Checkpointer(str(tmp_path)).restore(_abstract(), step=7)


def test_unreadable_checkpoints(tmp_path, capfd, monkeypatch):
    seen = []  # what reaches the process's unraisablehook (pytest's own one formats tracebacks in tensorstore threads)
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    c = Checkpointer(str(tmp_path))
    for s in (1, 2):
        c.save(s, _state(s), {"i": s}, {"step": s})
    c.close()
    os.remove(tmp_path / "2" / "meta" / "metadata")  # partially written latest: no metadata
    c = Checkpointer(str(tmp_path))
    _, _, meta = c.restore(_abstract())
    assert meta["step"] == 1 and "checkpoint 2 is" in capfd.readouterr().err
    assert c.latest_step() == 1 and any(d.startswith("corrupt-2-") for d in os.listdir(tmp_path))
    c.save(2, _state(2), {"i": 2}, {"step": 2})  # the resumed run saves step 2 again, where the damaged one was
    c.wait()
    assert c.restore(_abstract())[2]["step"] == 2
    c.close()
    os.remove(tmp_path / "2" / "meta" / "metadata")
    for name in os.listdir(tmp_path / "1" / "state"):  # nothing readable left: an error, nothing moved
        if not name.startswith("_"):
            p = tmp_path / "1" / "state" / name
            if p.is_dir():
                for root, _, files in os.walk(p):
                    for f in files:
                        open(os.path.join(root, f), "wb").close()
    c = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError, match="checkpoint 2 is"):
        c.restore(_abstract())
    assert os.path.isdir(tmp_path / "1") and os.path.isdir(tmp_path / "2")
    time.sleep(1.0)  # reads the aborted restores left in flight finish into orbax's closed event loop: dropped
    assert not [u for u in seen if "Event loop is closed" in str(u.exc_value)]
    sys.unraisablehook(SimpleNamespace(object="other", exc_value=ValueError("x")))
    assert [u.object for u in seen] == ["other"]  # anything else goes on to the previous hook
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Checkpointer(str(tmp_path / "empty")).restore(_abstract())

"""A comparison arm's training on the shared loop: stopped mid-part, it resumes from its checkpoint to the same
weights and step history as a run that was never stopped; finished, it is reused by a rerun of its part until the
part is written; a checkpoint or result of another configuration is refused."""
import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jmlr_jax.checkpoint import CheckpointError
from jmlr_jax.compare import arm_loop
from jmlr_jax.compare.evidence import Comparison, load_tree
from jmlr_jax.errors import StoppedEarly
from tests.compare.test_evidence_driver import data_dir, tiny  # noqa: F401 (fixture)
from tests.helpers import save_tiny_llama_dir


def steps_run(monkeypatch, stop_after: int = 0) -> list[int]:
    """Counts the steps every ArmLoop built from now on runs; with stop_after, each stops (as after a SIGTERM)
    once it has run that many."""
    ran = [0]
    init = arm_loop.ArmLoop.__init__

    def counted(self, *args, **kw):
        init(self, *args, **kw)
        step_fn = self.step_fn

        def step(state, batch):
            ran[0] += 1
            self._stop = ran[0] == stop_after
            return step_fn(state, batch)

        self.step_fn = step

    monkeypatch.setattr(arm_loop.ArmLoop, "__init__", counted)
    return ran


def test_a_stopped_arm_resumes_to_the_weights_of_an_uninterrupted_one(data_dir, tmp_path, monkeypatch,  # noqa: F811
                                                                      minilm):
    cfg = tiny(data_dir, tmp_path, llm=save_tiny_llama_dir(str(tmp_path / "llm")), doc_tokens=32, question_tokens=24,
               answer_tokens=16, num_candidates=4, num_sampled=2, llm_lr=1e-3, retriever_lr=1e-3, rank_loss="kl",
               checkpoint_every=2)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    root = os.path.join(cfg.work_dir, "training")
    straight, straight_history = comp.train("d", 0)  # both models trained; 11 questions, one step each
    [run] = os.listdir(root)  # what it keeps once it ends: the trained trees and the history, no checkpoint
    assert len(straight_history) == 11 and sorted(os.listdir(os.path.join(root, run))) == sorted(
        [arm_loop.TRAINED, arm_loop.HISTORY])
    ran = steps_run(monkeypatch)
    again, again_history = comp.train("d", 0)  # the part run again (interrupted later): reused, not trained
    assert ran[0] == 0 and again_history == straight_history and comp.resumed_from == 11
    assert_bitwise(straight, again)
    monkeypatch.undo()
    shutil.rmtree(os.path.join(root, run))  # as the driver does once the part's JSON is written (below)

    steps_run(monkeypatch, stop_after=3)
    with pytest.raises(StoppedEarly, match="stopped at step 3"):
        comp.trained("d", 0)
    params_file = os.path.join(cfg.work_dir, "params", "d_s0.safetensors")
    assert not os.path.exists(params_file) and len(os.listdir(root)) == 1
    monkeypatch.undo()

    ran = steps_run(monkeypatch)
    resumed = comp.trained("d", 0)  # from the step-3 checkpoint (saved when it stopped), not from the start
    assert ran[0] == 11 - 3 and os.listdir(root) == []  # an arm's part keeps its result in work_dir/params
    assert_bitwise(straight, resumed)
    assert load_tree(params_file).keys() == {"llm", "retriever"}
    with open(os.path.join(cfg.work_dir, "params", "d_s0.history.json")) as f:
        saved = json.load(f)
    assert saved["history"] == straight_history and saved["resumed_from_step"] == 3  # its seconds: steps 4-11

    # Stopped again, then rerun with another configuration (a changed generator lr): refused, nothing lost.
    monkeypatch.undo()
    steps_run(monkeypatch, stop_after=1)
    with pytest.raises(StoppedEarly):
        comp.train("c", 0)
    monkeypatch.undo()
    comp.train("d", 0)  # finished again: kept until its part is written
    changed = Comparison(dataclasses.replace(cfg, llm_lr=3e-4), progress=False, log=lambda _: None)
    with pytest.raises(CheckpointError, match="checkpoint of another configuration than this train c seed 0.*delete"):
        changed.train("c", 0)
    with pytest.raises(CheckpointError, match="finished training of another configuration than this train d seed 0"):
        changed.train("d", 0)
    assert len(os.listdir(root)) == 2

    # A part that ends deletes the directories of the trainings it ran (reused here), not another part's checkpoint.
    monkeypatch.setattr(comp, "_runner", lambda name: lambda: {"history": comp.train("d", 0)[1]})
    comp.run(["some_part"])
    assert os.path.exists(os.path.join(cfg.out_dir, "some_part.json")) and len(os.listdir(root)) == 1
    assert os.listdir(root)[0].startswith("c_s0-")


def assert_bitwise(x: dict, y: dict) -> None:
    for name in ("llm", "retriever"):
        a, b = (dict(jax.tree_util.tree_leaves_with_path(t[name])) for t in (x, y))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name


def test_the_logged_mfu_counts_each_arms_matmuls(data_dir, tmp_path, monkeypatch, minilm):  # noqa: F811
    """An arm's step_stats FLOPs (the logged MFU's numerator; it had been 0) against the matmuls its step runs
    (the jaxpr's dot_generals; attention not counted): the generator trained (d), frozen with its losses cached (e),
    and both encoder sides of the retriever trained (eB)."""
    from tests.helpers import dot_flops
    cfg = tiny(data_dir, tmp_path, llm=save_tiny_llama_dir(str(tmp_path / "llm")), doc_tokens=32, question_tokens=24,
               answer_tokens=16, num_candidates=4, num_sampled=2, rank_loss="kl")
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    built = []
    monkeypatch.setattr(arm_loop.ArmLoop, "train", lambda self, trained: built.append(self) or ({}, []))
    for arm in ("d", "e", "eB"):
        comp.train(arm, 0)
        loop = built[-1]
        batch = next(loop.data_iter)
        flops, _ = loop.step_stats(batch)
        dots = dot_flops(jax.make_jaxpr(loop.step_fn)(loop.state, batch))
        loop.close()
        assert 0.85 < flops / dots <= 1.0, (arm, flops, dots)

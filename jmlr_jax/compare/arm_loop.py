"""One comparison arm's training on the loop every run shares (train/loop.StepLoop): the loss check, a checkpoint
every `checkpoint_every` steps, stopping early on SIGTERM / Ctrl-C after saving, and resuming from the newest
checkpoint, so an interrupted part loses at most that many steps instead of its whole training.

Each training has its own directory, named by arm, seed and a hash of its settings and questions: a dev sweep's
runs never resume one another. The directory holds the checkpoint and the per-step metrics while it trains; when
it ends, only the trained trees and the step history (`finished`), which a rerun of the same part reuses instead
of training again (a dev part trains several runs, each up to ~2 hours here); the driver deletes the directories
of a part once its JSON is written. A checkpoint or result of another configuration (EvidenceConfig changed
mid-part) is an error, not resumed.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from jmlr_jax import checkpoint, parallel
from jmlr_jax.compare.evidence_setup import load_tree, save_tree, write_json
from jmlr_jax.data.pipeline import make_dataset
from jmlr_jax.experiment import RunConfig
from jmlr_jax.train.loop import StepLoop, jmlr_step_stats
from jmlr_jax.train.metrics import matmul_params
from jmlr_jax.train.state import init_train_state

TIMING = ("data_s", "step_s", "tokens_per_s", "mfu")  # the loop's own measurements, not the step's metrics
TRAINED, HISTORY = "trained.safetensors", "history.json"  # what a finished training's directory keeps


def run_dir(root: str, meta: dict) -> str:
    """<root>/<arm>_s<seed>-<hash of its settings and questions>: one directory per distinct training."""
    key = {k: meta[k] for k in ("arm", "seed", "settings", "questions", "pool")}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return os.path.join(root, f"{meta['arm']}_s{meta['seed']}-{digest}")


def mismatch(directory: str, what: str, meta: dict) -> checkpoint.CheckpointError:
    """The error for a directory whose checkpoint or result another configuration wrote (EvidenceConfig changed)."""
    return checkpoint.CheckpointError(f"{directory} holds a {what} of another configuration than this train "
                                      f"{meta['arm']} seed {meta['seed']} ({json.dumps(meta)[:200]}...): "
                                      f"delete {directory} to train it afresh")


def finished(root: str, meta: dict) -> tuple[dict, list[dict]] | None:
    """The training `meta` describes, if it ended in an earlier run of its part: (trained trees, per-step
    metrics); None if it has not (its checkpoint, if any, is resumed by ArmLoop)."""
    meta = json.loads(json.dumps(meta, default=str))
    d = run_dir(root, meta)
    if not os.path.exists(os.path.join(d, HISTORY)):  # written after the trees
        return None
    with open(os.path.join(d, HISTORY)) as f:
        saved = json.load(f)
    if saved["training"] != meta:
        raise mismatch(d, "finished training", meta)
    return load_tree(os.path.join(d, TRAINED)), saved["history"]


class ArmLoop(StepLoop):
    """Trains `params` with `step_fn` (unjitted: (state, batch) -> (state, metrics)) on `examples` for `steps`
    steps of `batch_size` in data order `seed`, on one device (as the comparison's timings were measured). `jcfg`
    and `llm` (how the generator trains: "full" or "frozen") give the logged MFU its model FLOPs (train.metrics)."""

    progress_keys = ("loss", "lm_loss", "rank_loss")

    def __init__(self, root: str, meta: dict, params, tx, step_fn, examples, *, jcfg, llm: str, steps: int,
                 batch_size: int, seed: int, checkpoint_every: int, progress: bool):
        meta = json.loads(json.dumps(meta, default=str))  # as a checkpoint gives it back (tuples as lists)
        self.meta, self.desc = meta, f"train {meta['arm']} seed {meta['seed']}"
        self.run_cfg = RunConfig(workdir=run_dir(root, meta), num_steps=steps, batch_size=batch_size, seed=seed,
                                 checkpoint_every=checkpoint_every, keep_checkpoints=1, progress=progress)
        os.makedirs(self.run_cfg.workdir, exist_ok=True)
        self.mesh = parallel.make_mesh((1, 1, 1))
        replicated = NamedSharding(self.mesh, P())
        shardings = jax.tree_util.tree_map(
            lambda _: replicated, jax.eval_shape(functools.partial(init_train_state, tx=tx, seed=seed), params))
        self.ckpt = checkpoint.Checkpointer(os.path.join(self.run_cfg.workdir, "checkpoints"), 1)
        data_state, saved = self.init_or_restore(params, tx, seed, shardings)
        self.resumed_from = int(self.state["step"])  # 0 unless a checkpoint was restored
        if saved is not None and saved.get("training") != meta:
            self.close()
            raise mismatch(self.run_cfg.workdir, "checkpoint", meta)
        self.data_iter = iter(make_dataset(examples, batch_size, seed))
        if data_state is not None:
            self.data_iter.set_state(data_state)
        self.step_fn = jax.jit(step_fn, donate_argnums=0)
        self._jcfg, self._n, self._llm = jcfg, matmul_params(params), llm

    def step_stats(self, batch: dict) -> tuple[float, int]:
        return jmlr_step_stats(self._jcfg, batch, self._n, self._llm)

    def checkpoint_meta(self, step: int) -> dict:
        return {"step": step, "training": self.meta}

    def train(self, trained: tuple[str, ...]) -> tuple[dict, list[dict]]:
        """Runs to the last step (resuming) -> (params on the host, per-step metrics rounded to 5 digits); the
        directory then keeps only the `trained` trees of params and the metrics (`finished` reads them). Stopped
        early, it raises `StoppedEarly` with the checkpoint kept."""
        try:
            self.run()
        finally:
            self.close()
        history: dict[int, dict] = {}  # a step logged again after a resume: its last record
        with open(os.path.join(self.run_cfg.workdir, "metrics.jsonl")) as f:
            for line in f:
                m = json.loads(line)
                step = m.pop("step")  # before the record is built (an assignment evaluates its value first)
                history[step] = {k: round(v, 5) for k, v in m.items() if k not in TIMING}
        params = jax.device_get(self.state["params"])
        steps = [history[s] for s in range(1, self.run_cfg.num_steps + 1)]
        d = self.run_cfg.workdir
        save_tree(os.path.join(d, TRAINED), {k: params[k] for k in trained})
        write_json(os.path.join(d, HISTORY), {"training": self.meta, "history": steps})  # last: marks it finished
        for name in os.listdir(d):
            if name not in (TRAINED, HISTORY):
                path = os.path.join(d, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return params, steps

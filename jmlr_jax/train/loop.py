"""The JMLR training loop: data -> host retrieval (cached) -> fused step -> metrics -> checkpoint -> refresh.

Workdir layout:
  config.json              the run's root config (jmlr_jax/experiment.py); also inside every checkpoint
  operative_config.gin     the gin configuration it was built from
  checkpoints/<step>/      orbax: train state, grain iterator state, meta (index version + directory, config)
  index-<version>/         the token index the candidates came from (one per refresh; last two kept)
  candidates-<version>.npy host-retrieved candidate passages [N, C] for the training questions
  metrics.jsonl, tb/       metrics (JSON lines, TensorBoard event files)
A run restarted on the same workdir resumes from the latest readable checkpoint: same params, optimizer
state, data position and index, on whatever mesh the new run has. SIGTERM (also a second one during the
final save) or a first Ctrl-C saves a checkpoint and exits cleanly, every host at the same step
(train/stopping.py). Metrics of step n are fetched from the device after step n + 1 is dispatched, so logging
never stalls the device; a step's loss is always checked before any checkpoint that contains it is written.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import numpy as np
import tqdm

from jmlr_jax import checkpoint, parallel, workdir as workdir_lib
from jmlr_jax.config import save_operative_config
from jmlr_jax.data.pipeline import JMLRExamples, make_dataset, retrieval_query
from jmlr_jax.data.splits import fingerprint, training_records
from jmlr_jax.errors import StoppedEarly
from jmlr_jax.experiment import Experiment, RunConfig
from jmlr_jax.retrieval.index import Retriever
from jmlr_jax.retrieval.store import cached_index, load_index
from jmlr_jax.train import jmlr_step, refresh
from jmlr_jax.train.metrics import MetricWriter, matmul_params, step_flops
from jmlr_jax.train.state import describe_groups, init_train_state, make_optimizer
from jmlr_jax.train.stopping import StopSignals
from jmlr_jax.train.weights import abstract_state, base_params, param_shardings, state_shardings


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; nothing was saved for that step, earlier checkpoints are intact."""


def jmlr_step_stats(jcfg, batch: dict, n: dict[str, int], llm: str) -> tuple[float, int]:
    """(model FLOPs, valid tokens) of a fused JMLR step on `batch`: `train.metrics.step_flops` from the matmul
    parameters `n` and how the generator trains (`llm`)."""
    flops = step_flops(jcfg, {k: v.shape for k, v in batch.items()}, n, llm)
    return flops, int(sum(np.sum(batch[k]) for k in ("docs_valid", "question_valid", "answer_valid")))


class StepLoop:
    """The loop every run shares (JMLR and the seed pipelines' stages): steps, metrics, checks, checkpoints,
    stopping early (SIGTERM, Ctrl-C). A subclass sets run_cfg, mesh, state, step_fn (state, batch) ->
    (state, metrics), data_iter (a grain iterator) and ckpt, and says what a step costs and what a checkpoint
    records."""

    run_cfg: RunConfig
    progress_keys: tuple[str, ...] = ("loss",)
    batch_axis = 0  # the rows axis of a batch's leaves (1 under a leading micro-batch axis)
    desc = "training"  # the progress bar's label
    _stop = False

    def step_stats(self, batch: dict) -> tuple[float, int]:
        """(model FLOPs, tokens) of one step on this host's rows of the batch (scaled by the host count)."""
        raise NotImplementedError

    def checkpoint_meta(self, step: int) -> dict:
        raise NotImplementedError

    def refresh_due(self, step: int) -> bool:
        return False

    def refresh(self, step: int, log) -> None:
        pass

    def init_or_restore(self, params, tx, seed: int, shardings) -> tuple[dict | None, dict | None]:
        """A fresh state from `params` (no checkpoint yet) or the newest readable checkpoint, placed on
        `shardings` (any mesh) -> (data iterator state, checkpoint meta); both None when fresh."""
        if self.ckpt.latest_step() is None:
            self.state = jax.jit(functools.partial(init_train_state, tx=tx, seed=seed),
                                 out_shardings=shardings)(jax.device_put(params, shardings["params"]))
            return None, None
        self.state, data_state, meta = self.ckpt.restore(abstract_state(params, tx, seed, shardings))
        return data_state, meta

    def _save(self, step: int) -> None:
        self.ckpt.save(step, self.state, self.data_iter.get_state(), self.checkpoint_meta(step))
        workdir_lib.upload(self.run_cfg.workdir)  # a cloud workdir gets the local files (metrics, index) too

    # --------------------------------------------------------------------------------------------- run
    def run(self) -> dict:
        """Trains to run.num_steps from the current state (see module doc: metrics, checks, checkpoints) -> the last
        step's metrics. Stopped early (SIGTERM, Ctrl-C), it saves that step and raises `StoppedEarly`."""
        run = self.run_cfg
        start = int(self.state["step"])
        self._stop = False  # set by a test to stop after a step
        writer = MetricWriter(workdir_lib.local_dir(run.workdir))  # a cloud workdir's mirror (uploaded by _save)
        bar = tqdm.tqdm(total=run.num_steps, initial=start, desc=self.desc,  # one bar for the run: process 0's
                        disable=not (run.progress and workdir_lib.is_lead()))
        last: dict = {}
        pending = None  # the dispatched step whose metrics are not fetched yet
        t_prev = time.time()

        def finish(p) -> None:
            """Fetch a dispatched step's metrics (blocks until it is done), check the loss, log."""
            nonlocal last, t_prev
            step, metrics, flops, tokens, data_s = p
            metrics = jax.device_get(metrics)
            now = time.time()
            if not np.isfinite(metrics["loss"]):
                self.ckpt.wait()
                raise NonFiniteLossError(
                    f"step {step}: loss is {metrics['loss']}; not saved. Latest checkpoint "
                    f"(step {self.ckpt.latest_step()}) in {self.ckpt.directory} is intact")
            step_s, t_prev = now - t_prev, now
            last = {k: float(v) for k, v in metrics.items()}
            last.update(data_s=data_s, step_s=step_s, tokens_per_s=tokens / step_s,
                        mfu=flops / (step_s * run.peak_flops_per_device * jax.device_count()))
            if (step + 1) % run.log_every == 0 or step == start:
                writer(last, step + 1)
            bar.update(1)
            bar.set_postfix({k: f"{last[k]:.3f}" for k in self.progress_keys if k in last})

        stopped = None  # why it stopped before run.num_steps (its checkpoint is saved)
        with StopSignals() as signals:  # its exit puts the process's handlers back, even after a second Ctrl-C
            try:
                for step in range(start, run.num_steps):
                    t0 = time.time()
                    local = next(self.data_iter)  # this host's rows of the global batch
                    batch = parallel.global_batch(local, self.mesh, batch_axis=self.batch_axis)
                    data_s = time.time() - t0
                    with jax.set_mesh(self.mesh):  # kernels XLA cannot partition run per shard (models/attention.py)
                        self.state, metrics = self.step_fn(self.state, batch)  # dispatched; runs while we fetch below
                    flops, tokens = (x * jax.process_count() for x in self.step_stats(local))
                    if pending is not None:
                        finish(pending)
                    pending = (step, metrics, flops, tokens, data_s)
                    done = step + 1 == run.num_steps
                    do_refresh = self.refresh_due(step + 1) and not done
                    stop = signals.due(step + 1) or self._stop
                    if do_refresh or (step + 1) % run.checkpoint_every == 0 or done or stop:
                        finish(pending)  # never checkpoint a state whose loss was not checked
                        pending = None
                        if do_refresh:
                            self.refresh(step + 1, writer)
                        self._save(step + 1)
                        stop = stop or signals.reason is not None  # one that came during the save: stop here
                    if stop and not done:
                        stopped = signals.reason or "stopped"
                        print(f"{stopped}: saved checkpoint {step + 1}, exiting", flush=True)
                        break
                if pending is not None:
                    finish(pending)
            finally:
                bar.close()
                writer.close()
                self.ckpt.wait()  # a SIGTERM during this wait changes nothing: the save completes
        if stopped:  # saved, not finished: an exception, so that nothing goes on as if it were (a notebook's next
            raise StoppedEarly(stopped, int(self.state["step"]))  # cells, a script's next command)
        return last

    def close(self) -> None:
        """Waits for the last checkpoint and stops the data iterator's prefetch threads (grain's 16 would otherwise
        go on reading up to 500 batches ahead, and be joined at interpreter exit)."""
        self.ckpt.close()
        if getattr(self, "data_iter", None) is not None:  # None if the subclass failed before building it
            self.data_iter.close()


class Trainer(StepLoop):
    """Everything one run needs, built from its root config; `run()` trains to run.num_steps (resuming)."""

    progress_keys = ("loss", "lm_loss", "rank_loss")

    def __init__(self, exp: Experiment):
        self.exp = exp
        self.run_cfg = run = exp.run
        self.local = workdir_lib.local_dir(run.workdir)  # index, candidates, metrics (the workdir unless cloud)
        os.makedirs(self.local, exist_ok=True)
        workdir_lib.download(run.workdir)  # resuming a cloud run on this machine: fetch what it lacks
        parallel.maybe_initialize_distributed()
        workdir_lib.check_shared(run.workdir, "RunConfig.workdir")
        self.mesh = parallel.make_mesh(run.mesh_shape)

        self.llm_cfg, self.tok, self.rcfg, self.ctok, params = base_params(exp)
        r_params = params["retriever"]
        self.corpus = exp.corpus.load(exp.data.require_dir())
        self.records = training_records(exp.data)
        self.records_meta = {"n": len(self.records), "sha1": fingerprint(self.records)}  # checked on resume
        self.queries = [retrieval_query(r) for r in self.records]

        self.groups = describe_groups(params, exp.optim)
        self.tx = make_optimizer(params, exp.optim)
        self.state_sh = state_shardings(params, self.tx, param_shardings(params, self.llm_cfg, self.rcfg, self.mesh),
                                        self.mesh)
        self.ckpt = checkpoint.Checkpointer(os.path.join(run.workdir, "checkpoints"), run.keep_checkpoints,
                                            run.async_checkpoint)
        data_state, meta = self.init_or_restore(params, self.tx, run.seed, self.state_sh)
        trained_on = (meta or {}).get("train_records")
        if trained_on and trained_on != self.records_meta:  # checkpoints from before this check carry none
            raise checkpoint.CheckpointError(
                f"the training questions under {exp.data.data_dir} ({len(self.records)}, sha1 "
                f"{self.records_meta['sha1'][:12]}) are not those the checkpoint trained on ({trained_on['n']}, "
                f"sha1 {trained_on['sha1'][:12]}): point DataConfig.data_dir at the run's data")
        if meta is None:
            index = cached_index(self.corpus, self.rcfg, r_params, self.ctok, exp.index, exp.search, self.local,
                                 fallback=run.initial_index, progress=run.progress)
        else:
            index = load_index(os.path.join(self.local, meta["index_dir"]), corpus=self.corpus, search=exp.search)
            if index.version != meta["index_version"]:
                raise checkpoint.CheckpointError(f"{meta['index_dir']} holds index {index.version}, the "
                                                 f"checkpoint expects {meta['index_version']}")
        del params, r_params  # the state owns the (sharded) params now
        self.retriever = Retriever(self.rcfg, self._retriever_params(), self.ctok, index)
        self._make_data(data_state)
        self.step_fn = jax.jit(functools.partial(jmlr_step.train_step, models=self.step_configs, tx=self.tx),
                               in_shardings=(self.state_sh, self.batch_sh), out_shardings=(self.state_sh, None),
                               donate_argnums=0)
        p = self.state["params"]
        self._n = matmul_params(p)
        # how the generator trains, for its FLOPs per token (metrics.PER_TOKEN)
        self._llm = "lora" if "lora" in p else "full" if self.groups["llm"] else "frozen"
        exp.save(run.workdir)
        save_operative_config(run.workdir)

    # ------------------------------------------------------------------------------------------ pieces
    @property
    def step_configs(self) -> jmlr_step.StepConfigs:
        return jmlr_step.StepConfigs(self.llm_cfg, self.rcfg, self.exp.jmlr, self.exp.lora, self.exp.optim)

    @property
    def index(self):
        return self.retriever.index

    def _retriever_params(self):
        return parallel.host_copy(self.state["params"]["retriever"])  # every host encodes with the whole retriever

    def _index_dir(self) -> str:
        d = os.path.join(self.local, f"index-{self.index.version}")
        return d if os.path.isdir(d) else self.exp.run.initial_index

    def _make_data(self, data_state):
        run, jcfg = self.exp.run, self.exp.jmlr
        cands = refresh.training_candidates(self.retriever, self.queries, jcfg.num_candidates, self.local,
                                            run.progress)
        self.examples = JMLRExamples(self.records, cands, self.index.passages, self.tok, self.ctok,
                                     self.exp.template, self.exp.budgets)
        self.data_iter = iter(make_dataset(self.examples, run.batch_size, run.seed, jcfg.grad_accum,
                                           shard=parallel.host_shard()))
        self.batch_axis = 1 if jcfg.grad_accum > 1 else 0  # [A, B, ...] micro-batches
        if data_state is not None:
            self.data_iter.set_state(data_state)
        lead = (jcfg.grad_accum, run.batch_size)[1 - self.batch_axis:]
        self.batch_sh = {k: parallel.batch_sharding(lead + v.shape, self.mesh, self.batch_axis)
                         for k, v in self.examples(0).items()}

    def step_stats(self, batch: dict) -> tuple[float, int]:
        return jmlr_step_stats(self.exp.jmlr, batch, self._n, self._llm)

    def refresh_due(self, step: int) -> bool:
        return bool(self.run_cfg.refresh_every) and step % self.run_cfg.refresh_every == 0

    def refresh(self, step: int, log) -> None:
        run = self.run_cfg
        self.retriever, metrics = refresh.refresh(self.retriever, self._retriever_params(), self.local,
                                                  self.queries[: run.recall_queries], self.exp.jmlr.num_candidates,
                                                  run.progress)
        stale = self.data_iter
        self._make_data(stale.get_state())
        stale.close()  # its prefetch threads still read batches of the old candidates
        log(metrics, step)

    def checkpoint_meta(self, step: int) -> dict:
        d = self._index_dir()  # recorded relative to the run's local dir when inside it (portable)
        return {"index_version": self.index.version, "step": step,
                "index_dir": os.path.basename(d) if os.path.dirname(d) == self.local else d,
                "config": self.exp.to_dict(), "train_records": self.records_meta}


def train_main(exp: Experiment) -> dict:
    """Builds the trainer for `exp` and trains (resuming from the workdir's latest checkpoint); `StoppedEarly` when
    a signal stopped it before its last step (`StepLoop.run`)."""
    trainer = Trainer(exp)
    print(f"trainable parameters: {trainer.groups}; mesh {dict(trainer.mesh.shape)}; "
          f"{len(trainer.records)} training questions; {len(trainer.index.passages)} passages", flush=True)
    try:
        return trainer.run()
    finally:
        trainer.close()

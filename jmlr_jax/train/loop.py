"""The JMLR training loop: data -> host retrieval (cached) -> fused step -> metrics -> checkpoint -> refresh.

Workdir layout:
  checkpoints/<step>/      orbax: train state, grain iterator state, meta (index version + directory)
  index-<version>/         the token index the candidates came from (one per refresh; last two kept)
  candidates-<version>.npy host-retrieved candidate passages [N, C] for the training questions
  metrics.jsonl, tb/       metrics (JSON lines, TensorBoard event files)
  operative_config.gin     the configuration the run used
A run restarted on the same workdir resumes from the latest checkpoint: same params, optimizer state,
data position and index. SIGTERM saves a checkpoint and exits cleanly (preemptible TPU VMs).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import shutil
import signal
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from jmlr_jax import checkpoint, config, parallel
from jmlr_jax.convert import load_preset
from jmlr_jax.data.pipeline import JMLRExamples, make_dataset, retrieval_query
from jmlr_jax.data.splits import training_records
from jmlr_jax.errors import InputError
from jmlr_jax.models import colbert as colbert_lib, llama as llama_lib
from jmlr_jax.retrieval.corpus import load_corpus
from jmlr_jax.retrieval.index import IndexConfig, Retriever, cached_index, load_index
from jmlr_jax.retrieval.launch import retriever_preset
from jmlr_jax.train import jmlr_step
from jmlr_jax.train.state import (LoraConfig, OptimConfig, describe_groups, init_lora, init_train_state,
                                  llm_params_of, make_optimizer)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; nothing was saved for that step, earlier checkpoints are intact."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunConfig:
    workdir: str = "workdir/run"
    num_steps: int = 100
    batch_size: int = 1
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    refresh_every: int = 0  # re-encode the corpus with the live retriever every N steps; 0 = never
    recall_queries: int = 32  # training questions used to log ScaNN recall vs exact search at each refresh
    initial_index: str = ""  # a prebuilt index (launch/build_index.py) for the initial retriever, if any
    llm: str = "smollm2-135m-instruct"  # preset, HF directory or .gguf
    llm_overrides: tuple = ()  # LlamaConfig fields, e.g. (("dtype", "bfloat16"), ("s2_group_size", 1024))
    mesh_shape: tuple = (-1, 1, 1)
    peak_flops_per_device: float = 400e9  # for MFU; this CPU's measured fp32 matmul peak
    progress: bool = True


def _shardings(params, llm_cfg, rcfg, mesh):
    logical = {"llm": llama_lib.logical_axes(llm_cfg), "retriever": colbert_lib.logical_axes(rcfg)}
    shapes = jax.eval_shape(lambda: params)
    out = {k: parallel.tree_shardings(logical[k], shapes[k], mesh) for k in ("llm", "retriever")}
    if "lora" in params:
        out["lora"] = jax.tree_util.tree_map(lambda _: NamedSharding(mesh, P()), params["lora"])
    return out


def step_flops(llm_cfg, rcfg, jcfg, batch_shapes: dict, n_llm: int, n_ret: int) -> float:
    """Model FLOPs of one fused step (6N per trained token, 2N per forward-only token; attention ignored)."""
    B = batch_shapes["answer"][-2]
    A = jcfg.grad_accum
    Ld, Lq, La = batch_shapes["docs"][-1], batch_shapes["question"][-1], batch_shapes["answer"][-1]
    gen = B * (jcfg.num_docs * Ld + Lq + La)
    score = B * jcfg.num_sampled * (Ld + Lq + La) if jcfg.rank_weight else 0
    ret = B * (batch_shapes["r_q_ids"][-1] + jcfg.num_candidates * batch_shapes["r_d_ids"][-1])
    ret_flops = (6 if jcfg.rank_weight else 2 if jcfg.num_docs else 0) * n_ret * ret  # trained / scored / unused
    return A * (6 * n_llm * gen + 2 * n_llm * score + ret_flops)


def base_params(run: RunConfig, lcfg: LoraConfig):
    """The run's starting point: (llm cfg, tokenizer, retriever cfg, ColBERT tokenizer, params)."""
    llm_cfg, llm_params, tok = load_preset(run.llm, **dict(run.llm_overrides))
    rcfg, r_params, ctok = retriever_preset()
    params = {"llm": llm_params, "retriever": r_params}
    if lcfg.rank:
        params["lora"] = init_lora(llm_params, lcfg, jax.random.PRNGKey(run.seed + 1))
    return llm_cfg, tok, rcfg, ctok, params


def restore_params(run: RunConfig | None = None, step: int | None = None):
    """Trained weights from the run's latest (or given) checkpoint, on one device, for evaluation.

    -> (llm cfg, tokenizer, LLM params with LoRA merged, retriever cfg, ColBERT tokenizer, retriever params,
    checkpoint meta). The configs are the run's own (the same gin files that trained it).
    """
    run = run or RunConfig()
    lcfg = LoraConfig()
    llm_cfg, tok, rcfg, ctok, params = base_params(run, lcfg)
    tx = make_optimizer(params, OptimConfig())
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                                      jax.eval_shape(functools.partial(init_train_state, tx=tx, seed=run.seed), params))
    ckpt = checkpoint.Checkpointer(os.path.join(run.workdir, "checkpoints"))
    try:
        state, _, meta = ckpt.restore(abstract, step)
    finally:
        ckpt.close()
    trained = state["params"]
    return llm_cfg, tok, llm_params_of(trained, lcfg), rcfg, ctok, trained["retriever"], meta


class Trainer:
    """Builds everything from gin-bound configs; `run()` trains to run.num_steps (resuming if possible)."""

    def __init__(self, run: RunConfig | None = None):
        self.run_cfg = run = run or RunConfig()
        self.jcfg, self.ocfg, self.lcfg, self.icfg = jmlr_step.JMLRConfig(), OptimConfig(), LoraConfig(), IndexConfig()
        os.makedirs(run.workdir, exist_ok=True)
        parallel.maybe_initialize_distributed()
        self.mesh = parallel.make_mesh(run.mesh_shape)
        self._stop = False

        self.llm_cfg, self.tok, self.rcfg, self.ctok, params = base_params(run, self.lcfg)
        llm_params, r_params = params["llm"], params["retriever"]
        self.corpus = load_corpus()
        self.records = training_records()
        self.queries = [retrieval_query(r) for r in self.records]

        self.groups = describe_groups(params, self.ocfg)
        self.tx = make_optimizer(params, self.ocfg)
        param_sh = _shardings(params, self.llm_cfg, self.rcfg, self.mesh)
        replicated = NamedSharding(self.mesh, P())
        opt_sh = parallel.like_params_shardings(jax.eval_shape(self.tx.init, params), param_sh,
                                                jax.eval_shape(lambda: params), self.mesh)
        self.state_sh = {"step": replicated, "params": param_sh, "opt_state": opt_sh, "rng": replicated}
        self.ckpt = checkpoint.Checkpointer(os.path.join(run.workdir, "checkpoints"), run.keep_checkpoints)

        start = self.ckpt.latest_step()
        if start is None:
            params = jax.device_put(params, param_sh)
            self.state = jax.jit(functools.partial(init_train_state, tx=self.tx, seed=run.seed),
                                 out_shardings=self.state_sh)(params)
            self.index = self._initial_index(r_params)
            data_state = None
        else:
            abstract = jax.eval_shape(functools.partial(init_train_state, tx=self.tx, seed=run.seed), params)
            abstract = jax.tree_util.tree_map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                              abstract, self.state_sh)
            self.state, data_state, meta = self.ckpt.restore(abstract, start)
            self.index = load_index(meta["index_dir"], corpus=self.corpus, search=self.icfg)
            if self.index.version != meta["index_version"]:
                raise checkpoint.CheckpointError(f"{meta['index_dir']} holds index {self.index.version}, the "
                                                 f"checkpoint expects {meta['index_version']}")
        del params, llm_params, r_params  # the state owns the (sharded) params now
        self._make_data(data_state)
        self.step_fn = jax.jit(functools.partial(jmlr_step.train_step, models=self._models(), tx=self.tx),
                               in_shardings=(self.state_sh, self.batch_sh), out_shardings=(self.state_sh, None),
                               donate_argnums=0)
        config.save_operative_config(run.workdir)

    # ------------------------------------------------------------------------------------------ pieces
    def _models(self) -> jmlr_step.Models:
        return jmlr_step.Models(self.llm_cfg, self.rcfg, self.jcfg, self.lcfg)

    def _retriever_params(self):
        return jax.device_get(self.state["params"]["retriever"])

    def _initial_index(self, r_params):
        return cached_index(self.corpus, self.rcfg, r_params, self.ctok, self.icfg, self.run_cfg.workdir,
                            fallback=self.run_cfg.initial_index, progress=self.run_cfg.progress)

    def _index_dir(self) -> str:
        d = os.path.join(self.run_cfg.workdir, f"index-{self.index.version}")
        return d if os.path.isdir(d) else self.run_cfg.initial_index

    def _candidates(self) -> np.ndarray:
        path = os.path.join(self.run_cfg.workdir, f"candidates-{self.index.version}.npy")
        if os.path.isfile(path):
            cands = np.load(path)
            if cands.shape == (len(self.records), self.jcfg.num_candidates):
                return cands
        r = Retriever(self.rcfg, self._retriever_params(), self.ctok, self.index)
        rows = []
        for i in tqdm.trange(0, len(self.queries), 64, desc="retrieving candidates", disable=not self.run_cfg.progress):
            ids, _ = r.search(self.queries[i: i + 64], self.jcfg.num_candidates)
            rows.append(ids)
        cands = np.concatenate(rows)
        if (cands < 0).any():
            raise InputError(f"the index returned fewer than {self.jcfg.num_candidates} passages for some questions; "
                             "lower num_candidates or raise IndexConfig.token_k")
        np.save(path, cands)
        return cands

    def _make_data(self, data_state):
        run = self.run_cfg
        self.examples = JMLRExamples(self.records, self._candidates(), self.index.passages, self.tok, self.ctok)
        self.dataset = make_dataset(self.examples, run.batch_size, run.seed, self.jcfg.grad_accum)
        self.data_iter = iter(self.dataset)
        if data_state is not None:
            self.data_iter.set_state(data_state)
        lead = 2 if self.jcfg.grad_accum > 1 else 1
        example = self.examples(0)
        self.batch_sh = {k: parallel.logical_sharding(P(*([None] * (lead - 1)), "batch"),
                                                      (self.jcfg.grad_accum, run.batch_size)[-lead:] + v.shape,
                                                      self.mesh) for k, v in example.items()}

    def _refresh(self, step: int, log) -> None:
        """Re-encode the corpus with the live retriever, rebuild ScaNN, log recall, re-retrieve candidates."""
        t = time.time()
        r = Retriever(self.rcfg, self._retriever_params(), self.ctok, self.index).refresh(
            self._retriever_params(), progress=self.run_cfg.progress)
        self.index = r.index
        self.index.save(os.path.join(self.run_cfg.workdir, f"index-{self.index.version}"))
        sample = self.queries[: self.run_cfg.recall_queries]
        Q = r.encode_queries(sample)
        approx, _ = self.index.search_embeddings(Q, self.jcfg.num_candidates)
        exact, _ = self.index.exact_search(Q, self.jcfg.num_candidates)
        recall = float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))
        data_state = self.data_iter.get_state()
        self._make_data(data_state)
        log({"refresh_recall_vs_exact": recall, "refresh_s": time.time() - t}, step)
        self._save(step)
        for d in sorted(glob.glob(os.path.join(self.run_cfg.workdir, "index-*")), key=os.path.getmtime)[:-2]:
            shutil.rmtree(d, ignore_errors=True)  # the latest checkpoint's index is among the last two

    def _save(self, step: int) -> None:
        meta = {"index_version": self.index.version, "index_dir": self._index_dir(), "step": step}
        self.ckpt.save(step, self.state, self.data_iter.get_state(), meta)

    # --------------------------------------------------------------------------------------------- run
    def run(self) -> dict:
        run = self.run_cfg
        start = int(self.state["step"])
        previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
        writer = _Writer(run.workdir)
        n_llm = sum(x.size for x in jax.tree_util.tree_leaves(self.state["params"]["llm"]))
        n_ret = sum(x.size for x in jax.tree_util.tree_leaves(self.state["params"]["retriever"]))
        bar = tqdm.tqdm(total=run.num_steps, initial=start, desc="training", disable=not run.progress)
        last = {}
        try:
            for step in range(start, run.num_steps):
                t0 = time.time()
                batch = next(self.data_iter)
                t1 = time.time()
                self.state, metrics = self.step_fn(self.state, batch)
                metrics = jax.device_get(metrics)
                t2 = time.time()
                if not np.isfinite(metrics["loss"]):
                    self.ckpt.wait()
                    raise NonFiniteLossError(
                        f"step {step}: loss is {metrics['loss']}; not saved. Latest checkpoint "
                        f"(step {self.ckpt.latest_step()}) in {self.ckpt.directory} is intact")
                flops = step_flops(self.llm_cfg, self.rcfg, self.jcfg, {k: v.shape for k, v in batch.items()},
                                   n_llm, n_ret)
                tokens = int(sum(np.sum(batch[k]) for k in ("docs_valid", "question_valid", "answer_valid")))
                last = {k: float(v) for k, v in metrics.items()}
                last.update(data_s=t1 - t0, device_s=t2 - t1, tokens_per_s=tokens / (t2 - t0),
                            mfu=flops / ((t2 - t1) * run.peak_flops_per_device * jax.device_count()))
                if (step + 1) % run.log_every == 0 or step == start:
                    writer(last, step + 1)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", lm=f"{last['lm_loss']:.3f}",
                                rank=f"{last['rank_loss']:.3f}")
                done = step + 1 == run.num_steps
                if run.refresh_every and (step + 1) % run.refresh_every == 0 and not done:
                    self._refresh(step + 1, writer)
                elif (step + 1) % run.checkpoint_every == 0 or done or self._stop:
                    self._save(step + 1)
                if self._stop:
                    print(f"SIGTERM: saved checkpoint {step + 1}, exiting", flush=True)
                    break
        finally:
            bar.close()
            writer.close()
            self.ckpt.wait()
            signal.signal(signal.SIGTERM, previous)
        return last

    def close(self) -> None:
        self.ckpt.close()


class _Writer:
    """metrics.jsonl + TensorBoard event files."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))

    def __call__(self, metrics: dict, step: int) -> None:
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.jsonl.close()
        self.tb.close()


@gin.configurable
def train_main() -> dict:
    trainer = Trainer()
    print(f"trainable parameters: {trainer.groups}; mesh {dict(trainer.mesh.shape)}; "
          f"{len(trainer.records)} training questions; {len(trainer.index.passages)} passages", flush=True)
    try:
        return trainer.run()
    finally:
        trainer.close()

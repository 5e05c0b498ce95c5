"""The seed pipelines (PMC-LLaMA: CPT -> SFT; Qilin-Med: CPT -> SFT -> DPO) as chained stages on the JMLR
machinery: the same loop (train/loop.StepLoop), checkpointing, sharding rules, optimizer and LoRA.

    python launch/pipeline.py --gin_file=pipelines/qilin_med.gin

Stage k trains in <workdir>/<k>-<name>/ (checkpoints, metrics.jsonl, stage.json) from the previous stage's final
weights: stage k-1 ends by exporting them (LoRA merged) as a Hugging Face directory <workdir>/<k-1>-<name>/final
(safetensors + tokenizer; loadable by `transformers` and by `load_preset`), then writes done.json. A rerun skips
stages with done.json, resumes an interrupted stage from its checkpoint, and starts the rest. DPO's frozen
reference is the stage's starting model (the SFT result), never updated.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import gin
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jmlr_jax import checkpoint, parallel
from jmlr_jax.config import ConfigError
from jmlr_jax.convert import load_preset
from jmlr_jax.convert.hf import save_hf_llama
from jmlr_jax.data import lm_data
from jmlr_jax.data.splits import DataConfig
from jmlr_jax.errors import InputError
from jmlr_jax.experiment import RunConfig
from jmlr_jax.models import llama as llama_lib
from jmlr_jax.tokenizers import save_tokenizer
from jmlr_jax.train.lm_step import LMStepConfigs, lm_train_step
from jmlr_jax.train.loop import StepLoop, state_shardings
from jmlr_jax.train.state import LoraConfig, OptimConfig, init_lora, llm_params_of, make_optimizer

KINDS = ("cpt", "sft", "dpo")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StageConfig:
    name: str = "cpt"
    kind: str = "cpt"  # "cpt" (packed text), "sft" (response-only loss), "dpo" (preference pairs)
    num_steps: int = 100
    batch_size: int = 4
    lr: float = 2e-5
    warmup_steps: int = 0
    decay_steps: int = 0  # cosine to 10% over this many steps; 0 = constant
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 16.0
    dpo_beta: float = 0.1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"StageConfig.kind must be one of {KINDS}, got {self.kind!r}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str = "pipeline"
    workdir: str = "workdir/pipeline"
    llm: str = "smollm2-135m-instruct"  # the base model: preset, HF directory or .gguf
    llm_overrides: tuple = ()
    stages: tuple = ()  # StageConfig instances, in order (gin: [@cpt/StageConfig(), @sft/StageConfig()])
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    mesh_shape: tuple = (-1, 1, 1)
    peak_flops_per_device: float = 400e9
    progress: bool = True

    def stage_dir(self, i: int) -> str:
        return os.path.join(self.workdir, f"{i + 1}-{self.stages[i].name}")


class _Examples:
    """Index -> one encoded example (grain map source with a stable repr for its iterator state)."""

    def __init__(self, items, encode, what: str):
        self.items, self.encode, self.what = list(items), encode, what
        if not self.items:
            raise InputError(f"no {what} records to train on")

    def __len__(self) -> int:
        return len(self.items)

    def __call__(self, i: int) -> dict:
        return self.encode(self.items[int(i)])

    def __repr__(self) -> str:
        return f"_Examples({self.what}, n={len(self.items)})"


class StageTrainer(StepLoop):
    """One stage: its model from `init` (preset or the previous stage's export), its data, its step."""

    progress_keys = ("loss", "reward_accuracy", "reward_margin")

    def __init__(self, pipe: PipelineConfig, index: int, data: DataConfig, lm: lm_data.LMDataConfig, init: str):
        self.stage = stage = pipe.stages[index]
        workdir = pipe.stage_dir(index)
        self.run_cfg = run = RunConfig(workdir=workdir, num_steps=stage.num_steps, batch_size=stage.batch_size,
                                       seed=pipe.seed, checkpoint_every=pipe.checkpoint_every,
                                       keep_checkpoints=pipe.keep_checkpoints, llm=init,
                                       llm_overrides=pipe.llm_overrides, mesh_shape=pipe.mesh_shape,
                                       peak_flops_per_device=pipe.peak_flops_per_device, progress=pipe.progress)
        os.makedirs(workdir, exist_ok=True)
        check_stage_dir(workdir, stage, init, data, lm, write=True)
        parallel.maybe_initialize_distributed()
        self.mesh = parallel.make_mesh(run.mesh_shape)
        self.llm_cfg, llm_params, self.tok = load_preset(init, **dict(pipe.llm_overrides))
        self.lora = LoraConfig(rank=stage.lora_rank, alpha=stage.lora_alpha)
        params = {"llm": llm_params}
        if stage.lora_rank:
            params["lora"] = init_lora(llm_params, self.lora, jax.random.PRNGKey(pipe.seed + 1))
        optim = OptimConfig(llm_lr=stage.lr, retriever_lr=0.0, warmup_steps=stage.warmup_steps,
                            decay_steps=stage.decay_steps, retriever_trainable="")
        self.tx = make_optimizer(params, optim)
        shapes = jax.eval_shape(lambda: params)
        param_sh = {"llm": parallel.tree_shardings(llama_lib.logical_axes(self.llm_cfg), shapes["llm"], self.mesh)}
        if "lora" in params:
            param_sh["lora"] = jax.tree_util.tree_map(lambda _: NamedSharding(self.mesh, P()), params["lora"])
        self.state_sh = state_shardings(params, self.tx, param_sh, self.mesh)
        self.ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), run.keep_checkpoints)
        ref = jax.device_put(llm_params, param_sh["llm"]) if stage.kind == "dpo" else None
        data_state, _ = self.init_or_restore(params, self.tx, run.seed, self.state_sh)
        del params, llm_params
        self.data_iter = iter(self._dataset(data, lm))
        if data_state is not None:
            self.data_iter.set_state(data_state)
        step = jax.jit(functools.partial(lm_train_step, models=LMStepConfigs(self.llm_cfg, self.lora, stage.dpo_beta),
                                         tx=self.tx, kind="dpo" if stage.kind == "dpo" else "lm"), donate_argnums=0)
        self.step_fn = (lambda s, b: step(s, b, ref)) if ref is not None else step
        self.n_params = sum(x.size for x in jax.tree_util.tree_leaves(self.state["params"]["llm"]))

    def _dataset(self, data: DataConfig, lm: lm_data.LMDataConfig):
        kind, run = self.stage.kind, self.run_cfg
        if kind == "cpt":
            train, _ = lm_data.cpt_documents(data, lm)
            pieces = lm_data.cpt_pieces(self.tok, [t for _, t in train], lm.seq_len)
            return lm_data.cpt_dataset(pieces, lm.seq_len, run.batch_size, run.seed, shard=parallel.host_shard())
        if kind == "sft":
            ex = _Examples(lm_data.sft_records(data, lm), functools.partial(lm_data.sft_example, self.tok, lm), "SFT")
        else:
            ex = _Examples(lm_data.dpo_pairs(data, lm), functools.partial(lm_data.dpo_example, self.tok, lm), "DPO")
        return lm_data.example_dataset(ex, run.batch_size, run.seed, shard=parallel.host_shard())

    def step_stats(self, batch: dict) -> tuple[float, int]:
        tokens = int(sum(np.sum(v > 0) for k, v in batch.items() if k.endswith("segment_ids")))
        per_token = 6 if self.stage.kind != "dpo" else 8  # DPO: policy fwd + bwd, reference fwd
        return per_token * self.n_params * tokens, tokens

    def checkpoint_meta(self, step: int) -> dict:
        return {"step": step, "stage": dataclasses.asdict(self.stage)}

    def final_params(self):
        """The stage's result on the host: LLM params with LoRA merged."""
        return jax.device_get(llm_params_of(self.state["params"], self.lora))

    def export(self, directory: str) -> None:
        """The stage's result as a Hugging Face Llama directory (safetensors + tokenizer)."""
        save_hf_llama(directory, self.llm_cfg, self.final_params())
        save_tokenizer(self.tok, directory)


def check_stage_dir(workdir: str, stage: StageConfig, init: str, data: DataConfig, lm: lm_data.LMDataConfig,
                    write: bool = False) -> None:
    """A stage directory belongs to one stage setting (num_steps may grow): another is an error, not a silent mix."""
    path = os.path.join(workdir, "stage.json")
    cur = json.loads(json.dumps({"stage": dataclasses.asdict(stage), "init": init, "data": dataclasses.asdict(data),
                                 "lm_data": dataclasses.asdict(lm)}))
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        diff = [f"{sec}.{k}: run has {saved.get(sec, {}).get(k)!r}, given {v!r}" for sec in ("stage", "data", "lm_data")
                for k, v in cur[sec].items() if saved.get(sec, {}).get(k) != v and k != "num_steps"]
        if saved.get("init") != cur["init"]:
            diff.append(f"init: run has {saved.get('init')!r}, given {cur['init']!r}")
        if diff:
            raise ConfigError(f"{workdir} holds another stage setting (" + "; ".join(diff) + "); use a new workdir")
    if write:
        with open(path, "w") as f:
            json.dump(cur, f, indent=1)


def stage_init(pipe: PipelineConfig, index: int) -> str:
    """Where stage `index` starts: the base model, or the previous stage's export (which must exist)."""
    if index == 0:
        return pipe.llm
    prev = pipe.stage_dir(index - 1)
    if not os.path.isfile(os.path.join(prev, "done.json")):
        raise InputError(f"stage {pipe.stages[index].name!r} starts from stage {pipe.stages[index - 1].name!r}, "
                         f"which has not finished (no {prev}/done.json)")
    return os.path.join(prev, "final")


def run_stage(pipe: PipelineConfig, index: int, data: DataConfig, lm: lm_data.LMDataConfig) -> dict:
    """Trains stage `index` to its num_steps (resuming), exports its result, marks it done -> its summary."""
    done = os.path.join(pipe.stage_dir(index), "done.json")
    init = stage_init(pipe, index)
    if os.path.isfile(done):
        check_stage_dir(pipe.stage_dir(index), pipe.stages[index], init, data, lm)
        with open(done) as f:
            return dict(json.load(f), skipped=True)
    trainer = StageTrainer(pipe, index, data, lm, init)
    try:
        last = trainer.run()
        if int(trainer.state["step"]) < trainer.run_cfg.num_steps:  # stopped early (SIGTERM): not done
            return {"stage": trainer.stage.name, "stopped_at": int(trainer.state["step"])}
        final = os.path.join(pipe.stage_dir(index), "final")
        trainer.export(final)
    finally:
        trainer.close()
    summary = {"stage": trainer.stage.name, "kind": trainer.stage.kind, "steps": trainer.run_cfg.num_steps,
               "final": final, "last_metrics": last}
    with open(done + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(done + ".tmp", done)
    return summary


def run_pipeline(pipe: PipelineConfig, data: DataConfig, lm: lm_data.LMDataConfig, only: str = "") -> list[dict]:
    """Every stage in order (finished ones skipped), or only the stage named `only`."""
    if not pipe.stages:
        raise InputError(f"pipeline {pipe.name!r} has no stages (PipelineConfig.stages)")
    names = [s.name for s in pipe.stages]
    if len(set(names)) != len(names):
        raise InputError(f"stage names repeat: {names}")
    if only and only not in names:
        raise InputError(f"no stage {only!r} in pipeline {pipe.name!r} (stages: {names})")
    out = []
    for i, s in enumerate(pipe.stages):
        if only and s.name != only:
            continue
        out.append(run_stage(pipe, i, data, lm))
        if "stopped_at" in out[-1]:
            break
    return out

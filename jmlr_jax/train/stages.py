"""The seed pipelines (PMC-LLaMA: CPT -> SFT; Qilin-Med: CPT -> SFT -> DPO) as chained stages on the JMLR
machinery: the same loop (train/loop.StepLoop), checkpointing, sharding rules, optimizer and LoRA.

    python launch/pipeline.py --gin_file=pipelines/qilin_med.gin

Stage k trains in <workdir>/<k>-<name>/ (checkpoints, metrics.jsonl, stage.json) from the previous stage's final
weights: stage k-1 ends by exporting them (LoRA merged) as a Hugging Face directory <workdir>/<k-1>-<name>/final
(safetensors + tokenizer; loadable by `transformers` and by `load_preset`), then writes done.json. A rerun skips
stages with done.json, resumes an interrupted stage from its checkpoint, and starts the rest. DPO's frozen
reference is the stage's starting model (the SFT result), never updated.

A cloud workdir (gs://bucket/pipeline) works as a run's does (jmlr_jax/workdir.py): orbax writes each stage's
checkpoints there; its other files live in a local mirror (`stage_dir`), uploaded after every checkpoint and
when the stage ends, and fetched before a stage starts, so a pipeline resumes on another machine.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os

import gin
import jax
import numpy as np

from jmlr_jax import checkpoint, parallel
from jmlr_jax.compare.stats import mcnemar, paired_bootstrap
from jmlr_jax.config import ConfigError
from jmlr_jax.convert import load_preset
from jmlr_jax.convert.presets import load_llm_tokenizer
from jmlr_jax.convert.hf import save_hf_llama
from jmlr_jax.data import lm_data, user_records
from jmlr_jax.data.sources import medmcqa_cop_base
from jmlr_jax.data.splits import DataConfig, fingerprint
from jmlr_jax.errors import InputError, StoppedEarly, check_counts
from jmlr_jax.eval import stage_eval
from jmlr_jax.experiment import RunConfig
from jmlr_jax.tokenizers import save_tokenizer
from jmlr_jax import workdir as workdir_lib
from jmlr_jax.workdir import write_text
from jmlr_jax.train.lm_step import LMStepConfigs, lm_train_step
from jmlr_jax.train.loop import StepLoop
from jmlr_jax.train.metrics import lm_step_flops, matmul_params
from jmlr_jax.train.weights import on_mesh, param_shardings, state_shardings
from jmlr_jax.train.state import LoraConfig, OptimConfig, init_lora, make_optimizer, merged_llm_params

KINDS = ("cpt", "sft", "dpo")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StageConfig:
    name: str = "cpt"
    kind: str = "cpt"  # "cpt" (packed text), "sft" (response-only loss), "dpo" (preference pairs)
    num_steps: int = 100
    batch_size: int = 4  # rows per micro-batch
    grad_accum: int = 1  # micro-batches per update (an update sees batch_size x grad_accum rows)
    lr: float = 2e-5
    warmup_steps: int = 0
    decay_steps: int = 0  # cosine to 10% over this many steps; 0 = constant
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 16.0
    dpo_beta: float = 0.1
    # DPO pairs (lm_data): "options" (gold vs a wrong option, same wording), "generated" (gold explanation vs the
    # starting model's own wrong greedy answer to the first `pair_questions` MedMCQA training questions), or
    # "files" (LMDataConfig.pair_files alone; with the other kinds, pair_files are added to theirs)
    pairs: str = "options"
    pair_questions: int = 200

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"StageConfig.kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("num_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"StageConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "warmup_steps", "decay_steps", "lora_rank"):
            if not getattr(self, name) >= 0:  # `not >=` also catches NaN
                raise ValueError(f"StageConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.dpo_beta > 0:
            raise ValueError(f"StageConfig.dpo_beta must be > 0, got {self.dpo_beta}")
        if self.pairs not in lm_data.PAIR_KINDS:
            raise ValueError(f"StageConfig.pairs must be one of {lm_data.PAIR_KINDS}, got {self.pairs!r}")


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

    def __post_init__(self):
        check_counts(self, ("checkpoint_every", "keep_checkpoints"))
        if not isinstance(self.seed, int):
            raise ValueError(f"PipelineConfig: seed={self.seed!r} must be an integer")

    def stage_workdir(self, i: int) -> str:
        """Stage i's workdir as configured (local or cloud): its checkpoints are written here."""
        return os.path.join(self.workdir, f"{i + 1}-{self.stages[i].name}")

    def stage_dir(self, i: int) -> str:
        """Where stage i's files (stage.json, metrics, final/, done.json) are read and written: its workdir, or
        for a cloud workdir this machine's mirror of it."""
        return workdir_lib.local_dir(self.stage_workdir(i))


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
        workdir, self.local = pipe.stage_workdir(index), pipe.stage_dir(index)
        self.run_cfg = run = RunConfig(workdir=workdir, num_steps=stage.num_steps, batch_size=stage.batch_size,
                                       seed=pipe.seed, checkpoint_every=pipe.checkpoint_every,
                                       keep_checkpoints=pipe.keep_checkpoints, llm=init,
                                       llm_overrides=pipe.llm_overrides, mesh_shape=pipe.mesh_shape,
                                       peak_flops_per_device=pipe.peak_flops_per_device, progress=pipe.progress)
        os.makedirs(self.local, exist_ok=True)
        self.source = stage_source(pipe, index)
        check_stage_dir(self.local, stage, self.source, data, lm)  # written once its data are read (below)
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
        param_sh = param_shardings(params, self.llm_cfg, None, self.mesh)
        self.state_sh = state_shardings(params, self.tx, param_sh, self.mesh)
        self.ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), run.keep_checkpoints,
                                            run.async_checkpoint)
        ref = jax.device_put(llm_params, param_sh["llm"]) if stage.kind == "dpo" else None
        data_state, _ = self.init_or_restore(params, self.tx, run.seed, self.state_sh)
        del params, llm_params
        self.data_iter = iter(self._dataset(data, lm, ref))
        check_stage_dir(self.local, stage, self.source, data, lm, data_sha1=self.data_sha1)
        self.batch_axis = 1 if stage.grad_accum > 1 else 0  # [A, B, ...] micro-batches
        if data_state is not None:
            self.data_iter.set_state(data_state)
        models = LMStepConfigs(self.llm_cfg, self.lora, stage.dpo_beta, optim, stage.grad_accum)
        step = jax.jit(functools.partial(lm_train_step, models=models, tx=self.tx,
                                         kind="dpo" if stage.kind == "dpo" else "lm"), donate_argnums=0)
        self.step_fn = (lambda s, b: step(s, b, ref)) if ref is not None else step
        self._n = matmul_params({"llm": self.state["params"]["llm"], "retriever": {}})

    def _dataset(self, data: DataConfig, lm: lm_data.LMDataConfig, start_params=None):
        """The stage's batches: [B, L] leaves, or [A, B, L] with A = grad_accum micro-batches."""
        kind, run, A = self.stage.kind, self.run_cfg, self.stage.grad_accum
        if kind == "cpt":
            train, _ = lm_data.cpt_documents(data, lm)
            self.data_sha1 = fingerprint(train)
            shard = parallel.host_shard()
            pieces = lm_data.cpt_pieces(self.tok, lm_data.host_documents([t for _, t in train], shard), lm.seq_len)
            ds = lm_data.cpt_dataset(pieces, lm.seq_len, run.batch_size, run.seed, hosts=shard[1])
        else:
            items, encode, what = ((lm_data.sft_records(data, lm), lm_data.sft_example, "SFT") if kind == "sft" else
                                   (self._pairs(data, lm, start_params), lm_data.dpo_example, "DPO"))
            self.data_sha1 = fingerprint(items)
            ex = _Examples(items, functools.partial(encode, self.tok, lm), what)
            ds = lm_data.example_dataset(ex, run.batch_size, run.seed, shard=parallel.host_shard())
        return ds.batch(A, drop_remainder=True) if A > 1 else ds

    def _pairs(self, data: DataConfig, lm: lm_data.LMDataConfig, start_params) -> list[user_records.PreferencePair]:
        own = lm_data.file_pairs(data, lm)
        if self.stage.pairs == "files":
            if not own:
                raise InputError("StageConfig.pairs = 'files' needs LMDataConfig.pair_files")
            return own
        if self.stage.pairs == "options":
            return lm_data.dpo_pairs(data, lm) + own
        questions = lm_data.medmcqa_questions(data)[: self.stage.pair_questions]
        return stage_eval.model_pairs(self.llm_cfg, start_params, self.tok, lm, questions,
                                      os.path.join(self.local, "pairs.jsonl")) + own

    def step_stats(self, batch: dict) -> tuple[float, int]:
        tokens = int(sum(np.sum(v > 0) for k, v in batch.items() if k.endswith("segment_ids")))
        return lm_step_flops(self._n, tokens, "lora" if self.stage.lora_rank else "full", self.stage.kind == "dpo"), \
            tokens

    def checkpoint_meta(self, step: int) -> dict:
        return {"step": step, "stage": dataclasses.asdict(self.stage)}

    def final_params(self):
        """The stage's result on the host: LLM params with LoRA merged (gathered from every host: call it on all)."""
        return parallel.host_copy(merged_llm_params(self.state["params"], self.lora))

    def export(self, directory: str) -> None:
        """The stage's result as a Hugging Face Llama directory (safetensors + tokenizer), written by process 0;
        every host calls this and returns once the directory is there."""
        params = self.final_params()
        if workdir_lib.is_lead():
            save_hf_llama(directory, self.llm_cfg, params)
            save_tokenizer(self.tok, directory)
        parallel.barrier(f"export {directory}")


# LMDataConfig fields a stage of each kind never reads: changing them (say, adding SFT files after CPT finished)
# leaves its directory valid. DataConfig.data_dir is a location: the stage's data are checked by their sha1.
LM_FIELDS_UNREAD = {
    "cpt": ("template", "system", "max_records", "sft_files", "pair_files", "builtin_sft"),
    "sft": ("guidelines", "text_heldout_fraction", "text_files", "pair_files"),
    "dpo": ("guidelines", "medquad", "pubmedqa", "medquad_heldout_fraction", "text_heldout_fraction", "text_files",
            "sft_files", "builtin_sft"),
}


def check_stage_dir(workdir: str, stage: StageConfig, init: str, data: DataConfig, lm: lm_data.LMDataConfig,
                    data_sha1: str = "") -> None:
    """A stage directory belongs to one stage setting (num_steps may grow): another is an error, not a silent mix.
    With data_sha1 (the sha1 of the documents / records / pairs the stage reads), that must be the one the stage
    started with, wherever the data now are (DataConfig.data_dir is a location), and stage.json is written."""
    path = os.path.join(workdir, "stage.json")
    cur = json.loads(json.dumps({"stage": dataclasses.asdict(stage), "init": init, "data": dataclasses.asdict(data),
                                 "lm_data": dataclasses.asdict(lm)}))
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        # a field added after the run was saved counts as its default there
        default = {sec: {f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(cls)
                         if f.default is not dataclasses.MISSING}
                   for sec, cls in (("stage", StageConfig), ("data", DataConfig), ("lm_data", lm_data.LMDataConfig))}
        was = lambda sec, k: saved.get(sec, {}).get(k, default[sec].get(k))  # noqa: E731
        unread = {("lm_data", k) for k in LM_FIELDS_UNREAD[stage.kind]} | {("stage", "num_steps"), ("data", "data_dir")}
        diff = [f"{sec}.{k}: run has {was(sec, k)!r}, given {v!r}" for sec in ("stage", "data", "lm_data")
                for k, v in cur[sec].items() if was(sec, k) != v and (sec, k) not in unread
                and not _same_medmcqa_base(sec, k, was(sec, k), data)]
        if saved.get("init") != cur["init"]:
            diff.append(f"init: run has {saved.get('init')!r}, given {cur['init']!r}")
        if diff:
            raise ConfigError(f"{workdir} holds another stage setting (" + "; ".join(diff) + "); use a new workdir")
    if data_sha1:
        was_sha1 = saved.get("data_sha1", data_sha1) if os.path.isfile(path) else data_sha1
        if was_sha1 != data_sha1:
            raise ConfigError(f"{workdir}: the data under {data.data_dir} are not those this stage trained on (sha1 "
                              f"{data_sha1[:12]}, the stage's {was_sha1[:12]}); point DataConfig.data_dir at them")
        write_text(path, json.dumps(dict(cur, data_sha1=data_sha1), indent=1))


def _same_medmcqa_base(sec: str, key: str, saved: object, data: DataConfig) -> bool:
    """A saved MedMCQA answer base and None (the file's own, the default since) read the file alike when the file's
    own is the saved one (runs saved with the former default, 1, resume)."""
    if (sec, key) != ("data", "medmcqa_cop_base") or None not in (saved, data.medmcqa_cop_base):
        return False
    base = saved if data.medmcqa_cop_base is None else data.medmcqa_cop_base
    try:
        return medmcqa_cop_base(data.path(data.medmcqa_file)) == base
    except (OSError, InputError):  # no file to tell: the settings differ
        return False


def stage_source(pipe: PipelineConfig, index: int) -> str:
    """What stage `index` starts from, as its stage.json records it: the base model, or the previous stage's export
    in its workdir (for a cloud pipeline the cloud path, whichever machine's mirror it is loaded from)."""
    return pipe.llm if index == 0 else os.path.join(pipe.stage_workdir(index - 1), "final")


def stage_init(pipe: PipelineConfig, index: int) -> str:
    """Where stage `index` starts: the base model, or the previous stage's export (which must exist)."""
    if index == 0:
        return pipe.llm
    workdir_lib.download(pipe.stage_workdir(index - 1))  # a cloud pipeline on another machine: fetch the export
    prev = pipe.stage_dir(index - 1)
    if not os.path.isfile(os.path.join(prev, "done.json")):
        raise InputError(f"stage {pipe.stages[index].name!r} starts from stage {pipe.stages[index - 1].name!r}, "
                         f"which has not finished (no {prev}/done.json)")
    return os.path.join(prev, "final")


def run_stage(pipe: PipelineConfig, index: int, data: DataConfig, lm: lm_data.LMDataConfig) -> dict:
    """Trains stage `index` to its num_steps (resuming), exports its result, marks it done -> its summary."""
    workdir_lib.download(pipe.stage_workdir(index))  # a cloud stage resumed on another machine (not checkpoints)
    done = os.path.join(pipe.stage_dir(index), "done.json")
    init = stage_init(pipe, index)
    if os.path.isfile(done):
        check_stage_dir(pipe.stage_dir(index), pipe.stages[index], stage_source(pipe, index), data, lm)
        with open(done) as f:
            return dict(json.load(f), skipped=True)
    fresh = not os.path.isfile(os.path.join(pipe.stage_dir(index), "stage.json"))
    try:
        trainer = StageTrainer(pipe, index, data, lm, init)
    except Exception:
        if fresh:  # a stage that never started binds no settings: fixing its input needs no new workdir
            for name in ("stage.json", "pairs.jsonl"):
                with contextlib.suppress(FileNotFoundError):  # another host may have removed it first
                    os.remove(os.path.join(pipe.stage_dir(index), name))
        raise
    try:
        try:
            last = trainer.run()
        except StoppedEarly as e:  # SIGTERM, Ctrl-C: saved, not done
            return {"stage": trainer.stage.name, "stopped_at": e.step, "reason": e.reason}
        final = os.path.join(pipe.stage_dir(index), "final")
        trainer.export(final)
    finally:
        trainer.close()
    summary = {"stage": trainer.stage.name, "kind": trainer.stage.kind, "steps": trainer.run_cfg.num_steps,
               "final": os.path.join(pipe.stage_workdir(index), "final"), "last_metrics": last}
    write_text(done, json.dumps(summary, indent=1))
    if workdir_lib.is_remote(pipe.workdir):  # process 0's mirror holds the export: to the cloud, then to every
        workdir_lib.upload(pipe.stage_workdir(index))  # host's mirror, where the next stage loads it
        parallel.barrier(f"stage {index} uploaded")
        workdir_lib.download(pipe.stage_workdir(index))
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
    parallel.maybe_initialize_distributed()
    workdir_lib.check_shared(pipe.workdir, "PipelineConfig.workdir")
    missing = [f"stage {s.name!r} reads {m}" for i, s in enumerate(pipe.stages)
               if (not only or s.name == only) and not os.path.isfile(os.path.join(pipe.stage_dir(i), "done.json"))
               for m in lm_data.missing_inputs(s.kind, s.pairs, data, lm)]
    if missing:  # the inputs of every stage still to train, before the first trains
        raise InputError(f"not found: {'; '.join(missing)}")
    if lm.template == "chat" and any(s.kind != "cpt" and (not only or s.name == only) for s in pipe.stages):
        lm_data.response_end(lm, load_llm_tokenizer(pipe.llm))  # the chat template renders: checked before any stage
    out = []
    for i, s in enumerate(pipe.stages):
        if only and s.name != only:
            continue
        out.append(run_stage(pipe, i, data, lm))
        if "stopped_at" in out[-1]:
            break
    return out


# ----------------------------------------------------------------------------------------------- evaluation

PAIR_TEXT = {"options": "gold option vs a wrong option, same wording",
             "generated": "gold answer with explanation vs the SFT model's own wrong greedy answer"}


def pipeline_pairs(pipe: PipelineConfig, data: DataConfig, lm: lm_data.LMDataConfig, n: int, load) -> tuple[str, list]:
    """(kind, held-out pairs) of the kind the pipeline's DPO stage trains on: "options" when it has none, trains
    on a user's pair files, or while a "generated" stage's reference model (the stage before it) has not
    finished. load: path -> (cfg, params, tokenizer)."""
    dpo = [i for i, s in enumerate(pipe.stages) if s.kind == "dpo"]
    kind = pipe.stages[dpo[0]].pairs if dpo else "options"
    if kind in ("options", "files"):  # a user's pair files have no held-out part: MedMCQA's option pairs
        return "options", stage_eval.heldout_pairs("options", data, lm, n)
    try:
        ref = stage_init(pipe, dpo[0])
    except InputError as e:
        print(f"held-out pairs of kind 'options': {e}", flush=True)
        return "options", stage_eval.heldout_pairs("options", data, lm, n)
    pairs = stage_eval.heldout_pairs(kind, data, lm, n, load(ref),
                                     os.path.join(pipe.stage_dir(dpo[0]), f"pairs_heldout_{n}.jsonl"))
    workdir_lib.upload(pipe.stage_workdir(dpo[0]))
    return kind, pairs


def _refresh(r: dict, dest: str, path: str, ref: str | None, beta: float, trained: str, kind: str, pairs: list,
             data: DataConfig, lm: lm_data.LMDataConfig, ecfg: stage_eval.StageEvalConfig, load) -> None:
    """Brings a stored result up to date without evaluating it again: pairs of another kind or number are
    rescored, MCQ predictions stored before they were kept are rerun, answers stored before they had per-answer
    ROUGE-L or were cut at the template's stop strings are rescored (`stage_eval.rescore_answers`)."""
    changed = []
    model = functools.cache(lambda: load(path))  # loaded once, and only when a part needs the model
    if r["pairs"].get("kind", "options") != kind or r["pairs"]["n"] != len(pairs):
        cfg, params, tok = model()
        r["pairs"] = stage_eval.pair_scores(cfg, params, load(ref)[1], tok, lm, pairs, kind, beta, ecfg.batch_size)
        changed.append("pairs")
    if ecfg.mcq_per_set and "mcq_predictions" not in r:
        cfg, params, tok = model()
        r.update(stage_eval.mcq_scores(cfg, params, tok, data, ecfg))
        changed.append("MCQ")
    missing = [n for n in stage_eval.mcq_set_names(ecfg) if n not in {m["set"] for m in r.get("mcq", [])}]
    if ecfg.mcq_per_set and missing:  # a set added to the configuration: only it is evaluated
        cfg, params, tok = model()
        new = stage_eval.mcq_scores(cfg, params, tok, data, ecfg, only=missing)
        r["mcq"] += new["mcq"]
        r["mcq_predictions"] += new["mcq_predictions"]
        changed.append(f"MCQ sets {missing}")
    if "rougeL_each" not in r["medquad"] or r["medquad"].get("stop_strings") != list(lm_data.response_stops(lm)):
        refs = {q.id: q.answer for q in stage_eval.held_medquad(data, lm)}
        r["medquad"] = stage_eval.rescore_answers(r["medquad"], refs, lm)
        changed.append("ROUGE")
    if changed:
        r["trained"] = trained
        write_text(dest, json.dumps(r, indent=1))
        print(f"{r['model']}: {', '.join(changed)} rescored", flush=True)


def against_base(results: list[dict]) -> None:
    """Each model against the base, paired over the same questions: ROUGE-L (bootstrap interval) and MCQ
    accuracy per set (McNemar)."""
    base = results[0]
    b_rouge = dict(zip((p["id"] for p in base["medquad"]["predictions"]), base["medquad"]["rougeL_each"]))
    b_mcq = {(p["set"], p["id"]): p["correct"] for p in base.get("mcq_predictions", [])}
    for r in results[1:]:
        mine = dict(zip((p["id"] for p in r["medquad"]["predictions"]), r["medquad"]["rougeL_each"]))
        ids = [i for i in mine if i in b_rouge]
        r["medquad"]["rougeL_vs_base"] = paired_bootstrap([mine[i] for i in ids], [b_rouge[i] for i in ids])
        by_set: dict[str, tuple[list, list]] = {}
        for p in r.get("mcq_predictions", []):
            if (p["set"], p["id"]) in b_mcq:
                a, b = by_set.setdefault(p["set"], ([], []))
                a.append(p["correct"])
                b.append(b_mcq[(p["set"], p["id"])])
        r["mcq_vs_base"] = {name: mcnemar(a, b) for name, (a, b) in by_set.items()}


def evaluate_pipeline(pipe: PipelineConfig, data: DataConfig, lm: lm_data.LMDataConfig,
                      ecfg: stage_eval.StageEvalConfig) -> list[dict]:
    """`stage_eval.evaluate_model` for the base model and every finished stage, each written to
    <workdir>/eval/<model>.json as it ends. A rerun reads those back; a stage retrained since (another done.json)
    is evaluated again, and a stored result is brought up to date part by part (`_refresh`). Each model is
    compared with the base over the same questions (`against_base`)."""
    workdir_lib.check_shared(pipe.workdir, "PipelineConfig.workdir")
    workdir_lib.download(pipe.workdir)  # a cloud pipeline: the stored results (eval/) and the stages' files
    out_dir = workdir_lib.eval_dir(pipe.workdir)
    os.makedirs(out_dir, exist_ok=True)
    models = [("base", pipe.llm, None, 0.1, pipe.llm)]
    for i, s in enumerate(pipe.stages):
        done = os.path.join(pipe.stage_dir(i), "done.json")
        if os.path.isfile(done):
            with open(done, "rb") as f:
                trained = hashlib.sha1(f.read()).hexdigest()
            models.append((s.name, os.path.join(pipe.stage_dir(i), "final"), models[-1][1] if s.kind == "dpo" else None,
                           s.dpo_beta, trained))
        else:  # said, not silent: a table of the base alone reads like a finished pipeline's
            print(f"stage {i + 1} ({s.name}) is not finished in {pipe.workdir}: not evaluated "
                  "(launch/pipeline.py with the same gin trains it)", flush=True)
    mesh = parallel.evaluation_mesh(pipe.mesh_shape)  # each model sharded as its stage trained it

    def load(path: str | None):
        if not path:
            return None, None, None
        cfg, params, tok = load_preset(path, **dict(pipe.llm_overrides))
        return cfg, on_mesh(cfg, params, mesh), tok

    kind, pairs = pipeline_pairs(pipe, data, lm, ecfg.pairs, load)
    results = []
    for name, path, ref, beta, trained in models:
        dest = os.path.join(out_dir, f"{name}.json")
        r = None
        if os.path.isfile(dest):
            with open(dest) as f:
                r = json.load(f)
            if r.get("trained", trained) != trained:  # results written before this field count as current
                r = None
        if r is None:
            cfg, params, tok = load(path)
            r = dict(stage_eval.evaluate_model(name, cfg, params, tok, data, lm, ecfg, load(ref)[1], beta,
                                               (kind, pairs)), path=path, reference=ref, trained=trained)
            write_text(dest, json.dumps(r, indent=1))
            print(f"{name}: done", flush=True)
        else:
            _refresh(r, dest, path, ref, beta, trained, kind, pairs, data, lm, ecfg, load)
        workdir_lib.upload(pipe.workdir)  # a cloud workdir: each model's result as it is written
        results.append(r)
    against_base(results)
    return results

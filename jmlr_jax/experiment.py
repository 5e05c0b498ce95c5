"""The root config of a run: one frozen dataclass per concern, built from gin once (at the launcher) and passed
down explicitly. Saved as `config.json` in the workdir and inside every checkpoint, so resume, evaluation,
`restore_params` and `answer` need only the workdir.

Sections (gin name -> field): RunConfig -> run, DataConfig -> data, CorpusConfig -> corpus, RetrieverConfig ->
retriever, IndexConfig -> index (what an index stores), SearchConfig -> search (how it is searched), JMLRConfig
-> jmlr, OptimConfig -> optim, LoraConfig -> lora, PromptTemplate -> template, Budgets -> budgets.

With a saved run, gin bindings (from files or --gin.X=Y) may change only what does not change what is trained
(`RESUMABLE`: steps, logging, checkpoint cadence, mesh; and for evaluation also the search settings); any other
binding that differs from the saved value is a ConfigError naming the field, never a silent mismatch.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import gin

from jmlr_jax import workdir as workdir_lib
from jmlr_jax.config import ConfigError, one_line
from jmlr_jax.errors import check_counts
from jmlr_jax.data.splits import DataConfig
from jmlr_jax.data.templates import Budgets, PromptTemplate
from jmlr_jax.retrieval.corpus import CorpusConfig
from jmlr_jax.retrieval.encode import RetrieverConfig
from jmlr_jax.retrieval.index import IndexConfig, SearchConfig
from jmlr_jax.train.jmlr_step import JMLRConfig
from jmlr_jax.train.state import LoraConfig, OptimConfig

CONFIG_FILE = "config.json"


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
    async_checkpoint: bool | None = None  # save in the background; None: on accelerators, not on CPU
    refresh_every: int = 0  # re-encode the corpus with the live retriever every N steps; 0 = never
    recall_queries: int = 32  # training questions used to log ScaNN recall vs exact search at each refresh
    initial_index: str = ""  # a prebuilt index (launch/build_index.py) for the initial retriever, if any
    llm: str = "smollm2-135m-instruct"  # preset, HF directory or .gguf
    llm_overrides: tuple = ()  # LlamaConfig fields, e.g. (("dtype", "bfloat16"), ("s2_group_size", 1024))
    mesh_shape: tuple = (-1, 1, 1)  # (data, fsdp, tensor); one -1 takes the remaining devices
    peak_flops_per_device: float = 400e9  # for MFU; this CPU's measured fp32 matmul peak
    progress: bool = True

    def __post_init__(self):
        check_counts(self, ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"),
                     ("refresh_every", "recall_queries"))
        if not isinstance(self.seed, int):
            raise ValueError(f"RunConfig: seed={self.seed!r} must be an integer")


SECTIONS: dict[str, type] = {
    "run": RunConfig, "data": DataConfig, "corpus": CorpusConfig, "retriever": RetrieverConfig,
    "index": IndexConfig, "search": SearchConfig, "jmlr": JMLRConfig, "optim": OptimConfig, "lora": LoraConfig,
    "template": PromptTemplate, "budgets": Budgets,
}
# What a resumed run may change without changing what it trains (section -> fields). The data directory is a
# location (another machine, a cloud mount): the loop checks that it holds the same training questions.
RESUMABLE = {"run": {"workdir", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "async_checkpoint",
                     "mesh_shape", "progress", "peak_flops_per_device"},
             "data": {"data_dir"}}
# Evaluation reads the run's weights and data; it may also search the index differently.
EVALUABLE = {**RESUMABLE, "search": {f.name for f in dataclasses.fields(SearchConfig)}}


@dataclasses.dataclass(frozen=True)
class Experiment:
    run: RunConfig
    data: DataConfig
    corpus: CorpusConfig
    retriever: RetrieverConfig
    index: IndexConfig
    search: SearchConfig
    jmlr: JMLRConfig
    optim: OptimConfig
    lora: LoraConfig
    template: PromptTemplate
    budgets: Budgets

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "Experiment":
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}")
        out = {}
        for name, section in SECTIONS.items():
            fields = {f.name for f in dataclasses.fields(section)}
            values = d.get(name, {})
            extra = set(values) - fields
            if extra:
                raise ConfigError(f"{where}: {section.__name__} has no field(s) {sorted(extra)} (a newer version?)")
            try:
                out[name] = section(**{k: _tuples(v) for k, v in values.items()})
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: {section.__name__}: {e}") from None
        return cls(**out)

    def save(self, workdir: str) -> str:
        """Writes <workdir>/config.json (atomically on a local disk; workdir may be a cloud path)."""
        path = os.path.join(workdir, CONFIG_FILE)
        workdir_lib.write_text(path, json.dumps(self.to_dict(), indent=1))
        return path


def _tuples(v: Any) -> Any:
    """JSON lists back to the tuples the configs hold (gin gives tuples or lists; both compare as tuples)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


def from_gin() -> Experiment:
    """Every section from the parsed gin config (unbound fields keep their defaults)."""
    try:
        return Experiment(**{name: _normalised(section()) for name, section in SECTIONS.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(one_line(e)) from None


def _normalised(cfg):
    """Lists from gin as tuples: one value, one representation (hashable, equal to the JSON round trip)."""
    lists = {f.name: _tuples(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
             if isinstance(getattr(cfg, f.name), list)}
    return dataclasses.replace(cfg, **lists) if lists else cfg


def load(workdir: str) -> Experiment | None:
    """The run saved in `workdir`, or None when it holds none."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not workdir_lib.exists(path):
        return None
    try:
        return Experiment.from_dict(json.loads(workdir_lib.read_text(path)), path)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def require(workdir: str) -> Experiment:
    """The run saved in `workdir` (evaluation, export, answers); on several hosts, one directory they all see."""
    workdir_lib.check_shared(workdir, "workdir")  # a host that cannot see it would fail alone, the others wait
    exp = load(workdir)
    if exp is None:
        raise ConfigError(f"{workdir}: no {CONFIG_FILE}; not a training workdir (train with launch/tpu_train.py)")
    return exp


def merge(saved: Experiment, changeable: dict[str, set[str]]) -> Experiment:
    """`saved` with the gin-bound values applied; a bound value outside `changeable` that differs is an error."""
    sections, conflicts = {}, []
    for name, section in SECTIONS.items():
        current = getattr(saved, name)
        bound = {k: _tuples(v) for k, v in gin.get_bindings(section).items()}
        for k, v in bound.items():
            if k not in changeable.get(name, ()) and v != _tuples(getattr(current, k)):
                conflicts.append(f"{section.__name__}.{k}: run has {getattr(current, k)!r}, given {v!r}")
        allowed = {k: v for k, v in bound.items() if k in changeable.get(name, ())}
        sections[name] = dataclasses.replace(current, **allowed) if allowed else current
    if conflicts:
        raise ConfigError("the command line conflicts with the saved run (" + "; ".join(conflicts) + "); use a new "
                          "workdir, or drop the binding")
    return Experiment(**sections)


def for_training(workdir: str = "") -> Experiment:
    """The launcher's config: the saved run when the workdir has one (bindings may change only RESUMABLE
    fields), else everything from gin. `workdir` (a --workdir flag) overrides RunConfig.workdir."""
    exp = from_gin()
    workdir = workdir or exp.run.workdir
    saved = load(workdir)
    if saved is None:
        return dataclasses.replace(exp, run=dataclasses.replace(exp.run, workdir=workdir))
    out = merge(saved, RESUMABLE)
    return dataclasses.replace(out, run=dataclasses.replace(out.run, workdir=workdir))


def for_evaluation(workdir: str) -> Experiment:
    """A trained run's config from its workdir; bindings may change only EVALUABLE fields."""
    out = merge(require(workdir), EVALUABLE)
    return dataclasses.replace(out, run=dataclasses.replace(out.run, workdir=workdir))

"""A run's weights: the base models it starts from, and the trained ones restored from its workdir alone."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax

from jmlr_jax import checkpoint, experiment
from jmlr_jax.convert import load_preset
from jmlr_jax.experiment import Experiment
from jmlr_jax.retrieval.encode import retriever_preset
from jmlr_jax.train.state import init_lora, init_train_state, make_optimizer, merged_llm_params


def base_params(exp: Experiment, lora: bool = True):
    """The run's starting point: (llm cfg, tokenizer, retriever cfg, ColBERT tokenizer, params) with
    params = {"llm", "retriever"[, "lora"]} (LoRA adapters when the run uses them and `lora`)."""
    llm_cfg, llm_params, tok = load_preset(exp.run.llm, **dict(exp.run.llm_overrides))
    rcfg, r_params, ctok = retriever_preset(exp.retriever)
    params = {"llm": llm_params, "retriever": r_params}
    if lora and exp.lora.rank:
        params["lora"] = init_lora(llm_params, exp.lora, jax.random.PRNGKey(exp.run.seed + 1))
    return llm_cfg, tok, rcfg, ctok, params


def abstract_state(params, tx, seed: int, shardings=None):
    """ShapeDtypeStructs of the train state on `shardings` (default: the first device): the restore target."""
    shapes = jax.eval_shape(functools.partial(init_train_state, tx=tx, seed=seed), params)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: device, shapes)
    return jax.tree_util.tree_map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), shapes, shardings)


@dataclasses.dataclass(frozen=True)
class Restored:
    """Trained weights of a run, on one device, LoRA merged."""

    exp: Experiment
    llm_cfg: Any
    tok: Any
    llm_params: Any
    rcfg: Any
    ctok: Any
    r_params: Any
    meta: dict


def restore_params(workdir: str, step: int | None = None, exp: Experiment | None = None) -> Restored:
    """The latest (or given) checkpoint of the run in `workdir`; its config comes from the workdir
    (config.json), so no training gin file is needed. `exp`: that config with evaluation-time changes."""
    exp = exp or experiment.require(workdir)
    llm_cfg, tok, rcfg, ctok, params = base_params(exp)
    tx = make_optimizer(params, exp.optim)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        state, _, meta = ckpt.restore(abstract_state(params, tx, exp.run.seed), step)
    finally:
        ckpt.close()
    trained = state["params"]
    return Restored(exp, llm_cfg, tok, merged_llm_params(trained, exp.lora), rcfg, ctok, trained["retriever"], meta)

"""A run's weights: the base models it starts from, and the trained ones restored from its workdir alone."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jmlr_jax import checkpoint, experiment, parallel
from jmlr_jax.convert import load_preset
from jmlr_jax.experiment import Experiment
from jmlr_jax.models import colbert as colbert_lib, llama as llama_lib
from jmlr_jax.retrieval.encode import retriever_preset
from jmlr_jax.train.state import init_lora, init_train_state, lora_logical_axes, make_optimizer, merged_llm_params


def base_params(exp: Experiment, lora: bool = True):
    """The run's starting point: (llm cfg, tokenizer, retriever cfg, ColBERT tokenizer, params) with
    params = {"llm", "retriever"[, "lora"]} (LoRA adapters when the run uses them and `lora`)."""
    llm_cfg, llm_params, tok = load_preset(exp.run.llm, **dict(exp.run.llm_overrides))
    rcfg, r_params, ctok = retriever_preset(exp.retriever)
    params = {"llm": llm_params, "retriever": r_params}
    if lora and exp.lora.rank:
        params["lora"] = init_lora(llm_params, exp.lora, jax.random.PRNGKey(exp.run.seed + 1))
    return llm_cfg, tok, rcfg, ctok, params


def param_shardings(params, llm_cfg, rcfg, mesh):
    """Shardings of {"llm"[, "retriever"][, "lora"]} params by their logical axes (rcfg: None without a
    retriever)."""
    logical = {"llm": llama_lib.logical_axes(llm_cfg)}
    if "retriever" in params:
        logical["retriever"] = colbert_lib.logical_axes(rcfg)
    if "lora" in params:
        logical["lora"] = lora_logical_axes(logical["llm"], params["lora"])
    shapes = jax.eval_shape(lambda: params)
    return {k: parallel.tree_shardings(logical[k], shapes[k], mesh) for k in logical}


def state_shardings(params, tx, param_sh, mesh) -> dict:
    """Shardings of the train state: params as given, optimizer moments like their params, the rest replicated."""
    replicated = NamedSharding(mesh, P())
    opt_sh = parallel.like_params_shardings(jax.eval_shape(tx.init, params), param_sh, jax.eval_shape(lambda: params),
                                            mesh)
    return {"step": replicated, "params": param_sh, "opt_state": opt_sh, "rng": replicated}


def on_mesh(llm_cfg, llm_params, mesh: Mesh):
    """LLM params placed on `mesh` by their logical axes, as training places them (FSDP, tensor parallel):
    evaluation on them splits each batch over the mesh (`parallel.call_on_mesh`) and no device holds the whole
    model, so a model larger than one chip evaluates where it trained."""
    return jax.device_put(llm_params, param_shardings({"llm": llm_params}, llm_cfg, None, mesh)["llm"])


def abstract_state(params, tx, seed: int, shardings=None):
    """ShapeDtypeStructs of the train state on `shardings` (default: the first device): the restore target."""
    shapes = jax.eval_shape(functools.partial(init_train_state, tx=tx, seed=seed), params)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: device, shapes)
    return jax.tree_util.tree_map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), shapes, shardings)


@dataclasses.dataclass(frozen=True)
class Restored:
    """Trained weights of a run, LoRA merged: on one device, or the LLM's on a mesh (`restore_params`); the
    retriever's on the host."""

    exp: Experiment
    llm_cfg: Any
    tok: Any
    llm_params: Any
    rcfg: Any
    ctok: Any
    r_params: Any
    meta: dict


def restore_params(workdir: str, step: int | None = None, exp: Experiment | None = None,
                   mesh: Mesh | None = None) -> Restored:
    """The latest (or given) checkpoint of the run in `workdir`; its config comes from the workdir
    (config.json), so no training gin file is needed. `exp`: that config with evaluation-time changes. `mesh`:
    restored straight onto it, sharded as training shards it (no device ever holds the whole state), the LLM
    left there (`on_mesh`) and the retriever brought to the host; default: the first device."""
    exp = exp or experiment.require(workdir)
    llm_cfg, tok, rcfg, ctok, params = base_params(exp)
    tx = make_optimizer(params, exp.optim)
    shardings = None if mesh is None else state_shardings(params, tx, param_shardings(params, llm_cfg, rcfg, mesh),
                                                          mesh)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        state, _, meta = ckpt.restore(abstract_state(params, tx, exp.run.seed, shardings), step)
    finally:
        ckpt.close()
    trained = state["params"]
    r_params = trained["retriever"] if mesh is None else parallel.host_copy(trained["retriever"])
    return Restored(exp, llm_cfg, tok, merged_llm_params(trained, exp.lora), rcfg, ctok, r_params, meta)


def restore_on_training_mesh(workdir: str, step: int | None = None) -> Restored:
    """`restore_params` onto the mesh the run trained on (`parallel.evaluation_mesh` of its mesh_shape), as
    evaluation restores: a 7B state with its Adam moments need not fit one device."""
    exp = experiment.require(workdir)
    return restore_params(workdir, step, exp=exp, mesh=parallel.evaluation_mesh(exp.run.mesh_shape))

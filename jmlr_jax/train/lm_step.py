"""Train steps of the seed pipelines, on the same state, optimizer and sharding as the JMLR step:
next-token training (continued pre-training on packed text, instruction tuning on response tokens) and DPO.

Batches (numpy / jax arrays, B rows of L tokens):
  lm:  tokens, segment_ids (0 = padding; packing gives each document its own id), positions, weights
       (1 where the token is a target: a document's tokens after its first for CPT, the response for SFT)
  dpo: chosen_* and rejected_* with the same four fields (prompt + response; weights on the response)
State: {"step", "params", "opt_state", "rng"} as in train/state.py. DPO's frozen reference is a separate,
never-updated parameter tree passed to the step (not part of the state, so it is never checkpointed or
trained); its log-probs are computed in the same jitted step under stop_gradient.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jmlr_jax.models.llama import Llama, LlamaConfig
from jmlr_jax.train.losses import chunked_cross_entropy, chunked_token_nll, dpo_loss, output_kernel
from jmlr_jax.train.state import (LoraConfig, OptimConfig, llm_params_of, param_groups, stop_frozen,
                                   summed_over_micro_batches, trained_norm)


@dataclasses.dataclass(frozen=True)
class LMStepConfigs:
    """The static configs the jitted step is specialised on (hashable)."""

    llm: LlamaConfig
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    dpo_beta: float = 0.1
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)  # which leaves are trained
    grad_accum: int = 1  # micro-batches per update (the batch carries a leading [grad_accum] axis)


def _lm_inputs(cfg: LlamaConfig, llm_params, seq: dict, prefix: str = "") -> tuple:
    """(final hidden at positions 0..L-2, output kernel, targets, weights): the next-token loss's arguments."""
    g = lambda k: seq[prefix + k]  # noqa: E731
    hidden = Llama(cfg).apply({"params": llm_params}, g("tokens"), positions_BxL=g("positions"),
                              segment_ids_BxL=g("segment_ids"), train=True, return_hidden=True)
    return hidden[:, :-1], output_kernel(cfg, llm_params), g("tokens")[:, 1:], g("weights")[:, 1:]


def token_nll(cfg: LlamaConfig, llm_params, seq: dict, prefix: str = "") -> jax.Array:
    """[B, L-1] NLL of tokens 1.. given their prefix (0 where weights are 0), never a [B, L, V] logits tensor."""
    return chunked_token_nll(*_lm_inputs(cfg, llm_params, seq, prefix), dtype=cfg.dtype)


def lm_loss(params, batch: dict, m: LMStepConfigs, n_total: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Mean NLL over the batch's target tokens (token-weighted: long documents count by their length); the fused
    cross-entropy (its gradients computed in the forward pass: one projection matmul fewer). n_total: the
    update's target-token count when this batch is one of its micro-batches; the loss is then this micro-batch's
    share of the update's mean (the shares sum to it)."""
    total, n = chunked_cross_entropy(*_lm_inputs(m.llm, llm_params_of(params, m.lora), batch), dtype=m.llm.dtype)
    loss = total / jnp.maximum(n if n_total is None else n_total, 1.0)
    return loss, {"loss": loss, "lm_loss": loss, "target_tokens": n}


def sequence_logprob(cfg: LlamaConfig, llm_params, batch: dict, prefix: str) -> jax.Array:
    """[B] sum of log p over each row's weighted (response) tokens."""
    return -jnp.sum(token_nll(cfg, llm_params, batch, prefix), axis=-1)


def dpo_step_loss(params, batch: dict, ref_params, m: LMStepConfigs) -> tuple[jax.Array, dict]:
    """DPO (sigmoid loss, beta from config): policy vs the frozen reference on chosen and rejected responses."""
    policy = llm_params_of(params, m.lora)
    ref = jax.lax.stop_gradient(ref_params)
    pc, pr = sequence_logprob(m.llm, policy, batch, "chosen_"), sequence_logprob(m.llm, policy, batch, "rejected_")
    rc = sequence_logprob(m.llm, ref, batch, "chosen_")
    rr = sequence_logprob(m.llm, ref, batch, "rejected_")
    losses, metrics = dpo_loss(pc, pr, rc, rr, m.dpo_beta)
    loss = jnp.mean(losses)
    return loss, {"loss": loss, **{k: jnp.mean(v) for k, v in metrics.items()}}


def lm_train_step(state: dict[str, Any], batch: dict, ref_params=None, *, models: LMStepConfigs,
                  tx: optax.GradientTransformation, kind: str = "lm"):
    """One update: kind "lm" (CPT / SFT) or "dpo" (needs ref_params). Pure; jit it with shardings. With
    models.grad_accum = A > 1 the batch leaves are [A, B, ...] and the update is the whole A x B batch's: the LM
    loss token-weighted over all micro-batches, DPO's the mean over all rows."""
    A = models.grad_accum
    if kind == "lm":
        n_total = jnp.sum(batch["weights"][..., 1:].astype(jnp.float32)) if A > 1 else None
        loss_fn = lambda p, b: lm_loss(p, b, models, n_total)  # noqa: E731
    elif kind == "dpo":
        if ref_params is None:
            raise ValueError("a DPO step needs the reference model's params")
        loss_fn = lambda p, b: dpo_step_loss(p, b, ref_params, models)  # noqa: E731
    else:
        raise ValueError(f"step kind must be 'lm' or 'dpo', got {kind!r}")
    labels = param_groups(state["params"], models.optim)
    grad_fn = jax.value_and_grad(lambda p, b: loss_fn(stop_frozen(p, labels), b), has_aux=True)
    (_, metrics), grads = summed_over_micro_batches(grad_fn, state["params"], batch, A)
    if A > 1 and kind == "dpo":  # row means: the mean of the micro-batches' is the whole batch's
        grads, metrics = jax.tree_util.tree_map(lambda x: x / A, (grads, metrics))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, grad_norm=trained_norm(grads, labels))
    return dict(state, step=state["step"] + 1, params=params, opt_state=opt_state), metrics

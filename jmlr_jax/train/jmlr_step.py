"""The fused JMLR train step: retriever scores -> sampled LLM scoring -> rank loss + generator LM loss.

One function of (state, batch) under one `jax.jit`:
 1. s [B, C]: live ColBERT MaxSim of the question against its C candidates (gradients reach the retriever).
 2. s_hat: min-max rescaled to [-1, 1], guarded when max == min (the reference divides by zero there).
 3. S candidates sampled without replacement from softmax(s_hat / tau) by Gumbel top-k (no gradient).
 4. l [B, S]: the LLM's mean answer-token loss with each sampled document alone as context: one batched
    forward pass under stop_gradient.
 5. Rank loss. "ranknet": over ordered pairs i != j of sampled docs, BCE(sigmoid(s_hat_i - s_hat_j),
    [l_j > l_i], 1/2 for ties within 1e-5 nats); "kl": KL(softmax(-l / beta) || softmax(s_hat / tau)) over
    the sampled docs (Atlas PDist); with in_batch_negatives the retriever's softmax also spans the other
    questions' candidates in the batch (target 0; none of the question's own candidates), rescaled by the
    question's own min and span.
 6. Generator: the top-K docs by s, best last (right before the question); LM loss on answer tokens only.
 7. loss = lm + lambda * rank; one optax update over both models (groups in train/state.py).
Losses are per-example means, averaged over the batch, so a batch of 2 gives the mean of two batch-1
gradients. The baselines are the same step with parts switched off (at trace time, so they cost nothing):
rank_weight=0 skips 3-5 and scores candidates without gradients (classic RAG: retriever frozen, top-K fed);
num_docs=0 as well feeds no documents (plain fine-tuning on question -> answer). Gradient accumulation scans over micro-batches inside the same jitted step.

Batch (numpy/jax arrays; B examples, C candidates):
  example_id [B] (seeds the per-example Gumbel noise: sampling does not depend on batch composition)
  r_q_ids, r_q_mask [B, Lqr]; r_d_ids, r_d_mask, r_d_keep [B, C, Ldr]    retriever inputs
  docs, docs_valid [B, C, Ld]; question, question_valid [B, Lq] (right-aligned); answer, answer_valid [B, La]
  bos, bos_valid [B, 0 or 1]                                              generator blocks (data/templates.py)
  optional: r_d_emb [B, C, Ldr, dim] (frozen document side, replaces r_d_ids / r_d_mask);
            doc_losses [B, C] (JMLRConfig.cached_doc_losses)
            candidates [B, C] int (corpus index of each candidate; JMLRConfig.in_batch_negatives)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

from jmlr_jax.models.colbert import ColBERT, ColBERTConfig, maxsim
from jmlr_jax.models.llama import LlamaConfig
from jmlr_jax.train.losses import answer_nll, kl_rank_loss, normalize_scores, ranknet_loss
from jmlr_jax.train.state import (LoraConfig, OptimConfig, llm_params_of, param_groups, stop_frozen,
                                   summed_over_micro_batches, trained_norm)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class JMLRConfig:
    num_candidates: int = 30  # C: retrieved per question (the reference code: 20)
    num_sampled: int = 10  # S: scored by the LLM for the rank loss (reference: 10)
    num_docs: int = 7  # K: fed to the generator (reference: 5); 0 = no retrieval (needs rank_weight=0)
    rank_weight: float = 1.0  # lambda; 0 = no rank loss, no scoring pass, retriever not trained
    tau: float = 1.0  # sampling temperature on s_hat
    rank_loss: str = "ranknet"  # or "kl"
    kl_beta: float = 1.0  # temperature of the LLM posterior softmax(-l / beta) for rank_loss="kl"
    grad_accum: int = 1  # micro-batches per update (the batch carries a leading [grad_accum] axis)
    compact: bool = True  # gather valid tokens to the front before the LLM (bench/train_throughput.py measures)
    # Generator frozen, its answer loss with each candidate precomputed (batch["doc_losses"] [B, C]): the step
    # trains only the retriever and runs no LLM (retriever-only JMLR, the RePlug-style ablation).
    cached_doc_losses: bool = False
    # Rank loss only: the other questions' candidates in the batch as negatives of each question (target 0 in the
    # KL; a passage among the question's own candidates never is one). Needs batch["candidates"].
    in_batch_negatives: bool = False

    def __post_init__(self):
        if not 1 <= self.num_sampled <= self.num_candidates or not 0 <= self.num_docs <= self.num_candidates:
            raise ValueError(f"need 1 <= num_sampled <= num_candidates and 0 <= num_docs <= num_candidates; got {self}")
        if self.num_docs == 0 and self.rank_weight:
            raise ValueError("num_docs=0 (no retrieval) needs rank_weight=0: the rank loss trains the retriever "
                             "for documents the generator reads")
        if self.cached_doc_losses and not self.rank_weight:
            raise ValueError("cached_doc_losses trains only the retriever: it needs rank_weight > 0")
        if self.rank_loss not in ("ranknet", "kl"):
            raise ValueError(f"rank_loss must be 'ranknet' or 'kl', got {self.rank_loss!r}")
        if self.in_batch_negatives and (self.rank_loss != "kl" or not self.rank_weight):
            raise ValueError("in_batch_negatives extends the KL rank loss: it needs rank_loss='kl' and rank_weight > 0")


@dataclasses.dataclass(frozen=True)
class StepConfigs:
    """The static configs the jitted step is specialised on (hashable: part of the jit cache key)."""

    llm: LlamaConfig
    retriever: ColBERTConfig
    jmlr: JMLRConfig
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)  # which leaves are trained


def retriever_scores(rcfg: ColBERTConfig, rparams, batch, all_pairs: bool = False) -> jax.Array:
    """Live MaxSim of each question against its candidates: [B, C]; with all_pairs against every question's
    candidates in the batch: [B, B, C] (row b, block b' = question b against b''s candidates).

    With `r_d_emb` [B, C, Ld, dim] in the batch the document side is frozen: the candidates' token vectors come
    from the index (built by the base encoder) and only the query encoder is live, so the index never goes stale.
    """
    model = ColBERT(rcfg)
    Q = model.apply({"params": rparams}, batch["r_q_ids"], batch["r_q_mask"], method="encode_query")
    keep = batch["r_d_keep"]
    B, C, Ld = keep.shape
    if "r_d_emb" in batch:
        D = batch["r_d_emb"]
    else:
        flat = lambda x: x.reshape(B * C, Ld)  # noqa: E731
        D = model.apply({"params": rparams}, flat(batch["r_d_ids"]), flat(batch["r_d_mask"]), flat(keep),
                        method="encode_doc").reshape(B, C, Ld, -1)
    if not all_pairs:
        return maxsim(Q, D, keep)
    every = lambda x: jnp.broadcast_to(x.reshape(1, B * C, *x.shape[2:]), (B, B * C, *x.shape[2:]))  # noqa: E731
    return maxsim(Q, every(D), every(keep)).reshape(B, B, C)


def _take(x_BxCx, idx_BxK):
    return jnp.take_along_axis(x_BxCx, idx_BxK.reshape(*idx_BxK.shape, *([1] * (x_BxCx.ndim - 2))), axis=1)


def jmlr_loss(params, batch, rng, m: StepConfigs) -> tuple[jax.Array, dict]:
    """Total loss and metrics for one (micro-)batch."""
    j = m.jmlr
    B, C = batch["docs"].shape[:2]
    if C != j.num_candidates:
        raise ValueError(f"batch has {C} candidates per question, config says num_candidates={j.num_candidates}")
    llm_params = llm_params_of(params, m.lora)
    prefix = [(batch["bos"], batch["bos_valid"])]
    metrics = {}
    rank = jnp.zeros((B,), jnp.float32)
    if j.num_docs or j.rank_weight:
        # 1: live retriever scores (no gradient unless the rank loss trains the retriever).
        s = retriever_scores(m.retriever, params["retriever"], batch, all_pairs=j.in_batch_negatives)
        if not j.rank_weight:
            s = jax.lax.stop_gradient(s)
        s_all, s = (s, s[jnp.arange(B), jnp.arange(B)]) if j.in_batch_negatives else (None, s)
        metrics["retriever_score_mean"] = jnp.mean(s)
    if j.rank_weight:
        rank, rank_metrics = _rank_loss(llm_params, batch, s, rng, m, s_all)
        metrics.update(rank_metrics)
    if j.cached_doc_losses:  # the generator is frozen: no LM loss to train
        loss = jnp.mean(rank)
        return loss, {"loss": loss, "rank_loss": loss, **metrics}
    if j.num_docs:
        # 6: generator on the top-K docs by live retriever score, best doc last.
        _, top = jax.lax.top_k(jax.lax.stop_gradient(s), j.num_docs)  # descending
        best_last = top[:, ::-1]
        prefix.append((_take(batch["docs"], best_last).reshape(B, -1),
                       _take(batch["docs_valid"], best_last).reshape(B, -1)))
    lm = answer_nll(m.llm, llm_params, prefix + [(batch["question"], batch["question_valid"])],
                    batch["answer"], batch["answer_valid"], train=True, compact=j.compact)
    loss = jnp.mean(lm) + j.rank_weight * jnp.mean(rank)
    return loss, {"loss": loss, "lm_loss": jnp.mean(lm), "rank_loss": jnp.mean(rank), **metrics}


def _rank_loss(llm_params, batch, s, rng, m: StepConfigs, s_all=None) -> tuple[jax.Array, dict]:
    """Steps 2-5: normalise, sample S candidates, score them with the frozen LLM, rank loss [B] + metrics.
    s_all [B, B, C]: every question against every candidate in the batch (in_batch_negatives)."""
    j = m.jmlr
    B, C = batch["docs"].shape[:2]
    s_hat = normalize_scores(s)
    keys = jax.vmap(lambda e: jax.random.fold_in(rng, e))(batch["example_id"])
    gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (C,)))(keys)
    _, sampled = jax.lax.top_k(jax.lax.stop_gradient(s_hat) / j.tau + gumbel, j.num_sampled)  # [B, S]

    # 4: per-document answer losses with the LLM frozen for this pass; S sequences per example in one batch.
    S = j.num_sampled
    if j.cached_doc_losses:
        l = jnp.take_along_axis(batch["doc_losses"], sampled, axis=1)
    else:
        rep = lambda x: jnp.repeat(x, S, axis=0)  # noqa: E731  [B, ...] -> [B*S, ...]
        sd = _take(batch["docs"], sampled).reshape(B * S, -1)
        sv = _take(batch["docs_valid"], sampled).reshape(B * S, -1)
        l = answer_nll(m.llm, jax.lax.stop_gradient(llm_params),
                       [(rep(batch["bos"]), rep(batch["bos_valid"])), (sd, sv),
                        (rep(batch["question"]), rep(batch["question_valid"]))],
                       rep(batch["answer"]), rep(batch["answer_valid"]), train=True, compact=j.compact).reshape(B, S)
    l = jax.lax.stop_gradient(l)

    # 5: rank loss on the sampled docs' normalised scores.
    s_hat_S = jnp.take_along_axis(s_hat, sampled, axis=1)
    negatives = {}
    if j.in_batch_negatives:
        if "candidates" not in batch:
            raise ValueError("in_batch_negatives needs batch['candidates'] [B, C] (each candidate's corpus index)")
        cand = batch["candidates"]
        own = jnp.any(cand[None, :, :, None] == cand[:, None, None, :], axis=-1)  # [B, B', C]: in b's own list
        valid = ~jnp.eye(B, dtype=bool)[:, :, None] & ~own
        negatives = {"neg_BxN": normalize_scores(s_all.reshape(B, B * C), ref_BxR=s),
                     "neg_valid_BxN": valid.reshape(B, B * C)}
    rank = (ranknet_loss(s_hat_S, l) if j.rank_loss == "ranknet"
            else kl_rank_loss(s_hat_S, l, j.tau, j.kl_beta, **negatives))
    # Agreement: fraction of sampled pairs the retriever orders like the LLM (lower loss = better doc).
    pair = (l[:, None, :] != l[:, :, None]) & ~jnp.eye(S, dtype=bool)
    agree = (jnp.sign(s_hat_S[:, :, None] - s_hat_S[:, None, :]) == jnp.sign(l[:, None, :] - l[:, :, None])) & pair
    metrics = {"agreement": jnp.sum(agree) / jnp.maximum(jnp.sum(pair), 1),
               "doc_loss_spread": jnp.mean(jnp.max(l, 1) - jnp.min(l, 1))}
    if j.in_batch_negatives:
        metrics["negatives"] = jnp.sum(negatives["neg_valid_BxN"]) / B
    return rank, metrics


def train_step(state: dict[str, Any], batch: dict, *, models: StepConfigs, tx: optax.GradientTransformation):
    """state = {"step", "params", "opt_state", "rng"} -> (new state, metrics). Pure; jit it with shardings."""
    rng = jax.random.fold_in(state["rng"], state["step"])
    labels = param_groups(state["params"], models.optim)
    grad_fn = jax.value_and_grad(lambda p, b: jmlr_loss(stop_frozen(p, labels), b, rng, models), has_aux=True)
    A = models.jmlr.grad_accum
    (_, metrics), grads = summed_over_micro_batches(grad_fn, state["params"], batch, A)
    if A > 1:  # per-example means: the mean of the micro-batches' is the whole batch's
        grads, metrics = jax.tree_util.tree_map(lambda x: x / A, (grads, metrics))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, grad_norm=trained_norm(grads, labels))
    return dict(state, step=state["step"] + 1, params=params, opt_state=opt_state), metrics

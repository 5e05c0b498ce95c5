"""The losses: the retriever's rank losses over LLM-scored documents, the answer NLL of assembled sequences,
and language-model cross-entropy that never holds a [B, L, vocab] fp32 logits tensor.

With Llama-3's 128k vocabulary, fp32 logits for 8 x 8192 tokens are 34 GB (more than an 8B model in bf16),
and autodiff keeps them plus the softmax for the backward pass. Both cross-entropies here project `chunk`
tokens at a time inside a `lax.scan`, so no pass holds more than one [chunk, vocab] block:
- `chunked_token_nll` (per-token NLL, any downstream use) rematerialises each chunk's logits in the backward
  pass: 4 projection matmuls per chunk (forward, recompute, d hidden, d kernel).
- `chunked_cross_entropy` (a weighted sum: the LM loss) knows its cotangent is one scalar, so its forward pass
  under autodiff also computes the gradients (a fused linear cross-entropy, as Liger-Kernel's) and the
  backward pass only scales them: 3 matmuls and one softmax per chunk; it keeps d hidden and a [D, V] fp32
  d kernel between the passes instead of nothing.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jmlr_jax import parallel
from jmlr_jax.data.templates import assemble, compact_sequence
from jmlr_jax.models.llama import Llama, LlamaConfig


def output_kernel(cfg, llm_params) -> jax.Array:
    """[D, V]: the LM head, or the transposed embedding when they are tied."""
    return llm_params["embed"]["embedding"].T if cfg.tie_word_embeddings else llm_params["lm_head"]["kernel"]


def _chunked(hidden_BxLxD: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array, chunk: int):
    """[n, chunk, D] hidden, [n, chunk] int32 targets and fp32 weights over the flattened tokens; the ragged
    end is padded with weight 0."""
    B, L, D = hidden_BxLxD.shape
    N = B * L
    chunk = min(chunk, N)
    pad = -N % chunk
    flat = lambda x: jnp.pad(x.reshape(N, *x.shape[2:]), [(0, pad)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    return (flat(hidden_BxLxD).reshape(-1, chunk, D), flat(targets_BxL.astype(jnp.int32)).reshape(-1, chunk),
            flat(weights_BxL.astype(jnp.float32)).reshape(-1, chunk))


def _chunk_logits(h_c: jax.Array, w: jax.Array, dtype) -> jax.Array:
    return jnp.einsum("nd,dv->nv", h_c.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _chunk_nll(logits: jax.Array, t_c: jax.Array) -> jax.Array:
    """Unweighted NLL of each row's target."""
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, t_c[:, None], axis=-1)[:, 0]


def chunked_token_nll(hidden_BxLxD: jax.Array, w_DxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array,
                      *, chunk: int = 2048, dtype=jnp.float32) -> jax.Array:
    """Per-token next-token NLL [B, L] (0 where weights are 0); logits in fp32, `chunk` tokens at a time.

    hidden is the final-norm output at the positions that predict `targets` (shift before calling).
    Matmul inputs are cast to `dtype` (the model's compute dtype) with fp32 accumulation.
    """
    B, L, _ = hidden_BxLxD.shape
    h, t, wt = _chunked(hidden_BxLxD, targets_BxL, weights_BxL, chunk)

    @jax.checkpoint  # the backward pass recomputes this chunk's logits instead of storing them
    def body(carry, xs):
        h_c, t_c, wt_c = xs
        return carry, _chunk_nll(_chunk_logits(h_c, w_DxV, dtype), t_c) * wt_c

    _, nll = jax.lax.scan(body, None, (h, t, wt))
    return nll.reshape(-1)[:B * L].reshape(B, L)


def chunked_cross_entropy(hidden_BxLxD: jax.Array, w_DxV: jax.Array, targets_BxL: jax.Array,
                          weights_BxL: jax.Array, *, chunk: int = 2048,
                          dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Weighted next-token NLL: (sum of weight * nll, sum of weights), arguments as `chunked_token_nll`'s.
    Differentiable in hidden, the kernel and the weights, with the gradients computed in the forward pass."""
    h, t, wt = _chunked(hidden_BxLxD, targets_BxL, weights_BxL, chunk)
    return _fused_ce(h, w_DxV, t, wt, jnp.dtype(dtype)), jnp.sum(weights_BxL.astype(jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_ce(h, w, t, wt, dtype):
    """Sum of wt * nll over [n, chunk] tokens (without autodiff: no gradient work)."""
    def body(total, xs):
        h_c, t_c, wt_c = xs
        return total + jnp.sum(_chunk_nll(_chunk_logits(h_c, w, dtype), t_c) * wt_c), None

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, t, wt))[0]


def _fused_ce_fwd(h, w, t, wt, dtype):
    V = w.shape[1]

    def body(carry, xs):
        total, dw = carry
        h_c, t_c, wt_c = xs
        logits = _chunk_logits(h_c, w, dtype)
        # The softmax's row sums as a product with a ones vector (HIGHEST: fp32 on TPUs too): XLA:CPU's reduce
        # fusion over a [chunk, vocab] block took ~4x as long (2026-12-02 profile; this loss 2.3 -> 1.9 s).
        mx = jnp.max(logits, axis=-1)
        e = jnp.exp(logits - mx[:, None])
        total_c = jnp.dot(e, jnp.ones((V,), jnp.float32), precision=jax.lax.Precision.HIGHEST)
        nll = mx + jnp.log(total_c) - jnp.take_along_axis(logits, t_c[:, None], axis=-1)[:, 0]
        # d(sum wt * nll)/d logits = wt * (softmax - onehot(target))
        dlogits = e * (wt_c / total_c)[:, None] - jax.nn.one_hot(t_c, V, dtype=jnp.float32) * wt_c[:, None]
        dlogits = dlogits.astype(dtype)
        dh_c = jnp.einsum("nv,dv->nd", dlogits, w.astype(dtype), preferred_element_type=jnp.float32)
        dw = dw + jnp.einsum("nd,nv->dv", h_c.astype(dtype), dlogits, preferred_element_type=jnp.float32)
        return (total + jnp.sum(nll * wt_c), dw), (dh_c.astype(h.dtype), nll)

    init = (jnp.zeros((), jnp.float32), jnp.zeros(w.shape, jnp.float32))
    (total, dw), (dh, nll) = jax.lax.scan(body, init, (h, t, wt))
    return total, (dh, dw.astype(w.dtype), nll)


def _fused_ce_bwd(dtype, res, g):
    dh, dw, nll = res
    return g * dh, g * dw, None, g * nll


_fused_ce.defvjp(_fused_ce_fwd, _fused_ce_bwd)


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array,
             beta: float) -> tuple[jax.Array, dict]:
    """DPO's sigmoid loss per pair [B] (Rafailov et al. 2023, eq. 7) from summed response log-probs, and the
    implicit rewards beta * (log pi - log pi_ref) of both responses, their margin and the reward accuracy."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    loss = -jax.nn.log_sigmoid(chosen - rejected)
    return loss, {"reward_chosen": chosen, "reward_rejected": rejected, "reward_margin": chosen - rejected,
                  "reward_accuracy": (chosen > rejected).astype(jnp.float32), "logp_chosen": policy_chosen,
                  "logp_rejected": policy_rejected}


# ----------------------------------------------------------------------------------- rank losses

def normalize_scores(s_BxC: jax.Array, eps: float = 1e-6, ref_BxR: jax.Array | None = None) -> jax.Array:
    """Min-max rescale each row to [-1, 1]; a row whose scores are all equal maps to zeros. With ref, each row is
    rescaled by the min and span of ref's row instead (other passages' scores on the candidates' scale: they may
    fall outside [-1, 1])."""
    ref = s_BxC if ref_BxR is None else ref_BxR
    lo = jnp.min(ref, axis=-1, keepdims=True)
    span = jnp.max(ref, axis=-1, keepdims=True) - lo
    safe = jnp.where(span > eps, span, 1.0)
    return jnp.where(span > eps, 2.0 * (s_BxC - lo) / safe - 1.0, 0.0)


def ranknet_loss(s_hat_BxS: jax.Array, l_BxS: jax.Array, tie_tol: float = 1e-5) -> jax.Array:
    """Mean over ordered pairs i != j of BCE(sigmoid(s_i - s_j), target); per example [B]. target is
    [l_j > l_i], and 1/2 when |l_i - l_j| <= tie_tol nats (Burges et al. 2005's target for equal relevance):
    losses equal up to fp32 rounding are ties, so the loss does not depend on summation order (device count)."""
    diff = s_hat_BxS[:, :, None] - s_hat_BxS[:, None, :]
    gap = l_BxS[:, None, :] - l_BxS[:, :, None]  # l_j - l_i
    target = jnp.where(jnp.abs(gap) <= tie_tol, 0.5, (gap > 0).astype(jnp.float32))
    bce = optax.sigmoid_binary_cross_entropy(diff, target)
    S = s_hat_BxS.shape[1]
    off_diag = 1.0 - jnp.eye(S)
    return jnp.sum(bce * off_diag, axis=(1, 2)) / max(S * (S - 1), 1)


def kl_rank_loss(s_hat_BxS: jax.Array, l_BxS: jax.Array, tau: float, beta: float,
                 neg_BxN: jax.Array | None = None, neg_valid_BxN: jax.Array | None = None) -> jax.Array:
    """KL(LLM posterior || retriever distribution) over the sampled docs; per example [B]. With negatives
    (rescaled scores of passages the LLM did not score, e.g. other questions' candidates), the retriever's
    distribution also spans the valid ones and the LLM posterior gives them probability 0."""
    target = jax.nn.softmax(-l_BxS / beta, axis=-1)
    logits = s_hat_BxS / tau
    if neg_BxN is not None:
        logits = jnp.concatenate([logits, jnp.where(neg_valid_BxN, neg_BxN / tau, -jnp.inf)], axis=-1)
    log_p = jax.nn.log_softmax(logits, axis=-1)[:, : s_hat_BxS.shape[1]]
    return jnp.sum(target * (jnp.log(jnp.maximum(target, 1e-12)) - log_p), axis=-1)


# ------------------------------------------------------------------------------------- answer NLL

def lm_logits(cfg: LlamaConfig, llm_params, hidden: jax.Array) -> jax.Array:
    """Output projection for selected hidden states only (the loss needs La positions, not the sequence)."""
    w = output_kernel(cfg, llm_params)
    return jnp.einsum("...d,dv->...v", hidden.astype(cfg.dtype), w.astype(cfg.dtype),
                      preferred_element_type=jnp.float32)


def answer_nll(cfg: LlamaConfig, llm_params, blocks: list[tuple[jax.Array, jax.Array]], answer, answer_valid,
               train: bool, compact: bool = True) -> jax.Array:
    """Mean NLL of the answer tokens for sequences `blocks + [answer]`; per sequence [N].

    compact: run the model on the compacted sequence (padding gathered to the end) instead of the
    block layout with interior padding; the same values either way (tested), one is faster per backend.
    """
    tokens, valid, pos = assemble([b[0] for b in blocks] + [answer], [b[1] for b in blocks] + [answer_valid])
    L, La = tokens.shape[-1], answer.shape[-1]
    # Padding at the end (segment 0) to a length the mesh's free batch axes divide: with fewer rows than devices
    # the sequence then splits over them instead of every device computing every row whole (a no-op otherwise).
    pad = -L % parallel.length_multiple(tokens.shape[0])
    tokens, valid, pos = (jnp.pad(x, ((0, 0), (0, pad))) for x in (tokens, valid, pos))
    model = Llama(cfg)
    if compact:
        c_tokens, c_valid, c_pos = compact_sequence(tokens, valid, pos)
        hidden = model.apply({"params": llm_params}, c_tokens, positions_BxL=c_pos, segment_ids_BxL=c_valid,
                             train=train, return_hidden=True, right_padded=True)
        # Index L-La-1 (the last question token) .. L-2 of the block layout sit at their positions when compact.
        hidden = jnp.take_along_axis(hidden, pos[:, L - La - 1: L - 1, None], axis=1)
    else:
        hidden = model.apply({"params": llm_params}, tokens, positions_BxL=pos, segment_ids_BxL=valid,
                             train=train, return_hidden=True)[:, L - La - 1: L - 1]
    # The question block is right-aligned, so positions L-La-1 .. L-2 predict answer tokens 0 .. La-1.
    logits = lm_logits(cfg, llm_params, hidden)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, answer[..., None], axis=-1)[..., 0]
    w = answer_valid.astype(jnp.float32)
    return jnp.sum(nll * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)

"""Language-model losses that never hold a [B, L, vocab] fp32 logits tensor.

With Llama-3's 128k vocabulary, fp32 logits for 8 x 8192 tokens are 34 GB (more than an 8B model in bf16),
and autodiff keeps them plus the softmax for the backward pass. `chunked_cross_entropy` projects `chunk`
tokens at a time inside a `lax.scan` whose body is rematerialised, so the forward and the backward pass each
hold one [chunk, vocab] block; the cost is one extra projection matmul in the backward pass.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def output_kernel(cfg, llm_params) -> jax.Array:
    """[D, V]: the LM head, or the transposed embedding when they are tied."""
    return llm_params["embed"]["embedding"].T if cfg.tie_word_embeddings else llm_params["lm_head"]["kernel"]


def chunked_cross_entropy(hidden_BxLxD: jax.Array, w_DxV: jax.Array, targets_BxL: jax.Array,
                          weights_BxL: jax.Array, *, chunk: int = 2048,
                          dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Weighted next-token NLL: (sum of weight * nll, sum of weights); logits in fp32, `chunk` tokens at a time.

    hidden is the final-norm output at the positions that predict `targets` (shift before calling).
    Matmul inputs are cast to `dtype` (the model's compute dtype) with fp32 accumulation.
    """
    B, L, D = hidden_BxLxD.shape
    N = B * L
    chunk = min(chunk, N)
    pad = -N % chunk
    flat = lambda x: jnp.pad(x.reshape(N, *x.shape[2:]), [(0, pad)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    h = flat(hidden_BxLxD).reshape(-1, chunk, D)
    t = flat(targets_BxL.astype(jnp.int32)).reshape(-1, chunk)
    wt = flat(weights_BxL.astype(jnp.float32)).reshape(-1, chunk)  # padding has weight 0
    w = w_DxV.astype(dtype)

    @jax.checkpoint  # the backward pass recomputes this chunk's logits instead of storing them
    def body(total, xs):
        h_c, t_c, wt_c = xs
        logits = jnp.einsum("nd,dv->nv", h_c.astype(dtype), w, preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t_c[:, None], axis=-1)[:, 0]
        return total + jnp.sum((lse - picked) * wt_c), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, t, wt))
    return total, jnp.sum(wt)

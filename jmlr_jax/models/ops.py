"""The decoder's elementwise ops with hand-written VJPs, shaped for XLA:CPU: RMSNorm with its reductions as
matrix-vector products (XLA:CPU's reduce fusions are ~6x slower), SwiGLU keeping only its two inputs for the
backward pass, and the token-major reshape the dense layers take. Each equals autodiff of the plain formula
(tests/models/test_ops.py)."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def tokens_first(x_BxLx: jax.Array) -> jax.Array:
    """[B, L, ...] -> [B * L, ...] (a free reshape; the merged dim keeps the rows' sharding, and the sequence's
    when the rows leave it an axis: parallel.RULES). Dense layers take their input this way so that the weight
    gradients contract over one token dim: with two (batch, length), XLA:CPU lays the gradient operand out
    transposed and fuses the transpose into the elementwise backward (SwiGLU's derivative written column by
    column; see docs/design.md)."""
    return x_BxLx.reshape(x_BxLx.shape[0] * x_BxLx.shape[1], *x_BxLx.shape[2:])


def _mean_last(x_NxD: jax.Array) -> jax.Array:
    """Mean over the last dim as a matrix-vector product (fp32 on every backend): XLA:CPU's reduce fusions
    take ~6x longer here."""
    ones = jnp.full((x_NxD.shape[-1],), 1.0 / x_NxD.shape[-1], x_NxD.dtype)
    return jnp.matmul(x_NxD, ones, precision=jax.lax.Precision.HIGHEST)[..., None]


def _rms_norm_fwd(x, scale, eps: float, dtype):
    x32 = x.astype(jnp.float32)
    r = jax.lax.rsqrt(_mean_last(x32 * x32) + eps)
    return ((x32 * r).astype(dtype) * scale.astype(dtype)).astype(dtype), (x, scale, r)


def _rms_norm_bwd(eps: float, dtype, res, dy):
    del eps, dtype
    x, scale, r = res
    xn = x.astype(jnp.float32) * r
    dy32 = dy.astype(jnp.float32)
    g = dy32 * scale.astype(jnp.float32)
    dx = r * (g - xn * _mean_last(g * xn))
    N = xn.size // xn.shape[-1]
    dscale = jnp.matmul(jnp.ones((N,), jnp.float32), (dy32 * xn).reshape(N, -1),  # sum over tokens, a matmul too
                        precision=jax.lax.Precision.HIGHEST)
    return dx.astype(x.dtype), dscale.astype(scale.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype: Any) -> jax.Array:
    """x / rms(x) * scale, computed in fp32, returned in `dtype`. Custom VJP: the same gradient as autodiff's,
    with its three reductions written as matrix-vector products (XLA:CPU's reduce fusions are slow)."""
    return _rms_norm_fwd(x, scale, eps, dtype)[0]


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up. Custom VJP: the backward pass keeps only gate and up (autodiff keeps six [L, F] arrays
    per layer: sigmoid, silu and products) and recomputes the sigmoid; the same gradient."""
    return nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return swiglu(gate, up), (gate, up)


def _swiglu_bwd(res, dh):
    gate, up = res
    g = gate.astype(jnp.float32)
    sig = jax.nn.sigmoid(g)
    dh32 = dh.astype(jnp.float32)
    dgate = dh32 * up.astype(jnp.float32) * sig * (1.0 + g * (1.0 - sig))
    dup = dh32 * g * sig
    return dgate.astype(gate.dtype), dup.astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)

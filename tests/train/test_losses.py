"""Both chunked cross-entropies equal the full-logits loss in value and gradients and never hold [B, L, V]
logits; the fused one needs one projection matmul fewer."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jmlr_jax.train.losses import chunked_cross_entropy, chunked_token_nll


def _full(h, w, t, wt):
    logp = jax.nn.log_softmax(jnp.einsum("bld,dv->blv", h, w), axis=-1)
    nll = -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * wt), jnp.sum(wt)


def _token_sum(h, w, t, wt, chunk=2048, dtype=jnp.float32):
    return jnp.sum(chunked_token_nll(h, w, t, wt, chunk=chunk, dtype=dtype)), jnp.sum(wt)


@pytest.mark.parametrize("loss", [chunked_cross_entropy, _token_sum], ids=["fused", "per_token"])
@pytest.mark.parametrize("chunk", [7, 16, 1000])  # ragged last chunk, exact chunks, one chunk
def test_chunked_equals_full_in_value_and_grads(chunk, loss):
    B, L, D, V = 2, 24, 16, 1000  # V not a multiple of anything convenient
    h = jax.random.normal(jax.random.PRNGKey(0), (B, L, D))
    w = jax.random.normal(jax.random.PRNGKey(1), (D, V)) * 0.5
    t = jax.random.randint(jax.random.PRNGKey(2), (B, L), 0, V)
    wt = (jax.random.uniform(jax.random.PRNGKey(3), (B, L)) > 0.3).astype(jnp.float32)
    ref, n_ref = _full(h, w, t, wt)
    out, n = loss(h, w, t, wt, chunk=chunk)
    np.testing.assert_allclose(float(out), float(ref), rtol=1e-5)
    assert float(n) == float(n_ref)
    g_ref = jax.grad(lambda h, w, wt: 0.37 * _full(h, w, t, wt)[0], argnums=(0, 1, 2))(h, w, wt)
    g = jax.grad(lambda h, w, wt: 0.37 * loss(h, w, t, wt, chunk=chunk)[0],
                 argnums=(0, 1, 2))(h, w, wt)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_chunked_scratch_does_not_hold_all_logits():
    """fwd+bwd scratch with chunk 256 stays far below one [B*L, V] fp32 logits tensor (the full loss holds
    several)."""
    B, L, D, V = 2, 4096, 64, 8192
    args = (jax.ShapeDtypeStruct((B, L, D), jnp.float32), jax.ShapeDtypeStruct((D, V), jnp.float32),
            jax.ShapeDtypeStruct((B, L), jnp.int32), jax.ShapeDtypeStruct((B, L), jnp.float32))
    mem = lambda f: jax.jit(jax.grad(lambda h, w, t, wt: f(h, w, t, wt)[0], argnums=(0, 1))).lower(  # noqa: E731
        *args).compile().memory_analysis().temp_size_in_bytes
    logits_bytes = B * L * V * 4
    assert mem(lambda *a: chunked_cross_entropy(*a, chunk=256)) < 0.1 * logits_bytes
    assert mem(_full) > logits_bytes  # the check can fail: the full loss does hold them


def test_fused_bf16_matches_fp32_reference():
    """With bf16 matmul inputs (the accelerator default) the fused loss and its gradients stay near fp32."""
    B, L, D, V = 2, 40, 32, 500
    h = jax.random.normal(jax.random.PRNGKey(0), (B, L, D))
    w = jax.random.normal(jax.random.PRNGKey(1), (D, V)) * 0.2
    t = jax.random.randint(jax.random.PRNGKey(2), (B, L), 0, V)
    wt = jnp.ones((B, L))
    ref = jax.value_and_grad(lambda h, w: _full(h, w, t, wt)[0], argnums=(0, 1))(h, w)
    out = jax.value_and_grad(lambda h, w: chunked_cross_entropy(h, w, t, wt, chunk=32, dtype=jnp.bfloat16)[0],
                             argnums=(0, 1))(h, w)
    np.testing.assert_allclose(float(out[0]), float(ref[0]), rtol=2e-2)
    for a, b in zip(out[1], ref[1]):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=3e-2 * float(jnp.max(jnp.abs(b))))


def test_fused_needs_one_projection_fewer():
    """XLA's cost analysis of loss and gradients (value_and_grad, as training needs both): the fused loss does 3
    [N, D] x [D, V] products per chunk, the per-token one 4 (it recomputes the logits in the backward pass). Two
    chunks: cost analysis counts a loop body once (so one chunk's product is saved), and with a single chunk XLA
    may merge the recomputation with the forward product in a graph this small."""
    B, L, D, V = 2, 512, 64, 4096
    args = (jax.ShapeDtypeStruct((B, L, D), jnp.float32), jax.ShapeDtypeStruct((D, V), jnp.float32),
            jax.ShapeDtypeStruct((B, L), jnp.int32), jax.ShapeDtypeStruct((B, L), jnp.float32))
    flops = lambda f: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda h, w, t, wt: f(h, w, t, wt, chunk=B * L // 2)[0], argnums=(0, 1))).lower(*args).compile().cost_analysis()["flops"]
    product = 2 * (B * L // 2) * D * V
    saved = flops(_token_sum) - flops(chunked_cross_entropy)
    assert 0.9 * product < saved < 1.3 * product, (saved, product)

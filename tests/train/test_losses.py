"""Chunked cross-entropy equals the full-logits loss in value and gradients, and never holds [B, L, V] logits."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jmlr_jax.train.losses import chunked_cross_entropy


def _full(h, w, t, wt):
    logp = jax.nn.log_softmax(jnp.einsum("bld,dv->blv", h, w), axis=-1)
    nll = -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * wt), jnp.sum(wt)


@pytest.mark.parametrize("chunk", [7, 16, 1000])  # ragged last chunk, exact chunks, one chunk
def test_chunked_equals_full_in_value_and_grads(chunk):
    B, L, D, V = 2, 24, 16, 1000  # V not a multiple of anything convenient
    h = jax.random.normal(jax.random.PRNGKey(0), (B, L, D))
    w = jax.random.normal(jax.random.PRNGKey(1), (D, V)) * 0.5
    t = jax.random.randint(jax.random.PRNGKey(2), (B, L), 0, V)
    wt = (jax.random.uniform(jax.random.PRNGKey(3), (B, L)) > 0.3).astype(jnp.float32)
    ref, n_ref = _full(h, w, t, wt)
    out, n = chunked_cross_entropy(h, w, t, wt, chunk=chunk)
    np.testing.assert_allclose(float(out), float(ref), rtol=1e-5)
    assert float(n) == float(n_ref)
    g_ref = jax.grad(lambda h, w, wt: 0.37 * _full(h, w, t, wt)[0], argnums=(0, 1, 2))(h, w, wt)
    g = jax.grad(lambda h, w, wt: 0.37 * chunked_cross_entropy(h, w, t, wt, chunk=chunk)[0],
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

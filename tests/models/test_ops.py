"""The decoder's hand-written VJPs equal autodiff of the plain formulas, in fp32 and bf16."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jmlr_jax.models import ops


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rms_norm_custom_vjp_equals_autodiff(dtype):
    """The hand-written RMSNorm backward (reductions as matmuls) equals autodiff of the plain formula."""
    def plain(x, scale):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-5)
        return (y.astype(dtype) * scale.astype(dtype)).astype(dtype)

    x = (jax.random.normal(jax.random.PRNGKey(0), (2, 13, 48)) * 3.0).astype(dtype)
    scale = 1.0 + 0.3 * jax.random.normal(jax.random.PRNGKey(1), (48,))
    probe = jax.random.normal(jax.random.PRNGKey(2), (2, 13, 48))
    loss = lambda f: lambda x, s: jnp.sum(f(x, s).astype(jnp.float32) * probe)  # noqa: E731
    tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bf16: an output may round one ulp the other way
    np.testing.assert_allclose(np.asarray(ops.rms_norm(x, scale, 1e-5, dtype), np.float32),
                               np.asarray(plain(x, scale), np.float32), rtol=tol, atol=tol)
    got = jax.grad(loss(lambda x, s: ops.rms_norm(x, s, 1e-5, dtype)), argnums=(0, 1))(x, scale)
    want = jax.grad(loss(plain), argnums=(0, 1))(x, scale)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   atol=tol * float(jnp.abs(b.astype(jnp.float32)).max()), rtol=0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_swiglu_custom_vjp_equals_autodiff(dtype):
    """SwiGLU's backward (sigmoid recomputed from the kept inputs, in fp32) equals autodiff of silu(gate) * up."""
    gate, up = ((jax.random.normal(jax.random.PRNGKey(i), (2, 13, 40)) * 4.0).astype(dtype) for i in (0, 1))
    probe = jax.random.normal(jax.random.PRNGKey(2), (2, 13, 40))
    loss = lambda f: lambda g, u: jnp.sum(f(g, u).astype(jnp.float32) * probe)  # noqa: E731
    plain = lambda g, u: jax.nn.silu(g) * u  # noqa: E731
    np.testing.assert_array_equal(np.asarray(ops.swiglu(gate, up), np.float32), np.asarray(plain(gate, up), np.float32))
    got = jax.grad(loss(ops.swiglu), argnums=(0, 1))(gate, up)
    want = jax.grad(loss(plain), argnums=(0, 1))(gate, up)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bf16: autodiff rounds its intermediates, ours are fp32
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   atol=tol * float(jnp.abs(b.astype(jnp.float32)).max()), rtol=0)

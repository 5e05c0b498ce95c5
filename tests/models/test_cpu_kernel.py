"""The C++ CPU attention kernel (`cpu_kernel.py`): oracle equality at block edges and head sizes the attention
tests do not reach, determinism, dtype and input errors, remat, scratch accounting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlr_jax.models import Llama, LlamaConfig, attention, cpu_kernel, llama as llama_lib
from tests.conftest import require


@pytest.fixture(autouse=True)
def _kernel():
    require(cpu_kernel.available(), f"the C++ attention kernel ({cpu_kernel.unavailable_reason()})")


def _inputs(B, L, H, K, D, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (jax.random.normal(ks[0], (B, L, H, D)), jax.random.normal(ks[1], (B, L, K, D)),
            jax.random.normal(ks[2], (B, L, K, D)), jax.random.normal(ks[3], (B, L, H, D)))


def _oracle(q, k, v, seg):
    pos = jnp.broadcast_to(jnp.arange(q.shape[1]), seg.shape)
    return attention.self_attention(q, k, v, pos, seg, impl="reference")


@pytest.mark.parametrize("B,L,H,K,D", [(1, 5, 2, 1, 16), (2, 200, 6, 2, 32), (1, 300, 3, 3, 128)])
def test_equals_oracle_at_block_edges(B, L, H, K, D):
    """Lengths shorter than, and not multiples of, the 64-token query / 128-token key blocks; G = 1, 3."""
    q, k, v, w = _inputs(B, L, H, K, D)
    seg = jnp.ones((B, L), jnp.int32)
    if B > 1:  # second row: three documents then padding (blocks that mix segments, and all-padding blocks)
        seg = seg.at[1].set(jnp.asarray([1] * 70 + [2] * 61 + [3] * 9 + [0] * 60))
    w = w * (seg > 0)[..., None, None]

    def grads(f):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(w * f(q, k, v, seg)), argnums=(0, 1, 2)))(q, k, v)

    (ref, ref_g), (out, out_g) = grads(_oracle), grads(cpu_kernel.cpu_attention)
    np.testing.assert_allclose(float(out), float(ref), rtol=1e-5, atol=1e-3)
    for a, b in zip(out_g, ref_g):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)
    real = np.asarray(seg > 0)
    o = np.asarray(cpu_kernel.cpu_attention(q, k, v, seg))
    np.testing.assert_allclose(o[real], np.asarray(_oracle(q, k, v, seg))[real], atol=2e-6)
    assert np.all(o[~real] == 0), "padding rows return zeros"


def test_gradients_are_bitwise_deterministic():
    """dQ sums contributions from every key block over threads: fixed lanes keep the sum order fixed."""
    q, k, v, w = _inputs(2, 700, 4, 2, 64, seed=3)
    seg = jnp.ones((2, 700), jnp.int32)
    g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(w * cpu_kernel.cpu_attention(q, k, v, seg)), argnums=(0, 1, 2)))
    first = [np.asarray(x) for x in g(q, k, v)]
    for _ in range(3):
        for a, b in zip(first, g(q, k, v)):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_dtype_and_bad_shapes():
    q, k, v, _ = _inputs(1, 40, 4, 2, 16)
    seg = jnp.ones((1, 40), jnp.int32)
    out = cpu_kernel.cpu_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), seg)
    assert out.dtype == jnp.bfloat16  # computed in fp32, returned in the input dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(_oracle(q, k, v, seg)), atol=3e-2)
    with pytest.raises(ValueError, match="multiple of 16"):
        cpu_kernel.cpu_attention(q[..., :8], k[..., :8], v[..., :8], seg)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        cpu_kernel.cpu_attention(q[:, :, :3], k, v, seg)


def test_remat_keeps_the_kernel_residuals():
    """Under 'dots_attn' the backward pass does not call the forward kernel again (one call per layer)."""
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                      num_kv_heads=2, attention="cpu")
    params = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 64), 0, 64)
    grad = lambda policy: jax.grad(  # noqa: E731
        lambda p: Llama(cfg.replace(remat_policy=policy)).apply({"params": p}, tokens).sum())
    calls = {pol: str(jax.make_jaxpr(grad(pol))(params)).count("JmlrAttentionFwd")
             for pol in ("none", "dots_no_batch", "dots_attn")}
    assert calls["dots_attn"] == calls["none"] < calls["dots_no_batch"], calls


def test_scratch_is_linear_in_length():
    a, b = (cpu_kernel.scratch_bytes(1, L, 32, 8, 64) for L in (8192, 16384))
    assert b == pytest.approx(2 * a, rel=0.02)


def test_without_a_compiler_auto_falls_back(monkeypatch, tmp_path):
    """No compiler (and nothing cached): 'auto' picks the blockwise kernel; asking for 'cpu' is one clear error."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("JMLR_JAX_CACHE", str(tmp_path))
    cpu_kernel._load_error.cache_clear()
    try:
        assert not cpu_kernel.available()
        assert "no C++ compiler" in cpu_kernel.unavailable_reason()
        assert attention.resolve_implementation("auto", dtype=jnp.float32, head_dim=64, right_padded=False,
                                                platform="cpu", num_devices=1) == "blockwise"
        q, k, v, _ = _inputs(1, 8, 2, 1, 16)
        with pytest.raises(cpu_kernel.KernelUnavailable, match="no C\\+\\+ compiler"):
            cpu_kernel.cpu_attention(q, k, v, jnp.ones((1, 8), jnp.int32))
    finally:
        monkeypatch.undo()
        cpu_kernel._load_error.cache_clear()
    assert cpu_kernel.available()  # registers the same targets again

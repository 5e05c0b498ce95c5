"""Attention: the mask oracle (brute force, causality), and every backend that runs on CPU against it in values
and gradients (blockwise; splash and the Pallas GPU kernel in interpret mode); compile-time cost checks."""
import re

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jmlr_jax.models import Llama, LlamaConfig
from jmlr_jax.models import attention, llama as llama_lib
from tests.conftest import require


def brute_force_s2_mask(L: int, H: int, G: int) -> np.ndarray:
    """LongLoRA groups written out as explicit intervals: half the heads use [mG, (m+1)G), the
    other half [0, G/2), [G/2, 3G/2), ...; causal inside each group."""
    plain = [(s, min(s + G, L)) for s in range(0, L, G)]
    shifted = [(0, min(G // 2, L))] + [(s, min(s + G, L)) for s in range(G // 2, L, G)]
    mask = np.zeros((H, L, L), bool)
    for h in range(H):
        for lo, hi in (plain if h < H // 2 else shifted):
            for i in range(lo, hi):
                mask[h, i, lo: i + 1] = True
    return mask


@pytest.mark.parametrize("L,H,G", [(16, 4, 4), (19, 2, 6), (32, 8, 8), (10, 4, 2)])
def test_s2_mask_equals_brute_force(L, H, G):
    pos = jnp.arange(L)[None]
    info = attention.make_mask_info(pos, jnp.ones((1, L), jnp.int32), num_heads=H, s2_group_size=G)
    mask = np.asarray(attention.build_mask(info))[0]
    np.testing.assert_array_equal(mask, brute_force_s2_mask(L, H, G))
    assert not np.triu(mask, k=1).any(), "a token sees a future token"


def test_s2_with_group_covering_sequence_is_dense_causal():
    L = 12
    pos, seg = jnp.arange(L)[None], jnp.ones((1, L), jnp.int32)
    dense = attention.build_mask(attention.make_mask_info(pos, seg, num_heads=4))
    for G in (L, 2 * L):
        s2 = attention.build_mask(attention.make_mask_info(pos, seg, num_heads=4, s2_group_size=G))
        np.testing.assert_array_equal(np.broadcast_to(dense, s2.shape), s2)


def test_s2_mask_gradients_are_causal():
    """d out[t] / d (q, k, v)[t'] == 0 for every t' > t, in every head."""
    B, L, H, K, D = 1, 16, 4, 2, 8
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (B, L, n, D)) for i, n in enumerate((H, K, K)))
    info = attention.make_mask_info(jnp.arange(L)[None], jnp.ones((B, L), jnp.int32), num_heads=H, s2_group_size=4)
    for t in (0, 5, 11):
        grads = jax.grad(lambda q, k, v: attention.dot_product_attention(q, k, v, info)[0, t].sum(),
                         argnums=(0, 1, 2))(q, k, v)
        for g in grads:
            assert np.all(np.asarray(g)[0, t + 1:] == 0), f"output {t} depends on a later input"
        assert np.any(np.asarray(grads[2])[0, : t + 1] != 0)  # the check can fail: v[<=t] matters


def test_model_with_s2_is_causal_and_differs_from_dense():
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, s2_group_size=4)
    params = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 16), 0, 40)
    model = Llama(cfg)
    apply = jax.jit(model.apply, static_argnames="train")
    base = apply({"params": params}, tokens, train=True)
    for t in (3, 9, 15):
        changed = apply({"params": params}, tokens.at[0, t].set((tokens[0, t] + 1) % 40), train=True)
        np.testing.assert_array_equal(np.asarray(changed[0, :t]), np.asarray(base[0, :t]))
        assert np.any(np.asarray(changed[0, t:]) != np.asarray(base[0, t:]))
    dense = apply({"params": params}, tokens, train=False)
    np.testing.assert_array_equal(np.asarray(dense[0, :2]), np.asarray(base[0, :2]))  # same first group
    assert float(jnp.max(jnp.abs(dense - base))) > 1e-3
    full_group = Llama(cfg.replace(s2_group_size=16)).apply({"params": params}, tokens, train=True)
    np.testing.assert_allclose(np.asarray(full_group), np.asarray(dense), atol=1e-6)


def test_packed_segments_do_not_attend_across_documents():
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2)
    params = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    a = jax.random.randint(jax.random.PRNGKey(1), (1, 6), 0, 40)
    b = jax.random.randint(jax.random.PRNGKey(2), (1, 5), 0, 40)
    model = Llama(cfg)
    packed = model.apply({"params": params}, jnp.concatenate([a, b], 1),
                         positions_BxL=jnp.concatenate([jnp.arange(6), jnp.arange(5)])[None],
                         segment_ids_BxL=jnp.asarray([[1] * 6 + [2] * 5]))
    np.testing.assert_allclose(packed[:, :6], model.apply({"params": params}, a), atol=1e-5)
    np.testing.assert_allclose(packed[:, 6:], model.apply({"params": params}, b), atol=1e-5)


def test_odd_heads_or_group_rejected():
    with pytest.raises(ValueError, match="even"):
        attention.s2_block_ids(jnp.arange(8)[None], 4, 3)
    with pytest.raises(ValueError, match="odd"):
        attention.s2_block_ids(jnp.arange(8)[None], 3, 4)


def _qkv(B, L, H, K, D, seed=0):
    return tuple(jax.random.normal(jax.random.PRNGKey(seed + i), (B, L, n, D)) for i, n in enumerate((H, K, K)))


def _case(name: str, L: int):
    """(positions, segment ids, S2 group) of a 2-row batch."""
    if name == "causal":
        return jnp.tile(jnp.arange(L), (2, 1)), jnp.ones((2, L), jnp.int32), 0
    a = 100  # row 0 packs two documents (positions restart); row 1 is right-padded
    pos = jnp.asarray([list(range(a)) + list(range(L - a)), list(range(L))])
    seg = jnp.asarray([[1] * a + [2] * (L - a), [1] * (L - 56) + [0] * 56])
    return pos, seg, (128 if name == "s2" else 0)


def _need(impl: str) -> None:
    if impl == "cpu":
        from jmlr_jax.models import cpu_kernel

        require(cpu_kernel.available(), f"the C++ attention kernel ({cpu_kernel.unavailable_reason()})")


@pytest.mark.parametrize("impl", ["blockwise", "cpu", "splash", "pallas_gpu"])
@pytest.mark.parametrize("case", ["causal", "packed_padded", "s2"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_backend_equals_oracle(impl, case, kv_heads):
    """Outputs and gradients of q, k, v equal the mask oracle's on every real (non-padding) token."""
    _need(impl)
    B, L, H, D = 2, 256, 4, 16
    q, k, v = _qkv(B, L, H, kv_heads, D)
    pos, seg, s2 = _case(case, L)
    w = jax.random.normal(jax.random.PRNGKey(9), (B, L, H, D)) * (seg > 0)[..., None, None]

    def loss_and_grads(impl):
        f = lambda q, k, v: jnp.sum(w * attention.self_attention(  # noqa: E731
            q, k, v, pos, seg, impl=impl, s2_group_size=s2, block=128, interpret=True))
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)

    (ref, ref_g), (out, out_g) = loss_and_grads("reference"), loss_and_grads(impl)
    np.testing.assert_allclose(float(out), float(ref), atol=1e-3)  # a sum of 33k fp32 terms
    for a, b in zip(out_g, ref_g):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
    real = np.asarray(seg > 0)
    o = attention.self_attention(q, k, v, pos, seg, impl=impl, s2_group_size=s2, block=128, interpret=True)
    r = attention.self_attention(q, k, v, pos, seg, impl="reference", s2_group_size=s2)
    np.testing.assert_allclose(np.asarray(o)[real], np.asarray(r)[real], atol=2e-6)


@pytest.mark.parametrize("case,L,kv_heads", [("causal", 256, 4), ("padded", 255, 2), ("s2", 256, 1), ("s2", 250, 2)])
def test_cudnn_adaptor_equals_oracle_with_xla_in_cudnns_place(monkeypatch, case, L, kv_heads):
    """The cuDNN path cannot run on CPU; everything of it but cuDNN's kernel can: the same
    `jax.nn.dot_product_attention` call (causal, GQA, sequence lengths from the segment ids, odd lengths padded
    to even) with JAX's XLA implementation of that call in cuDNN's place, through S2's groups folded into rows,
    equals the mask oracle in values and gradients on every real token."""
    real_call = jax.nn.dot_product_attention
    calls = []

    def xla_in_cudnns_place(*args, implementation=None, **kw):
        calls.append((implementation, args[0].shape[1]))
        return real_call(*args, implementation="xla" if implementation == "cudnn" else implementation, **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", xla_in_cudnns_place)
    B, H, D = 2, 4, 16
    q, k, v = _qkv(B, L, H, kv_heads, D)
    pos = jnp.tile(jnp.arange(L), (B, 1))
    seg = jnp.asarray([[1] * L, [1] * (L - 56) + [0] * 56]) if case != "causal" else jnp.ones((B, L), jnp.int32)
    s2 = 64 if case == "s2" else 0
    w = jax.random.normal(jax.random.PRNGKey(9), (B, L, H, D)) * (seg > 0)[..., None, None]

    def loss_and_grads(impl):
        f = lambda q, k, v: jnp.sum(w * attention.self_attention(  # noqa: E731
            q, k, v, pos, seg, impl=impl, s2_group_size=s2, right_padded=True))
        return jax.value_and_grad(f, argnums=(0, 1, 2))(q, k, v)

    (ref, ref_g), (out, out_g) = loss_and_grads("reference"), loss_and_grads("cudnn")
    assert calls and all(impl == "cudnn" and n % 2 == 0 for impl, n in calls)  # the adaptor's call, even lengths
    np.testing.assert_allclose(float(out), float(ref), atol=1e-3)
    for a, b in zip(out_g, ref_g):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


@pytest.mark.parametrize("L", [353, 700])
def test_splash_at_lengths_that_are_not_whole_blocks(L):
    """Splash pads the sequence to whole blocks of the size that pads least (353 -> 384, one block of 384;
    700 -> 768, two): the oracle's values and gradients."""
    B, H, K, D = 1, 4, 2, 16
    q, k, v = _qkv(B, L, H, K, D)
    pos, seg = jnp.arange(L)[None], jnp.ones((B, L), jnp.int32)

    def loss_and_grads(impl):
        f = lambda q, k, v: jnp.sum(  # noqa: E731
            attention.self_attention(q, k, v, pos, seg, impl=impl, interpret=True) ** 2)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)

    (ref, ref_g), (out, out_g) = loss_and_grads("reference"), loss_and_grads("splash")
    np.testing.assert_allclose(float(out), float(ref), rtol=1e-5)
    for a, b in zip(out_g, ref_g):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


@pytest.mark.parametrize("impl", ["blockwise", "cpu"])
@pytest.mark.parametrize("L,G", [(64, 16), (70, 16), (40, 64)])
def test_s2_gradients_are_causal(impl, L, G):
    """Through the folded S2 layout (ragged last groups too): d out[t] / d (q, k, v)[t' > t] == 0."""
    _need(impl)
    B, H, K, D = 1, 4, 2, 16
    q, k, v = _qkv(B, L, H, K, D)
    pos, seg = jnp.arange(L)[None], jnp.ones((B, L), jnp.int32)
    f = lambda q, k, v: attention.self_attention(  # noqa: E731
        q, k, v, pos, seg, impl=impl, s2_group_size=G, block=16)[0].sum(axis=(1, 2))
    out, vjp = jax.vjp(f, q, k, v)
    ts = jnp.asarray([0, G // 2 - 1, G // 2, L - 1])
    grads = jax.jit(jax.vmap(vjp))(jax.nn.one_hot(ts, L))  # d out[t] / d (q, k, v) for each t
    for n, t in enumerate(np.asarray(ts)):
        for g in grads:
            assert np.all(np.asarray(g)[n, 0, t + 1:] == 0), f"output {t} depends on a later input"
        assert np.any(np.asarray(grads[2])[n, 0, : t + 1] != 0)


def _mesh(shape=(2, 2, 2)):
    return Mesh(np.asarray(jax.devices()[: int(np.prod(shape))]).reshape(shape), ("data", "fsdp", "tensor"))


def _sharded_equals_oracle(impl, mesh, rows, length, w, s2, q, k, v, pos, seg, heads="tensor"):
    """sum(w * attention) and its q / k / v gradients, compiled under the mesh with the inputs' rows, sequence and
    heads over those mesh axes, equal the oracle's; returns (compiled, loss(impl) builder)."""
    x_sh, row_sh = NamedSharding(mesh, P(rows, length, heads)), NamedSharding(mesh, P(rows, length))

    def loss(impl):
        f = lambda q, k, v, pos, seg: jnp.sum(w * attention.self_attention(  # noqa: E731
            q, k, v, pos, seg, impl=impl, s2_group_size=s2, block=128, interpret=True))
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)), in_shardings=(x_sh, x_sh, x_sh, row_sh, row_sh))

    with jax.set_mesh(mesh):
        compiled = loss(impl).lower(q, k, v, pos, seg).compile()
        out, out_g = compiled(q, k, v, pos, seg)
    ref, ref_g = loss("reference")(q, k, v, pos, seg)
    np.testing.assert_allclose(float(out), float(ref), atol=1e-3)
    for a, b in zip(out_g, ref_g):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
    return compiled, loss


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("impl", ["cpu", "splash", "pallas_gpu"])
@pytest.mark.parametrize("case", ["packed_padded", "s2"])
def test_opaque_kernels_run_per_shard_under_a_mesh(impl, case):
    """Under a mesh in context the kernels XLA cannot partition run per shard (batch over data x fsdp, KV heads
    over tensor, S2's head halves too): the oracle's values and gradients on a (2, 2, 2) mesh, and the C++ kernel
    compiled with no all-gather, its dense call on a quarter of the rows and half the heads; without the mesh
    it sees the global arrays, gathered (the check can fail)."""
    _need(impl)
    B, L, H, K, D = 8, 256, 4, 2, 16
    q, k, v = _qkv(B, L, H, K, D)
    pos, seg, s2 = _case(case, L)
    pos, seg = jnp.tile(pos, (B // 2, 1)), jnp.tile(seg, (B // 2, 1))  # the 2-row case, 4 times
    w = jax.random.normal(jax.random.PRNGKey(9), (B, L, H, D)) * (seg > 0)[..., None, None]
    mesh = _mesh()
    compiled, loss = _sharded_equals_oracle(impl, mesh, ("data", "fsdp"), None, w, s2, q, k, v, pos, seg)
    if impl == "cpu":
        assert "all-gather" not in compiled.as_text()  # S2 too: each tensor shard's heads lie in one half
        unsharded = loss(impl).lower(q, k, v, pos, seg).compile().as_text()  # no mesh in context
        assert "all-gather" in unsharded
    if impl == "cpu" and not s2:
        kernel_q = lambda text: re.findall(r"f32\[(\d+),256,(\d+),16\][^\n]*custom-call\(", text)  # noqa: E731
        assert set(kernel_q(compiled.as_text())) == {(str(B // 4), str(H // 2))}
        assert set(kernel_q(unsharded)) == {(str(B), str(H))}


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("case", ["causal", "s2"])
def test_rows_take_the_tensor_axis_when_heads_cannot_split(case):
    """One KV head (or S2 on an odd tensor axis: the same rule) on a (2, 2, 2) mesh: the heads stay whole, so the
    rows split over all 8 devices instead of 4, each tensor chip its own rows rather than a copy of its
    neighbour's work. The oracle's values and gradients; the C++ kernel's call holds one row of all heads."""
    _need("cpu")
    B, L, H, D = 8, 256, 4, 16
    q, k, v = _qkv(B, L, H, 1, D)
    pos, seg, s2 = _case(case, L)
    pos, seg = jnp.tile(pos, (B // 2, 1)), jnp.tile(seg, (B // 2, 1))
    w = jax.random.normal(jax.random.PRNGKey(9), (B, L, H, D)) * (seg > 0)[..., None, None]
    compiled, _ = _sharded_equals_oracle("cpu", _mesh((2, 2, 2)), ("data", "fsdp"), None, w, s2, q, k, v, pos, seg,
                                         heads=None)
    calls = set(re.findall(r"f32\[(\d+),(\d+),(\d+),16\][^\n]*custom-call\(", compiled.as_text()))
    # one whole row of all 4 heads; with S2 that row's groups per head half: the unshifted half's 2 groups of 128,
    # the shifted half's middle group and its two end half-groups
    assert calls == ({("1", str(L), str(H))} if not s2 else {("2", "128", "2"), ("1", "128", "2"), ("2", "64", "2")})


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("impl", ["cpu", "splash", "pallas_gpu"])
@pytest.mark.parametrize("mesh_shape,rows,kv_heads,L", [((1, 8, 1), [0, 1], 2, 256), ((2, 2, 2), [1], 2, 256),
                                                        ((1, 8, 1), [1], 1, 512), ((1, 8, 1), [1], 2, 448)])
def test_s2_groups_spread_over_devices_when_rows_cannot(impl, mesh_shape, rows, kv_heads, L):
    """Fewer rows than devices (long context: a row split along its sequence): S2's groups become the rows the
    devices split, instead of every device attending over whole rows. The oracle's values and gradients; the
    padded row's shifted first and last half-groups share a folded row and must not see each other (the check
    can fail); the C++ kernel's call holds one group (G tokens) of half the heads, a share of the group rows. A
    length that is not a whole number of groups (448 = 3.5 x 128) is padded to one."""
    _need(impl)
    H, D = 4, 16
    pos, seg, G = _case("s2", L)
    pos, seg = pos[np.asarray(rows)], seg[np.asarray(rows)]
    B = len(rows)
    q, k, v = _qkv(B, L, H, kv_heads, D)
    w = jax.random.normal(jax.random.PRNGKey(9), (B, L, H, D)) * (seg > 0)[..., None, None]
    mesh = _mesh(mesh_shape)
    compiled, _ = _sharded_equals_oracle(impl, mesh, None, "fsdp", w, G, q, k, v, pos, seg)
    if impl == "cpu":
        per_device = 2 * B * -(-L // G) // (mesh_shape[0] * mesh_shape[1])  # group rows over data x fsdp
        calls = set(re.findall(r"f32\[(\d+),(\d+),(\d+),16\][^\n]*custom-call\(", compiled.as_text()))
        assert calls == {(str(per_device), str(G), str(H // 2))}, calls


def _balanced_split(balanced: bool):
    """A context in which splash's sequence split is balanced at any length (the plan takes it only for long rows)."""
    import contextlib
    from unittest import mock

    from jmlr_jax.models import kernels

    if not balanced:
        return contextlib.nullcontext()
    return mock.patch.object(kernels, "splash_sequence_plan",
                             lambda L, n, block=512: kernels._split_plan(L, n, block, balanced=True))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("mesh_shape,rows,kv_heads,L,case,balanced", [
    ((1, 8, 1), [1], 2, 2048, "causal", True), ((2, 4, 1), [0, 1], 2, 512, "packed_padded", False),
    ((1, 4, 2), [0], 2, 768, "packed_padded", True), ((1, 8, 1), [0], 1, 1024, "packed_padded", False),
    ((2, 4, 1), [0], 2, 2048, "packed_padded", True)])
def test_dense_splash_splits_queries_along_the_sequence_when_rows_cannot(mesh_shape, rows, kv_heads, L, case,
                                                                         balanced):
    """Fewer rows than devices, dense attention (long-context evaluation; the fused JMLR step's few long rows):
    splash's queries split along the sequence over the axes the rows leave (context parallelism: each device attends
    its L / n queries to the gathered keys), instead of every device attending over whole rows. The oracle's values
    and gradients (packed documents, right padding, GQA, heads over tensor, a length that is not a whole number of
    blocks per device: 768 / 4, padded to 1024), split contiguously (the plan's choice at these lengths) and
    balanced (device j swaps half its queries with device n - 1 - j; forced here, where the plan would take it only
    from 8192 tokens on 8 devices: `kernels.splash_sequence_plan`; also over two mesh axes); the kernel's per-shard
    q holds L / n tokens, whole rows when the split is refused (the check can fail)."""
    from unittest import mock

    from jmlr_jax.models import kernels

    H, D = 4, 16
    pos, seg, _ = _case(case, L)
    pos, seg = pos[np.asarray(rows)], seg[np.asarray(rows)]
    B = len(rows)
    q, k, v = _qkv(B, L, H, kv_heads, D)
    w = jax.random.normal(jax.random.PRNGKey(9), (B, L, H, D)) * (seg > 0)[..., None, None]
    mesh = _mesh(mesh_shape)
    heads = "tensor" if mesh_shape[2] > 1 else None
    n = mesh_shape[0] * mesh_shape[1] // B  # the batch axes the rows leave
    plan = kernels.splash_sequence_plan(L, n)
    assert not plan.balanced

    def kernel_q_shapes():
        with jax.set_mesh(mesh):
            text = jax.jit(lambda q, k, v: attention.self_attention(
                q, k, v, pos, seg, impl="splash", interpret=True)).lower(q, k, v).as_text()
        return set(re.findall(rf"%arg\d+: tensor<(\d+)x(\d+)x(\d+)x{D}xf32>", text))

    with _balanced_split(balanced):
        _sharded_equals_oracle("splash", mesh, None, "fsdp", w, 0, q, k, v, pos, seg, heads=heads)
        local = str(kernels.splash_sequence_plan(L, n).padded // n)  # whole blocks on each device
        assert ("1", local, str(H // mesh_shape[2])) in kernel_q_shapes()
    with mock.patch.object(kernels, "splash_sequence_plan", lambda *_: None):
        whole = kernel_q_shapes()
    assert ("1", str(L), str(H // mesh_shape[2])) in whole and not any(s[1] == local for s in whole)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("balanced", [False, True])
def test_sequence_split_keeps_no_gathered_keys_for_the_backward_pass(capsys, balanced):
    """Each device gathers the row's keys and values inside a checkpoint: what the backward pass keeps is the local
    q / k / v and the kernel's own output and logsumexp, never a device's gathered [K, L, D] copy (8 of them, 4x q
    here: what was kept before the checkpoint; the check can fail), split contiguously or balanced."""
    from jax import ad_checkpoint

    B, L, H, K, D = 1, 2048, 4, 2, 128  # whole blocks of 256 / 128 on 8 / 16 (half-)chunks: no padding
    q, k, v = _qkv(B, L, H, K, D)
    pos, seg = jnp.arange(L)[None], jnp.ones((B, L), jnp.int32)
    with jax.set_mesh(_mesh((1, 8, 1))), _balanced_split(balanced):
        ad_checkpoint.print_saved_residuals(lambda q, k, v: attention.self_attention(
            q, k, v, pos, seg, impl="splash", interpret=True).sum(), q, k, v)
    saved = [np.prod([int(d) for d in m.split(",")]) for m in re.findall(r"f32\[([\d,]+)\]", capsys.readouterr().out)]
    assert saved and max(saved) <= q.size, saved


def test_splash_sequence_plan_balances_the_busiest_device():
    """Contiguous, the busiest of n devices computes (2n - 1) / n^2 of a padded row's causal blocks; balanced (device
    j swaps the second half of its queries with device n - 1 - j's) every device computes 1 / n, counted in the
    kernels' own block maps. The plan takes the balanced split where its busiest device has no more blocks and less
    block area, padding included, and refuses any split for short rows (16 tokens on 8 devices would be padded to
    whole blocks on each)."""
    from jmlr_jax.models import kernels

    assert kernels.splash_block(1128) == (384, 1152)
    assert kernels.splash_block(8192, shards=8) == (512, 8192)
    assert kernels.splash_block(768, shards=4) == (256, 1024)  # 192 tokens a device: one block of 256
    np.testing.assert_array_equal(kernels.balanced_order(16, 4), [0, 1, 14, 15, 4, 5, 10, 11, 8, 9, 6, 7, 12, 13, 2, 3])
    # 8192 on 8: balanced, 17 blocks of 512 on every device against the contiguous split's busiest 31
    assert kernels.splash_sequence_plan(8192, 8) == (True, 512, 8192, 17, 17 * 16)
    # 2048 on 8 and 768 on 4 stay contiguous: balanced would take more, smaller blocks (17 of 128 against 8 of 256;
    # 9 of 128 against 4 of 256), each a grid step with a fixed cost
    assert kernels.splash_sequence_plan(2048, 8) == (False, 256, 2048, 8, 32)
    assert kernels.splash_sequence_plan(768, 4) == (False, 256, 1024, 4, 16)
    # 12000 on 8: balanced in blocks of 384 (66 of them, area 594) against 69 of 512 (area 1104)
    assert kernels.splash_sequence_plan(12000, 8) == (True, 384, 12288, 66, 594)
    # short rows stay whole: 640 on 4 devices would be padded to 1024, 7/16 of its square > 640^2
    assert kernels.splash_sequence_plan(640, 4) is None
    assert kernels.splash_sequence_plan(16, 8) is None and kernels.splash_sequence_plan(128, 2) is None
    # the blocks each device's kernel computes (non-empty in its slice of the mask): one 8192-token row on 8 devices
    # has 136 causal blocks of 512; contiguous, device i computes 4 i + 3 of them, balanced every device 17
    def per_device(order):
        info = kernels._splash_kernel(8192, 4, 512, interpret=True, q_shards=8, q_order=order).fwd_mask_info
        mask = np.asarray(info.block_mask)
        return [int((mask[:, 2 * i:2 * i + 2] > 0).sum()) for i in range(8)]

    assert per_device(None) == [4 * i + 3 for i in range(8)]
    assert per_device(kernels.balanced_order(8192, 8)) == [17] * 8
    whole = np.asarray(kernels._splash_kernel(8192, 4, 512, interpret=True).fwd_mask_info.block_mask)
    assert int((whole > 0).sum()) == 136


def test_auto_picks_backend_by_platform():
    pick = lambda **kw: attention.resolve_implementation("auto", head_dim=64, **kw)  # noqa: E731
    assert pick(dtype=jnp.float32, right_padded=True, platform="cpu") == "blockwise"  # 8 devices: no custom call
    from jmlr_jax.models import cpu_kernel

    one = "cpu" if cpu_kernel.available() else "blockwise"
    assert pick(dtype=jnp.float32, right_padded=True, platform="cpu", num_devices=1) == one
    with jax.set_mesh(_mesh()):  # 8 devices, a mesh in context: the kernel runs per shard
        assert pick(dtype=jnp.float32, right_padded=True, platform="cpu") == one
    assert attention.resolve_implementation("auto", head_dim=8, dtype=jnp.float32, right_padded=True,
                                            platform="cpu", num_devices=1) == "blockwise"  # not a multiple of 16
    assert pick(dtype=jnp.bfloat16, right_padded=False, platform="tpu") == "splash"
    assert pick(dtype=jnp.bfloat16, right_padded=True, platform="gpu") == "cudnn"
    assert pick(dtype=jnp.bfloat16, right_padded=False, platform="gpu") == "pallas_gpu"  # packed rows
    assert pick(dtype=jnp.float32, right_padded=True, platform="gpu") == "pallas_gpu"  # cuDNN: bf16/fp16 only
    assert attention.resolve_implementation("reference", dtype=jnp.float32, head_dim=64, right_padded=False) \
        == "reference"
    with pytest.raises(ValueError, match="not in"):
        attention.resolve_implementation("flash", dtype=jnp.float32, head_dim=64, right_padded=False)
    with pytest.raises(ValueError, match="attention"):
        LlamaConfig(attention="flash")
    q, k, v = _qkv(1, 8, 2, 1, 8)
    with pytest.raises(ValueError, match="right-padded"):
        attention.self_attention(q, k, v, jnp.arange(8)[None], jnp.ones((1, 8), jnp.int32), impl="cudnn")


@pytest.mark.parametrize("impl", ["blockwise", "cpu", "splash"])
def test_model_backends_give_the_oracle_logits(impl):
    """A whole decoder (S2 at training, dense at inference, packed rows) with each backend vs the oracle."""
    _need(impl)
    cfg = LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, s2_group_size=64, attention="reference")
    params = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 256), 0, 40)
    pos, seg, _ = _case("packed_padded", 256)
    real = np.asarray(seg > 0)
    fast = cfg.replace(attention=impl, attn_block=64)
    for train in (False, True):
        kw = dict(positions_BxL=pos, segment_ids_BxL=seg, train=train)
        ref = Llama(cfg).apply({"params": params}, tokens, **kw)
        out = jax.jit(Llama(fast).apply, static_argnames="train")({"params": params}, tokens, **kw) \
            if impl != "splash" else \
            _interpret_splash(fast, params, tokens, kw)
        np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=1e-5)


def _interpret_splash(cfg, params, tokens, kw):
    """The model with splash in interpret mode (what TPU runs, executed on CPU)."""
    from unittest import mock

    real = attention.self_attention
    with mock.patch.object(llama_lib, "self_attention",
                           lambda *a, **k: real(*a, **dict(k, interpret=True))):
        return Llama(cfg).apply({"params": params}, tokens, **kw)


def _attention_cost(L: int, s2: int, unroll: bool, what: str) -> float:
    """XLA's estimate for blockwise attention fwd+bwd (one head pair, B=1): FLOPs (lowered, loops written
    out) or compiled scratch bytes."""
    q, k, v = (jax.ShapeDtypeStruct((1, L, n, 16), jnp.float32) for n in (2, 1, 1))
    pos = jax.ShapeDtypeStruct((1, L), jnp.int32)
    f = lambda q, k, v, pos: jnp.sum(attention.self_attention(  # noqa: E731
        q, k, v, pos, jnp.ones_like(pos), impl="blockwise", s2_group_size=s2, block=512, unroll=unroll))
    lowered = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(q, k, v, pos)
    if what == "flops":
        cost = lowered.cost_analysis()
        return float((cost[0] if isinstance(cost, list) else cost)["flops"])
    return float(lowered.compile().memory_analysis().temp_size_in_bytes)


def test_s2_needs_a_third_of_dense_causal_flops_at_8k():
    """S2-Attn reaches the kernel as structure: at L=8192, G=2048 it costs <= 0.35x dense causal."""
    dense = _attention_cost(8192, 0, unroll=True, what="flops")
    s2 = _attention_cost(8192, 2048, unroll=True, what="flops")
    assert s2 <= 0.35 * dense, (s2, dense)
    assert s2 >= 0.2 * dense, "sanity: S2 still computes its groups"


def test_blockwise_scratch_memory_grows_linearly():
    """fwd+bwd scratch at L = 1k, 2k, 4k: x2 per doubling of L (the L^2 oracle would be x4)."""
    mem = [_attention_cost(L, 0, unroll=False, what="memory") for L in (1024, 2048, 4096)]
    assert mem[1] / mem[0] < 2.3 and mem[2] / mem[1] < 2.3, mem

"""Dense and S2-Attn masks: brute-force construction, causality by gradients and perturbation, GQA."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jmlr_jax.models import Llama, LlamaConfig
from jmlr_jax.models import attention, llama as llama_lib


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


def test_s2_gradients_are_causal():
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
    base = model.apply({"params": params}, tokens, train=True)
    for t in (3, 9, 15):
        changed = model.apply({"params": params}, tokens.at[0, t].set((tokens[0, t] + 1) % 40), train=True)
        np.testing.assert_array_equal(np.asarray(changed[0, :t]), np.asarray(base[0, :t]))
        assert np.any(np.asarray(changed[0, t:]) != np.asarray(base[0, t:]))
    dense = model.apply({"params": params}, tokens, train=False)
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


@pytest.mark.parametrize("s2", [0, 6])
def test_chunked_self_attention_equals_one_block(s2):
    """Packed segments (positions restart), S2 blocks and a ragged last chunk: chunking changes nothing."""
    B, L, H, K, D = 2, 29, 4, 2, 8
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (B, L, n, D)) for i, n in enumerate((H, K, K)))
    seg = jnp.asarray([[1] * 12 + [2] * 17, [1] * 25 + [0] * 4])
    pos = jnp.asarray([list(range(12)) + list(range(17)), list(range(29))])
    info = attention.make_mask_info(pos, seg, num_heads=H, s2_group_size=s2)
    ref = attention.dot_product_attention(q, k, v, info)
    for chunk in (4, 7, 16):
        out = attention.chunked_self_attention(q, k, v, info, chunk)
        np.testing.assert_allclose(np.asarray(out)[seg > 0], np.asarray(ref)[seg > 0], atol=1e-6)


def test_model_attn_chunk_does_not_change_logits():
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, s2_group_size=8, attn_chunk=0)
    params = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 37), 0, 40)
    for train in (False, True):
        ref = Llama(cfg).apply({"params": params}, tokens, train=train)
        out = Llama(cfg.replace(attn_chunk=8)).apply({"params": params}, tokens, train=train)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)

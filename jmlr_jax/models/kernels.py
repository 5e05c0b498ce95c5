"""Fused attention kernels of the accelerators, adapted to one signature: causal self-attention over
q [B, L, H, D], k/v [B, L, K, D] with segment ids seg [B, L] (tokens attend within equal ids). Each returns
[B, L, H, D] in q's dtype. `attention.self_attention` chooses among them; `flash.flash_attention` is the
portable one.

- cudnn: `jax.nn.dot_product_attention(implementation="cudnn")`, causal, GQA, right padding as sequence
  lengths (cuDNN skips the padded tiles). Only for right-padded rows (one segment then padding): the public
  API has no segment ids, and a boolean mask would become a dense bias that skips nothing. Odd lengths get
  one more padding token (JAX's cuDNN training rule needs even ones; found by `jmlr_jax.lowering`).
- pallas_gpu: Pallas' Triton flash attention (`jax.experimental.pallas.ops.gpu.attention.mha`), causal +
  segment ids: for packed rows on GPU. It has no GQA, so K/V heads are repeated (memory H/K x K/V).
- splash: Pallas splash attention for TPU (`make_splash_mqa_single_device`, vmapped over KV heads and batch),
  causal mask whose empty blocks are skipped, segment ids; sequence padded to whole 128-blocks.
`interpret=True` runs the two Pallas kernels on CPU (slow; for tests).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pad_len(x, Lp: int, value=0):
    L = x.shape[1]
    return jnp.pad(x, [(0, 0), (0, Lp - L)] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def cudnn_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL) -> jax.Array:
    """cuDNN flash attention; rows must be right-padded (valid tokens first, segment id 0 after)."""
    lengths_B = jnp.maximum(jnp.sum((seg_BxL > 0).astype(jnp.int32), axis=1), 1)  # an empty row must not NaN
    # JAX's cuDNN training rule rejects odd lengths (its backward always counts a bias); the extra token is
    # padding beyond every row's length, so nothing attends to it.
    L = q_BxLxHxD.shape[1]
    q, k, v = (_pad_len(x, _round_up(L, 2)) for x in (q_BxLxHxD, k_BxLxKxD, v_BxLxKxD))
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=lengths_B,
                                        key_value_seq_lengths=lengths_B, implementation="cudnn")[:, :L]


def pallas_gpu_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, *, interpret: bool = False) -> jax.Array:
    """Triton flash attention with segment ids (packed rows)."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    B, L, H, D = q_BxLxHxD.shape
    rep = H // k_BxLxKxD.shape[2]
    Lp = _round_up(L, 128)
    k, v = (jnp.repeat(x, rep, axis=2) if rep > 1 else x for x in (k_BxLxKxD, v_BxLxKxD))
    out = gpu_attention.mha(_pad_len(q_BxLxHxD, Lp), _pad_len(k, Lp), _pad_len(v, Lp),
                            _pad_len(seg_BxL.astype(jnp.int32), Lp, -1), sm_scale=D**-0.5, causal=True,
                            interpret=interpret)
    return out[:, :L]


def _splash_kernel(L: int, group: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.CausalMask((L, L))] * group)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mqa_single_device(mask=mask, block_sizes=sizes, residual_checkpoint_name="attention",
                                            interpret=interpret)


def splash_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, *, block: int = 512,
                     interpret: bool = False) -> jax.Array:
    """Splash attention: one MQA kernel per KV head (its query heads share the mask), vmapped over batch."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    B, L, H, D = q_BxLxHxD.shape
    K = k_BxLxKxD.shape[2]
    # The largest block (a multiple of 128, at most `block`) with the least padding: 1128 tokens -> 3 x 384
    # (1152), not 3 x 512 (1536), whose padded rows the kernel would compute.
    b = min(range(min(block, _round_up(L, 128)), 0, -128), key=lambda b: _round_up(L, b))
    Lp = _round_up(L, b)
    kernel = _splash_kernel(Lp, H // K, b, interpret)

    def attend(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL):
        q = (_pad_len(q_BxLxHxD, Lp) * jnp.asarray(D**-0.5, q_BxLxHxD.dtype)).reshape(B, Lp, K, H // K, D)
        q_BxKxGxLxD = q.transpose(0, 2, 3, 1, 4)
        k_BxKxLxD = _pad_len(k_BxLxKxD, Lp).transpose(0, 2, 1, 3)
        v_BxKxLxD = _pad_len(v_BxLxKxD, Lp).transpose(0, 2, 1, 3)
        seg = _pad_len(seg_BxL.astype(jnp.int32), Lp, -1)
        per_row = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over KV heads
        out = jax.vmap(lambda q, k, v, s: per_row(q, k, v, sk.SegmentIds(q=s, kv=s)))(
            q_BxKxGxLxD, k_BxKxLxD, v_BxKxLxD, seg)
        return out.transpose(0, 3, 1, 2, 4).reshape(B, Lp, H, D)[:, :L]

    if D % 128:
        # A head_dim that is not a multiple of 128 lanes: the kernel-layout copies of q, k, v, [.., L, D] with D
        # minor, would be stored for the backward pass tiled to 128 lanes (twice their size at D = 64). Kept
        # instead are this function's inputs, in a layout XLA picks, and the kernel's own named residuals (output,
        # logsumexp); the backward pass redoes only the pads and transposes. SmolLM2 at 16 x 2048 on a v5p
        # chip: the compiler's peak 22.4 -> 21.0 GiB, still 3 kernel calls (no forward rerun).
        attend = jax.checkpoint(attend, policy=jax.checkpoint_policies.save_only_these_names("attention"))
    return attend(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL)

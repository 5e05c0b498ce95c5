"""Attention core: masks built from positions and segment ids, dense and shifted-sparse (S2-Attn).

Masks are never materialised as inputs: every layer receives small per-token integer arrays
(positions, document segment ids, S2 block ids) and builds the boolean mask inside the fused
attention computation, so an [B, H, L, L] mask never travels through the layer scan.

S2-Attn (LongLoRA) is expressed as per-head *segment masks*: in the first half of the heads a
token at position p belongs to block floor(p / G), in the second half to block
floor((p + G/2) / G). Attention is allowed only inside a block and only to earlier positions,
so no token ever sees a future token (the rolled-token formulation of the reference code does
let early tokens see the end of the sequence).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Large finite negative instead of -inf: rows that are fully masked (padding queries) stay finite.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class MaskInfo(NamedTuple):
    """Per-token metadata from which each attention layer derives its boolean mask.

    q_pos_BxL / kv_pos_BxS: absolute positions (kv position < 0 marks an empty or padded slot).
    q_seg_BxL / kv_seg_BxS: document segment ids (packing); attention only within equal ids.
    q_blk_BxHxL / kv_blk_BxHxS: optional S2-Attn block ids per head (H = 1 or num_heads).
    """

    q_pos_BxL: jax.Array
    kv_pos_BxS: jax.Array
    q_seg_BxL: jax.Array
    kv_seg_BxS: jax.Array
    q_blk_BxHxL: jax.Array | None = None
    kv_blk_BxHxS: jax.Array | None = None


def s2_block_ids(pos_BxL: jax.Array, num_heads: int, group_size: int) -> jax.Array:
    """S2-Attn block id of every token for every head: [B, H, L].

    Heads [0, H/2) use blocks [mG, (m+1)G); heads [H/2, H) use blocks shifted by G/2.
    """
    if group_size < 2 or group_size % 2:
        raise ValueError(f"S2-Attn group size must be an even integer >= 2, got {group_size}")
    if num_heads % 2:
        raise ValueError(f"S2-Attn shifts half of the heads; num_heads={num_heads} is odd")
    shift_H = jnp.where(jnp.arange(num_heads) < num_heads // 2, 0, group_size // 2)
    return (pos_BxL[:, None, :] + shift_H[None, :, None]) // group_size


def make_mask_info(
    pos_BxL: jax.Array,
    seg_BxL: jax.Array,
    *,
    num_heads: int,
    s2_group_size: int = 0,
) -> MaskInfo:
    """Mask metadata for self-attention over one [B, L] block (training / prefill).

    A group that covers the whole block (G >= L) is a single LongLoRA group: plain causal attention.
    """
    use_s2 = 0 < s2_group_size < pos_BxL.shape[1]
    blk = s2_block_ids(pos_BxL, num_heads, s2_group_size) if use_s2 else None
    return MaskInfo(pos_BxL, pos_BxL, seg_BxL, seg_BxL, blk, blk)


def build_mask(info: MaskInfo) -> jax.Array:
    """Boolean attention mask [B, H|1, L, S]: causal, same segment, valid slot, same S2 block."""
    q_pos = info.q_pos_BxL[:, None, :, None]
    kv_pos = info.kv_pos_BxS[:, None, None, :]
    mask = (kv_pos <= q_pos) & (kv_pos >= 0)
    mask &= info.q_seg_BxL[:, None, :, None] == info.kv_seg_BxS[:, None, None, :]
    if info.q_blk_BxHxL is not None:
        mask &= info.q_blk_BxHxL[:, :, :, None] == info.kv_blk_BxHxS[:, :, None, :]
    return mask


def dot_product_attention(
    q_BxLxHxD: jax.Array,
    k_BxSxKxD: jax.Array,
    v_BxSxKxD: jax.Array,
    info: MaskInfo,
) -> jax.Array:
    """Grouped-query attention with softmax in fp32. Returns [B, L, H, D] in q's dtype.

    H query heads share K = H / G key-value heads; queries are grouped as [K, G] so no key or
    value tensor is ever repeated in memory.
    """
    B, L, H, D = q_BxLxHxD.shape
    K = k_BxSxKxD.shape[2]
    if H % K:
        raise ValueError(f"num_heads={H} is not a multiple of num_kv_heads={K}")
    G = H // K
    q_BxLxKxGxD = q_BxLxHxD.reshape(B, L, K, G, D) * (D**-0.5)
    logits_BxKxGxLxS = jnp.einsum(
        "blkgd,bskd->bkgls", q_BxLxKxGxD, k_BxSxKxD, preferred_element_type=jnp.float32
    )
    mask = build_mask(info)  # [B, H|1, L, S]
    mask_BxKxGxLxS = mask.reshape(B, -1, 1 if mask.shape[1] == 1 else G, L, mask.shape[-1])
    logits_BxKxGxLxS = jnp.where(mask_BxKxGxLxS, logits_BxKxGxLxS, _MASK_VALUE)
    probs = jax.nn.softmax(logits_BxKxGxLxS, axis=-1).astype(v_BxSxKxD.dtype)
    out_BxLxKxGxD = jnp.einsum("bkgls,bskd->blkgd", probs, v_BxSxKxD)
    return out_BxLxKxGxD.reshape(B, L, H, D)


def chunked_self_attention(
    q_BxLxHxD: jax.Array,
    k_BxLxKxD: jax.Array,
    v_BxLxKxD: jax.Array,
    info: MaskInfo,
    chunk: int,
) -> jax.Array:
    """Self-attention in query chunks; chunk [s, e) only sees keys [0, e).

    Exact when no token attends to a later index, i.e. positions never decrease within a segment
    (true for plain, packed and S2 training sequences). Skips the fully masked upper triangle of
    key blocks (about half the attention FLOPs at long L) and keeps the fp32 logits per chunk small.
    """
    L = q_BxLxHxD.shape[1]
    outs = []
    for s in range(0, L, chunk):
        e = min(s + chunk, L)
        blk = info.q_blk_BxHxL is not None
        sub = MaskInfo(info.q_pos_BxL[:, s:e], info.kv_pos_BxS[:, :e], info.q_seg_BxL[:, s:e], info.kv_seg_BxS[:, :e],
                       info.q_blk_BxHxL[:, :, s:e] if blk else None, info.kv_blk_BxHxS[:, :, :e] if blk else None)
        outs.append(dot_product_attention(q_BxLxHxD[:, s:e], k_BxLxKxD[:, :e], v_BxLxKxD[:, :e], sub))
    return jnp.concatenate(outs, axis=1)

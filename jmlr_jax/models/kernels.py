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
- splash: Pallas splash attention for TPU (`make_splash_mqa`, vmapped over KV heads and batch), causal mask
  whose empty blocks are skipped, segment ids; sequence padded to whole blocks (multiples of 128). Under a mesh
  it also runs with its queries split along the sequence (`splash_sequence_sharded`, context parallelism).
`interpret=True` runs the two Pallas kernels on CPU (slow; for tests).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jmlr_jax import parallel


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


def splash_block(L: int, block: int = 512, shards: int = 1) -> tuple[int, int]:
    """(block, padded length) for splash: the largest multiple of 128 up to `block` that pads L least to whole
    blocks on each of `shards` query shards. 1128 tokens -> 3 x 384 (1152), not 3 x 512 (1536), whose padded rows
    the kernel would compute."""
    top = min(block, _round_up(-(-L // shards), 128))
    b = min(range(top, 0, -128), key=lambda b: _round_up(L, b * shards))
    return b, _round_up(L, b * shards)


class SequencePlan(NamedTuple):
    """How splash splits one row's queries over n devices: `balanced` pairs device j with device n - 1 - j, each
    keeping the first half of its own L / n queries and taking the second half of its partner's, so that every
    device computes the same number of causal blocks; otherwise each device keeps its contiguous L / n. block: the
    kernel's block size; padded: the row's padded length (whole blocks on each of 2n half-chunks or n chunks)."""

    balanced: bool
    block: int
    padded: int
    steps: int  # the busiest device's causal blocks (the kernel's grid steps per head)
    area: int  # their area, in 128 x 128 blocks


def _causal_blocks(first: int, count: int) -> int:
    """Non-empty blocks of `count` query blocks starting at query block `first` in a causal mask: row r has r + 1."""
    return count * first + count * (count + 1) // 2


def _split_plan(L: int, n: int, block: int, balanced: bool) -> SequencePlan:
    b, Lp = splash_block(L, block, 2 * n if balanced else n)
    if balanced:
        m = Lp // (2 * n * b)  # blocks in a half-chunk; device 0 holds half-chunks 0 and 2n - 1
        busiest = _causal_blocks(0, m) + _causal_blocks((2 * n - 1) * m, m)
    else:
        c = Lp // (n * b)
        busiest = _causal_blocks((n - 1) * c, c)
    return SequencePlan(balanced, b, Lp, busiest, busiest * (b // 128) ** 2)


def splash_sequence_plan(L: int, n: int, block: int = 512) -> SequencePlan | None:
    """How to split splash's queries over n devices, or None for whole rows on every device. Whether to split: where
    the busiest device's share of the padded row, (2n - 1) / n^2 of its square, is smaller than the whole row's
    square (short rows are padded to whole blocks on every shard: 16 tokens on 8 devices would become 1024; the
    gathers' and the exchange's latency is not counted, so short rows stay whole). How: the contiguous split's
    busiest device computes (2n - 1) / n^2 of the causal blocks, the balanced split's every device 1 / n, but its 2n
    half-chunks can need smaller blocks or more padding. Balanced where its busiest device has no more blocks (the
    kernel's grid steps, each with a fixed cost on TPU) and less block area than the contiguous split's: 8192 tokens
    on 8 devices, 17 blocks of 512 against 31; 2048 on 8 stays contiguous (17 blocks of 128 against 8 of 256)."""
    contiguous = _split_plan(L, n, block, balanced=False)
    if (2 * n - 1) * contiguous.padded**2 >= n**2 * splash_block(L, block)[1] ** 2:
        return None
    balanced = _split_plan(L, n, block, balanced=True)
    if balanced.steps <= contiguous.steps and balanced.area < contiguous.area:
        return balanced
    return contiguous


def balanced_order(Lp: int, n: int) -> np.ndarray:
    """The token index of every query row after the balanced split's exchange, in device order: device j holds the
    first half of chunk j, then the second half of chunk n - 1 - j."""
    halves = np.arange(Lp, dtype=np.int32).reshape(n, 2, Lp // (2 * n))
    return np.stack([halves[:, 0], halves[::-1, 1]], axis=1).reshape(Lp)


def _splash_kernel(L: int, group: int, block: int, interpret: bool, q_shards: int = 1,
                   q_order: np.ndarray | None = None):
    """q_order: the token index of each query row (`balanced_order`), where the rows are not in token order; the
    causal mask compares it with the key's index (keys stay in order), in the kernel and in its block map."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    causal = sm.CausalMask((L, L))
    if q_order is not None:
        causal.q_sequence = q_order  # hashed and compared with the mask: the group's heads still share one
    mask = sm.MultiHeadMask([causal] * group)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mqa(mask=mask, block_sizes=sizes, head_shards=1, q_seq_shards=q_shards,
                              residual_checkpoint_name="attention", interpret=interpret)


# The kernel's own residuals (output, logsumexp) are named "attention"; under this policy everything else the
# backward pass needs is recomputed from the checkpointed function's inputs.
_KEEP_KERNEL_RESIDUALS = jax.checkpoint_policies.save_only_these_names("attention")


def _splash_apply(kernel, q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, seg_q_BxL, seg_kv_BxS, Lq: int, Lkv: int,
                  checkpoint: bool = True) -> jax.Array:
    """One MQA kernel per KV head (its query heads share the mask), vmapped over KV heads and batch; q padded to
    Lq and k / v to Lkv tokens (whole blocks; padding in a segment of its own), the output cut back. checkpoint:
    False when the caller checkpoints already."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    B, L, H, D = q_BxLxHxD.shape
    K = k_BxSxKxD.shape[2]

    def attend(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, seg_q_BxL, seg_kv_BxS):
        q = (_pad_len(q_BxLxHxD, Lq) * jnp.asarray(D**-0.5, q_BxLxHxD.dtype)).reshape(B, Lq, K, H // K, D)
        q_BxKxGxLxD = q.transpose(0, 2, 3, 1, 4)
        k_BxKxSxD = _pad_len(k_BxSxKxD, Lkv).transpose(0, 2, 1, 3)
        v_BxKxSxD = _pad_len(v_BxSxKxD, Lkv).transpose(0, 2, 1, 3)
        seg_q, seg_kv = (_pad_len(s.astype(jnp.int32), n, -1) for s, n in ((seg_q_BxL, Lq), (seg_kv_BxS, Lkv)))
        per_row = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over KV heads
        out = jax.vmap(lambda q, k, v, sq, skv: per_row(q, k, v, sk.SegmentIds(q=sq, kv=skv)))(
            q_BxKxGxLxD, k_BxKxSxD, v_BxKxSxD, seg_q, seg_kv)
        return out.transpose(0, 3, 1, 2, 4).reshape(B, Lq, H, D)[:, :L]

    if D % 128 and checkpoint:
        # A head_dim that is not a multiple of 128 lanes: the kernel-layout copies of q, k, v, [.., L, D] with D
        # minor, would be stored for the backward pass tiled to 128 lanes (twice their size at D = 64). Kept
        # instead are this function's inputs, in a layout XLA picks, and the kernel's own named residuals (output,
        # logsumexp); the backward pass redoes only the pads and transposes. SmolLM2 at 16 x 2048 on a v5p
        # chip: the compiler's peak 22.4 -> 21.0 GiB, still 3 kernel calls (no forward rerun).
        attend = jax.checkpoint(attend, policy=_KEEP_KERNEL_RESIDUALS)
    return attend(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, seg_q_BxL, seg_kv_BxS)


def splash_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, *, block: int = 512,
                     interpret: bool = False) -> jax.Array:
    """Splash attention over whole rows."""
    B, L, H, D = q_BxLxHxD.shape
    b, Lp = splash_block(L, block)
    kernel = _splash_kernel(Lp, H // k_BxLxKxD.shape[2], b, interpret)
    return _splash_apply(kernel, q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, seg_BxL, Lp, Lp)


def splash_sequence_sharded(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, *, mesh, rows, seq, heads,
                            block: int = 512, interpret: bool = False) -> jax.Array:
    """Splash attention with the queries split along the sequence over the mesh axes `seq` (context
    parallelism; rows over `rows`, KV heads over `heads`): each device attends its L / n queries to the whole
    row's keys and values, which it gathers (K / H of q's size with GQA). The kernel's mask is split the same way
    (`q_seq_shards`, `manual_sharding_spec`), so a device skips the blocks above the diagonal of its own rows.
    Split contiguously, the last of n devices would compute (2n - 1) / n^2 of the causal blocks and the first
    1 / n^2; the balanced split (`splash_sequence_plan`, where it pays) has device j swap the second half of its
    queries with device n - 1 - j's (one `ppermute` of half the local q, and of the output back), after which every
    device computes 1 / n of them, and the mask compares each query row's token index (`balanced_order`) with
    the key's. L is padded to whole blocks on every shard (padding: a segment of its own).
    The exchange and the gather sit inside a checkpoint that keeps only the kernel's named residuals and the local
    inputs: the backward pass gathers the keys and values again instead of every device storing the whole row's
    for every layer, and their gradients come back reduce-scattered (the transpose of the gather)."""
    B, L, H, D = q_BxLxHxD.shape
    n = parallel.devices_of(mesh, seq)
    plan = splash_sequence_plan(L, n, block)
    Lp = plan.padded
    order = balanced_order(Lp, n) if plan.balanced else None
    kernel = _splash_kernel(Lp, H // k_BxLxKxD.shape[2], plan.block, interpret, q_shards=n, q_order=order)
    kernel_spec = kernel.manual_sharding_spec(jax.sharding.NamedSharding(mesh, P(None, seq)))
    q, k, v = (_pad_len(x, Lp) for x in (q_BxLxHxD, k_BxLxKxD, v_BxLxKxD))
    seg = _pad_len(seg_BxL.astype(jnp.int32), Lp, -1)
    x, row = P(rows, seq, heads, None), P(rows, seq)
    partners = [(j, n - 1 - j) for j in range(n)]

    def swap(t):  # the balanced exchange along the sequence axis; its own inverse
        if not plan.balanced:
            return t
        first, second = jnp.split(t, 2, axis=1)
        return jnp.concatenate([first, jax.lax.ppermute(second, seq, partners)], axis=1)

    def body(kernel, q, k, v, seg):
        def attend(q, k, v, seg):
            k_all, v_all, seg_all = (jax.lax.all_gather(t, seq, axis=1, tiled=True) for t in (k, v, seg))
            out = _splash_apply(kernel, swap(q), k_all, v_all, swap(seg), seg_all, q.shape[1], Lp, checkpoint=False)
            return swap(out)

        return jax.checkpoint(attend, policy=_KEEP_KERNEL_RESIDUALS)(q, k, v, seg)

    out = jax.shard_map(body, mesh=mesh, in_specs=(kernel_spec, x, x, x, row), out_specs=x,
                        check_vma=False)(kernel, q, k, v, seg)
    return out[:, :L]

"""Attention: one entry point for causal self-attention with backends chosen by config, and the mask oracle.

`self_attention(q, k, v, pos, seg, impl=...)` is what the decoder calls for training and prefill:
  "reference"   the oracle: einsum over the full [L, L] logits with a boolean mask built from positions,
                segment ids and S2 block ids (`build_mask`); O(L^2) memory. Tests compare everything to it.
  "blockwise"   online-softmax flash attention in plain JAX (`flash.py`): O(L x block) memory; the portable
                fallback.
  "cpu"         the same algorithm as a threaded C++ custom call (`cpu_kernel.py`), compiled on first use:
                heads and query blocks spread over the cores, as PyTorch's CPU kernel does.
  "cudnn"       cuDNN fused flash attention (GPU, bf16/fp16, right-padded rows only).
  "pallas_gpu"  Pallas/Triton flash attention with segment ids (GPU, packed rows).
  "splash"      Pallas splash attention (TPU; also CPU in interpret mode for tests).
  "auto"        by platform (the machine's, or `lowering.target`'s): TPU -> splash; GPU -> cudnn for
                right-padded bf16/fp16 rows, else pallas_gpu (also where S2's groups spread over the devices,
                below: cuDNN takes one segment per row);
                CPU -> cpu when the kernel builds (a C++ compiler is present), head_dim is a multiple of 16 and
                the process has one device or a mesh is in context (`jax.set_mesh`, as the training loop does),
                else blockwise. (MaxText's "autoselected" falls back to O(L^2) on CPU.)
Kernels XLA's partitioner cannot split (cpu, pallas_gpu, splash: a custom call or a Pallas kernel) would have
their inputs gathered whole onto every device of a sharded jit; under a mesh in context they run per shard
(`jax.shard_map`: rows over the batch's mesh axes, KV heads over the tensor axis, S2's head halves too),
as MaxText runs splash. With fewer rows than devices (one long row split along its sequence) S2's groups become
the rows the devices split (`_roll_fold`), and dense splash splits its queries along the sequence (context
parallelism, `_sequence_axes`), so no TPU attends over whole rows (GPU kernels do, dense: no query offset).
cuDNN's call has JAX's own partitioning rules.
Decoding with a KV cache always uses `dot_product_attention` (one or a few query rows).

S2-Attn (LongLoRA), training only, with group size G over sequence indices: heads [0, H/2) attend causally
within groups [mG, (m+1)G); heads [H/2, H) within groups shifted by G/2: [0, G/2), [G/2, 3G/2), ..., a
shorter group at each end, no wrap-around, so no token ever sees a later one (the rolled-token variant of
LongLoRA's non-flash path lets the first G/2 tokens see the last G/2). The oracle expresses this as per-head
block ids in the mask; every fast backend gets it as structure: the groups of each head half are folded into
the batch (equal-length groups share one kernel call), so the cost is O(L x G), not O(L^2).

Masks are never materialised as inputs: layers receive small per-token integer arrays (positions, segment
ids; segment 0 = padding) and the oracle builds its boolean mask inside the computation.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jmlr_jax import lowering, parallel
from jmlr_jax.models import kernels

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


def s2_block_ids(idx_BxL: jax.Array, num_heads: int, group_size: int) -> jax.Array:
    """S2-Attn block id of every token (by sequence index) for every head: [B, H, L].

    Heads [0, H/2) use blocks [mG, (m+1)G); heads [H/2, H) use blocks shifted by G/2.
    """
    if group_size < 2 or group_size % 2:
        raise ValueError(f"S2-Attn group size must be an even integer >= 2, got {group_size}")
    if num_heads % 2:
        raise ValueError(f"S2-Attn shifts half of the heads; num_heads={num_heads} is odd")
    shift_H = jnp.where(jnp.arange(num_heads) < num_heads // 2, 0, group_size // 2)
    return (idx_BxL[:, None, :] + shift_H[None, :, None]) // group_size


def make_mask_info(
    pos_BxL: jax.Array,
    seg_BxL: jax.Array,
    *,
    num_heads: int,
    s2_group_size: int = 0,
) -> MaskInfo:
    """Mask metadata for self-attention over one [B, L] block (training / prefill).

    S2 groups are over sequence indices (the layout the kernels fold); a group that covers the whole block
    (G >= L) is a single LongLoRA group: plain causal attention.
    """
    B, L = pos_BxL.shape
    use_s2 = 0 < s2_group_size < L
    idx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    blk = s2_block_ids(idx, num_heads, s2_group_size) if use_s2 else None
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




IMPLEMENTATIONS = ("auto", "reference", "blockwise", "cpu", "cudnn", "pallas_gpu", "splash")


def resolve_implementation(impl: str, *, dtype, head_dim: int, right_padded: bool,
                           platform: str | None = None, num_devices: int | None = None) -> str:
    """The backend `impl` names; "auto" picks by platform (see the module docstring)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {impl!r} not in {IMPLEMENTATIONS}")
    if impl != "auto":
        return impl
    platform = platform or lowering.backend()
    if platform == "tpu":
        return "splash"
    if platform in ("gpu", "cuda", "rocm"):
        half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        if half and right_padded and head_dim % 8 == 0 and head_dim <= 128:
            return "cudnn"
        return "pallas_gpu"
    from jmlr_jax.models import cpu_kernel

    # one device, or a mesh in context (jax.set_mesh): the kernel then runs per shard (_shards)
    per_device = (num_devices or jax.device_count()) == 1 or not jax.sharding.get_abstract_mesh().empty
    return "cpu" if per_device and head_dim % 16 == 0 and cpu_kernel.available() else "blockwise"


def _s2_pieces(L: int, G: int, shifted: bool) -> list[tuple[int, int]]:
    """(start, length) of the S2 groups of one head half, in order, covering [0, L)."""
    starts = ([0] + list(range(G // 2, L, G))) if shifted else list(range(0, L, G))
    return [(s, min(e, L) - s) for s, e in zip(starts, starts[1:] + [L])]


def _fold_apply(kernel, q, k, v, seg, pieces):
    """Run `kernel` on each group as its own batch row (equal-length groups in one call); reassemble."""
    B = q.shape[0]
    by_len: dict[int, list[int]] = {}
    for s, n in pieces:
        by_len.setdefault(n, []).append(s)
    outs = {}
    for n, starts in by_len.items():
        cut = lambda x: jnp.concatenate([x[:, s:s + n] for s in starts], axis=0)  # noqa: E731  [len(starts)*B, n]
        o = kernel(cut(q), cut(k), cut(v), cut(seg))
        for c, s in enumerate(starts):
            outs[s] = o[c * B:(c + 1) * B]
    return jnp.concatenate([outs[s] for s, _ in pieces], axis=1)


def _kernel_fn(impl: str, block: int, right_padded: bool, interpret: bool, unroll: bool):
    from jmlr_jax.models import cpu_kernel, flash

    return {
        "cpu": cpu_kernel.cpu_attention,
        "blockwise": lambda q, k, v, s: flash.flash_attention(q, k, v, s, block=block, right_padded=right_padded,
                                                              unroll=unroll),
        "cudnn": kernels.cudnn_attention,
        "pallas_gpu": lambda q, k, v, s: kernels.pallas_gpu_attention(q, k, v, s, interpret=interpret),
        "splash": lambda q, k, v, s: kernels.splash_attention(q, k, v, s, interpret=interpret),
    }[impl]


def self_attention(
    q_BxLxHxD: jax.Array,
    k_BxLxKxD: jax.Array,
    v_BxLxKxD: jax.Array,
    pos_BxL: jax.Array,
    seg_BxL: jax.Array,
    *,
    impl: str = "auto",
    s2_group_size: int = 0,
    right_padded: bool = False,
    block: int = 256,
    interpret: bool = False,
    unroll: bool = False,
) -> jax.Array:
    """Causal (optionally S2) grouped-query self-attention; [B, L, H, D] in q's dtype.

    seg: segment ids, 0 = padding; tokens attend within equal ids. right_padded: the caller promises each row
    is one segment followed by padding (lets "auto" use cuDNN on GPU). Fast backends return zeros at padding.
    interpret: Pallas kernels in interpret mode (CPU tests). unroll: blockwise loops written out, so that XLA's
    cost analysis counts every computed block (tests).
    """
    B, L, H, D = q_BxLxHxD.shape
    K = k_BxLxKxD.shape[2]
    dtype = q_BxLxHxD.dtype
    k_BxLxKxD, v_BxLxKxD = k_BxLxKxD.astype(dtype), v_BxLxKxD.astype(dtype)
    auto, impl = impl == "auto", resolve_implementation(impl, dtype=dtype, head_dim=D, right_padded=right_padded)
    s2 = 0 < s2_group_size < L
    if impl == "reference":
        info = make_mask_info(pos_BxL, seg_BxL, num_heads=H, s2_group_size=s2_group_size if s2 else 0)
        return dot_product_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, info)
    if impl == "cudnn" and not right_padded:
        raise ValueError("attention 'cudnn' needs right-padded rows (no packing or interior padding); use "
                         "'pallas_gpu' or compact the sequence first")
    if s2 and (s2_group_size % 2 or H % 2):
        raise ValueError(f"S2-Attn needs an even group size and head count; got G={s2_group_size}, H={H}")
    G = s2_group_size if s2 else 0
    seg_BxL = seg_BxL.astype(jnp.int32)
    shards = _shards(impl, B, K, s2)
    groups = None
    if shards and G:
        swap = auto and impl == "cudnn"  # cuDNN cannot take the folded groups; "auto" trades it for Triton's kernel
        groups = _group_axes("pallas_gpu" if swap else impl, *shards, B, L, H, K, G)
        impl = "pallas_gpu" if swap and groups else impl
    seq = _sequence_axes(impl, G, L, *shards) if shards and not groups else None
    kernel = _kernel_fn(impl, block, right_padded, interpret, unroll)
    if shards is None:
        out = _attend(kernel, G, None, q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL)
    elif groups:  # S2's groups spread over the devices as rows
        rows, heads = groups
        x, seg = P(rows, None, heads, None), P(rows, None)
        # a partial last group is padded to a whole one (segment 0: nothing attends to it; S2's groups are unchanged)
        pad = [(0, 0), (0, -L % G)]
        qkv = (jnp.pad(t, pad + [(0, 0)] * 2) for t in (q_BxLxHxD, k_BxLxKxD, v_BxLxKxD))
        folded = _roll_fold(*qkv, jnp.pad(seg_BxL, pad), G)
        out = _roll_unfold(jax.shard_map(kernel, mesh=shards[0], in_specs=(x, x, x, seg), out_specs=x,
                                         check_vma=False)(*folded), B, G)[:, :L]
    elif seq:  # dense splash on fewer rows than devices: the queries split along the sequence
        mesh, rows, heads = shards
        out = kernels.splash_sequence_sharded(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, mesh=mesh, rows=rows,
                                              seq=seq, heads=heads, interpret=interpret)
    else:
        mesh, rows, heads = shards
        half = (heads, mesh.shape[heads]) if G and heads else None
        x, seg = P(rows, None, heads, None), P(rows, None)
        out = jax.shard_map(functools.partial(_attend, kernel, G, half), mesh=mesh, in_specs=(x, x, x, seg),
                            out_specs=x, check_vma=False)(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL)
    return jnp.where((seg_BxL > 0)[:, :, None, None], out, 0).astype(dtype)


def _attend(kernel, G: int, half, q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL) -> jax.Array:
    """The kernel on whole rows (G = 0) or on S2's groups, folded into the batch per head half. half: (tensor axis,
    its size) when the heads are split over it per shard: each shard's heads then lie in one half, the first
    size / 2 shards' in the unshifted one."""
    if not G:
        return kernel(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL)
    L, H = q_BxLxHxD.shape[1], q_BxLxHxD.shape[2]
    fold = lambda shifted, q, k, v: _fold_apply(kernel, q, k, v, seg_BxL, _s2_pieces(L, G, shifted))  # noqa: E731
    if half:
        axis, size = half
        return jax.lax.cond(jax.lax.axis_index(axis) >= size // 2, functools.partial(fold, True),
                            functools.partial(fold, False), q_BxLxHxD, k_BxLxKxD, v_BxLxKxD)
    k_BxLxKxD, v_BxLxKxD = _kv_for_halves(k_BxLxKxD, v_BxLxKxD, H)
    K = k_BxLxKxD.shape[2]
    halves = []
    for h, shifted in ((0, False), (1, True)):
        qh = q_BxLxHxD[:, :, h * H // 2:(h + 1) * H // 2]
        kh, vh = (x[:, :, h * K // 2:(h + 1) * K // 2] for x in (k_BxLxKxD, v_BxLxKxD))
        halves.append(fold(shifted, qh, kh, vh))
    return jnp.concatenate(halves, axis=2)


def _kv_for_halves(k_BxLxKxD, v_BxLxKxD, H: int) -> tuple[jax.Array, jax.Array]:
    """k, v splittable into S2's two head halves: an odd KV head count cannot be split, so each query head then
    gets its own copy (K = H)."""
    K = k_BxLxKxD.shape[2]
    if K % 2 == 0:
        return k_BxLxKxD, v_BxLxKxD
    return jnp.repeat(k_BxLxKxD, H // K, axis=2), jnp.repeat(v_BxLxKxD, H // K, axis=2)


def _roll_fold(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, G: int):
    """S2's groups as rows of G tokens (L a multiple of G: the caller pads): [B, L, ...] -> [B * 2 * L/G, G, ...],
    rows ordered (row, head half, group), each with half the heads. The shifted half is rolled by G/2 (LongLoRA's layout), so
    its first and last half-groups share the last row; their segment ids are made distinct (2 s, 2 s + 1) so the
    first tokens never see the last (no wrap-around)."""
    B, L, H, _ = q_BxLxHxD.shape
    k_BxLxKxD, v_BxLxKxD = _kv_for_halves(k_BxLxKxD, v_BxLxKxD, H)
    head_start = jnp.arange(L) < G // 2
    seg_shifted = jnp.where(seg_BxL > 0, 2 * seg_BxL + head_start.astype(jnp.int32), 0)

    def rows(unshifted, shifted):
        x = jnp.stack([unshifted, _rotate(shifted, G, back=False)], axis=1)  # [B, 2, L, ...]
        return x.reshape(B * 2 * (L // G), G, *x.shape[3:])

    halves = lambda x: (x[:, :, :x.shape[2] // 2], x[:, :, x.shape[2] // 2:])  # noqa: E731
    return (*(rows(*halves(x)) for x in (q_BxLxHxD, k_BxLxKxD, v_BxLxKxD)), rows(seg_BxL, seg_shifted))


def _roll_unfold(o_RxGxHxD, B: int, G: int) -> jax.Array:
    """Inverse of `_roll_fold` for the output: [B * 2 * L/G, G, H/2, D] -> [B, L, H, D]."""
    o = o_RxGxHxD.reshape(B, 2, -1, *o_RxGxHxD.shape[2:])
    return jnp.concatenate([o[:, 0], _rotate(o[:, 1], G, back=True)], axis=2)


def _rotate(x_BxLx_, G: int, back: bool) -> jax.Array:
    """x rotated along its sequence by half a group: token G/2 first (back: the inverse). Written as a rotation of
    half-group blocks, not `jnp.roll`: on a sequence split over devices XLA then moves whole blocks between
    neighbours, where for `jnp.roll`'s slices it warned of replicating the array ("involuntary full
    rematerialization") in the gradient."""
    h = x_BxLx_.reshape(x_BxLx_.shape[0], -1, G // 2, *x_BxLx_.shape[2:])
    h = jnp.concatenate([h[:, -1:], h[:, :-1]] if back else [h[:, 1:], h[:, :1]], axis=1)
    return h.reshape(x_BxLx_.shape)


def _group_axes(impl: str, mesh, rows, heads, B: int, L: int, H: int, K: int, G: int):
    """(rows' axes, heads' axis) for S2's groups folded into rows before `shard_map` (`_roll_fold`), or None when
    splitting the batch's rows uses as many devices. One 8192-token row on 8 FSDP chips, G = 2048: 8 group rows,
    one per chip, where the row alone would give every chip the whole attention (a partial last group counts as
    one: it is padded). Not for cuDNN (one segment per row)."""
    if impl == "cudnn":
        return None
    kv_heads = (K if K % 2 == 0 else H) // 2  # per head half (`_kv_for_halves`)
    group_rows, group_heads = parallel.mesh_spec(("batch", "kv_heads"), (2 * B * -(-L // G), kv_heads), mesh)
    if parallel.devices_of(mesh, group_rows, group_heads) <= parallel.devices_of(mesh, rows, heads):
        return None
    return group_rows, group_heads


def _sequence_axes(impl: str, G: int, L: int, mesh, rows, heads):
    """The mesh axes that split dense splash attention's queries along the sequence (`kernels.
    splash_sequence_sharded`): those of the "length" rule that the rows and heads leave, or None (also where the
    split would not pay: `kernels.splash_sequence_plan`, short rows). Only splash has the query offset this needs
    (its mask is split with the queries); cuDNN's and Triton's causal masks start at each call's first query, so
    on GPU such rows stay whole on every chip; S2's groups are spread as rows instead (`_group_axes`)."""
    if impl != "splash" or G:
        return None
    taken = set(parallel.axes_of(rows)) | set(parallel.axes_of(heads))
    free = tuple(a for a in parallel.axes_of(dict(parallel.RULES)["length"]) if a not in taken and mesh.shape[a] > 1)
    if not free or kernels.splash_sequence_plan(L, parallel.devices_of(mesh, free)) is None:
        return None
    return free[0] if len(free) == 1 else free


# Kernels run per shard under a mesh: those XLA's partitioner cannot split (a custom call, a Pallas kernel: in a
# sharded jit it would gather their inputs whole onto every device and run them on the global batch there), and
# cuDNN's, whose JAX partitioning rule refuses q, k and v sharded differently, as XLA's propagation leaves them
# in the fused JMLR step under FSDP (found compiling it for 8 H100s: `jmlr_jax.lowering`). The blockwise and
# reference paths are plain JAX.
OPAQUE = ("cpu", "pallas_gpu", "splash", "cudnn")


def _shards(impl: str, B: int, K: int, s2: bool):
    """(mesh, rows' mesh axes, heads' mesh axis) to run an opaque kernel per shard under the mesh in context
    (`jax.set_mesh`, which the training loop sets), or None (no mesh, one device): rows over the batch's mesh
    axes that divide B, KV heads (with their query heads) over the tensor axis when it divides them (with S2 also
    an even number of shards, so that no shard holds heads of both halves; when they cannot split, rows take the
    tensor axis too where they divide over it). With nothing to split (one row on
    8 FSDP chips: long-context training) every device runs the kernel on the whole arrays, still inside
    `shard_map`: Mosaic and Triton kernels cannot be partitioned automatically and fail to compile outside one."""
    mesh = jax.sharding.get_abstract_mesh()
    if impl not in OPAQUE or mesh.empty or mesh.size == 1 or not set(parallel.MESH_AXES) <= set(mesh.axis_names):
        return None
    rows, heads = parallel.mesh_spec(("batch", "kv_heads"), (B, K), mesh)
    if s2 and heads is not None and mesh.shape[heads] % 2:
        heads = None
    if heads is None:  # the heads stay whole: rows over the tensor axis too, or its chips would repeat each other
        rows = parallel.mesh_spec(("batch",), (B,), mesh, rules=(("batch", parallel.MESH_AXES),))[0]
    return mesh, rows, heads

"""Blockwise causal self-attention with an online softmax (flash-style), in plain JAX.

The portable fast path (CPU, and the fallback elsewhere): memory O(L x block) in the forward and the backward
pass, never an L x L tensor. Forward: for each query block, loop over the key blocks at or before it (blocks
after the diagonal are never computed), keeping a running max, sum and output. Backward (`jax.custom_vjp`):
recomputes each block's probabilities from the saved log-sum-exp, FlashAttention-2 style; only the output and
the log-sum-exp are saved, not the probabilities.

Mask (self-attention, keys are the queries' own sequence): key j is visible to query i iff j <= i (index
order) and seg[j] == seg[i]. That equals the mask oracle (`attention.build_mask`) on every token with a
non-zero segment id whenever positions increase along each segment (plain, packed, right-padded and
block-assembled sequences). Query rows with no visible key (never the case for real tokens) return zeros.

Loops are `lax.scan` / `lax.fori_loop` by default (small graphs at any L). `unroll=True` writes the same block
schedule as Python loops: same math, used by tests so that XLA's cost analysis (which counts a loop body once)
sees every block that is computed.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _blocks(L: int, block: int) -> int:
    """Block size for a sequence of L tokens: `block`, or L rounded up to 16 when shorter."""
    return min(block, _round_up(L, 16))


def causal_schedule(nq: int, nk: int, bq: int, bk: int) -> list[tuple[int, int]]:
    """Key-block range [0, hi) that query block i needs under a causal mask, for every i."""
    return [(0, min(nk, -(-((i + 1) * bq) // bk))) for i in range(nq)]


def _fori(lo, hi, body, init, unroll: bool):
    if unroll:
        carry = init
        for j in range(lo, hi):
            carry = body(j, carry)
        return carry
    return jax.lax.fori_loop(lo, hi, body, init)


def _block_mask(i, j, b, G, seg_q_Bxb, seg_k_Bxb):
    """[B, 1, G * b, b]: causal by index and same segment; query row r is token i * b + r % b (head r // b)."""
    qi = jnp.tile(i * b + jnp.arange(b), G)
    kj = j * b + jnp.arange(b)
    causal = kj[None, :] <= qi[:, None]
    same = jnp.tile(seg_q_Bxb, (1, G))[:, :, None] == seg_k_Bxb[:, None, :]
    return (causal[None] & same)[:, None]


def _layout(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, block):
    """Pad L to whole blocks and lay out blocks first: q [nq, B, K, G * b, D] (the G query heads that share a KV
    head stacked as rows, so every matmul of the backward pass contracts over one dim: with two, XLA:CPU writes
    the operand transposed), k/v [nk, B, K, b, D]."""
    B, L, H, D = q_BxLxHxD.shape
    K = k_BxLxKxD.shape[2]
    G = H // K
    b = _blocks(L, block)
    Lp = _round_up(L, b)
    pad = lambda x, value=0: jnp.pad(x, [(0, 0), (0, Lp - L)] + [(0, 0)] * (x.ndim - 2),  # noqa: E731
                                     constant_values=value)
    n = Lp // b
    q = pad(q_BxLxHxD).reshape(B, n, b, K, G, D).transpose(1, 0, 3, 4, 2, 5).reshape(n, B, K, G * b, D)
    k = pad(k_BxLxKxD).reshape(B, n, b, K, D).transpose(1, 0, 3, 2, 4)
    v = pad(v_BxLxKxD).reshape(B, n, b, K, D).transpose(1, 0, 3, 2, 4)
    seg = pad(seg_BxL, -1).reshape(B, n, b).transpose(1, 0, 2)  # padding: its own segment, seen by no token
    return q, k, v, seg, b


def _unlayout(x_nxBxKxRxD, b, L):
    n, B, K, R, D = x_nxBxKxRxD.shape
    G = R // b
    return x_nxBxKxRxD.reshape(n, B, K, G, b, D).transpose(1, 0, 4, 2, 3, 5).reshape(B, n * b, K * G, D)[:, :L]


def _forward(q, k, v, seg, nblk, b, unroll):
    """q pre-scaled; blocks >= nblk hold only padding and are skipped. Returns out [nq, B, K, G * b, D] (q dtype)
    and lse [nq, B, K, G * b] (fp32)."""
    n, B, K, R, D = q.shape
    G = R // b
    sched = causal_schedule(n, n, b, b)

    def q_block(i, q_i):
        def body(j, carry):
            o, m, l = carry
            s = jnp.einsum("bkrd,bksd->bkrs", q_i, k[j], preferred_element_type=jnp.float32)
            s = jnp.where(_block_mask(i, j, b, G, seg[i], seg[j]), s, _NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            # Masked logits are _NEG: their exp underflows to exactly 0 once the row has seen a visible key;
            # until then (a block with nothing visible) the row's garbage is erased by corr = exp(_NEG - m) = 0.
            p = jnp.exp(s - m_new[..., None])
            corr = jnp.exp(m - m_new)
            l = l * corr + jnp.sum(p, axis=-1)
            o = o * corr[..., None] + jnp.einsum("bkrs,bksd->bkrd", p.astype(v.dtype), v[j],
                                                 preferred_element_type=jnp.float32)
            return o, m_new, l

        init = (jnp.zeros((B, K, R, D), jnp.float32), jnp.full((B, K, R), _NEG, jnp.float32),
                jnp.zeros((B, K, R), jnp.float32))
        hi = sched[i][1] if unroll else jnp.where(i < nblk, i + 1, 0)  # causal: key blocks 0..i
        o, m, l = _fori(0, hi, body, init, unroll)
        safe = jnp.where(l > 0, l, 1.0)
        return (o / safe[..., None]).astype(q.dtype), jnp.where(l > 0, m + jnp.log(safe), jnp.inf)

    if unroll:
        outs = [q_block(i, q[i]) for i in range(n)]
        return jnp.stack([o for o, _ in outs]), jnp.stack([s for _, s in outs])
    return jax.lax.map(lambda args: q_block(*args), (jnp.arange(n), q))


def _backward(q, k, v, seg, nblk, out, lse, do, b, unroll):
    """dq [nq, B, K, G * b, D], dk / dv [nk, B, K, b, D] in fp32 (q pre-scaled)."""
    n, B, K, R, D = q.shape
    G = R // b
    delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [n, B, K, G * b]

    def k_block(j, dq):
        def body(i, carry):
            dq, dk, dv = carry
            s = jnp.einsum("bkrd,bksd->bkrs", q[i], k[j], preferred_element_type=jnp.float32)
            mask = _block_mask(i, j, b, G, seg[i], seg[j])
            p = jnp.exp(jnp.where(mask, s, _NEG) - lse[i][..., None])  # lse is finite: every row sees itself
            dv = dv + jnp.einsum("bkrs,bkrd->bksd", p.astype(do.dtype), do[i], preferred_element_type=jnp.float32)
            dp = jnp.einsum("bkrd,bksd->bkrs", do[i], v[j], preferred_element_type=jnp.float32)
            ds = (p * (dp - delta[i][..., None])).astype(q.dtype)
            dk = dk + jnp.einsum("bkrs,bkrd->bksd", ds, q[i], preferred_element_type=jnp.float32)
            dq_i = jnp.einsum("bkrs,bksd->bkrd", ds, k[j], preferred_element_type=jnp.float32)
            if unroll:
                dq = dq.at[i].add(dq_i)
            else:
                dq = jax.lax.dynamic_update_index_in_dim(dq, jax.lax.dynamic_index_in_dim(dq, i, 0, False) + dq_i,
                                                         i, 0)
            return dq, dk, dv

        zeros = jnp.zeros((B, K, b, D), jnp.float32)
        # query blocks before j cannot see key block j; those from nblk on are padding
        return _fori(j, n if unroll else nblk, body, (dq, zeros, zeros), unroll)

    dq = jnp.zeros(q.shape, jnp.float32)
    if unroll:
        dks, dvs = [], []
        for j in range(n):
            dq, dk, dv = k_block(j, dq)
            dks.append(dk)
            dvs.append(dv)
        return dq, jnp.stack(dks), jnp.stack(dvs)

    def scan_body(dq, j):
        dq, dk, dv = k_block(j, dq)
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(scan_body, dq, jnp.arange(n))
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, valid_len, block: int, unroll: bool):
    return _flash_fwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, valid_len, block, unroll)[0]


def _flash_fwd(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, seg_BxL, valid_len, block, unroll):
    L, D = q_BxLxHxD.shape[1], q_BxLxHxD.shape[-1]
    q, k, v, seg, b = _layout(q_BxLxHxD * jnp.asarray(D**-0.5, q_BxLxHxD.dtype), k_BxLxKxD, v_BxLxKxD,
                              seg_BxL, block)
    nblk = (valid_len + b - 1) // b
    out, lse = _forward(q, k, v, seg, nblk, b, unroll)
    # Named so that remat policies can keep them ("dots_attn"): then the backward pass never reruns this loop.
    q, k, v, out, lse = (checkpoint_name(x, "attention") for x in (q, k, v, out, lse))
    return _unlayout(out, b, L), (q, k, v, seg, nblk, out, lse)


def _flash_bwd(block, unroll, res, do_BxLxHxD):
    q, k, v, seg, nblk, out, lse = res
    n, B, K, R, D = q.shape
    b = k.shape[3]
    G = R // b
    L = do_BxLxHxD.shape[1]
    do = jnp.pad(do_BxLxHxD, [(0, 0), (0, n * b - L), (0, 0), (0, 0)])
    do = do.reshape(B, n, b, K, G, D).transpose(1, 0, 3, 4, 2, 5).reshape(n, B, K, R, D).astype(q.dtype)
    dq, dk, dv = _backward(q, k, v, seg, nblk, out, lse, do, b, unroll)
    dq = _unlayout(dq * D**-0.5, b, L).astype(q.dtype)
    kv = lambda x: x.transpose(1, 0, 3, 2, 4).reshape(B, n * b, K, D)[:, :L].astype(k.dtype)  # noqa: E731
    return dq, kv(dk), kv(dv), None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
_flash_jit = jax.jit(_flash, static_argnums=(5, 6))  # eager callers get one compiled kernel, not op-by-op loops


def flash_attention(q_BxLxHxD: jax.Array, k_BxLxKxD: jax.Array, v_BxLxKxD: jax.Array, seg_BxL: jax.Array,
                    *, block: int = 512, right_padded: bool = False, unroll: bool = False) -> jax.Array:
    """Causal grouped-query self-attention, blockwise. q [B, L, H, D], k/v [B, L, K, D] (H a multiple of K),
    seg [B, L] int (tokens attend within equal ids). right_padded: rows are valid tokens then padding (seg 0),
    so blocks past the longest row are skipped at run time. Returns [B, L, H, D] in q's dtype."""
    B, L, H, D = q_BxLxHxD.shape
    if k_BxLxKxD.shape[1] != L or H % k_BxLxKxD.shape[2]:
        raise ValueError(f"self-attention needs k/v of length {L} and num_heads a multiple of num_kv_heads; "
                         f"got q {q_BxLxHxD.shape}, k {k_BxLxKxD.shape}")
    dtype = q_BxLxHxD.dtype
    seg_BxL = seg_BxL.astype(jnp.int32)
    valid_len = jnp.max(jnp.sum(seg_BxL > 0, axis=1)) if right_padded else jnp.asarray(L)
    return _flash_jit(q_BxLxHxD, k_BxLxKxD.astype(dtype), v_BxLxKxD.astype(dtype), seg_BxL,
                      valid_len.astype(jnp.int32), block, unroll)

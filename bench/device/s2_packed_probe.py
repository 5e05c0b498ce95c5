"""A probe for the next GPU lease (issue 11's one unmet target: S2-Attn at 8k <= 0.35x dense attention time).

Today S2 on cuDNN cuts each head half's groups out and runs three kernel calls (full groups, and the shifted half's
two end half-groups); on an H200 that was 0.41-0.47x dense at 8k. This tries one call with no cutting and no
padding: the two head halves folded into the batch ([2B, L, H/2, D], like a transpose), each row's S2 groups given
to cuDNN as packed segments (the private `fused_attention_stablehlo.dot_product_attention`'s q_offsets /
q_seqlen, "THD" packing, Hopper or later), causal within each segment. Its cost is O(L x G) and its memory that of
dense attention. It is not in the library: `jax.nn.dot_product_attention` has no segments, packed causal masking
is not in JAX's own tests (they test packing with NO_MASK). Run once on an H200 (2026-12-04, docs/throughput.md):
0.382x dense at 8k against the three calls' 0.485x, but 762 MiB of temporaries against their 134; not adopted.

    python bench/device/s2_packed_probe.py            # GPU: correctness vs the mask oracle, then timings
    python bench/device/s2_packed_probe.py --emulate  # here: the folding checked with an XLA stand-in for cuDNN
    python bench/device/s2_packed_probe.py --lower    # here: fwd + bwd lowered for CUDA (JAX's argument rules)

Prints one JSON line per check or timing (fwd + bwd of sum(out), bf16 on GPU, best of --reps after a warm-up).
Adopt it only if every check passes and "packed" beats "s2_three_calls" at 8k.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jmlr_jax.models import attention  # noqa: E402


def s2_segments(L: int, G: int, shifted: bool) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [M + 1], lengths [M]) of one head half's S2 groups, padded with -1 to the shifted half's count
    (L / G + 1 groups: a half group at each end)."""
    starts = ([0] + list(range(G // 2, L, G))) if shifted else list(range(0, L, G))
    lengths = [min(e, L) - s for s, e in zip(starts, starts[1:] + [L])]
    m = L // G + 1
    return (np.array(starts + [-1] * (m + 1 - len(starts)), np.int32),
            np.array(lengths + [-1] * (m - len(lengths)), np.int32))


def packed_s2(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, G: int, kernel, bnth: bool = False):
    """S2-Attn as one packed call: kernel(q, k, v, seqlen [R, M], offsets [R, M + 1]) on R = 2B rows (rows
    (half, b)). bnth: the kernel takes [R, n/2, L, D] (heads before tokens: the halves fold by a reshape)."""
    B, L, H, D = q_BxLxHxD.shape
    k_BxLxKxD, v_BxLxKxD = attention._kv_for_halves(k_BxLxKxD, v_BxLxKxD, H)  # an odd KV count: one per query head
    K = k_BxLxKxD.shape[2]
    offs, lens = zip(*(s2_segments(L, G, shifted) for shifted in (False, True)))
    offsets_RxM1 = jnp.asarray(np.repeat(np.stack(offs), B, axis=0))
    seqlen_RxM = jnp.asarray(np.repeat(np.stack(lens), B, axis=0))
    if bnth:  # [B, L, 2, n/2, D] -> [2, B, n/2, L, D] -> [2B, n/2, L, D]
        fold = lambda x, n: x.reshape(B, L, 2, n // 2, D).transpose(2, 0, 3, 1, 4).reshape(2 * B, n // 2, L, D)  # noqa: E731
        o = kernel(fold(q_BxLxHxD, H), fold(k_BxLxKxD, K), fold(v_BxLxKxD, K), seqlen_RxM, offsets_RxM1)
        return o.reshape(2, B, H // 2, L, D).transpose(1, 3, 0, 2, 4).reshape(B, L, H, D)
    fold = lambda x, n: jnp.concatenate([x[:, :, :n // 2], x[:, :, n // 2:]], axis=0)  # noqa: E731  [2B, L, n/2, D]
    o = kernel(fold(q_BxLxHxD, H), fold(k_BxLxKxD, K), fold(v_BxLxKxD, K), seqlen_RxM, offsets_RxM1)
    return jnp.concatenate([o[:B], o[B:]], axis=2)


def cudnn_packed(mask: str, layout: str = "BTNH"):
    from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention

    def kernel(q, k, v, seqlen, offsets):
        return dot_product_attention(q, k, v, None, None, seqlen, seqlen, offsets, offsets,
                                     scale=q.shape[-1] ** -0.5, mask_type=getattr(MaskType, mask), qkv_layout=layout)
    return kernel


def emulated_bnth(q, k, v, seqlen, offsets):
    t = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    return t(emulated(t(q), t(k), t(v), seqlen, offsets))


VARIANTS = {  # name -> (kernel, bnth)
    "packed_CAUSAL": lambda: (cudnn_packed("CAUSAL"), False),
    "packed_PADDING_CAUSAL": lambda: (cudnn_packed("PADDING_CAUSAL"), False),
    "packed_CAUSAL_BNTH": lambda: (cudnn_packed("CAUSAL", "BNTH"), True),
}


def emulated(q, k, v, seqlen, offsets):
    """What the packed call should compute, in XLA: segment ids from the offsets, causal within each segment."""
    L = q.shape[1]
    idx = jnp.arange(L)
    starts, ends = offsets[:, :-1], offsets[:, :-1] + seqlen
    inside = (idx[None, :, None] >= starts[:, None, :]) & (idx[None, :, None] < ends[:, None, :]) & (seqlen[:, None] > 0)
    seg = jnp.where(inside.any(-1), jnp.argmax(inside, -1) + 1, 0).astype(jnp.int32)
    info = attention.make_mask_info(jnp.broadcast_to(idx, seg.shape), seg, num_heads=q.shape[2])
    return attention.dot_product_attention(q, k, v, info)


def grad_fn(f):
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)))


def inputs(L: int, H: int, K: int, dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return [jax.random.normal(key, (1, L, n, 64), dtype) for key, n in zip(keys, (H, K, K))]


def check(name: str, L: int, G: int, H: int, K: int, kernel, bnth: bool, dtype) -> None:
    q, k, v = inputs(L, H, K, dtype)
    pos, seg = jnp.arange(L)[None], jnp.ones((1, L), jnp.int32)
    oracle = grad_fn(lambda q, k, v: attention.self_attention(q, k, v, pos, seg, impl="reference", s2_group_size=G))
    try:
        got = grad_fn(lambda q, k, v: packed_s2(q, k, v, G, kernel, bnth))(q, k, v)
        want = oracle(q, k, v)
        err = {n: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
               for n, a, b in zip(("dq", "dk", "dv"), got[1], want[1])}
        fwd = float(jnp.max(jnp.abs(packed_s2(q, k, v, G, kernel, bnth).astype(jnp.float32) - attention.self_attention(
            q, k, v, pos, seg, impl="reference", s2_group_size=G).astype(jnp.float32))))
        print(json.dumps({"check": name, "L": L, "G": G, "heads": f"{H}/{K}", "out_max_err": fwd, **err}), flush=True)
    except Exception as e:  # a variant cuDNN refuses is a result too
        print(json.dumps({"check": name, "L": L, "G": G, "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)


def timing(name: str, f, q, k, v, reps: int, dense_s: float | None) -> float | None:
    try:
        g = grad_fn(f).lower(q, k, v).compile()
        jax.block_until_ready(g(q, k, v))
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(g(q, k, v))
            best = min(best, time.perf_counter() - t0)
        mem = g.memory_analysis()
        row = {"time": name, "ms": round(best * 1e3, 3), "vs_dense": round(best / dense_s, 3) if dense_s else 1.0,
               "temp_mib": round(getattr(mem, "temp_size_in_bytes", 0) / 2**20, 1)}
        print(json.dumps(row), flush=True)
        return best
    except Exception as e:
        print(json.dumps({"time": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)
        return None


def lower_for_cuda(L: int, H: int, K: int) -> None:
    """Each variant traced and lowered for CUDA on this host: JAX's checks of its arguments (layout, offsets,
    seqlens, mask type) run; its Hopper check is answered yes, as on an H100 / H200. Where XLA:GPU is installed
    ("jax[cuda12]", JAX_PLATFORMS=cpu) each is also compiled for an H100: its temporaries. Nothing runs."""
    from jax._src.cudnn import fused_attention_stablehlo as fa

    from jmlr_jax import lowering

    fa.check_compute_capability = lambda capability: float(capability) <= 9.0
    shapes = [jax.ShapeDtypeStruct((1, L, n, 64), jnp.bfloat16) for n in (H, K, K)]
    try:
        mesh = lowering.chip_mesh("h100")
    except RuntimeError as e:
        mesh = None
        print(json.dumps({"compile": "skipped", "why": str(e)[:200]}), flush=True)
    for name, f in candidates(L).items():
        row = {"lower": name, "L": L}
        try:
            text = lowering.lower(grad_fn(f), *shapes, platform="cuda")
            row.update(custom_calls=dict(lowering.custom_calls(text)),
                       attention_logits=len(lowering.attention_logits(text, L)))
            if mesh is not None:
                m = lowering.compile(grad_fn(f), *shapes, mesh=mesh).memory_analysis()
                row.update(h100_temp_mib=round(m.temp_size_in_bytes / 2**20, 1))
        except Exception as e:
            row.update(error=f"{type(e).__name__}: {str(e)[:300]}")
        print(json.dumps(row), flush=True)


def candidates(L: int) -> dict:
    """name -> f(q, k, v) at G = L / 4: dense cuDNN, today's S2 (three calls) and the packed variants."""
    pos, seg = jnp.arange(L)[None], jnp.ones((1, L), jnp.int32)
    attn = lambda s2: lambda q, k, v: attention.self_attention(  # noqa: E731
        q, k, v, pos, seg, impl="cudnn", s2_group_size=s2, right_padded=True)
    out = {"dense": attn(0), "s2_three_calls": attn(L // 4)}
    for name, make in VARIANTS.items():
        kernel, bnth = make()
        out[name] = lambda q, k, v, kernel=kernel, bnth=bnth: packed_s2(q, k, v, L // 4, kernel, bnth)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emulate", action="store_true", help="an XLA stand-in for cuDNN (CPU): checks only")
    ap.add_argument("--lower", action="store_true", help="lower (and compile) for CUDA on this host; nothing runs")
    ap.add_argument("--seqs", default="8192,16384")
    ap.add_argument("--heads", default="32/8")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    H, K = (int(x) for x in args.heads.split("/"))
    seqs = [int(x) for x in args.seqs.split(",")]
    print(json.dumps({"jax": jax.__version__, "devices": str(jax.devices())}), flush=True)
    if args.lower:
        for L in seqs:
            lower_for_cuda(L, H, K)
        return
    if args.emulate or jax.default_backend() != "gpu":
        for L, G, h, kv in ((256, 64, 4, 2), (512, 128, 8, 2), (512, 128, 4, 4), (384, 128, 4, 1)):
            for kernel, bnth in ((emulated, False), (emulated_bnth, True)):
                check("emulated" + "_BNTH" * bnth, L, G, h, kv, kernel, bnth, jnp.float32)
        return
    for name, make in VARIANTS.items():
        check(name, 2048, 512, H, K, *make(), jnp.bfloat16)
    for L in seqs:
        q, k, v = inputs(L, H, K, jnp.bfloat16)
        print(json.dumps({"L": L, "G": L // 4}), flush=True)
        dense = None
        for name, f in candidates(L).items():
            t = timing(name, f, q, k, v, args.reps, dense)
            dense = dense if name != "dense" else t


if __name__ == "__main__":
    main()

"""Causal grouped-query flash attention for CPU as a C++ custom call (`csrc/attention_cpu.cc`, XLA FFI).

Why: the blockwise JAX kernel (`flash.py`) leaves attention fwd + bwd 1.5-1.9x slower than PyTorch's fused CPU
SDPA, because XLA:CPU runs its small block products on a shared pool with little gain from a second core. This
kernel splits (batch row, KV head, query block) -- (.., key block) in the backward pass -- over threads, each
running register-blocked products in cache, as PyTorch's kernel does.

Same semantics and residuals as `flash.flash_attention` (key j visible to query i iff j <= i and equal non-zero
segment ids; segment-0 rows return zeros); fp32, head_dim a multiple of 16. The source is compiled on first use
with the system C++ compiler (`c++`, or $CXX) for this machine's CPU (-march=native) into a cache directory
($JMLR_JAX_CACHE, default ~/.cache/jmlr_jax) keyed by the source, compiler, flags and CPU; no compiler means the
backend is unavailable (`available()`), and "auto" attention uses the blockwise kernel instead.
Threads: $JMLR_CPU_ATTENTION_THREADS, default the cores this process may run on.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

_SOURCE = pathlib.Path(__file__).parent / "csrc" / "attention_cpu.cc"
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=fast",
          "-pthread"]  # fp-contract: fused multiply-adds (ISO C++ mode turns them off)
BLOCK_Q, BLOCK_K = 64, 128  # tokens; a KV head's G query heads make G * BLOCK_Q rows per work item


class KernelUnavailable(RuntimeError):
    """The C++ attention kernel could not be built or loaded on this machine."""


def _cpu_id() -> str:
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
        return next((ln for ln in info.splitlines() if ln.startswith("flags")), "") + platform.machine()
    except OSError:
        return platform.processor() + platform.machine()


def _build() -> pathlib.Path:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx or not shutil.which(cxx):
        raise KernelUnavailable(f"no C++ compiler found ({'$CXX=' + cxx if cxx else 'c++, g++, clang++'}; set "
                                "$CXX or install g++)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    include = jax.ffi.include_dir()
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), cxx, version, " ".join(_FLAGS), _cpu_id(),
                                    jax.__version__]).encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("JMLR_JAX_CACHE", pathlib.Path.home() / ".cache" / "jmlr_jax"))
    lib = cache / f"attention_cpu-{key}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # build aside, then rename: concurrent builds are safe
        out = pathlib.Path(tmp) / lib.name
        proc = subprocess.run([cxx, *_FLAGS, f"-I{include}", str(_SOURCE), "-o", str(out)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise KernelUnavailable(f"compiling {_SOURCE.name} failed: {proc.stderr.strip()[-2000:]}")
        os.replace(out, lib)
    return lib


@functools.cache
def _load_error() -> str:
    """Build, load and register the kernel once per process; '' on success, else why it failed."""
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build()))
        for name in ("JmlrAttentionFwd", "JmlrAttentionBwd"):
            jax.ffi.register_ffi_target(f"jmlr_{name}", jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    except (KernelUnavailable, OSError) as e:
        logging.warning("C++ CPU attention kernel unavailable, using the blockwise JAX kernel: %s", e)
        return str(e)
    return ""


def available() -> bool:
    """Whether the kernel builds and loads here (compiled once per machine, then cached). Logs why not, once."""
    return not _load_error()


def unavailable_reason() -> str:
    """Why `available()` is False ('' when it is True)."""
    return _load_error()


def threads() -> int:
    """Threads the kernel uses ($JMLR_CPU_ATTENTION_THREADS, else the cores this process may run on)."""
    return int(os.environ.get("JMLR_CPU_ATTENTION_THREADS", "0")) or len(os.sched_getaffinity(0))


def scratch_bytes(B: int, L: int, H: int, K: int, D: int) -> int:
    """Peak memory one backward call allocates outside XLA's buffers (its packed copies of q, dO, k, v and one
    dQ accumulator per thread): O(L), and not in XLA's memory analysis."""
    Lk = -(-L // BLOCK_K) * BLOCK_K
    rows = B * L * H
    lanes = min(threads(), -(-L // BLOCK_K) * B * K)
    return 4 * ((3 * B * K * Lk + (2 + lanes) * rows) * D + 2 * rows)


def _attrs(D: int) -> dict:
    return dict(scale=np.float32(D**-0.5), block_q=np.int64(BLOCK_Q), block_k=np.int64(BLOCK_K))


def _fwd_call(q, k, v, seg):
    B, L, H, D = q.shape
    out_types = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((B, L, H), jnp.float32))
    return jax.ffi.ffi_call("jmlr_JmlrAttentionFwd", out_types, vmap_method="sequential")(q, k, v, seg,
                                                                                         **_attrs(D))


@jax.custom_vjp
def _attention(q, k, v, seg):
    return _fwd_call(q, k, v, seg)[0]


def _attention_fwd(q, k, v, seg):
    out, lse = _fwd_call(q, k, v, seg)
    # Named like the blockwise kernel's residuals, so remat policies ("dots_attn", "attn") keep them.
    q, k, v, out, lse = (checkpoint_name(x, "attention") for x in (q, k, v, out, lse))
    return out, (q, k, v, seg, out, lse)


def _attention_bwd(res, dout):
    q, k, v, seg, out, lse = res
    out_types = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    dq, dk, dv = jax.ffi.ffi_call("jmlr_JmlrAttentionBwd", out_types, vmap_method="sequential")(
        q, k, v, seg, lse, out, dout.astype(jnp.float32), **_attrs(q.shape[-1]))
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def cpu_attention(q_BxLxHxD: jax.Array, k_BxLxKxD: jax.Array, v_BxLxKxD: jax.Array,
                  seg_BxL: jax.Array) -> jax.Array:
    """Causal grouped-query self-attention on CPU: q [B, L, H, D], k/v [B, L, K, D], seg [B, L] (0 = padding).
    Computes in fp32; returns q's dtype. Raises KernelUnavailable when the kernel cannot be built."""
    B, L, H, D = q_BxLxHxD.shape
    if k_BxLxKxD.shape[1] != L or H % k_BxLxKxD.shape[2] or D % 16:
        raise ValueError(f"cpu attention needs k/v of length {L}, num_heads a multiple of num_kv_heads and "
                         f"head_dim a multiple of 16; got q {q_BxLxHxD.shape}, k {k_BxLxKxD.shape}")
    if not available():
        raise KernelUnavailable(f"attention 'cpu' is unavailable: {unavailable_reason()}")
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    out = _attention(f32(q_BxLxHxD), f32(k_BxLxKxD), f32(v_BxLxKxD), seg_BxL.astype(jnp.int32))
    return out.astype(q_BxLxHxD.dtype)

"""XLA:CPU matmul throughput by precision and operand layout, at the SmolLM2 train step's shapes (one run).

    python bench/cpu_dots.py

Why: a bf16 train step on CPU is fast only if its dots take XLA:CPU's low-precision kernels (AMX / AVX512-BF16),
and an fp32 one only as fast as XLA's fp32 GEMM against PyTorch's (MKL / oneDNN) at the same shapes.
Rows: C = A @ B with A [M, K], B [K, N]; "NN" the plain product, "TN" the lhs stored transposed (how autodiff
writes a weight gradient, x^T g: both operands contract their token dim), "NT" the rhs stored transposed (the
input gradient g W^T); bf16 operands either return bf16 or accumulate in fp32 (`preferred_element_type`);
"torch" rows: the same fp32 products in PyTorch (when installed). The last three shapes are the blockwise attention
kernel's block products at SmolLM2's heads (3 query heads stacked per KV head x 256 rows, keys in blocks of 256).
`taskset -c 0 python bench/cpu_dots.py` gives the one-core figures.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax import lax

SHAPES = [(2048, 576, 1536), (2048, 1536, 576), (576, 2048, 1536),  # MLP up / down, a weight gradient's
          (768, 64, 256), (768, 256, 64), (256, 768, 64)]  # attention block: q k^T / p v, dk = ds^T q
LAYOUTS = {"NN": ((1,), (0,)), "TN": ((0,), (0,)), "NT": ((1,), (1,))}


def _reps(flops: int) -> int:
    return max(1, int(2e10 // flops))  # ~20 GFLOP per timing: small products need many calls


def gflops(flops: int, f, a, b) -> float:
    """f(a, b) repeated in one jitted loop (as inside the attention kernel: no per-call dispatch), the lhs read
    from a stack of 4 so that XLA cannot hoist the product out of the loop."""
    reps = _reps(flops)
    a4 = jnp.stack([a, -a, 2 * a, a / 2])

    def loop(a4, b):
        return lax.fori_loop(0, reps, lambda i, acc: acc + f(a4[i % 4], b), jnp.zeros_like(f(a4[0], b)))

    c = jax.jit(loop).lower(a4, b).compile()
    c(a4, b).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        c(a4, b).block_until_ready()
        best = min(best, (time.perf_counter() - t) / reps)
    return flops / best / 1e9


def torch_gflops(m: int, k: int, n: int, layout: str) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    a = torch.randn(k, m).t() if layout == "TN" else torch.randn(m, k)
    b = torch.randn(n, k).t() if layout == "NT" else torch.randn(k, n)
    reps = _reps(2 * m * k * n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; GFLOP/s, best of 5 timings of ~20 GFLOP "
          "each\n")
    print("| M x K x N | operands -> result | " + " | ".join(LAYOUTS) + " |\n|---|---|" + "---|" * len(LAYOUTS))
    for m, k, n in SHAPES:
        for dt, out in ((jnp.float32, jnp.float32), (jnp.bfloat16, jnp.bfloat16), (jnp.bfloat16, jnp.float32)):
            cells = []
            for (lc, rc) in LAYOUTS.values():
                a = jax.random.normal(jax.random.PRNGKey(0), (k, m) if lc == (0,) else (m, k), dt)
                b = jax.random.normal(jax.random.PRNGKey(1), (n, k) if rc == (1,) else (k, n), dt)
                f = lambda a, b, lc=lc, rc=rc, out=out: lax.dot_general(  # noqa: E731
                    a, b, ((lc, rc), ((), ())), preferred_element_type=out)
                cells.append(f"{gflops(2 * m * k * n, f, a, b):.0f}")
            print(f"| {m} x {k} x {n} | {jnp.dtype(dt).name} -> {jnp.dtype(out).name} | " + " | ".join(cells) + " |",
                  flush=True)
        torch_cells = [torch_gflops(m, k, n, name) for name in LAYOUTS]
        if torch_cells[0] is not None:
            print(f"| {m} x {k} x {n} | torch float32 | " + " | ".join(f"{c:.0f}" for c in torch_cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()

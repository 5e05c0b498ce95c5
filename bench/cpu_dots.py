"""XLA:CPU matmul throughput by precision and operand layout, at the SmolLM2 train step's shapes (one run).

    python bench/cpu_dots.py

Why: a bf16 train step on CPU is fast only if its dots take XLA:CPU's low-precision kernels (AMX / AVX512-BF16).
Rows: C = A @ B with A [M, K], B [K, N]; "NN" the plain product, "TN" the lhs stored transposed (how autodiff
writes a weight gradient, x^T g: both operands contract their token dim), "NT" the rhs stored transposed (the
input gradient g W^T); bf16 operands either return bf16 or accumulate in fp32 (`preferred_element_type`).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax import lax

SHAPES = [(2048, 576, 1536), (2048, 1536, 576), (576, 2048, 1536)]  # MLP up / down, a weight gradient's
LAYOUTS = {"NN": ((1,), (0,)), "TN": ((0,), (0,)), "NT": ((1,), (1,))}


def gflops(flops: int, f, *args) -> float:
    c = jax.jit(f).lower(*args).compile()
    c(*args).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        c(*args).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def main() -> None:
    print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}; GFLOP/s, best of 5\n")
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


if __name__ == "__main__":
    main()

"""XLA's buffer totals for the accelerator train steps, compiled here for CPU from abstract inputs (one table).

    python bench/memory_estimate.py        # ~1 min on 2 cores; nothing is allocated, the 1B shape fits a laptop

The GPU workloads of bench/train_throughput.py (Llama train step, bf16 compute, fp32 weights, AdamW, the fused
chunked cross-entropy) compiled by XLA:CPU with the blockwise kernel standing in for the GPU's fused attention
(both keep O(L) residuals) against the mask oracle (the [L, L] logits the old attention kept), per remat policy.
An estimate for choosing a policy before renting a device, not a GPU figure: XLA:GPU schedules buffers
differently (the issue's H100 run of the old attention asked 126 GB for the 1B row and 109 GB for SmolLM2, where
XLA:CPU's total for the oracle is larger); compare rows with each other.
"""
from __future__ import annotations

import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from bench.train_throughput import SHAPES, llama_train_step  # noqa: E402
from jmlr_jax.models import LlamaConfig  # noqa: E402
from jmlr_jax.models.llama import init_params  # noqa: E402

WORKLOADS = (("SmolLM2-135M", 16, 2048), ("1B", 8, 2048))


def buffer_gib(shape: str, batch: int, seq: int, attention: str, remat: str) -> float:
    """Arguments (weights, Adam state, tokens; donated, so counted once) + temporaries of the compiled step."""
    cfg = LlamaConfig(**SHAPES[shape], dtype="bfloat16", attention=attention, remat_policy=remat)
    params = jax.eval_shape(functools.partial(init_params, cfg), jax.random.PRNGKey(0))
    tx = optax.adamw(1e-4)
    state = (params, jax.eval_shape(tx.init, params))
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    step = functools.partial(llama_train_step, cfg=cfg, tx=tx)
    m = jax.jit(step, donate_argnums=0).lower(state, tokens).compile().memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes) / 2**30


def main() -> None:
    print(f"XLA:CPU buffer totals of the accelerator train steps (jax {jax.__version__}; compiled, never run; "
          "bf16 compute, fp32 weights, AdamW)\n\n| model | batch x seq | remat | fused-path GiB | oracle GiB | "
          "oracle / fused | compile s |\n|---|---|---|---|---|---|---|", flush=True)
    for shape, batch, seq in WORKLOADS:
        for remat in ("none", "dots_attn", "attn"):
            t = time.perf_counter()
            fused = buffer_gib(shape, batch, seq, "blockwise", remat)
            oracle = buffer_gib(shape, batch, seq, "reference", remat)
            print(f"| {shape} | {batch} x {seq} | {remat} | {fused:.1f} | {oracle:.1f} | {oracle / fused:.1f}x | "
                  f"{time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main()

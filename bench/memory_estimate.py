"""Device memory of the accelerator train steps, from XLA's compiler for that device on this host (one table).

    python bench/memory_estimate.py              # H100: XLA:GPU (needs "jax[cuda12]"), ~1 min on 2 cores
    python bench/memory_estimate.py --chip=v5p   # one TPU v5p chip: XLA:TPU via libtpu (needs "jax[tpu]")
    python bench/memory_estimate.py --chip=cpu   # XLA:CPU, nothing extra needed: a rough stand-in

The GPU workloads of bench/train_throughput.py (Llama train step, bf16 compute, fp32 weights, AdamW, the fused
chunked cross-entropy) compiled from abstract inputs for one device (`jmlr_jax.lowering.compile`: nothing is
allocated or run), the fused-kernel path ("auto": cuDNN on the H100, splash on TPU; on XLA:CPU the blockwise
kernel stands in) against the mask oracle (the [L, L] logits the old attention kept), per remat policy. The figure
is the compiler's buffer assignment (weights, optimizer state, activations, scratch), what the device would be
asked for; a run adds allocator fragmentation and library handles. XLA:CPU schedules buffers differently from
the accelerators: its totals are larger, compare its rows only with each other.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compiled for another device: no accelerator is looked for here
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from bench.throughput_runs import SHAPES, does_not_fit, llama_train_step  # noqa: E402
from jmlr_jax import lowering  # noqa: E402
from jmlr_jax.models import LlamaConfig  # noqa: E402
from jmlr_jax.models.llama import init_params  # noqa: E402

WORKLOADS = (("SmolLM2-135M", 16, 2048), ("1B", 8, 2048))


def buffer_gib(shape: str, batch: int, seq: int, attention: str, remat: str, chip: str = "cpu") -> float:
    """Arguments (weights, Adam state, tokens; donated, so counted once) + temporaries of the compiled step."""
    platform = "cpu" if chip == "cpu" else lowering.CHIPS[chip]
    with lowering.target(platform):
        cfg = LlamaConfig(**SHAPES[shape], dtype="bfloat16", attention=attention, remat_policy=remat)
    params = jax.eval_shape(functools.partial(init_params, cfg), jax.random.PRNGKey(0))
    tx = optax.adamw(1e-4)
    state = (params, jax.eval_shape(tx.init, params))
    tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    step = jax.jit(functools.partial(llama_train_step, cfg=cfg, tx=tx), donate_argnums=0)
    if chip == "cpu":
        return lowering.memory_gib(step.lower(state, tokens).compile())
    return lowering.memory_gib(lowering.compile(step, state, tokens, mesh=lowering.chip_mesh(chip)))


def _cell(*args) -> tuple[str, float]:
    """A table cell and its value: GiB, or the compiler's refusal when the step does not fit the device."""
    try:
        gib = buffer_gib(*args)
        return f"{gib:.1f}", gib
    except jax.errors.JaxRuntimeError as e:
        return does_not_fit(e), float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chip", default="h100", choices=("cpu", *lowering.CHIPS))
    chip = ap.parse_args().chip
    fused = "blockwise" if chip == "cpu" else "auto"
    kind = "" if chip == "cpu" else lowering.chip_mesh(chip).devices.flat[0].device_kind
    device = "XLA:CPU (a stand-in)" if chip == "cpu" else f"one {chip} ({kind})"
    print(f"compiled for {device} on this host (jax {jax.__version__}; never run; bf16 compute, fp32 weights, "
          "AdamW)\n\n| model | batch x seq | remat | fused-path GiB | oracle GiB | oracle / fused | compile s |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    for shape, batch, seq in WORKLOADS:
        for remat in ("none", "dots_attn", "attn"):
            t = time.perf_counter()
            a, ga = _cell(shape, batch, seq, fused, remat, chip)
            b, gb = _cell(shape, batch, seq, "reference", remat, chip)
            ratio = "-" if math.isnan(ga + gb) else f"{gb / ga:.1f}x"
            print(f"| {shape} | {batch} x {seq} | {remat} | {a} | {b} | {ratio} | "
                  f"{time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""Where the CPU train step's time goes: forward vs forward + backward of a SmolLM2-135M-shaped stack (random
init; fewer layers so it runs in ~2 minutes), by attention backend, sequence length and layer-scan unrolling.

    python bench/llama_backward.py [--layers 6]

One process, one run; the fastest of 2 timed repetitions after a warm-up.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.throughput_runs import SMOL  # noqa: E402
from jmlr_jax.models import Llama, LlamaConfig  # noqa: E402
from jmlr_jax.models.llama import init_params  # noqa: E402
from jmlr_jax.train.losses import chunked_cross_entropy, output_kernel  # noqa: E402


def seconds(attention: str, seq: int, layers: int, backward: bool, unroll: int = 1) -> float:
    cfg = LlamaConfig(**dict(SMOL, num_layers=layers), attention=attention, scan_unroll=unroll)
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, seq), 0, cfg.vocab_size)
    model = Llama(cfg)

    def loss(p, t):
        h = model.apply({"params": p}, t, train=True, return_hidden=True)
        total, n = chunked_cross_entropy(h[:, :-1], output_kernel(cfg, p), t[:, 1:], jnp.ones(t[:, 1:].shape),
                                         dtype=cfg.dtype)
        return total / n

    f = jax.jit(jax.value_and_grad(loss) if backward else loss).lower(params, tokens).compile()
    jax.block_until_ready(f(params, tokens))
    times = []
    for _ in range(2):
        t = time.perf_counter()
        jax.block_until_ready(f(params, tokens))
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=6)
    args = ap.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; SmolLM2-135M shape, {args.layers} layers, batch 1\n")
    print("| attention | tokens | scan unroll | forward s | forward + backward s | backward / forward |\n"
          "|---|---|---|---|---|---|", flush=True)
    for attention, seq, unroll in (("blockwise", 512, 1), ("blockwise", 2048, 1), ("blockwise", 2048, args.layers),
                                   ("reference", 2048, 1)):
        fwd = seconds(attention, seq, args.layers, False, unroll)
        both = seconds(attention, seq, args.layers, True, unroll)
        print(f"| {attention} | {seq} | {unroll} | {fwd:.2f} | {both:.2f} | {(both - fwd) / fwd:.1f} |", flush=True)


if __name__ == "__main__":
    main()

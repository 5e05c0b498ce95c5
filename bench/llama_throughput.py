"""SmolLM2-135M forward and forward+backward throughput: jmlr_jax vs transformers, same run, same machine.

    python bench/llama_throughput.py            # all shapes (about 15 minutes on 2 CPU cores)
    python bench/llama_throughput.py --quick    # seq 512 only

Prints a markdown table: tokens/s for each framework, the JAX/torch ratio, and the achieved FLOP/s
of the JAX run as a fraction of this machine's fp32 matmul peak, measured at the start of the run.
FLOPs are the model FLOPs (6N per token for forward+backward, 2N forward, plus causal attention
scores), not hardware FLOPs, so rematerialisation does not inflate them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def timeit(fn, reps: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / timeit(lambda: f(a).block_until_ready(), reps)


def model_flops_per_token(cfg, seq: int, backward: bool) -> float:
    dense = cfg.num_layers * (cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
                              + 3 * cfg.hidden_size * cfg.intermediate_size) + cfg.hidden_size * cfg.vocab_size
    attn = cfg.num_layers * 2 * cfg.num_heads * cfg.head_dim * seq  # QK^T + AV, causal half of 2 * 2 * L
    fwd = 2 * dense + attn
    return 3 * fwd if backward else fwd


def jax_runner(cfg, params, batch: int, seq: int, backward: bool):
    from jmlr_jax.models import Llama

    model = Llama(cfg)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, seq), 0, cfg.vocab_size)

    def loss(p):
        logits = model.apply({"params": p}, tokens)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    f = jax.jit(jax.value_and_grad(loss)) if backward else jax.jit(lambda p: model.apply({"params": p}, tokens))
    return lambda: jax.block_until_ready(f(params))


def torch_runner(model, vocab: int, batch: int, seq: int, backward: bool):
    import torch

    tokens = torch.randint(0, vocab, (batch, seq))

    def run():
        if backward:
            model.zero_grad(set_to_none=True)
            model(input_ids=tokens, labels=tokens).loss.backward()
        else:
            with torch.no_grad():
                model(input_ids=tokens)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

    from jmlr_jax.convert import load_preset

    torch.set_num_threads(os.cpu_count() or 1)
    peak = matmul_peak()
    cfg, params, _ = load_preset("smollm2-135m-instruct")
    hf_model = LlamaForCausalLM(HFConfig(**cfg.to_hf_dict(), attn_implementation="sdpa")).float()
    shapes = [(b, s) for s in ((512,) if args.quick else (512, 2048)) for b in (1, 4)]
    rows = []
    for backward in (False, True):
        # forward+backward keeps only weight matmuls for the backward pass (attention recomputed), so
        # seq 2048 x batch 4 fits in 24 GB; its FLOPs are not counted as model FLOPs.
        jcfg = cfg.replace(remat_policy="dots_no_batch") if backward else cfg
        hf_model.train(backward)
        hf_model.config.use_cache = False
        for batch, seq in shapes:
            t_jax = timeit(jax_runner(jcfg, params, batch, seq, backward), args.reps)
            t_torch = timeit(torch_runner(hf_model, cfg.vocab_size, batch, seq, backward), args.reps)
            tokens = batch * seq
            flops = model_flops_per_token(cfg, seq, backward) * tokens / t_jax
            rows.append(("fwd+bwd" if backward else "forward", batch, seq, tokens / t_jax, tokens / t_torch,
                         t_torch / t_jax, flops / 1e9, flops / peak))
            print(f"  done {rows[-1][0]} b={batch} s={seq}", file=sys.stderr, flush=True)

    print(f"\nSmolLM2-135M, fp32, {os.cpu_count()} CPU cores, jax {jax.__version__}, torch {torch.__version__}; "
          f"measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s\n")
    print("| pass | batch | seq | jmlr_jax tok/s | transformers tok/s | jax / torch | jax model GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.2f}x | {r[6]:.0f} | {r[7]:.0%} |")


if __name__ == "__main__":
    main()

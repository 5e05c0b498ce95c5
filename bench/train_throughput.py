"""Train-step throughput, jmlr_jax vs transformers side by side, on whatever backend is present (one run).

    python bench/train_throughput.py             # all workloads for this backend (~25 min on 2 CPU cores)
    python bench/train_throughput.py --quick     # the short ones (SmolLM2 at 512, attention at 8k)
    python bench/train_throughput.py --only attention,jmlr
    python bench/train_throughput.py --lower_for=cuda   # no device: each GPU workload traced and lowered here
    python bench/train_throughput.py --compile_for=h100 # ... and compiled for an H100 here: its memory

Each measurement runs in its own process (clean peak memory; an out-of-memory case fails alone).
Workloads (random init; timing does not depend on weights or text):
  llama     train step (fwd + bwd + AdamW) and forward of a Llama shape at batch x length; jmlr_jax with the
            platform's default precision (CPU fp32; GPU/TPU bf16 compute, fp32 master weights), the fused
            chunked cross-entropy (CPU: also a row with the rematerialised per-token one); transformers
            LlamaForCausalLM with SDPA attention (bf16 autocast on GPU), AdamW.
            CPU: SmolLM2-135M at 512 and 2048, and train rows at 2048 with bf16 compute on both sides (jax bf16
            activations / matmuls with fp32 weights, torch bf16 autocast).
            GPU: SmolLM2-135M at 16 x 2048, the 1B shape at 8 x 2048.
  attention causal self-attention fwd + bwd alone, head_dim 64, batch 1: the 1B head shape (32 query / 8 KV
            heads) at 8k and 16k, and on CPU SmolLM2's (9 / 3) at 2048 (one layer of the CPU train rows):
            jmlr_jax dense and S2-Attn (G = L/4) vs torch SDPA dense.
  jmlr      the fused JMLR step at the paper's setting (C=30 / S=10 / K=7; doc 128 / question 192 /
            answer 32 tokens; realistic padding): compacted sequences vs the block layout, and the mask
            oracle. CPU: SmolLM2-135M + MiniLM-shape ColBERT, batch 1. GPU: Llama-2-7B shape with LoRA r=128
            on all projections, bf16, batch 4 and 8.
Utilisation = model FLOPs (6N per trained token + causal attention; forward 2N) / the matmul peak measured
at the start of the run (CPU fp32 2048^3, and bf16 -> fp32 for the CPU bf16 rows; accelerators bf16 8192^3).
--lower_for=cuda|tpu: the accelerator workloads (jmlr_jax side only) are built for that platform and lowered to
StableHLO on this host with abstract inputs (`jmlr_jax.lowering`; nothing is allocated, so the 7B shape fits a
laptop): a table of the attention backend "auto" picks there and the fused-kernel custom calls in each program.
It checks the code paths and the kernels' argument rules before device time is spent, not speed or memory.
--compile_for=h100|v5p|v6e: the same, and each program compiled for one such device by its XLA on this host
(`jmlr_jax.lowering.compile`; needs "jax[cuda12]" for the H100, "jax[tpu]" for TPU chips): the device memory the
compiler assigns (weights, optimizer state, activations, scratch), or the compiler's refusal when it does not fit;
a last row compiles the paper-sized JMLR step at batch 32 sharded (FSDP) over 8 such devices (memory per device).
Memory: accelerators report the peak bytes in use; on CPU, XLA's compiled buffer sizes (arguments +
temporaries) for JAX and the process's peak RSS for PyTorch (different measures: compare each framework with
itself across rows).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys

os.environ.setdefault("GLOG_minloglevel", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and PyTorch may share one GPU
if any(a.split("=", 1)[0] in ("--lower_for", "--compile_for") and not a.endswith("=") for a in sys.argv):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # built for another device: no accelerator is looked for here
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from bench import throughput_runs as runs  # noqa: E402


# --------------------------------------------------------------------------------------------------- driver

def child(**kw) -> dict:
    """Run one measurement in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child"] + [f"--{k}={v}" for k, v in kw.items()]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = p.stdout.strip().splitlines()
    if p.returncode or not lines:
        lines = p.stderr.strip().splitlines() or ["?"]
        err = next((x for x in reversed(lines) if re.match(r"[\w.]*(Error|Exception): ", x)), lines[-1])
        return {"error": ("out of memory" if "RESOURCE_EXHAUSTED" in p.stderr or "out of memory" in p.stderr
                          else err[:160])}
    return json.loads(lines[-1])


def workloads(accel: bool, quick: bool) -> dict[str, list[dict]]:
    if accel:
        llama = [dict(shape="SmolLM2-135M", batch=16, seq=2048), dict(shape="SmolLM2-135M", batch=4, seq=2048),
                 dict(shape="1B", batch=8, seq=2048), dict(shape="1B", batch=1, seq=8192),
                 dict(shape="1B", batch=1, seq=8192, s2=2048)]
        jmlr = [dict(batch=4, shape="Llama-2-7B", lora=128), dict(batch=8, shape="Llama-2-7B", lora=128),
                dict(batch=8, shape="Llama-2-7B", lora=128, remat="attn")]  # batch 8 with room to spare
    else:
        seqs = (512,) if quick else (512, 2048)
        llama = [dict(shape="SmolLM2-135M", batch=b, seq=s, mode=m) for m in ("forward", "train")
                 for s in seqs for b in (1, 4)]
        # bf16 compute on both sides (jax: bf16 activations / matmuls, fp32 weights; torch: bf16 autocast)
        llama += [] if quick else [dict(shape="SmolLM2-135M", batch=b, seq=2048, dtype="bfloat16") for b in (1, 4)]
        # the plain-JAX kernel the C++ one replaced on CPU, for the before / after in one run
        llama += [] if quick else [dict(shape="SmolLM2-135M", batch=b, seq=2048, impl="blockwise") for b in (1, 4)]
        # the rematerialised per-token cross-entropy the fused one replaced in the LM loss
        llama += [] if quick else [dict(shape="SmolLM2-135M", batch=1, seq=2048, loss="per_token")]
        jmlr = [dict(batch=1, shape="SmolLM2-135M")]
    # 32/8 heads at long context (S2's case); SmolLM2's 9/3 at 2048, the CPU train rows' length (x 30 layers)
    attn = [dict(seq=L, heads="32/8") for L in ((8192,) if quick else (8192, 16384))]
    attn += [] if accel or quick else [dict(seq=2048, heads="9/3")]
    attn = [dict(w, impl=impl) for w in attn for impl in (("auto",) if accel else ("auto", "blockwise"))]
    return {"llama": llama, "attention": attn, "jmlr": [] if quick and not accel else jmlr}


def _select(W: dict[str, list[dict]], where: str) -> dict[str, list[dict]]:
    """--where="k=v ...": only the workloads whose settings match (defaults count)."""
    if not where:
        return W
    want = dict(kv.split("=", 1) for kv in where.split())
    defaults = dict(mode="train", s2=0, dtype="auto", impl="auto", batch=1, loss="fused", remat="none")
    return {part: [w for w in ws if all(str(dict(defaults, **w).get(k)) == v for k, v in want.items())]
            for part, ws in W.items()}


def lower_table(args) -> None:
    """--lower_for / --compile_for: every accelerator workload lowered (and compiled) for that platform here, one
    process each (a table)."""
    W = _select(workloads(True, args.quick), args.where)
    rows = [("llama", "jax_llama", w) for w in W["llama"]] + \
        [("attention", "jax_attention", dict(w, s2=s2)) for w in W["attention"] for s2 in (0, w["seq"] // 4)] + \
        [("jmlr", "jax_jmlr", dict(w, impl=impl, compact=compact)) for w in W["jmlr"]
         for impl, compact in (("auto", True), ("auto", False), ("reference", False))]
    if args.compile_for and W["jmlr"]:  # the paper-sized step sharded (FSDP) over 8 chips (v5p: two hosts), per chip
        rows += [("jmlr", "jax_jmlr", dict(batch=32, shape="Llama-2-7B", lora=128, chips=8, impl="auto"))]
    if args.compile_for and W["llama"]:  # long context on 8 FSDP chips: one row, split along its sequence (S2's
        # groups over the chips; dense: TPU splits the queries, GPU attends over the whole row on every chip)
        rows += [("llama", "jax_llama", dict(shape="1B", batch=1, seq=8192, s2=s2, chips=8)) for s2 in (2048, 0)]
    import jax

    chip = args.compile_for
    what = f"compiled for one {chip} by its XLA" if chip else "no compilation: what runs there, not how fast"
    print(f"lowered for {args.lower_for} on {jax.devices()[0].device_kind} ({os.cpu_count()} host cores), jax "
          f"{jax.__version__}; abstract inputs, {what}\n\n"
          "| workload | settings | attention | lowered in s | fused-kernel custom calls | [.., L, L] logits |"
          + (" compiled GiB |\n" if chip else "\n") + "|---|---|---|---|---|---|" + ("---|" if chip else ""),
          flush=True)
    for part, run, w in rows:
        r = child(run=run, lower_for=args.lower_for, compile_for=chip, **w)
        name = f"{part} {w.get('shape', '')}".strip()
        settings = " ".join(f"{k}={v}" for k, v in w.items() if k != "shape")
        if "error" in r:
            print(f"| {name} | {settings} | - | failed: {r['error']} | - | - |" + (" - |" if chip else ""), flush=True)
            continue
        calls = ", ".join(f"{k} x{n}" for k, n in sorted(r["calls"].items())) or "none"
        logits = ", ".join(r["logits"]) or "none"
        mem = r.get("mem_gib")
        mem = "" if not chip else f" {mem:.1f} |" if isinstance(mem, float) else f" {mem} |"
        print(f"| {name} | {settings} | {r['backend']} | {r['lower_s']:.1f} | {calls} | {logits} |{mem}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="llama,attention,jmlr")
    ap.add_argument("--reps", type=int, default=3)
    # e.g. --where="seq=2048 mode=train": only the workloads whose settings match (defaults count)
    ap.add_argument("--where", default="")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--run", default="")
    ap.add_argument("--shape", default="SmolLM2-135M")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--mode", default="train")
    ap.add_argument("--s2", type=int, default=0)
    ap.add_argument("--heads", default="32/8")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--impl", default="auto")
    ap.add_argument("--loss", default="fused", choices=("fused", "per_token"))  # llama train rows
    ap.add_argument("--compact", type=lambda s: s == "True", default=True)
    ap.add_argument("--lora", type=int, default=0)
    ap.add_argument("--chips", type=int, default=1)  # --compile_for llama / jmlr rows: FSDP over this many chips
    ap.add_argument("--dtype", default="auto")  # llama rows: "bfloat16" = jax bf16 compute, torch bf16 autocast
    ap.add_argument("--lower_for", default="", choices=("", "cuda", "tpu"))
    ap.add_argument("--compile_for", default="", choices=("", "h100", "v5p", "v6e"))
    args = ap.parse_args()
    if args.compile_for:
        from jmlr_jax import lowering

        args.lower_for = lowering.CHIPS[args.compile_for]
    if args.child:
        from jmlr_jax import lowering

        runs.LOWER_FOR, runs.COMPILE_FOR = args.lower_for, args.compile_for
        with lowering.target(args.lower_for) if args.lower_for else contextlib.nullcontext():
            print(json.dumps(runs.RUNNERS[args.run](args)))
        return
    if args.lower_for:
        lower_table(args)
        return

    pk = child(run="peak")
    import jax
    import torch
    import transformers

    accel = pk["dtype"] != "float32"
    reps = args.reps
    only = set(args.only.split(","))
    W = _select(workloads(accel, args.quick), args.where)
    print(f"device: {pk['device']} ({os.cpu_count()} host cores); jax {jax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; measured {pk['dtype']} matmul peak {pk['flops'] / 1e12:.2f} "
          f"TFLOP/s" + (f" (bf16 -> fp32: {pk['bf16_flops'] / 1e12:.2f}, the bf16 rows' peak)"
                        if pk.get("bf16_flops") else "")
          + f"; one run, {reps} timed repetitions after a warm-up (fastest shown)\n", flush=True)
    fmt_mem = lambda r: f"{r['mem_gib']:.2f}" if "mem_gib" in r else "-"  # noqa: E731

    if "llama" in only:
        print("| model | pass | precision | batch x seq | jax attention | jax loss | jmlr_jax tok/s | transformers tok/s | "
              "jax / torch | jax of peak | jax GiB | torch GiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
              flush=True)
        for w in W["llama"]:
            w = dict(dict(mode="train", s2=0, dtype="auto", impl="auto", loss="fused"), **w)
            j = child(run="jax_llama", reps=reps, **w)
            t = child(run="torch_llama", reps=reps, **{k: v for k, v in w.items() if k not in ("s2", "impl", "loss")}) \
                if not w["s2"] else {}
            tokens = w["batch"] * w["seq"]
            name = w["shape"] + (f" S2 G={w['s2']}" if w["s2"] else "")
            js_ = f"{tokens / j['seconds']:.0f}" if "seconds" in j else j.get("error", "-")
            ts_ = f"{tokens / t['seconds']:.0f}" if "seconds" in t else t.get("error", "-")
            ratio = f"{t['seconds'] / j['seconds']:.2f}x" if "seconds" in j and "seconds" in t else "-"
            peak_w = pk["bf16_flops"] if w["dtype"] == "bfloat16" and pk.get("bf16_flops") else pk["flops"]
            util = (f"{runs.flops_per_token(runs.SHAPES[w['shape']], w['seq'], w['mode'] == 'train') * tokens / j['seconds'] / peak_w:.0%}"
                    if "seconds" in j else "-")
            prec = "bf16" if accel or w["dtype"] == "bfloat16" else "fp32"
            jloss = w["loss"] if w["mode"] == "train" else "-"
            print(f"| {name} | {w['mode']} | {prec} | {w['batch']} x {w['seq']} | {j.get('backend', '-')} | {jloss} | {js_} | "
                  f"{ts_} | {ratio} | {util} | {fmt_mem(j)} | {fmt_mem(t)} |", flush=True)
    if "attention" in only:
        print("\nattention fwd+bwd alone, head_dim 64, batch 1 (S2: G = L/4)\n\n"
              "| query / KV heads | L | jax attention | jax dense ms | jax S2 ms | S2 / dense | torch SDPA dense ms | "
              "jax dense time / torch | jax dense GiB | jax S2 GiB |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for w in W["attention"]:
            d = child(run="jax_attention", reps=reps, **w)
            even = runs.attn_shapes(w["seq"], w["heads"])[0][2] % 2 == 0  # S2 splits the query heads in two halves
            s = child(run="jax_attention", reps=reps, s2=w["seq"] // 4, **w) if even else {}
            t = child(run="torch_attention", reps=reps, **{k: v for k, v in w.items() if k != "impl"})
            ms = lambda r: f"{r['seconds'] * 1e3:.0f}" if "seconds" in r else r.get("error", "-")  # noqa: E731
            rat = lambda a, b: f"{a['seconds'] / b['seconds']:.2f}" if "seconds" in a and "seconds" in b else "-"  # noqa: E731
            print(f"| {w['heads']} | {w['seq']} | {d.get('backend', '-')} | {ms(d)} | {ms(s)} | {rat(s, d)} | {ms(t)} | {rat(d, t)} | {fmt_mem(d)} | "
                  f"{fmt_mem(s)} |", flush=True)
    if "jmlr" in only and W["jmlr"]:
        print("\nfused JMLR train step, C=30 / S=10 / K=7, doc 128 / question 192 / answer 32 tokens\n\n"
              "| generator | batch | attention | sequences | s/step | model TFLOP/s | of peak | GiB |\n"
              "|---|---|---|---|---|---|---|---|", flush=True)
        for w in W["jmlr"]:
            for impl, compact in (("auto", True), ("auto", False), ("reference", False)):
                r = child(run="jax_jmlr", reps=reps, impl=impl, compact=compact, **w)
                if "seconds" in r:
                    tf = r["model_flops"] / r["seconds"]
                    cells = f"{r['seconds']:.2f} | {tf / 1e12:.3f} | {tf / pk['flops']:.0%} | {fmt_mem(r)}"
                else:
                    cells = f"{r['error']} | - | - | -"
                name = w["shape"] + (f" LoRA r={w['lora']}" if w.get("lora") else "") + \
                    (f", remat {w['remat']}" if w.get("remat") else "")
                print(f"| {name} | {w['batch']} | {impl} | {'compacted' if compact else 'block layout'} | {cells} |",
                      flush=True)


if __name__ == "__main__":
    main()

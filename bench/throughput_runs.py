"""The measurements of bench/train_throughput.py, each run in a process of its own (`--child --run=NAME`): the
model shapes, the jmlr_jax and transformers train steps, attention alone, the fused JMLR step, and their lowering
and compile-only reports (`--lower_for` / `--compile_for`, set in LOWER_FOR / COMPILE_FOR by the driver)."""
from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import time

SMOL = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
            tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192)
ONE_B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
             num_kv_heads=8, max_position_embeddings=16384)
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                 num_kv_heads=32, max_position_embeddings=4096)
SHAPES = {"SmolLM2-135M": SMOL, "1B": ONE_B, "Llama-2-7B": LLAMA2_7B}


def timeit(fn, reps: int) -> float:
    fn()
    fn()  # compile, then one warm run
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def _accel() -> bool:
    from jmlr_jax import lowering

    return lowering.backend() != "cpu"


LOWER_FOR = ""  # --lower_for: build abstract inputs and lower instead of running
COMPILE_FOR = ""  # --compile_for: a chip of jmlr_jax.lowering.CHIPS; lower and compile for it


def _make(fn, *args):
    """fn(*args), or its shapes only when lowering (a 7B model's parameters are never allocated)."""
    import jax

    return jax.eval_shape(fn, *args) if LOWER_FOR else fn(*args)


_KERNEL_CALLS = (("__cudnn$fmha", "cudnn"), ("__gpu$xla.gpu.triton", "pallas_gpu"), ("tpu_custom_call", "splash"))


def _lowered(f, *args, seqs: tuple = (), mesh=None, **extra) -> dict:
    """The lowering report of jitted f at args (see --lower_for); seqs: the attention lengths whose [.., L, L]
    tensors a fused kernel never materialises; mesh: compile for its devices (--compile_for; else one chip), the
    memory figure per device."""
    import jax

    from jmlr_jax import lowering

    t = time.perf_counter()
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        text = lowering.lower(f, *args)
    calls = dict(lowering.custom_calls(text))
    # the backend its kernels show ("auto" trades cuDNN for Triton's kernel where S2's groups spread over chips)
    shown = {b for prefix, b in _KERNEL_CALLS if any(c.startswith(prefix) for c in calls)}
    if len(shown) == 1:
        extra["backend"] = shown.pop()
    out = {"lower_s": time.perf_counter() - t, "calls": calls, **extra,
           "logits": sorted({t for L in seqs for t in lowering.attention_logits(text, L)}), "jax": jax.__version__}
    if COMPILE_FOR:
        try:
            compiled = lowering.compile(f, *args, mesh=mesh or lowering.chip_mesh(COMPILE_FOR))
            out["mem_gib"], out["peak_gib"] = lowering.memory_gib(compiled), lowering.peak_gib(compiled)
        except jax.errors.JaxRuntimeError as e:
            out["mem_gib"] = does_not_fit(e)
    return out


def _on_chips(chips: int, state, state_sh, batch) -> tuple:
    """(mesh, state, batch) placed over `chips` compile-only devices (--compile_for) as the training loop places
    them, FSDP: the abstract state by `state_sh(mesh)` (weights, Adam moments), the batch's rows over the mesh."""
    import jax

    from jmlr_jax import lowering, parallel

    mesh = lowering.chip_mesh(COMPILE_FOR, (1, chips, 1))
    put = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
    state = jax.tree_util.tree_map(put, state, state_sh(mesh))
    batch = jax.tree_util.tree_map(lambda x: put(x, parallel.batch_sharding(x.shape, mesh)), batch)
    return mesh, state, batch


def does_not_fit(e: Exception) -> str:
    """XLA:TPU refuses to compile a program larger than its HBM: what it said it needed, else re-raise."""
    if "RESOURCE_EXHAUSTED" not in str(e):
        raise e
    need = re.search(r"required for HLO temporaries \(([\d.]+\w)\) exceeds available HBM \(([\d.]+\w)\)", str(e))
    return f"does not fit ({need.group(1)} of scratch, {need.group(2)} of HBM)" if need else "does not fit"


def jax_memory(compiled=None) -> float | None:
    import jax

    from jmlr_jax import lowering

    if _accel():
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**30
    return lowering.memory_gib(compiled)  # donated (aliased) state counted once


def flops_per_token(c: dict, seq: int, train: bool) -> float:
    hd = c["hidden_size"] // c["num_heads"]
    dense = c["num_layers"] * (c["hidden_size"] * hd * (2 * c["num_heads"] + 2 * c["num_kv_heads"])
                               + 3 * c["hidden_size"] * c["intermediate_size"]) + c["hidden_size"] * c["vocab_size"]
    fwd = 2 * dense + c["num_layers"] * 2 * c["num_heads"] * hd * seq  # causal attention: QK^T + PV over L/2 keys
    return 3 * fwd if train else fwd


# ------------------------------------------------------------------------------------------- measurements

def peak(_args) -> dict:
    import jax
    import jax.numpy as jnp

    n, dtype = (8192, jnp.bfloat16) if _accel() else (2048, jnp.float32)
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))

    def rate(dt):
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dt)
        return 2 * n**3 / timeit(lambda: f(a).block_until_ready(), 10)

    return {"flops": rate(dtype), "bf16_flops": rate(jnp.bfloat16) if dtype != jnp.bfloat16 else None,
            "dtype": jnp.dtype(dtype).name, "device": jax.devices()[0].device_kind, "jax": jax.__version__}


def jax_llama(args) -> dict:
    import jax
    import optax

    from jmlr_jax.models import Llama, LlamaConfig
    from jmlr_jax.models.llama import init_params

    cfg = LlamaConfig(**SHAPES[args.shape], remat_policy=args.remat, s2_group_size=args.s2, dtype=args.dtype,
                      attention=args.impl)
    params = _make(functools.partial(init_params, cfg), jax.random.PRNGKey(0))
    backend = _backend(args.impl, cfg.dtype, cfg.head_dim)
    extra = _kernel_gib(backend, args.batch, args.seq, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    tokens = _make(lambda k: jax.random.randint(k, (args.batch, args.seq), 0, cfg.vocab_size), jax.random.PRNGKey(1))
    model = Llama(cfg)
    if args.mode == "forward":
        f = jax.jit(lambda p, t: model.apply({"params": p}, t, return_hidden=True))
        if LOWER_FOR:
            return _lowered(f, params, tokens, seqs=(args.seq,), backend=backend)
        compiled = f.lower(params, tokens).compile()
        t = timeit(lambda: jax.block_until_ready(compiled(params, tokens)), args.reps)
        return {"seconds": t, "mem_gib": jax_memory(compiled) + extra, "backend": backend}
    tx = optax.adamw(1e-4)
    state = (params, _make(tx.init, params))
    f = jax.jit(functools.partial(llama_train_step, cfg=cfg, tx=tx, loss=args.loss), donate_argnums=0)
    if LOWER_FOR:
        mesh = None
        if args.chips > 1:
            from jmlr_jax import parallel
            from jmlr_jax.models.llama import logical_axes

            def state_sh(mesh):
                p_sh = parallel.tree_shardings(logical_axes(cfg), params, mesh)
                return p_sh, parallel.like_params_shardings(state[1], p_sh, params, mesh)

            mesh, state, tokens = _on_chips(args.chips, state, state_sh, tokens)
        return _lowered(f, state, tokens, seqs=(args.seq,), mesh=mesh, backend=backend)
    compiled = f.lower(state, tokens).compile()
    box = [state]

    def run():
        box[0], v = compiled(box[0], tokens)
        v.block_until_ready()

    return {"seconds": timeit(run, args.reps), "mem_gib": jax_memory(compiled) + extra, "backend": backend}


def llama_train_step(state, tokens, *, cfg, tx, loss: str = "fused"):
    """One next-token step on (params, optimizer state): the fused chunked cross-entropy, or ("per_token") the
    rematerialised per-token one (4 projection matmuls, not 3)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jmlr_jax.models import Llama
    from jmlr_jax.train.losses import chunked_cross_entropy, chunked_token_nll, output_kernel

    def per_token(*a, dtype):
        return jnp.sum(chunked_token_nll(*a, dtype=dtype)), jnp.sum(a[3])

    ce = chunked_cross_entropy if loss == "fused" else per_token

    def loss_fn(p, t):
        h = Llama(cfg).apply({"params": p}, t, train=True, return_hidden=True)
        total, n = ce(h[:, :-1], output_kernel(cfg, p), t[:, 1:], jnp.ones(t[:, 1:].shape), dtype=cfg.dtype)
        return total / n

    p, o = state
    value, g = jax.value_and_grad(loss_fn)(p, tokens)
    u, o = tx.update(g, o, p)
    return (optax.apply_updates(p, u), o), value


def _kernel_gib(backend: str, batch: int, seq: int, heads: int, kv_heads: int, head_dim: int) -> float:
    """The C++ CPU kernel's scratch (outside XLA's buffer total): added to the jax memory column."""
    if backend != "cpu":
        return 0.0
    from jmlr_jax.models import cpu_kernel

    return cpu_kernel.scratch_bytes(batch, seq, heads, kv_heads, head_dim) / 2**30


def _backend(impl: str, dtype, head_dim: int, right_padded: bool = True) -> str:
    from jmlr_jax.models import attention

    return attention.resolve_implementation(impl, dtype=dtype, head_dim=head_dim, right_padded=right_padded)


def _torch_measure(run, dev: str, reps: int) -> dict:
    """Time `run`; memory: peak allocated on CUDA, else the process's peak RSS."""
    import torch

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = timeit(run, reps)
    mem = (torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"seconds": t, "mem_gib": mem}


def torch_llama(args) -> dict:
    import torch
    import transformers

    from jmlr_jax.models import LlamaConfig

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count() or 1)
    hf = transformers.LlamaConfig(**LlamaConfig(**SHAPES[args.shape]).to_hf_dict(), attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(hf).to(dev)
    model.config.use_cache = False
    tokens = torch.randint(0, hf.vocab_size, (args.batch, args.seq), device=dev)
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda" or args.dtype == "bfloat16")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if args.mode == "forward":
        model.eval()

        def run():
            with torch.no_grad(), autocast:
                model(input_ids=tokens)
            sync()
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")

        def run():
            with autocast:
                loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
    return _torch_measure(run, dev, args.reps)


def attn_shapes(seq: int, heads: str) -> list[tuple[int, ...]]:
    """q, k, v as [B, L, heads, head_dim 64]; heads "H/K" (the 1B shape: 32/8, SmolLM2-135M: 9/3)."""
    H, K = (int(x) for x in heads.split("/"))
    return [(1, seq, H, 64), (1, seq, K, 64), (1, seq, K, 64)]


def jax_attention(args) -> dict:
    import jax
    import jax.numpy as jnp

    from jmlr_jax.models import attention

    dtype = jnp.bfloat16 if _accel() else jnp.float32
    q, k, v = (_make(lambda key, s=s: jax.random.normal(key, s, dtype), jax.random.PRNGKey(i))
               for i, s in enumerate(attn_shapes(args.seq, args.heads)))
    pos = jnp.arange(args.seq)[None]
    seg = jnp.ones((1, args.seq), jnp.int32)
    f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention.self_attention(
        q, k, v, pos, seg, impl=args.impl, s2_group_size=args.s2, right_padded=True).astype(jnp.float32)),
        argnums=(0, 1, 2)))
    if LOWER_FOR:
        return _lowered(f, q, k, v, seqs=(args.seq, args.s2) if args.s2 else (args.seq,),
                        backend=_backend(args.impl, dtype, 64))
    compiled = f.lower(q, k, v).compile()
    t = timeit(lambda: jax.block_until_ready(compiled(q, k, v)), args.reps)
    backend = _backend(args.impl, dtype, 64)
    H, K = (int(x) for x in args.heads.split("/"))
    return {"seconds": t, "mem_gib": jax_memory(compiled) + _kernel_gib(backend, 1, args.seq, H, K, 64),
            "backend": backend}


def torch_attention(args) -> dict:
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count() or 1)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    q, k, v = (torch.randn(s[0], s[2], s[1], s[3], device=dev, dtype=dtype, requires_grad=True)
               for s in attn_shapes(args.seq, args.heads))
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def run():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.float().sum().backward()
        sync()

    return _torch_measure(run, dev, args.reps)


def jax_jmlr(args) -> dict:
    import jax
    import numpy as np

    from jmlr_jax.models import BertConfig, ColBERTConfig, LlamaConfig
    from jmlr_jax.models import colbert as colbert_lib
    from jmlr_jax.models.llama import init_params
    from jmlr_jax.train import jmlr_step as js
    from jmlr_jax.train.state import LoraConfig, OptimConfig, init_lora, init_train_state, make_optimizer

    accel = _accel()
    C, S, K, Ld, Lq, La, B = 30, 10, 7, 128, 192, 32, args.batch
    cfg = LlamaConfig(**SHAPES[args.shape], attention=args.impl, remat_policy=args.remat,
                      param_dtype="bfloat16" if accel else "float32")
    rcfg = ColBERTConfig(BertConfig(dtype=cfg.dtype), dim=128, query_maxlen=32, doc_maxlen=Ld)
    lcfg = LoraConfig(rank=args.lora, alpha=2.0 * args.lora) if args.lora else LoraConfig()
    params = {"llm": _make(functools.partial(init_params, cfg), jax.random.PRNGKey(0)),
              "retriever": _make(functools.partial(colbert_lib.init_params, rcfg), jax.random.PRNGKey(1))}
    if args.lora:
        params["lora"] = _make(lambda p, k: init_lora(p, lcfg, k), params["llm"], jax.random.PRNGKey(2))
    models = js.StepConfigs(cfg, rcfg, js.JMLRConfig(num_candidates=C, num_sampled=S, num_docs=K, compact=args.compact),
                       lcfg)
    tx = make_optimizer(params, OptimConfig())
    state = _make(functools.partial(init_train_state, tx=tx), params)
    # Padding like real data: passages mostly fill their 128 tokens, MedMCQA-style questions + options use
    # 60-150 of 192 (right-aligned block), answers 5-32 tokens.
    rng = np.random.RandomState(0)
    V = cfg.vocab_size

    def block(shape, lo, hi, right=False):
        n = rng.randint(lo, hi + 1, shape[:-1])
        idx = np.arange(shape[-1])
        valid = (idx >= shape[-1] - n[..., None]) if right else (idx < n[..., None])
        return rng.randint(5, V, shape).astype(np.int32), valid.astype(np.int32)

    docs, docs_valid = block((B, C, Ld), 100, Ld)
    question, question_valid = block((B, Lq), 60, 150, right=True)
    answer, answer_valid = block((B, La), 5, La)
    keep = np.ones((B, C, Ld), np.int32)
    batch = {"example_id": np.arange(B, dtype=np.int32), "r_q_ids": rng.randint(5, 30000, (B, 32)).astype(np.int32),
             "r_q_mask": np.ones((B, 32), np.int32), "r_d_ids": rng.randint(5, 30000, (B, C, Ld)).astype(np.int32),
             "r_d_mask": keep, "r_d_keep": keep, "docs": docs, "docs_valid": docs_valid, "question": question,
             "question_valid": question_valid, "answer": answer, "answer_valid": answer_valid,
             "bos": np.ones((B, 1), np.int32), "bos_valid": np.ones((B, 1), np.int32)}
    f = jax.jit(functools.partial(js.train_step, models=models, tx=tx), donate_argnums=0)
    if LOWER_FOR:
        impl = _backend(args.impl, cfg.dtype, cfg.head_dim, right_padded=args.compact)
        mesh = None
        if args.chips > 1:
            from jmlr_jax.train.weights import param_shardings, state_shardings

            mesh, state, batch = _on_chips(args.chips, state, lambda mesh: state_shardings(
                params, tx, param_shardings(params, cfg, rcfg, mesh), mesh), batch)
        return _lowered(f, state, batch, seqs=(1 + K * Ld + Lq + La, 1 + Ld + Lq + La), mesh=mesh, backend=impl)
    compiled = f.lower(state, batch).compile()
    box = [state]

    def run():
        box[0], met = compiled(box[0], batch)
        jax.block_until_ready(met["loss"])

    t = timeit(run, args.reps)
    flops = jmlr_step_flops(params, models, batch, lora=bool(args.lora))
    return {"seconds": t, "mem_gib": jax_memory(compiled), "model_flops": flops}


def jmlr_step_flops(params, models, batch: dict, lora: bool = False) -> float:
    """Model FLOPs of one fused JMLR step, counted as the training loop counts them (`train.metrics.step_flops`:
    6N per generator token, 4N with LoRA, 2N per scoring token, 6N per retriever token, N the parameters that
    multiply activations, the LM head only where logits are computed; attention not counted)."""
    from jmlr_jax.train.metrics import matmul_params, step_flops

    return step_flops(models.jmlr, {k: v.shape for k, v in batch.items()}, matmul_params(params),
                      "lora" if lora else "full")


RUNNERS = {"peak": peak, "jax_llama": jax_llama, "torch_llama": torch_llama, "jax_attention": jax_attention,
           "torch_attention": torch_attention, "jax_jmlr": jax_jmlr}

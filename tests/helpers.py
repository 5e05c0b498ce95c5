"""Shared test fixtures: tiny random Hugging Face reference models with weights scaled up so that
logits are not tiny (the default 0.02 init would make any parity check trivially pass)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from jmlr_jax.errors import StoppedEarly


def tiny_hf_llama(tie: bool = False, rope_factor: float = 1.0, kv_heads: int = 2, seed: int = 0, vocab: int = 96,
                  rope: dict | None = None):
    """rope: transformers' rope_parameters (default: theta 500, linear scaling when rope_factor != 1)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if rope is None:
        rope = {"rope_type": "linear", "factor": rope_factor, "rope_theta": 500.0} if rope_factor != 1.0 \
            else {"rope_type": "default", "rope_theta": 500.0}
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, rope_parameters=rope,
                      tie_word_embeddings=tie, rms_norm_eps=1e-5, attn_implementation="eager")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(12.0)
            else:
                p.add_(0.2 * torch.randn_like(p))
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def save_tiny_llama_dir(path: str, seed: int = 0) -> str:
    """A tiny HF Llama directory with a byte-level tokenizer (every byte one token) and an EOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<eos>": 0, "<bos>": 1, **{ch: i + 2 for i, ch in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<eos>", "<bos>"])
    model = tiny_hf_llama(vocab=len(vocab), seed=seed)
    model.config.eos_token_id, model.config.bos_token_id = 0, 1
    model.save_pretrained(path)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<eos>", "bos_token": "<bos>", "add_bos_token": True}, f)
    return path


def jaxpr_eqns(jaxpr):
    """Every equation of a jaxpr, those of inner jaxprs (scan, remat, custom_vjp, pjit) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    yield from jaxpr_eqns(getattr(inner, "jaxpr", inner))


def saved_residuals(f, *args) -> list[str]:
    """What the backward pass of f(*args) stores, one line per array (jax's print_saved_residuals, captured)."""
    import contextlib
    import io

    from jax.ad_checkpoint import print_saved_residuals

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(f, *args)
    return out.getvalue().splitlines()


def run_stopped_after_one_step(trainer) -> None:
    """Runs a loop (`train.loop.StepLoop`) that stops after its first step as after a SIGTERM: it saves that step
    and raises StoppedEarly; then closes it."""
    step_fn = trainer.step_fn

    def stop_after(state, batch):
        trainer._stop = True
        return step_fn(state, batch)

    trainer.step_fn = stop_after
    try:
        with pytest.raises(StoppedEarly, match=r"stopped at step \d+ \(stopped\)"):
            trainer.run()
    finally:
        trainer.close()


def logged(workdir) -> list[dict]:
    """The metrics a run logged: its workdir's metrics.jsonl, one dict per logged step."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


def dot_flops(jaxpr) -> float:
    """2 x M x N x K of every dot_general a (closed) jaxpr runs: a scan's body times its length, a cond's costliest
    branch, every other sub-jaxpr once. XLA's cost analysis counts a loop's body once, so a model whose layers are
    scanned reads as one layer there."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
            continue
        subs = [dot_flops(x) for v in eqn.params.values() for x in (v if isinstance(v, (tuple, list)) else (v,))
                if hasattr(getattr(x, "jaxpr", x), "eqns")]
        if subs:
            times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
            total += times * (max(subs) if eqn.primitive.name == "cond" else sum(subs))
    return total

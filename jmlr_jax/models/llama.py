"""Llama decoder in Flax linen: RMSNorm, RoPE (linear or Llama 3 scaling), GQA, SwiGLU, tied/untied embeddings.

Layers are always stacked on a leading `layers` axis (nn.scan); `scan_unroll` trades compile time
for a fully unrolled graph without changing the parameter layout, so importers, checkpoints and
sharding rules have exactly one layout to handle. Every parameter and main activation carries
logical axis names; `jmlr_jax.parallel` maps them onto a mesh.

Parameter tree (N = num_layers):
  embed/embedding [V, D]                         ('vocab', 'embed')
  layers/attn_norm/scale [N, D]                   ('layers', 'norm')
  layers/attn/{q,k,v}/kernel [N, D, H|K, Dh]      ('layers', 'embed', 'heads'|'kv_heads', 'head_dim')
  layers/attn/o/kernel [N, H, Dh, D]              ('layers', 'heads', 'head_dim', 'embed')
  layers/mlp_norm/scale [N, D]
  layers/mlp/{gate,up}/kernel [N, D, F], down [N, F, D]
  final_norm/scale [D]; lm_head/kernel [D, V] (absent when embeddings are tied)
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jmlr_jax import lowering, parallel
from jmlr_jax.errors import InputError
from jmlr_jax.models.attention import IMPLEMENTATIONS, MaskInfo, dot_product_attention, self_attention
from jmlr_jax.models.ops import rms_norm, swiglu, tokens_first

_ATTN = jax.checkpoint_policies.save_only_these_names("attention")  # flash / splash residuals (O(L) each)
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Weight matmuls and the attention kernel's residuals kept: the backward pass recomputes only
    # elementwise work (norms, RoPE, SwiGLU), never attention. The long-context training default.
    "dots_attn": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _ATTN),
    "attn": _ATTN,  # only attention residuals kept: least memory without recomputing attention
}


ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture (round-trips to a Hugging Face config.json) plus JAX execution settings."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 0  # 0: hidden_size // num_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # RoPE scaling as Hugging Face's rope_type: "default" (none), "linear" (positions / factor: position
    # interpolation), "llama3" (Llama 3.1+: wavelengths beyond original / low_freq_factor stretched by the factor,
    # below original / high_freq_factor kept, smoothly between). A factor != 1 with "default" means "linear".
    rope_type: str = "default"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position: int = 8192  # llama3 only: the pre-training context
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2  # several: Llama 3.1 Instruct ends on any of three
    # Execution settings, not part of the HF architecture.
    dtype: str = "auto"  # activations / matmul inputs; "auto": bfloat16 on GPU/TPU, float32 on CPU
    param_dtype: str = "float32"  # master weights; "bfloat16" halves parameter memory
    remat_policy: str = "none"
    scan_unroll: int = 1
    s2_group_size: int = 0  # S2-Attn group G for train=True; 0 = dense causal
    attention: str = "auto"  # self-attention backend (models/attention.py): auto, reference, blockwise, ...
    attn_block: int = 256  # query / key block of the blockwise backend (256 was fastest on a 2-core CPU)

    def __post_init__(self):
        if not self.head_dim:  # canonical form: head_dim always explicit
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.dtype == "auto":  # resolved once, where the config is built (the machine, or lowering.target)
            object.__setattr__(self, "dtype", "float32" if lowering.backend() == "cpu" else "bfloat16")
        if self.rope_type == "default" and self.rope_scaling_factor != 1.0:
            object.__setattr__(self, "rope_type", "linear")
        # InputError: a config comes from a user (config.json, GGUF metadata, llm_overrides): one line at a launcher
        if self.rope_type not in ROPE_TYPES:
            raise InputError(f"unsupported RoPE scaling type {self.rope_type!r} (supported: {', '.join(ROPE_TYPES)})")
        if self.rope_type == "llama3" and not self.rope_low_freq_factor < self.rope_high_freq_factor:
            raise InputError(f"llama3 RoPE needs low_freq_factor < high_freq_factor, got "
                             f"{self.rope_low_freq_factor} and {self.rope_high_freq_factor}")
        if self.attention not in IMPLEMENTATIONS:
            raise InputError(f"LlamaConfig.attention {self.attention!r} not in {IMPLEMENTATIONS}")
        if self.remat_policy not in REMAT_POLICIES:
            raise InputError(f"LlamaConfig.remat_policy {self.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise InputError(f"LlamaConfig.{name} {getattr(self, name)!r} not in {DTYPES}")
        if self.num_heads % self.num_kv_heads:
            raise InputError(f"num_heads={self.num_heads} not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.s2_group_size < 0 or self.attn_block < 1 or self.scan_unroll < 1:
            raise InputError(f"LlamaConfig: need s2_group_size >= 0, attn_block >= 1 and scan_unroll >= 1; got "
                             f"{self.s2_group_size}, {self.attn_block} and {self.scan_unroll}")

    def replace(self, **kw: Any) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every token id that ends generation (none, one, or the several some configs list)."""
        eos = self.eos_token_id
        return () if eos is None else tuple(eos) if isinstance(eos, tuple) else (eos,)

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` dict that `transformers.LlamaConfig` loads."""
        d = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": self.param_dtype,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
        }
        if self.rope_type == "linear":
            d["rope_scaling"] = {"rope_type": "linear", "factor": self.rope_scaling_factor}
        elif self.rope_type == "llama3":
            d["rope_scaling"] = {"rope_type": "llama3", "factor": self.rope_scaling_factor,
                                 "low_freq_factor": self.rope_low_freq_factor,
                                 "high_freq_factor": self.rope_high_freq_factor,
                                 "original_max_position_embeddings": self.rope_original_max_position}
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> "LlamaConfig":
        """Reads both the legacy (`rope_theta`, `rope_scaling`) and transformers-5 (`rope_parameters`) keys."""
        if d.get("model_type", "llama") not in ("llama", "mistral"):
            raise ValueError(f"not a Llama config: model_type={d.get('model_type')!r}")
        for key in ("hidden_act",):
            if d.get(key, "silu") != "silu":
                raise ValueError(f"unsupported {key}={d[key]!r} (Llama uses silu)")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("Llama configs with attention/MLP biases are not supported")
        window = d.get("sliding_window")
        if window and window < d.get("max_position_embeddings", window):  # Mistral-7B-v0.1: 4096 of 32768
            warnings.warn(f"sliding_window={window} is not implemented: attention here is full causal, the same "
                          f"as the original model's on sequences of up to {window} tokens only", stacklevel=2)
        rope = dict(d.get("rope_parameters") or {})
        rope.update(d.get("rope_scaling") or {})
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"unsupported RoPE scaling type {rope_type!r} (supported: {', '.join(ROPE_TYPES)})")
        llama3 = dict(rope_low_freq_factor=float(rope["low_freq_factor"]),
                      rope_high_freq_factor=float(rope["high_freq_factor"]),
                      rope_original_max_position=int(rope["original_max_position_embeddings"])) \
            if rope_type == "llama3" else {}
        eos = d.get("eos_token_id")
        heads = d["num_attention_heads"]
        kw = dict(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_type=rope_type,
            rope_scaling_factor=float(rope.get("factor", 1.0)) if rope_type != "default" else 1.0,
            **llama3,
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=(eos[0] if len(eos) == 1 else tuple(eos)) if isinstance(eos, list) else eos,
        )
        kw.update(overrides)
        return cls(**kw)


def _kernel(axes: tuple[str, ...], std: float = 0.02):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],),
            self.param_dtype,
        )
        return rms_norm(x, scale, self.eps, self.dtype)


def rope_inv_freq(cfg: LlamaConfig) -> jax.Array:
    """Inverse frequencies [head_dim / 2] in fp32 for cfg's RoPE scaling (transformers' `ROPE_INIT_FUNCTIONS`)."""
    D = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, D, 2, dtype=jnp.float32) / D))
    if cfg.rope_type == "linear":
        return inv_freq / cfg.rope_scaling_factor
    if cfg.rope_type == "llama3":
        factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        long_wave = wavelen > cfg.rope_original_max_position / low
        short_wave = wavelen < cfg.rope_original_max_position / high
        smooth = (cfg.rope_original_max_position / wavelen - low) / (high - low)
        between = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        return jnp.where(long_wave, inv_freq / factor, jnp.where(short_wave, inv_freq, between))
    return inv_freq


def apply_rope(x_BxLxHxD: jax.Array, pos_BxL: jax.Array, inv_freq_F: jax.Array) -> jax.Array:
    """Rotary embedding, Hugging Face's half-split convention, computed in fp32 (inv_freq: `rope_inv_freq`)."""
    D = x_BxLxHxD.shape[-1]
    angles_BxLxF = pos_BxL.astype(jnp.float32)[..., None] * inv_freq_F
    cos = jnp.cos(angles_BxLxF)[:, :, None, :]
    sin = jnp.sin(angles_BxLxF)[:, :, None, :]
    x = x_BxLxHxD.astype(jnp.float32)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxD.dtype)


def _adapted(module: nn.Module, name: str, y_Nx: jax.Array, x_NxI: jax.Array, dtype: Any) -> jax.Array:
    """A projection's output y = x @ W, plus x @ A @ B when the params carry a LoRA adapter for it (train/state.py's
    `llm_params_of`: "lora_<name>_a" [in, r] and "lora_<name>_b" [r, out], scale folded into B, beside the
    projection in `module`'s scope)."""
    if not module.has_variable("params", f"lora_{name}_a"):
        return y_Nx
    a = module.get_variable("params", f"lora_{name}_a").astype(dtype)
    b = module.get_variable("params", f"lora_{name}_b").astype(dtype)
    return y_Nx + jnp.dot(jnp.dot(x_NxI.astype(dtype), a), b).reshape(y_Nx.shape).astype(y_Nx.dtype)


class Attention(nn.Module):
    cfg: LlamaConfig
    s2_group_size: int = 0  # > 0: S2-Attn (training)
    right_padded: bool = False  # rows are one segment then padding (lets cuDNN run)

    @nn.compact
    def __call__(self, x_BxLxD, pos_BxL, info: MaskInfo, layer_cache, cache_index):
        cfg = self.cfg
        H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dense = lambda feats, axes, name, axis=-1: nn.DenseGeneral(  # noqa: E731
            feats, axis=axis, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=_kernel(axes), name=name,
        )
        B, L, D = x_BxLxD.shape
        x_NxD = tokens_first(x_BxLxD)
        proj = lambda feats, axes, name: _adapted(  # noqa: E731
            self, name, dense(feats, axes, name)(x_NxD), x_NxD, cfg.dtype)
        q = proj((H, Dh), ("embed", "heads", "head_dim"), "q").reshape(B, L, H, Dh)
        k = proj((K, Dh), ("embed", "kv_heads", "head_dim"), "k").reshape(B, L, K, Dh)
        v = proj((K, Dh), ("embed", "kv_heads", "head_dim"), "v").reshape(B, L, K, Dh)
        q = parallel.constrain(q, ("batch", "length", "heads", "head_dim"))
        k = parallel.constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        inv_freq = rope_inv_freq(cfg)
        q = apply_rope(q, pos_BxL, inv_freq)
        k = apply_rope(k, pos_BxL, inv_freq)
        new_cache = None
        if layer_cache is not None:
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), start)
            v = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), start)
            new_cache = {"k": k, "v": v}
        if layer_cache is None:
            out = self_attention(q, k, v, info.q_pos_BxL, info.q_seg_BxL, impl=cfg.attention,
                                 s2_group_size=self.s2_group_size, right_padded=self.right_padded,
                                 block=cfg.attn_block)
        else:  # decoding / prefill into a cache: a few query rows against cache slots
            out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), info)
        out = parallel.constrain(out, ("batch", "length", "heads", "head_dim"))
        out_NxHxDh = tokens_first(out)
        o = dense(cfg.hidden_size, ("heads", "head_dim", "embed"), "o", axis=(-2, -1))(out_NxHxDh)
        o = _adapted(self, "o", o, out_NxHxDh.reshape(B * L, H * Dh), cfg.dtype)
        return o.reshape(B, L, D), new_cache


class MLP(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        cfg = self.cfg
        dense = lambda feats, axes, name: nn.Dense(  # noqa: E731
            feats, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=_kernel(axes), name=name,
        )
        x_NxD = tokens_first(x_BxLxD)
        proj = lambda feats, axes, name, x: _adapted(  # noqa: E731
            self, name, dense(feats, axes, name)(x), x, cfg.dtype)
        gate = checkpoint_name(proj(cfg.intermediate_size, ("embed", "mlp"), "gate", x_NxD), "mlp_gate")
        up = checkpoint_name(proj(cfg.intermediate_size, ("embed", "mlp"), "up", x_NxD), "mlp_up")
        h_NxF = parallel.constrain(swiglu(gate, up), ("batch", "mlp"))
        return proj(cfg.hidden_size, ("mlp", "embed"), "down", h_NxF).reshape(x_BxLxD.shape)


# The MLP of a model without remat: it keeps gate and up only, and the backward pass recomputes h = silu(gate) * up
# (the down projection's input, which its weight or LoRA gradient needs) instead of storing a third [tokens, ffn]
# array per layer, and LoRA's [tokens, rank] products. Same parameter scope as MLP (a lifted transform).
_MLPKeepingGateUp = nn.remat(MLP, policy=jax.checkpoint_policies.save_only_these_names("mlp_gate", "mlp_up"),
                             prevent_cse=False)


class Block(nn.Module):
    """One pre-norm decoder layer; the signature is nn.scan's (carry, scanned, *broadcast)."""

    cfg: LlamaConfig
    s2_group_size: int = 0
    right_padded: bool = False

    @nn.compact
    def __call__(self, x_BxLxD, layer_cache, pos_BxL, info, cache_index):
        cfg = self.cfg
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name=name)  # noqa: E731
        attn = Attention(cfg, self.s2_group_size, self.right_padded, name="attn")
        attn_out, new_cache = attn(norm("attn_norm")(x_BxLxD), pos_BxL, info, layer_cache, cache_index)
        h = x_BxLxD + attn_out
        mlp = MLP if cfg.remat_policy != "none" else _MLPKeepingGateUp
        out = h + mlp(cfg, name="mlp")(norm("mlp_norm")(h))
        return parallel.constrain(out, ("batch", "length", "embed")), new_cache


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype: Any = None) -> dict[str, jax.Array]:
    """Empty KV cache: k/v [N, B, S, K, Dh], slot positions [B, S] (-1 = empty), write index."""
    dtype = dtype or cfg.dtype
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "pos": jnp.full((batch, max_len), -1, jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


class Llama(nn.Module):
    """Decoder-only LM. `apply({"params": p}, tokens_BxL)` returns fp32 logits [B, L, V].

    segment_ids_BxL: 0 marks padding; tokens attend only within equal non-zero ids (packing).
    right_padded: the caller promises each row is one segment followed by padding (GPU: lets "auto" use cuDNN).
    train=True uses S2-Attn when 0 < cfg.s2_group_size < L; inference is always dense causal.
    cache: from `init_cache`; then the call writes this block's K/V at cache["index"] and returns
    (logits, new_cache). Padded tokens (segment 0) are written but never attended to.
    """

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, tokens_BxL, *, positions_BxL=None, segment_ids_BxL=None, cache=None, train=False,
                 return_hidden=False, right_padded=False):
        cfg = self.cfg
        B, L = tokens_BxL.shape
        if segment_ids_BxL is None:
            seg, right_padded = jnp.ones((B, L), jnp.int32), True
        else:
            seg = segment_ids_BxL.astype(jnp.int32)
        pos = (jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L)) if positions_BxL is None
               else positions_BxL.astype(jnp.int32))
        s2 = cfg.s2_group_size if train and cache is None else 0
        if cache is None:
            info = MaskInfo(pos, pos, seg, seg)
            layer_cache, index = None, None
        else:
            index = cache["index"]
            kv_pos = jax.lax.dynamic_update_slice(cache["pos"], jnp.where(seg > 0, pos, -1), (0, index))
            valid = (seg > 0).astype(jnp.int32)
            info = MaskInfo(pos, kv_pos, valid, jnp.ones_like(kv_pos))
            layer_cache = {"k": cache["k"], "v": cache["v"]}

        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         embedding_init=_kernel(("vocab", "embed")), name="embed")
        x = parallel.constrain(embed(tokens_BxL), ("batch", "length", "embed"))

        block = Block
        policy = REMAT_POLICIES[cfg.remat_policy]
        if cfg.remat_policy != "none":
            block = nn.remat(Block, policy=policy, prevent_cse=False)
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            unroll=cfg.scan_unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, new_layer_cache = stack(cfg, s2, right_padded, name="layers")(x, layer_cache, pos, info, index)
        x = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name="final_norm")(x)
        if return_hidden:
            out = x
        elif cfg.tie_word_embeddings:
            out = embed.attend(x).astype(jnp.float32)
        else:
            out = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                           kernel_init=_kernel(("embed", "vocab")), name="lm_head")(x).astype(jnp.float32)
        out = parallel.constrain(out, ("batch", "length", "vocab" if not return_hidden else "embed"))
        if cache is None:
            return out
        new_cache = dict(new_layer_cache, pos=kv_pos, index=index + L)
        return out, new_cache


def init_params(cfg: LlamaConfig, rng: jax.Array, seq_len: int = 8) -> dict:
    """Random parameters as a plain (unboxed) pytree. Jitted: one compilation, and the forward pass that `init`
    traces is dead code (run eagerly it compiled each op and ran the model)."""
    def init(r):
        return nn.meta.unbox(Llama(cfg).init(r, jnp.zeros((1, seq_len), jnp.int32))["params"])
    return jax.jit(init)(rng)


def param_shapes(cfg: LlamaConfig) -> dict:
    """Shape/dtype pytree of the parameters, without allocating them."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))


def logical_axes(cfg: LlamaConfig) -> dict:
    """Logical axis names of every parameter (a pytree of PartitionSpec of logical names)."""
    boxed = jax.eval_shape(lambda: Llama(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
    return nn.get_partition_spec(boxed)["params"]

"""Hugging Face directories (config.json + safetensors, sharded or not) <-> jmlr_jax params.

Every tensor's shape is checked against the shapes the config implies before anything is
returned, so a config/weights mismatch is one clear error, never a silently broken model.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jmlr_jax.errors import InputError
from jmlr_jax.models import colbert, llama


class WeightsError(InputError):
    """Missing, corrupt or mismatching weight files."""


def read_config(path: str) -> dict:
    p = os.path.join(path, "config.json")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        with open(p) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{p}: invalid JSON ({e})") from None


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a model directory: model.safetensors or the shards of model.safetensors.index.json."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        if any(n.endswith((".bin", ".pt", ".pth")) for n in os.listdir(path)):
            raise WeightsError(f"{path}: only pickle weights (.bin/.pt) found; convert them to safetensors first")
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        p = os.path.join(path, name)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: shard listed in the index is missing")
        try:
            with safe_open(p, framework="numpy") as f:
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{p}: corrupt or truncated safetensors file ({e})") from None
    return tensors


def _check_shapes(params: dict, expected: dict, where: str) -> None:
    got = jax.tree_util.tree_map(np.shape, params)
    want = jax.tree_util.tree_map(lambda s: tuple(s.shape), expected)
    flat_got = dict(jax.tree_util.tree_flatten_with_path(got, is_leaf=lambda x: isinstance(x, tuple))[0])
    flat_want = dict(jax.tree_util.tree_flatten_with_path(want, is_leaf=lambda x: isinstance(x, tuple))[0])
    for path, shape in flat_want.items():
        name = jax.tree_util.keystr(path)
        if path not in flat_got:
            raise WeightsError(f"{where}: parameter {name} missing")
        if tuple(flat_got[path]) != shape:
            raise WeightsError(f"{where}: parameter {name} has shape {tuple(flat_got[path])}, config implies {shape}")


def _take(tensors: dict[str, np.ndarray], where: str) -> Callable[[str], np.ndarray]:
    def get(key: str) -> np.ndarray:
        for k in (key, "model." + key, "bert." + key):
            if k in tensors:
                return tensors[k]
        raise WeightsError(f"{where}: tensor {key!r} not found in the weights")
    return get


# ----------------------------------------------------------------------------------------------- Llama

def llama_params_from_hf(cfg: llama.LlamaConfig, tensors: dict[str, np.ndarray], where: str = "weights") -> dict:
    """HF LlamaForCausalLM state dict (numpy) -> stacked jmlr_jax params, shapes checked."""
    get = _take(tensors, where)
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dtype = jax.numpy.dtype(cfg.param_dtype)

    def stack(fmt: str, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return np.stack([fn(get(fmt.format(i))) for i in range(cfg.num_layers)]).astype(dtype)

    def heads(n: int) -> Callable[[np.ndarray], np.ndarray]:
        # A row count that does not match n * Dh is left 2-D, so the shape check below names it.
        return lambda w: w.T.reshape(w.shape[1], n, -1) if w.shape[0] == n * Dh else w.T

    layer = "layers.{}."
    params = {
        "embed": {"embedding": get("embed_tokens.weight").astype(dtype)},
        "layers": {
            "attn_norm": {"scale": stack(layer + "input_layernorm.weight", lambda w: w)},
            "mlp_norm": {"scale": stack(layer + "post_attention_layernorm.weight", lambda w: w)},
            "attn": {
                "q": {"kernel": stack(layer + "self_attn.q_proj.weight", heads(H))},
                "k": {"kernel": stack(layer + "self_attn.k_proj.weight", heads(K))},
                "v": {"kernel": stack(layer + "self_attn.v_proj.weight", heads(K))},
                "o": {"kernel": stack(layer + "self_attn.o_proj.weight",
                                      lambda w: w.T.reshape(H, Dh, -1) if w.shape[1] == H * Dh else w.T)},
            },
            "mlp": {
                "gate": {"kernel": stack(layer + "mlp.gate_proj.weight", lambda w: w.T)},
                "up": {"kernel": stack(layer + "mlp.up_proj.weight", lambda w: w.T)},
                "down": {"kernel": stack(layer + "mlp.down_proj.weight", lambda w: w.T)},
            },
        },
        "final_norm": {"scale": get("norm.weight").astype(dtype)},
    }
    if not cfg.tie_word_embeddings:
        if "lm_head.weight" not in tensors:
            raise WeightsError(f"{where}: lm_head.weight missing and tie_word_embeddings is false")
        params["lm_head"] = {"kernel": tensors["lm_head.weight"].T.astype(dtype)}
    _check_shapes(params, llama.param_shapes(cfg), where)
    return params


def llama_params_to_hf(cfg: llama.LlamaConfig, params: dict) -> dict[str, np.ndarray]:
    """Inverse of `llama_params_from_hf`: a LlamaForCausalLM state dict."""
    p = jax.tree_util.tree_map(np.asarray, params)
    L = p["layers"]
    out = {"model.embed_tokens.weight": p["embed"]["embedding"], "model.norm.weight": p["final_norm"]["scale"]}
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        flat2 = lambda w: w.reshape(w.shape[0], -1).T  # noqa: E731  [D, H, Dh] -> [H*Dh, D]
        out[pre + "input_layernorm.weight"] = L["attn_norm"]["scale"][i]
        out[pre + "post_attention_layernorm.weight"] = L["mlp_norm"]["scale"][i]
        out[pre + "self_attn.q_proj.weight"] = flat2(L["attn"]["q"]["kernel"][i])
        out[pre + "self_attn.k_proj.weight"] = flat2(L["attn"]["k"]["kernel"][i])
        out[pre + "self_attn.v_proj.weight"] = flat2(L["attn"]["v"]["kernel"][i])
        o = L["attn"]["o"]["kernel"][i]
        out[pre + "self_attn.o_proj.weight"] = o.reshape(-1, o.shape[-1]).T
        for name in ("gate", "up", "down"):
            out[pre + f"mlp.{name}_proj.weight"] = L["mlp"][name]["kernel"][i].T
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = p["lm_head"]["kernel"].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def load_hf_llama(path: str, **overrides) -> tuple[llama.LlamaConfig, dict]:
    """A Hugging Face Llama directory -> (LlamaConfig, params). `overrides` set execution fields (dtype, ...)."""
    cfg = llama.LlamaConfig.from_hf_dict(read_config(path), **overrides)
    return cfg, llama_params_from_hf(cfg, read_safetensors(path), where=path)


def save_hf_llama(path: str, cfg: llama.LlamaConfig, params: dict, max_shard_bytes: int = 5 << 30) -> None:
    """Writes config.json + safetensors (sharded above `max_shard_bytes`) that `transformers` loads."""
    os.makedirs(path, exist_ok=True)
    tensors = llama_params_to_hf(cfg, params)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in tensors.items():
        if size and size + v.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, name), metadata=meta)
            weight_map.update({k: name for k in shard})
        total = sum(v.nbytes for v in tensors.values())
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg.to_hf_dict(), f, indent=2)


# ------------------------------------------------------------------------------------------------ BERT

def bert_params_from_hf(cfg: colbert.BertConfig, tensors: dict[str, np.ndarray], where: str = "weights") -> dict:
    """HF BertModel state dict -> BertEncoder params (stacked layers), shapes checked."""
    get = _take(tensors, where)
    H = cfg.num_heads

    def stack(key: str, fn: Callable[[np.ndarray], np.ndarray] = lambda w: w) -> np.ndarray:
        return np.stack([fn(get(f"encoder.layer.{i}.{key}")) for i in range(cfg.num_layers)]).astype(np.float32)

    def ln(prefix: str, layered: bool) -> dict:
        f = stack if layered else (lambda k: get(k))
        return {"scale": f(prefix + ".weight"), "bias": f(prefix + ".bias")}

    qkv = lambda n: {  # noqa: E731
        "kernel": stack(f"attention.self.{n}.weight", lambda w: w.T.reshape(w.shape[1], H, -1)),
        "bias": stack(f"attention.self.{n}.bias", lambda b: b.reshape(H, -1)),
    }
    params = {
        "word_embed": {"embedding": get("embeddings.word_embeddings.weight")},
        "pos_embed": {"embedding": get("embeddings.position_embeddings.weight")},
        "type_embed": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "embed_norm": ln("embeddings.LayerNorm", False),
        "layers": {
            "q": qkv("query"), "k": qkv("key"), "v": qkv("value"),
            "o": {"kernel": stack("attention.output.dense.weight", lambda w: w.T.reshape(H, -1, w.shape[0])),
                  "bias": stack("attention.output.dense.bias")},
            "attn_norm": ln("attention.output.LayerNorm", True),
            "up": {"kernel": stack("intermediate.dense.weight", lambda w: w.T),
                   "bias": stack("intermediate.dense.bias")},
            "down": {"kernel": stack("output.dense.weight", lambda w: w.T), "bias": stack("output.dense.bias")},
            "mlp_norm": ln("output.LayerNorm", True),
        },
    }
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    expected = jax.eval_shape(
        lambda: colbert.init_params(colbert.ColBERTConfig(bert=cfg), jax.random.PRNGKey(0)))["bert"]
    _check_shapes(params, expected, where)
    return params


def bert_params_to_hf(cfg: colbert.BertConfig, params: dict) -> dict[str, np.ndarray]:
    """BertEncoder params -> HF BertModel tensor names and layouts (the inverse of `bert_params_from_hf`)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    lay = p["layers"]
    out = {"embeddings.word_embeddings.weight": p["word_embed"]["embedding"],
           "embeddings.position_embeddings.weight": p["pos_embed"]["embedding"],
           "embeddings.token_type_embeddings.weight": p["type_embed"]["embedding"],
           "embeddings.LayerNorm.weight": p["embed_norm"]["scale"], "embeddings.LayerNorm.bias": p["embed_norm"]["bias"]}
    for i in range(cfg.num_layers):
        pre = f"encoder.layer.{i}."
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            k_DxHxK = lay[ours]["kernel"][i]
            out[pre + f"attention.self.{theirs}.weight"] = k_DxHxK.reshape(k_DxHxK.shape[0], -1).T
            out[pre + f"attention.self.{theirs}.bias"] = lay[ours]["bias"][i].reshape(-1)
        o_HxKxD = lay["o"]["kernel"][i]
        out[pre + "attention.output.dense.weight"] = o_HxKxD.reshape(-1, o_HxKxD.shape[-1]).T
        out[pre + "attention.output.dense.bias"] = lay["o"]["bias"][i]
        for ours, theirs in (("attn_norm", "attention.output.LayerNorm"), ("mlp_norm", "output.LayerNorm")):
            out[pre + theirs + ".weight"], out[pre + theirs + ".bias"] = lay[ours]["scale"][i], lay[ours]["bias"][i]
        for ours, theirs in (("up", "intermediate.dense"), ("down", "output.dense")):
            out[pre + theirs + ".weight"], out[pre + theirs + ".bias"] = lay[ours]["kernel"][i].T, lay[ours]["bias"][i]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ColBERT fields kept in config.json under this key, so a saved retriever loads back with its own settings.
COLBERT_KEY = "colbert"


def save_hf_colbert(path: str, cfg: colbert.ColBERTConfig, params: dict) -> None:
    """Writes a ColBERT retriever the way ColBERT's own checkpoints are laid out: a BERT directory whose
    model.safetensors holds `bert.*` (transformers' BertModel loads it) plus `linear.weight` [dim, hidden],
    the projection (ColBERT loads it; transformers ignores it)."""
    os.makedirs(path, exist_ok=True)
    tensors = {"bert." + k: v for k, v in bert_params_to_hf(cfg.bert, params["bert"]).items()}
    tensors["linear.weight"] = np.ascontiguousarray(np.asarray(params["proj"]["kernel"], np.float32).T)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    fields = {f: getattr(cfg, f) for f in ("dim", "query_maxlen", "doc_maxlen", "attend_to_mask_tokens",
                                           "q_marker", "d_marker")}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**cfg.bert.to_hf_dict(), COLBERT_KEY: fields}, f, indent=2)


def load_hf_bert(path: str, **overrides) -> tuple[colbert.BertConfig, dict, np.ndarray | None]:
    """A Hugging Face BERT directory -> (BertConfig, BertEncoder params, ColBERT projection [hidden, dim] when the
    directory holds one as `linear.weight`, as ColBERT checkpoints do, else None)."""
    cfg = colbert.BertConfig.from_hf_dict(read_config(path), **overrides)
    tensors = read_safetensors(path)
    linear = tensors.get("linear.weight")
    return cfg, bert_params_from_hf(cfg, tensors, where=path), None if linear is None else linear.T.astype(np.float32)

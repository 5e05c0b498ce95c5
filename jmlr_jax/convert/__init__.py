"""Weight importers/exporters: Hugging Face safetensors directories, GGUF, named presets."""
from jmlr_jax.convert.gguf import load_gguf_llama
from jmlr_jax.convert.hf import WeightsError, load_hf_bert, load_hf_llama, save_hf_colbert, save_hf_llama
from jmlr_jax.convert.presets import PRESETS, load_preset

__all__ = ["PRESETS", "WeightsError", "load_gguf_llama", "load_hf_bert", "load_hf_llama", "load_preset",
           "save_hf_colbert", "save_hf_llama"]

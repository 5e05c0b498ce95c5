"""Models: the Llama decoder (dense / S2-Attn, KV cache) and the ColBERT retriever."""
from jmlr_jax.models.colbert import BertConfig, ColBERT, ColBERTConfig, ColBERTTokenizer, maxsim
from jmlr_jax.models.llama import Llama, LlamaConfig, init_cache

__all__ = ["BertConfig", "ColBERT", "ColBERTConfig", "ColBERTTokenizer", "Llama", "LlamaConfig", "init_cache",
           "maxsim"]

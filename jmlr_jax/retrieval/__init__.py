"""Retrieval: guideline corpus -> passages (and, later, the ColBERT token index)."""
from jmlr_jax.retrieval.corpus import Passage, chunk_words, read_guidelines

__all__ = ["Passage", "chunk_words", "read_guidelines"]

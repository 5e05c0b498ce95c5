"""Retrieval: guideline corpus -> passages -> ColBERT token index (ScaNN) -> MaxSim search."""
from jmlr_jax.retrieval.corpus import Corpus, CorpusError, Passage, chunk_words, load_corpus

__all__ = ["Corpus", "CorpusError", "Passage", "chunk_words", "load_corpus"]

"""QA data: readers for MedQA, MedMCQA, PubMedQA and MMLU into one record type."""
from jmlr_jax.data.sources import LETTERS, DataError, QARecord, read_qa

__all__ = ["LETTERS", "DataError", "QARecord", "read_qa"]

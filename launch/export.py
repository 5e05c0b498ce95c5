"""Export a trained run for Hugging Face: generator (LoRA merged) as a Llama directory, retriever as a BERT
directory with the ColBERT projection, and a model card (jmlr_jax/export.py).

    python launch/export.py --workdir=workdir/quickstart --out=workdir/quickstart/hf
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import cli  # noqa: E402

if __name__ == "__main__":
    cli.export()

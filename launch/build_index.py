"""Build the ColBERT token index (ScaNN) over a corpus.

    python launch/build_index.py --gin_file=retrieval/minilm_index.gin [--gin.INDEX_DIR="'DIR'"]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import cli  # noqa: E402

if __name__ == "__main__":
    cli.build_index()

"""Print the top passages for a question from a built index.

    python launch/search.py --gin_file=retrieval/minilm_index.gin \
        --gin.search_main.question="'first-line treatment of hypertension'" [--gin.search_main.exact=True]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import cli  # noqa: E402

if __name__ == "__main__":
    cli.search()

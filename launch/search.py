"""Print the top passages for a question from a built index.

    python launch/search.py --gin_file=retrieval/minilm_index.gin \
        --gin.search_main.question="'first-line treatment of hypertension'" [--gin.search_main.exact=True]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GLOG_minloglevel", "1")

from jmlr_jax import config, experiment  # noqa: E402
from jmlr_jax.retrieval import launch  # noqa: E402


def main() -> None:
    launch.search_main(experiment.from_gin())


if __name__ == "__main__":
    config.run_main(main)

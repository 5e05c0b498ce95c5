"""Build the ColBERT token index (ScaNN) over a corpus.

    python launch/build_index.py --gin_file=retrieval/minilm_index.gin [--gin.INDEX_DIR="'DIR'"]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GLOG_minloglevel", "1")

from jmlr_jax import config, experiment  # noqa: E402
from jmlr_jax.retrieval import launch  # noqa: E402


def main() -> None:
    index_dir = launch.index_main(experiment.from_gin())
    config.save_operative_config(index_dir)


if __name__ == "__main__":
    config.run_main(main)

"""Prepare a QA dataset as TFDS array_record shards from files downloaded by hand.

    python launch/build_tfds.py --dataset=medmcqa --manual_dir=/data/medmcqa [--data_dir=~/tensorflow_datasets]

datasets: medqa, medmcqa, pubmedqa, mmlu_med (what manual_dir must hold: jmlr_jax/data/tfds_builders.py).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--manual_dir", required=True)
    ap.add_argument("--data_dir", default="~/tensorflow_datasets")
    args = ap.parse_args()
    from jmlr_jax.data.tfds_builders import build

    with config.exits_on_bad_input():
        b = build(args.dataset, args.manual_dir, args.data_dir)
    print(f"{args.dataset}: " + ", ".join(f"{k} {v.num_examples}" for k, v in b.info.splits.items()) + f" -> {b.data_dir}")


if __name__ == "__main__":
    main()

"""Checks a MedQuAD copy against the public release: the same pairs, and the same evidence-comparison data.

    python launch/check_medquad.py --release=/data/MedQuAD [--copy=../shared/data/medquad/medquad.jsonl]

The release is github.com/abachaa/MedQuAD as downloaded (a directory of XML files). Prints how many pairs each
gives, how many differ (every field but where they were read), and whether the evidence comparison
(configs/compare/evidence.gin) built from each has the same splits and corpus checksum; exits 1 on a difference.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import config  # noqa: E402
from jmlr_jax.compare.evidence_setup import EvidenceConfig, build_setup  # noqa: E402
from jmlr_jax.data.medquad import MedQuADPair, iter_medquad  # noqa: E402


def pairs(path: str) -> list[MedQuADPair]:
    return [dataclasses.replace(p, where="") for p in iter_medquad(path) if isinstance(p, MedQuADPair)]


def evidence_data(medquad: str) -> tuple[dict, str]:
    """The evidence comparison's splits (question ids per set) and corpus checksum, built from `medquad`."""
    config.parse(["compare/evidence.gin"], [f"EvidenceConfig.medquad = {os.path.abspath(medquad)!r}"])
    s = build_setup(EvidenceConfig())
    splits = {k: [r.id for r in v] for k, v in [("train", s.train), ("dev", s.dev), *s.sets.items()]}
    return splits, s.corpus.checksum()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", required=True, help="the public release's directory of XML files")
    ap.add_argument("--copy", default="../shared/data/medquad/medquad.jsonl", help="a JSONL copy")
    args = ap.parse_args()
    with config.exits_on_bad_input():  # a missing or malformed copy: one line, exit 2
        release, copy = pairs(args.release), pairs(args.copy)
        differ = sum(a != b for a, b in zip(release, copy)) + abs(len(release) - len(copy))
        same_data = evidence_data(args.release) == evidence_data(args.copy)
    print(f"release: {len(release)} answered pairs; copy: {len(copy)}; pairs that differ: {differ}")
    print(f"evidence comparison from each: splits and corpus checksum {'equal' if same_data else 'DIFFER'}")
    return 0 if differ == 0 and same_data else 1


if __name__ == "__main__":
    sys.exit(main())

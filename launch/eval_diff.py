"""Two evaluations of the same questions, compared per set (`launch/evaluate.py` JSON files):

    python launch/eval_diff.py results/eval_fewshot/base_0shot.json results/eval_fewshot/base_5shot.json

Prints accuracy of each, B - A with its paired bootstrap 95% interval (10,000 resamples of questions), McNemar's p,
and the predicted letters of each beside the gold ones.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax.eval.harness import paired  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    results = []
    for path in (args.a, args.b):
        with open(path) as f:
            results.append(json.load(f))
    print(f"| set | n | {results[0]['name']} | {results[1]['name']} | B - A [95% CI] | McNemar p |")
    print("|---|---|---|---|---|---|")
    rows = paired(*results)
    for r in rows:
        print(f"| {r['set']} | {r['n']} | {r['acc_a']:.3f} | {r['acc_b']:.3f} | {r['diff']:+.3f} [{r['lo']:+.3f}, "
              f"{r['hi']:+.3f}] | {r['p']:.2g} |")
    for r in rows:
        print(f"{r['set']}: letters A {r['letters_a']}, B {r['letters_b']}, gold {r['gold']}")


if __name__ == "__main__":
    main()

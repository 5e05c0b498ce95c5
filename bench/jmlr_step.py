"""Fused JMLR step vs the sum of its parts, and vs plain fine-tuning with the same documents (one run).

    python bench/jmlr_step.py [--candidates 30 --sampled 10 --docs 7 --batch 1]

Real models (SmolLM2-135M + MiniLM ColBERT) and real questions / guideline passages; candidates are
random passages (timing does not depend on which). Parts, each jitted alone:
  retriever:  live MaxSim over C candidates, forward + backward (retriever grads)
  scoring:    S single-document LLM passes, forward only
  generator:  top-K documents + question -> answer loss, forward + backward (LLM grads)
Plain fine-tuning = the generator part + the optimizer update, no retriever, no scoring.
The fused step's utilisation is its model FLOPs (counted as the training loop counts them) per second over the fp32
matmul peak measured in the same run, before and after the timings (this host's speed varies by the hour).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time

os.environ.setdefault("GLOG_minloglevel", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import throughput_runs as runs  # noqa: E402
from jmlr_jax.convert import load_preset  # noqa: E402
from jmlr_jax.data.pipeline import JMLRExamples  # noqa: E402
from jmlr_jax.data.sources import read_qa  # noqa: E402
from jmlr_jax.data.templates import Budgets  # noqa: E402
from jmlr_jax.models import ColBERTTokenizer  # noqa: E402
from jmlr_jax.retrieval import load_corpus  # noqa: E402
from jmlr_jax.train import jmlr_step as js, losses  # noqa: E402
from jmlr_jax.train.state import OptimConfig, init_train_state, make_optimizer  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def timeit(fn, reps):
    jax.block_until_ready(fn())
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--sampled", type=int, default=10)
    ap.add_argument("--docs", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    peak_before = runs.peak(None)["flops"]

    cfg, llm, tok = load_preset("smollm2-135m-instruct")
    rcfg, rparams, rtok = load_preset("all-minilm-l6-v2", doc_maxlen=128)
    budgets = Budgets(doc=128, question=192, answer=32)
    passages = load_corpus([("guidelines", os.path.join(DATA, "guidelines", "ngc_open.jsonl"))]).passages
    records = read_qa("medmcqa", os.path.join(DATA, "medmcqa", "dev.jsonl"))[: args.batch]
    cands = np.random.RandomState(0).randint(0, len(passages), (len(records), args.candidates))
    ex = JMLRExamples(records, cands, passages, tok, ColBERTTokenizer(rtok, rcfg), budgets=budgets)
    batch = {k: np.stack([ex(i)[k] for i in range(len(records))]) for k in ex(0)}
    jcfg = js.JMLRConfig(num_candidates=args.candidates, num_sampled=args.sampled, num_docs=args.docs)
    models = js.StepConfigs(cfg, rcfg, jcfg)
    params = {"llm": llm, "retriever": rparams}
    tx = make_optimizer(params, OptimConfig())
    state = init_train_state(params, tx)
    B = len(records)

    fused = jax.jit(functools.partial(js.train_step, models=models, tx=tx))
    t_fused = timeit(lambda: fused(state, batch)[1]["loss"], args.reps)

    retr = jax.jit(jax.grad(lambda rp: jnp.sum(js.retriever_scores(rcfg, rp, batch))))
    t_retr = timeit(lambda: retr(rparams), args.reps)

    top = jnp.asarray(np.tile(np.arange(args.docs), (B, 1)))
    samp = jnp.asarray(np.tile(np.arange(args.sampled), (B, 1)))

    def blocks(idx):
        K = idx.shape[1]
        rep = lambda x: jnp.repeat(x, K, axis=0)  # noqa: E731
        return ([(rep(batch["bos"]), rep(batch["bos_valid"])),
                 (js._take(batch["docs"], idx).reshape(B * K, -1), js._take(batch["docs_valid"], idx).reshape(B * K, -1)),
                 (rep(batch["question"]), rep(batch["question_valid"]))], rep(batch["answer"]), rep(batch["answer_valid"]))

    sb, sa, sav = blocks(samp)
    score = jax.jit(lambda p: losses.answer_nll(cfg, p, sb, sa, sav, train=True))
    t_score = timeit(lambda: score(llm), args.reps)

    def gen_loss(p):
        gd = js._take(batch["docs"], top[:, ::-1]).reshape(B, -1)
        gv = js._take(batch["docs_valid"], top[:, ::-1]).reshape(B, -1)
        return jnp.mean(losses.answer_nll(cfg, p, [(batch["bos"], batch["bos_valid"]), (gd, gv),
                                               (batch["question"], batch["question_valid"])],
                                      batch["answer"], batch["answer_valid"], train=True))

    gen = jax.jit(jax.grad(gen_loss))
    t_gen = timeit(lambda: gen(llm), args.reps)

    ptx = make_optimizer({"llm": llm}, OptimConfig())
    pstate = init_train_state({"llm": llm}, ptx)

    @jax.jit
    def plain(st):
        g = jax.grad(lambda p: gen_loss(p["llm"]))(st["params"])
        upd, opt = ptx.update(g, st["opt_state"], st["params"])
        return dict(st, params=jax.tree_util.tree_map(jnp.add, st["params"], upd), opt_state=opt)

    t_plain = timeit(lambda: plain(pstate)["params"]["llm"]["final_norm"]["scale"], args.reps)

    # The classic-RAG arm of the comparison: the same step with rank_weight=0 (no scoring pass, retriever frozen).
    rag_optim = OptimConfig(retriever_trainable="")
    rag_models = js.StepConfigs(cfg, rcfg, dataclasses.replace(jcfg, rank_weight=0.0), optim=rag_optim)
    rtx = make_optimizer(params, rag_optim)
    rag = jax.jit(functools.partial(js.train_step, models=rag_models, tx=rtx))
    rstate = init_train_state(params, rtx)
    t_rag = timeit(lambda: rag(rstate, batch)[1]["loss"], args.reps)
    gen_tokens = B * (args.docs * budgets.doc + budgets.question + budgets.answer)
    peak_after = runs.peak(None)["flops"]
    peak = (peak_before + peak_after) / 2
    flops = runs.jmlr_step_flops(params, models, batch)

    print(f"\nSmolLM2-135M + MiniLM ColBERT, fp32, {os.cpu_count()} CPU cores; batch {B}, C={args.candidates} "
          f"candidates, S={args.sampled} sampled, K={args.docs} fed; blocks doc {budgets.doc} / question "
          f"{budgets.question} / answer {budgets.answer} tokens\n")
    print("| what | seconds | generator tokens/s |")
    print("|---|---|---|")
    for name, t in (("retriever MaxSim fwd+bwd (C docs)", t_retr), ("LLM scoring, S docs, forward", t_score),
                    ("generator fwd+bwd (K docs)", t_gen), ("sum of parts", t_retr + t_score + t_gen),
                    ("**fused JMLR step** (incl. optimizer update)", t_fused),
                    ("RAG step: frozen retriever scores + generator (rank_weight=0)", t_rag),
                    ("plain fine-tuning step, same K docs (incl. update)", t_plain)):
        print(f"| {name} | {t:.2f} | {gen_tokens / t:.0f} |")
    print(f"\nfused / sum of parts = {t_fused / (t_retr + t_score + t_gen):.2f}; "
          f"fused / plain fine-tuning = {t_fused / t_plain:.2f}; fused / RAG step = {t_fused / t_rag:.2f}")
    print(f"fused step: {flops / 1e12:.2f} model TFLOP, {flops / t_fused / 1e9:.0f} GFLOP/s = "
          f"{flops / t_fused / peak:.0%} of the fp32 matmul peak measured here ({peak_before / 1e9:.0f} GFLOP/s "
          f"before the timings, {peak_after / 1e9:.0f} after); jax {jax.__version__}")


if __name__ == "__main__":
    main()

"""Training metrics: model FLOPs of a fused step, and the writer (metrics.jsonl + TensorBoard)."""
from __future__ import annotations

import json
import os

import jax

from jmlr_jax.train.state import path_name
from jmlr_jax.workdir import is_lead


# Model FLOPs per token and matmul parameter (attention not counted): 2 forward; 6 when the weights train (forward,
# backward through the activations, weight gradients); 4 when only LoRA adapters train (the frozen base gets no
# weight gradients; the adapters' own FLOPs are not counted, as issue 11 counts the paper's 7B LoRA step).
PER_TOKEN = {"full": 6, "lora": 4, "frozen": 2}
EMBEDDINGS = ("embed/embedding", "word_embed/embedding", "pos_embed/embedding", "type_embed/embedding")


def matmul_params(params: dict) -> dict[str, int]:
    """Parameters that multiply activations, by part: "llm" (the generator's layers and final norm), "head" (its
    d x V output projection: lm_head, or the embedding when tied), "retriever" (its layers and projection).
    Embedding lookups are not matmuls: counting them (MiniLM's word embeddings are half its parameters) and the
    head at every position had put a quickstart step at 100% of the 400 GFLOP/s this CPU's fp32 matmul reaches."""
    n = {"llm": 0, "head": 0, "retriever": 0}
    for top in ("llm", "retriever"):
        tied = top == "llm" and "lm_head" not in params[top]
        for path, x in jax.tree_util.tree_leaves_with_path(params[top]):
            name = path_name(path)
            if name == "lm_head/kernel" or (tied and name == "embed/embedding"):
                n["head"] += int(x.size)
            elif not name.endswith(EMBEDDINGS):
                n[top] += int(x.size)
    return n


def step_flops(jcfg, batch_shapes: dict, n: dict[str, int], llm: str = "full") -> float:
    """Model FLOPs of one fused step, from `matmul_params` n: PER_TOKEN[llm] * n["llm"] per generator token (BOS,
    K passages, question, answer) and n["head"] per answer position (the only logits computed); 2x the same per
    scoring sequence (S passes of one passage each, forward only); 6 * n["retriever"] per retriever token (query +
    C passages; the query alone when the batch carries the passages' token vectors, r_d_emb) when the rank loss
    trains it, 2x when it only ranks for the generator; no generator FLOPs with cached_doc_losses (the generator
    frozen, its losses precomputed); attention ignored."""
    A = jcfg.grad_accum
    B = batch_shapes["answer"][-2]
    Ld, Lq, La = batch_shapes["docs"][-1], batch_shapes["question"][-1], batch_shapes["answer"][-1]
    Lb = batch_shapes["bos"][-1] if "bos" in batch_shapes else 0
    live = not jcfg.cached_doc_losses
    gen = B * live * (n["llm"] * (Lb + jcfg.num_docs * Ld + Lq + La) + n["head"] * La)
    score = B * jcfg.num_sampled * live * (n["llm"] * (Lb + Ld + Lq + La) + n["head"] * La) if jcfg.rank_weight else 0
    Lr = batch_shapes["r_d_ids"][-1] if "r_d_ids" in batch_shapes else 0
    ret = B * (batch_shapes["r_q_ids"][-1] + jcfg.num_candidates * Lr)
    ret_flops = (6 if jcfg.rank_weight else 2 if jcfg.num_docs else 0) * n["retriever"] * ret  # trained/scored/unused
    return A * (PER_TOKEN[llm] * gen + 2 * score + ret_flops)


def lm_step_flops(n: dict[str, int], tokens: int, llm: str = "full", dpo: bool = False) -> float:
    """Model FLOPs of a seed-pipeline step (CPT / SFT / DPO) over `tokens` valid tokens: PER_TOKEN[llm] per matmul
    parameter of the generator, its head included (logits at every position there), + 2 for DPO's reference
    forward pass."""
    return (PER_TOKEN[llm] + 2 * dpo) * (n["llm"] + n["head"]) * tokens


class MetricWriter:
    """metrics.jsonl (one JSON object per logged step) + TensorBoard event files under <workdir>/tb, written by
    process 0 alone (the metrics are global; hosts sharing a workdir would write every line once each)."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        self.on = is_lead()
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if self.on else None
        self.tb = SummaryWriter(os.path.join(workdir, "tb")) if self.on else None

    def __call__(self, metrics: dict, step: int) -> None:
        if not self.on:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.on:
            self.jsonl.close()
            self.tb.close()

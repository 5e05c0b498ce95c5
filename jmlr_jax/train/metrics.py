"""Training metrics: model FLOPs of a fused step, and the writer (metrics.jsonl + TensorBoard)."""
from __future__ import annotations

import json
import os

from jmlr_jax.workdir import is_lead


# Model FLOPs per token and parameter (attention not counted): 2 forward; 6 when the weights train (forward, backward
# through the activations, weight gradients); 4 when only LoRA adapters train (the frozen base gets no weight
# gradients; the adapters' own FLOPs are not counted, as issue 11 counts the paper's 7B LoRA step).
PER_TOKEN = {"full": 6, "lora": 4, "frozen": 2}


def step_flops(jcfg, batch_shapes: dict, n_llm: int, n_ret: int, llm: str = "full") -> float:
    """Model FLOPs of one fused step: PER_TOKEN[llm] * n_llm per generator token (BOS, K passages, question,
    answer), 2 * n_llm per scoring token (S passes of one passage each), 6 * n_ret per retriever token (query + C
    passages; the query alone when the batch carries the passages' token vectors, r_d_emb) when the rank loss
    trains it, 2 * n_ret when it only ranks for the generator; no generator FLOPs with cached_doc_losses (the
    generator frozen, its losses precomputed); attention ignored."""
    A = jcfg.grad_accum
    B = batch_shapes["answer"][-2]
    Ld, Lq, La = batch_shapes["docs"][-1], batch_shapes["question"][-1], batch_shapes["answer"][-1]
    Lb = batch_shapes["bos"][-1] if "bos" in batch_shapes else 0
    live = not jcfg.cached_doc_losses
    gen = B * (Lb + jcfg.num_docs * Ld + Lq + La) * live
    score = B * jcfg.num_sampled * (Lb + Ld + Lq + La) * live if jcfg.rank_weight else 0
    Lr = batch_shapes["r_d_ids"][-1] if "r_d_ids" in batch_shapes else 0
    ret = B * (batch_shapes["r_q_ids"][-1] + jcfg.num_candidates * Lr)
    ret_flops = (6 if jcfg.rank_weight else 2 if jcfg.num_docs else 0) * n_ret * ret  # trained / scored / unused
    return A * (PER_TOKEN[llm] * n_llm * gen + 2 * n_llm * score + ret_flops)


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

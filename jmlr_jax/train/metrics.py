"""Training metrics: model FLOPs of a fused step, and the writer (metrics.jsonl + TensorBoard)."""
from __future__ import annotations

import json
import os

from jmlr_jax.workdir import is_lead


def step_flops(llm_cfg, rcfg, jcfg, batch_shapes: dict, n_llm: int, n_ret: int) -> float:
    """Model FLOPs of one fused step (6N per trained token, 2N per forward-only token; attention ignored)."""
    B = batch_shapes["answer"][-2]
    A = jcfg.grad_accum
    Ld, Lq, La = batch_shapes["docs"][-1], batch_shapes["question"][-1], batch_shapes["answer"][-1]
    gen = B * (jcfg.num_docs * Ld + Lq + La)
    score = B * jcfg.num_sampled * (Ld + Lq + La) if jcfg.rank_weight else 0
    ret = B * (batch_shapes["r_q_ids"][-1] + jcfg.num_candidates * batch_shapes["r_d_ids"][-1])
    ret_flops = (6 if jcfg.rank_weight else 2 if jcfg.num_docs else 0) * n_ret * ret  # trained / scored / unused
    return A * (6 * n_llm * gen + 2 * n_llm * score + ret_flops)


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

"""A 4-job sweep that runs on a laptop in ~15 minutes: rank-loss weight x retriever lr, 8 steps each, on the
quickstart setting with the guideline corpus only (a smaller index to build per job).

    python launch/xm_launch.py --sweep=quickstart_4
"""
from jmlr_jax.sweeps import Sweep, product, sweep

SWEEP = Sweep(
    name="quickstart_4",
    gin_files=("quickstart_cpu.gin",),
    fixed={"RunConfig.num_steps": 8, "RunConfig.checkpoint_every": 4, "RunConfig.progress": False,
           "CorpusConfig.sources": [("guidelines", "guidelines/ngc_open.jsonl")]},
    points=product(
        sweep("JMLRConfig.rank_weight", [0.5, 1.0]),
        sweep("OptimConfig.retriever_lr", [3e-6, 3e-4]),
    ),
)

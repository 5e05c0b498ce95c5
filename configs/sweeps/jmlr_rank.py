"""The JMLR knobs at quickstart size: rank-loss weight x retriever lr x documents fed x seed (24 jobs).

    python launch/xm_launch.py --sweep=jmlr_rank --dry_run
"""
from jmlr_jax.sweeps import Sweep, product, sweep

SWEEP = Sweep(
    name="jmlr_rank",
    gin_files=("quickstart_cpu.gin",),
    fixed={"RunConfig.num_steps": 20, "RunConfig.progress": False},
    points=product(
        sweep("JMLRConfig.rank_weight", [0.5, 1.0]),
        sweep("OptimConfig.retriever_lr", [3e-6, 3e-5]),
        sweep("JMLRConfig.num_docs", [1, 3]),
        sweep("RunConfig.seed", [0, 1, 2]),
    ),
)

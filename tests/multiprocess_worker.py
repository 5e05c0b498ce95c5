"""One host of a multi-process run, started by tests/test_multiprocess.py (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID in the environment; CPU collectives over gloo):

    python -m tests.multiprocess_worker jmlr WORKDIR LLM_DIR CORPUS STEPS [SIGTERM_STEP]
    python -m tests.multiprocess_worker pipeline WORKDIR LLM_DIR DATA_DIR
    python -m tests.multiprocess_worker cpt WORKDIR LLM_DIR DATA_DIR
    python -m tests.multiprocess_worker evaluate MODEL_DIR OUT_JSON
"""
import faulthandler
import json
import os
import signal
import sys
import time
import traceback

import jax
import numpy as np

from jmlr_jax import parallel


def main(mode: str, *args: str) -> None:
    # A process still running after 4 minutes (a run here takes 0.5-2) prints every thread's stack: the one that
    # hangs (CI, 2026-12-05: one process never reached jax's shutdown barrier) says where in the test's output.
    faulthandler.dump_traceback_later(240)
    parallel.maybe_initialize_distributed()  # before anything touches a jax backend
    if mode == "jmlr":
        from jmlr_jax import config, experiment
        from jmlr_jax.errors import StoppedEarly
        from jmlr_jax.train import loop
        from tests.train.test_loop import bindings

        workdir, llm, corpus, steps, *sigterm_step = args
        config.parse(["quickstart_cpu.gin"], bindings(llm, corpus, workdir, **{
            "RunConfig.num_steps": steps, "RunConfig.mesh_shape": "(1, -1, 1)"}))
        t = loop.Trainer(experiment.for_training())
        if sigterm_step and jax.process_index() == 1:  # a preemption notice to this host alone, during that step
            step_fn = t.step_fn

            def preempted(state, batch):
                if int(state["step"]) == int(sigterm_step[0]):
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)  # jax's notifier polls each second; the hosts agree on a step meanwhile
                return step_fn(state, batch)

            t.step_fn = preempted
        try:
            t.run()
        except StoppedEarly:  # preempted: saved, every host at the same step (the test reads it from the output)
            t.close()
            return
        params = jax.tree_util.tree_leaves(parallel.host_copy(t.state["params"]))  # a collective: every host
        if jax.process_index() == 0:
            np.savez(os.path.join(workdir, "params.npz"), *params)
        t.close()
    elif mode == "evaluate":  # the model FSDP-split across the hosts, each batch's rows too
        from jmlr_jax.convert import load_preset
        from jmlr_jax.train.weights import on_mesh
        from tests.eval.test_on_mesh import measures

        model_dir, out = args
        cfg, params, tok = load_preset(model_dir)
        placed = on_mesh(cfg, params, parallel.make_mesh((1, -1, 1)))
        q = placed["layers"]["attn"]["q"]["kernel"]
        assert q.addressable_shards[0].data.shape[1] == q.shape[1] // 2, q.sharding  # each host holds half
        result = measures(cfg, placed, placed, tok)
        if jax.process_index() == 0:
            with open(out, "w") as f:
                json.dump(result, f)
    else:
        from tests.test_multiprocess import run_cpt, run_pipeline

        (run_cpt if mode == "cpt" else run_pipeline)(*args, mesh_shape=(1, -1, 1))


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except BaseException:  # noqa: B036
        # Exit now: at a normal exit jax's shutdown barrier would wait (5 min) for the other process, which waits in
        # its next collective for this one; the test then sees this exit code and this traceback.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

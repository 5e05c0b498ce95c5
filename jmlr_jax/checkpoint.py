"""Orbax checkpoints: train state + grain iterator state + run metadata (index version, config) in one step.

Saves are asynchronous; `close()` (or `wait()`) must run before the process exits, which the training
loop does on normal exit and on SIGTERM. Restores always use abstract targets carrying the current
shardings, so a checkpoint restores onto whatever mesh the new run uses.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jmlr_jax.errors import InputError


class CheckpointError(InputError):
    """A checkpoint that cannot be restored (corrupt, incomplete, or from an incompatible run)."""


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.mngr = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        self.mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)))

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        """-> (state placed per abstract_state's shardings, data iterator state, meta)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        try:
            out = self.mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax/tensorstore raise many types for missing or damaged files
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.directory}: checkpoint {step} is corrupt or incompatible ({msg})") from None
        return out.state, out.data, out.meta

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)

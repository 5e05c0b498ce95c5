"""Orbax checkpoints: train state + grain iterator state + run metadata (index version, config) in one step.

Saves are atomic (orbax writes a temporary directory and renames it when complete), so a crash during a save
leaves the previous checkpoints intact. On accelerators they are asynchronous (written while training goes on);
on CPU synchronous by default, where the background writer would share the step's cores and the host copy of the
state it needs (the step donates its buffers) costs the state's size again: the quickstart's peak RSS 8.4 -> 6.8 GB,
its steps no slower. `close()` (or `wait()`) must run before the process exits, which the training loop does on
normal exit and on SIGTERM. Restores use abstract targets
carrying the current shardings, so a checkpoint restores onto whatever mesh the new run uses. A latest
checkpoint that cannot be read (damaged files) is moved aside with a warning and the newest readable one is
restored instead; when none can be read, the error names the latest and nothing is moved. Each host saves its
own data-iterator position, so a checkpoint of n processes resumes with n (another count is an error, not a
corrupt checkpoint: nothing is moved).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from jmlr_jax.errors import InputError
from jmlr_jax.workdir import is_remote


class CheckpointError(InputError):
    """A checkpoint that cannot be restored (corrupt, incomplete, or from an incompatible run)."""


class HostCountError(CheckpointError):
    """A readable checkpoint saved by another number of processes than the run resuming it."""


class _DataState:
    """One host's data-iterator state, written by grain's orbax handler as process_<i>-of-<n>.json: every host
    saves and restores its own (multi-host runs read different rows)."""

    def __init__(self, state: dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, raw: bytes) -> None:
        self.state = json.loads(raw)

    def start_prefetch(self) -> None:  # the handler calls it on restored iterators
        pass


def _drop_aborted_read_callbacks(previous):
    """An unraisablehook that drops the errors an aborted orbax restore leaves behind, passing on the rest.

    Orbax stops a restore at the first unreadable file and closes its event loop while other tensorstore reads
    are still in flight; each of those then calls `loop.call_soon_threadsafe` on the closed loop from a
    tensorstore thread, and every call would print an "Exception ignored" traceback (under pytest on Python
    3.11 two such threads formatting tracebacks at once crash the test session: CPython's AST state is shared).
    """
    def hook(u: Any) -> None:
        if u.object is None and isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            return
        previous(u)
    hook.previous = previous
    return hook


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool | None = None):
        """async_save: write in the background while training goes on; None: on accelerators, not on CPU."""
        self.directory = directory if is_remote(directory) else os.path.abspath(directory)  # orbax: gs:// too
        self.async_save = jax.default_backend() != "cpu" if async_save is None else async_save
        self.mngr = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=self.async_save))

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        self.mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(_DataState(data_state)),
            meta=ocp.args.JsonSave(meta)))

    def _check_hosts(self, step: int) -> None:
        """Each host saved its own data-iterator position (process_<i>-of-<n>.json): resuming needs n hosts."""
        names = [p.name for p in epath.Path(self.directory, str(step), "data").glob("process_*-of-*.json")]
        counts = {int(n.rsplit("-of-", 1)[1].split(".")[0]) for n in names}
        if len(counts) == 1 and (n := counts.pop()) != jax.process_count():
            raise HostCountError(f"{self.directory}: checkpoint {step} was saved by {n} processes (hosts), each with "
                                 f"its own data position; resume it with {n} (this run has {jax.process_count()})")

    def _restore(self, abstract_state: Any, step: int) -> tuple[Any, dict, dict]:
        self._check_hosts(step)
        quiet = _drop_aborted_read_callbacks(sys.unraisablehook)
        sys.unraisablehook = quiet  # installed before the reads start: the stray callbacks come within microseconds
        try:
            out = self.mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(_DataState()),
                meta=ocp.args.JsonRestore()))
            if sys.unraisablehook is quiet:  # a complete restore leaves no reads in flight
                sys.unraisablehook = quiet.previous
        except Exception as e:  # orbax/tensorstore raise many types for missing or damaged files; the hook stays
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.directory}: checkpoint {step} is corrupt or incompatible ({msg})") from None
        if out.meta is None or out.data is None or out.data.state is None:
            raise CheckpointError(f"{self.directory}: checkpoint {step} is incomplete (no metadata)")
        return out.state, out.data.state, out.meta

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        """-> (state placed per abstract_state's shardings, data iterator state, meta).

        step None: the newest readable checkpoint; newer unreadable ones are renamed `corrupt-<step>-<time>`
        (kept for inspection, out of the way of new saves) with a warning."""
        steps = sorted(self.mngr.all_steps(), reverse=True)  # one listing (a bucket on a pod)
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"{self.directory}: no checkpoint {step}; saved: {steps[::-1]}")
            return self._restore(abstract_state, step)
        if not steps:
            raise CheckpointError(f"{self.directory}: no checkpoint to restore")
        errors = []
        for s in steps:
            try:
                out = self._restore(abstract_state, s)
            except HostCountError:  # a readable checkpoint of another host count: never moved aside
                raise
            except CheckpointError as e:
                errors.append((s, e))
                continue
            for bad, e in errors:
                aside = os.path.join(self.directory, f"corrupt-{bad}-{int(time.time())}")
                epath.Path(self.directory, str(bad)).rename(aside)
                print(f"warning: {e}; moved to {aside}; resuming from checkpoint {s}", file=sys.stderr, flush=True)
            if errors:
                self.mngr.reload()
            return out
        raise errors[0][1]

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()

"""When a training loop stops early: SIGTERM (preemption), Ctrl-C, and the step every host stops at.

One process: SIGTERM, or a first Ctrl-C (SIGINT; also a notebook's interrupt), asks the loop to finish the step it
is on, save a checkpoint and exit; a second Ctrl-C interrupts at once (KeyboardInterrupt, nothing saved beyond the
last checkpoint). Several processes (a TPU pod's hosts): the scheduler's SIGTERM reaches the hosts at different
steps, and a host that stopped to save alone would leave the others waiting in the step's collectives. jax's
preemption service (started by `jax.distributed.initialize`, whose own SIGTERM handler it is) agrees on one step,
the next one the fastest host reaches, and every host stops there (`multihost_utils.reached_preemption_sync_point`,
as MaxText and orbax use it); no handler is installed then, since it would replace the service's.
"""
from __future__ import annotations

import signal
import threading
import warnings

import jax
from jax.experimental import multihost_utils


class StopSignals:
    """Context manager for one loop's run. `due(step)` is called once per step, with consecutive steps on every
    host, and says whether to save at that step and exit; `reason` says why."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, object] = {}
        self._sync = True  # ask jax's preemption service (several processes)

    def __enter__(self) -> StopSignals:
        # Python lets only the main thread set handlers (a loop run from another thread keeps the process's)
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._on_sigterm),
                              signal.SIGINT: signal.signal(signal.SIGINT, self._on_sigint)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _on_sigterm(self, *_) -> None:
        self.reason = self.reason or "SIGTERM"

    def _on_sigint(self, *_) -> None:
        if self.reason == "SIGINT":  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
              flush=True)
        self.reason = "SIGINT"

    def due(self, step: int) -> bool:
        """Whether the loop saves at `step` (the number of steps done) and exits."""
        if jax.process_count() > 1 and self._sync:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.reason = "preemption (SIGTERM on some host)"
            except RuntimeError as e:  # jax_enable_preemption_service=False: train on, as jax would
                warnings.warn(f"a SIGTERM will not save a checkpoint: {e}")
                self._sync = False
        return self.reason is not None

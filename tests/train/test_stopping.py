"""Stopping a run early on one process: SIGTERM and a first Ctrl-C ask for a checkpoint and an exit, a second Ctrl-C
interrupts at once, and the handlers are put back afterwards. (Several hosts agreeing on the step:
tests/test_multiprocess.py; the loop saving and resuming after a SIGTERM: train/test_loop.py.)"""
import os
import signal
import warnings

import pytest

from jmlr_jax.train import stopping
from jmlr_jax.train.stopping import StopSignals


def test_sigterm_and_ctrl_c_stop_after_the_step_and_a_second_ctrl_c_at_once(capsys):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        assert not signals.due(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.due(2) and signals.reason == "SIGTERM"
    with StopSignals() as signals:  # a new run starts without the old request
        assert not signals.due(1)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the step finishes and is saved
        assert signals.due(2) and signals.reason == "SIGINT"
        assert "Ctrl-C again to stop at once" in capsys.readouterr().out
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_hosts_without_jax_preemption_service_train_on_with_a_warning(monkeypatch):
    """Several processes with jax_enable_preemption_service=False: jax's sync point raises on every call."""
    monkeypatch.setattr(stopping.jax, "process_count", lambda: 2)

    def no_service(step):
        raise RuntimeError("Preemption sync manager has not been initialized.")

    monkeypatch.setattr(stopping.multihost_utils, "reached_preemption_sync_point", no_service)
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        assert signal.getsignal(signal.SIGTERM) == before  # on several hosts the handler is jax's
        with pytest.warns(UserWarning, match="a SIGTERM will not save a checkpoint"):
            assert not signals.due(1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not signals.due(2)  # warned once

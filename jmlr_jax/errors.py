"""Errors caused by a user's input (files, configs, data). Launchers print these as one line and exit 2.
A run stopped early on request (SIGTERM, Ctrl-C) is not an error but must not look finished: `StoppedEarly`."""


class InputError(ValueError):
    """Base class: bad weights, corpus, index, config or data file. The message names the file (and line)."""


def check_counts(obj, positive: tuple[str, ...] = (), nonnegative: tuple[str, ...] = ()) -> None:
    """ValueError naming each field of a config dataclass that should be an integer >= 1 (`positive`) or >= 0
    (`nonnegative`) and is not: such a value otherwise fails deep in a run (or runs wrongly) after minutes of
    loading models and encoding the corpus."""
    def ok(v, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    parts = [f"{', '.join(bad)}: each must be {what}"
             for bad, what in (([f"{k}={getattr(obj, k)!r}" for k in positive if not ok(getattr(obj, k), 1)],
                                "a positive integer"),
                               ([f"{k}={getattr(obj, k)!r}" for k in nonnegative if not ok(getattr(obj, k), 0)],
                                "an integer >= 0"))
             if bad]
    if parts:
        raise ValueError(f"{type(obj).__name__}: {'; '.join(parts)}")


class StoppedEarly(Exception):
    """A run saved a checkpoint and stopped before its last step (SIGTERM, Ctrl-C): launchers exit with the
    shell's code for that signal (130 for Ctrl-C, 143 for SIGTERM), so that `train && mark-done` does not mark an
    unfinished run done and a scheduler knows to start it again."""

    def __init__(self, reason: str, step: int):
        self.reason, self.step = reason, step
        super().__init__(f"stopped at step {step} ({reason}); its checkpoint is saved: run it again (the same "
                         "command) to resume")

    @property
    def exit_code(self) -> int:
        return 130 if self.reason == "SIGINT" else 143

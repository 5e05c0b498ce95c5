"""Errors caused by a user's input (files, configs, data). Launchers print these as one line and exit 2."""


class InputError(ValueError):
    """Base class: bad weights, corpus, index, config or data file. The message names the file (and line)."""

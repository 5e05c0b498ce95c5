"""Gin configuration for the launchers: `--gin_file=F` (repeatable) and `--gin.NAME=VALUE` (T5X style).

Files are looked up as given, then under the repository's `configs/`. Unknown configurables or
parameters, and malformed values, are one clear error rather than a traceback from inside gin.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Sequence

import gin

from jmlr_jax.errors import InputError, StoppedEarly

# A checkout's configs/; an installed wheel carries the same files as jmlr_jax/configs (pyproject.toml).
_CHECKOUT_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIG_DIR = _CHECKOUT_CONFIGS if os.path.isdir(_CHECKOUT_CONFIGS) else \
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
gin.add_config_file_search_path(CONFIG_DIR)  # `include 'model/x.gin'` works from any working directory
# gin also tries every include as a Python package resource and logs "Path not found" at ERROR level for
# each relative include it then finds under CONFIG_DIR; a real missing file is still our ConfigError.
logging.getLogger().addFilter(lambda r: not (r.module == "resource_reader" and r.getMessage().startswith("Path not")))


class ConfigError(InputError):
    """A bad --gin_file or --gin.X=Y."""


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """-> (gin files, gin bindings, remaining args). Accepts `--gin_file=F`, `--gin_file F` and `--gin.X=Y`."""
    files, bindings, rest = [], [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--gin_file" and i + 1 < len(args):
            files.append(args[i + 1])
            i += 1
        elif a.startswith("--gin_file="):
            files.append(a.split("=", 1)[1])
        elif a.startswith("--gin."):
            if "=" not in a:
                raise ConfigError(f"{a}: expected --gin.NAME=VALUE")
            name, value = a[len("--gin."):].split("=", 1)
            bindings.append(f"{name} = {value}")
        else:
            rest.append(a)
        i += 1
    return files, bindings, rest


def _resolve(path: str) -> str:
    """A gin file: the path itself, else under CONFIG_DIR (also written as configs/<name>, the repository's path,
    from another directory; the .gin suffix optional)."""
    inside = path.removeprefix("configs/")
    for candidate in (path, os.path.join(CONFIG_DIR, inside), os.path.join(CONFIG_DIR, inside + ".gin")):
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"gin file not found: {path} (also looked in {CONFIG_DIR})")


def parse(files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """Parses gin files then bindings (later wins), with `include` resolved against configs/."""
    paths = [_resolve(f) for f in files]
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(paths, list(bindings))
    except InputError:
        raise
    except Exception as e:  # gin raises ValueError, KeyError, SyntaxError, tokenize.TokenError, ...
        binding = _culprit(paths, bindings)
        where = f"--gin.{binding.replace(' = ', '=', 1)}: " if binding else ""
        raise ConfigError(f"gin: {where}{_gin_message(e, binding)}") from None


def _gin_message(e: Exception, binding: str) -> str:
    """gin's error on one line. A bare word (`num_steps=abc`) fails as Python's "malformed node or string on line
    1: <ast.Name object at 0x..>"; gin's second line names the token, so say that and how to quote a string."""
    lines = [ln.strip() for ln in str(e).strip().splitlines()]
    token = next((m for ln in lines if (m := re.match(r"Failed to parse token '(.*)' \((.*)\)$", ln))), None)
    if token is None or not lines[0].startswith("malformed node"):
        return lines[0] if lines else type(e).__name__
    if binding:
        name = binding.split("=", 1)[0].strip()
        return f"{token[1]!r} is not a value (a string needs quotes: --gin.{name}=\"'{token[1]}'\")"
    return f"{token[1]!r} is not a value ({token[2]}; a string needs quotes: '{token[1]}')"


def _culprit(paths: Sequence[str], bindings: Sequence[str]) -> str:
    """The first binding that fails, parsed after the files and the bindings before it; "" when the files
    themselves fail (gin's message names the file) or no binding does."""
    for i in range(len(bindings) + 1):
        gin.clear_config()
        try:
            gin.parse_config_files_and_bindings(paths, list(bindings[:i]))
        except Exception:  # noqa: BLE001 - any failure: the binding just added is the first that fails
            return bindings[i - 1] if i else ""
    return ""


def parse_argv(argv: Sequence[str], require_files: bool = True) -> list[str]:
    """Parses the gin arguments of a command line; returns the other arguments."""
    files, bindings, rest = split_gin_args(argv)
    if not files and require_files:
        raise ConfigError("at least one --gin_file is required (--help lists the ones that ship)")
    parse(files, bindings)
    return rest


def pop_flag(rest: list[str], name: str) -> str:
    """Removes `--name=V` or `--name V` from `rest`; returns V ("" when absent)."""
    for i, a in enumerate(rest):
        if a.startswith(f"--{name}="):
            del rest[i]
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(rest):
            value = rest[i + 1]
            del rest[i: i + 2]
            return value
    return ""


def save_operative_config(workdir: str, name: str = "operative_config.gin") -> str:
    """Writes the config the run actually used (call after the configurables have run)."""
    from jmlr_jax.workdir import write_text

    path = os.path.join(workdir, name)
    write_text(path, gin.operative_config_str())
    return path


def usage(doc: str, flags: Sequence[str] = ()) -> str:
    """A launcher's --help: its own doc, the gin arguments, its flags and the gin files that ship."""
    tops = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".gin"))
    dirs = sorted(d + "/" for d in os.listdir(CONFIG_DIR) if os.path.isdir(os.path.join(CONFIG_DIR, d)))
    lines = [doc.strip(), "", "arguments:",
             "  --gin_file=FILE    a gin file, as given or under the configs directory (repeatable; later files win)",
             "  --gin.NAME=VALUE   one binding, after the files: --gin.RunConfig.num_steps=100, "
             "--gin.DATA=\"'/path/to/data'\""]
    lines += [f"  --{f}=VALUE" for f in flags]
    lines += ["", f"gin files in {CONFIG_DIR}: {', '.join(tops)}; and under {' '.join(dirs)}"]
    return "\n".join(lines)


def one_line(e: BaseException) -> str:
    """An error's message on one line, without the "In call to configurable ..." context gin appends to errors
    raised inside a configurable."""
    lines = [ln.strip() for ln in str(e).strip().splitlines()]
    return " ".join(ln for ln in lines if not ln.startswith("In call to configurable"))


@contextlib.contextmanager
def exits_on_bad_input():
    """Bad input -> `error: <one line>` on stderr and exit 2: an InputError, a path that is missing, of the wrong
    kind (a directory for a file, a file for a directory) or not readable, or a ValueError /
    TypeError a gin configurable raised checking its bound values (named with its scope). Other errors are bugs:
    they propagate."""
    try:
        yield
    except FileExistsError as e:  # os.makedirs(d, exist_ok=True) on a file: a workdir or output bound to one
        print(f"error: {e.filename!r} is a file, not a directory: bind a directory there", file=sys.stderr)
        sys.exit(2)
    except (InputError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, TypeError) as e:
        where = re.search(r"In call to configurable '([^']+)'.*?(?:in scope '([^']+)')?$", str(e).strip())
        if where is None:
            raise
        print(f"error: {one_line(e)} ({'/'.join(filter(None, (where[2], where[1])))})", file=sys.stderr)
        sys.exit(2)


def run_main(main, argv: Sequence[str] | None = None, flags: Sequence[str] = (), doc: str = "") -> None:
    """Runs a launcher's main after parsing gin; `flags` (e.g. "workdir") are passed to main as keyword
    arguments, and with "workdir" among them no gin file is required. -h / --help prints `usage(doc)` (default:
    main's docstring) and returns. On a multi-host cluster (`parallel.maybe_initialize_distributed`) every host
    joins first. Bad input prints one line and exits 2 (`exits_on_bad_input`); a run stopped early (`StoppedEarly`)
    exits 130 (Ctrl-C) or 143 (SIGTERM)."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage(doc or main.__doc__ or "", flags))
        return
    try:
        with exits_on_bad_input():
            from jmlr_jax import parallel  # (jax: not imported for --help)

            parallel.maybe_initialize_distributed()  # every launcher joins a multi-host run (a no-op on one host)
            rest = parse_argv(argv, require_files="workdir" not in flags)
            values = {f: pop_flag(rest, f) for f in flags}
            if rest:
                raise ConfigError(f"unrecognised arguments: {' '.join(rest)}")
            main(**values)
    except StoppedEarly as e:  # saved and resumable, but not finished: not exit 0
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)

"""Every launcher command the project documents parses its gin config in a fresh interpreter.

Gin registers a configurable when its module is imported, and a test process has imported nearly every module by
the time it parses a config, so a gin file that binds a configurable its launcher never imports parses in the
suite and fails for a user ("No configurable matching ..."). Each command found in the README, docs, gin files,
shell scripts and docstrings (and each sweep's first job) therefore runs in its own interpreter, through the real
launcher script and `config.run_main`, with only the job replaced by a stub.
"""
import collections
import glob
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PARSED = "COMMAND-PARSED"
# Runs each command's launcher script as `python launch/x.py ...` would, with the job that run_main calls stubbed;
# one interpreter per launcher and set of gin files (what it imports before parsing), several bindings each.
CHILD = f"""
import json, runpy, sys
from jmlr_jax import config
real = config.run_main
config.run_main = lambda main, argv=None, flags=(), doc="": real(lambda **_: print({PARSED!r}), argv, flags, doc)
for cmd in json.loads(sys.argv[1]):
    sys.argv = cmd
    print(" ".join(cmd), flush=True)
    runpy.run_path(cmd[0], run_name="__main__")
"""


def _command_tail(line: str) -> str:
    """The arguments after a launcher's name, up to the end of the shell command (a backtick, `|`, `;`, `&`, `)`
    or ` #` outside quotes); optional-argument brackets dropped, and the quote that closes an enclosing string
    (`ssh --command="... python launch/x.py ..."`) too."""
    out, quote, opened, escaped = [], "", -1, False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote, opened = ch, len(out)
        elif ch in "`|;&)" or (ch == "#" and i and line[i - 1].isspace()):
            break
        elif ch in "[]":
            continue
        out.append(ch)
    if quote and opened == len(out) - 1:
        out.pop()
    return "".join(out)


def _loop_values(text: str) -> dict[str, list[str]]:
    """`for arm in a b c; do` in a shell script: arm -> [a, b, c]."""
    return {m[1]: m[2].split() for m in re.finditer(r"for (\w+) in ([^;\n]+); do", text)}


def documented_commands() -> list[tuple[str, ...]]:
    """(launcher script, args...) of every documented command with gin arguments, deduplicated."""
    sources = [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md")),
               *(p for p in glob.glob(os.path.join(ROOT, "launch", "*")) if os.path.isfile(p)),
               *glob.glob(os.path.join(ROOT, "configs", "**", "*.gin"), recursive=True),
               *glob.glob(os.path.join(ROOT, "jmlr_jax", "**", "*.py"), recursive=True)]
    found = []
    for path in sources:
        with open(path) as f:
            text = f.read().replace("\\\n", " ")
        loops = _loop_values(text)
        for line in text.splitlines():
            for m in re.finditer(r"launch/(\w+)\.py(?=[ \t]+-)", line):
                args = shlex.split(_command_tail(line[m.end():]))
                if not any(a.startswith("--gin") for a in args):
                    continue
                variants = [args]
                for var, values in loops.items():  # compare.sh's `--gin_file=compare/$arm.gin`
                    if any(f"${var}" in a for a in args):
                        variants = [[a.replace(f"${var}", v) for a in vargs] for vargs in variants for v in values]
                for args in variants:
                    found.append((f"launch/{m[1]}.py", *(a for a in args if a not in ("$@", "..."))))
    from jmlr_jax import sweeps

    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "sweeps", "*.py"))):
        job = sweeps.expand(sweeps.load_sweep(path), "/tmp/sweeps")[0]
        found.append(job.argv[1:])
    return sorted(set(found))


def test_documented_commands_are_found():
    """The scan finds what it must, so an empty or broken scan cannot pass the next test."""
    cmds = documented_commands()
    launchers = {c[0] for c in cmds}
    assert {"launch/tpu_train.py", "launch/build_index.py", "launch/search.py", "launch/evaluate.py",
            "launch/pipeline.py", "launch/pipeline_eval.py", "launch/compare_evidence.py"} <= launchers
    files = {a.split("=", 1)[1] for c in cmds for a in c if a.startswith("--gin_file=")}
    assert {"quickstart_cpu.gin", "compare/b_finetune.gin", "compare/c_rag.gin", "compare/d_jmlr.gin",
            "jmlr_llama2_7b.gin", "pipelines/qilin_med.gin", "retrieval/minilm_index.gin"} <= files
    assert not [c for c in cmds if any("$" in a for a in c if a.startswith("--gin_file"))]


def _parse_in_a_fresh_process(cmds: list[tuple[str, ...]]) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cmds)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    if p.returncode == 0 and p.stdout.count(PARSED) == len(cmds):
        return ""
    last = p.stdout.replace(PARSED + "\n", "").strip().splitlines()[-1:]
    return f"python {' '.join(last)}: exit {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}"


def test_every_documented_command_parses_in_a_fresh_process():
    groups = collections.defaultdict(list)
    for cmd in documented_commands():
        groups[cmd[0], *(a for a in cmd if a.startswith("--gin_file"))].append(cmd)
    with ThreadPoolExecutor(2) as pool:
        failures = [f for f in pool.map(_parse_in_a_fresh_process, groups.values()) if f]
    assert not failures, "\n".join(failures)

"""Wall time and peak memory of a command and all its child processes (the test suite's figures in the README).

    python bench/suite_resources.py -- python -m pytest -q

`/usr/bin/time -v` reports the largest single process only; with pytest-xdist workers (and the notebook tests'
kernels) the memory a machine needs is the sum over the process tree, sampled here every `--every` seconds.
"""
import argparse
import subprocess
import sys
import time

import psutil


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of `root` and every descendant still alive."""
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=float, default=0.5, help="sampling period in seconds")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command to measure after --")
    start = time.time()
    try:
        proc = subprocess.Popen(cmd)
    except OSError as e:
        ap.error(f"cannot run {cmd[0]!r}: {e.strerror}")
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(root))
        time.sleep(args.every)
    wall = time.time() - start
    print(f"\n| command | exit status | wall time | peak RSS of the process tree (sampled every {args.every} s) |")
    print("|---|---|---|---|")
    print(f"| `{' '.join(cmd)}` | {proc.returncode} | {int(wall // 60)} min {wall % 60:.0f} s | {peak / 2**30:.1f} GiB |")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

"""Launch a hyper-parameter sweep (XManager style: one experiment, one job per point; configs/sweeps/*.py).

    python launch/xm_launch.py --sweep=quickstart_4 --dry_run     # print the expanded jobs
    python launch/xm_launch.py --sweep=quickstart_4               # run them here, one after another
    python launch/xm_launch.py --sweep=quickstart_4 --collect     # table + plot of what has run so far

Jobs run in <root>/<sweep>/<k>-<values>; a rerun skips finished jobs and resumes an interrupted one. After
running (or with --collect) writes <root>/<sweep>/table.md and curves.png and prints the table.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jmlr_jax import config, sweeps  # noqa: E402
from jmlr_jax.errors import InputError  # noqa: E402
from jmlr_jax.workdir import is_remote  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", required=True, help="name under configs/sweeps/ or a path to a sweep .py file")
    ap.add_argument("--root", default="workdir/sweeps", help="jobs' workdirs go under <root>/<sweep name>/")
    ap.add_argument("--dry_run", action="store_true", help="print the jobs' commands; run nothing")
    ap.add_argument("--collect", action="store_true", help="only gather the table and plot")
    args = ap.parse_args(argv)
    with config.exits_on_bad_input():  # a missing or malformed sweep or binding, a cloud root: one line, exit 2
        if is_remote(args.root):  # os.path.abspath would make it a local directory named "gs:"
            raise InputError(f"--root={args.root}: the local executor runs the jobs on this machine and keeps "
                             "their workdirs in a local directory; give a local --root")
        s = sweeps.load_sweep(args.sweep)
        jobs = sweeps.expand(s, os.path.abspath(args.root))
        sweeps.check_configs(s, jobs)  # every job's bindings, before any job runs
    if args.dry_run:
        print(f"# sweep {s.name}: {len(jobs)} jobs")
        for job in jobs:
            print(("# done: " if sweeps.finished(job) else "") + job.command())
        return 0
    ran = [] if args.collect else sweeps.run_local(jobs)
    if any(r.get("interrupted") for r in ran):
        return 130  # like the job: stopped on request, resumable, not finished
    failed = [r for r in ran if r["returncode"] != 0]
    out = os.path.join(os.path.abspath(args.root), s.name)
    os.makedirs(out, exist_ok=True)
    table = sweeps.table_markdown(sweeps.collect(jobs))
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    print(table + f"\nwritten: {out}/table.md, {sweeps.plot(jobs, os.path.join(out, 'curves.png'))}")
    if failed:
        print(f"{len(failed)} job(s) failed: {[r['index'] for r in failed]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The evidence comparison (issue 17): python launch/compare_evidence.py --gin_file=compare/evidence.gin

Runs every part in order (data, sweep, a, frozen, then per seed e, d, c, and b once, then the chat parts),
skipping finished parts (their JSON is in results/comparison/), then rewrites the README section and the plots
from that JSON.
  --parts=d_s0        only these parts (comma-separated); one seed of JMLR with its evaluation: ~30 min here
  --parts=chat_e_s0   the base generator's answers in its chat template with e_s0's passages (~3 min)
  --report_only=1     only the tables and plots
  --check=DIR         rerun --parts into DIR (results and work files; the committed ones untouched) and compare
                      each with its committed JSON, e.g. --parts=data,d_s0 --check=workdir/check: exit 1 unless
                      every value reproduces; then the README's paired differences with the rerun parts in place
                      of the committed ones (whether each still reads the same: on another machine's rounding a
                      training can end elsewhere); the README and plots are not rewritten. With --report_only=1
                      the parts already rerun in DIR are compared, nothing runs
"""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("GLOG_minloglevel", "1")

from jmlr_jax import config  # noqa: E402
from jmlr_jax.compare import report  # noqa: E402
from jmlr_jax.compare.check import check_table, readings_table  # noqa: E402
from jmlr_jax.compare.evidence import Comparison, EvidenceConfig  # noqa: E402
from jmlr_jax.data.evidence import read_medquad_qa  # noqa: E402
from jmlr_jax.errors import InputError  # noqa: E402
from jmlr_jax.retrieval.corpus import resolve_path  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main(parts: str = "", report_only: str = "", readme: str = "", check: str = "") -> None:
    cfg = EvidenceConfig()
    if check:
        names = [p for p in parts.split(",") if p]
        if not names:
            raise InputError("--check reruns the parts named by --parts (e.g. --parts=data,d_s0) and compares them")
        rerun = dataclasses.replace(cfg, out_dir=os.path.join(check, "results"), work_dir=os.path.join(check, "work"))
        if not report_only:
            Comparison(rerun).run(names)
        rerun_results, committed = report.load(rerun.out_dir), report.load(cfg.out_dir)
        missing = [n for n in names if n not in rerun_results]
        if missing:
            raise InputError(f"--check: {', '.join(missing)} not rerun in {rerun.out_dir} (run without --report_only)")
        table, reproduced = check_table(rerun_results, committed, names)
        print(table + "\n\n" + readings_table(rerun_results, committed, names)[0])
        sys.exit(0 if reproduced else 1)
    if not report_only:
        Comparison(cfg).run([p for p in parts.split(",") if p] or None)
    results = report.load(cfg.out_dir)
    for path in report.plots(results, os.path.join(ROOT, "docs", "img")):
        print("wrote", path)
    medquad = resolve_path(cfg.medquad, cfg.data_dir) if cfg.data_dir else cfg.medquad
    focus_of = None
    if os.path.exists(medquad):  # the top-passage table needs each MedQuAD record's focus
        focus_of = {r.id: r.focus.lower() for r in read_medquad_qa(medquad, on_error="skip")[0]}
    md = report.markdown(results, focus_of)
    print(md)
    readme = readme or os.path.join(ROOT, "README.md")
    if readme != "none":
        report.write_readme(readme, md)


if __name__ == "__main__":
    config.run_main(main, flags=("parts", "report_only", "readme", "check"), doc=__doc__)

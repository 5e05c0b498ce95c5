"""Do committed comparison figures reproduce? Parts rerun into a scratch directory, compared with results/comparison.

    python launch/compare_evidence.py --gin_file=compare/evidence.gin --parts=data,d_s0 --check=workdir/check

Every per-question value of a rerun part is compared with the committed one (real numbers within a relative `tol`,
counts, ranks, passages fed and answers exactly), every other value of its JSON too, except wall times and the step
a training resumed from (how a run went, not results) and the data part's snapshot of the configuration (it names
the directories, and bindings added since).
Values the code records only since the part was committed are listed, not compared.

Another machine's fp32 rounding can send a training elsewhere (a discrete choice of the passage fed), so values
need not reproduce there; `readings_table` then says whether the README's paired differences still read the same
with the rerun part in place of the committed one.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from jmlr_jax.compare.evidence_setup import DIAGNOSTIC, SECOND_ROUND
from jmlr_jax.compare.report import MEASURES, PAIRS, pair_measures, paired, values

NOT_RESULTS = re.compile(r"config|seconds|\w+_seconds|encode_s|resumed_from_step")  # how a run went, not what


ADDED = " (not in the committed JSON)"  # a value the code records now and did not when the part was committed


def _close(a, b, tol: float):
    """Within `tol`, relative to the larger magnitude (absolute below 1); arrays elementwise."""
    return abs(a - b) <= tol * np.maximum(1.0, np.maximum(abs(a), abs(b)))


def differences(new: Any, old: Any, tol: float, path: str = "") -> list[str]:
    """Paths at which two JSON values differ (numbers beyond `tol`, see _close), NOT_RESULTS keys skipped; a key
    only the rerun has is listed with ADDED appended."""
    if isinstance(new, dict) and isinstance(old, dict):
        return [d for k in sorted(set(new) | set(old), key=str) if not NOT_RESULTS.fullmatch(str(k))
                for d in ([f"{path}/{k}{ADDED}"] if k not in old else
                          differences(new.get(k), old[k], tol, f"{path}/{k}"))]
    if isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            return [f"{path or '/'} (length {len(new)} vs {len(old)})"]
        return [d for i, (a, b) in enumerate(zip(new, old)) for d in differences(a, b, tol, f"{path}/{i}")]
    if all(isinstance(x, int) for x in (new, old)):  # counts, ranks, ids, bools: exact
        return [] if new == old else [path or "/"]
    numbers = all(isinstance(x, (int, float)) for x in (new, old))
    if numbers and (_close(new, old, tol) or (math.isnan(new) and math.isnan(old))):
        return []
    return [] if not numbers and new == old else [path or "/"]


def check_table(rerun: dict[str, dict], committed: dict[str, dict], names: Sequence[str],
                tol: float = 1e-4) -> tuple[str, bool]:
    """(markdown, reproduced): per part, each measure's committed and rerun means and the questions whose value
    moved beyond `tol` (relative); then what else in the part's JSON differs. `reproduced` is True when nothing
    committed differs (values the code records only since are listed, not compared)."""
    lines = ["| part | measure | committed | rerun | questions that differ | largest difference |",
             "|---|---|---|---|---|---|"]
    notes, ok = [], True
    for name in names:
        new, old = rerun[name], committed.get(name)
        if old is None:
            notes.append(f"{name}: nothing committed to compare with")
            ok = False
            continue
        for measure in MEASURES if "sets" in new and "sets" in old else ():
            a, b = values(new, measure), values(old, measure)
            if a is None and b is None:
                continue
            if a is None or b is None or a[0] != b[0]:
                lines.append(f"| {name} | {measure} | {'-' if b is None else len(b[0])} questions | "
                             f"{'-' if a is None else len(a[0])} questions | other questions | - |")
                ok = False
                continue
            gap = abs(a[1] - b[1])
            moved = int((~_close(a[1], b[1], tol)).sum())
            ok &= moved == 0
            lines.append(f"| {name} | {measure} | {b[1].mean():.4f} | {a[1].mean():.4f} | {moved} of {len(gap)} | "
                         f"{gap.max():.2g} |")
        found = differences(new, old, tol)
        rest = [d for d in found if not d.endswith(ADDED)]
        added = [d[: -len(ADDED)] for d in found if d.endswith(ADDED)]
        ok &= not rest
        notes.append(f"{name}: " + (f"{len(rest)} values differ, e.g. {', '.join(rest[:5])}" if rest else
                                    "every committed value reproduced (times aside)") +
                     (f"; recorded now, not in the committed JSON: {', '.join(added)}" if added else ""))
    return "\n".join(lines + [""] + notes + ["", f"reproduced: {'yes' if ok else 'no'} (tolerance {tol:g})"]), ok


def _reading(r: dict) -> str:
    """What an interval says: above 0, below 0, or across it."""
    return "above 0" if r["lo"] > 0 else "below 0" if r["hi"] < 0 else "across 0"


def _cell(r: dict | None) -> str:
    return "-" if r is None else f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"


def readings_table(rerun: dict[str, dict], committed: dict[str, dict], names: Sequence[str]) -> tuple[str, bool]:
    """(markdown, same): every paired difference of report.PAIRS that a rerun part takes part in (as the arm or
    its comparator), as the README computes it from the committed JSON and again with every rerun part in place of
    its committed one: the rerun seeds' differences and the pooled one, each with its 95% interval. `same` is True
    when every pooled interval reads the same (above 0, below 0 or across it)."""
    both = [n for n in names if n in rerun and n in committed]
    swapped = {**committed, **{n: rerun[n] for n in both}}
    seeds: dict[str, list[int | None]] = {}  # arm -> its rerun seeds (None: a seedless arm, paired with every seed)
    for n in both:
        m = re.fullmatch(r"(\w+?)_s(\d+)", n)
        seeds.setdefault(m[1] if m else n, []).append(int(m[2]) if m else None)
    derived_from = {**DIAGNOSTIC, **SECOND_ROUND}  # an arm made from another arm's trained weights

    def stale(arm: str) -> bool:  # made from a rerun part of another arm, and not rerun itself
        return any(s not in seeds.get(arm, []) for s in seeds.get(derived_from.get(arm, ""), []))

    lines = ["| difference | measure | rerun seeds: committed -> rerun | committed, pooled | "
             "rerun in its place, pooled | pooled reading |", "|---|---|---|---|---|---|"]
    differ, skipped, rows = [], [], 0
    for a, b, which in PAIRS:
        rerun_seeds = seeds.get(a, []) + seeds.get(b, [])
        if not rerun_seeds:
            continue
        if stale(a) or stale(b):
            skipped.append(f"{a} - {b}")
            continue
        for measure in pair_measures(which):
            old, new = paired(committed, a, b, measure), paired(swapped, a, b, measure)
            if old is None or new is None:
                continue
            rows += 1
            same = _reading(old["pooled"]) == _reading(new["pooled"])
            if not same:
                differ.append(f"{measure} {a} - {b}")
            per_seed = "; ".join(f"s{s}: {_cell(old['per_seed'].get(s))} -> {_cell(new['per_seed'].get(s))}"
                                 for s in sorted(set(rerun_seeds) - {None}) if s in old["per_seed"])
            lines.append(f"| {a} - {b} | {measure} | {per_seed or '-'} | {_cell(old['pooled'])} | "
                         f"{_cell(new['pooled'])} | {_reading(new['pooled'])}"
                         f"{'' if same else ' (committed: ' + _reading(old['pooled']) + ')'} |")
    note = (f"; not compared: {', '.join(skipped)} (one arm is made from the other's trained weights: rerun both)"
            if skipped else "")
    if not rows:
        return "no paired difference of the README involves these parts" + note, True
    summary = (f"pooled readings with the rerun in place: {rows - len(differ)} of {rows} the same"
               + (f"; different: {', '.join(differ)}" if differ else "") + note)
    return "\n".join(lines + ["", summary]), not differ

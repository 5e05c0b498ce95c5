"""Do committed comparison figures reproduce? Parts rerun into a scratch directory, compared with results/comparison.

    python launch/compare_evidence.py --gin_file=compare/evidence.gin --parts=data,d_s0 --check=workdir/check

Every per-question value of a rerun part is compared with the committed one (measures within `tol`, passages fed
and answers exactly), every other value of its JSON too, except wall times (the host's, not results) and the data
part's snapshot of the configuration (it names the directories, and bindings added since).
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

from jmlr_jax.compare.report import MEASURES, values

NOT_RESULTS = re.compile(r"config|seconds|\w+_seconds|encode_s")


def differences(new: Any, old: Any, tol: float, path: str = "") -> list[str]:
    """Paths at which two JSON values differ (numbers by more than `tol`, absolute); NOT_RESULTS keys skipped."""
    if isinstance(new, dict) and isinstance(old, dict):
        return [d for k in sorted(set(new) | set(old), key=str) if not NOT_RESULTS.fullmatch(str(k))
                for d in differences(new.get(k), old.get(k), tol, f"{path}/{k}")]
    if isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            return [f"{path or '/'} (length {len(new)} vs {len(old)})"]
        return [d for i, (a, b) in enumerate(zip(new, old)) for d in differences(a, b, tol, f"{path}/{i}")]
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (new, old))
    if numbers and (abs(new - old) <= tol or (math.isnan(new) and math.isnan(old))):
        return []
    return [] if not numbers and new == old else [path or "/"]


def check_table(rerun: dict[str, dict], committed: dict[str, dict], names: Sequence[str],
                tol: float = 1e-4) -> tuple[str, bool]:
    """(markdown, reproduced): per part, each measure's committed and rerun means and the questions whose value
    moved by more than `tol`; then what else in the part's JSON differs. `reproduced` is True when nothing does."""
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
            moved = int((gap > tol).sum())
            ok &= moved == 0
            lines.append(f"| {name} | {measure} | {b[1].mean():.4f} | {a[1].mean():.4f} | {moved} of {len(gap)} | "
                         f"{gap.max():.2g} |")
        rest = differences(new, old, tol)
        if rest:
            ok = False
            notes.append(f"{name}: {len(rest)} values differ, e.g. {', '.join(rest[:5])}")
        else:
            notes.append(f"{name}: every value equal (times aside)")
    return "\n".join(lines + [""] + notes + ["", f"reproduced: {'yes' if ok else 'no'} (tolerance {tol:g})"]), ok

"""Do committed comparison figures reproduce? Parts rerun into a scratch directory, compared with results/comparison.

    python launch/compare_evidence.py --gin_file=compare/evidence.gin --parts=data,d_s0 --check=workdir/check

Every per-question value of a rerun part is compared with the committed one (real numbers within a relative `tol`,
counts, ranks, passages fed and answers exactly), every other value of its JSON too, except wall times and the step
a training resumed from (how a run went, not results) and the data part's snapshot of the configuration (it names
the directories, and bindings added since).
Values the code records only since the part was committed are listed, not compared.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from jmlr_jax.compare.report import MEASURES, values

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

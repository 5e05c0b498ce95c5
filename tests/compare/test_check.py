"""jmlr_jax.compare.check: a rerun part against its committed JSON."""
import copy

import numpy as np

from jmlr_jax.compare.check import check_table, differences, readings_table
from tests.compare.test_report import _part


def test_identical_rerun_reproduces_and_times_and_config_do_not_count():
    committed = {"data": {"config": {"out_dir": "results/comparison"}, "passages": 5, "encode_s": 3.0, "seconds": 9},
                 "d_s0": dict(_part("d", 0, [1.0, 2.0, 3.0], [1, 2, None]), seconds=100.0, train_seconds=50.0)}
    rerun = copy.deepcopy(committed)
    rerun["data"].update(config={"out_dir": "workdir/check/results"}, encode_s=4.0, seconds=12)
    rerun["d_s0"].update(seconds=130.0, train_seconds=61.0, settings={"epochs": 1},  # recorded since: listed only
                         resumed_from_step=100)  # a rerun stopped and resumed: how it ran, not what it found
    table, ok = check_table(rerun, committed, ["data", "d_s0"])
    assert ok and "reproduced: yes" in table and "recorded now, not in the committed JSON: /settings" in table
    assert "resumed" not in table
    assert "| d_s0 | NLL heldout_focus | 2.0000 | 2.0000 | 0 of 3 | 0 |" in table
    assert "| d_s0 | recall@1 heldout_focus | 0.3333 | 0.3333 | 0 of 3 | 0 |" in table


def test_a_moved_value_is_found_and_named():
    committed = {"d_s0": _part("d", 0, [1.0, 2.0, 3.0], [1, 2, None])}
    rerun = copy.deepcopy(committed)
    rerun["d_s0"]["sets"]["heldout_focus"][1]["nll"] = 2.01
    pubmedqa = rerun["d_s0"]["sets"]["pubmedqa_test"]
    rerun["d_s0"]["sets"]["pubmedqa_test"] = [dict(r, output="other words") for r in pubmedqa]
    table, ok = check_table(rerun, committed, ["d_s0"])
    assert not ok and "reproduced: no" in table
    assert "| d_s0 | NLL heldout_focus | 2.0000 | 2.0033 | 1 of 3 | 0.01 |" in table
    assert "/sets/heldout_focus/1/nll" in table and "/sets/pubmedqa_test/0/output" in table
    assert differences(1.0, 1.00005, tol=1e-4) == [] and differences([1, 2], [1], tol=0) == ["/ (length 2 vs 1)"]
    assert differences(700050, 700000, tol=1e-4) == ["/"] and differences(31.55975, 31.55961, tol=1e-4) == []
    _, ok = check_table(rerun, {}, ["d_s0"])
    assert not ok  # nothing committed to compare with


def test_readings_say_whether_a_rerun_changes_what_the_paired_differences_conclude():
    rng = np.random.default_rng(0)
    c = [2.0 + rng.normal(0, 0.1, 20) for _ in range(2)]
    ranks = [1] * 20
    committed = {f"c_s{s}": _part("c", s, list(c[s]), ranks) for s in range(2)}
    d = [c[s] - 0.5 + rng.normal(0, 0.1, 20) for s in range(2)]
    committed.update({f"d_s{s}": _part("d", s, list(d[s]), ranks) for s in range(2)})
    committed["dg_s0"] = _part("dg", 0, list(c[0]), ranks)
    table, same = readings_table(copy.deepcopy(committed), committed, ["d_s0", "d_s1"])
    assert same and "12 of 12 the same" in table  # recall@1/7/30 and NLL on each of the 3 sets
    row = next(r for r in table.splitlines() if r.startswith("| d - c | NLL heldout_focus |"))
    assert row.endswith("| below 0 |")
    assert all(f"s{s}: {(d[s] - c[s]).mean():+.3f} [" in row for s in range(2))
    # seed 0 rerun on another machine ends with no gain: the pooled interval now crosses 0
    rerun = {"d_s0": _part("d", 0, list(c[0] + 0.5), ranks)}
    table, same = readings_table(rerun, committed, ["d_s0"])
    row = next(r for r in table.splitlines() if r.startswith("| d - c | NLL heldout_focus |"))
    assert not same and row.endswith("| across 0 (committed: below 0) |") and "-> +0.500" in row
    assert "different: NLL heldout_focus d - c" in table
    # dg is d's generator: a rerun d against the committed dg would pair two different trainings
    assert "not compared: d - dg" in table and "| d - dg |" not in table
    both = dict(rerun, dg_s0=_part("dg", 0, list(c[0] + 0.5), ranks))
    assert "| d - dg | NLL heldout_focus |" in readings_table(both, committed, ["d_s0", "dg_s0"])[0]
    assert readings_table({"data": {}}, {"data": {}}, ["data"]) == (
        "no paired difference of the README involves these parts", True)

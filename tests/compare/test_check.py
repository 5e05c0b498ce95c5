"""jmlr_jax.compare.check: a rerun part against its committed JSON."""
import copy

from jmlr_jax.compare.check import check_table, differences
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

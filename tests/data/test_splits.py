"""Splits and training-time option shuffling."""
from collections import Counter

from jmlr_jax.data.sources import QARecord
from jmlr_jax.data.splits import heldout_bucket, shuffle_options, split_medmcqa


def _rec(i: int, options=("alpha", "beta", "gamma", "delta"), answer_idx: int = 0) -> QARecord:
    return QARecord(id=f"q{i}", dataset="medmcqa", question=f"question {i}?", options=options, answer_idx=answer_idx)


def test_shuffle_keeps_the_answer_and_is_fixed_by_seed_and_id():
    recs = [_rec(i) for i in range(400)]
    out = [shuffle_options(r, seed=0) for r in recs]
    assert all(o.answer_text == "alpha" and sorted(o.options) == sorted(r.options) for o, r in zip(out, recs))
    assert out == [shuffle_options(r, seed=0) for r in recs]  # deterministic
    assert out != [shuffle_options(r, seed=1) for r in recs]
    # every gold answer was A; after shuffling each letter holds about a quarter of them
    counts = Counter(o.answer_letter for o in out)
    assert set(counts) == set("ABCD") and min(counts.values()) > 70, counts


def test_options_that_refer_to_other_options_keep_their_order():
    for opts in [("a", "b", "c", "All of the above"), ("x", "y", "Both A and B", "z"), ("x", "y", "z", "None of these"),
                 ("x", "y", "a & c", "z")]:
        r = _rec(1, options=opts, answer_idx=3)
        assert shuffle_options(r) == r
    unlabelled = _rec(2, answer_idx=-1)
    assert shuffle_options(unlabelled) == unlabelled


def test_heldout_split_is_by_id_not_position():
    recs = [_rec(i) for i in range(1000)]
    train, held = split_medmcqa(recs, 0.1)
    _, held_reversed = split_medmcqa(recs[::-1], 0.1)
    assert {r.id for r in held} == {r.id for r in held_reversed} == {r.id for r in recs if heldout_bucket(r.id, 0.1)}
    assert 50 < len(held) < 150 and not {r.id for r in train} & {r.id for r in held}

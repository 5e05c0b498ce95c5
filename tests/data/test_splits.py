"""Splits, training-time option shuffling, and training files a run names (decontaminated)."""
import json
import os
from collections import Counter

import pytest

from jmlr_jax.data.sources import LETTERS, QARecord, read_qa
from jmlr_jax.data.splits import DataConfig, heldout_bucket, shuffle_options, split_medmcqa, training_records
from jmlr_jax.errors import InputError
from tests.conftest import DATA_DIR, require


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


def _medqa_line(question, options, answer_idx=0, **extra):
    """A MedQA training record in the release's format (options A.., answer_idx a letter)."""
    opts = dict(zip(LETTERS, options))
    return json.dumps({"question": question, "options": opts, "answer": options[answer_idx],
                       "answer_idx": LETTERS[answer_idx], "meta_info": "step1", **extra}) + "\n"


def test_named_training_files_join_without_evaluation_questions(tmp_path, capsys):
    require(os.path.isdir(DATA_DIR), DATA_DIR)
    mmlu = read_qa("mmlu", os.path.join(DATA_DIR, "mmlu_med"))[0]
    held = split_medmcqa(read_qa("medmcqa", os.path.join(DATA_DIR, "medmcqa", "dev.jsonl")), 0.1)[1][0]
    medqa_dev = read_qa("medqa", os.path.join(DATA_DIR, "medqa", "us_4_options_dev.jsonl"))[0]
    a = tmp_path / "train_a.jsonl"
    a.write_text(_medqa_line("A 54-year-old man has crushing chest pain. Next step?", ["ECG", "CT", "MRI", "X-ray"])
                 + _medqa_line(mmlu.question.upper(), list(reversed(mmlu.options)))  # MMLU-Med: case, order differ
                 + _medqa_line(held.question, list(held.options))  # the MedMCQA held-out part
                 + _medqa_line(medqa_dev.question, list(medqa_dev.options))  # the MedQA file evaluated on
                 + _medqa_line(mmlu.question, ["other", "options", "entirely", "here"]))  # same stem, new options
    b = tmp_path / "train_b.jsonl"
    b.write_text(_medqa_line("Which vitamin deficiency causes scurvy?", ["A", "B12", "C", "D"], 2))
    cfg = DataConfig(data_dir=DATA_DIR, include_medmcqa=False, include_pubmedqa=False,
                     train_files=(("medqa", str(a)), ("medqa", str(b))),
                     exclude_files=(("medqa", "medqa/us_4_options_dev.jsonl"),))
    recs = training_records(cfg)
    # ids carry their file (both files number their records from 0); three of the five in train_a are left out
    assert sorted(r.id for r in recs) == ["train_a.jsonl:0", "train_a.jsonl:4", "train_b.jsonl:0"]
    assert "train_a.jsonl: 3 of 5 questions are evaluation questions; left out of training" in capsys.readouterr().err
    assert {r.answer_text for r in recs} >= {"ECG", "C"}
    # with the built-in sources: they come first as before, interleaved with the named files by id
    both = training_records(DataConfig(data_dir=DATA_DIR, train_files=(("medqa", str(b)),)))
    builtin = training_records(DataConfig(data_dir=DATA_DIR))
    assert len(both) == len(builtin) + 1 and set(both) - set(builtin) == {r for r in recs if r.id == "train_b.jsonl:0"}


def test_named_training_files_bad_input(tmp_path):
    require(os.path.isdir(DATA_DIR), DATA_DIR)
    off = dict(data_dir=DATA_DIR, include_medmcqa=False, include_pubmedqa=False)
    with pytest.raises(InputError, match="DataConfig.train_files: expected .kind, path. pairs"):
        training_records(DataConfig(**off, train_files=(("medqa",),)))
    with pytest.raises(InputError, match="unknown QA dataset 'medqaa'"):
        training_records(DataConfig(**off, train_files=(("medqaa", "x.jsonl"),)))
    with pytest.raises(FileNotFoundError, match="medqa data not found: .*nowhere.jsonl"):
        training_records(DataConfig(**off, train_files=(("medqa", str(tmp_path / "nowhere.jsonl")),)))
    with pytest.raises(InputError, match="no training questions"):
        training_records(DataConfig(**off))


def test_release_layouts_give_the_same_questions(tmp_path):
    """The built-in sets from other public layouts (MedMCQA's data.zip names, its Hugging Face copy's 0-based
    answers, PubMedQA's Hugging Face records, MMLU's folder of all subjects) equal those from ../shared/data."""
    require(os.path.isdir(DATA_DIR), DATA_DIR)
    from jmlr_jax.eval.harness import eval_sets

    (tmp_path / "mcq").mkdir()
    with open(os.path.join(DATA_DIR, "medmcqa", "dev.jsonl")) as src, open(tmp_path / "mcq" / "dev.json", "w") as dst:
        for line in src:
            rec = json.loads(line)
            dst.write(json.dumps(dict(rec, cop=rec["cop"] - 1)) + "\n")
    with open(os.path.join(DATA_DIR, "pubmedqa", "ori_pqal.json")) as f:
        release = json.load(f)
    with open(os.path.join(DATA_DIR, "pubmedqa", "test_ground_truth.json")) as f:
        test = set(json.load(f))
    hf = {k: {"pubid": int(k), "question": v["QUESTION"], "context": {"contexts": v["CONTEXTS"]},
              "long_answer": v["LONG_ANSWER"], "final_decision": v["final_decision"]} for k, v in release.items()}
    (tmp_path / "pqa").mkdir()
    for name, keep in (("train.jsonl", lambda k: k not in test), ("test.jsonl", lambda k: k in test)):
        (tmp_path / "pqa" / name).write_text("".join(json.dumps(r) + "\n" for k, r in hf.items() if keep(k)))
    (tmp_path / "pqa" / "all.json").write_text(json.dumps(list(hf.values())))
    mmlu = tmp_path / "mmlu" / "data" / "test"
    mmlu.mkdir(parents=True)
    for f in os.listdir(os.path.join(DATA_DIR, "mmlu_med")):
        (mmlu / f).write_text(open(os.path.join(DATA_DIR, "mmlu_med", f)).read())
    (mmlu / "astronomy_test.csv").write_text("Which planet?,a,b,c,d,A\n")
    other = DataConfig(data_dir=DATA_DIR, medmcqa_file=str(tmp_path / "mcq" / "dev.json"),
                       pubmedqa_file=str(tmp_path / "pqa" / "all.json"),
                       pubmedqa_test_file=str(tmp_path / "pqa" / "test.jsonl"), mmlu_dir=str(mmlu))
    names = ("mmlu_med", "pubmedqa_test", "medmcqa_heldout", "medmcqa_dev")
    got, want = eval_sets(other, names), eval_sets(DataConfig(data_dir=DATA_DIR), names)
    assert {k: len(v) for k, v in got.items()} == {"mmlu_med": 1089, "pubmedqa_test": 500, "medmcqa_heldout": 438,
                                                   "medmcqa_dev": 4183}
    assert got == want
    assert training_records(other) == training_records(DataConfig(data_dir=DATA_DIR))

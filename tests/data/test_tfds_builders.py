"""TFDS builders: manual_dir fixtures in each public format -> array_record -> the same QA records."""
import json

import pytest

from jmlr_jax.data.sources import MMLU_MED_SUBJECTS, DataError, read_qa
from jmlr_jax.data.tfds_builders import build, tfds_records


def write_fixtures(root):
    medqa = root / "medqa"
    medqa.mkdir(parents=True)
    rows = [{"question": "Q four?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "C", "id": "m1"},
            {"question": "Q five?", "options": {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}, "answer": "e",
             "id": "m2"}]
    (medqa / "phrases_no_exclude_test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mcq = root / "medmcqa"
    mcq.mkdir()
    rec = {"id": "x1", "question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2, "exp": "why",
           "subject_name": "Anatomy"}
    (mcq / "dev.json").write_text(json.dumps(rec) + "\n" + json.dumps(dict(rec, id="x2", cop=4)) + "\n")
    (mcq / "test.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "cop"} | {"id": "t1"}) + "\n")
    pq = root / "pubmedqa"
    pq.mkdir()
    data = {str(i): {"QUESTION": f"Does {i} work?", "CONTEXTS": ["Some", "abstract."], "LONG_ANSWER": "It does.",
                     "final_decision": ["yes", "no", "maybe"][i % 3]} for i in range(4)}
    (pq / "ori_pqal.json").write_text(json.dumps(data))
    (pq / "test_ground_truth.json").write_text(json.dumps({"1": "no", "3": "yes"}))
    mm = root / "mmlu_med"
    mm.mkdir()
    (mm / "anatomy_test.csv").write_text('"Which bone, of the arm?",Femur,Humerus,Tibia,Fibula,B\n')
    (mm / "college_medicine_test.csv").write_text("Q?,a,b,c,d,A\nQ2?,a,b,c,d,D\n")
    (mm / "astronomy_test.csv").write_text("Which planet is red?,Mars,Venus,Earth,Moon,A\n")  # not medical: left out
    return root


def test_builders_round_trip_to_the_readers_records(tmp_path):
    src = write_fixtures(tmp_path / "manual")
    data_dir = str(tmp_path / "tfds")
    build("medqa", str(src / "medqa"), data_dir)
    assert tfds_records("medqa", "test", data_dir) == sorted(
        read_qa("medqa", str(src / "medqa" / "phrases_no_exclude_test.jsonl")), key=lambda r: r.id)
    b = build("medmcqa", str(src / "medmcqa"), data_dir)
    assert set(b.info.splits) == {"validation", "test"}
    val = tfds_records("medmcqa", "validation", data_dir)
    assert val == read_qa("medmcqa", str(src / "medmcqa" / "dev.json"))
    assert val[0].rationale == "why" and val[0].answer_letter == "B"
    assert [r.answer_idx for r in tfds_records("medmcqa", "test", data_dir)] == [-1]
    build("pubmedqa", str(src / "pubmedqa"), data_dir)
    test = tfds_records("pubmedqa", "test", data_dir)
    assert [r.id for r in test] == ["1", "3"] and test[0].context == "Some abstract." and test[0].answer_text == "no"
    assert [r.id for r in tfds_records("pubmedqa", "train", data_dir)] == ["0", "2"]
    build("mmlu_med", str(src / "mmlu_med"), data_dir)
    mmlu = tfds_records("mmlu_med", "test", data_dir)
    medical = read_qa("mmlu", str(src / "mmlu_med"), subjects=MMLU_MED_SUBJECTS)
    assert sorted(mmlu, key=lambda r: r.id) == sorted(medical, key=lambda r: r.id)
    assert {r.subject for r in mmlu} == {"anatomy", "college_medicine"}
    assert build("mmlu_med", str(src / "mmlu_med"), data_dir).info.splits["test"].num_examples == 3  # reused


def test_builder_errors(tmp_path):
    src = write_fixtures(tmp_path / "manual")
    with pytest.raises(DataError, match="no PubMedQA files"):
        build("pubmedqa", str(src / "medqa"), str(tmp_path / "tfds"))
    with pytest.raises(DataError, match="unknown dataset"):
        build("medqa_tw", str(src / "medqa"), str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        tfds_records("medqa", "test", str(tmp_path / "empty"))
    (src / "medmcqa" / "dev.json").write_text('{"id": "x", "question": "Q?", "opa": "a"}\n')
    with pytest.raises(DataError, match=r"dev.json:1: options opa..opd"):
        build("medmcqa", str(src / "medmcqa"), str(tmp_path / "tfds2"))


def test_builders_read_the_hugging_face_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    src = write_fixtures(tmp_path / "manual")
    hf = tmp_path / "hf"
    for name in ("medqa", "medmcqa", "pubmedqa", "mmlu"):
        (hf / name).mkdir(parents=True)

    def write(path, rows):  # one schema for all rows, as a dataset's Parquet has (missing fields null)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), str(path))

    medqa = [json.loads(line) for line in (src / "medqa" / "phrases_no_exclude_test.jsonl").read_text().splitlines()]
    write(hf / "medqa" / "validation-00000-of-00001.parquet", medqa)
    build("medqa", str(hf / "medqa"), str(tmp_path / "tfds_medqa"))
    assert tfds_records("medqa", "validation", str(tmp_path / "tfds_medqa")) == sorted(
        read_qa("medqa", str(src / "medqa" / "phrases_no_exclude_test.jsonl")), key=lambda r: r.id)
    mcq = [json.loads(line) for line in (src / "medmcqa" / "dev.json").read_text().splitlines()]
    write(hf / "medmcqa" / "validation-00000-of-00001.parquet", [dict(r, cop=r["cop"] - 1) for r in mcq])
    data_dir = str(tmp_path / "tfds")
    build("medmcqa", str(hf / "medmcqa"), data_dir)
    assert tfds_records("medmcqa", "validation", data_dir) == read_qa("medmcqa", str(src / "medmcqa" / "dev.json"))
    release = json.loads((src / "pubmedqa" / "ori_pqal.json").read_text())
    write(hf / "pubmedqa" / "train-00000-of-00001.parquet",
          [{"pubid": int(k), "question": v["QUESTION"], "context": {"contexts": v["CONTEXTS"]},
            "long_answer": v["LONG_ANSWER"], "final_decision": v["final_decision"]} for k, v in release.items()])
    (hf / "pubmedqa" / "test_ground_truth.json").write_text((src / "pubmedqa" / "test_ground_truth.json").read_text())
    build("pubmedqa", str(hf / "pubmedqa"), data_dir)
    assert [r.id for r in tfds_records("pubmedqa", "test", data_dir)] == ["1", "3"]
    csv_recs = read_qa("mmlu", str(src / "mmlu_med"))  # anatomy, astronomy, college_medicine
    write(hf / "mmlu" / "test-00000-of-00001.parquet",
          [{"question": r.question, "subject": r.subject, "choices": list(r.options), "answer": r.answer_idx}
           for r in csv_recs])
    build("mmlu_med", str(hf / "mmlu"), str(tmp_path / "tfds_hf"))
    build("mmlu_med", str(src / "mmlu_med"), str(tmp_path / "tfds_csv"))
    from_hf = tfds_records("mmlu_med", "test", str(tmp_path / "tfds_hf"))
    assert from_hf == tfds_records("mmlu_med", "test", str(tmp_path / "tfds_csv"))
    assert {r.subject for r in from_hf} == {"anatomy", "college_medicine"}  # astronomy left out per record

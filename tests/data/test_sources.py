"""QA readers on small fixtures of each public format, and on the real shared files."""
import json
import pathlib
import os

import pytest

from jmlr_jax.data import DataError, read_qa
from tests.conftest import DATA_DIR, require


def _lines(path, recs):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in recs) + "\n")
    return str(path)


def test_medqa_four_and_five_options(tmp_path):
    p = _lines(tmp_path / "test.jsonl", [
        {"question": "A 23-year-old ... Which drug?", "answer": "Nitrofurantoin",
         "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline", "D": "Nitrofurantoin"},
         "meta_info": "step2&3", "answer_idx": "D"},
        {"question": "Five options?", "answer": "E text",
         "options": {"A": "a", "B": "b", "C": "c", "D": "d", "E": "E text"}},
    ])
    recs = read_qa("medqa", p)
    assert recs[0].answer_letter == "D" and recs[0].answer_text == "Nitrofurantoin" and recs[0].subject == "step2&3"
    assert len(recs[1].options) == 5 and recs[1].answer_letter == "E"
    bom = tmp_path / "bom.jsonl"  # a byte-order mark before the first record (files saved on Windows)
    bom.write_text("\ufeff" + pathlib.Path(p).read_text(), encoding="utf-8")
    assert read_qa("medqa", str(bom)) == recs


@pytest.mark.parametrize("bad,msg", [
    ({"question": "q", "options": {"A": "a", "C": "c"}, "answer_idx": "A"}, "lettered A, B"),
    ({"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "C"}, "answer_idx 'C' is not one"),
    ({"question": "q", "options": {"A": "a", "B": "b"}, "answer": "zzz"}, "matches no option"),
    ({"question": "", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}, "empty or missing question"),
    ("{not json", "malformed JSON"),
])
def test_medqa_errors_name_file_and_line(tmp_path, bad, msg):
    good = {"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}
    p = _lines(tmp_path / "m.jsonl", [good, bad])
    with pytest.raises(DataError, match=rf"m.jsonl:2: .*{msg}"):
        read_qa("medqa", p)


def test_medmcqa_cop_bases_and_unlabelled(tmp_path):
    row = {"id": "x1", "question": "Drug of choice?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 3,
           "exp": "Because.", "subject_name": "Pharmacology"}
    p = _lines(tmp_path / "dev.jsonl", [row])
    r = read_qa("medmcqa", p)[0]
    assert r.answer_letter == "C" and r.rationale == "Because." and r.subject == "Pharmacology"
    assert read_qa("medmcqa", p, cop_base=0)[0].answer_letter == "D"
    p = _lines(tmp_path / "bad.jsonl", [dict(row, cop=5)])
    with pytest.raises(DataError, match=r"bad.jsonl:1: cop=5 out of range"):
        read_qa("medmcqa", p)
    # the base is the file's: a 0 makes it the Hugging Face copy's (0-based), a 4 the release's; both is an error
    letters = lambda rows, **kw: [r.answer_letter for r in read_qa("medmcqa", _lines(tmp_path / "b.jsonl", [
        dict(row, cop=c) for c in rows]), **kw)]
    assert letters([2, 0, 3]) == ["C", "A", "D"] and letters([2, 4, 1]) == ["B", "D", "A"]
    assert letters([2, 3]) == ["B", "C"] and letters([2, 3], cop_base=0) == ["C", "D"]  # JSON lines: the release's
    with pytest.raises(DataError, match=r"b.jsonl:3: cop=4 in a file whose .*b.jsonl:2 has cop=0"):
        letters([1, 0, 4])
    with pytest.raises(DataError, match=r"b.jsonl:2: cop=0 out of range for 1-based"):
        letters([2, 0], cop_base=1)
    p = _lines(tmp_path / "test.jsonl", [dict(row, cop=-1)])
    with pytest.raises(DataError, match="allow_unlabelled"):
        read_qa("medmcqa", p)
    assert read_qa("medmcqa", p, allow_unlabelled=True)[0].answer_idx == -1


def test_pubmedqa_and_mmlu(tmp_path):
    p = tmp_path / "pq.json"
    p.write_text(json.dumps({"123": {"QUESTION": "Does X help?", "CONTEXTS": ["Bg.", "Res."], "LONG_ANSWER": "Yes.",
                                     "final_decision": "maybe"}}))
    r = read_qa("pubmedqa", str(p))[0]
    assert r.options == ("yes", "no", "maybe") and r.answer_letter == "C" and r.context == "Bg. Res."
    p.write_text(json.dumps({"9": {"QUESTION": "q", "CONTEXTS": [], "final_decision": "perhaps"}}))
    with pytest.raises(DataError, match="record 9: final_decision 'perhaps'"):
        read_qa("pubmedqa", str(p))
    d = tmp_path / "mmlu"
    d.mkdir()
    (d / "anatomy_test.csv").write_text('"Which bone, ""the femur""?",a,b,c,d,B\n')
    (d / "virology_test.csv").write_text("q,a,b,c,d\n")
    with pytest.raises(DataError, match=r"virology_test.csv:1: expected 6 columns"):
        read_qa("mmlu", str(d))
    os.remove(d / "virology_test.csv")
    r = read_qa("mmlu", str(d))[0]
    assert r.subject == "anatomy" and r.question == 'Which bone, "the femur"?' and r.answer_letter == "B"
    with pytest.raises(FileNotFoundError):
        read_qa("mmlu", str(tmp_path / "none"))


def test_real_shared_files():
    require(os.path.isdir(DATA_DIR), DATA_DIR)
    mmlu = read_qa("mmlu", os.path.join(DATA_DIR, "mmlu_med"))
    assert len(mmlu) == 1089 and len({r.subject for r in mmlu}) == 6
    mcq = read_qa("medmcqa", os.path.join(DATA_DIR, "medmcqa", "dev.jsonl"))
    assert len(mcq) == 4183 and sum(bool(r.rationale) for r in mcq) == 2206
    pq = read_qa("pubmedqa", os.path.join(DATA_DIR, "pubmedqa", "ori_pqal.json"))
    assert len(pq) == 1000 and all(r.context for r in pq)


def _hf_pubmedqa(pmid: str, rec: dict) -> dict:
    """A release record in the Hugging Face copy's schema (pubmed_qa / pqa_labeled)."""
    return {"pubid": int(pmid), "question": rec["QUESTION"], "long_answer": rec["LONG_ANSWER"],
            "final_decision": rec["final_decision"],
            "context": {"contexts": rec["CONTEXTS"], "labels": rec.get("LABELS", []), "meshes": rec.get("MESHES", [])}}


def test_pubmedqa_hugging_face_copy_reads_as_the_release(tmp_path):
    release = {"123": {"QUESTION": "Does X help?", "CONTEXTS": ["Bg.", "Res."], "LONG_ANSWER": "It may.",
                       "final_decision": "maybe", "LABELS": ["B", "R"]},
               "456": {"QUESTION": "Is Y safe?", "CONTEXTS": ["Trial."], "LONG_ANSWER": "Yes.",
                       "final_decision": "yes"}}
    (tmp_path / "ori.json").write_text(json.dumps(release))
    want = read_qa("pubmedqa", str(tmp_path / "ori.json"))
    hf = [_hf_pubmedqa(k, v) for k, v in release.items()]
    assert read_qa("pubmedqa", _lines(tmp_path / "hf.jsonl", hf)) == want  # JSON lines
    (tmp_path / "hf_list.json").write_text(json.dumps(hf))
    assert read_qa("pubmedqa", str(tmp_path / "hf_list.json")) == want  # one JSON list
    # test ids from either the release's test_ground_truth.json or the copy's test records
    from jmlr_jax.data.sources import pubmedqa_ids
    (tmp_path / "gt.json").write_text(json.dumps({"456": "yes"}))
    assert pubmedqa_ids(str(tmp_path / "gt.json")) == pubmedqa_ids(_lines(tmp_path / "t.jsonl", hf[1:])) == {"456"}
    # bad records of the copy: file and line
    bad = _lines(tmp_path / "bad.jsonl", [hf[0], dict(hf[1], pubid=None)])
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected a PubMedQA record with a pubid"):
        read_qa("pubmedqa", bad)
    bad = _lines(tmp_path / "bad2.jsonl", [hf[0], "{oops"])
    with pytest.raises(DataError, match=r"bad2.jsonl:2: malformed JSON"):
        read_qa("pubmedqa", bad)
    bad = _lines(tmp_path / "bad3.jsonl", [dict(hf[0], final_decision="")])
    with pytest.raises(DataError, match=r"bad3.jsonl:1: final_decision '' not in yes/no/maybe"):
        read_qa("pubmedqa", bad)


def test_pubmedqa_corpus_reads_the_copy_and_skips_bad_lines(tmp_path):
    from jmlr_jax.retrieval.corpus import CorpusError, read_pubmedqa
    rows = [{"pubid": 1, "question": "q", "context": {"contexts": ["Abstract one."]}},  # unlabelled (PQA-U): fine
            "{oops", {"pubid": 2, "question": "q", "context": {"contexts": ["Abstract two."]}}]
    out = list(read_pubmedqa(_lines(tmp_path / "u.jsonl", rows), exclude_ids=["2"]))
    assert [d.id for d in out if not isinstance(d, Exception)] == ["pmid-1"]
    errors = [str(e) for e in out if isinstance(e, CorpusError)]
    assert errors == [f"{tmp_path}/u.jsonl:2: malformed JSON (Expecting property name enclosed in double quotes)"]


def test_mmlu_directory_of_every_subject_keeps_the_medical_ones(tmp_path):
    from jmlr_jax.data.sources import MMLU_MED_SUBJECTS
    for subject in ("anatomy", "virology", "professional_medicine", "high_school_physics"):
        (tmp_path / f"{subject}_test.csv").write_text(f"{subject} question?,a,b,c,d,A\n")
    recs = read_qa("mmlu", str(tmp_path), subjects=MMLU_MED_SUBJECTS)
    assert [r.subject for r in recs] == ["anatomy", "professional_medicine"]
    assert len(read_qa("mmlu", str(tmp_path))) == 4  # no subjects named: every file
    with pytest.raises(DataError, match=r"none of its 4 MMLU files is a subject of \('nephrology',\)"):
        read_qa("mmlu", str(tmp_path), subjects=("nephrology",))


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def test_hugging_face_parquet_copies_read_as_the_release(tmp_path):
    mcq = {"id": "x1", "question": "Drug of choice?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 3,
           "exp": "Because.", "subject_name": "Pharmacology", "choice_type": "single"}
    want = read_qa("medmcqa", _lines(tmp_path / "dev.jsonl", [mcq, dict(mcq, id="x2", cop=1, exp=None)]))
    hf = _parquet(tmp_path / "validation-00000-of-00001.parquet",
                  [dict(mcq, cop=2), dict(mcq, id="x2", cop=0, exp=None)])  # the copy's cop is 0-based
    assert read_qa("medmcqa", hf) == want
    # a Parquet file whose answers say nothing of their base (no A, no D) is the hub's copy: 0-based
    hf = _parquet(tmp_path / "small.parquet", [dict(mcq, cop=2)])
    assert read_qa("medmcqa", hf)[0].answer_letter == "C"
    mixed = _parquet(tmp_path / "mixed.parquet", [dict(mcq, cop=c) for c in (1, 0, 2, 4)])  # base read from `cop`
    with pytest.raises(DataError, match=r"mixed.parquet: row 4: cop=4 in a file whose .*mixed.parquet: row 2 has"):
        read_qa("medmcqa", mixed)
    # MedQA: a Parquet struct of 4- and 5-option rows has E = null in the 4-option ones
    rows = [{"question": "Four?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "b",
             "answer_idx": "B"},
            {"question": "Five?", "options": {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}, "answer": "e",
             "answer_idx": None}]
    assert read_qa("medqa", _parquet(tmp_path / "mq.parquet", rows)) == read_qa(
        "medqa", _lines(tmp_path / "mq.jsonl", rows))
    release = {"123": {"QUESTION": "Does X help?", "CONTEXTS": ["Bg.", "Res."], "LONG_ANSWER": "It may.",
                       "final_decision": "maybe"}}
    (tmp_path / "ori.json").write_text(json.dumps(release))
    hf = _parquet(tmp_path / "pqa_labeled.parquet", [_hf_pubmedqa(k, v) for k, v in release.items()])
    assert read_qa("pubmedqa", hf) == read_qa("pubmedqa", str(tmp_path / "ori.json"))
    # the "-hf" copies (sent1, ending0.., 0-based label): the same records
    endings = [{"id": str(i), "sent1": r["question"], "sent2": "", "label": "ABCDE".index(r["answer_idx"] or "E"),
                **{f"ending{j}": t for j, t in enumerate(r["options"].values())}} for i, r in enumerate(rows)]
    assert read_qa("medqa", _parquet(tmp_path / "hf.parquet", endings[:1])) == read_qa(
        "medqa", _lines(tmp_path / "mq1.jsonl", [dict(rows[0], id="0")]))
    assert read_qa("medqa", _lines(tmp_path / "hf.jsonl", endings))[1].answer_letter == "E"
    with pytest.raises(DataError, match=r"hf.jsonl:2: label 5 is not the 0-based index of one of its 5 endings"):
        read_qa("medqa", _lines(tmp_path / "hf.jsonl", [endings[0], dict(endings[1], label=5)]))
    with pytest.raises(DataError, match=r"mq.parquet: row 2: answer_idx 'F' is not one of the options"):
        read_qa("medqa", _parquet(tmp_path / "mq.parquet", [rows[0], dict(rows[1], answer_idx="F")]))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"broken.parquet: not a readable Parquet file"):
        read_qa("medmcqa", str(tmp_path / "broken.parquet"))


def test_mmlu_hugging_face_records_give_the_csv_records(tmp_path):
    d = tmp_path / "csv"
    d.mkdir()
    (d / "anatomy_test.csv").write_text("Bone?,Femur,Humerus,Tibia,Fibula,B\nMuscle?,a,b,c,d,D\n")
    (d / "astronomy_test.csv").write_text("Red planet?,Mars,Venus,Earth,Moon,A\n")
    csv_recs = read_qa("mmlu", str(d))
    hf = [{"question": r.question, "subject": r.subject, "choices": list(r.options), "answer": r.answer_idx}
          for r in csv_recs]
    letters = [dict(r, answer="ABCD"[r["answer"]]) for r in hf]  # some copies keep the letter
    named = [{"input": r["question"], **dict(zip("ABCD", r["choices"])), "target": "ABCD"[r["answer"]],
              "subject": r["subject"]} for r in hf]  # CSV-derived copies' column names
    for path in (_parquet(tmp_path / "test-00000-of-00001.parquet", hf), _lines(tmp_path / "all.jsonl", letters),
                 _lines(tmp_path / "named.jsonl", named)):
        assert read_qa("mmlu", path) == csv_recs  # same ids: counted per subject
        assert [r.id for r in read_qa("mmlu", path, subjects=("anatomy",))] == ["anatomy-1", "anatomy-2"]
        with pytest.raises(DataError, match=r"none of its MMLU records is of a subject in \('virology',\)"):
            read_qa("mmlu", path, subjects=("virology",))
    headed = tmp_path / "headed"  # a CSV export with a header row: the same records and ids
    headed.mkdir()
    (headed / "anatomy_test.csv").write_text("question,A,B,C,D,answer\n" + (d / "anatomy_test.csv").read_text())
    assert read_qa("mmlu", str(headed)) == csv_recs[:2]
    (headed / "anatomy_test.csv").write_text("\ufeff" + (d / "anatomy_test.csv").read_text(), encoding="utf-8")
    assert read_qa("mmlu", str(headed)) == csv_recs[:2]  # a spreadsheet's byte-order mark is not question text
    with pytest.raises(DataError, match=r"anatomy_test.csv:1: answer 'Answer key' is not one of A, B, C, D"):
        (headed / "anatomy_test.csv").write_text("question,A,B,C,D,Answer key\n")
        read_qa("mmlu", str(headed))
    with pytest.raises(DataError, match=r"bad.jsonl:2: choices must be a list of 4 non-empty texts"):
        read_qa("mmlu", _lines(tmp_path / "bad.jsonl", [hf[0], dict(hf[1], choices=["a", "b"])]))
    with pytest.raises(DataError, match=r"bad.parquet: row 1: answer 4 is not 0-3"):
        read_qa("mmlu", _parquet(tmp_path / "bad.parquet", [dict(hf[0], answer=4)]))

"""MedQuAD: the public XML release and a JSONL copy give the same records to every consumer; bad input."""
import dataclasses
import json

import pytest

from jmlr_jax.data import evidence, lm_data
from jmlr_jax.data.medquad import MedQuADPair, clean_answer, iter_medquad
from jmlr_jax.data.sources import DataError
from jmlr_jax.retrieval.corpus import CorpusError, load_corpus

# (collection, file, document attributes, focus, [(qid, qtype, question, answer as the release indents it)])
RELEASE = [
    ("1_CancerGov_QA", "0000001_1.xml", 'id="0000001_1" source="CancerGov" url="https://www.cancer.gov/a"', "Adult ALL",
     [("0000001_1-1", "information", "What is (are) Adult ALL ?",
       "Key Points\n                    - ALL is a cancer.     - It affects the marrow.\n                \n"
       "                    Adult ALL is a cancer of the blood and bone marrow that gets worse quickly."),
      ("0000001_1-2", "symptoms", "What are the symptoms of Adult ALL ?", "Fever, tiredness and easy bruising.")]),
    ("2_GARD_QA", "0000002.xml", 'id="0000002" source="GARD" url="https://rarediseases.info.nih.gov/b"', "",
     [("0000002-1", "information", "What is (are) Rare syndrome ?", "A rare syndrome of the skin.")]),
    ("11_MPlusDrugs_QA", "0000001.xml", 'id="0000001" source="MPlusDrugs" url="https://medlineplus.gov/c"', "Abacavir",
     [("0000001-1", "usage", "How should Abacavir be used ?", "")]),  # answer removed for copyright
    ("3_GHR_QA", "0000003.xml", 'id="0000003" source="GHR" url="https://ghr.nlm.nih.gov/d"', "Gene disorder",
     [("0000003-1", "genetic changes", "What are the genetic changes related to Gene disorder ?",
       "\n\t\t\tMutations in the ABC1 gene cause it.\n\t\t")]),
]


def write_release(root):
    for coll, name, attrs, focus, pairs in RELEASE:
        (root / coll).mkdir(parents=True, exist_ok=True)
        qa = "".join(f'<QAPair pid="{i + 1}"><Question qid="{qid}" qtype="{qt}">{q}</Question><Answer>{a}</Answer>'
                     "</QAPair>" for i, (qid, qt, q, a) in enumerate(pairs))
        (root / coll / name).write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<Document {attrs}>\n'
                                        f"<Focus>{focus}</Focus>\n<QAPairs>{qa}</QAPairs>\n</Document>\n")
    return str(root)


def write_jsonl_copy(path):
    """The answered pairs in path order, answers cleaned: how ../shared/data's copy was made from the release."""
    rows = []
    for coll, name, attrs, focus, pairs in sorted(RELEASE, key=lambda r: f"{r[0]}/{r[1]}"):
        doc = dict(kv.split("=") for kv in attrs.split())
        rows += [{"id": qid, "source": doc["source"].strip('"'), "url": doc["url"].strip('"'), "focus": focus,
                  "qtype": qt, "question": q, "answer": clean_answer(a)} for qid, qt, q, a in pairs if a.strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def without_where(pairs):
    return [dataclasses.replace(p, where="") for p in pairs]


def test_release_and_jsonl_copy_give_the_same_pairs(tmp_path):
    xml_pairs = list(iter_medquad(write_release(tmp_path / "MedQuAD")))
    jsonl_pairs = list(iter_medquad(write_jsonl_copy(tmp_path / "medquad.jsonl")))
    assert all(isinstance(p, MedQuADPair) for p in xml_pairs + jsonl_pairs)
    assert without_where(xml_pairs) == without_where(jsonl_pairs)
    # path order (11_ sorts before 1_C), removed answers left out and not numbered, answers cleaned
    assert [(p.n, p.id, p.source) for p in xml_pairs] == [
        (1, "0000001_1-1", "CancerGov"), (2, "0000001_1-2", "CancerGov"), (3, "0000002-1", "GARD"),
        (4, "0000003-1", "GHR")]
    assert xml_pairs[0].answer == ("Key Points\n- ALL is a cancer. - It affects the marrow.\n"
                                   "Adult ALL is a cancer of the blood and bone marrow that gets worse quickly.")
    assert xml_pairs[3].answer == "Mutations in the ABC1 gene cause it." and xml_pairs[2].focus == ""
    assert xml_pairs[0].where.endswith("0000001_1.xml (0000001_1-1)")
    assert jsonl_pairs[0].where.endswith("medquad.jsonl:1")


def test_every_consumer_reads_the_release_as_the_copy(tmp_path):
    xml, jsonl = write_release(tmp_path / "MedQuAD"), write_jsonl_copy(tmp_path / "medquad.jsonl")
    (ev_x, skip_x), (ev_j, skip_j) = (evidence.read_medquad_qa(p, on_error="skip") for p in (xml, jsonl))
    assert ev_x == ev_j and [r.id for r in ev_x] == ["medquad-1", "medquad-2", "medquad-4"]  # named by JSONL line
    assert len(skip_x) == len(skip_j) == 1 and "empty focus" in skip_x[0] and "0000002.xml (0000002-1)" in skip_x[0]
    lm_x, lm_j = lm_data.medquad_pairs(xml), lm_data.medquad_pairs(jsonl)
    assert without_where(lm_x) == without_where(lm_j) and lm_x[2].focus == "doc:0000002"  # its document stands in
    c_x, c_j = load_corpus([("medquad", xml)]), load_corpus([("medquad", jsonl)])
    assert c_x.checksum() == c_j.checksum() and [p.doc_id for p in c_x.passages][:2] == ["0000001_1-1", "0000001_1-2"]


def test_hugging_face_field_names(tmp_path):
    path = tmp_path / "hf.jsonl"
    path.write_text(json.dumps({"question_id": "0000001_1-1", "document_source": "CancerGov", "document_url": "u",
                                "question_focus": "Adult ALL", "question_type": "information",
                                "question": "What is ALL ?", "answer": "  A cancer.  "}) + "\n")
    (p,) = iter_medquad(str(path))
    assert (p.id, p.source, p.url, p.focus, p.qtype, p.answer) == ("0000001_1-1", "CancerGov", "u", "Adult ALL",
                                                                     "information", "A cancer.")
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([json.loads(path.read_text())]), str(tmp_path / "train.parquet"))
    (q,) = iter_medquad(str(tmp_path / "train.parquet"))  # the copy as the hub serves it
    assert dataclasses.replace(q, where="") == dataclasses.replace(p, where="") and q.where.endswith(": row 1")


def test_csv_copies(tmp_path):
    """A CSV copy with a header (Kaggle's: question, answer, source, focus_area; answers span lines) and one whose
    columns are capitalised give the JSONL copy's pairs; a record without its answer is named by its first line."""
    import csv

    (want,) = [p for p in iter_medquad(write_jsonl_copy(tmp_path / "medquad.jsonl")) if p.n == 1]
    path = tmp_path / "medquad.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer", "source", "focus_area"])
        w.writerow([want.question, want.answer, want.source, want.focus])  # the answer holds newlines
        w.writerow(["What is (are) Rare syndrome ?", "", "GARD", "Rare syndrome"])
    (p, bad) = iter_medquad(str(path))
    assert (p.question, p.answer, p.source, p.focus, p.where) == (want.question, want.answer, want.source,
                                                                   want.focus, f"{path}:2")
    assert isinstance(bad, DataError) and str(bad) == f"{path}:5: missing answer (a MedQuAD pair needs a question " \
                                                      "and an answer)"
    (tmp_path / "caps.csv").write_text('\ufeffqtype,Question,Answer\ninformation,What is ALL ?,"  A cancer.  "\n',
                                       encoding="utf-8")  # as a spreadsheet saves it: with a byte-order mark
    (q,) = iter_medquad(str(tmp_path / "caps.csv"))
    assert (q.qtype, q.question, q.answer, q.focus) == ("information", "What is ALL ?", "A cancer.", "")
    (tmp_path / "other.csv").write_text("id,text\n1,hello\n")
    with pytest.raises(DataError, match=r"other.csv:1: a MedQuAD CSV needs a header row with question and answer"):
        list(iter_medquad(str(tmp_path / "other.csv")))


def test_bad_input_names_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="MedQuAD not found: .*nowhere"):
        list(iter_medquad(str(tmp_path / "nowhere")))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="empty_dir: no MedQuAD .xml files"):
        lm_data.medquad_pairs(str(tmp_path / "empty_dir"))
    root = tmp_path / "MedQuAD"
    write_release(root)
    (root / "2_GARD_QA" / "0000009.xml").write_text(
        '<Document id="0000009" source="GARD"><Focus>F</Focus><QAPairs><QAPair pid="1">'
        '<Question qid="0000009-1" qtype="x"> </Question><Answer>An answer without its question.</Answer>'
        "</QAPair></QAPairs></Document>")
    with pytest.raises(DataError, match=r"0000009.xml \(0000009-1\): missing question"):
        lm_data.medquad_pairs(str(root))
    (root / "2_GARD_QA" / "0000009.xml").write_text("<Document><QAPairs>\n<QAPair>")
    with pytest.raises(CorpusError, match=r"0000009.xml:2: malformed XML"):
        load_corpus([("medquad", str(root))])
    # a malformed line is skipped and listed like any bad pair, and reading goes on past it
    jsonl = tmp_path / "mq.jsonl"
    write_jsonl_copy(jsonl)
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(lines[:1] + ['{"question": "Q?"'] + lines[1:]) + "\n")
    recs, skipped = evidence.read_medquad_qa(str(jsonl), on_error="skip")
    assert [r.id for r in recs] == ["medquad-1", "medquad-3", "medquad-5"]
    assert skipped[0].endswith("mq.jsonl:2: malformed JSON (Expecting ',' delimiter)") and len(skipped) == 2
    with pytest.raises(DataError, match="mq.jsonl:2: malformed JSON"):
        lm_data.medquad_pairs(str(jsonl))

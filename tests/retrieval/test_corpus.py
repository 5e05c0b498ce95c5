"""Corpus readers, chunking, stable ids, checksums and malformed-record handling."""
import json
import os

import pytest

from jmlr_jax.retrieval import CorpusError, chunk_words, load_corpus
from tests.conftest import DATA_DIR, require


def test_chunks_overlap_and_cover_every_word():
    words = [f"w{i}" for i in range(237)]
    chunks = chunk_words(" ".join(words), size=50, overlap=10)
    assert [len(c.split()) for c in chunks] == [50, 50, 50, 50, 50, 37]
    for a, b in zip(chunks, chunks[1:]):
        assert a.split()[-10:] == b.split()[:10]
    assert [w for c in chunks for w in c.split()[10 if c is not chunks[0] else 0:]] == words
    assert chunk_words("one two", 50, 10) == ["one two"] and chunk_words("", 50, 10) == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_words("a b", 10, 10)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_ids_stable_and_checksum_tracks_content(tmp_path):
    recs = [{"id": "g1", "title": "Hypertension", "text": " ".join(f"bp{i}" for i in range(150))},
            {"id": "g2", "title": "Diabetes", "text": "metformin first line"}]
    p = _write(tmp_path / "g.jsonl", [json.dumps(r) for r in recs])
    a, b = load_corpus([("guidelines", p)]), load_corpus([("guidelines", p)])
    assert [x.id for x in a.passages] == ["g1#0", "g1#1", "g2#0"] == [x.id for x in b.passages]
    assert a.checksum() == b.checksum()
    assert load_corpus([("guidelines", p)], chunk_size=80).checksum() != a.checksum()
    recs[1]["text"] = "metformin first-line"
    p2 = _write(tmp_path / "g2.jsonl", [json.dumps(r) for r in recs])
    assert load_corpus([("guidelines", p2)]).checksum() != a.checksum()


def test_malformed_records_name_file_and_line_or_are_counted(tmp_path):
    p = _write(tmp_path / "g.jsonl", [json.dumps({"id": "a", "title": "t", "text": "fine"}), "{broken",
                                      json.dumps({"id": "c", "title": "t", "text": "  "}),
                                      json.dumps({"id": "d", "title": "t", "text": "also fine"})])
    with pytest.raises(CorpusError, match=r"g.jsonl:2: malformed JSON"):
        load_corpus([("guidelines", p)])
    c = load_corpus([("guidelines", p)], on_error="skip")
    assert c.skipped == 2 and [x.id for x in c.passages] == ["a#0", "d#0"]
    p3 = _write(tmp_path / "h.jsonl", [json.dumps({"id": "a", "title": "t", "text": "fine"}),
                                       json.dumps({"id": "c", "title": "t", "text": ""})])
    with pytest.raises(CorpusError, match=r"h.jsonl:2: record lacks non-empty text"):
        load_corpus([("guidelines", p3)])


def test_meditron_guidelines_as_released(tmp_path):
    """epfl-llm/guidelines' open_guidelines.jsonl: the cleaned text is read, a missing title allowed, source kept."""
    recs = [{"id": "7a1f", "source": "who", "title": "Malaria treatment", "clean_text": "Artesunate first. " * 80,
             "raw_text": "<p>raw</p>", "url": "https://who.int/x", "overview": ""},
            {"id": "9c2e", "source": "wikidoc", "title": None, "clean_text": "Sepsis bundle within one hour.",
             "raw_text": "r", "url": "u", "overview": None},
            {"id": "0b3d", "source": "cdc", "title": "Empty", "clean_text": " ", "raw_text": "r", "url": "u"}]
    p = _write(tmp_path / "open_guidelines.jsonl", [json.dumps(r) for r in recs])
    with pytest.raises(CorpusError, match=r"open_guidelines.jsonl:3: record lacks non-empty clean_text"):
        load_corpus([("guidelines", p)])
    c = load_corpus([("guidelines", p)], on_error="skip")
    assert c.skipped == 1 and [(x.id, x.title, x.source) for x in c.passages][-2:] == [
        ("7a1f#1", "Malaria treatment", "guidelines:who"), ("9c2e#0", "", "guidelines:wikidoc")]
    assert c.passages[0].text.startswith("Artesunate first.") and "raw" not in c.passages[0].text


def test_empty_missing_unknown_and_duplicate_ids(tmp_path):
    with pytest.raises(CorpusError, match="empty corpus"):
        load_corpus([("guidelines", _write(tmp_path / "e.jsonl", [""]))])
    with pytest.raises(FileNotFoundError, match="corpus source 'guidelines' not found"):
        load_corpus([("guidelines", str(tmp_path / "nope.jsonl"))])
    with pytest.raises(ValueError, match="unknown corpus source kind 'pdf'"):
        load_corpus([("pdf", str(tmp_path))])
    p = _write(tmp_path / "d.jsonl", [json.dumps({"id": "x", "title": "", "text": "alpha"}),
                                      json.dumps({"id": "x", "title": "", "text": "beta"}),
                                      json.dumps({"id": "x", "title": "", "text": "gamma"})])
    assert [q.id for q in load_corpus([("documents", p)]).passages] == ["x#0", "x~2#0", "x~3#0"]
    p = _write(tmp_path / "e.jsonl", [json.dumps({"id": "x~2", "title": "", "text": "alpha"}),
                                      json.dumps({"id": "x", "title": "", "text": "beta"}),
                                      json.dumps({"id": "x", "title": "", "text": "gamma"})])
    with pytest.raises(CorpusError, match="'x~2#0' occurs twice"):
        load_corpus([("documents", p)])


def test_user_documents_tsv_and_jsonl_and_dedupe(tmp_path):
    tsv = tmp_path / "docs.tsv"
    tsv.write_text("id\ttitle\ttext\nu1\tAsthma\tInhaled corticosteroids control asthma.\n"
                   "u2\t\tInhaled corticosteroids control asthma.\n7\tCOPD\tBronchodilators.\n")
    c = load_corpus([("documents", str(tsv))])
    assert [p.id for p in c.passages] == ["u1#0", "7#0"] and c.duplicates == 1
    assert c.passages[0].source == "user" and c.passages[0].title == "Asthma"
    bom = tmp_path / "bom.tsv"  # saved by a spreadsheet: a byte-order mark before the header
    bom.write_text("\ufeff" + tsv.read_text(), encoding="utf-8")
    assert load_corpus([("documents", str(bom))]).checksum() == c.checksum()
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\tbody\nu1\ttext\n")
    with pytest.raises(CorpusError, match=r"bad.tsv:1: TSV header lacks column\(s\) text"):
        load_corpus([("documents", str(bad))])
    js = _write(tmp_path / "d.jsonl", [json.dumps({"id": 3, "text": "numeric ids are fine"})])
    assert load_corpus([("documents", js)]).passages[0].id == "3#0"


def test_medquad_public_xml_layout(tmp_path):
    d = tmp_path / "MedQuAD" / "1_CancerGov_QA"
    d.mkdir(parents=True)
    (d / "0000001_1.xml").write_text(
        '<?xml version="1.0"?><Document id="0000001_1" source="CancerGov" url="https://www.cancer.gov/x">'
        "<Focus>Adult ALL</Focus><QAPairs>"
        '<QAPair pid="1"><Question qid="0000001_1-1" qtype="information">What is adult ALL?</Question>'
        "<Answer>Adult acute lymphoblastic leukemia is a cancer of the blood and bone marrow.</Answer></QAPair>"
        '<QAPair pid="2"><Question qid="0000001_1-2" qtype="symptoms">Symptoms?</Question><Answer></Answer></QAPair>'
        "</QAPairs></Document>")
    c = load_corpus([("medquad", str(tmp_path / "MedQuAD"))])
    assert [(p.id, p.title, p.source) for p in c.passages] == [("0000001_1-1#0", "What is adult ALL?",
                                                                "medquad:CancerGov")]
    (d / "broken.xml").write_text("<Document><QAPairs>")
    with pytest.raises(CorpusError, match=r"broken.xml:1: malformed XML"):
        load_corpus([("medquad", str(tmp_path / "MedQuAD"))])


def test_pubmedqa_abstracts_without_question_and_with_exclusion(tmp_path):
    data = {"111": {"QUESTION": "Does X cause Y?", "CONTEXTS": ["Background text.", "Results text."]},
            "222": {"QUESTION": "Is Z safe?", "CONTEXTS": ["Other abstract."]}}
    p = tmp_path / "pq.json"
    p.write_text(json.dumps(data))
    (tmp_path / "test_ids.json").write_text(json.dumps({"222": "yes"}))
    c = load_corpus([("pubmedqa", str(p))], pubmedqa_exclude_file=str(tmp_path / "test_ids.json"))
    assert [(x.id, x.text) for x in c.passages] == [("pmid-111#0", "Background text. Results text.")]
    assert "Does X" not in c.passages[0].title + c.passages[0].text  # the question (= title) never leaks
    p.write_text(json.dumps({"333": {"CONTEXTS": "not a list"}}))
    with pytest.raises(CorpusError, match="record 333: CONTEXTS must be a non-empty list"):
        load_corpus([("pubmedqa", str(p))])


def test_real_shared_corpus_loads():
    path = os.path.join(DATA_DIR, "guidelines", "ngc_open.jsonl")
    require(os.path.isfile(path), path)
    c = load_corpus([("guidelines", path), ("pubmedqa", os.path.join(DATA_DIR, "pubmedqa", "ori_pqal.json"))])
    assert c.skipped == 0 and len(c) > 3000
    assert {p.source for p in c.passages} == {"ngc_guidelines", "pubmedqa"}
    assert all(p.licence for p in c.passages)

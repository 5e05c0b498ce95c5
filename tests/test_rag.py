"""launch/answer.py without a trained run: the real models answer from a guideline file, cite the passage they
used, and keep the encoded passages for the next question; bad input is one line."""
import json

import pytest

from jmlr_jax import rag
from jmlr_jax.retrieval import store

GUIDELINES = [
    {"id": "bp", "title": "Screening for high blood pressure in adults",
     "text": "Adults aged 40 years or older and adults at increased risk for high blood pressure should be screened "
             "every year. Adults aged 18 to 39 years with normal blood pressure and no risk factors should be "
             "rescreened every 3 to 5 years."},
    {"id": "flu", "title": "Influenza vaccination",
     "text": "Routine annual influenza vaccination is recommended for all persons aged 6 months or older who do not "
             "have contraindications."},
    {"id": "bone", "title": "Screening for osteoporosis",
     "text": "Women aged 65 years or older should be screened for osteoporosis with bone measurement testing to "
             "prevent osteoporotic fractures."},
]


def _argv(tmp_path, question: str) -> list[str]:
    corpus = tmp_path / "guidelines.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in GUIDELINES))
    return ["--question", question, "--corpus", str(corpus), "--cache_dir", str(tmp_path / "cache"),
            "--max_new_tokens", "8"]


def test_answers_with_a_cited_passage_and_keeps_the_index(smollm2, minilm, tmp_path, capsys, monkeypatch):
    rag.main(_argv(tmp_path, "How often should adults be screened for high blood pressure?"))
    out = capsys.readouterr().out
    assert "Answer: " in out and "[1] bp#0 " in out and "over 3 passages" in out
    assert len(list((tmp_path / "cache").glob("index-*"))) == 1

    def encode_again(*a, **k):
        raise AssertionError("the kept index should have been reused")

    monkeypatch.setattr(store, "build_index", encode_again)  # the next question encodes nothing
    rag.main(_argv(tmp_path, "Who should get a flu vaccine every year?"))
    assert "[1] flu#0 " in capsys.readouterr().out


def test_missing_or_malformed_guidelines_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        rag.main(["--k", "-1"])
    assert e.value.code == 2 and "--k and --max_passages must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        rag.main(["--question", "  "])  # before any corpus is read or encoded
    assert e.value.code == 2 and "--question is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        rag.main(["--corpus", str(tmp_path / "none.jsonl")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "none.jsonl" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GUIDELINES[0]) + "\n{not json\n")
    with pytest.raises(SystemExit) as e:
        rag.main(["--corpus", str(bad)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "bad.jsonl:2" in err
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        rag.main(["--corpus", str(tmp_path / "empty.jsonl")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "empty" in err

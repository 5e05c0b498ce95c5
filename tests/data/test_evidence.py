"""Evidence tasks: the MedQuAD reader's errors, the focus split, answer-only passages and gold passages."""
import json

import pytest

from jmlr_jax.data import evidence as ev
from jmlr_jax.data.sources import DataError
from jmlr_jax.retrieval.corpus import corpus_from_documents


def write_medquad(path, n_focus=12, per_focus=4, extra=()):
    with open(path, "w") as f:
        for i in range(n_focus):
            for j in range(per_focus):
                f.write(json.dumps({"id": f"{i}-{j}", "source": "GHR", "focus": f"Disease {i}", "qtype": f"t{j}",
                                    "question": f"What is aspect {j} of Disease {i} ?",
                                    "answer": f"Disease {i} aspect {j} is described here: " + " ".join(
                                        f"w{i}_{j}_{k}" for k in range(30))}) + "\n")
        for rec in extra:
            f.write(json.dumps(rec) + "\n")
    return str(path)


def test_reader_errors_name_file_and_line(tmp_path):
    path = write_medquad(tmp_path / "mq.jsonl", 2, 2, extra=[{"question": "Q?", "answer": "", "focus": "F"}])
    with pytest.raises(DataError, match=r"mq.jsonl:5: missing answer"):
        ev.read_medquad_qa(path)
    path = write_medquad(tmp_path / "mq2.jsonl", 2, 2, extra=[{"question": "Q?", "answer": "A.", "focus": " "}])
    with pytest.raises(DataError, match=r"mq2.jsonl:5: empty focus"):
        ev.read_medquad_qa(path)
    recs, skipped = ev.read_medquad_qa(path, on_error="skip")
    assert len(recs) == 4 and len(skipped) == 1 and "mq2.jsonl:5" in skipped[0]
    (tmp_path / "bad.jsonl").write_text('{"question": "Q?"\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: malformed JSON"):
        ev.read_medquad_qa(str(tmp_path / "bad.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no MedQuAD records"):
        ev.read_medquad_qa(str(tmp_path / "empty.jsonl"))


def test_focus_split_leaks_no_heldout_focus_into_training(tmp_path):
    recs, _ = ev.read_medquad_qa(write_medquad(tmp_path / "mq.jsonl"))
    s = ev.split_by_focus(recs, train_focuses=5, dev_focuses=3, heldout_focuses=4, min_questions=3)
    focus = lambda rs: {r.focus for r in rs}  # noqa: E731
    assert len(focus(s.train)) == 5 and len(focus(s.dev)) == 3 and len(focus(s.heldout_focus)) == 4
    assert not focus(s.train) & focus(s.heldout_focus) and not focus(s.train) & focus(s.dev)
    assert not focus(s.dev) & focus(s.heldout_focus)
    # held-out by document: unseen questions of training focuses
    assert focus(s.heldout_doc) == focus(s.train) and not {r.id for r in s.heldout_doc} & {r.id for r in s.train}
    # open-domain: every answer of every selected focus is in the corpus
    assert {r.id for r in s.corpus_docs} == {r.id for r in s.train + s.dev + s.heldout_focus + s.heldout_doc}
    with pytest.raises(DataError, match="the split needs 13"):
        ev.split_by_focus(recs, train_focuses=6, dev_focuses=3, heldout_focuses=4)


def test_extra_training_focuses_move_no_other_split_and_nest(tmp_path):
    recs, _ = ev.read_medquad_qa(write_medquad(tmp_path / "mq.jsonl", n_focus=16))
    kw = dict(train_focuses=5, dev_focuses=3, heldout_focuses=4)
    base, two, three = (ev.split_by_focus(recs, **kw, extra_train_focuses=n) for n in (0, 2, 3))
    ids = lambda rs: [r.id for r in rs]  # noqa: E731
    for s in (two, three):  # the other splits and the corpus's documents do not move
        for name in ("train", "dev", "heldout_focus", "heldout_doc", "corpus_docs"):
            assert ids(getattr(s, name)) == ids(getattr(base, name))
    assert base.extra_train == [] and len({r.focus for r in three.extra_train}) == 3
    assert ids(three.extra_train)[: len(two.extra_train)] == ids(two.extra_train)  # fewer focuses: a prefix
    held = {r.focus for r in base.dev + base.heldout_focus + base.train}
    assert not held & {r.focus for r in three.extra_train}
    with pytest.raises(DataError, match="the split needs 17"):
        ev.split_by_focus(recs, **kw, extra_train_focuses=5)


def test_passages_are_answer_text_only_and_gold_follows_text(tmp_path):
    recs, _ = ev.read_medquad_qa(write_medquad(tmp_path / "mq.jsonl", 3, 3))
    corpus = corpus_from_documents(ev.evidence_documents(recs), chunk_size=12, overlap=2)
    assert all(not p.title for p in corpus.passages)
    assert ev.question_leaks(corpus, recs) == []
    leaky = [ev.EvidenceQA("x", "medquad", "What causes it ?", "a", "What causes it ? It is ...", "x", "F")]
    assert ev.question_leaks(corpus_from_documents(ev.evidence_documents(leaky)), leaky) == ["x"]
    gold = ev.gold_passages(corpus, recs)
    for r, g in zip(recs, gold):
        assert g and all(corpus.passages[i].doc_id == r.evidence_id for i in g)
    # a passage deduplicated into another document still counts as gold for both
    twins = [ev.EvidenceQA(f"t{i}", "medquad", f"q{i}", "a", "same answer text for both", f"doc{i}", "F") for i in range(2)]
    c2 = corpus_from_documents(ev.evidence_documents(twins))
    assert len(c2) == 1 and ev.gold_passages(c2, twins) == [[0], [0]]

"""Prompt template blocks and the grain pipeline: budgets, alignment, loss masks, exact iterator resume."""
import numpy as np
import pytest

from jmlr_jax.data import QARecord
from jmlr_jax.data.pipeline import JMLRExamples, make_dataset
from jmlr_jax.data.templates import Budgets, PromptTemplate, assemble, encode_answer, encode_docs, encode_question
from jmlr_jax.models import ColBERTConfig, ColBERTTokenizer
from jmlr_jax.retrieval.corpus import Passage

REC = QARecord("q1", "medmcqa", "Which drug is first-line for type 2 diabetes?", ("Insulin", "Metformin", "Sulfonylurea",
                                                                                  "Acarbose"), 1,
               rationale="Metformin lowers hepatic glucose output.")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tests.helpers import save_tiny_llama_dir
    from jmlr_jax.tokenizers import load_tokenizer

    return load_tokenizer(save_tiny_llama_dir(str(tmp_path_factory.mktemp("tiny"))))


def test_template_text_is_the_same_for_train_and_eval():
    tpl = PromptTemplate()
    assert tpl.question_text(REC) == ("Question: Which drug is first-line for type 2 diabetes?\nA. Insulin\nB. Metformin\n"
                                      "C. Sulfonylurea\nD. Acarbose\nAnswer:")
    assert tpl.answer_text(REC) == " B. Metformin"
    assert tpl.answer_text(REC, letter_only=True) == " B."
    assert PromptTemplate(with_rationale=True).answer_text(REC).endswith("Explanation: Metformin lowers hepatic glucose output.")
    ctx = QARecord("p", "pubmedqa", "Does X help?", ("yes", "no", "maybe"), 0, context="Abstract text.")
    assert PromptTemplate(use_context=True).question_text(ctx).startswith("Context: Abstract text.\nQuestion: Does X help?")
    # placeholders checked where the template is bound (a KeyError while the first batch was built, before)
    with pytest.raises(ValueError, match=r"PromptTemplate.question .* uses \{questoin\}; it may use \{question\}, "
                                         r"\{options\}"):
        PromptTemplate(question="Q: {questoin}\n{options}A:")
    with pytest.raises(ValueError, match=r"PromptTemplate.doc 'Ref \{doc': expected '\}' before end of string"):
        PromptTemplate(doc="Ref {doc")
    assert PromptTemplate(doc="{{literal}} {doc}\n").doc_text("x") == "{literal} x\n"
    # where a generated answer is cut: the start of a next block, as the model would write it
    assert PromptTemplate().stop_strings == ("Reference:", "Context:", "Question:")
    assert PromptTemplate(doc="{doc}\n", context="", question="Q: {question}\n{options}A:").stop_strings == ("Q:",)


def test_blocks_budgets_alignment_and_eos(tok):
    tpl = PromptTemplate()
    q, qv = encode_question(tok, tpl, REC, 40)
    assert q.shape == (40,) and qv.all()  # truncated from the front: the end survives
    assert tok.decode(q).endswith("D. Acarbose\nAnswer:")
    q, qv = encode_question(tok, tpl, REC, 400)
    assert qv[-1] == 1 and qv[0] == 0  # right-aligned
    a, av = encode_answer(tok, tpl, REC, 6)
    assert av.sum() == 6 and a[5] == tok.eos_id  # EOS kept under truncation
    d, dv = encode_docs(tok, tpl, ["short", "a much longer reference document " * 10], 32)
    assert d.shape == (2, 32) and dv[0].sum() < 32 and dv[1].sum() == 32
    tokens, valid, pos = assemble([d[:1], q[None], a[None]], [dv[:1], qv[None], av[None]])
    compact = np.asarray(tokens)[np.asarray(valid) > 0]
    assert tok.decode(compact).startswith("Reference:\nshort\n\nQuestion:")
    assert np.array_equal(np.asarray(pos)[np.asarray(valid) > 0], np.arange(len(compact)))


def _examples(tok, minilm_tok, n=10):
    passages = [Passage(f"p{i}#0", f"p{i}", f"T{i}", f"passage number {i} about drugs", "user", "x") for i in range(6)]
    recs = [QARecord(f"q{i}", "medmcqa", f"question {i}?", ("a", "b", "c", "d"), i % 4) for i in range(n)]
    cands = np.stack([np.roll(np.arange(6), i)[:4] for i in range(n)])
    ctok = ColBERTTokenizer(minilm_tok, ColBERTConfig(query_maxlen=12, doc_maxlen=24))
    return JMLRExamples(recs, cands, passages, tok, ctok, budgets=Budgets(doc=16, question=24, answer=6))


def test_examples_and_resumable_iterator(tok, minilm):
    ex = _examples(tok, minilm[2])
    e = ex(3)
    assert e["docs"].shape == (4, 16) and e["r_d_ids"].shape == (4, 24) and e["question"].shape == (24,)
    assert e["bos"].tolist() == [tok.bos_id]  # tokenizer_config says add_bos_token
    it = iter(make_dataset(ex, batch_size=2, seed=7))
    first = [next(it)["example_id"].tolist() for _ in range(3)]
    state = it.get_state()
    rest = [next(it)["example_id"].tolist() for _ in range(4)]
    it2 = iter(make_dataset(ex, batch_size=2, seed=7))
    it2.set_state(state)
    assert [next(it2)["example_id"].tolist() for _ in range(4)] == rest
    seen = sum(first + rest[:2], [])
    assert sorted(seen) == list(range(10))  # one epoch: each example once, shuffled
    assert seen != list(range(10))
    acc = next(iter(make_dataset(ex, batch_size=2, seed=7, grad_accum=3)))
    assert acc["docs"].shape == (3, 2, 4, 16)


def test_pipeline_input_errors(tok, minilm):
    ex = _examples(tok, minilm[2])
    with pytest.raises(ValueError, match="outside the corpus"):
        JMLRExamples(ex.records, ex.candidates + 10, ex.passages, tok, ex.ctok)
    with pytest.raises(ValueError, match="candidate rows"):
        JMLRExamples(ex.records[:3], ex.candidates, ex.passages, tok, ex.ctok)
    with pytest.raises(ValueError, match="< one batch"):
        make_dataset(ex, batch_size=8, seed=0, grad_accum=2)


class _Rows:
    """Examples that are just their index (what a host reads is then visible)."""

    def __len__(self):
        return 10

    def __repr__(self):
        return "_Rows"

    def __call__(self, i):
        return {"example_id": np.int32(i)}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_hosts_read_disjoint_halves_of_each_global_batch(grad_accum):
    """Simulated hosts (index, count): each reads half the rows; together exactly the one-host batch; resumable."""
    one = iter(make_dataset(_Rows(), 4, seed=3, grad_accum=grad_accum))
    hosts = [iter(make_dataset(_Rows(), 4, seed=3, grad_accum=grad_accum, shard=(h, 2))) for h in range(2)]
    for step in range(7):  # crosses epochs (10 examples, 4 x grad_accum per step)
        want = next(one)["example_id"]
        got = [next(h)["example_id"] for h in hosts]
        assert got[0].shape == want.shape[:-1] + (2,)
        # micro-batch by micro-batch, the hosts' rows together are the one-host rows (so no row is read twice)
        together = np.concatenate(got, axis=-1)
        assert [sorted(r) for r in together.reshape(-1, 4).tolist()] == [sorted(r) for r in want.reshape(-1, 4).tolist()]
        if step == 3:
            states = [h.get_state() for h in hosts]
    resumed = iter(make_dataset(_Rows(), 4, seed=3, grad_accum=grad_accum, shard=(1, 2)))
    resumed.set_state(states[1])
    again = iter(make_dataset(_Rows(), 4, seed=3, grad_accum=grad_accum, shard=(1, 2)))
    for _ in range(4):
        next(again)
    for _ in range(3):
        np.testing.assert_array_equal(next(resumed)["example_id"], next(again)["example_id"])
    with pytest.raises(ValueError, match="does not split over 3 hosts"):
        make_dataset(_Rows(), 4, seed=3, shard=(0, 3))

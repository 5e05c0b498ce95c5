"""Option log-likelihood against Hugging Face on a tiny random model; the harness end to end on fixtures."""
import dataclasses
import json
import pathlib
import math
import re

import numpy as np
import pytest
import torch

from jmlr_jax.convert import load_preset
from jmlr_jax.data.sources import QARecord
from jmlr_jax.data.templates import Budgets, PromptTemplate
from jmlr_jax.errors import InputError
from jmlr_jax.data.splits import DataConfig
from jmlr_jax.eval import EvalConfig, evaluate, eval_sets, option_ids, parse_choice, prompt_ids, score_options
from jmlr_jax.eval.harness import markdown, summarize
from jmlr_jax.retrieval.corpus import Passage
from tests.helpers import save_tiny_llama_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_llama_dir(str(tmp_path_factory.mktemp("tiny_llama")))
    cfg, params, tok = load_preset(path)
    from transformers import LlamaForCausalLM

    return cfg, params, tok, LlamaForCausalLM.from_pretrained(path).eval()


def hf_loglik(model, prompt, option):
    """Sum of log p(option tokens | prompt), by one full forward pass of the concatenation."""
    ids = torch.as_tensor([prompt + option])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1).numpy()
    return sum(logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(option))


def test_option_logliks_match_hf_full_forward(tiny):
    cfg, params, _, hf = tiny
    rng = np.random.RandomState(0)
    prompts = [rng.randint(2, 90, n).tolist() for n in (5, 23, 11)]  # ragged: left padding inside a batch
    options = [[rng.randint(2, 90, n).tolist() for n in lens] for lens in ((1, 3, 2), (4, 1, 2, 2, 3), (2, 2))]
    got = score_options(cfg, params, prompts, options, batch_size=2)  # 2 batches, the last padded
    for p, opts, g in zip(prompts, options, got):
        assert g.shape == (len(opts),)
        ref = [hf_loglik(hf, p, o) for o in opts]
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-3)
        assert np.ptp(ref) > 0.5  # the options really differ: the comparison can fail


def records():
    return [QARecord("q1", "medqa", "Which drug is first line for type 2 diabetes?", ("Metformin", "Insulin", "Diet"), 0),
            QARecord("q2", "medqa", "A child has a barking cough. Diagnosis?", ("Croup", "Asthma", "Epiglottitis",
                                                                                "Pneumonia", "Bronchiolitis"), 2),
            QARecord("q3", "mmlu", "Which bone is in the arm?", ("Femur", "Humerus", "Tibia", "Fibula"), 1,
                     subject="anatomy")]


class FakeRetriever:
    """Returns passages 2, 0, 1 (best first) for every question."""

    class index:  # noqa: N801
        passages = [Passage(f"p{i}#0", f"p{i}", f"Title {i}", f"Guideline text number {i}.", "test", "cc0")
                    for i in range(3)]

    def search(self, queries, k):
        return np.tile(np.array([2, 0, 1])[:k], (len(queries), 1)), np.zeros((len(queries), k))


def test_evaluate_loglik_with_retrieval_matches_reference(tiny):
    cfg, params, tok, hf = tiny
    tpl, budgets = PromptTemplate(), Budgets(doc=12, question=64, answer=8)
    recs = records()
    ecfg = EvalConfig(retrieval=True, num_docs=2, batch_size=2)
    preds = evaluate({"medqa": recs[:2], "mmlu_med": recs[2:]}, cfg, params, tok, ecfg, tpl, budgets, FakeRetriever(),
                     num_docs=2, progress=False)
    passages = FakeRetriever.index.passages
    for r, p in zip(recs, preds):
        assert p["docs"] == ["p0#0", "p2#0"]  # top-2 is [2, 0]: best (2) last
        prompt = prompt_ids(tok, tpl, budgets, r, [passages[0].with_title, passages[2].with_title])
        assert prompt[0] == tok.bos_id and len(prompt) == p["prompt_tokens"]
        assert tok.decode(prompt).count("Reference:") == 2
        ref = [hf_loglik(hf, prompt, o) for o in option_ids(tok, tpl, r, budgets.answer)]
        np.testing.assert_allclose(p["logliks"], ref, rtol=1e-4, atol=2e-3)
        assert p["pred_letter"] == "ABCDE"[int(np.argmax(ref))] and p["correct"] == (np.argmax(ref) == r.answer_idx)
    rows = summarize(preds)
    mmlu_all = next(x for x in rows if x["set"] == "mmlu_med" and x["subject"] == "all")
    assert next(x for x in rows if x["subject"] == "anatomy")["n"] == 1 and mmlu_all["n"] == 1
    medqa = next(x for x in rows if x["set"] == "medqa")
    acc = np.mean([p["correct"] for p in preds[:2]])
    assert medqa["accuracy"] == acc and math.isclose(medqa["se"], math.sqrt(acc * (1 - acc) / 2))
    assert "| medqa | all | 2 |" in markdown(rows, "t")


def test_evaluate_generate_parses_and_counts_unparsed(tiny):
    cfg, params, tok, _ = tiny
    preds = evaluate({"medqa": records()}, cfg, params, tok, EvalConfig(mode="generate", max_new_tokens=6,
                                                                        batch_size=2), PromptTemplate(), Budgets(),
                     progress=False)
    for r, p in zip(records(), preds):
        expected = parse_choice(p["output"], r.options)
        assert p["unparsed"] == (expected is None) and p["pred"] == (-1 if expected is None else expected)
    assert summarize(preds)[0]["unparsed"] == sum(p["unparsed"] for p in preds)


def test_generate_mode_reads_the_answer_not_the_next_question_the_model_writes(tiny, monkeypatch):
    """A base model goes on past its answer into a next "Question: ... Answer: C" of its own; parsed whole, that
    "Answer: C" was taken for this question's answer (an explicit answer outranks a leading letter)."""
    from jmlr_jax.eval import harness, mcq

    cfg, params, tok, _ = tiny
    arm = records()[2]  # gold B, Humerus
    text = " B. Humerus\n\nQuestion: Which bone is in the leg?\nA. Femur\nB. Ulna\nAnswer: A"
    assert parse_choice(text, arm.options) == 0
    real = mcq.generate_answers
    monkeypatch.setattr(harness, "generate_answers",
                        lambda *a, **k: [mcq.cut_at_stop(text, k["stop_strings"]) for _ in real(*a, **k)])
    (p,) = evaluate({"mmlu": [arm]}, cfg, params, tok, EvalConfig(mode="generate", max_new_tokens=2),
                    PromptTemplate(), Budgets(), progress=False)
    assert p["correct"] and p["pred_letter"] == "B" and p["output"] == " B. Humerus\n\n"


def test_eval_sets_from_fixture_files(tmp_path, capsys):
    medqa = tmp_path / "test.jsonl"
    medqa.write_text("\n".join(json.dumps({"question": f"Q{i}?", "options": {"A": "x", "B": "y", "C": "z", "D": "w"},
                                           "answer_idx": "B"}) for i in range(10)) + "\n")
    data = DataConfig(data_dir=str(tmp_path))
    sets = eval_sets(data, names=("medqa",), medqa_path="test.jsonl")  # relative to the data directory
    assert len(sets["medqa"]) == 10 and sets["medqa"][0].answer_letter == "B"
    a = eval_sets(data, names=("medqa",), medqa_path=str(medqa), max_per_set=4)["medqa"]
    b = eval_sets(data, names=("medqa",), medqa_path=str(medqa), max_per_set=4)["medqa"]
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 4 and [r.id for r in a] != ["0", "1", "2", "3"]
    with pytest.raises(InputError, match="unknown evaluation set"):
        eval_sets(data, names=("medqa_usmle",))
    # sets from files of any reader's format, evaluated with the named ones; reader options as a 4th element
    (tmp_path / "medmcqa").mkdir()
    mcq = {"id": "m1", "question": "Which nerve?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 0}
    (tmp_path / "medmcqa" / "dev.jsonl").write_text(json.dumps(dict(mcq, cop=1)) + "\n")
    (tmp_path / "hf.jsonl").write_text(json.dumps(mcq) + "\n")
    both = dataclasses.replace(data, include_pubmedqa=False, heldout_fraction=0.0)
    sets = eval_sets(both, names=("medqa",), medqa_path="test.jsonl", set_files=(
        ("usmle", "medqa", str(medqa)), ("mcq_hf", "medmcqa", "hf.jsonl", {"cop_base": 0})))
    assert list(sets) == ["medqa", "usmle", "mcq_hf"] and sets["usmle"] == sets["medqa"]
    assert sets["mcq_hf"][0].answer_letter == "A"
    assert "evaluation set 'mcq_hf': 1 of 1 questions are training questions of this run" in capsys.readouterr().err
    with pytest.raises(InputError, match="set name 'medqa' is taken"):
        eval_sets(data, names=(), set_files=(("medqa", "medqa", str(medqa)),))
    with pytest.raises(InputError, match=r"expected \(name, kind, path\[, reader options\]\)"):
        eval_sets(data, names=(), set_files=(("x", "medqa"),))
    with pytest.raises(InputError, match="medqa_path"):
        eval_sets(data, names=("medqa",))
    with pytest.raises(InputError, match="DataConfig.data_dir is not set"):
        eval_sets(DataConfig(), names=("medqa",), medqa_path=str(medqa))
    with pytest.raises(InputError, match="data_dir '/no/such/dir' is not a directory"):
        eval_sets(DataConfig(data_dir="/no/such/dir"), names=("medqa",), medqa_path=str(medqa))
    with pytest.raises(ValueError, match="mode"):
        EvalConfig(mode="vote")
    for kw, msg in [(dict(batch_size=0), "EvalConfig: batch_size=0: each must be a positive integer"),
                    (dict(max_per_set=-5), "max_per_set=-5: each must be an integer >= 0"),
                    (dict(num_docs=-1), "num_docs must be None"), (dict(gold_recall_ks=(0, 7)), "gold_recall_ks")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            EvalConfig(**kw)
    assert dataclasses.asdict(EvalConfig())["mode"] == "loglik"


def test_few_shot_examples_precede_the_question_and_are_scored(tiny, tmp_path):
    from jmlr_jax.data.templates import encode_shots
    from jmlr_jax.eval.harness import choose_shots, shot_pools

    cfg, params, tok, hf = tiny
    tpl, budgets = PromptTemplate(), Budgets(doc=12, question=128, answer=8)
    evaluated = [QARecord("anatomy-1", "mmlu", "Which bone is in the arm?", ("Femur", "Humerus", "Tibia", "Fibula"), 1,
                          subject="anatomy"),
                 QARecord("college_medicine-1", "mmlu", "Which organ makes insulin?", ("Liver", "Pancreas", "Skin",
                                                                                        "Lung"), 1,
                          subject="college_medicine")]
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "anatomy_dev.csv").write_text("Which bone is in the thigh?,Femur,Ulna,Radius,Rib,A\n"
                                         "How many ribs do adults have?,12 pairs,10 pairs,6 pairs,20 pairs,A\n"
                                         "Which bone is in the arm?,Femur,Humerus,Tibia,Fibula,B\n"  # an evaluated one
                                         "Where is the patella?,Knee,Hip,Elbow,Wrist,A\n")
    (dev / "college_medicine_dev.csv").write_text("Which vitamin prevents scurvy?,A,B12,C,D,C\n")
    (dev / "astronomy_dev.csv").write_text("Which planet is red?,Mars,Venus,Earth,Moon,A\n")  # not a medical subject
    sets = {"mmlu_med": evaluated}
    pools = shot_pools(DataConfig(data_dir=str(tmp_path)), sets, (("mmlu_med", "mmlu", "dev"),))
    assert sorted(r.id for r in pools["mmlu_med"]) == ["anatomy-1", "anatomy-2", "anatomy-4", "college_medicine-1"]
    assert "Which bone is in the arm?" not in [r.question for r in pools["mmlu_med"]]  # never an evaluated question
    assert all(s.subject == "anatomy" for s in choose_shots(pools["mmlu_med"], evaluated[0], 2))  # its subject's
    mixed = choose_shots(pools["mmlu_med"], evaluated[1], 2)  # one of its subject's, then from the rest
    assert [s.subject for s in mixed] == ["college_medicine", "anatomy"]
    preds = evaluate(sets, cfg, params, tok, EvalConfig(num_shots=2, batch_size=2), tpl, budgets, progress=False,
                     pools=pools)
    for r, p in zip(evaluated, preds):
        shots = choose_shots(pools["mmlu_med"], r, 2)
        assert p["shots"] == [s.id for s in shots]
        prompt = prompt_ids(tok, tpl, budgets, r, shot_ids=encode_shots(tok, tpl, shots, 1536))
        text = tok.decode(prompt)
        assert len(prompt) == p["prompt_tokens"] and prompt[0] == tok.bos_id
        assert text.index(tpl.shot_text(shots[0])) < text.index(tpl.shot_text(shots[1])) < text.index(r.question)
        ref = [hf_loglik(hf, prompt, o) for o in option_ids(tok, tpl, r, budgets.answer)]
        np.testing.assert_allclose(p["logliks"], ref, rtol=1e-4, atol=2e-3)  # scored with the examples in front
    # the budget drops whole examples, farthest from the question first
    a, b = pools["mmlu_med"][:2]
    assert tok.decode(encode_shots(tok, tpl, [a, b], len(tok.encode(tpl.shot_text(b))))) == tpl.shot_text(b)


def test_few_shot_bad_input(tmp_path):
    from jmlr_jax.eval.harness import shot_pools

    data, sets = DataConfig(data_dir=str(tmp_path)), {"medqa": records()[:2]}
    with pytest.raises(InputError, match=r"no examples for \['medqa'\]: add them to EvalConfig.shot_files"):
        shot_pools(data, sets)
    with pytest.raises(InputError, match="names set 'mmlu_med', which is not evaluated"):
        shot_pools(data, sets, (("mmlu_med", "mmlu", "dev"),))
    with pytest.raises(InputError, match=r"expected \(set, kind, path\) triples"):
        shot_pools(data, sets, (("medqa", "train.jsonl"),))
    with pytest.raises(ValueError, match="num_shots must be >= 0"):
        EvalConfig(num_shots=-1)


def test_built_in_example_pools_hold_no_evaluated_question():
    from tests.conftest import DATA_DIR, require
    from jmlr_jax.eval.harness import shot_pools
    import os

    require(os.path.isdir(DATA_DIR), DATA_DIR)
    data = DataConfig(data_dir=DATA_DIR)
    sets = eval_sets(data, ("medmcqa_heldout", "pubmedqa_test"))
    pools = shot_pools(data, sets)
    for name in sets:
        assert len(pools[name]) > 400 and not {r.id for r in pools[name]} & {r.id for r in sets[name]}
    from jmlr_jax.eval.harness import choose_shots
    first, second = (choose_shots(pools["pubmedqa_test"], r, 5) for r in sets["pubmedqa_test"][:2])
    assert first != second and choose_shots(pools["pubmedqa_test"], sets["pubmedqa_test"][0], 5) == first  # per question


def test_readme_few_shot_table_is_the_committed_results():
    """`launch/eval_diff.py` on the committed JSON gives the README's few-shot row figures."""
    import os
    import re
    from jmlr_jax.eval.harness import paired

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    a, b = (json.loads(pathlib.Path(root, "results", "eval_fewshot", f"base_{k}shot.json").read_text()) for k in (0, 5))
    readme = pathlib.Path(root, "README.md").read_text()
    for r, name in zip(paired(a, b), ("MedMCQA held-out", "PubMedQA test")):
        row = re.search(rf"\| {name} \((\d+)\) \| ([0-9.]+) ± [0-9.]+ \| ([0-9.]+) ± [0-9.]+ \| ([-+0-9.]+) "
                        rf"\[([-+0-9.]+), ([-+0-9.]+)\]", readme)
        assert row, name
        assert int(row[1]) == r["n"] and [float(x) for x in row.groups()[1:]] == [
            round(r[k], 3) for k in ("acc_a", "acc_b", "diff", "lo", "hi")]

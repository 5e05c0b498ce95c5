"""The comparison driver: finished parts are skipped, each part's JSON is written when it ends, bad part names."""
import dataclasses
import json
import os

import numpy as np
import pytest

from jmlr_jax.compare import report_dev
from jmlr_jax.compare.evidence import Comparison, EvidenceConfig, build_setup, save_tree
from jmlr_jax.errors import InputError
from tests.data.test_evidence import write_medquad


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    (d / "medquad").mkdir(parents=True)
    (d / "pubmedqa").mkdir()
    write_medquad(d / "medquad" / "medquad.jsonl", n_focus=10, per_focus=4)
    pq = {str(1000 + i): {"QUESTION": f"Does treatment {i} work?", "CONTEXTS": [f"Abstract {i} " + "x " * 40],
                          "LONG_ANSWER": f"Treatment {i} worked.", "final_decision": ["yes", "no", "maybe"][i % 3]}
          for i in range(8)}
    (d / "pubmedqa" / "ori_pqal.json").write_text(json.dumps(pq))
    (d / "pubmedqa" / "test_ground_truth.json").write_text(json.dumps({"1000": "yes", "1001": "no", "1002": "maybe"}))
    return str(d)


def tiny(data_dir, tmp_path, **kw):
    return EvidenceConfig(data_dir=data_dir, out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"),
                          train_focuses=4, dev_focuses=2, heldout_focuses=3, train_medquad=8, train_pubmedqa=3,
                          dev_questions=4, eval_heldout_focus=5, eval_heldout_doc=3, eval_pubmedqa=2, **kw)


def arm_parts(comp) -> list[str]:
    """The part names without the chat parts (those follow every arm: test_chat_parts_...)."""
    return [n for n in comp.part_names() if not n.startswith("chat_")]


def fake_pool_training(comp, monkeypatch, hits_of):
    """Arm e's training and recall faked: train records (arm, settings, questions) in the returned list and gives a
    retriever that ranks gold first for the first hits_of(settings) dev questions; the base retriever never does."""
    calls = []
    monkeypatch.setattr(comp, "models", lambda: (None,) * 4 + ("base",) + (None,))
    monkeypatch.setattr(comp, "doc_losses", lambda pool: None)
    monkeypatch.setattr(comp, "train", lambda arm, seed, settings, questions: calls.append(
        (arm, settings, questions)) or ({"retriever": hits_of(settings)}, []))
    monkeypatch.setattr(comp, "recall", lambda rp, recs, gold, **_: [{"gold_rank": 1 if rp != "base" and i < rp else 3}
                                                               for i in range(len(recs))])
    return calls


def test_setup_keeps_test_abstracts_out_of_the_searched_corpus(data_dir, tmp_path):
    s = build_setup(tiny(data_dir, tmp_path))
    test_docs = {f"pmid-{r.id}" for r in s.sets["pubmedqa_test"]}
    assert len(test_docs) == 2 and {p.doc_id for p in s.corpus.passages[s.n_main:]} == test_docs
    assert not test_docs & {p.doc_id for p in s.corpus.passages[: s.n_main]}
    assert not {r.id for r in s.train} & {r.id for v in s.sets.values() for r in v}
    # every evaluated question's gold evidence is in the corpus (test abstracts: in the appended part)
    assert all(g for v in s.gold.values() for g in v)
    assert all(min(g) >= s.n_main for g in s.gold["pubmedqa_test"])


def test_driver_skips_finished_parts_and_writes_each_part(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    with open(os.path.join(cfg.out_dir, "data.json"), "w") as f:
        json.dump({"done": True}, f)
    ran = []
    monkeypatch.setattr(comp, "_part", lambda name: ran.append(name) or {"part": name})
    comp.run(["data", "a", "d_s1"])
    assert ran == ["a", "d_s1"]
    with open(os.path.join(cfg.out_dir, "d_s1.json")) as f:
        assert json.load(f)["part"] == "d_s1"
    comp.run(["data", "a", "d_s1"])
    assert ran == ["a", "d_s1"]  # nothing reran
    assert comp.part_names()[:4] == ["data", "sweep", "a", "frozen"] and "e_s2" in comp.part_names()
    names = comp.part_names()  # the diagnostic runs after every d it reads, the chat parts after the arms they read
    assert names.index(f"dg_s{cfg.seeds[0]}") > names.index(f"d_s{cfg.seeds[-1]}")
    assert names[-len(cfg.seeds) - 4] == f"dg_s{cfg.seeds[-1]}" and names[-len(cfg.seeds) - 3] == "chat_gold"
    core = Comparison(dataclasses.replace(cfg, diagnostic=False, chat_generate=0), progress=False,
                      log=lambda _: None).part_names()  # the arms and measures alone
    assert core == [n for n in names if not n.startswith(("dg_", "chat_"))] and "b" in core and "c_s2" in core


def test_unknown_part_is_an_error(data_dir, tmp_path, monkeypatch):
    comp = Comparison(tiny(data_dir, tmp_path), progress=False, log=lambda _: None)
    ran = []
    monkeypatch.setattr(comp, "_part", lambda name: ran.append(name) or {"part": name})
    with pytest.raises(InputError, match="unknown part 'x_s0'"):
        comp.run(["a", "d_s0", "x_s0"])  # a typo at the end stops the run before its first part, not hours later
    assert ran == []
    monkeypatch.undo()
    with pytest.raises(InputError, match="part dg_s0 needs JMLR's trained weights .*run part d_s0 first"):
        comp.run(["dg_s0"])
    with pytest.raises(InputError, match="data_dir is not set"):
        Comparison(EvidenceConfig(out_dir=str(tmp_path / "o"), work_dir=str(tmp_path / "w")))


def test_jmlr_arm_trains_and_keeps_both_models():
    """Arm d is evaluated with its trained generator *and* retriever (a first run kept only the retriever)."""
    from jmlr_jax.compare.evidence import TRAINED

    assert TRAINED == {"b": ("llm",), "c": ("llm",), "d": ("llm", "retriever"), "e": ("retriever",),
                       "eL": ("retriever",), "eB": ("retriever",), "eR": ("retriever",), "eF": ("retriever",),
                       "eK": ("retriever",), "eFB": ("retriever",), "eKB": ("retriever",), "eT": ("retriever",),
                       "eTR": ("retriever",), "cL": ("llm",), "dL": ("llm", "retriever")}


def test_pool_extends_the_training_set_within_the_training_focuses(data_dir, tmp_path):
    s0 = build_setup(tiny(data_dir, tmp_path))
    assert s0.pool == s0.train  # no pool configured: the extension's parts are not listed
    s = build_setup(tiny(data_dir, tmp_path, pool_medquad=100))
    assert s.pool[: len(s.train)] == s.train and len(s.pool) > len(s.train)  # nested: cached losses reused
    train_focuses = {r.focus.lower() for r in s.train if r.task == "medquad"}
    extra = s.pool[len(s.train):]
    assert {r.focus.lower() for r in extra} <= {r.focus.lower() for r in s.pool}
    evaluated = {r.id for v in s.sets.values() for r in v} | {r.id for r in s.dev_all}
    assert not {r.id for r in s.pool} & evaluated  # no held-out or dev question in the pool
    held_out_focuses = {r.focus.lower() for r in s.sets["heldout_focus"]} | {r.focus.lower() for r in s.dev_all}
    assert not {r.focus.lower() for r in extra} & held_out_focuses
    assert train_focuses and all(s.gold["pool"])
    with pytest.raises(InputError, match="pool_medquad=4 must be 0 or >= train_medquad=8"):
        build_setup(tiny(data_dir, tmp_path, pool_medquad=4))


def test_scale_part_trains_arm_e_on_nested_prefixes_of_the_pool_and_chooses_eL_lr(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, scale_sizes=(5, 15), scale_lrs=(1e-5, 3e-5))
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert len(comp.setup.pool) == 15 and arm_parts(comp)[-4:] == ["scale", "eL_s0", "eL_s1", "eL_s2"]
    calls = []
    # dev hits per (questions, lr): on the whole pool (15) the lower lr wins
    hits = {(5, 1e-5): 1, (15, 1e-5): 3, (5, 3e-5): 4, (15, 3e-5): 2}
    monkeypatch.setattr(comp, "models", lambda: (None,) * 4 + ("base",) + (None,))
    monkeypatch.setattr(comp, "doc_losses", lambda pool: None)
    monkeypatch.setattr(comp, "train", lambda arm, seed, settings, questions: calls.append(
        (arm, seed, settings["retriever_lr"], questions)) or ({"retriever": hits[questions, settings["retriever_lr"]]}, []))
    monkeypatch.setattr(comp, "recall", lambda rp, recs, gold, **_: [{"gold_rank": 1 if rp != "base" and i < rp else 3}
                                                               for i in range(len(recs))])
    assert comp.pool_settings()["retriever_lr"] == cfg.retriever_lr  # before the scale part: the sweep's
    comp.run(["scale"])
    assert calls == [("e", 0, 1e-5, 5), ("e", 0, 1e-5, 15), ("e", 0, 3e-5, 5), ("e", 0, 3e-5, 15)]
    with open(os.path.join(cfg.out_dir, "scale.json")) as f:
        rows = json.load(f)["rows"]
    n = len(comp.setup.dev_all)
    assert [(r["questions"], r["dev_recall@1"]) for r in rows] == [(0, 0.0)] + [
        (q, min(hits[q, lr], n) / n) for lr in (1e-5, 3e-5) for q in (5, 15)]
    assert comp.pool_settings()["retriever_lr"] == 1e-5 and comp.settings()["retriever_lr"] == cfg.retriever_lr
    with pytest.raises(InputError, match="a prefix of the pool .questions=. is for arm e only"):
        Comparison.train(comp, "d", 0, questions=5)


def test_passes_part_trains_on_the_whole_pool_at_the_chosen_lr_and_sets_eL_epochs(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, scale_sizes=(15,), pool_epochs=(3, 1, 2))
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert arm_parts(comp)[-5:] == ["scale", "passes", "eL_s0", "eL_s1", "eL_s2"]
    with pytest.raises(InputError, match="run part scale first"):
        comp.run(["passes"])
    n = len(comp.setup.dev_all)
    scale_row = {"questions": 15, "retriever_lr": 1e-5, "dev_recall@1": 1 / n, "dev_recall@7": 1.0}
    with open(os.path.join(cfg.out_dir, "scale.json"), "w") as f:
        json.dump({"chosen_lr": 1e-5, "rows": [scale_row, {**scale_row, "retriever_lr": 3e-5, "dev_recall@1": 1.0}]}, f)
    hits = {2: 3, 3: 3}  # dev hits per number of passes (the scale part's one pass: 1); 2 and 3 tie, fewer passes win
    calls = fake_pool_training(comp, monkeypatch, lambda settings: hits[settings["epochs"]])
    assert comp.pool_settings()["epochs"] == cfg.epochs == 1
    comp.run(["passes"])
    assert calls == [("e", {"retriever_lr": 1e-5, "epochs": e}, 15) for e in (2, 3)]  # one pass: the scale part's
    assert comp.pool_settings() == {**comp.settings(), "retriever_lr": 1e-5, "epochs": 2}


def test_negatives_part_compares_batches_with_and_without_in_batch_negatives(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, scale_sizes=(15,), negatives_batch=4)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert arm_parts(comp)[-5:] == ["scale", "negatives", "eL_s0", "eL_s1", "eL_s2"]
    with pytest.raises(InputError, match="run parts scale"):
        comp.run(["negatives"])
    n = len(comp.setup.dev_all)
    scale_row = {"questions": 15, "retriever_lr": 1e-5, "dev_recall@1": 2 / n, "dev_recall@7": 1.0, "dev_ranks": []}
    with open(os.path.join(cfg.out_dir, "scale.json"), "w") as f:
        json.dump({"chosen_lr": 1e-5, "rows": [scale_row, {**scale_row, "retriever_lr": 3e-5, "dev_recall@1": 1.0}]}, f)
    hits = {False: 2, True: 3}  # dev hits: batch 4 without negatives ties the batch-1 row (kept), with them wins
    calls = fake_pool_training(comp, monkeypatch, lambda settings: hits[settings["in_batch_negatives"]])
    comp.run(["negatives"])
    assert calls == [("e", {"retriever_lr": 1e-5, "epochs": 1, "batch_size": 4, "in_batch_negatives": neg}, 15)
                     for neg in (False, True)]
    assert comp.pool_settings() == {**comp.settings(), "retriever_lr": 1e-5, "batch_size": 4,
                                    "in_batch_negatives": True}
    hits[True] = 1  # neither batch-4 row beats batch 1 now: eL keeps it
    os.remove(os.path.join(cfg.out_dir, "negatives.json"))
    comp.run(["negatives"])
    assert comp.pool_settings()["batch_size"] == cfg.batch_size == 1
    assert comp.pool_settings()["in_batch_negatives"] is False


def test_posterior_part_varies_the_kl_target_temperature_against_eL_row(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, scale_sizes=(15,), posterior_betas=(0.3, 1.0, 0.1))
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert arm_parts(comp)[-5:] == ["scale", "eL_s0", "eL_s1", "eL_s2", "posterior"]
    with pytest.raises(InputError, match="run parts scale"):
        comp.run(["posterior"])
    n = len(comp.setup.dev_all)
    scale_row = {"questions": 15, "retriever_lr": 1e-5, "dev_recall@1": 2 / n, "dev_recall@7": 1.0, "dev_ranks": []}
    with open(os.path.join(cfg.out_dir, "scale.json"), "w") as f:  # eL's row is the whole pool at the chosen lr
        json.dump({"chosen_lr": 1e-5, "rows": [{**scale_row, "questions": 5, "dev_recall@1": 1.0}, scale_row,
                                               {**scale_row, "retriever_lr": 3e-5, "dev_recall@1": 1.0}]}, f)
    hits = {0.1: 3, 0.3: 1}  # dev hits: beta 0.1 beats eL's row (2), 0.3 does not
    calls = fake_pool_training(comp, monkeypatch, lambda settings: hits[settings["kl_beta"]])
    eL = comp.pool_settings()
    comp.run(["posterior"])
    assert calls == [("e", {"retriever_lr": 1e-5, "epochs": 1, "batch_size": 1, "in_batch_negatives": False,
                            "kl_beta": beta}, 15) for beta in (0.1, 0.3)]  # beta 1 is eL's saved row, not rerun
    with open(os.path.join(cfg.out_dir, "posterior.json")) as f:
        out = json.load(f)
    assert out["baseline"]["dev_recall@1"] == 2 / n and out["baseline"]["kl_beta"] == 1.0
    assert out["best_beta"] == 0.1 and comp.pool_settings() == eL  # dev only: eL's settings stay


def test_weights_part_soups_eL_seeds_and_interpolates_them_with_the_base_retriever(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, weight_alphas=(0.25, 1.0))
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert arm_parts(comp)[-4:] == ["eL_s0", "eL_s1", "eL_s2", "weights"]
    base = {"w": np.array([0.0, 4.0])}
    trained = {seed: {"retriever": {"w": np.array([seed + 1.0, 8.0])}} for seed in cfg.seeds}
    loaded, seen = [], []
    monkeypatch.setattr(comp, "models", lambda: (None,) * 4 + (base,) + (None,))
    monkeypatch.setattr(comp, "trained", lambda arm, seed: loaded.append((arm, seed)) or trained[seed])

    def dev_recall(params, which):  # dev hits: the first w[0] of 4 questions
        seen.append(params["w"])
        ranks = [1 if i < params["w"][0] else 3 for i in range(4)]
        return {"dev_recall@1": float(np.mean([r == 1 for r in ranks])), "dev_recall@7": 1.0, "dev_ranks": ranks}

    monkeypatch.setattr(comp, "dev_recall", dev_recall)
    comp.run(["weights"])
    assert loaded == [("eL", seed) for seed in cfg.seeds]  # eL's own trained weights, never retrained here
    # base; seeds 0-2; their soup (the mean); seed 0 and the soup at alpha 0.25 ((1 - a) * base + a * trained)
    np.testing.assert_allclose(seen, [[0, 4], [1, 8], [2, 8], [3, 8], [2, 8], [0.25, 5], [0.5, 5]])
    with open(os.path.join(cfg.out_dir, "weights.json")) as f:
        out = json.load(f)
    assert [(r["source"], r["alpha"]) for r in out["rows"]] == [
        ("base", 0.0), ("eL seed 0", 1.0), ("eL seed 1", 1.0), ("eL seed 2", 1.0), ("soup", 1.0),
        ("eL seed 0", 0.25), ("soup", 0.25)]
    assert out["best"] == {"source": "eL seed 2", "alpha": 1.0}
    table = report_dev.weights_table({"weights": out}).split("\n")
    assert table[-6].startswith("| eL seed 0 | 1 | 0.250 ± 0.250 | - | 1.000 |")  # the reference row
    assert table[-1].startswith("| soup | 0.25 | 0.250 ± 0.250 | 1 | 1.000 |")


def test_weights_eB_interpolates_seed_0_and_searches_a_corpus_each_row_re_encoded(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, both_sides=True, weight_alphas=(0.5, 1.0))
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    names = arm_parts(comp)
    assert names.index("weights_eB") == names.index("weights") + 1 > names.index("eB_s2")
    base = {"w": np.array([0.0, 4.0])}
    loaded, refreshed, seen = [], [], []
    monkeypatch.setattr(comp, "models", lambda: (None,) * 4 + (base,) + (None,))
    monkeypatch.setattr(comp, "trained", lambda arm, seed: loaded.append((arm, seed)) or
                        {"retriever": {"w": np.array([4.0, 8.0])}})
    monkeypatch.setattr(comp, "refresh_index", lambda tag, params: refreshed.append((tag, list(params["w"]))) or tag)

    def dev_recall(params, which, docs="base"):  # dev hits: the first w[0] of 4 questions
        seen.append((list(params["w"]), docs))
        ranks = [1 if i < params["w"][0] else 3 for i in range(4)]
        return {"dev_recall@1": float(np.mean([r == 1 for r in ranks])), "dev_recall@7": 1.0, "dev_ranks": ranks}

    monkeypatch.setattr(comp, "dev_recall", dev_recall)
    comp.run(["weights_eB"])
    assert loaded == [("eB", 0)]  # seed 0 only: no soup of both-sides retrievers
    # the base retriever searches the base index; every other row the corpus its own weights re-encoded
    assert refreshed == [("eB_s0", [4.0, 8.0]), ("eB_s0-wise0.5", [2.0, 6.0])]
    assert seen == [([0.0, 4.0], "base"), ([4.0, 8.0], "eB_s0"), ([2.0, 6.0], "eB_s0-wise0.5")]
    with open(os.path.join(cfg.out_dir, "weights_eB.json")) as f:
        out = json.load(f)
    assert out["arm"] == "eB" and out["best"] == {"source": "eB seed 0", "alpha": 1.0}
    table = report_dev.weights_table({"weights_eB": out}, "weights_eB").split("\n")
    assert table[0].startswith("Arm eB (both encoder sides") and table[-2].startswith("| eB seed 0 | 1 | 1.000 ± 0.000 | - |")
    assert table[-1].startswith("| eB seed 0 | 0.5 | 0.500 ± 0.289 | 0.5 |")
    with pytest.raises(InputError, match="unknown part 'weights_eB'"):  # without both sides there is no eB
        Comparison(dataclasses.replace(cfg, both_sides=False, out_dir=str(tmp_path / "out2")), progress=False,
                   log=lambda _: None).run(["weights_eB"])


def test_ensemble_eB_scores_every_passage_by_both_retrievers_and_finds_what_neither_ranks_first(data_dir, tmp_path,
                                                                                                monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, both_sides=True, weight_alphas=(0.5,), ensemble_weights=(0.5,))
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    names = arm_parts(comp)
    assert names.index("ensemble_eB") == names.index("weights_eB") + 1
    s = comp.setup
    gold = [g[0] for g in s.gold["dev_all"]]
    # every question: the base retriever puts decoy a above gold, eB decoy b; their mean puts gold first
    base_S, eB_S = np.full((2, len(gold), s.n_main), -1.0, np.float32)
    for i, g in enumerate(gold):
        a, b = [p for p in range(s.n_main) if p not in s.gold["dev_all"][i]][:2]
        base_S[i, [g, a, b]], eB_S[i, [g, a, b]] = (1.0, 1.2, 0.0), (1.0, 0.0, 1.2)
    retrievers, refreshed = [], []

    class Stub:  # a retriever whose "embedding" of a question is its row of scores
        def __init__(self, S):
            self.index = type("I", (), {"exact_scores": staticmethod(lambda Q: Q)})
            self.encode_queries = lambda qs: S[[next(i for i, r in enumerate(s.dev_all) if r.question == q)
                                                for q in qs]]

    monkeypatch.setattr(comp, "models", lambda: (None,) * 4 + ("base",) + (None,))
    monkeypatch.setattr(comp, "trained", lambda arm, seed: {"retriever": "eB"})
    monkeypatch.setattr(comp, "refresh_index", lambda tag, params: refreshed.append((tag, params)) or tag)
    monkeypatch.setattr(comp, "_retriever", lambda rp, docs, view: retrievers.append((rp, docs, view)) or
                        Stub(base_S if rp == "base" else eB_S))
    comp.run(["ensemble_eB"])
    assert refreshed == [("eB_s0", "eB")] and retrievers == [("base", "base", "main"), ("eB", "eB_s0", "main")]
    with open(os.path.join(cfg.out_dir, "ensemble_eB.json")) as f:
        out = json.load(f)
    assert [(r["weight"], r["dev_recall@1"]) for r in out["rows"]] == [(0.0, 0.0), (0.5, 1.0), (1.0, 0.0)]
    assert out["rows"][0]["dev_ranks"] == [2] * len(gold) and out["best_weight"] == 0.5
    table = report_dev.ensemble_table({"ensemble_eB": out}).split("\n")
    assert table[0].startswith("Arm eB seed 0 (both encoder sides") and table[-1].startswith("| 1 | 0.000 ± 0.000 | - |")
    assert table[-2].startswith(f"| 0.5 | 1.000 ± 0.000 | {2 ** (1 - len(gold)):.2g} |")  # exact McNemar
    with pytest.raises(InputError, match="unknown part 'ensemble_eB'"):  # without both sides there is no eB
        Comparison(dataclasses.replace(cfg, both_sides=False, out_dir=str(tmp_path / "out2")), progress=False,
                   log=lambda _: None).run(["ensemble_eB"])


def test_sweep_second_stage_varies_sampled_and_epochs_at_the_best_loss_and_lr(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, sweep_lrs=(1e-5, 3e-5), sweep_losses=("ranknet", "kl"))
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    n = len(comp.setup.dev)
    # dev recall@1 each setting reaches (in quarters of the dev set): kl at 3e-5 wins stage 1, S=16 x 3 epochs overall
    quarters = {("kl", 3e-5, 8, 1): 2, ("kl", 3e-5, 16, 3): 3, ("ranknet", 1e-5, 16, 1): 4}
    calls = []

    def train(arm, seed, settings):
        key = (settings["rank_loss"], settings["retriever_lr"], settings["num_sampled"], settings["epochs"])
        calls.append(key)
        return {"retriever": quarters.get(key, 1) * n // 4}, [{"agreement": 0.5}]

    monkeypatch.setattr(comp, "models", lambda: (None,) * 4 + (0,) + (None,))
    monkeypatch.setattr(comp, "train", train)
    monkeypatch.setattr(comp, "recall", lambda hits, recs, gold, **_: [{"gold_rank": 1 if i < hits else 2}
                                                                   for i in range(len(recs))])
    assert comp.settings() == {"retriever_lr": cfg.retriever_lr, "rank_loss": cfg.rank_loss, "num_sampled": 8,
                               "epochs": 1}
    comp.run(["sweep"])
    assert calls[:4] == [("ranknet", 1e-5, 8, 1), ("ranknet", 3e-5, 8, 1), ("kl", 1e-5, 8, 1), ("kl", 3e-5, 8, 1)]
    assert calls[4:] == [("kl", 3e-5, 8, 3), ("kl", 3e-5, 16, 1), ("kl", 3e-5, 16, 3)]  # (8, 1) is not rerun
    assert comp.settings() == {"retriever_lr": 3e-5, "rank_loss": "kl", "num_sampled": 16, "epochs": 3}


def test_both_sides_arm_trains_the_document_side_and_searches_a_corpus_its_encoder_reencoded(data_dir, tmp_path,
                                                                                              monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, both_sides=True)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert arm_parts(comp)[-6:] == ["eL_s0", "eL_s1", "eL_s2", "eB_s0", "eB_s1", "eB_s2"]
    base_llm, base_r, trained_r = {"w": np.zeros(2, np.float32)}, {"r": np.zeros(2, np.float32)}, \
        {"r": np.ones(2, np.float32)}
    monkeypatch.setattr(comp, "models", lambda: ("llm_cfg", base_llm, None, "rcfg", base_r, None))

    # Training: eB's examples carry the candidates' tokens (encoded live), eL's the base index's vectors.
    class Built(Exception):
        pass

    def examples(doc_losses, pool, n, live_docs):
        raise Built(pool, n, live_docs)

    monkeypatch.setattr(comp, "doc_losses", lambda pool: None)
    monkeypatch.setattr(comp, "examples", examples)
    for arm, live in (("eB", True), ("eL", False)):
        with pytest.raises(Built) as e:
            comp.train(arm, 0)
        assert e.value.args == (True, len(comp.setup.pool), live)

    # Evaluation: every measure of eB searches the index its trained encoder re-encoded; eL the base index.
    calls = []
    monkeypatch.setattr(comp, "train", lambda arm, seed: ({"llm": base_llm, "retriever": trained_r}, [{"loss": 1.0}]))
    monkeypatch.setattr(comp, "refresh_index", lambda docs, rp: calls.append(("refresh", docs, rp["r"].sum())) or docs)
    monkeypatch.setattr(comp, "dev_recall", lambda rp, which, docs: calls.append(("dev", which, docs)) or
                        {"dev_recall@1": 0.5})
    monkeypatch.setattr(comp, "measure", lambda name, recs, llm, rp, generate, docs: calls.append(
        ("measure", name, docs, llm is base_llm, rp["r"].sum())) or [])
    comp.run(["eB_s1", "eL_s1"])
    sets = ("heldout_focus", "heldout_doc", "pubmedqa_test")
    assert calls == [("refresh", "eB_s1", 2.0), ("dev", "dev_all", "eB_s1")] + \
        [("measure", s, "eB_s1", True, 2.0) for s in sets] + [("measure", s, "base", True, 2.0) for s in sets]
    with open(os.path.join(cfg.out_dir, "eB_s1.json")) as f:
        out = json.load(f)
    assert out["dev_all"] == {"dev_recall@1": 0.5} and "refresh_seconds" in out
    assert out["settings"] == comp.pool_settings() and out["train_questions"] == len(comp.setup.pool)
    with pytest.raises(KeyError, match="no index encoded by 'eB_s2'"):
        Comparison.index(comp, "eB_s2")


def test_joint_pool_arms_train_the_generator_live_on_the_whole_pool(data_dir, tmp_path, monkeypatch):
    """cL / dL: arms c / d on eL's pool at eL's settings; the generator trains, so no loss is cached."""
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, joint_pool_seeds=(0,))
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert arm_parts(comp)[-6:] == ["eL_s0", "eL_s1", "eL_s2", "dL_s0", "cL_s0", "dgL_s0"]
    assert not any(n.startswith(("chat_cL", "chat_dL", "chat_dgL")) for n in comp.part_names())  # trained generators
    assert comp.arm_settings("dL") == comp.arm_settings("cL") == comp.pool_settings()
    base_llm, base_r = {"w": np.zeros(2, np.float32)}, {"r": np.zeros(2, np.float32)}
    monkeypatch.setattr(comp, "models", lambda: ("llm_cfg", base_llm, None, "rcfg", base_r, None))

    class Built(Exception):
        pass

    def examples(doc_losses, pool, n, live_docs):
        raise Built(doc_losses, pool, n, live_docs)

    def no_cache(pool):
        raise AssertionError("a live generator's losses are not cached")

    monkeypatch.setattr(comp, "doc_losses", no_cache)
    monkeypatch.setattr(comp, "examples", examples)
    for arm in ("cL", "dL"):
        with pytest.raises(Built) as e:
            comp.train(arm, 0)
        assert e.value.args == (None, True, len(comp.setup.pool), False)

    # Evaluation: dL with both trained models, cL with its generator and the base retriever, dgL with dL's generator
    # and the base retriever; no MCQ check.
    trained = {"llm": {"w": np.ones(2, np.float32)}, "retriever": {"r": np.ones(2, np.float32)}}
    calls = []
    monkeypatch.setattr(comp, "train", lambda arm, seed: (trained, [{"loss": 1.0}]))
    monkeypatch.setattr(comp, "measure", lambda name, recs, llm, rp, generate, docs: calls.append(
        (name, llm["w"].sum(), rp["r"].sum(), docs)) or [])
    monkeypatch.setattr(comp, "mcq", lambda llm: pytest.fail("no MCQ check for the pool arms"))
    with pytest.raises(InputError, match="part dgL_s0 needs JMLR's trained weights .*run part dL_s0 first"):
        comp.run(["dgL_s0"])
    comp.run(["dL_s0", "cL_s0"])
    save_tree(os.path.join(cfg.work_dir, "params", "dL_s0.safetensors"), {"llm": {"w": np.full(2, 3, np.float32)}})
    comp.run(["dgL_s0"])
    sets = ("heldout_focus", "heldout_doc", "pubmedqa_test")
    assert calls == [(s, 2.0, 2.0, "base") for s in sets] + [(s, 2.0, 0.0, "base") for s in sets] + \
        [(s, 6.0, 0.0, "base") for s in sets]
    for arm in ("dL", "cL"):
        with open(os.path.join(cfg.out_dir, f"{arm}_s0.json")) as f:
            assert json.load(f)["train_questions"] == len(comp.setup.pool)
    with pytest.raises(InputError, match="arm dL trains on the pool, and this config has none"):
        Comparison(tiny(data_dir, tmp_path / "no_pool"), progress=False, log=lambda _: None).run(["dL_s0"])


def test_sharp_arms_train_eB_and_eR_at_the_temperature_posterior_chose_on_dev(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, posterior_betas=(0.1,), both_sides=True, second_round=True,
               sharp_posterior=True)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert arm_parts(comp)[-7:] == ["posterior", "eT_s0", "eT_s1", "eT_s2", "eTR_s0", "eTR_s1", "eTR_s2"]
    with pytest.raises(InputError, match="arm eT trains at the KL temperature part posterior chooses .*run part "
                                         "posterior first"):
        comp.run(["eT_s0"])
    assert not os.path.exists(os.path.join(cfg.out_dir, "eT_s0.json"))
    with open(os.path.join(cfg.out_dir, "posterior.json"), "w") as f:
        json.dump({"best_beta": 0.1, "rows": []}, f)
    eL = comp.pool_settings()
    assert "kl_beta" not in eL and comp.arm_settings("eB") == eL  # eB and eR keep beta 1
    assert comp.arm_settings("eT") == comp.arm_settings("eTR") == {**eL, "kl_beta": 0.1}
    with pytest.raises(InputError, match="part eTR_s2 continues arm eT's training from .*eT_s2.safetensors: run part "
                                         "eT_s2 first"):
        comp.second_round(2, "eTR")
    # the temperature reaches the step: eT trains both sides (candidates live) from the base retriever
    monkeypatch.setattr(comp, "models", lambda: ("llm_cfg", {"w": np.zeros(2)}, None, "rcfg", {"r": np.zeros(2)}, None))
    monkeypatch.setattr(comp, "doc_losses", lambda pool: "losses")
    seen = {}

    def examples(doc_losses, pool, n, live_docs):
        seen.update(live_docs=live_docs, pool=pool)
        return "examples"

    class Built(Exception):
        pass

    def step_configs(llm, rcfg, jcfg, optim):
        raise Built(jcfg)

    monkeypatch.setattr(comp, "examples", examples)
    monkeypatch.setattr("jmlr_jax.compare.evidence.make_optimizer", lambda params, optim: None)
    monkeypatch.setattr("jmlr_jax.compare.evidence.StepConfigs", step_configs)
    with pytest.raises(Built) as e:
        comp.train("eT", 0)
    assert e.value.args[0].kl_beta == 0.1 and seen == {"live_docs": True, "pool": True}


def test_second_round_mines_with_eB_and_caches_only_new_pairs(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, both_sides=True, second_round=True, num_candidates=4)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert arm_parts(comp)[-6:] == ["eB_s0", "eB_s1", "eB_s2", "eR_s0", "eR_s1", "eR_s2"]
    with pytest.raises(InputError, match="part eR_s1 continues arm eB's training from .*eB_s1.safetensors: run part "
                                         "eB_s1 first"):
        comp.second_round(1)
    N = len(comp.setup.pool)
    rng = np.random.RandomState(0)
    base = np.stack([rng.choice(50, 4, replace=False) for _ in range(N)])
    mined = base.copy()
    mined[:, 2:] += 100  # two new passages per question, two cached ones
    np.save(os.path.join(cfg.work_dir, f"candidates-C4-pool{N}.npy"), base)
    np.save(os.path.join(cfg.work_dir, f"doc_losses-C4-pool{N}.npy"), -base.astype(np.float32))  # cached: -passage
    save_tree(os.path.join(cfg.work_dir, "params", "eB_s1.safetensors"), {"retriever": {"w": np.ones(2, np.float32)}})

    class Ex:  # one question's blocks: its row index in the question block, its candidates' ids in the doc block
        candidates = None

        def __call__(self, i):
            return {"bos": np.zeros(1), "bos_valid": np.ones(1), "question": np.full(2, i), "question_valid": np.ones(2),
                    "answer": np.zeros(2), "answer_valid": np.ones(2), "docs": self.candidates[i][:, None] * 1.0,
                    "docs_valid": np.ones((4, 1))}

    def examples(pool, candidates=None, **_):
        ex = Ex()
        ex.candidates = candidates
        return ex

    computed = []

    def loss_fn():  # a made-up loss that names its (question, passage); counts the rows it is given
        return lambda params, b: computed.append(len(b["docs"])) or 1000.0 * b["question"][:, 0] + b["docs"][:, 0]

    calls = []
    monkeypatch.setattr(comp, "models", lambda: (None, "llm", None, None, "base", None))
    monkeypatch.setattr(comp, "examples", examples)
    monkeypatch.setattr(comp, "_loss_fn", loss_fn)
    monkeypatch.setattr(comp, "refresh_index", lambda docs, rp: calls.append(("refresh", docs)) or docs)
    monkeypatch.setattr(comp, "search", lambda rp, recs, k, docs, view: calls.append(
        ("search", docs, view, rp["w"].sum(), k)) or mined)
    rparams, cands, losses = comp.second_round(1)
    assert calls == [("refresh", "eB_s1"), ("search", "eB_s1", "train", 2.0, 4)] and rparams["w"].sum() == 2.0
    np.testing.assert_array_equal(cands, mined)
    np.testing.assert_array_equal(losses[:, :2], -base[:, :2])  # reused, not recomputed
    np.testing.assert_array_equal(losses[:, 2:], 1000.0 * np.arange(N)[:, None] + mined[:, 2:])
    assert computed == [4] * ((2 * N + 3) // 4)  # only the new pairs, 4 rows a call
    calls.clear()
    comp._second_rounds.clear()  # a new run: only the files in the work dir remain
    comp.second_round(1)  # mined and cached: nothing searched or computed again
    assert calls == [] and len(computed) == (2 * N + 3) // 4
    # a candidate set whose every pair is cached already is computed from nothing and still saved (publish reads it)
    filled = comp.doc_losses(True, base[:, ::-1].copy(), "again")
    np.testing.assert_array_equal(np.load(comp._cache("doc_losses", True, "again")), filled)
    np.testing.assert_array_equal(filled, -base[:, ::-1])
    assert len(computed) == (2 * N + 3) // 4


def test_second_round_arm_trains_from_eB_on_its_mined_candidates(data_dir, tmp_path, monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, both_sides=True, second_round=True)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    eB_r, mined, losses = {"r": np.ones(2, np.float32)}, np.zeros((3, 16), int), np.zeros((3, 16), np.float32)
    monkeypatch.setattr(comp, "models", lambda: ("llm_cfg", {"w": np.zeros(2)}, None, "rcfg", {"r": np.zeros(2)}, None))
    monkeypatch.setattr(comp, "second_round", lambda seed, arm: (eB_r, mined, losses))

    class Built(Exception):
        pass

    def arm_loop(root, meta, params, *args, **kw):
        raise Built(params["retriever"])

    def examples(doc_losses, pool, live_docs, candidates, **_):
        assert doc_losses is losses and pool and live_docs and candidates is mined
        return "examples"

    monkeypatch.setattr(comp, "examples", examples)
    monkeypatch.setattr("jmlr_jax.compare.evidence.make_optimizer", lambda params, optim: None)
    monkeypatch.setattr("jmlr_jax.compare.arm_loop.ArmLoop", arm_loop)
    with pytest.raises(Built) as e:
        comp.train("eR", 0)
    assert e.value.args[0] is eB_r  # training starts from eB's retriever
    calls = []
    monkeypatch.setattr(comp, "second_round", lambda seed, arm: calls.append(("mine", seed, arm)))
    monkeypatch.setattr(comp, "train", lambda arm, seed: calls.append(("train", arm)) or ({"retriever": eB_r},
                                                                                          [{"loss": 1.0}]))
    monkeypatch.setattr(comp, "refresh_index", lambda docs, rp: calls.append(("refresh", docs)) or docs)
    monkeypatch.setattr(comp, "dev_recall", lambda rp, which, docs: calls.append(("dev", docs)) or {})
    monkeypatch.setattr(comp, "measure", lambda name, recs, llm, rp, generate, docs: calls.append(("measure", docs)) or [])
    comp.run(["eR_s0"])
    # mining and caching first (timed on their own), then training, the refreshed index, dev and the measures
    assert calls == [("mine", 0, "eR"), ("train", "eR"), ("refresh", "eR_s0"), ("dev", "eR_s0")] + [("measure", "eR_s0")] * 3
    with open(os.path.join(cfg.out_dir, "eR_s0.json")) as f:
        out = json.load(f)
    assert {"mine_seconds", "train_seconds", "refresh_seconds"} <= set(out)


def test_extra_focuses_join_the_pool_and_only_the_training_view_of_the_corpus(data_dir, tmp_path, monkeypatch):
    from jmlr_jax.compare import evidence as E
    from jmlr_jax.retrieval.index import IndexConfig, SearchConfig, TokenIndex

    cfg = tiny(data_dir, tmp_path, pool_medquad=100, extra_train_focuses=1)
    s0, s = build_setup(tiny(data_dir, tmp_path, pool_medquad=100)), build_setup(cfg)
    # the pool grows at its end; the corpus evaluations search, its test abstracts and every gold do not move
    assert s.pool[: len(s0.pool)] == s0.pool and s.n_extra == len(s.pool) - len(s0.pool) == 4
    assert s.corpus.passages[: s.n_eval] == s0.corpus.passages and (s.n_main, s.n_eval) == (s0.n_main, s0.n_eval)
    extra_ids = {r.evidence_id for r in s.pool[len(s0.pool):]}
    assert len(s.corpus) > s.n_eval and {p.doc_id for p in s.corpus.passages[s.n_eval:]} == extra_ids
    assert all(s.gold[k] == s0.gold[k] for k in s0.gold if k != "pool")
    assert all(min(g) >= s.n_eval for g in s.gold["pool"][len(s0.pool):])
    with pytest.raises(InputError, match="set EvidenceConfig.pool_medquad too"):
        build_setup(tiny(data_dir, tmp_path, extra_train_focuses=1))

    def build(corpus, *_, **__):  # every token vector holds its passage's index in the whole corpus
        lens = np.arange(len(corpus)) % 3 + 1
        return TokenIndex(corpus.passages, np.repeat(np.arange(len(corpus)), lens)[:, None].astype(np.float16),
                          np.r_[0, np.cumsum(lens)], IndexConfig(), SearchConfig(), "v", {})

    monkeypatch.setattr(E, "build_index", build)
    monkeypatch.setattr(E, "save_index", lambda index, path: None)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    monkeypatch.setattr(comp, "models", lambda: (None,) * 4 + ("base", None))
    n, m, end = s.n_main, s.n_eval, len(s.corpus)
    for view, ids in (("main", range(n)), ("eval", range(m)), ("train", [*range(n), *range(m, end)])):
        idx = comp.index(view=view)
        assert idx.passages == [s.corpus.passages[i] for i in ids]
        assert [idx.emb[idx.offsets[j]: idx.offsets[j + 1], 0].tolist() for j in range(len(ids))] == \
            [[i] * (i % 3 + 1) for i in ids]
    # training candidates are mined from the training view, evaluations search main (or eval)
    views = []
    monkeypatch.setattr(comp, "search", lambda rp, recs, k, docs, view: views.append((len(recs), view)) or
                        np.zeros((len(recs), k), int))
    comp.candidates(pool=True)
    assert views == [(len(s.pool), "train")]
    # keep_pool_candidates: eL's questions are mined from the corpus alone, only the extra focuses' from the
    # training view, cached apart from the other mining with a key that says so
    kept = Comparison(dataclasses.replace(cfg, keep_pool_candidates=True), progress=False, log=lambda _: None)
    monkeypatch.setattr(kept, "search", lambda rp, recs, k, docs, view: views.append((len(recs), view)) or
                        np.zeros((len(recs), k), int))
    kept.candidates(pool=True)
    assert views[1:] == [(len(s.pool) - s.n_extra, "main"), (s.n_extra, "train")]
    assert kept._cache("candidates", True).endswith("-pool%d-kept.npy" % len(s.pool))
    assert kept._cache_key(True)["kept_candidates"] == len(s.pool) - s.n_extra
    assert "kept_candidates" not in comp._cache_key(True)


def test_focuses_part_compares_the_pool_without_and_with_extra_focuses_and_chooses_eF_lr(data_dir, tmp_path,
                                                                                        monkeypatch):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100, extra_train_focuses=1, focus_lrs=(1e-5, 3e-5))
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    assert arm_parts(comp)[-4:] == ["focuses", "eF_s0", "eF_s1", "eF_s2"] and "eL_s0" not in arm_parts(comp)
    N = len(comp.setup.pool)
    hits = {(N - 4, cfg.retriever_lr): 4, (N, 1e-5): 2, (N, 3e-5): 3}  # whole pool: 3e-5 is best
    calls = fake_pool_training(comp, monkeypatch, lambda st: st["hits"])
    monkeypatch.setattr(comp, "train", lambda arm, seed, settings, questions: calls.append(
        (arm, settings["retriever_lr"], questions)) or ({"retriever": hits[questions, settings["retriever_lr"]]}, []))
    published = []
    monkeypatch.setattr(comp, "publish_cache", lambda: published.append(True))
    assert comp.pool_settings()["retriever_lr"] == cfg.retriever_lr
    comp.run(["focuses"])
    assert calls == [("e", cfg.retriever_lr, N - 4), ("e", 1e-5, N), ("e", 3e-5, N)]  # eL's pool at eL's lr first
    assert published == [True]  # the pool's candidates and losses, for a fresh checkout
    with open(os.path.join(cfg.out_dir, "focuses.json")) as f:
        out = json.load(f)
    assert out["chosen_lr"] == 3e-5 and out["extra_questions"] == 4 and out["question_leaks"] == []
    assert comp.pool_settings()["retriever_lr"] == 3e-5 and comp.pool_settings(extra=False)["retriever_lr"] == \
        cfg.retriever_lr
    with pytest.raises(InputError, match="arms eF / eK \\(eFB / eKB\\) train on the pool with extra focuses"):
        comp.run(["eL_s0"])
    with pytest.raises(InputError, match="arms eF / eK \\(eFB / eKB\\) train on the pool with extra focuses"):
        Comparison(tiny(data_dir, tmp_path, pool_medquad=100), progress=False, log=lambda _: None).run(["eF_s0"])
    with pytest.raises(InputError, match="arm eK's pool keeps eL's candidates"):
        comp.run(["eK_s0"])
    # the kept-candidates variant: its own dev part and arm, its lr read from its own part
    kept = Comparison(dataclasses.replace(cfg, keep_pool_candidates=True), progress=False, log=lambda _: None)
    assert arm_parts(kept)[-4:] == ["focuses_kept", "eK_s0", "eK_s1", "eK_s2"]
    assert kept.pool_settings()["retriever_lr"] == cfg.retriever_lr  # focuses.json is eF's, not eK's
    with pytest.raises(InputError, match="arm eK's pool keeps eL's candidates"):
        kept.run(["eF_s0"])
    with pytest.raises(InputError, match="unknown part 'focuses'"):
        kept._part("focuses")  # (run would skip it: eF's focuses.json is there)
    # with both_sides: eB's remedy on that pool (arm eKB), its candidates encoded live in the step
    both = Comparison(dataclasses.replace(cfg, keep_pool_candidates=True, both_sides=True), progress=False,
                      log=lambda _: None)
    assert arm_parts(both)[-7:] == ["focuses_kept", "eK_s0", "eK_s1", "eK_s2", "eKB_s0", "eKB_s1", "eKB_s2"]
    with pytest.raises(InputError, match="arm eK's pool keeps eL's candidates"):
        both.run(["eFB_s0"])

    class Built(Exception):
        pass

    def examples(doc_losses, pool, n, live_docs):
        raise Built(pool, n, live_docs)

    monkeypatch.setattr(both, "models", lambda: (None,) * 6)
    monkeypatch.setattr(both, "doc_losses", lambda pool: None)
    monkeypatch.setattr(both, "examples", examples)
    for arm, live in (("eKB", True), ("eK", False)):
        with pytest.raises(Built) as e:
            both.train(arm, 0)
        assert e.value.args == (True, N, live)


@pytest.mark.parametrize("gin_file, pool, extra", [("compare/evidence.gin", 0, 0),
                                                   ("compare/evidence_more_data.gin", 630, 0),
                                                   ("compare/evidence_more_focuses.gin", 630, 120),
                                                   ("compare/evidence_more_focuses_kept.gin", 630, 120)])
def test_comparison_configs_parse(gin_file, pool, extra):
    import gin

    from jmlr_jax import config

    try:
        config.parse([gin_file])
        cfg = EvidenceConfig()
    finally:
        gin.clear_config()
    assert (cfg.pool_medquad, cfg.extra_train_focuses, cfg.rank_loss) == (pool, extra, "kl")
    kept = gin_file.endswith("_kept.gin")
    assert cfg.keep_pool_candidates == kept and cfg.both_sides == (kept or "more_data" in gin_file)


def test_published_cache_restores_into_a_fresh_work_dir_only_for_the_same_data(data_dir, tmp_path):
    cfg = tiny(data_dir, tmp_path, pool_medquad=100)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    N = len(comp.setup.pool)
    cands, losses = np.arange(N * 16).reshape(N, 16), np.linspace(0, 1, N * 16, dtype=np.float32).reshape(N, 16)
    np.save(comp._cache("candidates", True), cands)
    np.save(comp._cache("doc_losses", True), np.where(np.eye(N, 16) > 0, np.nan, losses))
    with pytest.raises(InputError, match="is incomplete"):
        comp.publish_cache()
    np.save(comp._cache("doc_losses", True), losses)
    assert len(comp.publish_cache()) == 2
    fresh = Comparison(dataclasses.replace(cfg, work_dir=str(tmp_path / "fresh")), progress=False, log=lambda _: None)
    np.testing.assert_array_equal(fresh.candidates(pool=True), cands)
    np.testing.assert_array_equal(np.load(fresh._cache("doc_losses", True)), losses)
    # made for other questions (another pool): not used
    other = dataclasses.replace(cfg, work_dir=str(tmp_path / "other"))
    manifest = os.path.join(cfg.out_dir, "cache", os.path.basename(comp._cache("candidates", True))) + ".json"
    with open(manifest) as f:
        key = json.load(f)
    with open(manifest, "w") as f:
        json.dump({**key, "questions": "something else"}, f)
    logs = []
    path = Comparison(other, progress=False, log=logs.append)._cache("candidates", True)
    assert not os.path.exists(path) and "was made for other data or settings" in logs[-1]


def test_chat_parts_answer_with_the_passages_their_part_fed(data_dir, tmp_path, monkeypatch):
    """chat_<part>: the base generator answers in the ChatML template with exactly the passages <part> fed (none
    for arm a), cut to doc_tokens; only for arms whose generator is the base, and only after their part ran."""
    import jax

    from jmlr_jax.compare import evidence_measures
    from jmlr_jax.models import LlamaConfig
    from jmlr_jax.models import llama as llama_lib
    from tests.data.test_lm_data import ByteTok

    cfg = tiny(data_dir, tmp_path, chat_generate=4, doc_tokens=24, answer_tokens=6)
    comp = Comparison(cfg, progress=False, log=lambda _: None)
    names = comp.part_names()
    assert names[-6:] == ["chat_gold", "chat_a", "chat_frozen", "chat_e_s0", "chat_e_s1", "chat_e_s2"]
    assert "chat_a" not in Comparison(dataclasses.replace(cfg, chat_generate=0), progress=False,
                                      log=lambda _: None).part_names()
    with pytest.raises(InputError, match="arm c does not answer with the base generator"):
        comp.run(["chat_c_s0"])
    with pytest.raises(InputError, match="unknown part 'x_s0'"):
        comp.run(["chat_x_s0"])
    with pytest.raises(InputError, match=r"part chat_e_s1 needs part e_s1's passages .*run part e_s1 first"):
        comp.run(["chat_e_s1"])

    llm_cfg = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                          num_kv_heads=2)
    monkeypatch.setattr(comp, "models", lambda: (llm_cfg, llama_lib.init_params(llm_cfg, jax.random.PRNGKey(0)),
                                                 ByteTok()))
    recs = comp.setup.sets["heldout_focus"]
    passages = comp.setup.corpus.passages
    fed = {r.id: [passages[i].id] for i, r in enumerate(recs)}
    for part, feeds in (("a", {r.id: [] for r in recs}), ("e_s1", fed)):
        with open(os.path.join(cfg.out_dir, f"{part}.json"), "w") as f:
            json.dump({"sets": {"heldout_focus": [{"id": r.id, "fed": feeds[r.id]} for r in recs]}}, f)
    asked = []
    real = evidence_measures.greedy_answers
    monkeypatch.setattr(evidence_measures, "greedy_answers",
                        lambda *a: asked.append((a[3].template, a[4])) or real(*a))
    comp.run(["chat_a", "chat_e_s1", "chat_gold"])
    with open(os.path.join(cfg.out_dir, "chat_gold.json")) as f:  # the oracle: its own answer's first passage
        gold_fed = [q["fed"] for q in json.load(f)["sets"]["heldout_focus"]]
    assert all(len(g) == 1 and passages[[p.id for p in passages].index(g[0])].text.split()[:20] ==
               r.answer.split()[:20] for g, r in zip(gold_fed, recs))
    assert asked[2][1][0][1].startswith("Reference:\n" + recs[0].answer[:10])
    for part, (template, requests) in zip(("a", "e_s1"), asked):
        assert template == "chat" and len(requests) == 4
        with open(os.path.join(cfg.out_dir, f"chat_{part}.json")) as f:
            out = json.load(f)
        assert out["arm"] == f"chat_{part[0]}" and out["seed"] == (1 if part == "e_s1" else 0)
        rows = out["sets"]["heldout_focus"]
        assert [q["id"] for q in rows] == [r.id for r in recs[:4]]
        for q, r, (question, given) in zip(rows, recs, requests):
            assert question == r.question and 0 <= q["rougeL"] <= 1 and isinstance(q["output"], str)
            if part == "a":
                assert given == "" and q["fed"] == []
            else:  # the fed passage's head, as the plain template's doc block (24 byte tokens here)
                assert q["fed"] == fed[r.id]
                assert given == ("Reference:\n" + passages[recs.index(r)].with_title)[:24].strip()


def test_readme_commands_name_parts_their_config_runs(tmp_path):
    """Every `--parts=` of a README comparison command is a part its config knows (checked as `run` checks names
    before running anything), on the real data's splits."""
    import re

    import gin

    from jmlr_jax import config
    from tests.conftest import DATA_DIR, require

    require(os.path.isdir(os.path.join(DATA_DIR, "medquad")), DATA_DIR)
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")) as f:
        commands = re.findall(r"python launch/compare_evidence\.py --gin_file=(\S+)((?: --gin\.\S+)*)"
                              r"(?: --parts=([\w,]+))?", f.read())
    by_config: dict[tuple[str, str], set[str]] = {}
    for gin_file, bindings, parts in commands:
        by_config.setdefault((gin_file, bindings), set()).update(p for p in parts.split(",") if p)
    assert len({g for g, _ in by_config}) == 4 and "chat_e_s0" in by_config["compare/evidence.gin", ""]
    names = {}
    for (gin_file, bindings), parts in by_config.items():
        try:  # a misspelt binding is an error here
            config.parse([gin_file], [f"DATA = '{DATA_DIR}'"] + bindings.replace(" --gin.", "\n").split())
            cfg = dataclasses.replace(EvidenceConfig(), out_dir=str(tmp_path / "o"), work_dir=str(tmp_path / "w"))
        finally:
            gin.clear_config()
        comp = Comparison(cfg, progress=False, log=lambda _: None)
        for name in parts:
            comp._runner(name)  # an unknown or misplaced part is an InputError
        names[gin_file, bindings] = comp.part_names()
        assert set(parts) <= set(names[gin_file, bindings])
    core = [v for (g, b), v in names.items() if g == "compare/evidence.gin" and b]  # the arms alone
    assert len(core) == 1 and not any(n.startswith(("dg_", "chat_")) for n in core[0]) and "c_s2" in core[0]

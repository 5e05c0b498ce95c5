"""The README's evidence-comparison tables come from the committed per-question JSON."""
import os
import re

import pytest

from jmlr_jax.compare import report, report_dev

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
RESULTS = os.path.join(ROOT, "results", "comparison")


def _part(arm, seed, nlls, ranks):
    rows = [{"id": f"q{i}", "nll": n, "gold_rank": r} for i, (n, r) in enumerate(zip(nlls, ranks))]
    return {"arm": arm, "seed": seed, "sets": {"heldout_focus": rows, "heldout_doc": rows, "pubmedqa_test": rows}}


def test_paired_differences_pool_seeds_per_question():
    results = {"c_s0": _part("c", 0, [1.0, 2.0, 3.0], [1, 2, None]), "c_s1": _part("c", 1, [1.0, 2.0, 3.0], [1, 1, 1]),
               "d_s0": _part("d", 0, [0.5, 1.5, 2.5], [1, 1, 1]), "d_s1": _part("d", 1, [1.5, 2.5, 3.5], [1, 1, 1])}
    r = report.paired(results, "d", "c", "NLL heldout_focus")
    assert r["per_seed"][0]["diff"] == pytest.approx(-0.5) and r["per_seed"][1]["diff"] == pytest.approx(0.5)
    assert r["pooled"]["diff"] == pytest.approx(0.0) and r["pooled"]["lo"] == pytest.approx(0.0)
    # a seed the base arm lacks is left out, not paired with another seed's run; a seedless base pairs with all
    r2 = report.paired(dict(results, d_s2=_part("d", 2, [9.0, 9.0, 9.0], [1, 1, 1])), "d", "c", "NLL heldout_focus")
    assert sorted(r2["per_seed"]) == [0, 1] and r2["pooled"]["diff"] == pytest.approx(0.0)
    a = report.paired(dict(results, a=_part("a", None, [1.0, 2.0, 3.0], [1, 1, 1])), "d", "a", "NLL heldout_focus")
    assert sorted(a["per_seed"]) == [0, 1]
    r1 = report.paired(results, "d", "c", "recall@1 heldout_focus")
    assert r1["per_seed"][0]["diff"] == pytest.approx(2 / 3) and "mcnemar_p" in r1["per_seed"][0]
    shuffled = dict(results, d_s0=_part("d", 0, [0.5, 1.5, 2.5], [1, 1, 1]))
    shuffled["d_s0"]["sets"]["heldout_focus"] = shuffled["d_s0"]["sets"]["heldout_focus"][::-1]
    with pytest.raises(ValueError, match="different questions"):
        report.paired(shuffled, "d", "c", "NLL heldout_focus")
    assert "(d) JMLR" in report.markdown(results)
    # the diagnostic arm splits d - c: dg (d's generator, frozen retrieval) - c has no recall rows, d - dg has them
    results["dg_s0"] = _part("dg", 0, [0.8, 1.8, 2.8], [1, 2, None])
    table = report.paired_table(results)
    assert "| NLL heldout_focus | (d)'s generator + frozen retriever - (c) RAG | s0: -0.200" in table
    assert "| recall@1 heldout_focus | (d)'s generator + frozen retriever - (c) RAG" not in table
    assert "| recall@1 heldout_focus | (d) JMLR - (d)'s generator + frozen retriever | s0: +0.667" in table


def test_chat_parts_pair_on_generation_against_the_frozen_retriever_and_get_their_table():
    def chat_part(arm, seed, rouge):
        return {"arm": f"chat_{arm}", "seed": seed, "sets": {"heldout_focus": [
            {"id": f"q{i}", "fed": [], "output": "" if r == 0 else "text", "rougeL": r, "bleu1": r / 2}
            for i, r in enumerate(rouge)]}}

    results = {"frozen": _part("frozen", 0, [2.0] * 3, [2, 1, None]), "e_s0": _part("e", 0, [1.0] * 3, [1, 1, 2]),
               "chat_a": chat_part("a", 0, [0.0, 0.1, 0.2]), "chat_frozen": chat_part("frozen", 0, [0.2, 0.2, 0.2]),
               "chat_e_s0": chat_part("e", 0, [0.3, 0.2, 0.4]), "chat_e_s1": chat_part("e", 1, [0.2, 0.2, 0.2])}
    for name in ("chat_frozen", "chat_e_s0", "chat_e_s1"):
        results[name]["of"] = name[len("chat_"):]
    for part in ("frozen", "e_s0"):
        results[part]["sets"]["heldout_focus"] = [dict(r, rougeL=0.1) for r in results[part]["sets"]["heldout_focus"]]
    table = report.paired_table(results)
    assert "| ROUGE-L heldout_focus | frozen: base + frozen retriever, chat template - (a) base, chat template | " \
           "s0: +0.100" in table
    assert "| ROUGE-L heldout_focus | (e) retriever-only JMLR, chat template - frozen: base + frozen retriever, " \
           "chat template | s0: +0.100 [" in table and "s1: +0.000 [+0.000, +0.000] | **+0.050 [" in table
    assert "| BLEU-1 heldout_focus | (e) retriever-only JMLR, chat template - frozen" in table
    assert "NLL heldout_focus | (e) retriever-only JMLR, chat template" not in table  # generation only
    chat = report.chat_table(results)
    assert "| (a) base | 1 | 3 | 0.100 | 0.050 | 0.333 | - | - |" in chat
    # e_s0 fed gold to q0 and q1 (0.3, 0.2), another to q2 (0.4); e_s1 has no part of its own to say which
    assert "| (e) retriever-only JMLR | 2 | 3 | 0.250 ± 0.050 | 0.125 ± 0.025 | 0.000 ± 0.000 | 0.250 (n=2) / " \
           "0.400 (n=1) | 0.100 (n=3) |" in chat
    assert "| frozen: base + frozen retriever | 1 | 3 | 0.200 | 0.100 | 0.000 | 0.200 (n=1) / 0.200 (n=2) |" in chat
    results["chat_gold"] = chat_part("gold", 0, [0.9, 0.8, 0.7])
    chat = report.chat_table(results)
    assert "| oracle: base + the gold passage | 1 | 3 | 0.800 | 0.400 | 0.000 | - | - |" in chat
    assert "| ROUGE-L heldout_focus | oracle: base + the gold passage, chat template - frozen: base + frozen " \
           "retriever, chat template | s0: +0.600 [" in report.paired_table(results)
    md = report.markdown(results)
    assert chat in md and "| (e) retriever-only JMLR, chat template |" not in report.summary_table(results)


def test_larger_pool_arm_pairs_on_retrieval_only_and_scale_table():
    results = {"frozen": _part("frozen", 0, [2.0, 2.0, 2.0, 2.0], [2, 2, 1, None]),
               "e_s0": _part("e", 0, [1.5, 1.5, 1.5, 1.5], [1, 2, 1, None]),
               "eL_s0": _part("eL", 0, [1.0, 1.0, 1.0, 1.0], [1, 1, 1, 2])}
    for part in results.values():  # generation scores exist but are not compared for the pool arm
        part["sets"]["heldout_focus"] = [dict(r, rougeL=0.5) for r in part["sets"]["heldout_focus"]]
    table = report.paired_table(results)
    assert "| recall@1 heldout_focus | (eL) retriever-only JMLR, larger training pool - (e) retriever-only JMLR " \
           "| s0: +0.250" in table
    assert "| NLL heldout_focus | (eL) retriever-only JMLR, larger training pool - frozen: base + frozen " \
           "retriever | s0: -1.000" in table
    assert "ROUGE-L heldout_focus | (eL)" not in table
    results["scale"] = {"dev_questions": 4, "pool": 9, "settings": {}, "chosen_lr": 1e-5, "rows": [
        {"questions": 0, "retriever_lr": 0.0, "dev_ranks": [1, 2, 3, None], "seconds": 0},
        {"questions": 9, "retriever_lr": 1e-5, "dev_ranks": [1, 1, 1, 1], "seconds": 5}]}
    scale = report_dev.scale_table(results)
    assert "| 0 | - | - | 0.250 ± 0.250 | - | 0.750 | 0 |" in scale and "lr 1e-05." in scale
    assert "| 9 | 1e-05 | 1 | 1.000 ± 0.000 | 0.25 | 1.000 | 5 |" in scale  # McNemar: 3 discordant, all one way
    assert scale in report.markdown(results)
    results["passes"] = {"dev_questions": 4, "pool": 9, "chosen_epochs": 2, "rows": [
        {"questions": 9, "retriever_lr": 1e-5, "epochs": 2, "dev_ranks": [1, 1, 1, None], "seconds": 9}]}
    scale = report_dev.scale_table(results)
    assert "| 9 | 1e-05 | 2 | 0.750 ± 0.250 | 0.5 | 0.750 | 9 |" in scale and "lr 1e-05, 2 passes." in scale
    base = {**results["scale"]["rows"][1], "epochs": 1, "batch_size": 1, "in_batch_negatives": False}
    results["negatives"] = {"dev_questions": 4, "pool": 9, "baseline": base, "chosen": {
        "batch_size": 1, "in_batch_negatives": False}, "rows": [
        {**base, "batch_size": 4, "dev_ranks": [1, 1, 2, 2], "seconds": 3},
        {**base, "batch_size": 4, "in_batch_negatives": True, "dev_ranks": [2, 3, None, None], "seconds": 4}]}
    neg = report_dev.negatives_table(results)
    assert "| 1 | no | 1.000 ± 0.000 | - | 1.000 | 5 |" in neg and "batch 1, in-batch negatives no." in neg
    assert "| 4 | yes | 0.000 ± 0.000 | 0.12 | 0.500 | 4 |" in neg  # McNemar vs batch 1: 4 discordant, 2 x 0.5^4
    assert neg in report.markdown(results)
    results["posterior"] = {"dev_questions": 4, "pool": 9, "best_beta": 1.0, "baseline": {**base, "kl_beta": 1.0},
                            "rows": [{**base, "kl_beta": 0.1, "dev_ranks": [1, None, None, None], "seconds": 6}]}
    post = report_dev.posterior_table(results)
    assert "| 1 | 1.000 ± 0.000 | - | 1.000 | 5 |" in post and "| 0.1 | 0.250 ± 0.250 | 0.25 | 0.250 | 6 |" in post
    assert "Best on dev: beta 1 " in post and post in report.markdown(results)


def test_more_focuses_arm_pairs_with_eL_and_its_dev_table():
    results = {"frozen": _part("frozen", 0, [2.0] * 4, [2, 2, 1, None]),
               "eL_s0": _part("eL", 0, [1.0] * 4, [1, 2, 1, None]), "eF_s0": _part("eF", 0, [0.5] * 4, [1, 1, 1, 2])}
    table = report.paired_table(results)
    assert "| recall@1 heldout_focus | (eF) eL's settings, pool with more training focuses - (eL) retriever-only " \
           "JMLR, larger training pool | s0: +0.250" in table
    results["focuses"] = {"dev_questions": 4, "pool": 12, "extra_questions": 5, "extra_focuses": 2,
                          "training_only_passages": 7, "question_leaks": [], "chosen_lr": 3e-6,
                          "settings": {"rank_loss": "kl", "num_sampled": 8, "epochs": 1}, "rows": [
                              {"questions": 0, "retriever_lr": 0.0, "dev_ranks": [1, 2, 3, None], "seconds": 0},
                              {"questions": 7, "retriever_lr": 3e-6, "dev_ranks": [1, 1, 3, None], "seconds": 4},
                              {"questions": 12, "retriever_lr": 3e-6, "dev_ranks": [1, 1, 1, 1], "seconds": 8}]}
    fo = report_dev.focuses_table(results)
    assert "the 7 of eL's pool, then the 5 questions of 2 more training focuses, whose 7 answer" in fo
    assert "| 7 | 3e-06 | 0.500 ± 0.289 | 1 | 0.750 | 4 |" in fo and "lr 3e-06." in fo
    assert "| 12 | 3e-06 | 1.000 ± 0.000 | 0.25 | 1.000 | 8 |" in fo and fo in report.markdown(results)
    # the variant where eL's questions keep their candidates: its own table, arm and pairs
    results["focuses_kept"] = {**results.pop("focuses"), "chosen_lr": 1e-5}
    results["eK_s0"] = _part("eK", 0, [0.5] * 4, [1, 1, 2, 2])
    kept = report_dev.focuses_table(results, "focuses_kept")
    assert "eL's questions keep the candidates mined from the corpus alone" in kept and "(eK), on the whole pool: " \
        "lr 1e-05." in kept and kept in report.markdown(results) and report_dev.focuses_table(results) == ""
    assert "| recall@1 heldout_focus | (eK) eF with eL's questions keeping eL's candidates - (eL) retriever-only " \
           "JMLR, larger training pool | s0: +0.000" in report.paired_table(results)
    results["eB_s0"], results["eKB_s0"] = _part("eB", 0, [1.0] * 4, [1, 2, 2, 2]), _part("eKB", 0, [0.5] * 4, [1] * 4)
    assert "| recall@1 heldout_focus | (eKB) eK with both encoder sides trained, index refreshed - (eB) eL with both " \
           "encoder sides trained, index refreshed | s0: +0.750" in report.paired_table(results)


def test_both_sides_arm_pairs_with_eL_and_its_dev_table():
    results = {"frozen": _part("frozen", 0, [2.0] * 4, [2, 2, 1, None]),
               "eL_s0": _part("eL", 0, [1.0] * 4, [1, 1, 2, 2]), "eB_s0": _part("eB", 0, [0.5] * 4, [1, 1, 1, 2])}
    results["eB_s0"].update(dev_all={"dev_ranks": [1, 1, 1, None]}, refresh_seconds=361.0)
    table = report.paired_table(results)
    assert "| recall@1 heldout_focus | (eB) eL with both encoder sides trained, index refreshed - (eL) retriever-only " \
           "JMLR, larger training pool | s0: +0.250" in table
    assert "| NLL heldout_focus | (eB) eL with both encoder sides trained, index refreshed - frozen: base + frozen " \
           "retriever | s0: -1.500" in table
    assert report_dev.both_sides_table(results) == ""  # no scale part: no eL dev row to compare with
    results["scale"] = {"dev_questions": 4, "pool": 9, "settings": {}, "chosen_lr": 1e-5, "rows": [
        {"questions": 0, "retriever_lr": 0.0, "dev_ranks": [2, 2, 3, None], "seconds": 0},
        {"questions": 9, "retriever_lr": 3e-5, "dev_ranks": [1, 1, 1, 1], "seconds": 5},
        {"questions": 9, "retriever_lr": 1e-5, "dev_ranks": [1, 2, 3, None], "seconds": 5}]}
    dev = report_dev.both_sides_table(results)
    assert "| (eL) query side only | 0 | 0.250 ± 0.250 | - | 0.750 | - |" in dev  # the row at the chosen lr
    assert "| (eB) both sides, refreshed | 0 | 0.750 ± 0.250 | 0.5 | 0.750 | 361 |" in dev  # 2 discordant, one way
    assert dev in report.markdown(results)
    # the second round pairs with the frozen retriever and with its first round; its dev row follows eB's
    results["eR_s0"] = _part("eR", 0, [0.25] * 4, [1, 1, 1, 1])
    results["eR_s0"].update(dev_all={"dev_ranks": [1, 1, 1, 1]}, refresh_seconds=300.0, seconds=3000.0,
                            train_seconds=1800.0, mine_seconds=600.0)
    assert "| eR_s0 | 50.0 (30.0; 10.0) |" in report.timing_table(results)
    table = report.paired_table(results)
    assert "| recall@1 heldout_focus | (eR) eB's second round on candidates it re-mined - (eB) eL with both encoder " \
           "sides trained, index refreshed | s0: +0.250" in table
    dev = report_dev.both_sides_table(results)
    assert dev.index("| (eB) both sides") < dev.index("| (eR) second round, re-mined | 0 | 1.000 ± 0.000 | 0.25 | "
                                                     "1.000 | 300 |")  # 3 discordant, one way: 2 x 0.5^3
    # eB at the temperature chosen on dev pairs with eB (beta 1); its dev row follows eR's
    results["eT_s0"] = _part("eT", 0, [0.5] * 4, [1, 1, 2, 1])
    results["eT_s0"].update(dev_all={"dev_ranks": [1, 1, 2, 1]}, refresh_seconds=290.0)
    assert "| recall@1 heldout_focus | (eT) eB at the KL temperature chosen on dev - (eB) eL with both encoder " \
           "sides trained, index refreshed | s0: +0.000" in report.paired_table(results)
    dev = report_dev.both_sides_table(results)
    assert dev.index("| (eR) second round") < dev.index("| (eT) both sides, KL temperature chosen on dev | 0 | "
                                                        "0.750 ± 0.250 | 0.5 | 1.000 | 290 |")


def test_an_arms_recall_interval_pools_its_seeds_per_question():
    """recall@1 of 4 questions: seed 0 finds 3 first, seed 1 finds 1 (the same question in both); pooled per
    question [1, .5, .5, 0] -> mean 0.5, and its interval a percentile bootstrap of those 4 values."""
    results = {"eR_s0": _part("eR", 0, [1.0] * 4, [1, 1, 1, 2]), "eR_s1": _part("eR", 1, [1.0] * 4, [1, 3, None, 2])}
    r = report.pooled_interval(results, "eR", "recall@1 heldout_focus")
    assert r["mean"] == pytest.approx(0.5) and r["seeds"] == 2 and r["n"] == 4 and 0.0 <= r["lo"] < 0.5 < r["hi"] <= 1.0
    assert "| (eR) eB's second round on candidates it re-mined | 2 | 0.500 [" in report.interval_table(results)
    results["eR_s1"]["sets"]["heldout_focus"] = results["eR_s1"]["sets"]["heldout_focus"][:3]
    with pytest.raises(ValueError, match="different questions"):
        report.pooled_interval(results, "eR", "recall@1 heldout_focus")


def test_readme_interval_recomputed_from_committed_json():
    results = report.load(RESULTS)
    measure = "recall@1 heldout_focus"
    r = report.paired(results, "e", "frozen", measure)
    if r is None:
        pytest.fail(f"{RESULTS} lacks the retriever-only and frozen parts the README's paired table reports")
    p = r["pooled"]
    cell = f"**{p['diff']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}]**"
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    rows = [line for line in readme.splitlines() if line.startswith(f"| {measure} | (e) retriever-only")]
    assert rows, "README has no paired row for " + measure
    assert cell in rows[0], (cell, rows[0])
    assert re.search(r"\| s0: [+-]\d", rows[0])
    # and the best arm's own recall@1 with its interval (whether it reaches the issue's 0.70)
    x = report.pooled_interval(results, "eR", measure)
    assert f"| (eR) eB's second round on candidates it re-mined | 3 | {x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]" \
        in readme


def test_top1_table_sorts_each_top_passage_by_its_focus():
    focus_of = {"q0": "flu", "q1": "flu", "q2": "gout", "q3": "gout"}
    tops = [["q0#0", "q1#2"], ["q0#1"], ["pubmedqa-7#0"], ["q1#0"]]  # gold, same focus, PubMedQA, other focus
    results = {}
    for seed, ranks in ((0, [1, 3, None, 2]), (1, [1, 1, None, 2])):
        part = _part("e", seed, [1.0] * 4, ranks)
        part["sets"] = {s: [dict(r, top10=t) for r, t in zip(part["sets"][s], tops)] for s in part["sets"]}
        results[f"e_s{seed}"] = part
    table = report.top1_table(results, focus_of)
    # seed 0: gold, same focus, PubMedQA, other focus; seed 1: q1's top is now gold
    row = "| (e) retriever-only JMLR (2 seeds) | 0.375 ± 0.125 | 0.125 ± 0.125 | 0.250 ± 0.000 | 0.250 ± 0.000 |"
    assert row in table
    assert "Where the top passage comes from" in report.markdown(results, focus_of)
    assert "Where the top passage comes from" not in report.markdown(results)


def test_mcq_pairs_over_the_same_questions_with_mcnemar():
    def part(correct):
        return {"mcq": [{"set": s, "id": f"{s}-{i}", "correct": c} for s in ("mmlu_med", "medqa")
                        for i, c in enumerate(correct)]}

    results = {"a": part([True] * 6 + [False] * 14), "b": part([False] * 20),
               "c_s0": part([True] * 20), "d_s0": part([True] * 20)}
    rows = report.mcq_table(results).splitlines()
    (b_a,) = [r for r in rows if r.startswith("| (b) fine-tuned, no retrieval - (a) base |")]
    assert b_a.count("-0.300 [") == 2 and "(p=0.031)" in b_a  # 6 discordant pairs, all one way: 2 / 2^6
    (d_c,) = [r for r in rows if r.startswith("| (d) JMLR (seed 0) - (c) RAG (seed 0) |")]
    assert d_c.count("+0.000 [+0.000, +0.000] (p=1)") == 2
    results["b"]["mcq"] = results["b"]["mcq"][1:]
    with pytest.raises(ValueError, match="b and a answered different mmlu_med questions"):
        report.mcq_table(results)

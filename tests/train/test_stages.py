"""Seed pipelines end to end on a tiny model and slices of the real data: chaining, skipping, resuming, errors."""
import dataclasses
import json
import pathlib
import os
import shutil

import jax
import numpy as np
import pytest

from jmlr_jax import workdir as workdir_lib
from jmlr_jax.config import ConfigError
from jmlr_jax.convert import load_preset
from jmlr_jax.data import lm_data, user_records
from jmlr_jax.data.sources import medmcqa_cop_base
from jmlr_jax.data.splits import DataConfig
from jmlr_jax.errors import InputError
from jmlr_jax.eval import stage_eval
from jmlr_jax.train import stages
from tests.conftest import DATA_DIR, require
from tests.helpers import logged, run_stopped_after_one_step, save_tiny_llama_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small data directory in the real layout (slices of ../shared/data) and a tiny Llama directory."""
    require(os.path.isdir(DATA_DIR), DATA_DIR)
    d = tmp_path_factory.mktemp("stage_data")
    for sub in ("guidelines", "medquad", "pubmedqa", "medmcqa"):
        os.makedirs(d / sub)
    head = lambda src, dst, n: (d / dst).write_text("".join(open(os.path.join(DATA_DIR, src)).readlines()[:n]))  # noqa: E731
    head("guidelines/ngc_open.jsonl", "guidelines/ngc_open.jsonl", 3)
    (d / "medquad" / "medquad.jsonl").write_text(  # 40 questions spread over many focuses
        "".join(open(os.path.join(DATA_DIR, "medquad", "medquad.jsonl")).readlines()[::300][:40]))
    head("medmcqa/dev.jsonl", "medmcqa/dev.jsonl", 40)
    pq = json.loads(pathlib.Path(DATA_DIR, "pubmedqa", "ori_pqal.json").read_text())
    test = json.loads(pathlib.Path(DATA_DIR, "pubmedqa", "test_ground_truth.json").read_text())
    keys = [k for k in pq if k in test][:5] + [k for k in pq if k not in test][:10]
    (d / "pubmedqa" / "ori_pqal.json").write_text(json.dumps({k: pq[k] for k in keys}))
    (d / "pubmedqa" / "test_ground_truth.json").write_text(json.dumps({k: test[k] for k in keys if k in test}))
    llm = save_tiny_llama_dir(str(tmp_path_factory.mktemp("tiny") / "llm"))
    return DataConfig(data_dir=str(d)), lm_data.LMDataConfig(seq_len=96), llm


def pipeline(workdir, llm, steps=(2, 2, 2)):
    return stages.PipelineConfig(
        name="t", workdir=str(workdir), llm=llm, progress=False, checkpoint_every=1, stages=(
            stages.StageConfig("cpt", "cpt", num_steps=steps[0], batch_size=2, lr=1e-3),
            stages.StageConfig("sft", "sft", num_steps=steps[1], batch_size=2, lr=1e-3, lora_rank=2),
            stages.StageConfig("dpo", "dpo", num_steps=steps[2], batch_size=2, lr=1e-3)))


def test_cpt_text_leaves_out_what_evaluation_uses(setup):
    data, lm, _ = setup
    train, held = lm_data.cpt_documents(data, lm)
    ids = {i for i, _ in train} | {i for i, _ in held}
    test = json.loads(pathlib.Path(data.data_dir, "pubmedqa", "test_ground_truth.json").read_text())
    assert test and not {f"pmid-{k}" for k in test} & ids  # PubMedQA test abstracts: in neither
    _, mq_held = lm_data.split_medquad(lm_data.medquad_pairs(os.path.join(data.data_dir, "medquad", "medquad.jsonl")),
                                       lm.medquad_heldout_fraction)
    assert not {f"medquad-{r.id}" for r in mq_held} & ids  # held-out MedQuAD answers: in neither
    assert not {i for i, _ in train} & {i for i, _ in held}
    with pytest.raises(InputError, match="CPT corpus is empty"):
        lm_data.cpt_documents(data, lm_data.LMDataConfig(guidelines="", medquad="", pubmedqa=""))


def test_stages_chain_skip_and_resume(setup, tmp_path, monkeypatch, capsys):
    data, lm, llm = setup
    pipe = pipeline(tmp_path / "p", llm)
    with pytest.raises(InputError, match="starts from stage 'cpt', which has not finished"):
        stages.run_pipeline(pipe, data, lm, only="sft")
    # the chat template of a model without one fails before any stage trains, not when SFT starts
    with pytest.raises(InputError, match="needs the model's chat template"):
        stages.run_pipeline(pipe, data, dataclasses.replace(lm, template="chat"))
    assert not os.path.exists(pipe.stage_dir(0))

    # CPT stopped by a SIGTERM-like flag after step 1: not done, resumes to step 2
    t = stages.StageTrainer(pipe, 0, data, lm, stages.stage_init(pipe, 0))
    run_stopped_after_one_step(t)
    assert not os.path.exists(os.path.join(pipe.stage_dir(0), "done.json"))
    with monkeypatch.context() as m:  # evaluating now: the base alone, and each unfinished stage is named
        stub = {"predictions": [], "rougeL_each": []}
        m.setattr(stage_eval, "evaluate_model", lambda name, *a, **k: {"model": name, "medquad": stub})
        assert [r["model"] for r in stages.evaluate_pipeline(pipe, data, lm, stage_eval.StageEvalConfig(pairs=1))] \
            == ["base"]
    said = capsys.readouterr().out
    assert all(f"stage {i} ({n}) is not finished" in said for i, n in ((1, "cpt"), (2, "sft"), (3, "dpo")))
    shutil.rmtree(os.path.join(pipe.workdir, "eval"))  # the stub result must not be read back below
    out = stages.run_pipeline(pipe, data, lm)
    assert [o["stage"] for o in out] == ["cpt", "sft", "dpo"] and not any(o.get("skipped") for o in out)
    metrics = logged(pipe.stage_dir(0))
    assert [m["step"] for m in metrics] == [1, 2]
    dpo_metrics = logged(pipe.stage_dir(2))
    assert all(k in dpo_metrics[-1] for k in ("reward_accuracy", "reward_margin", "logp_chosen", "logp_rejected"))

    # stage 2 started from stage 1's final weights, bitwise; stage 1's export is its final state (LoRA merged)
    cpt_final = load_preset(os.path.join(pipe.stage_dir(0), "final"))[1]
    t = stages.StageTrainer(pipe, 1, data, lm, stages.stage_init(pipe, 1))  # restores SFT's last checkpoint
    for a, b in zip(jax.tree_util.tree_leaves(cpt_final), jax.tree_util.tree_leaves(jax.device_get(t.state["params"]["llm"]))):
        np.testing.assert_array_equal(a, b)
    sft_final = load_preset(os.path.join(pipe.stage_dir(1), "final"))[1]
    for a, b in zip(jax.tree_util.tree_leaves(sft_final), jax.tree_util.tree_leaves(t.final_params())):
        np.testing.assert_array_equal(a, b)
    t.close()

    # per-stage evaluation: the DPO model against its frozen reference (the SFT model), on held-out pairs
    dpo_cfg, dpo_params, tok = load_preset(os.path.join(pipe.stage_dir(2), "final"))
    ecfg = stage_eval.StageEvalConfig(text_docs=2, medquad_questions=2, max_new_tokens=4, pairs=3, mcq_per_set=0,
                                      batch_size=2)
    r = stage_eval.evaluate_model("dpo", dpo_cfg, dpo_params, tok, data, lm, ecfg, reference=sft_final)
    assert r["perplexity"]["perplexity"] > 1 and r["perplexity"]["documents"] == 2
    assert r["medquad"]["n"] >= 1 and 0 <= r["medquad"]["bleu1_precision"] <= 1 and 0 <= r["medquad"]["rougeL"] <= 1
    assert r["pairs"]["n"] == 3 and r["pairs"]["reward_margin"] != 0
    same = stage_eval.reward_accuracy(dpo_cfg, dpo_params, dpo_params, tok, lm, lm_data.dpo_pairs(data, lm, True)[:2])
    assert same["reward_accuracy"] == 0.0 and same["reward_margin"] == 0.0  # a model against itself: no preference

    again = stages.run_pipeline(pipe, data, lm)  # everything finished: skipped
    assert all(o.get("skipped") for o in again)

    # the evaluation driver: every model once, then read back; other pairs are rescored alone; a retrained stage
    # (another done.json) is evaluated again
    results = stages.evaluate_pipeline(pipe, data, lm, ecfg)
    assert [r["model"] for r in results] == ["base", "cpt", "sft", "dpo"]
    assert results[3]["reference"].endswith("2-sft/final")
    for r in results[1:]:  # ROUGE-L against the base model's, paired over the same questions
        d, each = r["medquad"]["rougeL_vs_base"], r["medquad"]["rougeL_each"]
        base_each = results[0]["medquad"]["rougeL_each"]
        assert d["n"] == len(each) == len(base_each) >= 1
        assert d["diff"] == pytest.approx(np.mean(each) - np.mean(base_each)) and d["lo"] <= d["diff"] <= d["hi"]
    calls = []
    real_eval, real_pairs = stage_eval.evaluate_model, stage_eval.pair_scores
    monkeypatch.setattr(stage_eval, "evaluate_model",
                        lambda name, *a, **k: calls.append(("eval", name)) or real_eval(name, *a, **k))
    monkeypatch.setattr(stage_eval, "pair_scores", lambda *a, **k: calls.append(("pairs",)) or real_pairs(*a, **k))
    assert stages.evaluate_pipeline(pipe, data, lm, ecfg) == results and not calls
    # an answer stored before answers were cut where the model writes PMC-LLaMA's next "###" section itself is cut
    # and rescored without generating again (the tiny model's own answers hold no "###": the stored ones are kept)
    assert results[0]["medquad"]["stop_strings"] == ["###"]
    stored = os.path.join(pipe.workdir, "eval", "base.json")
    old = json.loads(pathlib.Path(stored).read_text())
    old["medquad"].pop("stop_strings")
    old["medquad"]["predictions"][0]["output"] += "\n\n### Response:\nThis response is incorrect"
    old["medquad"]["rougeL_each"][0] = old["medquad"]["rougeL"] = -1.0
    pathlib.Path(stored).write_text(json.dumps(old))
    assert stages.evaluate_pipeline(pipe, data, lm, ecfg) == results and not calls
    fewer = stages.evaluate_pipeline(pipe, data, lm, dataclasses.replace(ecfg, pairs=2))
    assert calls == [("pairs",)] * 4 and all(r["pairs"]["n"] == 2 for r in fewer)
    assert [r["perplexity"] for r in fewer] == [r["perplexity"] for r in results]
    calls.clear()
    done = os.path.join(pipe.stage_dir(2), "done.json")
    pathlib.Path(done).write_text(json.dumps(dict(json.loads(pathlib.Path(done).read_text()), retrained=True)))
    stages.evaluate_pipeline(pipe, data, lm, dataclasses.replace(ecfg, pairs=2))
    assert calls == [("eval", "dpo"), ("pairs",)]  # evaluate_model scores its pairs with pair_scores
    calls.clear()
    mcq = dataclasses.replace(ecfg, pairs=2, mcq_per_set=2, mcq_sets=("medmcqa_heldout",))
    out = stages.evaluate_pipeline(pipe, data, lm, mcq)  # MCQ predictions added to the stored results, nothing else
    assert not calls and all(len(r["mcq_predictions"]) == 2 for r in out)
    for r in out[1:]:
        m = r["mcq_vs_base"]["medmcqa_heldout"]
        assert m["n"] == 2 and (m["acc_a"], m["acc_b"]) == (r["mcq"][0]["accuracy"], out[0]["mcq"][0]["accuracy"])
    medqa = os.path.join(DATA_DIR, "medqa", "us_4_options_dev.jsonl")  # a set added later: only it is evaluated
    added = stages.evaluate_pipeline(pipe, data, lm, dataclasses.replace(mcq, set_files=(("medqa_dev", "medqa", medqa),)))
    assert not calls and all([m["set"] for m in r["mcq"]] == ["medmcqa_heldout", "medqa_dev"] for r in added)
    for r, before in zip(added, out):
        assert r["mcq_predictions"][:2] == before["mcq_predictions"] and len(r["mcq_predictions"]) == 4
        assert r["perplexity"] == before["perplexity"] and r["pairs"] == before["pairs"]
    assert added[1]["mcq_vs_base"]["medqa_dev"]["n"] == 2
    changed = pipeline(tmp_path / "p", llm)
    changed = stages.PipelineConfig(**{**vars(changed), "stages": (
        changed.stages[0], stages.StageConfig("sft", "sft", num_steps=2, batch_size=2, lr=5e-4, lora_rank=2),
        changed.stages[2])})
    with pytest.raises(ConfigError, match="stage.lr: run has 0.001, given 0.0005"):
        stages.run_pipeline(changed, data, lm)
    with pytest.raises(ValueError, match="kind"):
        stages.StageConfig("x", "rlhf")


def test_stages_accumulate_micro_batches(setup, tmp_path):
    """grad_accum = 2: each update reads two micro-batches ([2, B, L] leaves, placed by the loop), and a stage
    stopped after its first update resumes to the weights of a run straight through, bitwise."""
    data, lm, llm = setup

    def pipe(workdir):
        return stages.PipelineConfig(name="a", workdir=str(workdir), llm=llm, progress=False, checkpoint_every=1,
                                     stages=(stages.StageConfig("cpt", "cpt", num_steps=2, batch_size=1, grad_accum=2,
                                                                lr=1e-3),
                                             stages.StageConfig("dpo", "dpo", num_steps=2, batch_size=1, grad_accum=2,
                                                                lr=1e-3)))

    straight, stopped = pipe(tmp_path / "straight"), pipe(tmp_path / "stopped")
    stages.run_pipeline(straight, data, lm)
    t = stages.StageTrainer(stopped, 0, data, lm, stages.stage_init(stopped, 0))
    assert t.batch_axis == 1 and next(iter(t._dataset(data, lm)))["tokens"].shape == (2, 1, lm.seq_len)
    run_stopped_after_one_step(t)
    assert not os.path.exists(os.path.join(stopped.stage_dir(0), "done.json"))
    stages.run_pipeline(stopped, data, lm)
    for i in range(2):
        a, b = (load_preset(os.path.join(p.stage_dir(i), "final"))[1] for p in (straight, stopped))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="grad_accum must be >= 1"):
        stages.StageConfig("x", "cpt", grad_accum=0)


def test_pipeline_configs_parse():
    from jmlr_jax import config

    for file, name, kinds in (("qilin_med", "qilin_med", ["cpt", "sft", "dpo"]),
                              ("pmc_llama", "pmc_llama", ["cpt", "sft"]),
                              ("qilin_med_gpu", "qilin_med", ["cpt", "sft", "dpo"])):
        config.parse([f"pipelines/{file}.gin"])
        pipe = stages.PipelineConfig()
        assert pipe.name == name and [s.kind for s in pipe.stages] == kinds
        assert all(s.pairs == "generated" for s in pipe.stages if s.kind == "dpo")
        assert DataConfig().data_dir and lm_data.LMDataConfig().template == ("chat" if name == "qilin_med" else "pmc_llama")
    # the GPU run: its own work dir, more steps of more rows, bf16 matmuls ("auto"), the CPU run's stages otherwise
    assert pipe.workdir.endswith("qilin_med_gpu") and pipe.llm_overrides == () and lm_data.LMDataConfig().seq_len == 512
    assert [(s.num_steps, s.batch_size) for s in pipe.stages] == [(500, 16), (500, 16), (200, 8)]


def test_dpo_on_the_starting_models_own_wrong_answers(setup, tmp_path):
    data, lm, llm = setup
    stage = stages.StageConfig("dpo", "dpo", num_steps=1, batch_size=2, lr=1e-3, pairs="generated", pair_questions=3)
    pipe = stages.PipelineConfig(name="g", workdir=str(tmp_path / "g"), llm=llm, progress=False, stages=(stage,))
    stages.run_pipeline(pipe, data, lm)
    pairs = user_records.load_pairs(os.path.join(pipe.stage_dir(0), "pairs.jsonl"))
    questions = lm_data.medmcqa_questions(data)[:3]
    cfg, params, tok = load_preset(llm)
    answers = stage_eval.greedy_answers(cfg, params, tok, lm, [lm_data.mcq_request(q) for q in questions], 96)
    assert pairs == lm_data.generated_pairs(questions, answers) and pairs  # the starting model's own answers
    held = stage_eval.heldout_pairs("generated", data, lm, 2, (cfg, params, tok), str(tmp_path / "held.jsonl"))
    assert {p.id for p in held} <= {q.id for q in lm_data.medmcqa_questions(data, heldout=True)[:2]}
    assert not {p.id for p in held} & {q.id for q in questions}

    # a stage directory saved before a field existed holds that field's default
    path = os.path.join(pipe.stage_dir(0), "stage.json")
    saved = json.loads(pathlib.Path(path).read_text())
    del saved["stage"]["pairs"]
    json.dump(saved, open(path, "w"))
    with pytest.raises(ConfigError, match="stage.pairs: run has 'options', given 'generated'"):
        stages.check_stage_dir(pipe.stage_dir(0), stage, llm, data, lm)
    # saved with MedMCQA's answer base bound (1, the default before the file's own base was): the same setting when
    # the file's own base is that one (dev.jsonl is the release's, 1-based)
    assert data.medmcqa_cop_base is None and medmcqa_cop_base(data.path(data.medmcqa_file)) == 1
    saved["stage"]["pairs"] = "generated"
    for base in (1, 0):
        json.dump(dict(saved, data=dict(saved["data"], medmcqa_cop_base=base)), open(path, "w"))
        if base == 1:
            stages.check_stage_dir(pipe.stage_dir(0), stage, llm, data, lm)
        else:
            with pytest.raises(ConfigError, match="data.medmcqa_cop_base: run has 0, given None"):
                stages.check_stage_dir(pipe.stage_dir(0), stage, llm, data, lm)
    with pytest.raises(ValueError, match="StageConfig.pairs"):
        stages.StageConfig("dpo", "dpo", pairs="sampled")


def test_a_pipeline_on_a_users_own_data(setup, tmp_path):
    """CPT on a user's text alone, SFT on their instruction file alone, DPO on their pairs alone; files added to a
    finished pipeline leave the stages that never read them valid, and change the ones that do."""
    data, lm, llm = setup
    own = tmp_path / "own"
    own.mkdir()
    (own / "papers.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "text": f"Paper {i} on metformin. " * 20})
                                              + "\n" for i in range(6)))
    (own / "instructions.jsonl").write_text("".join(json.dumps(
        {"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."}) + "\n" for i in range(4)))
    (own / "pairs.jsonl").write_text("".join(json.dumps(
        {"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No idea."}) + "\n" for i in range(4)))
    text_only = dataclasses.replace(lm, guidelines="", medquad="", pubmedqa="", text_files=(str(own / "papers.jsonl"),))
    train, held = lm_data.cpt_documents(data, text_only)
    assert {i for i, _ in train + held} == {f"papers.jsonl/p{i}" for i in range(6)}
    pipe = stages.PipelineConfig(name="own", workdir=str(tmp_path / "w"), llm=llm, progress=False, stages=(
        stages.StageConfig("cpt", "cpt", num_steps=1, batch_size=2, lr=1e-3),
        stages.StageConfig("sft", "sft", num_steps=1, batch_size=2, lr=1e-3),
        stages.StageConfig("dpo", "dpo", num_steps=1, batch_size=2, lr=1e-3, pairs="files")))
    stages.run_pipeline(pipe, data, text_only, only="cpt")
    mine = dataclasses.replace(text_only, builtin_sft=False, sft_files=(str(own / "instructions.jsonl"),))
    assert {r.id for r in lm_data.sft_records(data, mine)} == {f"instructions.jsonl/{i}" for i in range(1, 5)}
    # CPT never read the SFT files: still finished; DPO without pair files fails before it starts
    with pytest.raises(InputError, match="StageConfig.pairs = 'files' needs LMDataConfig.pair_files"):
        stages.run_pipeline(pipe, data, mine)
    mine = dataclasses.replace(mine, pair_files=(str(own / "pairs.jsonl"),))
    out = stages.run_pipeline(pipe, data, mine)  # the failed start bound no settings: no new workdir needed
    assert [bool(o.get("skipped")) for o in out] == [True, True, False]
    dpo = stages.StageTrainer(pipe, 2, data, mine, stages.stage_init(pipe, 2))
    assert [p.id for p in dpo._pairs(data, mine, None)] == [f"pairs.jsonl/{i}" for i in range(1, 5)]
    dpo.close()
    other = dataclasses.replace(mine, sft_files=(str(own / "pairs.jsonl"),))
    with pytest.raises(ConfigError, match="lm_data.sft_files: run has"):
        stages.run_pipeline(pipe, data, other)
    with pytest.raises(InputError, match="no SFT records: LMDataConfig.builtin_sft is off and sft_files is empty"):
        lm_data.sft_records(data, dataclasses.replace(mine, sft_files=()))
    with pytest.raises(InputError, match="LMDataConfig.medquad is '' .* bind it for the evaluation"):
        stage_eval.held_medquad(data, mine)  # the generation measure names what to bind, not an empty directory
    # every input of every stage still to train is looked for before the first trains (a missing SFT file had
    # failed after CPT finished)
    absent = dataclasses.replace(mine, sft_files=(str(own / "absent.jsonl"),), text_files=(str(own / "gone.jsonl"),))
    with pytest.raises(InputError, match=r"^not found: stage 'cpt' reads LMDataConfig.text_files .*gone.jsonl; "
                                         r"stage 'sft' reads LMDataConfig.sft_files .*absent.jsonl$"):
        stages.run_pipeline(dataclasses.replace(pipe, workdir=str(tmp_path / "w2")), data, absent)
    assert not (tmp_path / "w2").exists()


def test_a_cloud_workdir_pipeline_continues_on_another_machine(setup, tmp_path, monkeypatch):
    data, lm, llm = setup
    bucket = str(tmp_path / "bucket")
    monkeypatch.setattr(workdir_lib, "is_remote", lambda p: str(p).startswith(bucket))  # "gs://..." stand-in
    monkeypatch.setenv("JMLR_LOCAL_CACHE", str(tmp_path / "cache"))
    pipe = dataclasses.replace(pipeline(os.path.join(bucket, "p"), llm, (1, 2, 1)), name="c")
    pipe = dataclasses.replace(pipe, stages=pipe.stages[:2])
    stages.run_pipeline(pipe, data, lm, only="cpt")
    local = pipe.stage_dir(0)
    assert local.startswith(str(tmp_path / "cache"))
    assert os.path.dirname(local) == workdir_lib.local_dir(pipe.workdir)  # inside the pipeline's mirror
    assert {"checkpoints", "stage.json", "metrics.jsonl", "done.json", "final"} <= set(os.listdir(pipe.stage_workdir(0)))
    assert not os.path.exists(os.path.join(local, "checkpoints"))  # orbax writes to the cloud directly
    cpt = jax.tree_util.tree_leaves(load_preset(os.path.join(local, "final"))[1])

    # another machine, the cloud workdir alone: SFT starts from CPT's export fetched from it, and is preempted
    monkeypatch.setenv("JMLR_LOCAL_CACHE", str(tmp_path / "cache2"))
    t = stages.StageTrainer(pipe, 1, data, lm, stages.stage_init(pipe, 1))
    run_stopped_after_one_step(t)
    fetched = jax.tree_util.tree_leaves(load_preset(os.path.join(pipe.stage_dir(0), "final"))[1])
    for a, b in zip(cpt, fetched, strict=True):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(pipe.stage_workdir(1), "stage.json")) as f:  # where SFT started, by its cloud path
        assert json.load(f)["init"] == os.path.join(pipe.stage_workdir(0), "final")

    # a third machine resumes the preempted stage from the cloud checkpoint and finishes the pipeline
    monkeypatch.setenv("JMLR_LOCAL_CACHE", str(tmp_path / "cache3"))
    out = stages.run_pipeline(pipe, data, lm)
    assert out[0].get("skipped") and out[1]["steps"] == 2 and pipe.stage_dir(1).startswith(str(tmp_path / "cache3"))
    with open(os.path.join(pipe.stage_workdir(1), "metrics.jsonl")) as f:
        assert [json.loads(x)["step"] for x in f] == [1, 2]
    assert {"done.json", "final"} <= set(os.listdir(pipe.stage_workdir(1)))

    # evaluated on a fourth machine, its results in the cloud workdir; a fifth reads them back
    ecfg = stage_eval.StageEvalConfig(text_docs=2, medquad_questions=2, max_new_tokens=4, pairs=2, mcq_per_set=0,
                                      batch_size=2)
    monkeypatch.setenv("JMLR_LOCAL_CACHE", str(tmp_path / "cache4"))
    results = stages.evaluate_pipeline(pipe, data, lm, ecfg)
    assert sorted(os.listdir(os.path.join(pipe.workdir, "eval"))) == ["base.json", "cpt.json", "sft.json"]
    monkeypatch.setenv("JMLR_LOCAL_CACHE", str(tmp_path / "cache5"))
    monkeypatch.setattr(stage_eval, "evaluate_model", lambda *a, **k: pytest.fail("evaluated again"))
    assert stages.evaluate_pipeline(pipe, data, lm, ecfg) == results


def test_moved_data_keeps_stages_and_other_data_is_refused(setup, tmp_path):
    """DataConfig.data_dir is a location: a finished stage stays finished with the data elsewhere, an interrupted
    one resumes from the same data elsewhere, and refuses data that differ (their sha1 is in stage.json)."""
    data, lm, llm = setup
    moved, other = tmp_path / "moved", tmp_path / "other"
    for d in (moved, other):
        d.mkdir()
        for sub in os.listdir(data.data_dir):
            if not (d == other and sub == "medquad"):
                os.symlink(os.path.join(data.data_dir, sub), d / sub)
    (other / "medquad").mkdir()
    with open(os.path.join(data.data_dir, "medquad", "medquad.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    (other / "medquad" / "medquad.jsonl").write_text("".join(json.dumps(dict(r, answer=r["answer"] + " Edited."))
                                                             + "\n" for r in rows))
    pipe = stages.PipelineConfig(name="m", workdir=str(tmp_path / "w"), llm=llm, progress=False, checkpoint_every=1,
                                 stages=(stages.StageConfig("cpt", "cpt", num_steps=1, batch_size=2, lr=1e-3),
                                         stages.StageConfig("sft", "sft", num_steps=2, batch_size=2, lr=1e-3)))
    stages.run_pipeline(pipe, data, lm, only="cpt")
    t = stages.StageTrainer(pipe, 1, data, lm, stages.stage_init(pipe, 1))  # SFT stopped after its first step
    run_stopped_after_one_step(t)
    with pytest.raises(ConfigError, match=r"2-sft: the data under .*other are not those this stage trained on"):
        stages.run_pipeline(pipe, dataclasses.replace(data, data_dir=str(other)), lm)  # CPT finished: skipped
    out = stages.run_pipeline(pipe, dataclasses.replace(data, data_dir=str(moved)), lm)
    assert [bool(o.get("skipped")) for o in out] == [True, False] and out[1]["steps"] == 2
    assert json.loads(pathlib.Path(pipe.stage_dir(1), "stage.json").read_text())["data"]["data_dir"] == str(moved)

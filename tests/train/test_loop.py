"""The training loop end to end on tiny models and real data: resume, multi-device, bad input."""
import json
import os
import signal

import gin
import jax
import numpy as np
import pytest

from jmlr_jax import config, experiment, parallel
from jmlr_jax.errors import InputError, StoppedEarly
from jmlr_jax.eval import harness
from jmlr_jax.retrieval.store import IndexMismatchError
from jmlr_jax.train import loop, weights
from tests.conftest import DATA_DIR, free_compiled_code, require
from tests.helpers import dot_flops, logged, save_tiny_llama_dir


@pytest.fixture(scope="module")
def assets(tmp_path_factory, minilm):
    require(os.path.isdir(DATA_DIR), DATA_DIR)
    d = tmp_path_factory.mktemp("loop_assets")
    llm = save_tiny_llama_dir(str(d / "tiny_llama"))
    with open(os.path.join(DATA_DIR, "guidelines", "ngc_open.jsonl")) as f:
        recs = [json.loads(line) for line in f][:2]
    corpus = d / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": r["id"], "title": r["title"], "text": " ".join(r["text"].split()[:900])})
                                for r in recs) + "\n")
    return llm, str(corpus)


@pytest.fixture(autouse=True)
def _free_after_each_test():
    """Every test here builds and trains its own runs: freeing each one's compiled code before the next keeps this
    module's peak RSS at its largest test's (Python 3.13, jax 0.12.0.1: 4.7 GB, against 6.15 GB without)."""
    yield
    free_compiled_code()


def bindings(llm, corpus, workdir, **extra):
    b = {"RunConfig.llm": repr(llm), "RunConfig.workdir": repr(str(workdir)), "RunConfig.progress": "False",
         "RunConfig.llm_overrides": "()", "RunConfig.num_steps": "4", "RunConfig.batch_size": "2",
         "RunConfig.checkpoint_every": "2", "CorpusConfig.sources": f"[('documents', {corpus!r})]",
         "DataConfig.data_dir": repr(DATA_DIR), "DataConfig.max_examples": "8",
         "RetrieverConfig.doc_maxlen": "48", "RetrieverConfig.query_maxlen": "16",
         "JMLRConfig.num_candidates": "4", "JMLRConfig.num_sampled": "3", "JMLRConfig.num_docs": "2",
         "Budgets.doc": "24", "Budgets.question": "48", "Budgets.answer": "8",
         "OptimConfig.llm_lr": "1e-3", "OptimConfig.retriever_lr": "1e-3",
         # One device: on the 8 forced host devices the default mesh would replicate the state and the batch of 2
         # eight times (8x the memory and compute). test_eight_devices_match_one covers the multi-device mesh.
         "RunConfig.mesh_shape": "(1, 1, 1)"}
    b.update(extra)
    return [f"{k} = {v}" for k, v in b.items()]


def trainer(assets, workdir, **extra):
    config.parse(["quickstart_cpu.gin"], bindings(*assets, workdir, **extra))
    return loop.Trainer(experiment.for_training())


def params_of(t):
    return jax.tree_util.tree_leaves(jax.device_get(t.state["params"]))


def test_resume_is_exact(assets, tmp_path, capfd):
    straight = trainer(assets, tmp_path / "a")
    # gin-bound prompt budgets reach the data (a default instance built at import time once hid them)
    assert {k: straight.examples(0)[k].shape[-1] for k in ("docs", "question", "answer")} == \
        {"docs": 24, "question": 48, "answer": 8}
    straight.run()
    straight.close()

    # Preempted: SIGTERM during the step-2 checkpoint, and a second one while that (final) save is written; with
    # asynchronous saves as on accelerators (a CPU's default is synchronous), which the saved config keeps on resume.
    first = trainer(assets, tmp_path / "b", **{"RunConfig.async_checkpoint": "True"})
    assert first.ckpt.async_save and not straight.ckpt.async_save
    save = first.ckpt.save

    def save_under_sigterm(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # stops the run after this save
        save(*args)
        os.kill(os.getpid(), signal.SIGTERM)  # while the asynchronous save is still writing

    first.ckpt.save = save_under_sigterm
    with pytest.raises(StoppedEarly, match=r"stopped at step 2 \(SIGTERM\)") as stopped:  # saved, not finished
        first.run()
    first.close()
    assert "SIGTERM: saved checkpoint 2" in capfd.readouterr().out and stopped.value.reason == "SIGTERM"
    second = trainer(assets, tmp_path / "b")  # same workdir, 4 steps: restores step 2
    assert int(second.state["step"]) == 2 and second.ckpt.async_save
    second.run()
    second.close()
    for a, b in zip(params_of(straight), params_of(second)):
        np.testing.assert_array_equal(a, b)
    assert straight.data_iter.get_state() == second.data_iter.get_state()
    lines = logged(tmp_path / "b")
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all(np.isfinite(x["loss"]) for x in lines)
    assert os.path.isfile(tmp_path / "b" / "operative_config.gin")
    assert any(n.startswith("events") for n in os.listdir(tmp_path / "b" / "tb"))

    # A damaged latest checkpoint: resume from the previous one with a warning; the damaged one is kept aside.
    ckpts = tmp_path / "b" / "checkpoints"
    for root, _, files in os.walk(ckpts / "4" / "state"):
        for f in files:
            if not f.endswith(".json") and "METADATA" not in f:
                open(os.path.join(root, f), "wb").close()
    third = trainer(assets, tmp_path / "b")
    assert int(third.state["step"]) == 2 and "checkpoint 4 is corrupt" in capfd.readouterr().err
    assert any(d.startswith("corrupt-4-") for d in os.listdir(ckpts))
    third.close()
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["run"]["num_steps"] == 4 and saved["budgets"]["doc"] == 24 and saved["data"]["max_examples"] == 8

    # Evaluation from the workdir alone (no training gin file): exactly the trained weights, the trained retriever.
    gin.clear_config()
    restored = weights.restore_params(str(tmp_path / "a"))
    on_mesh = weights.restore_params(str(tmp_path / "a"), mesh=parallel.make_mesh((2, 2, 2)))  # as evaluation does
    q = on_mesh.llm_params["layers"]["attn"]["q"]["kernel"]
    assert q.addressable_shards[0].data.shape[1] == q.shape[1] // 2  # restored split, never whole on one device
    for a, b, c in zip(jax.tree_util.tree_leaves(restored.llm_params), jax.tree_util.tree_leaves(on_mesh.llm_params),
                       jax.tree_util.tree_leaves(straight.state["params"]["llm"]), strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    config.parse(["compare/eval.gin"], ["EvalConfig.retrieval = True", "EvalConfig.num_docs = 2",
                                        "EvalConfig.max_per_set = 3", f"EvalConfig.output_dir = {str(tmp_path / 'eval')!r}",
                                        "EvalConfig.gold_recall_ks = (1, 2)", "SearchConfig.token_k = 16"])
    exp = experiment.for_evaluation(str(tmp_path / "a"))
    assert exp.budgets.doc == 24 and exp.search.token_k == 16  # the run's budgets; search settings may change
    result = harness.evaluate_main(exp, harness.EvalConfig())
    assert result["source"]["step"] == 4 and len(result["predictions"]) == 9
    assert all(len(p["docs"]) == 2 and len(p["logliks"]) == (3 if p["set"] == "pubmedqa_test" else 4)
               for p in result["predictions"])
    assert {r["set"] for r in result["summary"]} == {"mmlu_med", "pubmedqa_test", "medmcqa_heldout"}
    assert result["gold_recall"]["top1"] == 0.0  # this corpus holds no PubMedQA abstract
    assert os.path.isfile(tmp_path / "eval" / "eval.json") and os.path.isfile(tmp_path / "eval" / "eval.md")
    # a binding that contradicts the saved run is an error, for evaluation and for resume
    config.parse([], ["Budgets.doc = 99"])
    with pytest.raises(config.ConfigError, match="Budgets.doc: run has 24, given 99"):
        experiment.for_evaluation(str(tmp_path / "a"))
    with pytest.raises(config.ConfigError, match="OptimConfig.llm_lr: run has 0.001, given 0.5"):
        trainer(assets, tmp_path / "a", **{"OptimConfig.llm_lr": "0.5"})
    with pytest.raises(config.ConfigError, match="no config.json"):
        experiment.for_evaluation(str(tmp_path))


def test_moved_data_resumes_and_other_data_is_refused(assets, tmp_path):
    """The data directory is a location: a run resumes, and is evaluated, from another one holding the same
    training questions; one holding other questions is refused at resume."""
    moved, other = tmp_path / "moved", tmp_path / "other"
    for d in (moved, other):
        d.mkdir()
        for sub in os.listdir(DATA_DIR):
            if not (d == other and sub == "medmcqa"):
                os.symlink(os.path.join(DATA_DIR, sub), d / sub)
    (other / "medmcqa").mkdir()
    with open(os.path.join(DATA_DIR, "medmcqa", "dev.jsonl")) as f, open(other / "medmcqa" / "dev.jsonl", "w") as g:
        for line in f:
            r = json.loads(line)
            g.write(json.dumps(dict(r, question=r["question"] + " (edited)")) + "\n")
    t = trainer(assets, tmp_path / "w", **{"RunConfig.num_steps": "2"})
    t.run()
    t.close()
    t = trainer(assets, tmp_path / "w", **{"RunConfig.num_steps": "3", "DataConfig.data_dir": repr(str(moved))})
    assert int(t.state["step"]) == 2 and t.exp.data.data_dir == str(moved)
    t.close()
    with pytest.raises(InputError, match=r"the training questions under .*other \(8, sha1 \w+\) are not those the "
                                         r"checkpoint trained on \(8, sha1"):
        trainer(assets, tmp_path / "w", **{"DataConfig.data_dir": repr(str(other))})
    gin.clear_config()
    config.parse([], [f"DataConfig.data_dir = {str(moved)!r}"])
    assert experiment.for_evaluation(str(tmp_path / "w")).data.data_dir == str(moved)
    gin.clear_config()


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_eight_devices_match_one(assets, tmp_path):
    losses = {}
    for name, shape in (("one", "(1, 1, 1)"), ("mesh", "(2, 2, 2)")):
        t = trainer(assets, tmp_path / name, **{"RunConfig.num_steps": "3", "RunConfig.mesh_shape": shape,
                                                "RunConfig.checkpoint_every": "100"})
        t.run()
        losses[name] = [x["loss"] for x in logged(tmp_path / name)]
        if name == "one":  # resumed on 8 devices: the same parameters, now sharded
            final = params_of(t)
            t.close()
            t = trainer(assets, tmp_path / name, **{"RunConfig.num_steps": "3", "RunConfig.mesh_shape": "(2, 2, 2)"})
            assert int(t.state["step"]) == 3 and len(t.state["params"]["llm"]["embed"]["embedding"].devices()) == 8
            for a, b in zip(final, params_of(t)):
                np.testing.assert_array_equal(a, b)
        if name == "mesh":  # FSDP really shards params and the optimizer state
            q = t.state["params"]["llm"]["layers"]["attn"]["q"]["kernel"]
            assert q.sharding.spec[1] == "fsdp" and q.addressable_shards[0].data.shape[1] == q.shape[1] // 2
            mu = [x for x in jax.tree_util.tree_leaves(t.state["opt_state"]) if x.shape == q.shape]
            assert mu and all(m.sharding.spec == q.sharding.spec for m in mu)
        t.close()
    np.testing.assert_allclose(losses["one"], losses["mesh"], rtol=2e-5)


def test_nan_loss_stops_with_checkpoint_intact(assets, tmp_path):
    nan = {"OptimConfig.llm_lr": "1e30", "RunConfig.checkpoint_every": "1"}  # step 1 finite, step 2 overflows
    t = trainer(assets, tmp_path / "nan", **nan)
    with pytest.raises(loop.NonFiniteLossError, match="Latest checkpoint .step 1"):
        t.run()
    t.close()
    t = trainer(assets, tmp_path / "nan", **nan)
    assert int(t.state["step"]) == 1 and all(np.all(np.isfinite(x)) for x in params_of(t))
    t.close()


def test_bad_inputs(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: " + str(tmp_path)):
        trainer(assets, tmp_path / "x", **{"DataConfig.data_dir": repr(str(tmp_path))})
    with pytest.raises(InputError, match="DataConfig.data_dir is not set"):
        trainer(assets, tmp_path / "x2", **{"DataConfig.data_dir": "''"})
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "z", "title": "", "text": "unrelated text " * 40}) + "\n")
    t = trainer(assets, tmp_path / "y", **{"RunConfig.num_steps": "1"})
    index_dir = t._index_dir()
    t.close()
    with pytest.raises(IndexMismatchError, match="built from corpus"):
        trainer(assets, tmp_path / "z", **{"RunConfig.initial_index": repr(index_dir),
                                           "CorpusConfig.sources": f"[('documents', {str(other)!r})]"})
    with pytest.raises(config.ConfigError, match="no_such_field"):
        config.parse(["quickstart_cpu.gin"], ["RunConfig.no_such_field = 1"])
    gin.clear_config()


def test_pruning_old_indexes_keeps_the_newest_two_and_other_hosts_copies_being_written(tmp_path):
    from jmlr_jax.train.refresh import prune_indexes
    names = ["index-a", "index-b", "index-c.hostB-7.tmp", "index-d.hostC-9.tmp", "index-e"]
    for i, name in enumerate(names):  # oldest first; the other hosts' copies aside are the newest but one
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    prune_indexes(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index-b", "index-c.hostB-7.tmp", "index-d.hostC-9.tmp",
                                                          "index-e"]


def test_index_refresh_rebuilds_logs_recall_and_resumes(assets, tmp_path):
    run = {"RunConfig.num_steps": "3", "RunConfig.refresh_every": "2", "RunConfig.recall_queries": "4"}
    t = trainer(assets, tmp_path / "r", **run)
    first_version = t.index.version
    t.run()
    t.close()
    assert t.index.version != first_version  # re-encoded with the trained retriever
    assert os.path.isdir(tmp_path / "r" / f"index-{t.index.version}")
    assert os.path.isfile(tmp_path / "r" / f"candidates-{t.index.version}.npy")
    recall = [x["refresh_recall_vs_exact"] for x in logged(tmp_path / "r") if "refresh_recall_vs_exact" in x]
    assert len(recall) == 1 and 0.5 <= recall[0] <= 1.0
    again = trainer(assets, tmp_path / "r", **run)  # resumes with the refreshed index
    assert int(again.state["step"]) == 3 and again.index.version == t.index.version
    again.close()


def test_model_flops_count_how_the_generator_trains(assets, tmp_path):
    """The logged MFU's FLOPs against the matmuls the step runs (its jaxpr's dot_generals; attention is not
    counted, the tiny generator's attention is a kernel call): they had counted every parameter at every token,
    embeddings and the LM head included (2.06x here; a quickstart step read as 100% of this CPU's fp32 matmul
    peak), and 6N per generator token under LoRA, whose frozen base gets no weight gradients (4N)."""
    for mode, extra in (("full", {}), ("lora", {"LoraConfig.rank": "2"}),
                        ("frozen", {"OptimConfig.llm_trainable": "''"})):
        t = trainer(assets, tmp_path / mode, **extra)
        batch = next(t.data_iter)
        assert t._llm == mode
        flops, _ = t.step_stats(batch)
        dots = dot_flops(jax.make_jaxpr(t.step_fn)(t.state, batch))
        assert 0.9 < flops / dots < 1.0, (mode, flops, dots)
        t.close()

"""A run whose workdir is a cloud path: checkpoints and config at the path, local-only files mirrored to it and
fetched back on another machine; evaluated and exported from it. Exercised on a local directory through the same
epath calls."""
import json
import os
import shutil

import gin
import pytest

from jmlr_jax import cli, config, experiment, workdir as workdir_lib
from jmlr_jax.eval import harness
from jmlr_jax.export import export_run
from tests.train.test_loop import assets, trainer  # noqa: F401  (module fixture, reused)


def test_cloud_workdir_mirrors_and_resumes_on_another_machine(assets, tmp_path, monkeypatch):  # noqa: F811
    bucket = str(tmp_path / "bucket")
    monkeypatch.setattr(workdir_lib, "is_remote", lambda p: str(p).startswith(bucket))  # "gs://..." stand-in
    monkeypatch.setenv("JMLR_LOCAL_CACHE", str(tmp_path / "cache"))
    remote = os.path.join(bucket, "run")
    steps = {"RunConfig.checkpoint_every": "1"}
    t = trainer(assets, remote, **steps, **{"RunConfig.num_steps": "1"})
    t.run()
    t.close()
    local = workdir_lib.local_dir(remote)
    assert local.startswith(str(tmp_path / "cache")) and os.path.isdir(os.path.join(local, "tb"))
    names = os.listdir(remote)
    assert {"config.json", "operative_config.gin", "checkpoints", "metrics.jsonl"} <= set(names)
    assert any(n.startswith("index-") for n in names) and any(n.startswith("candidates-") for n in names)

    shutil.rmtree(tmp_path / "cache")  # another machine: nothing local, the cloud workdir alone
    t2 = trainer(assets, remote, **steps, **{"RunConfig.num_steps": "2"})
    assert int(t2.state["step"]) == 1
    t2.run()
    t2.close()
    with open(os.path.join(remote, "metrics.jsonl")) as f:
        assert [json.loads(x)["step"] for x in f] == [1, 2]

    # evaluated on a third machine: the results land in the cloud workdir (a local directory named "gs:" had
    # held them), and an export made anywhere puts them in its model card
    monkeypatch.setenv("JMLR_LOCAL_CACHE", str(tmp_path / "cache3"))
    gin.clear_config()
    config.parse(["compare/eval.gin"], ["EvalConfig.retrieval = False", "EvalConfig.max_per_set = 2",
                                        "EvalConfig.output_dir = ''"])
    harness.evaluate_main(experiment.for_evaluation(remote), harness.EvalConfig())
    mirror = workdir_lib.eval_dir(remote)  # written where a local disk is, then uploaded
    assert mirror.startswith(str(tmp_path / "cache3")) and {"eval.json", "eval.md"} <= set(os.listdir(mirror))
    assert {"eval.json", "eval.md"} <= set(os.listdir(os.path.join(remote, "eval")))
    export_run(remote, str(tmp_path / "hf"))
    assert "From `eval/eval.md`" in (tmp_path / "hf" / "README.md").read_text()


def test_outputs_that_must_be_local_say_so():
    """Writers that need a local disk refuse a cloud path in one line (each had made a local directory "gs:")."""
    with pytest.raises(config.ConfigError, match="--out=gs://b/hf: export to a local directory"):
        cli._export(workdir="workdir/run", out="gs://b/hf")
    with pytest.raises(ValueError, match="EvalConfig.output_dir must be local"):
        harness.EvalConfig(output_dir="gs://b/eval")


def test_a_writer_replaces_only_new_empty_or_earlier_directories_of_its_kind(tmp_path):
    """workdir.check_replaceable, which export and save_index call before any work."""
    from jmlr_jax.errors import InputError

    check = workdir_lib.check_replaceable
    check(str(tmp_path / "new"), "out", "index", ("a", "b"))
    (tmp_path / "earlier").mkdir()
    check(str(tmp_path / "earlier"), "out", "index", ("a", "b"))  # empty
    (tmp_path / "earlier" / "a").write_text("")
    check(str(tmp_path / "earlier"), "out", "index", ("a", "b"))
    with pytest.raises(InputError, match=r"^out is not empty and not an earlier index \(it holds own\): write it"):
        check(str(tmp_path / "earlier"), "out", "index", ("a", "b"), lambda p: "own")
    for name in "wxyz":
        (tmp_path / "earlier" / name).write_text("")
    with pytest.raises(InputError, match=r"\(it holds w, x, y, \.\.\.\)"):
        check(str(tmp_path / "earlier"), "out", "index", ("a", "b"))
    with pytest.raises(InputError, match="^out is a file, not a directory$"):
        check(str(tmp_path / "earlier" / "a"), "out", "index", ("a", "b"))

"""Gin command-line handling and the index launchers end to end (subprocess, as a user runs them)."""
import json
import os
import re
import subprocess
import sys

import gin
import pytest

from jmlr_jax import config

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_split_gin_args():
    files, bindings, rest = config.split_gin_args(
        ["--gin_file=a.gin", "--gin_file", "b.gin", "--gin.SearchConfig.token_k=64", "--gin.X='s=1'", "--other"])
    assert files == ["a.gin", "b.gin"] and rest == ["--other"]
    assert bindings == ["SearchConfig.token_k = 64", "X = 's=1'"]
    rest = ["--workdir", "w", "--x=1"]
    assert config.pop_flag(rest, "workdir") == "w" and rest == ["--x=1"] and config.pop_flag(rest, "workdir") == ""
    with pytest.raises(config.ConfigError, match="expected --gin.NAME=VALUE"):
        config.split_gin_args(["--gin.foo"])


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_the_launchers_usage_and_runs_nothing(flag, capsys, monkeypatch):
    from jmlr_jax import cli

    monkeypatch.setattr(cli, "_train", lambda workdir="": pytest.fail("--help ran the job"))
    monkeypatch.setattr(sys, "argv", ["jmlr-train", flag])
    cli.train()
    out = capsys.readouterr().out
    assert out.startswith(cli.train.__doc__.strip()) and "--gin_file=FILE" in out and "--workdir=" in out
    assert "quickstart_cpu.gin" in out and "pipelines/" in out


def test_every_console_script_is_a_launcher_with_usage(capsys, monkeypatch):
    """Each `[project.scripts]` entry is a function of jmlr_jax.cli whose --help prints its usage and runs
    nothing; the seed pipelines have theirs (a wheel install has no launch/ scripts)."""
    import tomllib

    from jmlr_jax import cli

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert {"jmlr-train", "jmlr-pipeline", "jmlr-pipeline-eval"} <= scripts.keys()
    for job in ("_train", "_evaluate", "_build_index", "_search", "_export", "_pipeline", "_pipeline_eval"):
        monkeypatch.setattr(cli, job, lambda _job=job, **_: pytest.fail(f"--help ran {_job}"))
    for name, target in scripts.items():
        assert target.startswith("jmlr_jax.cli:"), (name, target)
        fn = getattr(cli, target.split(":")[1])
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        try:
            fn()
        except SystemExit as e:  # argparse's --help (jmlr-answer)
            assert e.code == 0, name
        out = capsys.readouterr().out
        assert out.startswith(fn.__doc__.strip() if name != "jmlr-answer" else "usage:"), (name, out[:200])


def test_pipeline_eval_reports_the_committed_tables(capsys, monkeypatch):
    """`jmlr-pipeline-eval --report_only=DIR` (launch/pipeline_eval.py) prints the README's table from the committed
    per-model JSON."""
    from jmlr_jax import cli

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["jmlr-pipeline-eval", "--gin_file=pipelines/qilin_med.gin",
                                      "--report_only=results/pipelines/qilin_med"])
    cli.pipeline_eval()
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    gin.clear_config()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert [r.split(" |")[0] for r in rows[1:]] == ["| base", "| cpt", "| sft", "| dpo"]
    assert all(r in readme for r in rows), [r for r in rows if r not in readme]


def test_a_configurable_rejecting_its_bindings_is_one_line(capsys):
    """A launcher's configurable that checks its values (here a pipeline stage, in its gin scope): one line, exit 2;
    other errors from the job stay tracebacks."""
    from jmlr_jax.train import stages

    argv = ["--gin_file=pipelines/qilin_med.gin", "--gin.cpt/StageConfig.kind='zzz'"]
    with pytest.raises(SystemExit) as e:
        config.run_main(lambda: stages.PipelineConfig(), argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "error: StageConfig.kind must be one of ('cpt', 'sft', 'dpo'), got 'zzz' " \
        "(cpt/StageConfig)\n"

    def bug():
        raise ValueError("a bug, not a binding")

    with pytest.raises(ValueError, match="a bug"):
        config.run_main(bug, argv[:1])
    gin.clear_config()


def test_a_run_stopped_early_exits_with_the_signal_code(capsys):
    """A run that saved and stopped on a signal is not finished: `train && touch done` (launch/compare.sh) must not
    mark it done, and a scheduler should start it again."""
    from jmlr_jax.errors import StoppedEarly

    for reason, code in (("SIGINT", 130), ("SIGTERM", 143), ("preemption (SIGTERM on some host)", 143)):
        def stopped():
            raise StoppedEarly(reason, 3)

        with pytest.raises(SystemExit) as e:
            config.run_main(stopped, ["--gin_file=retrieval/minilm_index.gin"])
        assert e.value.code == code
        assert capsys.readouterr().err == f"stopped at step 3 ({reason}); its checkpoint is saved: run it again " \
            "(the same command) to resume\n"
    gin.clear_config()


def test_config_file_bindings_and_errors(tmp_path):
    from jmlr_jax import experiment

    config.parse(["retrieval/minilm_index.gin"], ["SearchConfig.token_k = 7"])
    exp = experiment.from_gin()
    assert exp.search.token_k == 7 and exp.search.reorder == 256 and exp.data.data_dir == "../shared/data"
    assert experiment.Experiment.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp  # JSON round trip
    with pytest.raises(config.ConfigError, match="RunConfig has no field.*num_stepz"):
        experiment.Experiment.from_dict({"run": {"num_stepz": 1}})
    with pytest.raises(config.ConfigError, match="gin: .*token_kk"):
        config.parse(["retrieval/minilm_index.gin"], ["SearchConfig.token_kk = 7"])
    with pytest.raises(config.ConfigError, match="gin file not found: nope.gin"):
        config.parse(["nope.gin"])
    cwd = os.getcwd()
    try:  # from another directory, the repository's path and the bare name find the shipped file too
        os.chdir(tmp_path)
        for name in ("configs/retrieval/minilm_index.gin", "retrieval/minilm_index"):
            config.parse([name], ["SearchConfig.token_k = 5"])
            assert experiment.from_gin().search.token_k == 5
    finally:
        os.chdir(cwd)
    with pytest.raises(config.ConfigError, match="gin: "):
        config.parse(["retrieval/minilm_index.gin"], ["SearchConfig.token_k = [1,"])
    config.parse(["quickstart_cpu.gin"], ["RunConfig.batch_size = 0", "RunConfig.checkpoint_every = -1"])
    with pytest.raises(config.ConfigError) as e:  # one line (gin's own second line dropped)
        experiment.from_gin()
    assert str(e.value) == "RunConfig: batch_size=0, checkpoint_every=-1: each must be a positive integer"
    gin.clear_config()


def test_a_path_of_the_wrong_kind_is_one_line(tmp_path, capsys):
    """`launch/answer.py --corpus=DIR` had been an IsADirectoryError traceback, a workdir bound to a file
    (`--gin.RunConfig.workdir="'notes.txt'"`) a FileExistsError one."""
    with pytest.raises(SystemExit) as e, config.exits_on_bad_input():
        open(tmp_path)
    assert e.value.code == 2 and capsys.readouterr().err == f"error: [Errno 21] Is a directory: '{tmp_path}'\n"
    (tmp_path / "notes.txt").write_text("kept")
    with pytest.raises(SystemExit) as e, config.exits_on_bad_input():
        os.makedirs(tmp_path / "notes.txt", exist_ok=True)
    assert e.value.code == 2 and capsys.readouterr().err == \
        f"error: '{tmp_path / 'notes.txt'}' is a file, not a directory: bind a directory there\n"
    assert (tmp_path / "notes.txt").read_text() == "kept"


def test_a_bad_binding_is_named_with_what_to_write():
    """gin's own message for a bare word is Python's "malformed node or string ... <ast.Name object at 0x..>"."""
    with pytest.raises(config.ConfigError) as e:
        config.parse(["quickstart_cpu.gin"], ["RunConfig.seed = 1", "RunConfig.llm = smollm"])
    assert str(e.value) == "gin: --gin.RunConfig.llm=smollm: 'smollm' is not a value (a string needs quotes: " \
        "--gin.RunConfig.llm=\"'smollm'\")"
    with pytest.raises(config.ConfigError, match=r"^gin: --gin.SearchConfig.token_k=\[1,: "):
        config.parse(["quickstart_cpu.gin"], ["RunConfig.seed = 1", "SearchConfig.token_k = [1,"])
    gin.clear_config()


def test_bad_training_settings_are_rejected_before_a_run_starts():
    """Values that would have trained (a negative learning rate ascends the loss) or silently done something else
    (a LoRA target with a typo left that projection un-adapted)."""
    from jmlr_jax.experiment import RunConfig
    from jmlr_jax.train.stages import StageConfig
    from jmlr_jax.train.state import LoraConfig, OptimConfig

    for kw, msg in [(dict(llm_lr=-1e-5), "llm_lr=-1e-05 must be >= 0"), (dict(b2=1.0), "b2=1.0 must be in"),
                    (dict(eps=0.0), "eps=0.0 must be > 0"), (dict(retriever_lr=float("nan")), "retriever_lr=nan"),
                    (dict(llm_trainable="layers/(attn"), "not a regular expression")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            OptimConfig(**kw)
    with pytest.raises(ValueError, match="targets .*'gat'.* each must be one of"):
        LoraConfig(rank=4, targets=("q", "gat"))
    with pytest.raises(ValueError, match="rank=-2"):
        LoraConfig(rank=-2)
    with pytest.raises(ValueError, match="seed=1.5 must be an integer"):
        RunConfig(seed=1.5)
    for kw, msg in [(dict(lr=-1.0), "lr must be >= 0"), (dict(dpo_beta=0.0), "dpo_beta must be > 0")]:
        with pytest.raises(ValueError, match=msg):
            StageConfig(**kw)
    assert OptimConfig(llm_lr=0.0, llm_trainable="") and LoraConfig(rank=8, targets=["q", "v"])  # still allowed


def test_counts_and_sizes_are_checked_where_they_are_bound():
    """A zero budget, batch or k is one line naming the configurable and the field, not a shape error after the
    models have loaded and the corpus was encoded."""
    from jmlr_jax.data.lm_data import LMDataConfig
    from jmlr_jax.data.splits import DataConfig
    from jmlr_jax.data.templates import Budgets
    from jmlr_jax.eval.stage_eval import StageEvalConfig
    from jmlr_jax.experiment import RunConfig
    from jmlr_jax.retrieval.corpus import CorpusConfig
    from jmlr_jax.retrieval.encode import RetrieverConfig
    from jmlr_jax.retrieval.index import IndexConfig, SearchConfig
    from jmlr_jax.train.stages import PipelineConfig

    for make, msg in [(lambda: Budgets(doc=0), "Budgets: doc=0: each must be a positive integer"),
                      (lambda: SearchConfig(token_k=0, rerank_docs=-1), "SearchConfig: token_k=0: each must be a "
                       "positive integer; rerank_docs=-1: each must be an integer >= 0"),
                      (lambda: SearchConfig(resident_dtype="bfloat16"), "resident_dtype='bfloat16' must be"),
                      (lambda: IndexConfig(encode_batch=0), "IndexConfig: encode_batch=0"),
                      (lambda: IndexConfig(length_buckets=()), "length_buckets=() must be"),
                      (lambda: RetrieverConfig(query_maxlen=2.5), "RetrieverConfig: query_maxlen=2.5"),
                      (lambda: RunConfig(refresh_every=-1), "RunConfig: refresh_every=-1: each must be an integer"),
                      (lambda: RunConfig(batch_size=True), "batch_size=True"),
                      (lambda: PipelineConfig(keep_checkpoints=0), "PipelineConfig: keep_checkpoints=0"),
                      (lambda: DataConfig(heldout_fraction=1.0), "heldout_fraction=1.0 must be in [0, 1)"),
                      (lambda: DataConfig(medmcqa_cop_base=2), "medmcqa_cop_base=2 must be 0, 1 or None"),
                      (lambda: LMDataConfig(seq_len=0), "LMDataConfig: seq_len=0"),
                      (lambda: LMDataConfig(text_heldout_fraction=-0.1), "text_heldout_fraction=-0.1"),
                      (lambda: CorpusConfig(chunk_size=50, overlap=50), "need overlap < chunk_size"),
                      (lambda: CorpusConfig(on_error="ignore"), "on_error='ignore'"),
                      (lambda: StageEvalConfig(batch_size=0, pairs=-1), "StageEvalConfig: batch_size=0: each must be "
                       "a positive integer; pairs=-1: each must be an integer >= 0")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            make()


def _run(*args, cwd=ROOT):
    env = dict(os.environ, GLOG_minloglevel="2", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_evaluate_launcher_knows_its_config_without_a_gin_file(tmp_path):
    """The README's `launch/evaluate.py --workdir=W --gin.EvalConfig.X=...`: EvalConfig is registered before gin
    parses (it once was only after: 'No configurable matching', and a traceback with --workdir alone)."""
    for extra in ([], ["--gin.EvalConfig.max_per_set=2"]):
        out = _run("launch/evaluate.py", f"--workdir={tmp_path / 'none'}", *extra)
        assert out.returncode == 2 and out.stderr.strip() == \
            f"error: {tmp_path / 'none'}: no config.json; not a training workdir (train with launch/tpu_train.py)"


def test_build_index_and_search_launchers(tmp_path, minilm):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps(r) for r in [
        {"id": "htn", "title": "Hypertension", "text": "Thiazide diuretics are first-line for hypertension."},
        {"id": "dm", "title": "Diabetes", "text": "Metformin is the first-line drug for type 2 diabetes."},
        {"id": "flu", "title": "Influenza", "text": "Annual influenza vaccination for everyone 6 months or older."},
    ]) + "\n")
    idx = tmp_path / "idx"
    common = ["--gin_file=retrieval/minilm_index.gin", f"--gin.CorpusConfig.sources=[('documents', '{docs}')]",
              f"--gin.INDEX_DIR='{idx}'"]
    out = _run("launch/build_index.py", *common)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "corpus: 3 passages" in out.stdout and os.path.isfile(idx / "operative_config.gin")
    assert "CorpusConfig.sources" in (idx / "operative_config.gin").read_text()
    out = _run("launch/search.py", *common, "--gin.search_main.question='what drug treats type 2 diabetes?'",
               "--gin.search_main.k=2")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()[:2] in ("1.", "2.")]
    assert "dm#0" in lines[0] and len(lines) == 2
    blank = _run("launch/search.py", *common, "--gin.search_main.question='  '")
    assert blank.returncode == 2 and blank.stderr.strip().splitlines() == ["error: question is empty (search_main)"]
    zero = _run("launch/search.py", *common, "--gin.search_main.question='x'", "--gin.search_main.k=0")
    assert zero.returncode == 2 and zero.stderr.strip().splitlines() == \
        ["error: k=0 must be a positive integer (search_main)"]
    bad = _run("launch/build_index.py", *common, "--gin.IndexConfig.no_such_setting=1")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: gin:") and len(bad.stderr.splitlines()) == 1
    missing = _run("launch/build_index.py", "--gin_file=retrieval/minilm_index.gin",
                   f"--gin.CorpusConfig.sources=[('guidelines', '{tmp_path / 'absent.jsonl'}')]")
    assert missing.returncode == 2 and "not found" in missing.stderr
    no_index = _run("launch/search.py", "--gin_file=retrieval/minilm_index.gin", f"--gin.INDEX_DIR='{tmp_path / 'no'}'",
                    "--gin.search_main.question='x'")  # raised inside a gin configurable: gin's own line dropped
    assert no_index.returncode == 2 and no_index.stderr.strip().splitlines() == \
        [f"error: {tmp_path / 'no'}: no manifest.json (not an index directory, or an interrupted save)"]

"""The README's set-up commands are the ones CI runs."""
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _blocks(lang: str) -> list[str]:
    """The README's fenced code blocks in `lang`, in order."""
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(rf"```{lang}\n(.*?)\n```", f.read(), re.S)


def test_ci_runs_exactly_the_readme_test_command():
    blocks = _blocks("bash")
    assert len(blocks) == 2, "the README has exactly two set-up commands"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_lines = [ln for ln in f.read().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci_lines == [blocks[1].strip()]


def test_main_command_runs_the_quickstart_training():
    assert _blocks("bash")[0].strip().endswith("python launch/tpu_train.py --gin_file=quickstart_cpu.gin")
    assert os.path.isfile(os.path.join(ROOT, "configs", "quickstart_cpu.gin"))


def test_every_dependency_is_pinned_in_the_constraints_file():
    """pyproject.toml holds ranges; constraints.txt (which CI and the README install with) pins each exactly."""
    import tomllib

    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        pins = [Requirement(ln) for ln in f.read().splitlines() if ln and not ln.startswith("#")]
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    for python in ("3.11", "3.12", "3.13"):
        env = {"python_version": python}
        exact = {norm(p.name): p.specifier for p in pins if p.marker is None or p.marker.evaluate(env)}
        for r in wanted:
            spec = exact.get(norm(r.name))
            assert spec is not None and str(spec).startswith("=="), f"{r.name}: no exact pin for Python {python}"
            assert r.specifier.contains(str(spec)[2:], prereleases=True), f"{r.name}{spec} outside {r.specifier}"


def test_configs_ship_with_the_package():
    """Installed entry points find the gin files: configs/ is mapped into the wheel as jmlr_jax/configs."""
    import glob
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    assert setuptools["package-dir"]["jmlr_jax.configs"] == "configs" and "jmlr_jax.configs" in setuptools["packages"]
    assert glob.glob(os.path.join(ROOT, "configs", "**", "*.gin"), recursive=True)


def test_every_subpackage_is_in_the_wheel():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        packages = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {os.path.relpath(d, ROOT).replace(os.sep, ".") for d, _, files in os.walk(os.path.join(ROOT, "jmlr_jax"))
             if "__init__.py" in files}
    assert found <= packages, f"missing from pyproject.toml [tool.setuptools] packages: {sorted(found - packages)}"


def test_contents_links_reach_headings():
    """Every in-page link of the README reaches a heading (GitHub's anchors: lower case, punctuation dropped,
    spaces to hyphens), so the contents line stays true when a section is renamed."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) >= 14 and not [a for a in links if a not in anchors]


def _run_block(code: str, where: str, replace: dict[str, str]) -> dict:
    """Runs a README block as a user would paste it, its placeholder paths replaced (each must occur)."""
    for old, new in replace.items():
        assert old in code, f"{where}: {old} is no longer in the block"
        code = code.replace(old, new)
    ns: dict = {}
    exec(compile(code, f"README.md ({where})", "exec"), ns)
    return ns


def test_readme_python_blocks_run(smollm2, three_guidelines, tmp_path, capsys, monkeypatch):
    """The README's Python examples run as written (real weights), with a tiny Hugging Face Llama directory for
    the user's Llama-2 path and a three-guideline index for the full corpus's."""
    import json

    import gin

    from jmlr_jax import config, experiment
    from jmlr_jax.retrieval import launch
    from tests.helpers import save_tiny_llama_dir

    using_it, search = _blocks("python")
    ns = _run_block(using_it, "Using it", {
        '"/path/to/Llama-2-7b-hf"': repr(save_tiny_llama_dir(str(tmp_path / "llama"))),
        '"/tmp/export"': repr(str(tmp_path / "export"))})
    assert "metformin" in capsys.readouterr().out
    assert ns["logits_BxLxV"].shape[:2] == (1, len(ns["tok"].encode("Metformin is")))
    assert os.path.isfile(tmp_path / "export" / "config.json")
    scores = ns["scores_QxK"]  # the thiazide passage answers the hypertension query, the measles one does not
    assert scores.shape == (1, 2) and scores[0, 0] > scores[0, 1]

    with open(three_guidelines) as f:
        titles = [json.loads(line)["title"] for line in f]
    index_dir = str(tmp_path / "index")
    monkeypatch.chdir(ROOT)  # the block's relative config path, as from a checkout
    config.parse(["retrieval/minilm_index.gin"], [f"CorpusConfig.sources = [('documents', {three_guidelines!r})]"])
    launch.index_main(experiment.from_gin(), index_dir)
    gin.clear_config()
    ns = _run_block(search, "an index from Python", {'"workdir/index_minilm"': repr(index_dir)})
    printed = capsys.readouterr().out
    assert ns["ids_QxK"].shape == (1, 30) and [t for t in titles if t in printed]
    gin.clear_config()

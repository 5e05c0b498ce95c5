"""Every notebook runs top to bottom (nbclient, a real ipykernel) on tiny settings; git holds them without outputs."""
import glob
import json
import os

import nbformat

from tests.conftest import DATA_DIR
from tests.helpers import logged, save_tiny_llama_dir
from tests.test_compare_table import fake_result

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_notebooks_are_stored_without_outputs():
    assert {os.path.basename(p) for p in NOTEBOOKS} == {"quickstart.ipynb", "retrieval.ipynb", "results.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path}: outputs committed"


def _run(path: str, settings: dict, tmp_path, monkeypatch) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    for var in ("IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))  # kernel state out of HOME (STACK.md gotcha 12)
    monkeypatch.setenv("JMLR_NOTEBOOK", json.dumps(settings))
    # The kernel sees the machine as a user's does (one CPU device), not the suite's 8 forced host devices, on
    # which the default mesh would replicate the run eight times; it keeps the suite's compile-speed flags.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
    monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    return nb


def _text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_quickstart_notebook(three_guidelines, tmp_path, monkeypatch):
    llm = save_tiny_llama_dir(str(tmp_path / "tiny_llama"))
    settings = {"data": DATA_DIR, "llm": llm, "corpus": [["documents", three_guidelines]], "passages": 0, "steps": 1,
                "workdir": str(tmp_path / "run"), "eval_questions": 2,
                "gin": {"DataConfig.max_examples": 8, "RunConfig.llm_overrides": "()", "Budgets.doc": 24,
                        "Budgets.question": 48, "Budgets.answer": 8, "RetrieverConfig.doc_maxlen": 48,
                        "JMLRConfig.num_candidates": 4, "JMLRConfig.num_sampled": 3, "JMLRConfig.num_docs": 2}}
    nb = _run(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), settings, tmp_path, monkeypatch)
    out = _text(nb)
    assert "[1]" in out and "(cites [1]" in out and "accuracy" in out
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))
    rows = logged(tmp_path / "run")
    assert [r["step"] for r in rows] == [1]


def test_retrieval_notebook(three_guidelines, tmp_path, monkeypatch):
    nb = _run(os.path.join(ROOT, "notebooks", "retrieval.ipynb"),
              {"guidelines": three_guidelines, "passages": 0, "index_dir": str(tmp_path / "index"),
               "query": "treatment of high blood pressure"}, tmp_path, monkeypatch)
    out = _text(nb)
    assert "ScaNN top-5 == exact top-5:" in out and "MaxSim = " in out
    assert os.path.isfile(tmp_path / "index" / "manifest.json")


def test_results_notebook(tmp_path, monkeypatch):
    ev = tmp_path / "eval"
    ev.mkdir()
    gold = {"n": 500, "corpus_passages": 6000, "top1": 0.5, "top7": 0.75}
    (ev / "a_base_rag.json").write_text(json.dumps(fake_result("a_base_rag", 0.3, gold=gold)))
    (ev / "d_jmlr_rag.json").write_text(json.dumps(fake_result("d_jmlr_rag", 0.4, gold=gold)))
    nb = _run(os.path.join(ROOT, "notebooks", "results.ipynb"), {"eval_dir": str(ev)}, tmp_path, monkeypatch)
    out = _text(nb)
    assert "['a_base_rag', 'd_jmlr_rag']" in out and "0.400 ± 0.100" in out
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) == 2

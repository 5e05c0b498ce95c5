"""The README's pipeline tables regenerate from the committed per-model JSON (results/pipelines/<name>/)."""
import os

import pytest

from jmlr_jax.errors import InputError
from jmlr_jax.eval.stage_report import load_results, table

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
# pipeline -> its models, in the table's order
COMMITTED = {"qilin_med": ["base", "cpt", "sft", "dpo"], "qilin_med_gpu": ["base", "cpt", "sft", "dpo"],
             "pmc_llama": ["base", "cpt", "sft"]}


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_readme_table_comes_from_the_committed_json(name):
    results = load_results(os.path.join(ROOT, "results", "pipelines", name), COMMITTED[name])
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    rows, footnote = table(results).split("\n\n")
    for line in rows.splitlines():  # every row, the header too, as the script writes it
        assert line in readme, f"README lacks this row of results/pipelines/{name}: {line[:80]}"
    assert footnote in readme
    assert [r["model"] for r in results] == COMMITTED[name]


def test_a_missing_model_is_named(tmp_path):
    with pytest.raises(InputError, match="no evaluation of model 'base'"):
        load_results(str(tmp_path), ["base"])

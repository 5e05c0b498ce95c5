"""Exporting a trained run: both directories load in `transformers` and compute what jmlr_jax computes; the
run answers a question with its own retriever (launch/answer.py --workdir)."""
import sys

import gin
import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from jmlr_jax import cli
from jmlr_jax.errors import InputError
from jmlr_jax.convert import load_preset
from jmlr_jax.models import ColBERT, Llama
from jmlr_jax.train.weights import base_params, restore_params
from tests.helpers import hf_logits
from tests.train.test_loop import assets, trainer  # noqa: F401  (module fixture, reused)


def test_exported_run_loads_in_transformers_and_answers(assets, tmp_path, monkeypatch, capsys):  # noqa: F811
    from transformers import BertModel, LlamaForCausalLM

    t = trainer(assets, tmp_path / "run", **{"RunConfig.num_steps": "1", "LoraConfig.rank": "4"})
    t.run()
    t.close()
    gin.clear_config()
    out = tmp_path / "hf"
    monkeypatch.setattr(sys, "argv", ["jmlr-export", f"--workdir={tmp_path / 'run'}", f"--out={out}"])
    cli.export()  # the console entry point (launch/export.py calls the same)
    w = restore_params(str(tmp_path / "run"))  # what it exported

    # Generator: LoRA merged (the weights moved from the base), same logits in transformers.
    base = base_params(w.exp, lora=False)[-1]["llm"]  # the model LoRA adapted
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(w.llm_params),
                                                        jax.tree_util.tree_leaves(base))]
    assert any(moved)
    model = LlamaForCausalLM.from_pretrained(out / "generator", attn_implementation="eager").eval()
    tokens = np.asarray([w.tok.encode("Metformin lowers blood glucose.")])
    ours = jax.jit(Llama(w.llm_cfg).apply)({"params": w.llm_params}, tokens)
    np.testing.assert_allclose(np.asarray(ours), hf_logits(model, tokens), rtol=2e-4, atol=2e-4)

    # Retriever: BertModel's hidden states through the exported projection = our ColBERT document embeddings.
    ids, attn, keep = w.ctok.docs(["Thiazide diuretics are first-line agents for hypertension."])
    ours = ColBERT(w.rcfg).apply({"params": w.r_params}, ids, attn, keep, method="encode_doc")
    bert = BertModel.from_pretrained(out / "retriever").eval()
    with torch.no_grad():
        h = bert(input_ids=torch.as_tensor(np.asarray(ids)), attention_mask=torch.as_tensor(np.asarray(attn)),
                 token_type_ids=torch.zeros_like(torch.as_tensor(np.asarray(ids)))).last_hidden_state.numpy()
    e = h @ load_file(out / "retriever" / "model.safetensors")["linear.weight"].T
    e = e / np.linalg.norm(e, axis=-1, keepdims=True) * np.asarray(keep)[..., None]
    np.testing.assert_allclose(np.asarray(ours), e, atol=1e-4)

    # ...and back into jmlr_jax with its ColBERT settings and the trained projection (not a fresh init).
    cfg, params, _ = load_preset(str(out / "retriever"))
    assert cfg == w.rcfg
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(w.r_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    card = (out / "README.md").read_text()
    assert "(step 1)" in card and "LoRA rank 4 merged" in card and '"num_steps": 1' in card

    # Exporting again replaces the earlier export whole: a shard file of it (as a larger model writes) is gone.
    (out / "generator" / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    cli.export()
    assert not (out / "generator" / "model-00001-of-00002.safetensors").exists()
    assert (out / "README.md").read_text() == card

    # The same run answers (launch/answer.py --workdir): its weights (LoRA merged), corpus and template; by default
    # as many passages of its corpus as it was trained to read (JMLRConfig.num_docs = 2), or --k of them.
    from jmlr_jax import rag
    from jmlr_jax.eval import mcq

    capsys.readouterr()
    for argv, n in (([], w.exp.jmlr.num_docs), (["--k", "1"], 1), (["--k", "0"], 0)):
        rag.main(["--workdir", str(tmp_path / "run"), "--question", "Who should be screened?",
                  "--max_new_tokens", "4", *argv])
        out = capsys.readouterr().out
        cited = [line.split()[1] for line in out.splitlines() if line.strip().startswith("[")]
        assert len(cited) == n and set(cited) <= {p.id for p in t.corpus.passages}, (argv, out)
        assert ("the run's retriever (step 1)" in out) == (n > 0)
    assert w.exp.jmlr.num_docs == 2
    # an answer that goes on to a next question of the run's template ends before it
    more = w.tok.encode(" Every year.\n\nQuestion: Who else?")
    monkeypatch.setattr(mcq, "generate_ids", lambda *a, **k: [more])
    rag.main(["--workdir", str(tmp_path / "run"), "--question", "Who should be screened?"])
    out = capsys.readouterr().out
    assert "Answer: Every year.\n" in out and "Who else" not in out
    with pytest.raises(SystemExit):  # the run's data looked for elsewhere (--data_dir): a one-line error if absent
        rag.main(["--workdir", str(tmp_path / "run"), "--data_dir", str(tmp_path / "nowhere")])
    assert f"DataConfig.data_dir '{tmp_path / 'nowhere'}' is not a directory" in capsys.readouterr().err



def test_export_refuses_a_directory_that_is_not_an_earlier_export(tmp_path, monkeypatch, capsys):
    """`--out=.` in a checkout would have overwritten its README.md; checked before the run is restored."""
    from jmlr_jax.export import check_out_dir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my project\n")
    (mine / "notes.txt").write_text("keep me")
    monkeypatch.setattr(sys, "argv", ["jmlr-export", f"--workdir={tmp_path / 'no_run'}", f"--out={mine}"])
    with pytest.raises(SystemExit) as e:
        cli.export()
    assert e.value.code == 2 and capsys.readouterr().err == \
        f"error: --out={mine} is not empty and not an earlier export (it holds notes.txt): write it to a new or " \
        "empty directory\n"
    assert (mine / "README.md").read_text() == "# my project\n" and sorted(p.name for p in mine.iterdir()) == \
        ["README.md", "notes.txt"]
    (mine / "notes.txt").unlink()
    with pytest.raises(InputError, match="README.md \\(not a model card\\)"):
        check_out_dir(str(mine))
    (mine / "README.md").write_text("# JMLR run `r` (step 3)\n")
    (mine / "generator").mkdir()
    check_out_dir(str(mine))  # an earlier export, and new or empty directories, are fine
    check_out_dir(str(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    check_out_dir(str(tmp_path / "empty"))

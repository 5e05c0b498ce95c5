"""Export a trained run for the Hugging Face world (`jmlr-export --workdir=W --out=DIR`).

    DIR/generator/  Llama directory (LoRA merged into the weights) + tokenizer: `LlamaForCausalLM.from_pretrained`
    DIR/retriever/  BERT directory + ColBERT projection (`linear.weight`, ColBERT's own layout) + tokenizer:
                    `BertModel.from_pretrained`; `jmlr_jax.convert.load_preset(DIR/retriever)` restores the ColBERT
    DIR/README.md   model card: the run's training config, the checkpoint step and its evaluation tables
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

from etils import epath

from jmlr_jax import parallel, workdir as workdir_lib
from jmlr_jax.convert import save_hf_colbert, save_hf_llama
from jmlr_jax.tokenizers import save_tokenizer
from jmlr_jax.train.weights import Restored, restore_on_training_mesh


ENTRIES = ("generator", "retriever", "README.md")  # what an export writes into its directory
CARD_TITLE = "# JMLR run "


def check_out_dir(out_dir: str) -> None:
    """An export goes to a new or empty directory, or replaces an earlier export there (its README.md is a model
    card); any other directory is refused before anything is restored or written."""
    def not_a_card(path: str) -> str:
        card = os.path.join(path, "README.md")
        return "" if not os.path.isfile(card) or _first_line(card).startswith(CARD_TITLE) else \
            "README.md (not a model card)"

    workdir_lib.check_replaceable(out_dir, f"--out={out_dir}", "export", ENTRIES, not_a_card)


def _first_line(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline()


def export_run(workdir: str, out_dir: str, step: int | None = None) -> Restored:
    """Writes the run's latest (or given) checkpoint to `out_dir`; returns the restored weights (on the host).
    The checkpoint is restored onto the mesh the run trained on, as evaluation does (a 7B state with its Adam
    moments need not fit one device), then gathered to the host; process 0 writes. An earlier export in
    `out_dir` is replaced whole (no shard or tokenizer file of it left beside the new ones)."""
    check_out_dir(out_dir)
    w = restore_on_training_mesh(workdir, step)
    w = dataclasses.replace(w, llm_params=parallel.host_copy(w.llm_params))  # a collective: every host
    if not workdir_lib.is_lead():
        return w
    gen, ret = os.path.join(out_dir, "generator"), os.path.join(out_dir, "retriever")
    for d in (gen, ret):
        shutil.rmtree(d, ignore_errors=True)
    save_hf_llama(gen, w.llm_cfg, w.llm_params)
    save_tokenizer(w.tok, gen)
    save_hf_colbert(ret, w.rcfg, w.r_params)
    save_tokenizer(w.ctok.tok, ret)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(model_card(workdir, w))
    return w


def model_card(workdir: str, w: Restored) -> str:
    """Markdown: what was trained from what, with which settings, and how it scored (when evaluated)."""
    exp = w.exp
    lines = [
        f"# JMLR run `{os.path.basename(os.path.normpath(workdir))}` (step {w.meta['step']})", "",
        "A generator (Llama) and a ColBERT retriever trained together with jmlr_jax (JMLR, arXiv 2402.17887).", "",
        f"- generator: `generator/`, from `{exp.run.llm}`; "
        + (f"LoRA rank {exp.lora.rank} merged into the weights" if exp.lora.rank else "full fine-tuning"),
        f"- retriever: `retriever/`, from `{exp.retriever.name}`; {w.rcfg.dim}-d ColBERT projection as `linear.weight`",
        f"- prompt: {exp.jmlr.num_docs} retrieved passages of <= {exp.budgets.doc} tokens, question <= "
        f"{exp.budgets.question}, answer <= {exp.budgets.answer}", "",
    ]
    evals = epath.Path(workdir) / "eval"  # a cloud workdir's too (evaluation uploads it)
    tables = sorted(evals.glob("*.md")) if evals.is_dir() else []
    lines += ["## Evaluation", ""]
    if tables:
        for t in tables:
            lines += [f"From `eval/{t.name}`:", "", t.read_text().strip(), ""]
    else:
        lines += ["Not evaluated (run `launch/evaluate.py --workdir=...`, then export again).", ""]
    lines += ["## Training config", "", "```json", json.dumps(exp.to_dict(), indent=1), "```", ""]
    return "\n".join(lines)

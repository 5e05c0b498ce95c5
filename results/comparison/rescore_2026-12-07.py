"""How the committed plain-template answers were brought up to date on 2026-12-07 (run once, from the repository root):

    python results/comparison/rescore_2026-12-07.py           # what would change (every uncut answer must rescore to
    python results/comparison/rescore_2026-12-07.py --write   # its stored figures: "mismatch-uncut 0"), then write

The answers had been generated uncut; `Measures.measure` now cuts each before a next "Question:" the base generator
writes itself (`PromptTemplate.stop_strings`), so the stored ones are cut the same way and scored again against the
same targets (the answer cut to answer_tokens, as the part scored it). Decoding is greedy and the cut is applied to
the decoded text, so this gives what a rerun of the part's generation gives now. The README's tables and plots were
then regenerated with `launch/compare_evidence.py --gin_file=compare/evidence.gin --report_only=1`.
"""
import glob
import json
import os
import sys

from jmlr_jax import config
from jmlr_jax.compare.evidence_setup import EvidenceConfig, build_setup, write_json
from jmlr_jax.compare.report import text_scores_per_question
from jmlr_jax.convert.presets import load_llm_tokenizer
from jmlr_jax.data import evidence as ev
from jmlr_jax.generate import cut_at_stop

write = "--write" in sys.argv
config.parse(["compare/evidence.gin"])
cfg = EvidenceConfig()
setup = build_setup(cfg)
tpl = ev.GENERATIVE_TEMPLATE
print("stops", tpl.stop_strings)
tok = load_llm_tokenizer(cfg.llm)
recs = {r.id: r for r in setup.sets["heldout_focus"]}
ref = lambda r: tok.decode(tok.encode(tpl.answer.format(text=r.answer))[: cfg.answer_tokens])  # noqa: E731
for path in sorted(glob.glob("results/comparison/*.json")):
    if os.path.basename(path).startswith("chat_"):
        continue
    d = json.load(open(path))
    rows = d.get("sets", {}).get("heldout_focus", []) if isinstance(d, dict) else []
    rows = [r for r in rows if "output" in r]
    if not rows:
        continue
    outs = [cut_at_stop(r["output"], tpl.stop_strings) for r in rows]
    sc = text_scores_per_question(outs, [ref(recs[r["id"]]) for r in rows])
    same = [all(r[k] == s[k] for k in ("rougeL", "bleu1")) for r, s in zip(rows, sc)]
    cut = [o != r["output"] for o, r in zip(outs, rows)]
    bad = [i for i in range(len(rows)) if not cut[i] and not same[i]]
    old = sum(r["rougeL"] for r in rows) / len(rows); new = sum(s["rougeL"] for s in sc) / len(rows)
    print(os.path.basename(path), "cut", sum(cut), "mismatch-uncut", len(bad), f"rougeL {old:.4f} -> {new:.4f}")
    if write and sum(cut):
        for r, o, s in zip(rows, outs, sc):
            r.update(output=o, **s)
        write_json(path, d)

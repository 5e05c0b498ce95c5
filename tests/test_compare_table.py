"""launch/compare_table.py: README tables come from the evaluation JSON files."""
import json
import math
import subprocess
import sys


def fake_result(name, acc, ckpt=None, gold=None):
    summary = [{"set": s, "subject": "all", "n": 10, "accuracy": acc, "se": 0.1, "unparsed": 0}
               for s in ("mmlu_med", "pubmedqa_test", "medmcqa_heldout")]
    summary.append({"set": "mmlu_med", "subject": "anatomy", "n": 4, "accuracy": 0.25, "se": 0.2, "unparsed": 0})
    r = {"name": name, "source": {"checkpoint": ckpt} if ckpt else {"base": "x"}, "summary": summary,
         "settings": {"eval": {"mode": "loglik"}, "budgets": {"doc": 64, "question": 160, "answer": 24}}}
    if gold:
        r["gold_recall"] = gold
    # scores that always favour A but rank the gold option next: plain accuracy 1/4, prior removed 4/4
    ll = {"A": [0.0, -3.0, -3.0, -3.0], "B": [0.0, -1.0, -3.0, -3.0], "C": [0.0, -3.0, -1.0, -3.0],
          "D": [0.0, -3.0, -3.0, -1.0]}
    r["predictions"] = [{"set": "mmlu_med", "pred_letter": "A", "answer": a, "logliks": ll[a]} for a in "ABCD"]
    return r


def test_table_from_json_into_readme(tmp_path):
    ev = tmp_path / "eval"
    ev.mkdir()
    run = tmp_path / "d_jmlr"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": i, "data_s": 1.0, "device_s": 29.0})
                                                 for i in range(4)) + "\n")
    gold = {"n": 500, "corpus_passages": 6000, "top1": 0.5, "top7": 0.75}
    (ev / "a_base.json").write_text(json.dumps(fake_result("a_base", 0.3)))
    (ev / "d_jmlr_rag.json").write_text(json.dumps(fake_result("d_jmlr_rag", 0.4, str(run / "checkpoints"), gold)))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- compare-table:begin -->\nSTALE\n<!-- compare-table:end -->\nrest\n")
    out = subprocess.run([sys.executable, "launch/compare_table.py", f"--eval_dir={ev}", f"--readme={readme}"],
                         capture_output=True, text=True, check=True).stdout
    text = readme.read_text()
    assert "STALE" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "| (a) base, no training | no | 0.300 ± 0.100 | 0.300 ± 0.100 | 0.300 ± 0.100 | 0.300 | - |" in text
    assert "| (d) JMLR joint training | top-3 | 0.400 ± 0.100 |" in text and "| 0.400 | 2.0 |" in text  # 4 x 30 s
    assert "*Sum of the logged step times" in text
    assert "| (b) fine-tuned without retrieval | no | not run |" in text
    assert "| JMLR-trained retriever (after) | 0.500 | 0.750 |" in text
    p_sure, p_near = 1 / (1 + 3 * math.exp(-3)), 1 / (1 + math.exp(-1) + 2 * math.exp(-3))  # top-option softmax
    assert f"| (a) base, no training | no | A 100% (gold 25%), p {(p_sure + 3 * p_near) / 4:.2f} | - | - |" in text
    assert "| (a) base, no training | no | 1.000 | - | - | 1.000 |" in text  # letter prior removed
    assert "| anatomy | 4 | 0.250 | 0.250 |" in text and out.strip() in text

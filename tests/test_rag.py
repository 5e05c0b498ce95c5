"""launch/answer.py without a trained run: the real models answer from a guideline file, cite the passage they
used, and keep the encoded passages for the next question; bad input is one line."""
import json

import pytest

from jmlr_jax import rag
from jmlr_jax.generate import cut_at_stop
from jmlr_jax.retrieval import store

GUIDELINES = [
    {"id": "bp", "title": "Screening for high blood pressure in adults",
     "text": "Adults aged 40 years or older and adults at increased risk for high blood pressure should be screened "
             "every year. Adults aged 18 to 39 years with normal blood pressure and no risk factors should be "
             "rescreened every 3 to 5 years."},
    {"id": "flu", "title": "Influenza vaccination",
     "text": "Routine annual influenza vaccination is recommended for all persons aged 6 months or older who do not "
             "have contraindications."},
    {"id": "bone", "title": "Screening for osteoporosis",
     "text": "Women aged 65 years or older should be screened for osteoporosis with bone measurement testing to "
             "prevent osteoporotic fractures."},
]


def _argv(tmp_path, question: str) -> list[str]:
    corpus = tmp_path / "guidelines.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in GUIDELINES))
    return ["--question", question, "--corpus", str(corpus), "--cache_dir", str(tmp_path / "cache"),
            "--max_new_tokens", "8"]


def _spy_on_prompts(monkeypatch, answer: str | None = None) -> list[str]:
    """(prompt, stop tokens, stop strings) rag gives the generator; answered by the model, or with `answer` when
    given (cut at the stop strings as `generate` cuts)."""
    prompts, real = [], rag.generate

    def spy(cfg, params, tok, batch, **kw):
        prompts.extend((p, [tok.id_to_token(i) for i in kw["stop_ids"]], kw["stop_strings"]) for p in batch)
        if answer is None:
            return real(cfg, params, tok, batch, **kw)
        return [cut_at_stop(answer, kw["stop_strings"])] * len(batch)

    monkeypatch.setattr(rag, "generate", spy)
    return prompts


def test_answers_with_a_cited_passage_and_keeps_the_index(smollm2, minilm, tmp_path, capsys, monkeypatch):
    prompts = _spy_on_prompts(monkeypatch)
    rag.main(_argv(tmp_path, "How often should adults be screened for high blood pressure?"))
    out = capsys.readouterr().out
    assert "Answer: " in out and "[1] bp#0 " in out and "over 3 passages" in out
    # the model's own chat template (SmolLM2's ChatML) around the numbered passage, stopped at its end of turn
    prompt, stops, stop_strings = prompts[0]
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n") and stops == ["<|im_end|>"] and not stop_strings
    assert "[1] Screening for high blood pressure in adults\nAdults aged 40" in prompt
    assert len(list((tmp_path / "cache").glob("index-*"))) == 1

    def encode_again(*a, **k):
        raise AssertionError("the kept index should have been reused")

    monkeypatch.setattr(store, "build_index", encode_again)  # the next question encodes nothing
    rag.main(_argv(tmp_path, "Who should get a flu vaccine every year?"))
    assert "[1] flu#0 " in capsys.readouterr().out


def test_missing_or_malformed_guidelines_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        rag.main(["--k", "-1"])
    assert e.value.code == 2 and "--k and --max_passages must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        rag.main(["--question", "  "])  # before any corpus is read or encoded
    assert e.value.code == 2 and "--question is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        rag.main(["--corpus", str(tmp_path / "none.jsonl")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "none.jsonl" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GUIDELINES[0]) + "\n{not json\n")
    with pytest.raises(SystemExit) as e:
        rag.main(["--corpus", str(bad)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "bad.jsonl:2" in err
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        rag.main(["--corpus", str(tmp_path / "empty.jsonl")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "empty" in err


def test_a_base_model_without_a_chat_template_gets_a_plain_prompt(minilm, tmp_path, capsys, monkeypatch):
    """A base model (Llama-2-7b-hf ships no chat template) answers from a plain-text prompt; it had failed after
    encoding the corpus, with an error about the pipelines' setting. Its answer ends where it goes on to write the
    next question itself."""
    from tests.helpers import save_tiny_llama_dir

    prompts = _spy_on_prompts(monkeypatch, answer=" Every year.\n\n Question: How often should children be screened?")
    llm = save_tiny_llama_dir(str(tmp_path / "base_llama"))
    rag.main(_argv(tmp_path, "How often should adults be screened for high blood pressure?") + ["--generator", llm])
    out = capsys.readouterr().out
    assert "Answer: Every year.\n" in out and "children" not in out
    assert prompts == [(f"{rag.SYSTEM}\n\nReference:\n[1] Screening for high blood pressure in adults\n"
                        f"{GUIDELINES[0]['text']}\n\nQuestion: How often should adults be screened for high blood "
                        "pressure?\nAnswer:", [], rag.PLAIN_STOPS)]


def test_a_chat_model_stops_at_its_end_of_turn_even_when_it_is_not_eos(minilm, tmp_path, monkeypatch):
    """As Llama 3's <|eot_id|> where the tokenizer's EOS is <|end_of_text|>: here a template ending turns with
    <bos>, the tiny tokenizer's other special token."""
    import json as json_lib

    from tests.helpers import save_tiny_llama_dir

    prompts = _spy_on_prompts(monkeypatch, answer="Every year.")
    llm = save_tiny_llama_dir(str(tmp_path / "chat_llama"))
    with open(f"{llm}/tokenizer_config.json") as f:
        config = json_lib.load(f)
    config["chat_template"] = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<bos>{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    with open(f"{llm}/tokenizer_config.json", "w") as f:
        json_lib.dump(config, f)
    rag.main(_argv(tmp_path, "How often should adults be screened for high blood pressure?") + ["--generator", llm])
    (prompt, stops, stop_strings), = prompts
    assert prompt.startswith(f"system: {rag.SYSTEM}<bos>user: Reference:\n[1] Screening") and stops == ["<bos>"]
    assert not stop_strings

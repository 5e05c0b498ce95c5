"""A user's pipeline data in its public formats: instruction records, preference pairs, CPT documents."""
import json

import pytest

from jmlr_jax.data import user_records
from jmlr_jax.errors import InputError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_users_files_in_their_public_formats(tmp_path):
    alpaca = _jsonl(tmp_path / "pmc_llama_instructions.jsonl", [
        {"instruction": "Answer the question.", "input": "What lowers LDL?", "output": "Statins.", "sample_id": 7},
        {"instruction": "Define sepsis.", "output": "A dysregulated host response to infection."}])
    trl = _jsonl(tmp_path / "trl.jsonl", [{"prompt": "What is HbA1c?", "completion": "Glycated haemoglobin."}])
    recs = user_records.read_sft_file(alpaca) + user_records.read_sft_file(trl)
    assert [(r.id, r.instruction, r.input, r.response) for r in recs] == [
        ("pmc_llama_instructions.jsonl/7", "Answer the question.", "What lowers LDL?", "Statins."),
        ("pmc_llama_instructions.jsonl/2", "Define sepsis.", "",
         "A dysregulated host response to infection."),
        ("trl.jsonl/1", "What is HbA1c?", "", "Glycated haemoglobin.")]
    with pytest.raises(InputError, match=r"no_answer.jsonl:2: SFT record lacks a non-empty text response "
                                         r"\(output / response / completion / answer\)"):
        user_records.read_sft_file(_jsonl(tmp_path / "no_answer.jsonl", [{"prompt": "a", "completion": "b"},
                                                                    {"instruction": "Q?", "output": "  "}]))
    # conversations: TRL's prompt-completion and messages, ShareGPT's; one user turn and the answer, an empty
    # system turn allowed
    q, a = "What is HbA1c?", "Glycated haemoglobin."
    user, answer = {"role": "user", "content": q}, {"role": "assistant", "content": a}
    conv = _jsonl(tmp_path / "conv.jsonl", [
        {"prompt": [user], "completion": [answer]}, {"messages": [{"role": "system", "content": ""}, user, answer]},
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}])
    assert [(r.instruction, r.input, r.response) for r in user_records.read_sft_file(conv)] == [
        (recs[-1].instruction, "", recs[-1].response)] * 3
    for rows, msg in (
            ([{"messages": [user, answer, user, answer]}], r"got prompt: user / assistant / user; output: assistant"),
            ([{"messages": [user]}], r"got prompt: none; output: user"),
            ([{"messages": [{"role": "system", "content": "Be brief."}, user, answer]}], "its own system message"),
            ([{"conversations": [{"from": "doctor", "value": "x"}, answer]}], r"a turn without a role .*doctor"),
            ([{"messages": "Q?"}], "SFT record lacks a non-empty text instruction")):
        with pytest.raises(InputError, match=rf"bad_conv.jsonl:1: (SFT record )?.*{msg}"):
            user_records.read_sft_file(_jsonl(tmp_path / "bad_conv.jsonl", rows))

    pairs = user_records.load_pairs(_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Q1?", "chosen": "good", "rejected": "bad"},  # TRL
        {"system": "", "history": [], "question": "Q2?", "response_chosen": "fine", "response_rejected": "poor"}]))
    assert [(p.instruction, p.input, p.chosen, p.rejected) for p in pairs] == [("Q1?", "", "good", "bad"),
                                                                              ("Q2?", "", "fine", "poor")]
    with pytest.raises(InputError, match=r"turns.jsonl:1: preference pair record has a multi-turn history"):
        user_records.load_pairs(_jsonl(tmp_path / "turns.jsonl", [{"question": "And then?", "history": [["Q1", "A1"]],
                                                               "response_chosen": "a", "response_rejected": "b"}]))
    with pytest.raises(InputError, match=r"same.jsonl:1: chosen and rejected responses are the same"):
        user_records.load_pairs(_jsonl(tmp_path / "same.jsonl", [{"prompt": "Q?", "chosen": "A.", "rejected": " A. "}]))
    # TRL's conversational pairs: explicit prompt, implicit (shared first turns), a text prompt
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    q, good, bad = turn("user", "Q1?"), turn("assistant", "good"), turn("assistant", "bad")
    conv = user_records.load_pairs(_jsonl(tmp_path / "conv_pairs.jsonl", [
        {"prompt": [q], "chosen": [good], "rejected": [bad]}, {"chosen": [q, good], "rejected": [q, bad]},
        {"prompt": "Q1?", "chosen": [good], "rejected": [bad]}]))
    assert [(p.instruction, p.input, p.chosen, p.rejected) for p in conv] == [("Q1?", "", "good", "bad")] * 3
    with pytest.raises(InputError, match=r"conv_bad.jsonl:1: preference pair record's conversations differ before "
                                         r"their last turn"):
        user_records.load_pairs(_jsonl(tmp_path / "conv_bad.jsonl", [{"chosen": [q, good], "rejected": [turn("user", "Q2?"),
                                                                                                   bad]}]))

    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{"id": "pmc1", "text": "Metformin is first line."}, {"text": "Second."}]),
                   str(tmp_path / "papers.parquet"))
    (tmp_path / "books" / "ch1").mkdir(parents=True)
    (tmp_path / "books" / "ch1" / "a.txt").write_text("Chapter one.")
    (tmp_path / "books" / "b.txt").write_text("Chapter two.")
    (tmp_path / "books" / "empty.txt").write_text("  \n")
    assert user_records.read_text_documents(str(tmp_path / "papers.parquet")) == [
        ("papers.parquet/pmc1", "Metformin is first line."), ("papers.parquet/2", "Second.")]
    assert user_records.read_text_documents(str(tmp_path / "books")) == [("b.txt", "Chapter two."),
                                                                    ("ch1/a.txt", "Chapter one.")]
    meditron = {"id": "7a1", "source": "who", "title": "Malaria", "clean_text": "# Malaria\nTreat with ACTs.",
                "raw_text": "<h1>Malaria</h1>"}  # epfl-llm/guidelines' open_guidelines.jsonl
    assert user_records.read_text_documents(_jsonl(tmp_path / "open_guidelines.jsonl", [meditron])) == [
        ("open_guidelines.jsonl/7a1", "# Malaria\nTreat with ACTs.")]
    with pytest.raises(InputError, match=r"notext.jsonl:1: CPT record lacks a non-empty text \(text / clean_text\)"):
        user_records.read_text_documents(_jsonl(tmp_path / "notext.jsonl", [{"body": "x"}]))
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match=r"none: no .txt files under this directory"):
        user_records.read_text_documents(str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="SFT file not found"):
        user_records.read_sft_file(str(tmp_path / "missing.jsonl"))

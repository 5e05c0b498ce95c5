"""A user's own data for the seed pipelines' stages (`jmlr_jax.data.lm_data` adds the built-in sets), read from
the public formats, and the record types every stage trains on.

Each stage reads (LMDataConfig.text_files / sft_files / pair_files; JSON lines or Parquet):
  text   {"text", "id"?} records (pre-training corpora; Meditron's guidelines' "clean_text" read too), or .txt
         files (a file, or every .txt under a directory: one document each)
  SFT    Alpaca / PMC-LLaMA's instructions {"instruction", "input"?, "output"} ("response" / "answer" read too),
         TRL's prompt-completion {"prompt", "completion"}, {"question", "answer"}; conversations: TRL's / OpenAI's
         {"messages": [{"role", "content"}, ...]}, ShareGPT's {"conversations": [{"from", "value"}, ...]}
  pairs  TRL's {"prompt", "chosen", "rejected"}, MedicalGPT / Qilin-Med's {"question", "response_chosen",
         "response_rejected"}, and this module's own {"id", "instruction", "input", "chosen", "rejected"}
         (pairs.jsonl); TRL's conversational form too (lists of turns; the prompt explicit, or implicit: the
         turns chosen and rejected share before their last)
A conversation must be one user turn and the assistant's answer (one instruction and its response per record;
an empty system turn is allowed, a system message is not: LMDataConfig.system gives every record one).
Records keep their "id" (or "sample_id"; else their line), prefixed with the file's name.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

from jmlr_jax.data.sources import file_records
from jmlr_jax.errors import InputError
from jmlr_jax.workdir import write_text


@dataclasses.dataclass(frozen=True)
class SFTRecord:
    id: str
    instruction: str
    input: str
    response: str


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    id: str
    instruction: str
    input: str
    chosen: str
    rejected: str


def save_pairs(path: str, pairs: Sequence[PreferencePair]) -> None:
    """Preference pairs as JSONL (written whole, then renamed: a crash never leaves half a file)."""
    write_text(path, "".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in pairs))


# A field -> the names public formats give it (module doc), first found wins.
_SFT_NAMES = {"instruction": ("instruction", "prompt", "question"), "input": ("input",),
              "response": ("output", "response", "completion", "answer")}
_PAIR_NAMES = {"instruction": ("instruction", "prompt", "question"), "input": ("input",),
               "chosen": ("chosen", "response_chosen"), "rejected": ("rejected", "response_rejected")}


_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def _turns(turns: object, where: str, what: str) -> list[tuple[str, str]]:
    """(role, text) per turn of a conversation (TRL's role / content, ShareGPT's from / value), empty system
    turns dropped."""
    if not isinstance(turns, list):
        raise InputError(f"{where}: {what} record's turns must be a list, got {type(turns).__name__}")
    out = []
    for t in turns:
        t = t if isinstance(t, dict) else {}
        role, text = _ROLES.get(t.get("role", t.get("from"))), t.get("content", t.get("value"))
        if role is None or not isinstance(text, str):
            raise InputError(f"{where}: {what} record has a turn without a role (user / assistant / system; "
                             f"ShareGPT's human / gpt) and a text: {json.dumps(t)[:80]}")
        if role == "system" and text.strip():
            raise InputError(f"{where}: {what} record has its own system message; LMDataConfig.system gives every "
                             "record one")
        if role != "system":
            out.append((role, text))
    return out


def _flat(rec: dict, where: str, what: str) -> dict:
    """A conversational record (module doc) in the flat fields' names: "instruction" and each response under its
    own key ("output" for a whole conversation); other records as they are."""
    convs = {k: rec[k] for k in ("messages", "conversations", "prompt", "completion", "chosen", "rejected")
             if isinstance(rec.get(k), list)}
    if not convs:
        return rec
    turns = {k: _turns(v, where, what) for k, v in convs.items()}
    whole = next((turns[k] for k in ("messages", "conversations") if k in turns), None)
    if whole is not None:
        turns = {"prompt": whole[:-1], "output": whole[-1:]}
    elif "prompt" not in turns and isinstance(rec.get("prompt"), str):  # a text prompt, responses as turns
        turns["prompt"] = [("user", rec["prompt"])]
    elif "prompt" not in turns:  # TRL's implicit prompt: what chosen and rejected share before their last turn
        prompts = {tuple(v[:-1]) for v in turns.values()}
        if len(prompts) != 1:
            raise InputError(f"{where}: {what} record's conversations differ before their last turn (TRL's "
                             "implicit prompt must be shared)")
        turns = {"prompt": list(prompts.pop()), **{k: v[-1:] for k, v in turns.items()}}
    roles = {k: [r for r, _ in v] for k, v in turns.items()}
    if roles.pop("prompt") != ["user"] or any(r != ["assistant"] for r in roles.values()):
        got = "; ".join(f"{k}: {' / '.join(r for r, _ in v) or 'none'}" for k, v in turns.items())
        raise InputError(f"{where}: {what} record must be one user turn and the assistant's answer (got {got}); "
                         "one instruction and its response per record")
    prompt = turns.pop("prompt")
    return {**{k: v for k, v in rec.items() if k not in convs}, "instruction": prompt[0][1],
            **{k: v[0][1] for k, v in turns.items()}}


def _user_records(path: str, names: dict[str, tuple[str, ...]], what: str):
    """(id, where, {field: text}) per record of a user's file; a required field (all but input) missing, empty or
    not a string is an error naming the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    for n, where, rec in file_records(path):
        rec = _flat(rec, where, what)
        fields = {k: next((rec[a] for a in alts if rec.get(a) is not None), "") for k, alts in names.items()}
        bad = [f"{k} ({' / '.join(names[k])})" for k, v in fields.items()
               if not isinstance(v, str) or (k != "input" and not v.strip())]
        if bad:
            raise InputError(f"{where}: {what} record lacks a non-empty text {', '.join(bad)}")
        if rec.get("history"):  # MedicalGPT's earlier turns: dropping them would train on a question out of context
            raise InputError(f"{where}: {what} record has a multi-turn history; one instruction and its response "
                             "per record")
        yield str(rec.get("id") or rec.get("sample_id") or n), where, fields


def read_sft_file(path: str) -> list[SFTRecord]:
    """A user's instruction records (module doc): Alpaca / PMC-LLaMA, prompt-completion, question-answer or a
    conversation."""
    base = os.path.basename(path)  # ids prefixed: files may reuse ids, and the built-in records' too
    return [SFTRecord(f"{base}/{i}", f["instruction"], f["input"], f["response"])
            for i, _, f in _user_records(path, _SFT_NAMES, "SFT")]


def load_pairs(path: str) -> list[PreferencePair]:
    """Preference pairs (module doc: TRL's, MedicalGPT / Qilin-Med's, or this module's pairs.jsonl); a pair whose
    chosen equals its rejected is an error."""
    out = []
    for i, where, f in _user_records(path, _PAIR_NAMES, "preference pair"):
        if f["chosen"].strip() == f["rejected"].strip():
            raise InputError(f"{where}: chosen and rejected responses are the same")
        out.append(PreferencePair(i, f["instruction"], f["input"], f["chosen"], f["rejected"]))
    return out


def read_text_documents(path: str) -> list[tuple[str, str]]:
    """A user's CPT documents as (id, text): {"text" or "clean_text", "id"?} records, a .txt file, or every .txt
    under a directory (one document each, id = its path below the directory)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".txt"))
        if not files:
            raise InputError(f"{path}: no .txt files under this directory")
        return [doc for f in files for doc in _text_file(f, os.path.relpath(f, path))]
    if path.endswith(".txt"):
        return _text_file(path, os.path.basename(path))
    base = os.path.basename(path)
    out = []
    for n, where, rec in file_records(path):
        text = rec.get("text", rec.get("clean_text"))  # clean_text: epfl-llm/guidelines' open_guidelines.jsonl
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: CPT record lacks a non-empty text (text / clean_text)")
        out.append((f"{base}/{rec.get('id') or n}", text))  # ids prefixed as SFT records' are
    return out


def _text_file(path: str, doc_id: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    return [(doc_id, text)] if text.strip() else []

"""One tokenizer interface over sentencepiece models and Hugging Face `tokenizers` files.

`encode` never adds special tokens; callers (templates, ColBERT) add BOS/EOS/[CLS]/[SEP] explicitly,
so one code path serves Llama-2 (sentencepiece), SmolLM2 (byte-level BPE) and BERT (WordPiece).
"""
from __future__ import annotations

import json
import os
from typing import Protocol, Sequence

import tokenizers as hf_tokenizers


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool  # whether the model expects BOS at the start of a sequence
    chat_template: str | None  # the model's Jinja chat template (jmlr_jax/chat.py), when it ships one

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, i: int) -> str | None: ...


class SentencePieceTokenizer:
    """Llama-2 style `tokenizer.model`."""

    def __init__(self, path: str, chat_template: str | None = None):
        import sentencepiece as spm

        if not os.path.isfile(path):
            raise FileNotFoundError(f"sentencepiece model not found: {path}")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(path)
        except Exception as e:  # sentencepiece raises OSError/RuntimeError with long messages
            raise ValueError(f"{path}: not a valid sentencepiece model ({str(e).splitlines()[0]})") from None
        self.vocab_size = self.sp.GetPieceSize()
        as_id = lambda i: i if i >= 0 else None  # noqa: E731
        self.bos_id, self.eos_id, self.pad_id = as_id(self.sp.bos_id()), as_id(self.sp.eos_id()), as_id(self.sp.pad_id())
        self.add_bos = self.bos_id is not None  # Llama-2 convention
        self.chat_template = chat_template

    def encode(self, text: str) -> list[int]:
        return self.sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.EncodeAsIds(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.PieceToId(token)
        return None if i == self.sp.unk_id() and token != self.sp.IdToPiece(i) else i

    def id_to_token(self, i: int) -> str | None:
        return self.sp.IdToPiece(int(i)) if 0 <= i < self.vocab_size else None


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` (BPE or WordPiece), padding and truncation turned off."""

    def __init__(self, tok: hf_tokenizers.Tokenizer, *, bos: str | None = None, eos: str | None = None,
                 pad: str | None = None, add_bos: bool | None = None, chat_template: str | None = None):
        """add_bos None: what the tokenizer's own post-processor does (Llama 3's tokenizer.json adds
        <|begin_of_text|> there, and its tokenizer_config.json has no add_bos_token), as transformers encodes."""
        tok.no_padding()  # all-MiniLM's tokenizer.json pads to 128 by default
        tok.no_truncation()
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = tok.token_to_id(bos) if bos else None
        self.eos_id = tok.token_to_id(eos) if eos else None
        self.pad_id = tok.token_to_id(pad) if pad else None
        if add_bos is None:
            add_bos = self.bos_id is not None and tok.encode("a", add_special_tokens=True).ids[:1] == [self.bos_id]
        self.add_bos = add_bos and self.bos_id is not None
        self.chat_template = chat_template

    @classmethod
    def from_file(cls, path: str, **special) -> "HFTokenizer":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tok = hf_tokenizers.Tokenizer.from_file(path)
        except Exception as e:
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
        return cls(tok, **special)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(int(i))


# Llama 3's pre-tokenizer split (its tokenizer.json; llama.cpp's `llama-bpe`): digits in runs of up to three.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's names (GGUF tokenizer.ggml.pre) of the splits built here; Llama 3's has three.
PRE_TOKENIZERS = ("smollm", "llama-bpe", "llama3", "llama-v3")


def bpe_from_vocab(tokens: list[str], merges: list[str], special: list[str],
                   pre: str = "smollm") -> hf_tokenizers.Tokenizer:
    """Byte-level BPE as used by GPT-2 style models, with the pre-tokenisation llama.cpp names `pre`: "smollm"
    (SmolLM / StarCoder: digits split individually, then GPT-2's split) or Llama 3's split ("llama-bpe")."""
    from tokenizers import Regex, decoders, models, pre_tokenizers

    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"pre-tokenizer {pre!r} is not supported (supported: {', '.join(PRE_TOKENIZERS)})")
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = hf_tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    if pre == "smollm":  # the others: Llama 3's
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special)
    return tok


def load_tokenizer(path: str) -> Tokenizer:
    """A tokenizer from a file or a model directory (tokenizer.json preferred, else tokenizer.model)."""
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.model"):
            if os.path.isfile(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name))
        raise FileNotFoundError(f"{path}: no tokenizer.json or tokenizer.model in this directory")
    config = _tokenizer_config(os.path.dirname(path))
    if path.endswith(".model"):
        return SentencePieceTokenizer(path, chat_template=config.get("chat_template"))
    return HFTokenizer.from_file(path, **config)


def save_tokenizer(tok: Tokenizer, directory: str) -> None:
    """Writes `tok` into a model directory so that `load_tokenizer(directory)` gives the same tokenizer
    (tokenizer.json + tokenizer_config.json, or the sentencepiece model)."""
    os.makedirs(directory, exist_ok=True)
    if isinstance(tok, SentencePieceTokenizer):
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(tok.sp.serialized_model_proto())
    else:
        tok.tok.save(os.path.join(directory, "tokenizer.json"))
    name = lambda i: tok.id_to_token(i) if i is not None else None  # noqa: E731
    config = {"bos_token": name(tok.bos_id), "eos_token": name(tok.eos_id), "pad_token": name(tok.pad_id),
              "add_bos_token": tok.add_bos}
    if tok.chat_template:  # transformers' apply_chat_template reads it from here
        config["chat_template"] = tok.chat_template
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)


def _tokenizer_config(directory: str) -> dict:
    """HFTokenizer's keyword arguments from a model directory, when present: bos/eos/pad strings and add_bos
    (special_tokens_map.json / tokenizer_config.json) and the chat template (chat_template.jinja, which
    transformers >= 4.43 writes, else tokenizer_config.json's: a string, or a list of named ones: "default")."""
    out: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
            for key, field in (("bos", "bos_token"), ("eos", "eos_token"), ("pad", "pad_token")):
                v = d.get(field)
                v = v.get("content") if isinstance(v, dict) else v
                if isinstance(v, str):
                    out.setdefault(key, v)
            if isinstance(d.get("add_bos_token"), bool):
                out["add_bos"] = d["add_bos_token"]
            template = d.get("chat_template")
            if isinstance(template, list):
                template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}.get("default")
            if isinstance(template, str) and template:
                out["chat_template"] = template
    path = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            out["chat_template"] = f.read()
    return out


def bos_prefix(tok: Tokenizer) -> list[int]:
    """[BOS] when the model reads one before its text (`tok.add_bos`: Llama-2 and Llama 3 yes, SmolLM2 no), else []."""
    return [tok.bos_id] if tok.add_bos and tok.bos_id is not None else []


def check_vocab(tok: Tokenizer, model_vocab_size: int, what: str = "model") -> None:
    """Tokenizer ids must index the model's embedding table (models may pad their vocab upward)."""
    if tok.vocab_size > model_vocab_size:
        raise ValueError(
            f"tokenizer has {tok.vocab_size} tokens but the {what} embeds only {model_vocab_size}: "
            "tokenizer and weights do not belong together")

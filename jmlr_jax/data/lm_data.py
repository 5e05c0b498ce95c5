"""Data of the seed pipelines (PMC-LLaMA, Qilin-Med): continued pre-training text packed into fixed-length rows,
instruction records with a loss on the response only, and DPO preference pairs.

CPT text: guideline summaries, MedQuAD answers and PubMedQA abstracts, minus everything evaluation is built
from: the PubMedQA test abstracts, the answers of held-out MedQuAD focuses (the generation evaluation), and a
held-out slice of documents (fixed by id) for perplexity. Documents are tokenised, end with EOS, cut into
pieces of at most seq_len tokens, and packed by grain's first-fit packing: each document its own segment id, so
no token attends to another document, and no loss on a document's first token or on padding.

SFT records (instruction, input, response): MedMCQA training questions (answer + explanation), the PubMedQA
training half (question + abstract -> long answer + decision), MedQuAD training focuses (question -> answer).
Templates: PMC-LLaMA's (Alpaca-style "### Instruction / ### Input / ### Response") or the model's own chat template
(`jmlr_jax.chat`: ChatML as SmolLM2's GGUF carries it, Llama 3's, Mistral's, ...).

DPO pairs (stated honestly), MedMCQA training questions, two kinds: "options": chosen = the gold option, rejected
= a wrong option (picked by a hash of the id), both written the same way ("The answer is C. text");
"generated": chosen = the gold answer with its explanation (the SFT response), rejected = the starting model's
own greedy answer to the question, kept only when the letter it gives is not the gold one (`generated_pairs`).

A user's own data joins each stage (LMDataConfig.text_files / sft_files / pair_files): `jmlr_jax.data.user_records`
reads it from the public formats and holds the record types.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Sequence

import gin
import grain
import grain.experimental as grain_exp
import numpy as np

from jmlr_jax import chat
from jmlr_jax.data.medquad import MedQuADPair, iter_medquad
from jmlr_jax.data.sources import LETTERS, DataError, QARecord, read_qa
from jmlr_jax.data.splits import DataConfig, heldout_bucket, split_pubmedqa
from jmlr_jax.data.user_records import PreferencePair, SFTRecord, load_pairs, read_sft_file, read_text_documents
from jmlr_jax.errors import InputError, check_counts
from jmlr_jax.parallel import host_rows
from jmlr_jax.retrieval.corpus import read_guidelines, read_pubmedqa, resolve_path
from jmlr_jax.tokenizers import Tokenizer, bos_prefix


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LMDataConfig:
    seq_len: int = 512
    guidelines: str = "guidelines/ngc_open.jsonl"  # relative paths: under DataConfig.data_dir; "" = not used
    medquad: str = "medquad/medquad.jsonl"
    pubmedqa: str = "pubmedqa/ori_pqal.json"
    medquad_heldout_fraction: float = 0.1  # of MedQuAD focuses (diseases, drugs), for generation evaluation
    text_heldout_fraction: float = 0.02  # of CPT documents, for held-out perplexity
    template: str = "pmc_llama"  # or "chat": the model's own chat template (tokenizer_config.json's / the GGUF's)
    system: str = "You are a careful medical assistant."  # chat template only
    max_records: int = 0  # > 0: the first N of each record list (fixed order)
    # A user's own data (module doc; paths under DataConfig.data_dir unless absolute): more CPT documents, more SFT
    # records, more DPO pairs (StageConfig.pairs = "files": these alone).
    text_files: tuple = ()
    sft_files: tuple = ()
    pair_files: tuple = ()
    builtin_sft: bool = True  # False: SFT trains on sft_files alone (no MedMCQA / PubMedQA / MedQuAD records)

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"LMDataConfig.template must be one of {sorted(TEMPLATES)}, got {self.template!r}")
        check_counts(self, ("seq_len",), ("max_records",))
        for k in ("medquad_heldout_fraction", "text_heldout_fraction"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"LMDataConfig: {k}={getattr(self, k)!r} must be in [0, 1)")


# ------------------------------------------------------------------------------------------------ records

def medquad_pairs(path: str) -> list[MedQuADPair]:
    """The pipelines' MedQuAD question-answer pairs (a JSONL copy or the public XML release, `data.medquad`); a
    malformed pair is an error naming file and line. The 14 released pairs without a focus get their document's (the
    id before "-"); the evidence comparison skips them instead (`data.evidence.read_medquad_qa`)."""
    out = []
    for pair in iter_medquad(path):
        if isinstance(pair, DataError):
            raise pair
        out.append(pair if pair.focus else dataclasses.replace(pair, focus=f"doc:{pair.id.split('-')[0]}"))
    return out


def split_medquad(records: Sequence[MedQuADPair], fraction: float):
    """(training, held-out) by focus: every question of a held-out focus is held out."""
    held = [r for r in records if heldout_bucket(r.focus.lower(), fraction)]
    keep = {id(r) for r in held}
    return [r for r in records if id(r) not in keep], held


def _mcq_input(r: QARecord) -> str:
    return r.question + "\n" + "".join(f"{LETTERS[i]}. {t}\n" for i, t in enumerate(r.options)).rstrip()


MCQ_INSTRUCTION = "Answer the multiple-choice medical question and explain the answer."
PQA_INSTRUCTION = "Answer the biomedical research question from the abstract, then give a yes / no / maybe decision."


def mcq_request(r: QARecord) -> tuple[str, str]:
    """(instruction, input) of a multiple-choice question, as SFT and DPO records ask it."""
    return MCQ_INSTRUCTION, _mcq_input(r)


def mcq_response(r: QARecord) -> str:
    """The gold answer with its explanation, as SFT teaches it (and generated DPO pairs prefer it)."""
    return f"The answer is {r.answer_letter}. {r.answer_text}" + (f"\nExplanation: {r.rationale}" if r.rationale else "")


def sft_records(data: DataConfig, cfg: LMDataConfig) -> list[SFTRecord]:
    """MedMCQA + PubMedQA training halves + MedQuAD training focuses (unless builtin_sft is off) + sft_files,
    interleaved by a hash of the id."""
    d = data.require_dir()
    out = [r for path in cfg.sft_files for r in read_sft_file(resolve_path(path, d))]
    if cfg.builtin_sft:
        out += _builtin_sft(data, cfg, d)
    if not out:
        raise InputError("no SFT records: LMDataConfig.builtin_sft is off and sft_files is empty")
    out.sort(key=lambda r: hashlib.sha1(r.id.encode()).hexdigest())
    return out[: cfg.max_records] if cfg.max_records else out


def _builtin_sft(data: DataConfig, cfg: LMDataConfig, d: str) -> list[SFTRecord]:
    train_mcq = medmcqa_questions(data)
    out = [SFTRecord(f"medmcqa/{r.id}", *mcq_request(r), mcq_response(r)) for r in train_mcq]
    if cfg.pubmedqa:
        path = resolve_path(cfg.pubmedqa, d)
        train_pqa, _ = split_pubmedqa(read_qa("pubmedqa", path), data.pubmedqa_test_ids())
        out += [SFTRecord(f"pubmedqa/{r.id}", PQA_INSTRUCTION, f"Abstract: {r.context}\nQuestion: {r.question}",
                          f"{r.rationale}\nDecision: {r.answer_text}") for r in train_pqa if r.rationale]
    if cfg.medquad:
        train_mq, _ = split_medquad(medquad_pairs(resolve_path(cfg.medquad, d)), cfg.medquad_heldout_fraction)
        out += [SFTRecord(f"medquad/{r.id}", r.question, "", r.answer) for r in train_mq]
    return out


def preference_pairs(records: Sequence[QARecord]) -> list[PreferencePair]:
    """Gold option vs a wrong option (chosen by a hash of the id), both as "The answer is X. text"."""
    out = []
    for r in records:
        if r.answer_idx < 0 or len(r.options) < 2:
            continue
        h = int(hashlib.sha1(r.id.encode()).hexdigest()[:8], 16)
        wrong = [i for i in range(len(r.options)) if i != r.answer_idx][h % (len(r.options) - 1)]
        out.append(PreferencePair(r.id, *mcq_request(r), f"The answer is {r.answer_letter}. {r.answer_text}",
                                  f"The answer is {LETTERS[wrong]}. {r.options[wrong]}"))
    return out


PAIR_KINDS = ("options", "generated", "files")


def generated_pairs(records: Sequence[QARecord], outputs: Sequence[str]) -> list[PreferencePair]:
    """Gold answer with explanation (chosen) vs the model's own answer (rejected), for the questions whose answer
    names a letter other than the gold one or none at all (`eval.parse.parse_choice`); empty answers are dropped."""
    from jmlr_jax.eval.parse import parse_choice  # here: jmlr_jax.eval imports the data modules

    if len(records) != len(outputs):
        raise ValueError(f"{len(records)} questions but {len(outputs)} answers")
    return [PreferencePair(r.id, *mcq_request(r), mcq_response(r), out)
            for r, out in zip(records, outputs)
            if r.answer_idx >= 0 and out.strip() and parse_choice(out, r.options) != r.answer_idx]


def medmcqa_questions(data: DataConfig, heldout: bool = False) -> list[QARecord]:
    """MedMCQA's training part (heldout=True: its held-out part), in file order."""
    train, held = data.medmcqa_split()
    return held if heldout else train


def dpo_pairs(data: DataConfig, cfg: LMDataConfig, heldout: bool = False) -> list[PreferencePair]:
    """Pairs of kind "options" from MedMCQA's training part (heldout=True: its held-out part, for evaluation)."""
    pairs = preference_pairs(medmcqa_questions(data, heldout))
    return pairs[: cfg.max_records] if cfg.max_records else pairs


def file_pairs(data: DataConfig, cfg: LMDataConfig) -> list[PreferencePair]:
    """LMDataConfig.pair_files' pairs, in file order."""
    return [dataclasses.replace(p, id=f"{os.path.basename(path)}/{p.id}") for path in cfg.pair_files
            for p in load_pairs(resolve_path(path, data.require_dir()))]


# ---------------------------------------------------------------------------------------------- templates

def _pmc_llama(instruction: str, inp: str) -> str:
    if inp:
        return ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n")
    return ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            f"request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


TEMPLATES = {"pmc_llama", "chat"}


def response_stops(cfg: LMDataConfig) -> tuple[str, ...]:
    """Text where a generated response ends although no end token came: in PMC-LLaMA's format a model (the base
    one above all) goes on to write a next "### Response:" / "### Explanation:" section itself. The chat template's
    turns end with tokens (`response_end`)."""
    return ("###",) if cfg.template == "pmc_llama" else ()


def render_prompt(cfg: LMDataConfig, tok: Tokenizer, instruction: str, inp: str) -> str:
    """The prompt text (everything before the response) in the configured template: PMC-LLaMA's, or the model's own
    chat template (`jmlr_jax.chat`: system message cfg.system, the instruction and input as the user's)."""
    if cfg.template == "pmc_llama":
        return _pmc_llama(instruction, inp)
    return chat.chat_prompt(tok, cfg.system, instruction + (f"\n\n{inp}" if inp else ""))


def response_end(cfg: LMDataConfig, tok: Tokenizer) -> list[int]:
    """Tokens that close a response: the chat template's end of turn (<|im_end|>, <|eot_id|>, ...), then EOS if
    different; EOS alone for PMC-LLaMA's format."""
    ids = chat.response_end(tok, cfg.system) if cfg.template == "chat" else []
    if tok.eos_id is not None and tok.eos_id not in ids:
        ids.append(tok.eos_id)
    return ids


def encode_pair(tok: Tokenizer, cfg: LMDataConfig, prompt: str, response: str, where: str) -> dict[str, np.ndarray]:
    """One row of seq_len: [BOS] prompt response <end>, right-padded; weights on response and end tokens only.
    A prompt too long for the row is cut from the front; the response keeps at least half the row."""
    if not response.strip():
        raise InputError(f"{where}: empty response (nothing to learn)")
    L = cfg.seq_len
    bos = bos_prefix(tok)
    resp = tok.encode(response) + response_end(cfg, tok)
    resp = resp[: max(L // 2, L - len(bos) - 1)]
    p = tok.encode(prompt)
    p = p[max(0, len(p) - (L - len(bos) - len(resp))):]
    ids = bos + p + resp
    n = len(ids)
    tokens = np.zeros(L, np.int32)
    tokens[:n] = ids
    seg = (np.arange(L) < n).astype(np.int32)
    weights = np.zeros(L, np.int32)
    weights[n - len(resp): n] = 1
    return {"tokens": tokens, "segment_ids": seg, "positions": np.where(seg > 0, np.arange(L), 0).astype(np.int32),
            "weights": weights}


def sft_example(tok: Tokenizer, cfg: LMDataConfig, r: SFTRecord) -> dict[str, np.ndarray]:
    return encode_pair(tok, cfg, render_prompt(cfg, tok, r.instruction, r.input), r.response, r.id)


def dpo_example(tok: Tokenizer, cfg: LMDataConfig, p: PreferencePair) -> dict[str, np.ndarray]:
    if p.chosen.strip() == p.rejected.strip():
        raise InputError(f"{p.id}: chosen and rejected responses are the same")
    prompt = render_prompt(cfg, tok, p.instruction, p.input)
    c, r = encode_pair(tok, cfg, prompt, p.chosen, p.id), encode_pair(tok, cfg, prompt, p.rejected, p.id)
    return {**{f"chosen_{k}": v for k, v in c.items()}, **{f"rejected_{k}": v for k, v in r.items()}}


def missing_inputs(kind: str, pairs: str, data: DataConfig, cfg: LMDataConfig) -> list[str]:
    """The files a stage of `kind` (and DPO `pairs`) will read that do not exist, as "Config.field path": a
    pipeline checks every stage's before the first one trains (a missing SFT file had failed after CPT's hours)."""
    d = data.require_dir()
    lm = {"guidelines": cfg.guidelines, "medquad": cfg.medquad, "pubmedqa": cfg.pubmedqa}
    want: list[tuple[str, str]] = []
    if kind == "cpt":
        want += [(f"LMDataConfig.{k}", p) for k, p in lm.items()] + [("LMDataConfig.text_files", p)
                                                                       for p in cfg.text_files]
    if kind == "sft":
        want += [("LMDataConfig.sft_files", p) for p in cfg.sft_files]
        if cfg.builtin_sft:
            want += [("LMDataConfig.medquad", cfg.medquad), ("LMDataConfig.pubmedqa", cfg.pubmedqa),
                     ("DataConfig.medmcqa_file", data.medmcqa_file)]
    if kind == "dpo":
        want += [("LMDataConfig.pair_files", p) for p in cfg.pair_files]
        if pairs != "files":
            want += [("DataConfig.medmcqa_file", data.medmcqa_file)]
    if kind != "dpo" and cfg.pubmedqa and (kind == "cpt" or cfg.builtin_sft):  # its test half is left out
        want += [("DataConfig.pubmedqa_test_file", data.pubmedqa_test_file)]
    return [f"{field} {resolve_path(p, d)}" for field, p in dict.fromkeys(want) if p
            and not os.path.exists(resolve_path(p, d))]


# ---------------------------------------------------------------------------------------------------- CPT

def cpt_documents(data: DataConfig, cfg: LMDataConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training, held-out) documents as (id, text): everything evaluation is built from is left out of both."""
    d = data.require_dir()
    docs: list[tuple[str, str]] = []
    if cfg.guidelines:
        for doc in read_guidelines(resolve_path(cfg.guidelines, d)):
            if isinstance(doc, Exception):
                raise doc
            docs.append((doc.id, f"{doc.title}\n{doc.text}"))
    if cfg.medquad:
        train_mq, _ = split_medquad(medquad_pairs(resolve_path(cfg.medquad, d)), cfg.medquad_heldout_fraction)
        docs += [(f"medquad-{r.id}", r.answer) for r in train_mq]
    if cfg.pubmedqa:
        for doc in read_pubmedqa(resolve_path(cfg.pubmedqa, d), exclude_ids=data.pubmedqa_test_ids()):
            if isinstance(doc, Exception):
                raise doc
            docs.append((doc.id, doc.text))
    docs += [doc for path in cfg.text_files for doc in read_text_documents(resolve_path(path, d))]
    if not docs:
        raise InputError("the CPT corpus is empty: set LMDataConfig.guidelines / medquad / pubmedqa / text_files")
    held = [x for x in docs if heldout_bucket(x[0], cfg.text_heldout_fraction)]
    held_ids = {x[0] for x in held}
    return [x for x in docs if x[0] not in held_ids], held


def cpt_pieces(tok: Tokenizer, texts: Sequence[str], seq_len: int) -> list[np.ndarray]:
    """Each text tokenised with [BOS] ... EOS and cut into pieces of at most seq_len tokens."""
    if not texts:
        raise InputError("no CPT text to train on")
    bos = bos_prefix(tok)
    eos = [tok.eos_id] if tok.eos_id is not None else []
    out = []
    for ids in tok.encode_batch(list(texts)):
        ids = bos + ids + eos
        out += [np.asarray(ids[i: i + seq_len], np.int32) for i in range(0, len(ids), seq_len) if len(ids[i: i + seq_len]) > 1]
    return out


def packed_weights(segment_ids: np.ndarray) -> np.ndarray:
    """1 where a token is predicted from the previous token of the same document (not a first token, not padding)."""
    w = np.zeros_like(segment_ids)
    w[..., 1:] = (segment_ids[..., 1:] > 0) & (segment_ids[..., 1:] == segment_ids[..., :-1])
    return w.astype(np.int32)


def host_documents(texts: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """This host's CPT documents (index::count of shard): each host tokenizes and packs only its own share of the
    corpus, never the whole of it."""
    index, count = shard
    if len(texts) < count:
        raise InputError(f"{len(texts)} CPT documents cannot be shared by {count} hosts")
    return list(texts)[index::count]


def cpt_dataset(pieces: Sequence[np.ndarray], seq_len: int, batch_size: int, seed: int,
                num_bins: int = 16, hosts: int = 1) -> grain.IterDataset:
    """Shuffled (per epoch), packed (first fit; one segment per piece), batched rows with weights.
    With `hosts` > 1, pieces are this host's (from host_documents) and it packs batch_size / hosts rows."""
    batch_size = host_rows(batch_size, hosts)
    ds = (grain.MapDataset.source(list(pieces)).shuffle(seed=seed).repeat(None)
          .map(lambda x: {"tokens": x}).to_iter_dataset())
    packed = grain_exp.FirstFitPackIterDataset(ds, length_struct={"tokens": seq_len}, num_packing_bins=num_bins,
                                               seed=seed, shuffle_bins=True)

    def row(e: dict) -> dict:
        seg = e["tokens_segment_ids"].astype(np.int32)
        return {"tokens": e["tokens"].astype(np.int32), "segment_ids": seg,
                "positions": e["tokens_positions"].astype(np.int32), "weights": packed_weights(seg)}

    return packed.map(row).batch(batch_size, drop_remainder=True)


def example_dataset(examples, batch_size: int, seed: int, shard: tuple[int, int] = (0, 1)) -> grain.IterDataset:
    """SFT / DPO: an indexable of examples (index -> dict of arrays), shuffled per epoch, batched.
    shard = (index, count): this host reads rows index::count of the global order (see data.pipeline)."""
    if len(examples) < batch_size:
        raise InputError(f"{len(examples)} examples < one batch of {batch_size}")
    index, count = shard
    ds = grain.MapDataset.range(len(examples)).shuffle(seed=seed).repeat(None)
    return ((ds[index::count] if count > 1 else ds).map(examples)
            .batch(host_rows(batch_size, count), drop_remainder=True).to_iter_dataset())

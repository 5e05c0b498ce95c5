"""Per-stage evaluation of the seed pipelines: held-out perplexity on medical text, answers generated for held-out
MedQuAD questions scored with BLEU-1 (sacrebleu) and ROUGE-1 / ROUGE-L (rouge-score), and DPO reward accuracy on
held-out preference pairs. (Multiple-choice accuracy with standard errors: eval/harness.py.)
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jmlr_jax import parallel
from jmlr_jax.data import lm_data, user_records
from jmlr_jax.data.medquad import MedQuADPair
from jmlr_jax.data.splits import DataConfig
from jmlr_jax.errors import InputError, check_counts
from jmlr_jax.generate import SamplingConfig, cut_at_stop, generate_ids
from jmlr_jax.models.llama import LlamaConfig
from jmlr_jax.retrieval.corpus import resolve_path
from jmlr_jax.tokenizers import Tokenizer, bos_prefix
from jmlr_jax.train.lm_step import sequence_logprob, token_nll


@functools.partial(jax.jit, static_argnames=("cfg",))
def _batch_nll(params, batch, *, cfg: LlamaConfig):
    return jnp.sum(token_nll(cfg, params, batch)), jnp.sum(batch["weights"][:, 1:])


def _batches(rows: Sequence[dict], batch_size: int):
    """Stacked batches; the last is padded with weightless copies of a row (fixed shapes: one compilation)."""
    for i in range(0, len(rows), batch_size):
        chunk = list(rows[i: i + batch_size])
        pad = [{k: np.zeros_like(v) if k.endswith("weights") else v for k, v in chunk[0].items()}] * (batch_size - len(chunk))
        yield {k: np.stack([r[k] for r in chunk + pad]) for k in chunk[0]}


def heldout_perplexity(cfg: LlamaConfig, params, tok: Tokenizer, texts: Sequence[str], seq_len: int,
                       batch_size: int = 4) -> dict:
    """Token-level perplexity of held-out documents (each cut into seq_len pieces, one row per piece)."""
    pieces = lm_data.cpt_pieces(tok, texts, seq_len)
    rows = []
    for p in pieces:
        t = np.zeros(seq_len, np.int32)
        t[: len(p)] = p
        seg = (np.arange(seq_len) < len(p)).astype(np.int32)
        rows.append({"tokens": t, "segment_ids": seg, "positions": np.where(seg > 0, np.arange(seq_len), 0).astype(np.int32),
                     "weights": lm_data.packed_weights(seg)})
    total, n = 0.0, 0.0
    for b in _batches(rows, batch_size):
        s, c = parallel.call_on_mesh(_batch_nll, params, (b,), cfg=cfg)
        total, n = total + float(s), n + float(c)
    return {"perplexity": math.exp(total / n), "nll": total / n, "tokens": int(n), "documents": len(texts)}


def greedy_answers(cfg: LlamaConfig, params, tok: Tokenizer, lm: lm_data.LMDataConfig,
                   requests: Sequence[tuple[str, str]], max_new_tokens: int = 64, batch_size: int = 8) -> list[str]:
    """Greedy responses (KV cache) to (instruction, input) requests in the configured template, each ending at the
    template's end tokens or cut where it starts the template's next section (`lm_data.response_stops`)."""
    bos = bos_prefix(tok)
    eos, stops = tuple(lm_data.response_end(lm, tok)), lm_data.response_stops(lm)
    outputs = []
    for i in range(0, len(requests), batch_size):
        prompts = [bos + tok.encode(lm_data.render_prompt(lm, tok, ins, inp))[-(lm.seq_len - max_new_tokens):]
                   for ins, inp in requests[i: i + batch_size]]
        outputs += [cut_at_stop(tok.decode(ids), stops).strip() for ids in
                    generate_ids(cfg, params, prompts, SamplingConfig(max_new_tokens, eos_ids=eos), pad_multiple=64)]
    return outputs


def generation_scores(cfg: LlamaConfig, params, tok: Tokenizer, lm: lm_data.LMDataConfig,
                      records: Sequence[MedQuADPair], max_new_tokens: int = 64, batch_size: int = 8) -> dict:
    """Greedy answers to MedQuAD questions in the stage's template; BLEU-1, ROUGE-1/L F1 vs the answers."""
    if not records:
        raise InputError("no MedQuAD questions to answer (no held-out focus in this data?)")
    outputs = greedy_answers(cfg, params, tok, lm, [(r.question, "") for r in records], max_new_tokens, batch_size)
    return dict(text_scores(outputs, [r.answer for r in records]), stop_strings=list(lm_data.response_stops(lm)),
                predictions=[{"id": r.id, "output": o} for r, o in zip(records, outputs)])


def rescore_answers(medquad: dict, refs: dict[str, str], lm: lm_data.LMDataConfig) -> dict:
    """A stored `generation_scores` result brought up to date without generating again: each answer cut at the
    template's stop strings (answers stored before they were cut; cutting a cut answer changes nothing, and cutting
    the stripped text gives what generation gives now, since the stops start with no whitespace) and scored again.
    `refs`: answer by question id."""
    stops = lm_data.response_stops(lm)
    preds = [dict(p, output=cut_at_stop(p["output"], stops).strip()) for p in medquad["predictions"]]
    return dict(text_scores([p["output"] for p in preds], [refs[p["id"]] for p in preds]),
                stop_strings=list(stops), predictions=preds)


def model_pairs(cfg: LlamaConfig, params, tok: Tokenizer, lm: lm_data.LMDataConfig, records, path: str,
                max_new_tokens: int = 96, batch_size: int = 8) -> list[user_records.PreferencePair]:
    """Preference pairs of kind "generated": the model answers the MedMCQA questions greedily and every wrong
    answer becomes the rejected side against the gold explanation (`lm_data.generated_pairs`). Written to `path`
    (JSONL) once; a rerun or a resumed stage reads the same pairs back."""
    if os.path.isfile(path):
        return user_records.load_pairs(path)
    if not records:
        raise InputError("no MedMCQA questions to build preference pairs from")
    outputs = greedy_answers(cfg, params, tok, lm, [lm_data.mcq_request(r) for r in records], max_new_tokens,
                             batch_size)
    pairs = lm_data.generated_pairs(records, outputs)
    if not pairs:
        raise InputError(f"the model answered all {len(records)} questions correctly: no generated pairs")
    user_records.save_pairs(path, pairs)
    return pairs


def text_scores(outputs: Sequence[str], refs: Sequence[str]) -> dict:
    """BLEU-1 (sacrebleu corpus BLEU of order 1) with its unigram precision and brevity penalty reported apart
    (generated answers are cut at max_new_tokens while MedQuAD answers run to hundreds of words, so the penalty
    alone drives BLEU-1 to ~0), and mean ROUGE-1 / ROUGE-L F1 (rouge-score, stemmed) with standard errors and
    each answer's ROUGE-L (for paired comparisons between models)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    bleu = sacrebleu.metrics.BLEU(max_ngram_order=1).corpus_score(list(outputs), [list(refs)])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, out) for ref, out in zip(refs, outputs)]
    r1 = [s["rouge1"].fmeasure for s in scores]
    rl = [s["rougeL"].fmeasure for s in scores]
    se = lambda x: float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0  # noqa: E731
    return {"n": len(outputs), "bleu1": bleu.score / 100, "bleu1_precision": bleu.precisions[0] / 100,
            "bleu_brevity_penalty": bleu.bp, "rouge1": float(np.mean(r1)), "rouge1_se": se(r1),
            "rougeL": float(np.mean(rl)), "rougeL_se": se(rl), "rougeL_each": [float(x) for x in rl]}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _pair_logps(params, batch, *, cfg: LlamaConfig):
    return sequence_logprob(cfg, params, batch, "chosen_"), sequence_logprob(cfg, params, batch, "rejected_")


def reward_accuracy(cfg: LlamaConfig, policy, reference, tok: Tokenizer, lm: lm_data.LMDataConfig,
                    pairs: Sequence[user_records.PreferencePair], beta: float = 0.1, batch_size: int = 4) -> dict:
    """DPO's implicit reward beta * (log pi - log pi_ref) on held-out pairs: how often chosen > rejected, the mean
    margin, and the policy's mean summed log-probs of chosen and rejected responses."""
    rows = [lm_data.dpo_example(tok, lm, p) for p in pairs]
    pc, pr, rc, rr = [], [], [], []
    for b in _batches(rows, batch_size):
        n = len(pc)
        a, c = parallel.call_on_mesh(_pair_logps, policy, (b,), cfg=cfg)
        x, y = parallel.call_on_mesh(_pair_logps, reference, (b,), cfg=cfg)
        keep = min(batch_size, len(rows) - n)
        pc += list(a[:keep])
        pr += list(c[:keep])
        rc += list(x[:keep])
        rr += list(y[:keep])
    margin = beta * ((np.array(pc) - np.array(rc)) - (np.array(pr) - np.array(rr)))
    acc = margin > 0
    return {"n": len(pairs), "reward_accuracy": float(acc.mean()),
            "reward_accuracy_se": float(math.sqrt(acc.mean() * (1 - acc.mean()) / len(acc))),
            "reward_margin": float(margin.mean()), "logp_chosen": float(np.mean(pc)),
            "logp_rejected": float(np.mean(pr))}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StageEvalConfig:
    text_docs: int = 100  # held-out documents for perplexity
    medquad_questions: int = 50  # held-out MedQuAD questions for generation
    max_new_tokens: int = 64
    pairs: int = 100  # held-out MedMCQA questions made into preference pairs ("generated": its wrong answers only)
    mcq_per_set: int = 100  # MCQ sample per set (fixed by id hash); 0 = none
    mcq_sets: tuple[str, ...] = ("mmlu_med", "pubmedqa_test", "medmcqa_heldout", "medqa")  # eval.harness.eval_sets
    medqa_path: str = "medqa/us_4_options_dev.jsonl"  # the "medqa" set: MedQA-USMLE dev; relative = under DATA
    set_files: tuple = ()  # more MCQ sets from files, as harness.EvalConfig.set_files: (name, kind, path[, options])
    question_tokens: int = 512  # MCQ question + options, cut from the front beyond (MedQA dev: 18.5% exceed 256)
    batch_size: int = 8

    def __post_init__(self):
        check_counts(self, ("max_new_tokens", "question_tokens", "batch_size"),
                     ("text_docs", "medquad_questions", "pairs", "mcq_per_set"))


def held_medquad(data: DataConfig, lm: lm_data.LMDataConfig) -> list[MedQuADPair]:
    """The MedQuAD questions of held-out focuses (never in CPT or SFT data)."""
    if not lm.medquad:
        raise InputError("the per-stage evaluation answers MedQuAD questions of held-out focuses, and "
                         "LMDataConfig.medquad is '' (stages trained without MedQuAD): bind it for the evaluation, "
                         "e.g. --gin.LMDataConfig.medquad=\"'medquad/medquad.jsonl'\" (held-out focuses and the "
                         "held-out text slice were never trained on)")
    return lm_data.split_medquad(lm_data.medquad_pairs(resolve_path(lm.medquad, data.require_dir())),
                                 lm.medquad_heldout_fraction)[1]


def heldout_pairs(kind: str, data: DataConfig, lm: lm_data.LMDataConfig, n: int, model=None,
                  path: str = "") -> list[user_records.PreferencePair]:
    """Held-out MedMCQA preference pairs of a kind: "options" (the first n), or "generated": `model` (cfg, params,
    tokenizer; the DPO stage's reference) answers the first n held-out questions, its wrong answers become pairs
    (cached at `path`)."""
    if kind == "options":
        return lm_data.dpo_pairs(data, dataclasses.replace(lm, max_records=0), heldout=True)[:n]
    cfg, params, tok = model
    return model_pairs(cfg, params, tok, lm, lm_data.medmcqa_questions(data, heldout=True)[:n], path)


def pair_scores(cfg: LlamaConfig, params, reference, tok: Tokenizer, lm: lm_data.LMDataConfig,
                pairs: Sequence[user_records.PreferencePair], kind: str, beta: float, batch_size: int) -> dict:
    """`reward_accuracy` (against `reference`, or the model itself) with the pairs' kind and logp margin."""
    out = reward_accuracy(cfg, params, params if reference is None else reference, tok, lm, pairs, beta, batch_size)
    return dict(out, kind=kind, logp_margin=out["logp_chosen"] - out["logp_rejected"])


def evaluate_model(name: str, cfg: LlamaConfig, params, tok: Tokenizer, data: DataConfig, lm: lm_data.LMDataConfig,
                   ecfg: StageEvalConfig, reference=None, beta: float = 0.1,
                   pairs: tuple[str, Sequence[user_records.PreferencePair]] | None = None) -> dict:
    """Every per-stage measure for one model (reference: the DPO stage's frozen model, for reward accuracy;
    pairs: (kind, held-out pairs), by default the first `ecfg.pairs` of kind "options")."""
    _, held_docs = lm_data.cpt_documents(data, lm)
    out = {"model": name, "perplexity": heldout_perplexity(cfg, params, tok, [t for _, t in held_docs[: ecfg.text_docs]],
                                                           lm.seq_len, ecfg.batch_size)}
    out["medquad"] = generation_scores(cfg, params, tok, lm, held_medquad(data, lm)[: ecfg.medquad_questions], ecfg.max_new_tokens,
                                       ecfg.batch_size)
    kind, pair_list = pairs or ("options", heldout_pairs("options", data, lm, ecfg.pairs))
    out["pairs"] = pair_scores(cfg, params, reference, tok, lm, pair_list, kind, beta, ecfg.batch_size)
    if ecfg.mcq_per_set:
        out.update(mcq_scores(cfg, params, tok, data, ecfg))
    return out


def mcq_set_names(ecfg: StageEvalConfig) -> list[str]:
    """Every MCQ set the configuration asks for: the named ones, then set_files'."""
    return [*ecfg.mcq_sets, *(e[0] for e in ecfg.set_files if isinstance(e, (tuple, list)) and e)]


def mcq_scores(cfg: LlamaConfig, params, tok: Tokenizer, data: DataConfig, ecfg: StageEvalConfig,
               only: Sequence[str] = ()) -> dict:
    """MCQ accuracy (option log-likelihood) per set with standard errors ("mcq") and each question's predicted
    and gold letters ("mcq_predictions", for paired comparisons between models); `only`: these sets alone."""
    from jmlr_jax.data.templates import Budgets, PromptTemplate
    from jmlr_jax.eval import harness

    names, files = ecfg.mcq_sets, ecfg.set_files
    if only:
        names, files = [n for n in names if n in only], [e for e in files if e[0] in only]
    sets = harness.eval_sets(data, names, ecfg.medqa_path, ecfg.mcq_per_set, files)
    preds = harness.evaluate(sets, cfg, params, tok, harness.EvalConfig(batch_size=ecfg.batch_size),
                             PromptTemplate(), Budgets(question=ecfg.question_tokens), progress=False)
    return {"mcq": [r for r in harness.summarize(preds) if r["subject"] == "all"],
            "mcq_predictions": [{k: p[k] for k in ("set", "id", "pred_letter", "answer", "correct")} for p in preds]}

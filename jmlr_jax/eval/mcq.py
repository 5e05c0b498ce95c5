"""Multiple-choice scoring: option log-likelihood and generate-then-parse, batched and jitted.

Prompts are built exactly like training sequences (data/templates.py): BOS (if the model uses one), the
retrieved documents best-last, each tokenised alone and cut to Budgets.doc, then the question block cut
from the front to Budgets.question. Training assembles the same parts into fixed blocks with masked
padding, which the model cannot see, so the two are the same sequence.

Log-likelihood: log p(" C. {option text}" | prompt) summed over its tokens, for every option. The prompt
runs once; its KV cache is shared by the options' continuations (one extra short pass), so scoring 4 or 5
options costs little more than one forward pass.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlr_jax import parallel
from jmlr_jax.data.sources import LETTERS, QARecord
from jmlr_jax.data.templates import Budgets, PromptTemplate, bos_block, encode_docs, encode_question
from jmlr_jax.generate import SamplingConfig, cut_at_stop, end_ids, generate_ids, left_pad
from jmlr_jax.models.llama import Llama, LlamaConfig, init_cache
from jmlr_jax.tokenizers import Tokenizer

BUCKET = 64  # prompt lengths are padded to a multiple of this: few shapes, few compilations


def prompt_ids(tok: Tokenizer, tpl: PromptTemplate, budgets: Budgets, r: QARecord, docs: Sequence[str] = (),
               shot_ids: Sequence[int] = ()) -> list[int]:
    """The evaluation prompt as token ids (docs in the given order: pass them best-last): the training blocks
    (data/templates.py) with their padding removed, i.e. the sequence the trained model saw. shot_ids: solved
    examples (`encode_shots`) right after BOS, for few-shot evaluation."""
    blocks = [bos_block(tok)]
    if len(shot_ids):
        blocks.append((np.asarray(shot_ids, np.int32), np.ones(len(shot_ids), np.int32)))
    if docs:
        d, dv = encode_docs(tok, tpl, docs, budgets.doc)
        blocks.append((d.reshape(-1), dv.reshape(-1)))
    blocks.append(encode_question(tok, tpl, r, budgets.question))
    tokens = np.concatenate([b[0] for b in blocks])
    valid = np.concatenate([b[1] for b in blocks])
    return tokens[valid > 0].tolist()


def option_ids(tok: Tokenizer, tpl: PromptTemplate, r: QARecord, budget: int) -> list[list[int]]:
    """Each option rendered as the training target would be (" C. text"), without EOS, cut to `budget`."""
    return [tok.encode(tpl.answer.format(letter=LETTERS[i], text=t))[:budget] for i, t in enumerate(r.options)]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _option_logliks(params, prompt_BxL, seg_BxL, opts_BxOxT, opts_valid_BxOxT, *, cfg: LlamaConfig):
    """Sum of log-probs of each option's tokens after its prompt: [B, O]."""
    B, L = prompt_BxL.shape
    _, O, T = opts_BxOxT.shape
    model = Llama(cfg)
    pos = jnp.maximum(jnp.cumsum(seg_BxL, axis=1) - 1, 0)
    logits, cache = model.apply({"params": params}, prompt_BxL, positions_BxL=pos, segment_ids_BxL=seg_BxL,
                                cache=init_cache(cfg, B, L + T))
    first = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)  # predicts each option's token 0
    cache = {k: (v if k == "index" else jnp.repeat(v, O, axis=1 if v.ndim == 5 else 0)) for k, v in cache.items()}
    toks = opts_BxOxT.reshape(B * O, T)
    valid = opts_valid_BxOxT.reshape(B * O, T)
    cpos = jnp.repeat(pos[:, -1:] + 1, O, axis=0) + jnp.arange(T)[None]
    cont, _ = model.apply({"params": params}, toks, positions_BxL=cpos, segment_ids_BxL=valid, cache=cache)
    logp = jnp.concatenate([jnp.repeat(first, O, axis=0)[:, None],
                            jax.nn.log_softmax(cont[:, :-1].astype(jnp.float32), axis=-1)], axis=1)
    tok_lp = jnp.take_along_axis(logp, toks[..., None], axis=-1)[..., 0] * valid
    return jnp.sum(tok_lp, axis=-1).reshape(B, O)


def _batches(lengths: Sequence[int], batch_size: int):
    """Indices sorted by length (less padding), in fixed-size batches; the last one padded by repetition."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i: i + batch_size]
        yield idx, np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])])


def score_options(cfg: LlamaConfig, params, prompts: Sequence[list[int]], options: Sequence[list[list[int]]],
                  batch_size: int = 8, pad_id: int = 0, progress=None) -> list[np.ndarray]:
    """Per question, the log-likelihood of each option's continuation (array of len(options[i]))."""
    if not prompts:
        raise ValueError("no questions to score")
    O = max(len(o) for o in options)
    T = max(len(t) for o in options for t in o)
    out: list[np.ndarray] = [np.empty(0)] * len(prompts)
    for idx, padded in _batches([len(p) for p in prompts], batch_size):
        tokens, seg = left_pad([prompts[i] for i in padded], pad_id, multiple=BUCKET)
        opts = np.full((batch_size, O, T), pad_id, np.int32)
        valid = np.zeros((batch_size, O, T), np.int32)
        for b, i in enumerate(padded):
            for o, ids in enumerate(options[i]):
                opts[b, o, : len(ids)], valid[b, o, : len(ids)] = ids, 1
        ll = parallel.call_on_mesh(_option_logliks, params, (tokens, seg, opts, valid), cfg=cfg)
        for b, i in enumerate(idx):
            out[i] = ll[b, : len(options[i])]
        if progress is not None:
            progress.update(len(idx))
    return out


def generate_answers(cfg: LlamaConfig, params, tok: Tokenizer, prompts: Sequence[list[int]], max_new_tokens: int = 16,
                     batch_size: int = 8, progress=None, stop_strings: Sequence[str] = ()) -> list[str]:
    """Greedy continuations of each prompt, decoded, each cut before the first of `stop_strings` (e.g. the
    template's `PromptTemplate.stop_strings`: a next question the model writes itself)."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, eos_ids=end_ids(cfg, tok))
    pad = tok.pad_id if tok.pad_id is not None else 0
    out = [""] * len(prompts)
    for idx, padded in _batches([len(p) for p in prompts], batch_size):
        gen = generate_ids(cfg, params, [prompts[i] for i in padded], sampling, pad_id=pad, pad_multiple=BUCKET)
        for b, i in enumerate(idx):
            out[i] = cut_at_stop(tok.decode(gen[b]), stop_strings)
        if progress is not None:
            progress.update(len(idx))
    return out

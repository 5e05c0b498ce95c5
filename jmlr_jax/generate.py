"""Greedy and temperature / top-p decoding with a KV cache, for a batch of prompts of different lengths.

Prompts are left-padded so that every row's next token is written at the same cache slot; padded
slots get position -1 and are never attended to, and each row's RoPE positions start at 0 at its
first real token. The whole decode (prefill + loop) is one jitted function; the loop is a
`lax.while_loop` that stops as soon as every row has emitted EOS.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlr_jax import parallel
from jmlr_jax.models.llama import Llama, LlamaConfig, init_cache
from jmlr_jax.tokenizers import Tokenizer, bos_prefix


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    eos_ids: tuple[int, ...] = ()

    def __post_init__(self):
        # Checked here: a negative temperature would sample from the inverted distribution and top_p <= 0 would
        # silently keep every token, the opposite of what was asked.
        if not self.max_new_tokens >= 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """tokens [B, L] and segment ids [B, L] (1 = real, 0 = pad), L rounded up to `multiple` to limit recompiles."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and no empty prompt")
    L = -(-max(len(p) for p in prompts) // multiple) * multiple
    tokens = np.full((len(prompts), L), pad_id, np.int32)
    seg = np.zeros((len(prompts), L), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, L - len(p):] = p
        seg[i, L - len(p):] = 1
    return tokens, seg


def sample_token(logits_BxV: jax.Array, rng: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """Greedy when temperature == 0, else nucleus sampling from softmax(logits / temperature)."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits = logits_BxV.astype(jnp.float32) / temperature
    if top_p < 1.0:
        sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the top token is always kept).
        cutoff_idx = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True) - 1
        cutoff = jnp.take_along_axis(sorted_desc, cutoff_idx, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "return_logits"))
def _decode(params, tokens_BxL, seg_BxL, rng, *, cfg: LlamaConfig, sampling: SamplingConfig,
            return_logits: bool = False):
    B, L = tokens_BxL.shape
    T = sampling.max_new_tokens
    model = Llama(cfg)
    pos_BxL = jnp.maximum(jnp.cumsum(seg_BxL, axis=1) - 1, 0)
    cache = init_cache(cfg, B, L + T)
    logits, cache = model.apply({"params": params}, tokens_BxL, positions_BxL=pos_BxL, segment_ids_BxL=seg_BxL,
                                cache=cache)
    eos = jnp.asarray(sampling.eos_ids or (-1,), jnp.int32)
    out = jnp.zeros((B, T), jnp.int32)
    step_logits = jnp.zeros((B, T, cfg.vocab_size) if return_logits else (B, 0, 0), jnp.float32)
    state = dict(t=jnp.int32(0), last=logits[:, -1], pos=pos_BxL[:, -1] + 1, done=jnp.zeros((B,), bool),
                 out=out, step_logits=step_logits, cache=cache, rng=rng)

    def cond(s):
        return (s["t"] < T) & ~jnp.all(s["done"])

    def body(s):
        rng, sub = jax.random.split(s["rng"])
        tok = sample_token(s["last"], sub, sampling.temperature, sampling.top_p)
        tok = jnp.where(s["done"], eos[0], tok)
        if return_logits:
            s["step_logits"] = s["step_logits"].at[:, s["t"]].set(s["last"])
        out = s["out"].at[:, s["t"]].set(tok)
        done = s["done"] | jnp.isin(tok, eos)
        logits, cache = model.apply({"params": params}, tok[:, None], positions_BxL=s["pos"][:, None],
                                    cache=s["cache"])
        return dict(s, t=s["t"] + 1, last=logits[:, -1], pos=s["pos"] + 1, done=done, out=out, cache=cache,
                    rng=rng)

    s = jax.lax.while_loop(cond, body, state)
    return s["out"], s["t"], s["step_logits"]


def generate_ids(cfg: LlamaConfig, params, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 rng: jax.Array | None = None, pad_id: int = 0, return_logits: bool = False, pad_multiple: int = 8):
    """Token ids in, generated ids out (each row cut after its first EOS, EOS excluded).

    With return_logits=True also returns the logits that chose each generated token, [B, T, V].
    pad_multiple: prompt lengths are padded up to a multiple of it (each length compiles once).
    """
    tokens, seg = left_pad(prompts, pad_id, pad_multiple)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):  # a typed key (jax.random.key) as its raw data: the same
        rng = jax.random.key_data(rng)  # stream, and placeable as a plain array on a mesh
    out, steps, step_logits = parallel.call_on_mesh(_decode, params, (tokens, seg), (rng,), cfg=cfg,
                                                    sampling=sampling, return_logits=return_logits)
    out = out[:, : int(steps)]
    results = []
    for row in out:
        hits = np.flatnonzero(np.isin(row, sampling.eos_ids)) if sampling.eos_ids else []
        results.append(row[: hits[0]].tolist() if len(hits) else row.tolist())
    return (results, step_logits[:, : int(steps)]) if return_logits else results


def end_ids(cfg: LlamaConfig, tok: Tokenizer, stop_ids: Sequence[int] = ()) -> tuple[int, ...]:
    """The tokens that end an answer: the tokenizer's EOS, the config's (Llama 3.1 Instruct lists three) and
    `stop_ids` (e.g. a chat template's end of turn)."""
    return tuple(sorted({i for i in (tok.eos_id, *cfg.eos_ids, *stop_ids) if i is not None}))


def generate(cfg: LlamaConfig, params, tok: Tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, add_bos: bool | None = None,
             stop_ids: Sequence[int] = (), stop_strings: Sequence[str] = ()) -> list[str]:
    """Text in, text out. Stops at `end_ids(cfg, tok, stop_ids)`.

    add_bos: prepend BOS; None follows the tokenizer (`tok.add_bos`: Llama-2 yes, SmolLM2 no).
    stop_ids: more tokens that end an answer, e.g. a chat template's end of turn (`chat.response_end`: Llama 3's
    <|eot_id|> where the tokenizer's EOS is <|end_of_text|>).
    stop_strings: each answer is cut before the first of these (a base model continuing a plain prompt writes the
    next "Question:" itself); unlike stop_ids they are text, which one token may hold only in part, so they are
    applied to the decoded answer and decoding runs on to an end id or max_new_tokens.
    """
    bos = bos_prefix(tok)
    if add_bos is not None:  # the caller's choice over the tokenizer's
        bos = [tok.bos_id] if add_bos and tok.bos_id is not None else []
    ids = [bos + tok.encode(p) for p in prompts]
    sampling = SamplingConfig(max_new_tokens, temperature, top_p, end_ids(cfg, tok, stop_ids))
    pad = tok.pad_id if tok.pad_id is not None else 0
    texts = [tok.decode(r) for r in generate_ids(cfg, params, ids, sampling, jax.random.PRNGKey(seed), pad)]
    return [cut_at_stop(t, stop_strings) for t in texts]


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any of `stop_strings` (all of it when none occurs)."""
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return text[: min(hits)] if hits else text

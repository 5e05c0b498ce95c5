"""ColBERT late-interaction retriever: BERT encoder, 128-d projection, MaxSim.

Queries:   [CLS] [Q] q_1 .. q_n [SEP] [MASK] .. [MASK]   (padded with [MASK] to query_maxlen; the
           [MASK] tokens are scored but, as in ColBERTv1, not attended to by default).
Documents: [CLS] [D] d_1 .. d_m [SEP] [PAD] ..          (punctuation and padding never take part in
           the max).
Each token embedding is projected to `dim` without bias and L2-normalised; MaxSim sums over query
tokens the max over valid document tokens of the dot product, in fp32.
"""
from __future__ import annotations

import dataclasses
import string
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmlr_jax import parallel
from jmlr_jax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT encoder architecture (round-trips to a Hugging Face BertModel config.json)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    intermediate_size: int = 1536
    num_layers: int = 6
    num_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "architectures": ["BertModel"], "model_type": "bert", "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "max_position_embeddings": self.max_position_embeddings, "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps, "pad_token_id": self.pad_token_id, "hidden_act": "gelu",
            "position_embedding_type": "absolute",
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> "BertConfig":
        if d.get("model_type", "bert") != "bert":
            raise ValueError(f"not a BERT config: model_type={d.get('model_type')!r}")
        if d.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act={d['hidden_act']!r} (BERT uses exact gelu)")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported position_embedding_type={d['position_embedding_type']!r}")
        kw = dict(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
            max_position_embeddings=d.get("max_position_embeddings", 512),
            type_vocab_size=d.get("type_vocab_size", 2), layer_norm_eps=d.get("layer_norm_eps", 1e-12),
            pad_token_id=d.get("pad_token_id", 0) or 0,
        )
        kw.update(overrides)
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class ColBERTConfig:
    bert: BertConfig = BertConfig()
    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 180
    attend_to_mask_tokens: bool = False
    q_marker: str = "[unused0]"
    d_marker: str = "[unused1]"

    def replace(self, **kw: Any) -> "ColBERTConfig":
        return dataclasses.replace(self, **kw)


def _init(axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class BertLayer(nn.Module):
    """Post-LN transformer layer; (carry, *broadcast) signature for nn.scan."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, x_BxLxD, attn_mask_BxL):
        cfg = self.cfg
        H, Dh = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        proj = lambda name: nn.DenseGeneral(  # noqa: E731
            (H, Dh), dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
            kernel_init=_init(("embed", "heads", "head_dim")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "head_dim")))
        # Both products on heads-major [B, H, L, D]: XLA:CPU then runs plain batched matmuls, where on [B, L, H, D]
        # its strided einsums made attention the encoder's largest cost (MiniLM, 64 x 256 tokens: 504 -> 178 ms a
        # layer); accelerators choose their own layouts either way.
        q_BxHxLxD, k_BxHxLxD, v_BxHxLxD = (proj(n)(x_BxLxD).transpose(0, 2, 1, 3) for n in ("q", "k", "v"))
        logits_BxHxLxL = jnp.einsum("bhld,bhsd->bhls", q_BxHxLxD * Dh**-0.5, k_BxHxLxD,
                                    preferred_element_type=jnp.float32)
        logits_BxHxLxL = jnp.where(attn_mask_BxL[:, None, None, :] > 0, logits_BxHxLxL, -1e30)
        probs = jax.nn.softmax(logits_BxHxLxL, axis=-1).astype(v_BxHxLxD.dtype)
        ctx_BxLxHxD = jnp.einsum("bhls,bhsd->bhld", probs, v_BxHxLxD).transpose(0, 2, 1, 3)
        attn_out = nn.DenseGeneral(cfg.hidden_size, axis=(-2, -1), dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                   kernel_init=_init(("heads", "head_dim", "embed")), name="o")(ctx_BxLxHxD)
        h = _layer_norm(cfg, "attn_norm")(x_BxLxD + attn_out)
        dense = lambda feats, axes, name: nn.Dense(  # noqa: E731
            feats, dtype=cfg.dtype, param_dtype=cfg.param_dtype, kernel_init=_init(axes), name=name)
        ff = dense(cfg.hidden_size, ("mlp", "embed"), "down")(
            nn.gelu(dense(cfg.intermediate_size, ("embed", "mlp"), "up")(h), approximate=False))
        out = _layer_norm(cfg, "mlp_norm")(h + ff)
        return parallel.constrain(out, ("batch", "length", "embed")), None


# Training keeps only the weight matmuls' outputs per layer; the backward pass recomputes the [L, L] attention
# logits / probabilities and GELU's intermediates, which dominated the stored stacks (C documents per question:
# 7B JMLR step at batch 8 on an H100 60.3 -> 53.0 GiB; no slower on CPU). No effect at inference.
_RematBertLayer = nn.remat(BertLayer, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                           prevent_cse=False)


class BertEncoder(nn.Module):
    """Returns the last hidden states [B, L, D]."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, ids_BxL, attn_mask_BxL, type_ids_BxL=None):
        cfg = self.cfg
        L = ids_BxL.shape[1]
        if L > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {L} > max_position_embeddings {cfg.max_position_embeddings}")
        embed = lambda n, name: nn.Embed(  # noqa: E731
            n, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
            embedding_init=_init(("vocab", "embed") if name == "word_embed" else (None, "embed")))
        type_ids = jnp.zeros_like(ids_BxL) if type_ids_BxL is None else type_ids_BxL
        x = (embed(cfg.vocab_size, "word_embed")(ids_BxL)
             + embed(cfg.max_position_embeddings, "pos_embed")(jnp.arange(L)[None, :])
             + embed(cfg.type_vocab_size, "type_embed")(type_ids))
        x = _layer_norm(cfg, "embed_norm")(x)
        stack = nn.scan(_RematBertLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast,), length=cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(cfg, name="layers")(x, attn_mask_BxL)
        return x


class ColBERT(nn.Module):
    """BERT + linear projection to `dim` (no bias) + per-token L2 normalisation."""

    cfg: ColBERTConfig

    def setup(self):
        self.bert = BertEncoder(self.cfg.bert)
        self.proj = nn.Dense(self.cfg.dim, use_bias=False, dtype=self.cfg.bert.dtype,
                             param_dtype=self.cfg.bert.param_dtype, kernel_init=_init(("embed", "colbert_dim")))

    def encode(self, ids_BxL, attn_mask_BxL, keep_mask_BxL):
        """Normalised token embeddings [B, L, dim] (fp32); positions with keep=0 are zero."""
        h = self.bert(ids_BxL, attn_mask_BxL)
        e = self.proj(h).astype(jnp.float32)
        e = e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, axis=-1, keepdims=True), 1e-24))
        return e * keep_mask_BxL[..., None].astype(e.dtype)

    def encode_query(self, ids_BxL, attn_mask_BxL):
        """Query embeddings: every position (the [MASK] augmentation included) is kept."""
        return self.encode(ids_BxL, attn_mask_BxL, jnp.ones_like(ids_BxL))

    def encode_doc(self, ids_BxL, attn_mask_BxL, keep_mask_BxL):
        return self.encode(ids_BxL, attn_mask_BxL, keep_mask_BxL)

    def mean_pooled(self, ids_BxL, attn_mask_BxL):
        """Sentence-transformers mean pooling of the BERT hidden states (no projection)."""
        h = self.bert(ids_BxL, attn_mask_BxL).astype(jnp.float32)
        m = attn_mask_BxL[..., None].astype(jnp.float32)
        return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)

    def __call__(self, q_ids_BxQ, q_mask_BxQ, d_ids_BxL, d_mask_BxL, d_keep_BxL):
        """Scores each query against its own document: [B]. Used for init and simple pairs."""
        Q = self.encode_query(q_ids_BxQ, q_mask_BxQ)
        D = self.encode_doc(d_ids_BxL, d_mask_BxL, d_keep_BxL)
        return maxsim(Q, D[:, None], d_keep_BxL[:, None])[:, 0]


def maxsim(Q_BxQxE: jax.Array, D_BxKxLxE: jax.Array, keep_BxKxL: jax.Array) -> jax.Array:
    """Late-interaction score of each query against its K candidate documents: [B, K] in fp32.

    Masked document tokens (punctuation, padding) are excluded from the max (not merely zeroed:
    a zero could otherwise beat negative similarities). A document without any valid token
    scores 0 per query token.
    """
    sim_BxKxQxL = jnp.einsum("bqe,bkle->bkql", Q_BxQxE.astype(jnp.float32), D_BxKxLxE.astype(jnp.float32),
                             preferred_element_type=jnp.float32)
    keep = keep_BxKxL[:, :, None, :] > 0
    best_BxKxQ = jnp.max(jnp.where(keep, sim_BxKxQxL, -jnp.inf), axis=-1)
    best_BxKxQ = jnp.where(jnp.any(keep, axis=-1), best_BxKxQ, 0.0)
    return jnp.sum(best_BxKxQ, axis=-1)


def init_params(cfg: ColBERTConfig, rng: jax.Array) -> dict:
    """Random parameters as a plain (unboxed) pytree (jitted, as `llama.init_params`)."""
    def init(r):
        ids = jnp.zeros((1, 8), jnp.int32)
        return nn.meta.unbox(ColBERT(cfg).init(r, ids, ids + 1, ids, ids + 1, ids + 1)["params"])
    return jax.jit(init)(rng)


class ColBERTTokenizer:
    """Turns query / document strings into the fixed-shape id and mask arrays ColBERT expects."""

    def __init__(self, tok: Tokenizer, cfg: ColBERTConfig):
        self.tok, self.cfg = tok, cfg
        ids = {name: tok.token_to_id(name) for name in ("[CLS]", "[SEP]", "[MASK]", "[PAD]",
                                                        cfg.q_marker, cfg.d_marker)}
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(f"tokenizer lacks the ColBERT special tokens {missing}")
        self.cls, self.sep, self.mask, self.pad = ids["[CLS]"], ids["[SEP]"], ids["[MASK]"], ids["[PAD]"]
        self.q_marker, self.d_marker = ids[cfg.q_marker], ids[cfg.d_marker]
        punct = {tok.token_to_id(c) for c in string.punctuation}
        self.punct_ids = np.array(sorted(i for i in punct if i is not None), np.int32)

    def queries(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids [Q, query_maxlen], attention mask [Q, query_maxlen]."""
        n = self.cfg.query_maxlen
        ids = np.full((len(texts), n), self.mask, np.int32)
        attn = np.zeros((len(texts), n), np.int32)
        for i, pieces in enumerate(self.tok.encode_batch(list(texts))):
            row = [self.cls, self.q_marker] + pieces[: n - 3] + [self.sep]
            ids[i, : len(row)] = row
            attn[i, : len(row)] = 1
        if self.cfg.attend_to_mask_tokens:
            attn[:] = 1
        return ids, attn

    def docs(self, texts: Sequence[str], pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids, attention mask, keep mask (no punctuation, no padding), each [N, pad_to or doc_maxlen]."""
        n = pad_to or self.cfg.doc_maxlen
        ids = np.full((len(texts), n), self.pad, np.int32)
        attn = np.zeros((len(texts), n), np.int32)
        for i, pieces in enumerate(self.tok.encode_batch(list(texts))):
            row = [self.cls, self.d_marker] + pieces[: min(n, self.cfg.doc_maxlen) - 3] + [self.sep]
            ids[i, : len(row)] = row
            attn[i, : len(row)] = 1
        keep = attn * ~np.isin(ids, self.punct_ids)
        return ids, attn, keep.astype(np.int32)

    def sentences(self, texts: Sequence[str], max_len: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Plain BERT input ([CLS] text [SEP]) padded to the longest, for mean-pooled embeddings."""
        rows = [[self.cls] + p[: max_len - 2] + [self.sep] for p in self.tok.encode_batch(list(texts))]
        n = max(len(r) for r in rows)
        ids = np.full((len(rows), n), self.pad, np.int32)
        attn = np.zeros((len(rows), n), np.int32)
        for i, r in enumerate(rows):
            ids[i, : len(r)], attn[i, : len(r)] = r, 1
        return ids, attn


def logical_axes(cfg: ColBERTConfig) -> dict:
    """Logical axis names of every ColBERT parameter (pytree of PartitionSpec)."""
    ids = jnp.zeros((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: ColBERT(cfg).init(jax.random.PRNGKey(0), ids, ids + 1, ids, ids + 1, ids + 1))
    return nn.get_partition_spec(boxed)["params"]

"""Joint train state: params {"llm", "retriever"[, "lora"]}, one optax update with per-group learning rates.

Groups: "llm" (the decoder, or its LoRA adapters), "retriever" (the ColBERT encoder), "frozen".
Which parameters train is explicit: a regular expression over parameter paths per model (the reference
code's PEFT naming bug silently froze most of the ColBERT encoder and gave every parameter the
retriever's learning rate; here the groups are printed by `describe_groups` and tested).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimConfig:
    llm_lr: float = 1e-5
    retriever_lr: float = 3e-6
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 0
    decay_steps: int = 0  # cosine decay to 10% over this many steps; 0 = constant after warmup
    grad_clip: float = 1.0  # global norm over all trained params; 0 = off
    llm_trainable: str = ".*"  # regex over "/"-joined param paths; "" freezes the LLM
    retriever_trainable: str = ".*"

    def __post_init__(self):
        bad = [f"{k}={getattr(self, k)!r} must be >= 0" for k in ("llm_lr", "retriever_lr", "weight_decay",
                                                               "warmup_steps", "decay_steps", "grad_clip")
               if not getattr(self, k) >= 0]  # `not >=` also catches NaN
        bad += [f"{k}={getattr(self, k)!r} must be in [0, 1)" for k in ("b1", "b2") if not 0 <= getattr(self, k) < 1]
        bad += [f"eps={self.eps!r} must be > 0"] if not self.eps > 0 else []
        for k in ("llm_trainable", "retriever_trainable"):
            try:
                re.compile(getattr(self, k))
            except re.error as e:
                bad.append(f"{k}={getattr(self, k)!r} is not a regular expression ({e})")
        if bad:
            raise ValueError(f"OptimConfig: {'; '.join(bad)}")


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "lm_head")  # the kernels LoRA can adapt


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 0  # 0 = full fine-tuning
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 0):
            raise ValueError(f"LoraConfig: rank={self.rank!r} must be an integer >= 0 (0 = full fine-tuning)")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if isinstance(self.targets, str) or unknown:  # a typo would have left that projection un-adapted
            raise ValueError(f"LoraConfig: targets {self.targets!r}: each must be one of {LORA_TARGETS}")


def path_name(p) -> str:
    """A pytree key path as "/"-joined names ("layers/q/kernel"): what the trainable regexes match."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)


def param_groups(params: dict, cfg: OptimConfig) -> dict:
    """Label every leaf "llm" / "retriever" / "frozen" (a pytree like params)."""
    pats = {"llm": cfg.llm_trainable, "retriever": cfg.retriever_trainable}

    def label(path, _):
        top = path_name(path[:1])
        rest = path_name(path[1:])
        if top == "lora":
            return "llm"
        if top == "llm" and "lora" in params:  # base weights stay frozen under LoRA
            return "frozen"
        pat = pats.get(top, "")
        return top if pat and re.fullmatch(pat, rest) else "frozen"

    return jax.tree_util.tree_map_with_path(label, params)


def describe_groups(params: dict, cfg: OptimConfig) -> dict[str, int]:
    """Parameter counts per group, e.g. {"llm": 134515008, "retriever": 22713216, "frozen": 0}."""
    labels = jax.tree_util.tree_leaves(param_groups(params, cfg))
    sizes = [int(x.size) for x in jax.tree_util.tree_leaves(params)]
    out = {"llm": 0, "retriever": 0, "frozen": 0}
    for lab, n in zip(labels, sizes):
        out[lab] += n
    return out


def _schedule(lr: float, cfg: OptimConfig):
    if not cfg.warmup_steps and not cfg.decay_steps:
        return lr
    warm = optax.linear_schedule(0.0, lr, max(cfg.warmup_steps, 1))
    rest = optax.cosine_decay_schedule(lr, cfg.decay_steps, alpha=0.1) if cfg.decay_steps else optax.constant_schedule(lr)
    return optax.join_schedules([warm, rest], [cfg.warmup_steps])


def make_optimizer(params: dict, cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW per group (decay only on matrices: no norms, biases), zero update for frozen params."""
    decay_mask = jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)

    def adamw(lr):
        return optax.adamw(_schedule(lr, cfg), cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay,
                           mask=decay_mask)

    labels = param_groups(params, cfg)
    tx = optax.multi_transform({"llm": adamw(cfg.llm_lr), "retriever": adamw(cfg.retriever_lr),
                                "frozen": optax.set_to_zero()}, labels)
    return optax.chain(_clip_trained(cfg.grad_clip, labels), tx) if cfg.grad_clip else tx


def trained_norm(grads, labels) -> jax.Array:
    """Global norm of the gradients of the trained leaves (labels: `param_groups`); frozen ones do not count."""
    return optax.tree.norm([g for g, lab in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(labels))
                          if lab != "frozen"])


def stop_frozen(params, labels):
    """Frozen leaves through stop_gradient, so a step never forms the gradients the optimizer would zero (a
    regex-frozen encoder's backward pass, say); the trained leaves as they are."""
    return jax.tree_util.tree_map(lambda p, lab: jax.lax.stop_gradient(p) if lab == "frozen" else p, params, labels)


def summed_over_micro_batches(value_and_grad, params, batch: dict, num_micro: int):
    """value_and_grad(params, micro_batch) -> (aux, grads), summed over the batch leaves' leading [num_micro]
    axis one micro-batch at a time (lax.scan: activations are one micro-batch's); num_micro=1: the batch as is.
    The first micro-batch runs outside the scan so the carry has the gradients' own shardings."""
    if num_micro == 1:
        return value_and_grad(params, batch)
    first = jax.tree_util.tree_map(lambda x: x[0], batch)
    rest = jax.tree_util.tree_map(lambda x: x[1:], batch)

    def micro(acc, mb):
        return jax.tree_util.tree_map(jnp.add, acc, value_and_grad(params, mb)), None

    return jax.lax.scan(micro, value_and_grad(params, first), rest)[0]


def _clip_trained(max_norm: float, labels) -> optax.GradientTransformation:
    """optax.clip_by_global_norm with the norm taken over the trained leaves only: a frozen leaf's gradient (zeroed
    afterwards) must not shrink the trained ones' updates. Stateless like optax's, so optimizer states keep their
    structure (checkpoints written before restore)."""
    def clip(updates, params=None):
        del params
        norm = trained_norm(updates, labels)
        scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree_util.tree_map(lambda g: (g * scale).astype(g.dtype), updates)

    return optax.stateless(clip)


# ---------------------------------------------------------------------------------------------------- LoRA

def _targets(llm_params: dict, cfg: LoraConfig) -> dict[str, tuple[int, int, bool]]:
    """path -> (in, out, stacked) for each adapted kernel, as matrices [in, out] (per layer when stacked)."""
    out = {}
    layers = llm_params.get("layers", {})
    for group in ("attn", "mlp"):
        for name, leaf in layers.get(group, {}).items():
            if name in cfg.targets:
                k = leaf["kernel"]  # [N, in..., out...]
                fan_in = math.prod(k.shape[1:3] if name == "o" else k.shape[1:2])  # o: [N, H, Dh, D]
                out[f"layers/{group}/{name}"] = (fan_in, int(k.size // k.shape[0] // fan_in), True)
    if "lm_head" in cfg.targets and "lm_head" in llm_params:
        d, v = llm_params["lm_head"]["kernel"].shape
        out["lm_head"] = (d, v, False)
    return out


def init_lora(llm_params: dict, cfg: LoraConfig, rng: jax.Array) -> dict:
    """A ~ N(0, 1/in), B = 0: the adapted model starts exactly equal to the base model."""
    n_layers = llm_params["layers"]["attn_norm"]["scale"].shape[0]
    lora = {}
    for i, (path, (fan_in, fan_out, stacked)) in enumerate(sorted(_targets(llm_params, cfg).items())):
        lead = (n_layers,) if stacked else ()
        a = jax.random.normal(jax.random.fold_in(rng, i), (*lead, fan_in, cfg.rank), jnp.float32) * fan_in**-0.5
        lora[path] = {"a": a, "b": jnp.zeros((*lead, cfg.rank, fan_out), jnp.float32)}
    if not lora:
        raise ValueError(f"LoRA targets {cfg.targets} match no kernel of this model")
    return lora


def lora_logical_axes(llm_logical: dict, lora: dict) -> dict:
    """Logical axis names of LoRA adapters (a pytree like `lora`), from their kernels' (`llm_logical`, i.e.
    models.llama.logical_axes): A [in, rank] takes the kernel's first input axis, B [rank, out] its first output
    axis, and the rank axis "lora_rank", which takes the FSDP axis where the other does not, so under FSDP every
    adapter and its Adam moments are split over the devices, not replicated (7B, r = 128: ~5 GB per device)."""
    out = {}
    for path, ab in lora.items():
        kernel = tuple(_node(llm_logical, path)["kernel"])
        lead = kernel[:1] if ab["a"].ndim == 3 else ()  # the stacked layers' axis
        n_in = 2 if path.endswith("/o") else 1  # o: [heads, head_dim] -> embed
        first_in, first_out = kernel[len(lead)], kernel[len(lead) + n_in]
        out[path] = {"a": P(*lead, first_in, "lora_rank"), "b": P(*lead, "lora_rank", first_out)}
    return out


def _node(tree: dict, path: str) -> dict:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def merge_lora(llm_params: dict, lora: dict, cfg: LoraConfig, paths=None) -> dict:
    """Base + (alpha / rank) * A @ B on every adapted kernel (or those in `paths`): the weights to export, evaluate
    and decode with."""
    scale = cfg.alpha / cfg.rank
    merged = jax.tree_util.tree_map(lambda x: x, llm_params)  # new containers, same leaves
    for path, ab in lora.items():
        if paths is not None and path not in paths:
            continue
        leaf = _node(merged, path)
        k = leaf["kernel"]
        delta = jnp.matmul(ab["a"], ab["b"]) * scale
        leaf["kernel"] = (k.astype(jnp.float32) + delta.reshape(k.shape)).astype(k.dtype)
    return merged


def merged_llm_params(params: dict, lora_cfg: LoraConfig) -> Any:
    """The decoder weights of a trained state, LoRA adapters (when present) merged in."""
    return merge_lora(params["llm"], params["lora"], lora_cfg) if "lora" in params else params["llm"]


def llm_params_of(params: dict, lora_cfg: LoraConfig) -> Any:
    """The decoder weights a training step runs: the base weights, with LoRA adapters (when present) carried
    unmerged for the layers' projections ("lora_<name>_a" / "lora_<name>_b" beside each projection, B scaled by
    alpha / rank; models/llama.py adds x @ A @ B to x @ W), so the frozen base weights' gradients (zero) and a
    merged copy of every kernel are never formed. An adapted lm_head is merged (the fused cross-entropy takes one
    kernel)."""
    if "lora" not in params:
        return params["llm"]
    lora, scale = params["lora"], lora_cfg.alpha / lora_cfg.rank
    base = jax.lax.stop_gradient(params["llm"])  # frozen under LoRA: its [in, out] weight gradients are never formed
    view = merge_lora(base, lora, lora_cfg, paths=[p for p in lora if not p.startswith("layers/")])
    for path, ab in lora.items():
        if path.startswith("layers/"):
            group, name = path.rsplit("/", 1)
            scope = _node(view, group)
            scope[f"lora_{name}_a"], scope[f"lora_{name}_b"] = ab["a"], ab["b"] * scale
    return view


def init_train_state(params: dict, tx: optax.GradientTransformation, seed: int = 0) -> dict:
    """{"step", "params", "opt_state", "rng"}: everything a checkpoint needs besides the data iterator."""
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": jax.random.PRNGKey(seed)}

"""Accelerator programs lowered on this CPU (jmlr_jax.lowering): "auto" resolves for the target, the fused kernels
(cuDNN, Triton, Mosaic) are in the program and pass their own argument checks, no [L, L] logits appear; the mask
oracle's logits are found (the check can fail)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jmlr_jax import lowering
from jmlr_jax.models import Llama, LlamaConfig
from jmlr_jax.models import colbert as colbert_lib
from jmlr_jax.models.attention import resolve_implementation
from jmlr_jax.models.llama import init_params
from jmlr_jax.train import jmlr_step as js, lm_step
from jmlr_jax.train.state import OptimConfig, init_train_state, make_optimizer
from tests.train.test_jmlr_step import LLM, RET, make_batch
from tests.train.test_lm_step import seq

L = 384  # no other size of the tiny model (hidden 64, MLP 96, batch 2, heads 4 / 2) equals it
CUDNN = {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"}
TRITON = {"__gpu$xla.gpu.triton"}
MOSAIC = {"tpu_custom_call"}


def llama_grad_text(attention: str, s2: int, length: int = L, rows: int = 2) -> tuple[LlamaConfig, str]:
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                      num_kv_heads=2, attention=attention, s2_group_size=s2)
    params = jax.eval_shape(functools.partial(init_params, cfg), jax.random.PRNGKey(0))
    tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    loss = lambda p, t: Llama(cfg).apply({"params": p}, t, train=True).astype(jnp.float32).mean()  # noqa: E731
    return cfg, lowering.lower(jax.grad(loss), params, tokens)


@pytest.mark.parametrize("platform,attention,backend,calls", [
    ("cuda", "auto", "cudnn", CUDNN), ("cuda", "pallas_gpu", "pallas_gpu", TRITON), ("tpu", "auto", "splash", MOSAIC)])
@pytest.mark.parametrize("s2", [0, 128])
def test_llama_train_step_lowers_with_fused_attention(platform, attention, backend, calls, s2):
    with lowering.target(platform):
        assert lowering.backend() == platform
        assert resolve_implementation(attention, dtype=jnp.bfloat16, head_dim=16, right_padded=True) == backend
        cfg, text = llama_grad_text(attention, s2)
        dense = lowering.custom_calls(llama_grad_text(attention, 0)[1])
    assert cfg.dtype == "bfloat16"  # "auto" resolved for the accelerator, not for this CPU
    found = lowering.custom_calls(text)
    assert calls <= set(found), found
    if s2:  # groups folded into the batch: the shifted half's end groups are calls of their own
        assert sum(found[c] for c in calls) > sum(dense[c] for c in calls)
    assert lowering.attention_logits(text, L) == []
    assert not s2 or lowering.attention_logits(text, s2) == []  # nor [G, G] ones


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_the_oracle_materialises_logits(platform):
    with lowering.target(platform):
        _, text = llama_grad_text("reference", 0)
    assert not lowering.custom_calls(text)
    assert lowering.attention_logits(text, L), "the check cannot fail"


def test_cudnn_lowers_odd_lengths():
    """JAX's cuDNN training rule rejects odd lengths; the adaptor pads one token (bitwise the same rows)."""
    with lowering.target("cuda"):
        _, text = llama_grad_text("cudnn", 0, length=L + 1)
    assert CUDNN <= set(lowering.custom_calls(text))


@pytest.mark.parametrize("compact,calls", [(True, CUDNN), (False, TRITON)])
def test_fused_jmlr_step_lowers_for_gpu(compact, calls):
    """Compacted rows are right-padded: "auto" takes cuDNN; the block layout has interior padding: Triton."""
    with lowering.target("cuda"):
        llm = dataclasses.replace(LLM, dtype="auto")
        models = js.StepConfigs(llm, RET, js.JMLRConfig(num_candidates=6, num_sampled=4, num_docs=3,
                                                        compact=compact))
        params = {"llm": jax.eval_shape(functools.partial(init_params, llm), jax.random.PRNGKey(0)),
                  "retriever": jax.eval_shape(functools.partial(colbert_lib.init_params, RET), jax.random.PRNGKey(1))}
        tx = make_optimizer(params, OptimConfig())
        state = jax.eval_shape(functools.partial(init_train_state, tx=tx), params)
        text = lowering.lower(functools.partial(js.train_step, models=models, tx=tx), state, make_batch())
    assert llm.dtype == "bfloat16"
    assert calls <= set(lowering.custom_calls(text))


def test_target_is_scoped():
    with pytest.raises(ValueError, match="lowering target"):
        with lowering.target("gpu0"):
            pass
    with lowering.target("cuda"):
        with lowering.target("tpu"):
            assert lowering.backend() == "tpu"
        assert lowering.backend() == "cuda"
    assert lowering.backend() == jax.default_backend()
    assert LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1,
                       num_kv_heads=1).dtype == ("float32" if jax.default_backend() == "cpu" else "bfloat16")


@pytest.mark.parametrize("platform,calls", [("cuda", TRITON), ("tpu", MOSAIC)])
@pytest.mark.parametrize("kind", ["lm", "dpo"])
def test_pipeline_steps_lower(platform, calls, kind):
    """The seed pipelines' steps (packed CPT / SFT rows, DPO pairs) take the segment-aware kernels there."""
    rng = np.random.RandomState(0)
    batch = seq(rng, L=L) if kind == "lm" else \
        {f"{side}_{k}": v for side in ("chosen", "rejected") for k, v in seq(rng, L=L).items()}
    with lowering.target(platform):
        m = lm_step.LMStepConfigs(dataclasses.replace(LLM, dtype="auto"))
        params = {"llm": jax.eval_shape(functools.partial(init_params, m.llm), jax.random.PRNGKey(0))}
        tx = make_optimizer(params, OptimConfig())
        state = jax.eval_shape(functools.partial(init_train_state, tx=tx), params)
        step = functools.partial(lm_step.lm_train_step, models=m, tx=tx, kind=kind)
        text = lowering.lower(step, state, batch, params["llm"] if kind == "dpo" else None)
    assert calls <= set(lowering.custom_calls(text))
    assert lowering.attention_logits(text, L) == []


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("platform,attention", [("tpu", "auto"), ("cuda", "pallas_gpu"), ("cuda", "auto")])
@pytest.mark.parametrize("s2", [0, 128])
def test_fused_kernels_run_per_shard_on_a_pod_mesh(platform, attention, s2):
    """Under a mesh in context (the training loop sets it) splash / Triton / cuDNN are lowered inside a manual
    region whose rows are split over the batch axes that divide them and KV heads over tensor: each chip runs its
    own shard, not the gathered global batch (cuDNN: not through JAX's partitioning rule, which refused the fused
    JMLR step's q, k, v under FSDP); without the mesh there is no such region."""

    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    with jax.set_mesh(mesh), lowering.target(platform):
        _, text = llama_grad_text(attention, s2)
    assert "sdy.manual_computation" in text
    assert '[{"data"}, {}, {"tensor"}, {}]' in text  # a batch of 2: data only (fsdp would not divide it)
    assert "CustomSPMDPartitioning" not in text
    with lowering.target(platform):
        _, unsharded = llama_grad_text(attention, s2)
    assert "sdy.manual_computation" not in unsharded


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("platform,dense_calls", [("tpu", MOSAIC), ("cuda", CUDNN)])
@pytest.mark.parametrize("s2", [0, 128])
def test_one_long_row_on_eight_fsdp_chips(platform, dense_calls, s2):
    """Long-context training: one row over 8 FSDP chips. The kernel still sits in a manual region (outside one
    XLA refuses to compile Mosaic: "Mosaic kernels cannot be automatically partitioned"), and the activations are
    split along the sequence, which the rows leave free, instead of replicated on every chip. With S2 the 8
    groups (4 per head half) become rows split over the chips, one each, and "auto" takes Triton's kernel on GPU
    for them (cuDNN takes one segment per row). Dense splash splits its queries along the sequence instead, balanced
    where that pays."""
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))
    with jax.set_mesh(mesh), lowering.target(platform):
        _, text = llama_grad_text("auto", s2, length=512, rows=1)
    assert "sdy.manual_computation" in text
    assert '[{}, {"fsdp"}, {}]' in text  # the residual stream [1, L, D]: the sequence over fsdp
    groups_split = '[{"fsdp"}, {}, {}, {}]' in text  # the kernel's q: [8 group rows, G, H / 2, D]
    assert groups_split == bool(s2)
    # dense splash: each chip's queries, 512 padded to 8 blocks of 128, one per chip (keys and values gathered),
    # split contiguously; 8192 tokens are balanced (chip j swaps the second half of its queries with chip 7 - j's: a
    # collective permute), each chip's q 1024 tokens
    assert ("tensor<1x128x4x16xbf16>" in text) == (platform == "tpu" and not s2)
    assert "collective_permute" not in text
    if platform == "tpu" and not s2:
        with jax.set_mesh(mesh), lowering.target(platform):
            _, longer = llama_grad_text("auto", s2, length=8192, rows=1)
        assert "collective_permute" in longer and "tensor<1x1024x4x16xbf16>" in longer
    calls = set(lowering.custom_calls(text))
    assert (TRITON if s2 and platform == "cuda" else dense_calls) <= calls
    assert not (s2 and platform == "cuda") or not CUDNN & calls


def _compiled_llama_grad(attention: str, chip: str, length: int = 1024):
    with lowering.target(lowering.CHIPS[chip]):
        cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                          num_kv_heads=2, attention=attention)
    params = jax.eval_shape(functools.partial(init_params, cfg), jax.random.PRNGKey(0))
    tokens = jax.ShapeDtypeStruct((2, length), jnp.int32)
    loss = lambda p, t: Llama(cfg).apply({"params": p}, t, train=True).astype(jnp.float32).mean()  # noqa: E731
    return lowering.compile(jax.grad(loss), params, tokens, mesh=lowering.chip_mesh(chip))


def test_compiled_for_a_tpu_chip_here():
    """XLA:TPU (libtpu, a test dependency) compiles the train step's gradient for one v5p chip on this CPU host:
    Mosaic compiles the splash kernels, and the compiler's memory figure shows what they save over the oracle.
    At the suite's "highest" matmul precision (conftest) Mosaic rejects the bf16 kernels ("Bad lhs type"): the
    accelerator's default is what runs there."""
    with jax.default_matmul_precision("default"):
        fused = _compiled_llama_grad("auto", "v5p")
    oracle = _compiled_llama_grad("reference", "v5p")
    assert lowering.chip_mesh("v5p").devices.flat[0].platform == "tpu"
    assert MOSAIC <= set(lowering.custom_calls(fused.as_text()))
    # forward, dq and dkv kernels once each: the checkpoint that keeps head_dim 16's q, k, v out of the kernel's
    # lane-padded layout (models/kernels.py) recomputes only their transposes, never the forward kernel
    assert lowering.custom_calls(fused.as_text())["tpu_custom_call"] == 3
    assert not MOSAIC & set(lowering.custom_calls(oracle.as_text()))  # XLA:TPU adds buffer-management calls
    assert 0 < lowering.memory_gib(fused) < lowering.memory_gib(oracle) / 2  # [L, L] logits: 4x here
    # the compiler's own peak (what to compare across backends) is there and never above the plain sum
    assert 0 < lowering.peak_gib(fused) <= lowering.memory_gib(fused)


def test_chip_mesh_says_what_is_missing(monkeypatch):
    from jax.experimental import topologies

    def absent(*_, **__):
        raise NotImplementedError("topology not implemented for cuda")

    monkeypatch.setattr(topologies, "get_topology_desc", absent)
    need = r'cannot compile for h100 here: needs "jax\[cuda12\]" and JAX_PLATFORMS=cpu'
    with pytest.raises(RuntimeError, match=need):
        lowering.chip_mesh("h100")
    with pytest.raises(ValueError, match="not in"):
        lowering.chip_mesh("a100")
    with pytest.raises(ValueError, match="one of"):
        lowering.chip_mesh("v5p", (1, 3, 1))

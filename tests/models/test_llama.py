"""Llama decoder vs transformers' LlamaForCausalLM, config round trip, execution-setting invariance."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jmlr_jax.convert import hf
from jmlr_jax.errors import InputError
from jmlr_jax.models import Llama, LlamaConfig
from jmlr_jax.models import llama as llama_lib
from tests.helpers import hf_logits, saved_residuals, tiny_hf_llama


def _from_torch(model):
    cfg = LlamaConfig.from_hf_dict(model.config.to_dict())
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return cfg, hf.llama_params_from_hf(cfg, tensors)


@pytest.mark.parametrize("tie,rope_factor,kv_heads", [(False, 1.0, 2), (True, 1.0, 1), (False, 4.0, 2),
                                                      (True, 2.0, 4)])
def test_logits_match_transformers(tie, rope_factor, kv_heads):
    model = tiny_hf_llama(tie=tie, rope_factor=rope_factor, kv_heads=kv_heads)
    cfg, params = _from_torch(model)
    assert cfg.tie_word_embeddings == tie and cfg.rope_scaling_factor == rope_factor
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 37))
    ref = hf_logits(model, tokens)
    assert np.abs(ref).max() > 3.0, "reference logits too small for a meaningful check"
    for impl, block in (("reference", 256), ("blockwise", 16)):  # oracle; blocks of 16 (ragged last block)
        out = np.asarray(Llama(cfg.replace(attention=impl, attn_block=block)).apply({"params": params},
                                                                                   jnp.asarray(tokens)))
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


# Llama 3.1's RoPE at a tiny size: head_dim 16 and theta 500 give wavelengths 6 to 1066 tokens, so an original
# context of 64 puts frequencies in all three of its regions (kept, smoothed, stretched by the factor).
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 500.0}


def test_llama3_rope_matches_transformers():
    model = tiny_hf_llama(rope=LLAMA3_ROPE)
    cfg, params = _from_torch(model)
    assert (cfg.rope_type, cfg.rope_scaling_factor, cfg.rope_original_max_position) == ("llama3", 8.0, 64)
    wavelen = 2 * np.pi / np.asarray(llama_lib.rope_inv_freq(cfg.replace(rope_type="default", rope_scaling_factor=1)))
    assert wavelen.min() < 64 / 4 and ((wavelen > 16) & (wavelen < 64)).any() and wavelen.max() > 64
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 37))
    ref = hf_logits(model, tokens)
    out = np.asarray(Llama(cfg).apply({"params": params}, jnp.asarray(tokens)))
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    plain = np.asarray(Llama(cfg.replace(rope_type="default", rope_scaling_factor=1.0)).apply(
        {"params": params}, jnp.asarray(tokens)))
    assert np.abs(plain - ref).max() > 0.1, "the scaling must matter at this size for the check to mean anything"
    assert LlamaConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


@pytest.mark.parametrize("tie", [False, True])
def test_grads_match_transformers(tie):
    """Gradients of every parameter equal torch autograd's through transformers' model (the custom VJPs: RMSNorm,
    SwiGLU, the blockwise kernel; the dense layers' token-flattened matmuls), with padding-free and ragged blocks."""
    import torch

    model = tiny_hf_llama(tie=tie, kv_heads=2)
    cfg, params = _from_torch(model)
    tokens = np.random.RandomState(2).randint(0, cfg.vocab_size, (2, 37))
    probe = np.random.RandomState(3).standard_normal((2, 37, cfg.vocab_size)).astype(np.float32)
    model.train()  # dropout is 0; autograd on
    model.zero_grad()
    (model(torch.as_tensor(tokens)).logits * torch.as_tensor(probe)).sum().backward()
    ref = {k: p.grad.numpy() for k, p in model.named_parameters()}
    for impl, block in (("reference", 256), ("blockwise", 16)):
        m = Llama(cfg.replace(attention=impl, attn_block=block))
        g = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, jnp.asarray(tokens)) * probe))(params)
        got = hf.llama_params_to_hf(cfg, g)
        assert set(got) == set(ref)
        for k, want in ref.items():
            scale = np.abs(want).max()
            assert scale > 1e-3, f"{k}: reference gradient too small for a meaningful check"
            np.testing.assert_allclose(got[k], want, atol=2e-4 * scale, rtol=0, err_msg=f"{impl} {k}")


def test_config_round_trips_through_hf_dict():
    from transformers import LlamaConfig as HFConfig

    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=80, num_layers=3, num_heads=8,
                      num_kv_heads=2, rope_theta=1e6, rope_scaling_factor=8.0, tie_word_embeddings=True)
    assert LlamaConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    # and through transformers' own parser (legacy keys -> rope_parameters)
    via_hf = LlamaConfig.from_hf_dict(HFConfig(**cfg.to_hf_dict()).to_dict())
    assert via_hf == cfg
    llama31 = cfg.replace(rope_type="llama3", rope_theta=5e5, rope_original_max_position=8192,
                          eos_token_id=(97, 98, 99))  # Llama 3.1 Instruct's config lists three EOS ids
    assert llama31.to_hf_dict()["eos_token_id"] == [97, 98, 99] and llama31.eos_ids == (97, 98, 99)
    assert LlamaConfig.from_hf_dict(HFConfig(**llama31.to_hf_dict()).to_dict()) == llama31
    assert LlamaConfig.from_hf_dict(dict(cfg.to_hf_dict(), eos_token_id=[7])).eos_token_id == 7
    assert cfg.replace(eos_token_id=None).eos_ids == () and cfg.eos_ids == (2,)


def test_unsupported_hf_configs_are_rejected():
    base = LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2,
                       num_kv_heads=2).to_hf_dict()
    with pytest.raises(ValueError, match="RoPE scaling type 'yarn'"):
        LlamaConfig.from_hf_dict(dict(base, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(ValueError, match="llama3 RoPE needs low_freq_factor < high_freq_factor"):
        LlamaConfig.from_hf_dict(dict(base, rope_scaling=dict(LLAMA3_ROPE, low_freq_factor=4.0)))
    with pytest.warns(UserWarning, match="sliding_window=4096 is not implemented"):  # Mistral-7B-v0.1's
        LlamaConfig.from_hf_dict(dict(base, model_type="mistral", sliding_window=4096, max_position_embeddings=32768))
    with pytest.raises(ValueError, match="not a Llama config"):
        LlamaConfig.from_hf_dict(dict(base, model_type="bert"))
    with pytest.raises(ValueError, match="remat_policy"):
        LlamaConfig(remat_policy="sometimes")
    for kw, what in [(dict(dtype="bf16"), "dtype 'bf16'"), (dict(attention="flashy"), "attention 'flashy'"),
                     (dict(s2_group_size=-1), "s2_group_size >= 0")]:
        with pytest.raises(InputError, match=what):  # InputError: one line at a launcher (llm_overrides)
            LlamaConfig(**kw)


def test_remat_and_unroll_do_not_change_values_or_grads():
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
                      num_kv_heads=2)
    params = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 50)

    def loss(p, c):
        return jnp.mean(Llama(c).apply({"params": p}, tokens) ** 2)

    ref_val, ref_grad = jax.value_and_grad(loss)(params, cfg)
    for kw in ({"remat_policy": "full"}, {"remat_policy": "dots"}, {"scan_unroll": 3}):
        val, grad = jax.value_and_grad(loss)(params, cfg.replace(**kw))
        np.testing.assert_allclose(val, ref_val, rtol=1e-6)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grad, ref_grad)


def test_no_remat_stores_gate_and_up_only():
    """Without remat the backward pass recomputes h = silu(gate) * up: of the MLP's [tokens, ffn] arrays only gate
    and up are stored (autodiff stored h too: the down projection's input), with and without LoRA adapters on the
    projections; gradients equal full remat's."""
    from jmlr_jax.train.state import LoraConfig, init_lora, llm_params_of

    F = 56  # a size no other dimension has
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=F, num_layers=2, num_heads=4, num_kv_heads=2)
    base = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    lora = LoraConfig(rank=2, alpha=4.0)
    adapted = {"llm": base, "lora": init_lora(base, lora, jax.random.PRNGKey(2))}
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 0, 50)

    def loss(p, c):
        return jnp.mean(Llama(c).apply({"params": llm_params_of(p, lora)}, tokens) ** 2)

    for params in ({"llm": base}, adapted):
        saved = saved_residuals(lambda p: loss(p, cfg), params)
        ffn = [line for line in saved if line.startswith(f"f32[2,24,{F}]")]  # [layers, tokens, F]
        assert len(ffn) == 2, ffn
        ref = jax.grad(loss)(params, cfg.replace(remat_policy="full"))
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                               jax.grad(loss)(params, cfg), ref)


def test_bf16_activations_close_to_fp32():
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2)
    params = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 16), 0, 50)
    ref = Llama(cfg).apply({"params": params}, tokens)
    out = Llama(cfg.replace(dtype="bfloat16")).apply({"params": params}, tokens)
    assert out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref))) + 1e-3


def test_every_param_has_logical_axes():
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, tie_word_embeddings=False)
    axes = llama_lib.logical_axes(cfg)
    shapes = llama_lib.param_shapes(cfg)
    flat_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves(shapes)
    assert len(flat_axes) == len(flat_shapes)
    for spec, shape in zip(flat_axes, flat_shapes):
        assert len(spec) == len(shape.shape) and all(name is not None for name in spec), (spec, shape)
    assert tuple(axes["layers"]["attn"]["q"]["kernel"]) == ("layers", "embed", "heads", "head_dim")


def test_remat_policies_keep_attention_residuals():
    """'dots_attn' / 'attn' keep the attention kernel's residuals: the backward pass has no second forward
    loop (one more while loop under 'dots_no_batch', which reruns attention); gradients are unchanged."""
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                      num_kv_heads=2, attention="blockwise", attn_block=32)
    params = llama_lib.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 128), 0, 64)
    grad = lambda policy: jax.grad(  # noqa: E731
        lambda p: Llama(cfg.replace(remat_policy=policy)).apply({"params": p}, tokens).sum())
    loops = {pol: str(jax.make_jaxpr(grad(pol))(params)).count("while[")
             for pol in ("none", "dots_no_batch", "dots_attn", "attn")}
    assert loops["dots_attn"] == loops["attn"] == loops["none"] < loops["dots_no_batch"], loops
    ref = jax.jit(grad("none"))(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                           jax.jit(grad("dots_attn"))(params), ref)

"""LoRA in training runs unmerged (x @ W + x @ A @ B): the same function and adapter gradients as the merged
weights, without the frozen kernels' gradients."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlr_jax.models import Llama, LlamaConfig
from jmlr_jax.models.llama import init_params
from jmlr_jax.train.state import LoraConfig, OptimConfig, init_lora, llm_params_of, make_optimizer, merged_llm_params
from tests.helpers import jaxpr_eqns

CFG = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  dtype="float32", attention="reference")
LORA = LoraConfig(rank=3, alpha=6.0)


def _params():
    llm = init_params(CFG, jax.random.PRNGKey(0))
    lora = init_lora(llm, LORA, jax.random.PRNGKey(1))
    # B starts at 0 (the adapted model equals the base); make every adapter do something
    lora = {k: {"a": v["a"], "b": jax.random.normal(jax.random.PRNGKey(i), v["b"].shape) * 0.1}
            for i, (k, v) in enumerate(sorted(lora.items()))}
    return {"llm": llm, "lora": lora}


def _loss(view):
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 7), 0, CFG.vocab_size)

    def f(params):
        logits = Llama(CFG).apply({"params": view(params, LORA)}, tokens, train=True)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 5])

    return f


def test_unmerged_lora_matches_the_merged_weights():
    params = _params()
    assert any(k.startswith("lm_head") for k in params["lora"])  # the merged-in-view path is covered too
    unmerged, merged = _loss(llm_params_of), _loss(merged_llm_params)
    np.testing.assert_allclose(unmerged(params), merged(params), rtol=1e-5)
    g_u = jax.grad(unmerged)(params)["lora"]
    g_m = jax.grad(merged)(params)["lora"]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), g_u, g_m)


def _kernel_shapes(llm: dict) -> set[tuple[int, ...]]:
    """Per-layer kernel shapes, as stored ([D, H, Dh]) and as matrices ([D, H * Dh])."""
    out = set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(llm):
        if "layers" in jax.tree_util.keystr(path) and leaf.ndim >= 3:
            s = leaf.shape[1:]
            out |= {s} | {(math.prod(s[:i]), math.prod(s[i:])) for i in range(1, len(s))}
    return out


def _dot_shapes(jaxpr) -> list[tuple[int, ...]]:
    """Result shapes of every dot_general, inner jaxprs (scan, remat, custom_vjp) included."""
    return [tuple(e.outvars[0].aval.shape) for e in jaxpr_eqns(jaxpr) if e.primitive.name == "dot_general"]


def test_unmerged_lora_forms_no_kernel_sized_product():
    """The merged form makes A @ B and dL/dW_eff, both [in, out] per layer; the unmerged one makes neither."""
    params = _params()
    kernels = _kernel_shapes(params["llm"])

    def products(view):
        jaxpr = jax.make_jaxpr(jax.grad(_loss(view)))(params).jaxpr
        return [s for s in _dot_shapes(jaxpr) if s in kernels or s[1:] in kernels]

    assert products(merged_llm_params)  # the check can fail: the merged form makes them
    assert products(llm_params_of) == []
    g = jax.grad(_loss(llm_params_of))(params)["llm"]  # the frozen base: zero, not computed and discarded
    assert all(not np.any(x) for x in jax.tree_util.tree_leaves(g))


def test_gradient_clipping_ignores_frozen_leaves():
    """The clip norm is over trained leaves: a frozen leaf's (discarded) gradient must not shrink the updates."""
    params = {"llm": {"w": jnp.ones((2, 2))}, "lora": {"layers/attn/q": {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2))}},
              "retriever": {"w": jnp.ones((2, 2))}}
    tx = make_optimizer(params, OptimConfig(llm_lr=1.0, retriever_lr=1.0, grad_clip=1.0))
    grads = jax.tree_util.tree_map(lambda x: 1e-3 * x, params)
    huge = dict(grads, llm={"w": 1e6 * jnp.ones((2, 2))})  # the LoRA-frozen base
    u_small, _ = tx.update(grads, tx.init(params), params)
    u_huge, _ = tx.update(huge, tx.init(params), params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, u_small, u_huge)
    assert not np.any(u_huge["llm"]["w"])


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_lora_adapters_are_split_over_fsdp():
    """Under FSDP every adapter is split over the devices (its rank axis where its other axis is not), not
    replicated, and a sharded step computes what one device does."""
    from jax.sharding import PartitionSpec as P

    from jmlr_jax import parallel
    from jmlr_jax.train.weights import param_shardings

    lora_cfg = LoraConfig(rank=4, alpha=8.0)
    llm = init_params(CFG, jax.random.PRNGKey(0))
    params = {"llm": llm, "lora": init_lora(llm, lora_cfg, jax.random.PRNGKey(1))}
    mesh = parallel.make_mesh((2, 2, 2))
    sh = param_shardings(params, CFG, None, mesh)["lora"]
    assert sh["layers/attn/q"]["a"].spec == P(None, "fsdp", None)  # [layers, embed, rank]
    assert sh["layers/attn/q"]["b"].spec == P(None, "fsdp", "tensor")  # [layers, rank, heads x head_dim]
    assert sh["layers/mlp/down"]["a"].spec == P(None, "tensor", "fsdp")  # [layers, mlp, rank]
    assert sh["layers/mlp/down"]["b"].spec == P(None, None, "fsdp")  # [layers, rank, embed]
    assert sh["lm_head"]["b"].spec == P("fsdp", "tensor")
    assert all("fsdp" in s.spec for s in jax.tree_util.tree_leaves(sh))
    f = jax.jit(jax.value_and_grad(_loss(lambda p, _: llm_params_of(p, lora_cfg))))
    value, grads = f(params)
    with jax.set_mesh(mesh):
        value_sh, grads_sh = f(jax.device_put(params, param_shardings(params, CFG, None, mesh)))
    np.testing.assert_allclose(value_sh, value, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), grads_sh, grads)

"""Seed-pipeline steps: DPO against the paper's formula, the reference never trained, response-only loss masks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlr_jax.models import LlamaConfig
from jmlr_jax.models import llama as llama_lib
from jmlr_jax.train import lm_step
from jmlr_jax.train.losses import dpo_loss
from jmlr_jax.train.state import OptimConfig, init_train_state, make_optimizer

LLM = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
M = lm_step.LMStepConfigs(LLM, dpo_beta=0.1)


@pytest.fixture(scope="module")
def params():
    return {"llm": jax.tree_util.tree_map(lambda x: x * 10 if x.ndim >= 2 else x,
                                          llama_lib.init_params(LLM, jax.random.PRNGKey(0)))}


def seq(rng, B=2, L=10, prompt=4):
    """Rows: prompt then response, the second row right-padded by 2; weights on the response only."""
    tokens = rng.randint(2, 64, (B, L)).astype(np.int32)
    seg = np.ones((B, L), np.int32)
    seg[1, -2:] = 0
    weights = seg.copy()
    weights[:, :prompt] = 0
    return {"tokens": tokens, "segment_ids": seg, "positions": np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32),
            "weights": weights}


def reference_logprob(params, s):
    """Sum of response-token log-probs from full logits (the straightforward way)."""
    return np.asarray(_reference_logprob(params, s))


@jax.jit
def _reference_logprob(params, s):
    logits = llama_lib.Llama(LLM).apply({"params": params["llm"]}, jnp.asarray(s["tokens"]),
                                        positions_BxL=jnp.asarray(s["positions"]), segment_ids_BxL=jnp.asarray(s["segment_ids"]))
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, jnp.asarray(s["tokens"])[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(picked * s["weights"][:, 1:], axis=1)


def test_dpo_loss_matches_the_paper_formula():
    rng = np.random.RandomState(0)
    pc, pr, rc, rr = (rng.randn(8) * 5 for _ in range(4))
    beta = 0.1
    z = beta * ((pc - rc) - (pr - rr))
    expected = np.log1p(np.exp(-z))  # -log sigmoid(z)
    loss, m = dpo_loss(*map(jnp.asarray, (pc, pr, rc, rr)), beta)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(m["reward_margin"], z, rtol=1e-5)
    np.testing.assert_array_equal(m["reward_accuracy"], (z > 0).astype(np.float32))


def test_response_only_loss_and_sequence_logprob(params):
    rng = np.random.RandomState(1)
    s = seq(rng)
    got = jax.jit(lambda p: lm_step.sequence_logprob(LLM, p, s, ""))(params["llm"])
    np.testing.assert_allclose(got, reference_logprob(params, s), rtol=1e-5)
    loss, metrics = jax.jit(lambda p: lm_step.lm_loss(p, s, M))(params)
    assert float(metrics["target_tokens"]) == s["weights"][:, 1:].sum()
    np.testing.assert_allclose(loss, -reference_logprob(params, s).sum() / s["weights"][:, 1:].sum(), rtol=1e-5)
    # the loss reads targets only where weights are 1: the prompt's tokens never are
    t = dict(s, weights=np.zeros_like(s["weights"]))
    assert float(lm_step.lm_loss(params, t, M)[0]) == 0.0


def test_dpo_step_trains_the_policy_only(params):
    rng = np.random.RandomState(2)
    c, r = seq(rng), seq(rng)
    batch = {**{f"chosen_{k}": v for k, v in c.items()}, **{f"rejected_{k}": v for k, v in r.items()}}
    ref = jax.tree_util.tree_map(lambda x: x + 0.01, params["llm"])  # a reference that differs from the policy
    g_pol, g_ref = jax.jit(jax.grad(lambda p, q: lm_step.dpo_step_loss(p, batch, q, M)[0], argnums=(0, 1)))(params, ref)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree_util.tree_leaves(g_ref))
    assert any(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree_util.tree_leaves(g_pol))
    # the loss is the formula applied to the two models' summed response log-probs
    pc, pr = reference_logprob(params, c), reference_logprob(params, r)
    rc, rr = reference_logprob({"llm": ref}, c), reference_logprob({"llm": ref}, r)
    z = 0.1 * ((pc - rc) - (pr - rr))
    loss, metrics = jax.jit(lambda p, q: lm_step.dpo_step_loss(p, batch, q, M))(params, ref)
    np.testing.assert_allclose(loss, np.mean(np.log1p(np.exp(-z))), rtol=1e-4)
    # a jitted step: policy moves, the reference passed in is untouched
    tx = make_optimizer(params, OptimConfig(llm_lr=1e-3, retriever_lr=0.0))
    state = init_train_state(params, tx)
    before = jax.tree_util.tree_map(np.asarray, ref)
    new, m = jax.jit(lambda s, b, q: lm_step.lm_train_step(s, b, q, models=M, tx=tx, kind="dpo"))(state, batch, ref)
    assert np.isfinite(float(m["loss"])) and 0.0 <= float(m["reward_accuracy"]) <= 1.0
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params["llm"]),
                                                         jax.tree_util.tree_leaves(new["params"]["llm"])))
    with pytest.raises(ValueError, match="reference"):
        lm_step.lm_train_step(state, batch, None, models=M, tx=tx, kind="dpo")


@pytest.mark.parametrize("kind", ["lm", "dpo"])
def test_grad_accumulation_equals_the_whole_batch(params, kind):
    """Two micro-batches of one row each give the update of one batch of both rows: the LM loss token-weighted
    over the whole batch (the rows have different target counts, so a mean of micro-batch means would differ),
    DPO's the mean over rows."""
    rng = np.random.RandomState(3)
    c = seq(rng)
    c["weights"][0, :7] = 0  # row 0: 3 targets, row 1: 4 (its response, right-padded by 2)
    assert c["weights"][0, 1:].sum() != c["weights"][1, 1:].sum()
    batch = c if kind == "lm" else {**{f"chosen_{k}": v for k, v in c.items()},
                                    **{f"rejected_{k}": v for k, v in seq(rng).items()}}
    ref = jax.tree_util.tree_map(lambda x: x + 0.01, params["llm"]) if kind == "dpo" else None
    tx = make_optimizer(params, OptimConfig(llm_lr=1e-2, retriever_lr=0.0, grad_clip=0.0, eps=1.0))
    state = init_train_state(params, tx)
    outs = []
    for A, b in ((1, batch), (2, jax.tree_util.tree_map(lambda x: x.reshape(2, 1, *x.shape[1:]), batch))):
        m = lm_step.LMStepConfigs(LLM, dpo_beta=0.1, grad_accum=A)
        outs.append(jax.jit(lambda s, b, q, m=m: lm_step.lm_train_step(s, b, q, models=m, tx=tx, kind=kind))(
            state, b, ref))
    (s1, m1), (s2, m2) = outs
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, err_msg=k)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s1["params"],
                           s2["params"])
    moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), s1["params"], params)
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-4
    if kind == "lm":  # the mean of the two rows' own means is not the batch's loss
        per_row = [float(lm_step.lm_loss(params, jax.tree_util.tree_map(lambda x: x[i:i + 1], c), M)[0])
                   for i in range(2)]
        assert abs(np.mean(per_row) - float(m1["loss"])) > 1e-3


@pytest.mark.parametrize("kind,lora", [("lm", False), ("lm", True), ("dpo", False)])
def test_model_flops_match_the_steps_matmuls(kind, lora):
    """The pipelines' logged MFU: 6N per token (4N under LoRA, whose frozen base gets no weight gradients; the
    stages had counted 6N), + 2N for DPO's reference, N the matmul parameters (the head at every position here);
    against the dot_generals in the step's jaxpr (attention, not counted, is a few % at this width)."""
    from jmlr_jax.train.metrics import lm_step_flops, matmul_params
    from jmlr_jax.train.state import LoraConfig, init_lora
    from tests.helpers import dot_flops

    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                      num_kv_heads=2)
    params = {"llm": llama_lib.init_params(cfg, jax.random.PRNGKey(0))}
    rng = np.random.RandomState(3)
    B, L = 2, 8
    full = {"tokens": rng.randint(2, 64, (B, L)).astype(np.int32), "segment_ids": np.ones((B, L), np.int32),
            "positions": np.tile(np.arange(L, dtype=np.int32), (B, 1)), "weights": np.ones((B, L), np.int32)}
    batch = {f"{s}_{k}": v for s in ("chosen", "rejected") for k, v in full.items()} if kind == "dpo" else full
    lcfg = LoraConfig(rank=2, alpha=4.0) if lora else LoraConfig()
    p = dict(params, lora=init_lora(params["llm"], lcfg, jax.random.PRNGKey(1))) if lora else params
    models = lm_step.LMStepConfigs(cfg, lcfg, dpo_beta=0.1)
    tx = make_optimizer(p, OptimConfig(llm_lr=1e-3, retriever_lr=0.0))
    step = lambda s, b, q: lm_step.lm_train_step(s, b, q, models=models, tx=tx, kind=kind)  # noqa: E731
    dots = dot_flops(jax.make_jaxpr(step)(init_train_state(p, tx), batch, params["llm"] if kind == "dpo" else None))
    tokens = B * L * (2 if kind == "dpo" else 1)
    flops = lm_step_flops(matmul_params(dict(p, retriever={})), tokens, "lora" if lora else "full", kind == "dpo")
    # 0.96 full and DPO, 0.89 LoRA (the adapters' own FLOPs are not counted); the stages' 6N under LoRA: 1.34
    assert 0.85 < flops / dots <= 1.0, (flops, dots)

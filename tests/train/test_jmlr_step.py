"""The fused JMLR step on tiny random models: losses vs numpy, gradient routing, doc order, batching."""
import dataclasses
import functools

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from jmlr_jax.data import templates
from jmlr_jax.data.templates import assemble
from jmlr_jax.models import BertConfig, ColBERTConfig, LlamaConfig
from jmlr_jax.models import colbert as colbert_lib, llama as llama_lib
from jmlr_jax.train import jmlr_step as js, losses
from jmlr_jax.train.state import LoraConfig, OptimConfig, init_lora, init_train_state, make_optimizer
from tests.helpers import jaxpr_eqns

# jitted once per static config: eager op-by-op dispatch of the decoder is what made these tests slow
jloss = jax.jit(js.jmlr_loss, static_argnames=("m",))
jnll = jax.jit(losses.answer_nll, static_argnums=(0,), static_argnames=("train", "compact"))

LLM = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
RET = ColBERTConfig(bert=BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                                    max_position_embeddings=32), dim=16, query_maxlen=8, doc_maxlen=12)


def make_batch(B=2, C=6, seed=0, Ld=5, Lq=6, La=3):
    rng = np.random.RandomState(seed)
    ids = lambda *s: rng.randint(5, 64, s).astype(np.int32)  # noqa: E731
    ones = lambda *s: np.ones(s, np.int32)  # noqa: E731
    docs_valid = ones(B, C, Ld)
    docs_valid[:, :, -1] = rng.randint(0, 2, (B, C))  # some docs shorter (interior padding)
    q_valid = ones(B, Lq)
    q_valid[:, :2] = 0  # right-aligned question block
    a_valid = ones(B, La)
    a_valid[0, -1] = 0
    keep = ones(B, C, 12)
    keep[:, :, 9:] = 0
    return {"example_id": np.arange(B, dtype=np.int32) + 100 * seed,
            "r_q_ids": ids(B, 8), "r_q_mask": ones(B, 8), "r_d_ids": ids(B, C, 12), "r_d_mask": keep.copy(),
            "r_d_keep": keep, "docs": ids(B, C, Ld), "docs_valid": docs_valid, "question": ids(B, Lq),
            "question_valid": q_valid, "answer": ids(B, La), "answer_valid": a_valid,
            "bos": np.full((B, 1), 1, np.int32), "bos_valid": ones(B, 1)}


@pytest.fixture(scope="module")
def params():
    llm = jax.tree_util.tree_map(lambda x: x * 10 if x.ndim >= 2 else x, llama_lib.init_params(LLM, jax.random.PRNGKey(0)))
    ret = colbert_lib.init_params(RET, jax.random.PRNGKey(1))
    return {"llm": llm, "retriever": ret}


def models(**kw):
    return js.StepConfigs(LLM, RET, js.JMLRConfig(num_candidates=6, num_sampled=4, num_docs=3, **kw))


def test_normalize_scores_guarded():
    s = jnp.asarray([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(losses.normalize_scores(s), [[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    g = jax.grad(lambda x: losses.normalize_scores(x).sum())(s)
    assert np.all(np.isfinite(g))


def test_ranknet_and_kl_match_numpy():
    rng = np.random.RandomState(0)
    s, l = rng.randn(3, 5).astype(np.float32), rng.rand(3, 5).astype(np.float32)
    l[0, 1] = l[0, 2]  # a tie
    l[1, 3] = l[1, 0] + 4e-6  # equal up to rounding: a tie too
    ref = np.zeros(3)
    for b in range(3):
        terms = []
        for i in range(5):
            for j in range(5):
                if i != j:
                    p = 1 / (1 + np.exp(-(s[b, i] - s[b, j])))
                    t = 0.5 if abs(l[b, j] - l[b, i]) <= 1e-5 else float(l[b, j] > l[b, i])
                    terms.append(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
        ref[b] = np.mean(terms)
    np.testing.assert_allclose(losses.ranknet_loss(s, l), ref, rtol=1e-5)
    tau, beta = 0.5, 0.3
    q = np.exp(-l / beta) / np.exp(-l / beta).sum(1, keepdims=True)
    logp = s / tau - np.log(np.exp(s / tau).sum(1, keepdims=True))
    np.testing.assert_allclose(losses.kl_rank_loss(s, l, tau, beta), (q * (np.log(q) - logp)).sum(1), rtol=1e-5)


def test_loss_gradients_reach_what_they_should(params):
    batch = make_batch()
    m = models()
    rng = jax.random.PRNGKey(3)

    def part(name):
        return jax.jit(jax.grad(lambda p: js.jmlr_loss(p, batch, rng, m)[1][name]))(params)

    norm = lambda t: float(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(t)))  # noqa: E731
    g_lm, g_rank = part("lm_loss"), part("rank_loss")
    assert norm(g_lm["llm"]) > 0 and norm(g_lm["retriever"]) == 0  # generator loss: LLM only
    assert norm(g_rank["retriever"]) > 0 and norm(g_rank["llm"]) == 0  # rank loss: retriever only
    # every retriever weight learns (the reference's PEFT bug froze most of the encoder)
    leaves = jax.tree_util.tree_leaves_with_path(g_rank["retriever"])
    dead = [jax.tree_util.keystr(p) for p, g in leaves if float(jnp.max(jnp.abs(g))) == 0 and "type_embed" not in
            jax.tree_util.keystr(p) and "pos_embed" not in jax.tree_util.keystr(p) and "word_embed" not in
            jax.tree_util.keystr(p)]
    assert not dead, dead


def test_generator_sees_top_docs_best_last(params):
    batch = make_batch()
    m = models(rank_weight=0.0)
    _, metrics = jloss(params, batch, jax.random.PRNGKey(0), m)
    s = np.asarray(js.retriever_scores(RET, params["retriever"], batch))
    expected = []
    for b in range(2):
        order = np.argsort(s[b])[-3:]  # ascending: best doc last
        blocks = [(batch["bos"][b:b + 1], batch["bos_valid"][b:b + 1])]
        blocks += [(batch["docs"][b:b + 1, c], batch["docs_valid"][b:b + 1, c]) for c in order]
        blocks += [(batch["question"][b:b + 1], batch["question_valid"][b:b + 1])]
        expected.append(jnll(LLM, params["llm"], blocks, batch["answer"][b:b + 1],
                                      batch["answer_valid"][b:b + 1], train=True)[0])
        # the same text as one compact sequence gives the same loss (padding is invisible)
        toks, valid, _ = assemble([x[0] for x in blocks] + [batch["answer"][b:b + 1]],
                                  [x[1] for x in blocks] + [batch["answer_valid"][b:b + 1]])
        compact = np.asarray(toks)[np.asarray(valid) > 0][None]
        logits = llama_lib.Llama(LLM).apply({"params": params["llm"]}, compact)
        n_ans = int(batch["answer_valid"][b].sum())
        logp = jax.nn.log_softmax(logits[0, -n_ans - 1:-1])
        ref = -np.mean(np.take_along_axis(np.asarray(logp), compact[0, -n_ans:, None], 1))
        np.testing.assert_allclose(expected[-1], ref, rtol=1e-5)
    np.testing.assert_allclose(metrics["lm_loss"], np.mean(expected), rtol=1e-5)


def test_batch_of_two_is_mean_of_two_single_gradients(params):
    batch = make_batch(B=2)
    m = models()
    rng = jax.random.PRNGKey(5)
    grad = jax.jit(jax.grad(lambda p, b: js.jmlr_loss(p, b, rng, m)[0]))
    g2 = grad(params, batch)
    singles = [grad(params, jax.tree_util.tree_map(lambda x: x[i:i + 1], batch)) for i in range(2)]
    mean = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *singles)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5), g2, mean)


def test_train_step_with_grad_accumulation_and_lora(params):
    # eps=1: Adam's first step is ~lr * g (not lr * sign(g), which would amplify float noise in tiny grads)
    ocfg = OptimConfig(llm_lr=1e-2, retriever_lr=1e-2, grad_clip=0.0, eps=1.0)
    batch = make_batch(B=2)
    m1 = models()
    tx = make_optimizer(params, ocfg)
    state = init_train_state(params, tx)
    step1 = jax.jit(functools.partial(js.train_step, models=m1, tx=tx))
    s1, met1 = step1(state, batch)
    m2 = js.StepConfigs(LLM, RET, js.JMLRConfig(num_candidates=6, num_sampled=4, num_docs=3, grad_accum=2))
    step2 = jax.jit(functools.partial(js.train_step, models=m2, tx=tx))
    s2, met2 = step2(state, jax.tree_util.tree_map(lambda x: x.reshape(2, 1, *x.shape[1:]), batch))
    np.testing.assert_allclose(met1["loss"], met2["loss"], rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s1["params"],
                           s2["params"])
    moved = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), s1["params"], params)
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-4
    assert int(s1["step"]) == 1
    # LoRA: only adapters (and the retriever) move; the adapted model starts equal to the base model
    lcfg = LoraConfig(rank=2, alpha=4.0)
    lp = dict(params, lora=init_lora(params["llm"], lcfg, jax.random.PRNGKey(9)))
    mlora = js.StepConfigs(LLM, RET, js.JMLRConfig(num_candidates=6, num_sampled=4, num_docs=3), lcfg)
    txl = make_optimizer(lp, ocfg)
    s3, met3 = jax.jit(functools.partial(js.train_step, models=mlora, tx=txl))(init_train_state(lp, txl), batch)
    np.testing.assert_allclose(met3["loss"], met1["loss"], rtol=1e-6)  # the step's loss is at the initial params
    jax.tree_util.tree_map(np.testing.assert_array_equal, s3["params"]["llm"], lp["llm"])
    assert not np.allclose(s3["params"]["lora"]["layers/attn/q"]["b"], 0)


def _dot_count(jaxpr) -> int:
    return sum(e.primitive.name == "dot_general" for e in jaxpr_eqns(jaxpr))


def test_regex_frozen_leaves_form_no_gradients(params):
    """Leaves the optimizer freezes (here the whole generator, by regex) enter the step through stop_gradient:
    fewer products than when they train, the generator unchanged, and a grad_norm over the trained leaves only."""
    batch = make_batch(B=2)
    frozen = OptimConfig(llm_trainable="", grad_clip=0.0)
    tx = make_optimizer(params, frozen)
    state = init_train_state(params, tx)
    step = lambda optim: functools.partial(js.train_step, tx=tx, models=dataclasses.replace(  # noqa: E731
        models(), optim=optim))
    dots = lambda f: _dot_count(jax.make_jaxpr(f)(state, batch).jaxpr)  # noqa: E731
    assert dots(step(frozen)) < dots(step(OptimConfig(grad_clip=0.0)))  # the check can fail: same optimizer
    new, met = jax.jit(step(frozen))(state, batch)
    g = jax.jit(jax.grad(lambda p: js.jmlr_loss(p, batch, jax.random.fold_in(state["rng"], 0), models())[0]))(params)
    np.testing.assert_allclose(met["grad_norm"], optax.global_norm(g["retriever"]), rtol=1e-4)
    assert optax.global_norm(g["llm"]) > 0.01 * met["grad_norm"]  # the check can fail: the generator's is not 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, new["params"]["llm"], params["llm"])


def test_candidate_count_mismatch_is_an_error(params):
    with pytest.raises(ValueError, match="num_candidates=5"):
        js.jmlr_loss(params, make_batch(C=6), jax.random.PRNGKey(0),
                     js.StepConfigs(LLM, RET, js.JMLRConfig(num_candidates=5, num_sampled=4, num_docs=3)))
    with pytest.raises(ValueError, match="num_sampled"):
        js.JMLRConfig(num_candidates=5, num_sampled=6)


def test_baseline_modes_rag_and_plain_finetuning(params):
    batch = make_batch()
    rng = jax.random.PRNGKey(0)
    # Classic RAG (rank_weight=0): same generator loss as JMLR, no retriever gradient, no rank metrics.
    rag = models(rank_weight=0.0)
    loss_rag, met_rag = jloss(params, batch, rng, rag)
    _, met_jmlr = jloss(params, batch, rng, models())
    np.testing.assert_allclose(met_rag["lm_loss"], met_jmlr["lm_loss"], rtol=1e-6)
    assert float(met_rag["rank_loss"]) == 0.0 and "agreement" not in met_rag
    g = jax.jit(jax.grad(lambda p: js.jmlr_loss(p, batch, rng, rag)[0]))(params)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree_util.tree_leaves(g["retriever"]))
    # Plain fine-tuning (num_docs=0): the generator reads bos + question only.
    plain = js.StepConfigs(LLM, RET, js.JMLRConfig(num_candidates=6, num_sampled=4, num_docs=0, rank_weight=0.0))
    loss_plain, _ = jloss(params, batch, rng, plain)
    ref = jnll(LLM, params["llm"], [(batch["bos"], batch["bos_valid"]),
                                             (batch["question"], batch["question_valid"])],
                        batch["answer"], batch["answer_valid"], train=True)
    np.testing.assert_allclose(loss_plain, np.mean(ref), rtol=1e-6)
    assert not np.isclose(float(loss_plain), float(loss_rag))
    with pytest.raises(ValueError, match="rank_weight=0"):
        js.JMLRConfig(num_candidates=6, num_sampled=4, num_docs=0)


@pytest.mark.parametrize("s2", [0, 6])
def test_compaction_gives_the_same_losses_and_grads(params, s2):
    """The generator on compacted sequences (right padding only) = on the block layout with interior padding,
    in losses and gradients of both models; with dense attention, and with S2-Attn where each group then
    holds the same real tokens as the oracle's index groups."""
    batch = make_batch(B=2)
    rng = jax.random.PRNGKey(7)
    llm = LLM.replace(s2_group_size=s2)
    run = lambda compact, impl: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda p: js.jmlr_loss(p, batch, rng, js.StepConfigs(llm.replace(attention=impl), RET, js.JMLRConfig(
            num_candidates=6, num_sampled=4, num_docs=3, compact=compact)))[0]))(params)
    if s2:  # groups are over sequence indices: only the compact layout matches the oracle's groups
        (l_ref, g_ref), (l_c, g_c) = run(True, "reference"), run(True, "blockwise")
    else:
        (l_ref, g_ref), (l_c, g_c) = run(False, "reference"), run(True, "blockwise")
        l_u, g_u = run(False, "blockwise")  # segment-aware kernel on the block layout
        np.testing.assert_allclose(l_u, l_ref, rtol=1e-5)
        jax.tree_util.tree_map(_close, g_u, g_ref)
    np.testing.assert_allclose(l_c, l_ref, rtol=1e-5)
    jax.tree_util.tree_map(_close, g_c, g_ref)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_narrow_batch_splits_the_generator_sequence_over_the_mesh(params):
    """Fewer rows than devices (2 on 8 FSDP devices) and an odd sequence length (25 tokens): the generator's
    sequence is padded at the end to a multiple of 8 so that it splits along its length (the lowered residual
    stream's constraint) instead of every device computing both rows whole; the same loss and gradients
    as on one device. The scoring pass's 8 rows split as rows."""
    from jax.sharding import Mesh

    batch, rng = make_batch(B=2), jax.random.PRNGKey(7)
    loss = lambda p: js.jmlr_loss(p, batch, rng, models())[0]  # noqa: E731
    l_one, g_one = jax.jit(jax.value_and_grad(loss))(params)
    with jax.set_mesh(Mesh(np.asarray(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))):
        step = jax.jit(jax.value_and_grad(loss))
        text = step.lower(params).as_text()
        l_mesh, g_mesh = step(params)
    assert '[{}, {"fsdp"}, {}]> : tensor<2x32x32xf32>' in text  # the generator's [rows, 25 + 7, hidden]
    np.testing.assert_allclose(l_mesh, l_one, rtol=1e-5)
    jax.tree_util.tree_map(_close, g_mesh, g_one)


def _close(a, b):
    """Equal up to fp32 summation order: 1e-3 of the leaf's largest gradient."""
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * float(np.max(np.abs(b))) + 1e-9)


def test_compact_sequence_is_a_stable_gather():
    tokens = jnp.asarray([[5, 0, 6, 7, 0, 0, 8], [1, 2, 3, 4, 5, 6, 7]])
    valid = jnp.asarray([[1, 0, 1, 1, 0, 0, 1], [1] * 7])
    _, _, pos = assemble([tokens], [valid])
    t, v, p = templates.compact_sequence(tokens, valid, pos)
    np.testing.assert_array_equal(t[0, :4], [5, 6, 7, 8])
    np.testing.assert_array_equal(v[0], [1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(p[0, :4], [0, 1, 2, 3])
    np.testing.assert_array_equal(t[1], tokens[1])


def _frozen_doc_side(params, batch):
    """The batch with the candidates' token vectors (as an index stores them, fp16) instead of their ids."""
    model = colbert_lib.ColBERT(RET)
    B, C, L = batch["r_d_ids"].shape
    D = model.apply({"params": params["retriever"]}, batch["r_d_ids"].reshape(B * C, L),
                    batch["r_d_mask"].reshape(B * C, L), batch["r_d_keep"].reshape(B * C, L), method="encode_doc")
    out = {k: v for k, v in batch.items() if k not in ("r_d_ids", "r_d_mask")}
    out["r_d_emb"] = np.asarray(D, np.float16).astype(np.float32).reshape(B, C, L, -1)
    return out


def test_frozen_document_side_scores_like_live_encoding(params):
    batch = make_batch()
    frozen = _frozen_doc_side(params, batch)
    live = js.retriever_scores(RET, params["retriever"], batch)
    np.testing.assert_allclose(js.retriever_scores(RET, params["retriever"], frozen), live, atol=2e-2)
    # The document side no longer depends on the params: changing the query changes scores, the docs' ids do not.
    scrambled = dict(frozen, r_q_ids=np.roll(frozen["r_q_ids"], 1, axis=1))
    assert not np.allclose(js.retriever_scores(RET, params["retriever"], scrambled), live, atol=2e-2)


def test_cached_doc_losses_give_the_fused_steps_rank_loss(params):
    """With the LLM's own per-candidate losses as the cache, the retriever-only step has the same rank loss and
    retriever gradient as the fused step's scoring pass."""
    batch = make_batch()
    B, C = batch["docs"].shape[:2]
    blocks = lambda c: [(batch["bos"], batch["bos_valid"]), (batch["docs"][:, c], batch["docs_valid"][:, c]),  # noqa: E731
                        (batch["question"], batch["question_valid"])]
    doc_losses = np.stack([np.asarray(jnll(LLM, params["llm"], blocks(c), batch["answer"], batch["answer_valid"],
                                           train=True)) for c in range(C)], axis=1)
    rng = jax.random.PRNGKey(3)
    fused = models(rank_weight=1.0, compact=False)
    cached = models(rank_weight=1.0, compact=False, cached_doc_losses=True)
    _, m_fused = jloss(params, batch, rng, m=fused)
    _, m_cached = jloss(params, dict(batch, doc_losses=doc_losses), rng, m=cached)
    np.testing.assert_allclose(m_cached["rank_loss"], m_fused["rank_loss"], rtol=1e-5)
    np.testing.assert_allclose(m_cached["agreement"], m_fused["agreement"], rtol=1e-6)
    assert "lm_loss" not in m_cached
    with pytest.raises(ValueError, match="rank_weight"):
        js.JMLRConfig(rank_weight=0.0, cached_doc_losses=True)


def test_retriever_only_arm_leaves_the_generator_bitwise_unchanged(params):
    batch = dict(_frozen_doc_side(params, make_batch()), doc_losses=np.random.RandomState(0).rand(2, 6).astype(np.float32))
    cfg = OptimConfig(llm_lr=1e-2, retriever_lr=1e-2, llm_trainable="", retriever_trainable=".*")
    tx = make_optimizer(params, cfg)
    state = init_train_state(params, tx)
    step = jax.jit(functools.partial(js.train_step, models=models(rank_weight=1.0, cached_doc_losses=True), tx=tx))
    for _ in range(2):
        state, m = step(state, batch)
    for a, b in zip(jax.tree_util.tree_leaves(state["params"]["llm"]), jax.tree_util.tree_leaves(params["llm"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree_util.tree_leaves(state["params"]["retriever"]), jax.tree_util.tree_leaves(params["retriever"]))]
    assert any(moved) and np.isfinite(float(m["loss"]))


def _negatives_batch(params, B=3, C=6):
    batch = make_batch(B=B, C=C)
    batch["doc_losses"] = np.random.RandomState(1).rand(B, C).astype(np.float32) * 3
    batch["candidates"] = np.arange(B * C, dtype=np.int32).reshape(B, C)
    batch["candidates"][2, 1] = batch["candidates"][0, 4]  # a passage both of questions 0 and 2 retrieved
    return batch


def test_in_batch_negatives_kl_matches_numpy(params):
    """KL over the LLM-scored candidates with the other questions' candidates as target-0 negatives, against numpy
    on scores computed question by question (each question against one other question's candidates at a time)."""
    B, C, tau, beta = 3, 6, 0.7, 0.5
    batch = _negatives_batch(params, B, C)
    cfg = lambda neg: js.StepConfigs(LLM, RET, js.JMLRConfig(  # noqa: E731
        num_candidates=C, num_sampled=C, num_docs=1, rank_loss="kl", tau=tau, kl_beta=beta, cached_doc_losses=True,
        in_batch_negatives=neg))
    rng = jax.random.PRNGKey(0)
    _, m = jloss(params, batch, rng, m=cfg(True))
    docs = ("r_d_ids", "r_d_mask", "r_d_keep")
    S = np.stack([np.asarray(js.retriever_scores(RET, params["retriever"], dict(
        batch, **{k: np.repeat(batch[k][o:o + 1], B, axis=0) for k in docs}))) for o in range(B)], axis=1)  # [B, B', C]
    ref, negatives = [], 0
    for b in range(B):
        own = S[b, b]
        lo, span = own.min(), own.max() - own.min()
        logits = [2 * (own - lo) / span - 1]
        for o in range(B):
            if o != b:
                valid = ~np.isin(batch["candidates"][o], batch["candidates"][b])
                logits.append((2 * (S[b, o] - lo) / span - 1)[valid])
                negatives += valid.sum()
        z = np.concatenate(logits) / tau
        logp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
        q = np.exp(-batch["doc_losses"][b] / beta)
        q /= q.sum()
        ref.append(np.sum(q * (np.log(q) - logp[:C])))
    assert negatives == B * (B - 1) * C - 2  # the shared passage is a negative of neither question 0 nor 2
    np.testing.assert_allclose(m["negatives"], negatives / B, rtol=1e-6)
    np.testing.assert_allclose(m["rank_loss"], np.mean(ref), rtol=2e-5)
    # Without any valid negative (every question retrieved the same passages) the loss is the plain KL.
    same = dict(batch, candidates=np.repeat(batch["candidates"][:1], B, axis=0))
    _, m_same = jloss(params, same, rng, m=cfg(True))
    _, m_plain = jloss(params, batch, rng, m=cfg(False))
    assert float(m_same["negatives"]) == 0
    np.testing.assert_allclose(m_same["rank_loss"], m_plain["rank_loss"], rtol=1e-6)
    assert float(m["rank_loss"]) > float(m_plain["rank_loss"])  # the negatives take probability from the scored


def test_in_batch_negatives_bad_settings(params):
    with pytest.raises(ValueError, match="rank_loss='kl'"):
        js.JMLRConfig(rank_loss="ranknet", in_batch_negatives=True)
    batch = _negatives_batch(params)
    del batch["candidates"]
    m = js.StepConfigs(LLM, RET, js.JMLRConfig(num_candidates=6, num_sampled=4, num_docs=1, rank_loss="kl",
                                               cached_doc_losses=True, in_batch_negatives=True))
    with pytest.raises(ValueError, match="candidates"):
        jloss(params, batch, jax.random.PRNGKey(0), m=m)

"""KV-cache decoding against the full forward pass; sampling; EOS handling; ragged prompt batches."""
import dataclasses

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jmlr_jax import generate as gen
from jmlr_jax.models import Llama, LlamaConfig
from jmlr_jax.models import llama as llama_lib

CFG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  rope_scaling_factor=2.0)


@pytest.fixture(scope="module")
def params():
    # larger init so greedy choices are not near-ties
    p = llama_lib.init_params(CFG, jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(lambda x: x * 20 if x.ndim >= 2 else x, p)


def test_cached_decoding_matches_full_forward(params):
    prompts = [[5, 9, 3], [7, 1, 2, 8, 4, 6, 11], [13]]
    sampling = gen.SamplingConfig(max_new_tokens=6)
    outs, step_logits = gen.generate_ids(CFG, params, prompts, sampling, return_logits=True)
    assert step_logits.shape == (3, 6, CFG.vocab_size)
    model = Llama(CFG)
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        full = np.asarray(model.apply({"params": params}, jnp.asarray([prompt + out])))[0]
        # logits that chose generated token s are the full model's logits at position len(prompt) - 1 + s
        np.testing.assert_allclose(step_logits[i], full[len(prompt) - 1: len(prompt) - 1 + len(out)], atol=2e-4)
        np.testing.assert_array_equal(out, np.argmax(full[len(prompt) - 1: -1], axis=-1))
        assert np.abs(full).max() > 1.0


def test_batch_equals_one_by_one(params):
    prompts = [[5, 9, 3], [7, 1, 2, 8, 4, 6, 11, 2, 9, 30]]
    sampling = gen.SamplingConfig(max_new_tokens=5)
    together = gen.generate_ids(CFG, params, prompts, sampling)
    alone = [gen.generate_ids(CFG, params, [p], sampling)[0] for p in prompts]
    assert together == alone


def test_stops_at_eos(params):
    free = gen.generate_ids(CFG, params, [[5, 9, 3]], gen.SamplingConfig(max_new_tokens=6))[0]
    eos = free[2]
    cut = gen.generate_ids(CFG, params, [[5, 9, 3]], gen.SamplingConfig(max_new_tokens=6, eos_ids=(eos,)))[0]
    assert cut == free[: free.index(eos)]


class _IdsTokenizer:
    """Text is space-separated token ids; no BOS, EOS or pad of its own."""
    add_bos, bos_id, eos_id, pad_id = False, None, None, None
    encode = staticmethod(lambda text: [int(t) for t in text.split()])
    decode = staticmethod(lambda ids: " ".join(map(str, ids)))


def test_text_generation_stops_at_extra_stop_ids(params):
    """`generate(..., stop_ids=)` ends an answer at a chat template's end of turn as at EOS, and so does any of a
    config's several EOS ids."""
    cfg = dataclasses.replace(CFG, eos_token_id=None)
    free = gen.generate(cfg, params, _IdsTokenizer(), ["5 9 3"], max_new_tokens=6)[0].split()
    assert len(free) == 6
    stop = int(free[3])
    cut = gen.generate(cfg, params, _IdsTokenizer(), ["5 9 3"], max_new_tokens=6, stop_ids=[stop])[0].split()
    assert cut == free[: free.index(str(stop))]
    several = dataclasses.replace(CFG, eos_token_id=(63, stop))  # as Llama 3.1 Instruct's config lists its EOS ids
    assert gen.generate(several, params, _IdsTokenizer(), ["5 9 3"], max_new_tokens=6)[0].split() == cut


def test_text_generation_is_cut_before_the_first_stop_string(params):
    """`generate(..., stop_strings=)`: text that one token may hold only in part, so the decoded answer is cut
    before the earliest of them, wherever it starts."""
    cfg = dataclasses.replace(CFG, eos_token_id=None)
    free = gen.generate(cfg, params, _IdsTokenizer(), ["5 9 3"], max_new_tokens=6)[0]
    tokens = free.split()
    later, earlier = f" {tokens[4]} {tokens[5]}", f"{tokens[1]} {tokens[2][:1]}"  # the second ends inside a token
    assert free.index(earlier) < free.index(later)
    want = free[: free.index(earlier)]
    assert gen.generate(cfg, params, _IdsTokenizer(), ["5 9 3"], max_new_tokens=6,
                        stop_strings=[later, earlier, "not in it"])[0] == want
    assert gen.cut_at_stop(free, ["not in it", ""]) == free


def test_sampling_is_seeded_and_top_p_narrows_to_greedy(params):
    prompt = [[5, 9, 3]]
    hot = gen.SamplingConfig(max_new_tokens=8, temperature=1.5)
    a = gen.generate_ids(CFG, params, prompt, hot, jax.random.PRNGKey(1))
    b = gen.generate_ids(CFG, params, prompt, hot, jax.random.PRNGKey(1))
    c = gen.generate_ids(CFG, params, prompt, hot, jax.random.PRNGKey(2))
    assert a == b and a != c
    greedy = gen.generate_ids(CFG, params, prompt, gen.SamplingConfig(max_new_tokens=8))
    nucleus = gen.generate_ids(CFG, params, prompt, gen.SamplingConfig(max_new_tokens=8, temperature=1.5,
                                                                       top_p=1e-6), jax.random.PRNGKey(1))
    assert nucleus == greedy


def test_top_p_keeps_smallest_prefix_reaching_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    draws = jax.vmap(lambda k: gen.sample_token(logits, k, 1.0, 0.75))(jax.random.split(jax.random.PRNGKey(0), 400))
    assert set(np.unique(np.asarray(draws))) == {0, 1}


def test_empty_prompt_is_an_error(params):
    with pytest.raises(ValueError, match="empty prompt"):
        gen.generate_ids(CFG, params, [[1, 2], []], gen.SamplingConfig())


@pytest.mark.parametrize("kw, what", [(dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")),
                                      "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                                     (dict(max_new_tokens=-1), "max_new_tokens")])
def test_sampling_settings_out_of_range_are_errors(kw, what):
    with pytest.raises(ValueError, match=what):
        gen.SamplingConfig(**kw)

"""Evaluation on a mesh (a run's: the LLM sharded as training shards it, each batch's rows split over the data
axes) gives what one device gives: perplexity, greedy answers, option log-likelihoods, DPO reward accuracy."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jmlr_jax import parallel
from jmlr_jax.convert import load_preset
from jmlr_jax.data import lm_data, user_records
from jmlr_jax.eval import score_options, stage_eval
from jmlr_jax.generate import SamplingConfig, generate_ids
from jmlr_jax.train.weights import on_mesh
from tests.helpers import save_tiny_llama_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_preset(save_tiny_llama_dir(str(tmp_path_factory.mktemp("tiny_llama"))))


def test_params_split_over_the_mesh_and_rows_over_its_data_axes(tiny, capsys):
    cfg, params, _ = tiny
    placed = on_mesh(cfg, params, parallel.make_mesh((2, 2, 2)))
    q = placed["layers"]["attn"]["q"]["kernel"]
    assert q.sharding.spec[1] == "fsdp" and q.addressable_shards[0].data.shape[1] == q.shape[1] // 2
    seen = {}

    def fn(p, rows, key):
        spec = lambda x: x.sharding.spec if isinstance(x, jax.Array) else type(x).__name__  # noqa: E731
        seen.update(rows=spec(rows), key=spec(key), mesh=jax.sharding.get_abstract_mesh().axis_names)
        return rows + 1

    x = np.arange(24).reshape(8, 3)
    out = parallel.call_on_mesh(fn, placed, (x,), (np.zeros(2, np.uint32),))
    assert isinstance(out, np.ndarray) and (out == x + 1).all()
    assert seen == {"rows": P(("data", "fsdp"), None), "key": P(), "mesh": ("data", "fsdp", "tensor")}
    assert capsys.readouterr().out == ""
    parallel.call_on_mesh(fn, placed, (x[:3],), (np.zeros(2, np.uint32),))
    assert seen["rows"] == P(None, None)  # 3 rows do not split over 4 devices: whole on every one, said once
    parallel.call_on_mesh(fn, placed, (x[:3],), (np.zeros(2, np.uint32),))
    assert capsys.readouterr().out.count("batches of 3 rows split over 1 of the mesh's 4 data devices") == 1
    parallel.call_on_mesh(fn, params, (x,), (np.zeros(2, np.uint32),))  # params on one device: as it is
    assert seen == {"rows": "ndarray", "key": "ndarray", "mesh": ()}


def measures(cfg, params, reference, tok) -> dict:
    """Every evaluation primitive on fixed small inputs (also run by two processes: tests/test_multiprocess.py)."""
    lm = lm_data.LMDataConfig(seq_len=64)
    texts = ["Asthma narrows the airways.", "Metformin lowers blood glucose in type 2 diabetes. " * 3,
             "Fever is a raised body temperature.", "Iron deficiency causes anaemia."]
    requests = [("What is asthma?", ""), ("What lowers glucose?", ""), ("Define fever.", "adults")]
    pairs = [user_records.PreferencePair(str(i), f"Question {i}", "", "Answer A.", f"Wrong {i}.") for i in range(3)]
    prompts = [tok.encode(t) for t in ("Which drug?", "Asthma is", "A")]
    options = [[tok.encode(" metformin"), tok.encode(" insulin")], [tok.encode(" an airway disease")] * 2,
               [tok.encode(" B"), tok.encode(" C"), tok.encode(" D")]]
    return {"ppl": stage_eval.heldout_perplexity(cfg, params, tok, texts, 32, batch_size=4),
            "answers": stage_eval.greedy_answers(cfg, params, tok, lm, requests, max_new_tokens=6, batch_size=4),
            "options": [o.tolist() for o in score_options(cfg, params, prompts, options, batch_size=4)],
            "pairs": stage_eval.reward_accuracy(cfg, params, reference, tok, lm, pairs, batch_size=4)}


def assert_same(one: dict, other: dict) -> None:
    assert one["ppl"]["tokens"] == other["ppl"]["tokens"] > 0
    assert other["ppl"]["nll"] == pytest.approx(one["ppl"]["nll"], rel=1e-5)
    assert other["answers"] == one["answers"] and any(one["answers"])
    for a, b in zip(one["options"], other["options"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)
    assert other["pairs"]["reward_margin"] == pytest.approx(one["pairs"]["reward_margin"], abs=1e-4)
    assert other["pairs"]["logp_chosen"] == pytest.approx(one["pairs"]["logp_chosen"], rel=1e-5)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)])
def test_evaluation_on_a_mesh_equals_one_device(tiny, shape):
    cfg, params, tok = tiny
    placed = on_mesh(cfg, params, parallel.make_mesh(shape))
    assert_same(measures(cfg, params, params, tok), measures(cfg, placed, params, tok))
    sampled = SamplingConfig(5, temperature=1.0)  # sampling too, a typed key on the mesh and a raw one off it
    prompts = [tok.encode("Asthma is"), tok.encode("A")]
    assert generate_ids(cfg, placed, prompts, sampled, jax.random.key(3)) == \
        generate_ids(cfg, params, prompts, sampled, jax.random.PRNGKey(3))

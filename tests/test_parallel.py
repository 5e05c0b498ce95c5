"""parallel.constrain: activations pinned by logical axis names under the mesh in context, and only then."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jmlr_jax import parallel
from jmlr_jax.models import Llama, LlamaConfig
from jmlr_jax.models.llama import init_params

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


def _constraints(text: str) -> list[str]:
    """The mesh-axis lists of every sharding constraint in lowered (Shardy) StableHLO."""
    return re.findall(r"sdy\.sharding_constraint %\S+ <@mesh, (\[.*?\])>", text)


def test_a_mesh_the_devices_cannot_hold_is_one_clear_error():
    from jmlr_jax.errors import InputError

    assert parallel.make_mesh((2, -1, 2)).devices.shape == (2, 2, 2)
    for shape, says in [((1, -1, 3), "multiple of 3 devices, this process sees 8"), ((2, 2, 4), "needs 16 devices"),
                        ((-1, -1, 1), "at most one -1")]:
        with pytest.raises(InputError, match=re.escape(says)) as e:
            parallel.make_mesh(shape)
        assert "mesh_shape" in str(e.value) and "\n" not in str(e.value)


def test_evaluation_takes_the_training_mesh_or_all_devices_when_it_cannot(capsys):
    assert parallel.evaluation_mesh((2, -1, 2)).devices.shape == (2, 2, 2)
    assert capsys.readouterr().out == ""
    assert parallel.evaluation_mesh((1, -1, 16)).devices.shape == (1, 8, 1)  # a pod slice's run on 8 devices
    assert "multiple of 16 devices" in capsys.readouterr().out


def test_constrain_maps_logical_names_onto_the_mesh_in_context():
    f = jax.jit(lambda x: parallel.constrain(x * 2, ("batch", "length", "mlp")))
    x = jnp.ones((8, 16, 6))
    assert _constraints(f.lower(x).as_text()) == []  # no mesh in context: XLA's propagation decides
    with jax.set_mesh(parallel.make_mesh((2, 2, 2))):
        assert _constraints(f.lower(x).as_text()) == ['[{"data", "fsdp"}, {}, {"tensor"}]']
        # 3 is not divisible by the tensor axis (SmolLM2's KV heads): replicated there, not an error
        assert _constraints(f.lower(jnp.ones((8, 16, 3))).as_text()) == ['[{"data", "fsdp"}, {}, {}]']
        # 2 rows on data x fsdp = 2 x 2: split over the leading axis that divides them, not replicated; the
        # sequence takes the axis the rows left
        assert _constraints(f.lower(jnp.ones((2, 16, 6))).as_text()) == ['[{"data"}, {"fsdp"}, {"tensor"}]']
        assert _constraints(f.lower(jnp.ones((1, 16, 6))).as_text()) == ['[{}, {"data", "fsdp"}, {"tensor"}]']
        # inside a per-shard region (the attention kernels') it is the identity
        body = lambda x: parallel.constrain(x * 2, ("batch", "length", "mlp"))  # noqa: E731
        per_shard = jax.shard_map(body, in_specs=P(("data", "fsdp")), out_specs=P(("data", "fsdp")))
        np.testing.assert_array_equal(np.asarray(jax.jit(per_shard)(x)), 2 * np.ones((8, 16, 6)))
    with jax.set_mesh(jax.sharding.Mesh(np.array(jax.devices()), ("rows",))):  # another mesh: left alone
        assert _constraints(f.lower(x).as_text()) == []


def test_length_multiple_is_what_the_rows_leave_of_the_batch_axes():
    assert parallel.length_multiple(2) == 1  # no mesh in context
    with jax.set_mesh(parallel.make_mesh((1, 8, 1))):
        assert [parallel.length_multiple(r) for r in (1, 2, 4, 8, 16)] == [8, 8, 8, 1, 1]
    with jax.set_mesh(parallel.make_mesh((2, 2, 2))):  # rows take data, then fsdp; tensor is not a batch axis
        assert [parallel.length_multiple(r) for r in (1, 2, 3, 4)] == [4, 2, 4, 1]


def test_llama_activations_are_pinned_under_a_mesh():
    """The decoder's activations carry their shardings under a (2, 2, 2) mesh (the MLP's hidden split over the
    tensor axis, the residual stream over the batch axes) and give the same logits as without one."""
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, attention="reference")
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 16), 0, cfg.vocab_size)
    f = jax.jit(lambda p, t: Llama(cfg).apply({"params": p}, t))
    with jax.set_mesh(parallel.make_mesh((2, 2, 2))):
        found = _constraints(f.lower(params, tokens).as_text())
        sharded = f(params, tokens)
    assert '[{"data", "fsdp"}, {"tensor"}]' in found  # the MLP's [tokens, ffn] hidden
    assert '[{"data", "fsdp"}, {}, {"tensor"}, {}]' in found  # q / k / attention output: heads over tensor
    assert '[{"data", "fsdp"}, {}, {}]' in found  # the residual stream: rows over the batch axes
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(f(params, tokens)), atol=1e-5)

"""Device mesh (data, fsdp, tensor), logical-axis rules and shardings; multi-host initialisation.

Every parameter and activation carries logical axis names (models/*.py); `RULES` maps them onto mesh
axes. A dimension that a mesh axis does not divide is replicated along that axis instead of failing
(e.g. SmolLM2's 3 KV heads on a tensor axis of 2), so one rules table serves every model size.
"""
from __future__ import annotations

import atexit
import functools
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jmlr_jax.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes). FSDP shards the model dimension of every weight and the batch;
# tensor parallelism shards heads, MLP width and vocabulary.
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", ("data", "fsdp")),  # what the rows leave: a sequence longer than the batch is wide
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
    ("colbert_dim", None),
    ("lora_rank", "fsdp"),  # last: an adapter's rank axis takes FSDP only where its other axis did not
)


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() on multi-host TPU pods / multi-process runs; a no-op on one host.

    Clusters jax detects (Cloud TPU, SLURM, Open MPI, Kubernetes) need nothing; anywhere else every process sets
    JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID. Processes on CPUs
    exchange collectives over gloo (how tests/test_multiprocess.py runs two hosts on one machine)."""
    multi = any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS"))
    if not multi or jax.distributed.is_initialized():
        return
    explicit = {}
    if "JAX_NUM_PROCESSES" in os.environ or "JAX_PROCESS_ID" in os.environ:
        try:
            explicit = {"num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
                        "process_id": int(os.environ["JAX_PROCESS_ID"])}
        except (KeyError, ValueError) as e:
            raise InputError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must both be integers when either is set "
                             f"(got {os.environ.get('JAX_NUM_PROCESSES')!r}, {os.environ.get('JAX_PROCESS_ID')!r})"
                             ) from e
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**explicit)
    except RuntimeError as e:  # already initialised, or a single-host TPU VM
        if "already" not in str(e):
            raise
        return
    # At exit jax's own hook tears the backend down and only then meets the other hosts at the shutdown barrier;
    # a hook registered later runs first: every host reaches the barrier while its runtime is whole (as Levanter).
    atexit.register(jax.distributed.shutdown)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), axes: Sequence[str] = MESH_AXES) -> Mesh:
    """A mesh over the devices; one -1 in `shape` takes all remaining devices (the usual case). A shape these
    devices cannot hold is an InputError naming the config field (a 7B config's (1, -1, 4) on a 1-device host)."""
    shape = list(shape)
    n = jax.device_count()
    what = f"mesh_shape {tuple(shape)} (data, fsdp, tensor; RunConfig / PipelineConfig.mesh_shape)"
    fix = "; e.g. --gin.RunConfig.mesh_shape='(-1, 1, 1)' for all of them on the data axis"
    if shape.count(-1) > 1:
        raise InputError(f"{what}: at most one -1")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if n % rest:
            raise InputError(f"{what} needs a multiple of {rest} devices, this process sees {n}{fix}")
        shape[shape.index(-1)] = n // rest
    need = int(np.prod(shape))
    if need > n:
        raise InputError(f"{what} needs {need} devices, this process sees {n}{fix}")
    if need < n:
        print(f"warning: mesh {tuple(shape)} uses {need} of {n} devices", flush=True)
    devices = np.asarray(jax.devices()[:need]).reshape(shape)
    # Auto axis types: flax-linen logical partitioning is GSPMD-style (see STACK.md gotcha 1).
    return Mesh(devices, tuple(axes))


def axes_of(entry) -> tuple[str, ...]:
    """The mesh axis names of a PartitionSpec entry or a rule's target: a name, a tuple of names or None."""
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def devices_of(mesh, *entries) -> int:
    """How many devices spec entries split an array over (the product of their mesh axes' sizes)."""
    return int(np.prod([mesh.shape[a] for e in entries for a in axes_of(e)]))


def mesh_spec(logical: Sequence[str | None], shape: Sequence[int], mesh, rules=RULES) -> P:
    """The mesh PartitionSpec of an array from its logical axis names. Rules apply in order, each mesh axis at most
    once: a dimension keeps the longest leading run of its rule's free axes (size > 1) whose product divides it
    and is replicated along the rest, and an axis it could not use stays free for the next rule. So SmolLM2's 3
    KV heads stay whole on a tensor axis of 2, 2 rows on data x fsdp = 2 x 2 split over data (and the sequence
    over fsdp), and one long row on 8 FSDP chips is split along its sequence instead of replicated."""
    out: list = [None] * len(shape)
    used: set[str] = set()
    for name, axes in rules:
        for i, n in enumerate(tuple(logical)[:len(shape)]):
            if n != name or out[i] is not None:
                continue
            kept = [a for a in axes_of(axes) if a not in used and mesh.shape[a] > 1]
            while kept and shape[i] % devices_of(mesh, *kept):
                kept.pop()
            if kept:
                out[i] = kept[0] if len(kept) == 1 else tuple(kept)
                used.update(kept)
    return P(*out)


def logical_sharding(logical: P, shape: Sequence[int], mesh: Mesh, rules=RULES) -> NamedSharding:
    """NamedSharding for one array from its logical axis names."""
    return NamedSharding(mesh, mesh_spec(logical, shape, mesh, rules))


def _mesh_in_context():
    """The mesh in context (`jax.set_mesh`, which the training loop sets around each step), or None: none, one
    device, inside a per-shard region (`jax.shard_map`) or a mesh without this module's axes."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or mesh.manual_axes or not set(MESH_AXES) <= set(mesh.axis_names):
        return None
    return mesh


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding by its logical axis names under the mesh in context; the identity without one
    (`_mesh_in_context`). Without it XLA's propagation alone decides, e.g. whether the MLP's hidden [tokens, ffn]
    is split over the tensor axis or gathered."""
    mesh = _mesh_in_context()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, mesh_spec(logical, x.shape, mesh)))


def length_multiple(rows: int) -> int:
    """What a sequence's length should be a multiple of so that, beside `rows` rows, it splits over the mesh axes
    the rows leave (mesh in context; 1 without one). 4 rows of the fused JMLR step's 1121 tokens on 8 FSDP chips:
    8, where the odd length had every chip compute all 4 rows whole."""
    mesh = _mesh_in_context()
    if mesh is None:
        return 1
    (taken,) = mesh_spec(("batch",), (rows,), mesh)
    return devices_of(mesh, *(a for a in axes_of(dict(RULES)["length"]) if a not in axes_of(taken)))


def tree_shardings(logical_tree, shape_tree, mesh: Mesh, rules=RULES):
    """Shardings for a pytree given matching trees of logical PartitionSpecs and shapes (ShapeDtypeStructs)."""
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    return jax.tree_util.tree_map(lambda spec, s: logical_sharding(spec, s.shape, mesh, rules),
                                  logical_tree, shape_tree, is_leaf=is_spec)


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def like_params_shardings(abstract_tree, params_shardings, params_abstract, mesh: Mesh):
    """Shardings for e.g. an optimizer state: a leaf whose key path ends with a parameter's path and has its
    shape gets that parameter's sharding (Adam mu / nu ...); every other leaf is replicated.

    Works for any optax state (chains, multi_transform, masked weight decay), unlike jitting `tx.init`,
    which silently replicates the whole state and defeats FSDP (STACK.md gotcha 3).
    """
    flat_sh = {_keys(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]}
    flat_shape = {_keys(p): a.shape for p, a in jax.tree_util.tree_flatten_with_path(params_abstract)[0]}
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        keys = _keys(path)
        for n in range(len(keys), 0, -1):
            if keys[-n:] in flat_sh and flat_shape[keys[-n:]] == leaf.shape:
                return flat_sh[keys[-n:]]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def host_copy(tree):
    """Each array of `tree` whole, as numpy, on this host. An array split over several hosts (FSDP across them)
    is gathered from all: a collective, so every process calls this at the same point."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree_util.tree_map(get, tree)


def barrier(name: str) -> None:
    """Every process waits here for the others (a no-op on one host): e.g. until process 0 has written a file
    the others read next."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------------- multi-host data

def host_shard() -> tuple[int, int]:
    """(this process's index, process count): each host reads only rows index, index + count, ... of the
    global example order, so the hosts together read every global batch exactly once."""
    return jax.process_index(), jax.process_count()


def host_rows(global_rows: int, count: int) -> int:
    """Rows of a global batch that one of `count` hosts reads."""
    if global_rows % count:
        raise ValueError(f"global batch of {global_rows} rows does not split over {count} hosts")
    return global_rows // count


@functools.lru_cache(maxsize=None)
def batch_sharding(global_shape: tuple[int, ...], mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """A global batch leaf's sharding: rows over the mesh's data axes (cached: asked for every leaf every step)."""
    return logical_sharding(P(*([None] * batch_axis), "batch"), global_shape, mesh)


def global_batch(local: dict, mesh: Mesh, batch_axis: int = 0) -> dict:
    """This host's rows -> global jax.Arrays sharded over the batch on the mesh's data axes (every host calls
    this with its own rows; on one host it is a device_put). Leading [A] micro-batch axis: batch_axis=1."""
    count = jax.process_count()

    def put(x: np.ndarray) -> jax.Array:
        shape = list(x.shape)
        shape[batch_axis] *= count
        sharding = batch_sharding(tuple(shape), mesh, batch_axis)
        if count > 1 and sharding.spec[batch_axis] is None:
            raise ValueError(f"batch of {shape[batch_axis]} rows cannot be sharded over mesh {dict(mesh.shape)}; "
                             "with several hosts every host must hold distinct rows")
        return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

    return {k: put(np.asarray(v)) for k, v in local.items()}


# ------------------------------------------------------------------------------------------- evaluation

def evaluation_mesh(shape: Sequence[int]) -> Mesh:
    """The mesh a model is evaluated on: the one it trained on (`shape`, RunConfig / PipelineConfig.mesh_shape,
    which evaluation may rebind) when this machine's devices hold it, else all of them on the FSDP axis, said
    in one line (a run trained on a pod slice, evaluated on one GPU)."""
    try:
        return make_mesh(shape)
    except InputError as e:
        print(f"evaluation: {e}; evaluating with the model split over all {jax.device_count()} devices instead "
              "(FSDP)", flush=True)
        return make_mesh((1, -1, 1))


def placed_mesh(tree) -> Mesh | None:
    """The mesh of several devices that a tree's arrays were placed on (`train.weights.on_mesh`), or None."""
    for x in jax.tree_util.tree_leaves(tree):
        sh = getattr(x, "sharding", None)
        if isinstance(sh, NamedSharding) and sh.mesh.size > 1:
            return sh.mesh
    return None


@functools.lru_cache(maxsize=None)
def _say_unsplit(rows: int, split: int, n: int) -> None:
    """Once per batch size: rows that do not split over the data axes are computed by several devices each."""
    print(f"warning: evaluation batches of {rows} rows split over {split} of the mesh's {n} data devices (each "
          f"row computed {n // split} times); a batch size that is a multiple of {n} uses them all", flush=True)


def call_on_mesh(fn, params, rows: Sequence = (), whole: Sequence = (), **static):
    """fn(params, *rows, *whole, **static), its outputs as numpy on this host. With params placed on a mesh of
    several devices (evaluation on a run's mesh: `train.weights.on_mesh`) it runs under that mesh in context (the
    models' activation rules apply as in training): `rows` (numpy batches, the same on every host) split over the
    mesh's data axes where they divide (else whole on every device; each a pytree of batch arrays), `whole` (e.g.
    a PRNG key) replicated, and the outputs gathered from every host. Without such params, fn as it is."""
    mesh = placed_mesh(params)
    if mesh is None:
        return jax.tree_util.tree_map(np.asarray, fn(params, *rows, *whole, **static))

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def put_rows(x):
        sharding = batch_sharding(np.shape(x), mesh)
        split, n = devices_of(mesh, sharding.spec[0]), devices_of(mesh, dict(RULES)["batch"])
        if split < n:
            _say_unsplit(np.shape(x)[0], split, n)
        return put(x, sharding)

    rows = [jax.tree_util.tree_map(put_rows, r) for r in rows]
    whole = [put(x, NamedSharding(mesh, P())) for x in whole]
    with jax.set_mesh(mesh):
        out = fn(params, *rows, *whole, **static)
    return host_copy(out)

"""Lower a program for an accelerator on a machine without one: CUDA or TPU programs traced and lowered to
StableHLO on a CPU host, so an accelerator run's code paths are checked before accelerator time is spent.

    with lowering.target("cuda"):          # "auto" settings resolve for the target inside
        cfg = LlamaConfig(...)             # dtype "auto" -> bfloat16, attention "auto" -> cudnn / pallas_gpu
        text = lowering.lower(jax.jit(step), state_shapes, batch_shapes)
    lowering.custom_calls(text)            # {"__cudnn$fmhaSoftmax": 30, ...}: the fused kernels are in the program
    lowering.attention_logits(text, L)     # [] unless a product makes [.., L, L] attention logits

What lowering checks: the kernels' own argument checks (cuDNN's head dim, layout and mask rules, Pallas' block
shapes, Mosaic's TPU lowering) and every shape in the program. Speed and numerics need the device.

Compiling goes one step further where the accelerator's compiler is installed (nothing runs):

    mesh = lowering.chip_mesh("h100")        # or "v5p", "v6e"; shape (1, 8, 1): 8 chips, FSDP over them
    compiled = lowering.compile(step, state_shapes, batch_shapes, mesh=mesh)   # leaves may carry shardings on it
    lowering.memory_gib(compiled)          # XLA's buffer assignment for one such device: weights, state, scratch

XLA:GPU compiles for an H100 described by `H100_TARGET` (the CUDA plugin, `pip install "jax[cuda12]"`, run with
JAX_PLATFORMS=cpu so that no GPU is looked for); XLA:TPU for a TPU chip through libtpu's compile-only topologies
(`pip install "jax[tpu]"`; Mosaic compiles the Pallas kernels too). The memory figure is the compiler's, for the
program as a device would run it (a real run adds the allocator's fragmentation and, on GPU, library handles).

On a host without cuDNN, JAX's cuDNN version query is answered with
`ASSUMED_CUDNN` (only inside `target("cuda")`); its compute-capability checks see no GPU and apply the rules of
pre-Hopper GPUs, the stricter ones (head dim <= 128). JAX >= 0.12 lowers Triton kernels for a named GPU:
`ASSUMED_GPU` (an H100), set by `lower` as the abstract device of the mesh in context. Under a mesh in context
(`jax.set_mesh`) the fused kernels sit in `sdy.manual_computation` regions (models/attention.py runs them per
shard).
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
from typing import Iterator

import jax
import numpy as np

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
ASSUMED_CUDNN = 90800  # cuDNN 9.8, what jax's CUDA 12 wheels of 2025-26 ship with
ASSUMED_GPU = "NVIDIA H100 80GB HBM3"  # the GPU Triton kernels are lowered for (JAX >= 0.12 asks)
_TARGETS: list[str] = []
# XLA's description of the GPU compiled for (a GpuTargetConfigProto): the H100 SXM's published figures, with the
# CUDA / cuDNN versions jax's CUDA 12 wheels ship.
H100_TARGET = """
gpu_device_info {
  threads_per_block_limit: 1024  threads_per_warp: 32  shared_memory_per_block: 49152
  shared_memory_per_core: 233472  threads_per_core_limit: 2048  core_count: 132  fpus_per_core: 128
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000  l2_cache_size: 52428800  clock_rate_ghz: 1.98
  device_memory_size: 84929347584  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }  registers_per_core_limit: 65536  registers_per_block_limit: 65536
}
runtime_version { major: 12 minor: 8 }
dnn_version_info { major: 9 minor: 8 }
platform_name: "CUDA"
device_description_str: "NVIDIA H100 80GB HBM3"
"""
CHIPS = {"h100": "cuda", "v5p": "tpu", "v6e": "tpu"}  # -> platform
# (TPU chip, chips) -> (libtpu topology, chips per host): one chip, one host of four, a slice of two hosts
_TPU_SLICES = {("v5p", 1): ("v5p:1x1x1", (1, 1, 1)), ("v5p", 4): ("v5p:2x2x1", (2, 2, 1)),
               ("v5p", 8): ("v5p:2x2x2", (2, 2, 1)), ("v6e", 1): ("v6e:1x1", (1, 1, 1)),
               ("v6e", 4): ("v6e:2x2", (2, 2, 1)), ("v6e", 8): ("v6e:2x4", (2, 4, 1))}


def backend() -> str:
    """The platform programs are built for: the innermost `target`, else JAX's default backend."""
    return _TARGETS[-1] if _TARGETS else jax.default_backend()


@contextlib.contextmanager
def target(platform: str) -> Iterator[None]:
    """Build (configs with "auto" settings) and trace programs for `platform` instead of this machine's backend.

    JAX caches traces by function and argument types, not by what "auto" resolved to, so its caches are cleared
    whenever the platform changes (entering and leaving): a function traced for one target is never reused for
    another, or for this machine."""
    if platform not in PLATFORMS:
        raise ValueError(f"lowering target {platform!r} not in {PLATFORMS}")
    with _assume_cudnn() if platform == "cuda" else contextlib.nullcontext():
        if platform != backend():
            jax.clear_caches()
        _TARGETS.append(platform)
        try:
            yield
        finally:
            _TARGETS.pop()
            if platform != backend():
                jax.clear_caches()


@contextlib.contextmanager
def _assume_cudnn() -> Iterator[None]:
    try:
        from jax._src.cudnn import fused_attention_stablehlo as fa  # private: the only place JAX asks
    except ImportError:
        yield
        return
    if getattr(fa, "cuda_versions", None) is not None:  # a real CUDA install answers for itself
        yield
        return
    saved = fa.check_cudnn_version
    fa.check_cudnn_version = lambda: ASSUMED_CUDNN
    try:
        yield
    finally:
        fa.check_cudnn_version = saved


@contextlib.contextmanager
def _assume_gpu() -> Iterator[None]:
    """Newer JAX (0.12) asks which GPU it lowers Triton kernels for: the mesh in context (or a one-device one)
    gets an abstract `ASSUMED_GPU`; older JAX reads nothing and gets nothing. Only around tracing and lowering
    (an eager op under an abstract-only mesh cannot run), and only when asked (cuDNN's partitioned call refuses
    an abstract-only mesh)."""
    try:
        from jax._src.mesh import AbstractDevice  # private: the only way to name a GPU that is not here
    except ImportError:
        yield
        return
    mesh = jax.sharding.get_abstract_mesh()
    device = AbstractDevice(device_kind=ASSUMED_GPU, num_cores=None, platform="gpu")
    mesh = jax.sharding.AbstractMesh((1,), ("lowering",), abstract_device=device) if mesh.empty else \
        mesh.update(abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
        yield


def lower(fn, *args, platform: str | None = None, **kwargs) -> str:
    """StableHLO text of jitted `fn` at `args` (arrays or jax.ShapeDtypeStruct: nothing is allocated) lowered for
    `platform` (default: the innermost `target`), traced inside `target(platform)`."""
    platform = platform or backend()
    if not hasattr(fn, "trace"):
        fn = jax.jit(fn)
    text = lambda: fn.trace(*args, **kwargs).lower(lowering_platforms=(platform,)).as_text()  # noqa: E731
    with target(platform):
        try:
            return text()
        except RuntimeError as e:  # JAX >= 0.12 lowering Triton: name the GPU (not always: cuDNN's call refuses it)
            if platform != "cuda" or "AbstractDevice" not in str(e):
                raise
        with _assume_gpu():
            return text()


def chip_mesh(chip: str, shape: tuple[int, ...] = (1, 1, 1)) -> jax.sharding.Mesh:
    """A mesh (axes of `jmlr_jax.parallel`) of compile-only `chip` devices: XLA compiles for them on this host,
    nothing can run on them. H100: up to 8 GPUs of one host; v5p / v6e: 1, 4 or 8 chips (8: two hosts)."""
    from jax.experimental import topologies

    from jmlr_jax import parallel

    if chip not in CHIPS:
        raise ValueError(f"chip {chip!r} not in {sorted(CHIPS)}")
    n = int(np.prod(shape))

    try:
        if CHIPS[chip] == "cuda":
            if n > 8:
                raise ValueError(f"{n} H100s: one host of up to 8 is described")
            devices = topologies.get_topology_desc(platform="cuda", target_config=H100_TARGET,
                                                   topology=f"1x1x{n}").devices
        else:
            if (chip, n) not in _TPU_SLICES:
                raise ValueError(f"{n} {chip} chips: one of {sorted(c for k, c in _TPU_SLICES if k == chip)}")
            topology, per_host = _TPU_SLICES[chip, n]
            os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # else libtpu asks a cloud metadata server
            os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no chip is claimed: compiles run side by side
            devices = topologies.get_topology_desc(platform="tpu", topology_name=topology, chip_config_name="default",
                                                   chips_per_host_bounds=per_host, num_slices=1).devices
    except (NotImplementedError, RuntimeError) as e:
        need = '"jax[cuda12]" and JAX_PLATFORMS=cpu' if CHIPS[chip] == "cuda" else '"jax[tpu]" (libtpu)'
        raise RuntimeError(f"cannot compile for {chip} here: needs {need} ({str(e).splitlines()[0][:120]})") from None
    return jax.sharding.Mesh(np.array(devices).reshape(shape), parallel.MESH_AXES)


def compile(fn, *args, mesh: jax.sharding.Mesh, **kwargs) -> jax.stages.Compiled:
    """XLA's executable of jitted `fn` at `args` (arrays or jax.ShapeDtypeStruct: nothing is allocated) for the
    devices of `mesh` (`chip_mesh`), traced inside `target(platform)` with the mesh in context. A leaf keeps its
    sharding when it has one on `mesh`, else it is replicated."""
    platform = {"gpu": "cuda"}.get(mesh.devices.flat[0].platform, mesh.devices.flat[0].platform)
    here = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def place(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if getattr(sharding, "mesh", None) == mesh
                                    else here)

    args = jax.tree.map(place, args)
    if not hasattr(fn, "trace"):
        fn = jax.jit(fn)
    with target(platform), jax.set_mesh(mesh):
        return fn.trace(*args, **kwargs).lower().compile()


def memory_gib(compiled: jax.stages.Compiled) -> float:
    """Device memory of a compiled step: arguments + outputs (donated ones counted once) + temporaries, GiB."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes) / 2**30


def peak_gib(compiled: jax.stages.Compiled) -> float | None:
    """The compiler's own peak estimate, GiB (None where it gives none). XLA:GPU's equals `memory_gib`; XLA:TPU's is
    lower where temporaries reuse the space of donated arguments once those are dead (4 GiB for the paper-sized
    JMLR step on a v5p chip), so compare backends by this one."""
    peak = getattr(compiled.memory_analysis(), "peak_memory_in_bytes", 0)
    return peak / 2**30 if peak else None


_CALL = re.compile(r'custom_call @([\w$.]+)|custom_call_target="([\w$.]+)"')  # StableHLO | compiled HLO


def custom_calls(text: str) -> collections.Counter:
    """Custom-call targets in lowered (StableHLO) or compiled (HLO) text, with counts (fused kernels:
    `__cudnn$fmha*`, Triton's `__gpu$xla.gpu.triton`, Mosaic's `tpu_custom_call`, the C++ CPU kernel's FFI name)."""
    return collections.Counter(a or b for a, b in _CALL.findall(text))


_DOT = re.compile(r"stablehlo\.dot_general .*?contracting_dims = \[([\d, ]*)\] x .*?: \(tensor<([\dx]+)x[a-z]\w*>, "
                  r".*?-> tensor<([\dx]+)x[a-z]\w*>")


def attention_logits(text: str, length: int) -> list[str]:
    """Result shapes of the products in lowered text that make [.., L, L] blocks (rank >= 3: batch or heads
    first) from fewer than L summed elements: attention logits or their gradient, contracting head_dim, which a
    fused kernel never materialises. Dense layers run on [tokens, features] (rank 2) and weight gradients
    contract the tokens, so a model whose hidden or MLP size equals L still passes."""
    out = set()
    for contracting, lhs, result in _DOT.findall(text):
        lhs_dims, dims = [int(d) for d in lhs.split("x")], [int(d) for d in result.split("x")]
        summed = 1
        for i in contracting.split(","):
            summed *= lhs_dims[int(i)]
        if len(dims) >= 3 and dims.count(length) >= 2 and summed < length:
            out.add(result)
    return sorted(out)

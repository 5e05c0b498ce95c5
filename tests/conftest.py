"""Test setup: 8 fake CPU devices, offline Hugging Face, fp32-exact matmuls for parity checks."""
import atexit
import importlib.metadata
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere.
# LLVM at -O0: most tests compile tiny models once and run them for milliseconds, so the backend's optimisation
# passes were most of their time (the fused step's gradient: 11 s -> 5 s to compile; a fresh-clone run of the whole
# suite 995 -> 922 s, though the few tests that run real weights for long get slower). Values
# differ from an -O3 build by fp32 rounding only (~1e-6 relative: contraction into FMAs), which every tolerance here
# allows; runs outside the tests keep XLA's defaults. XLA:CPU's older LLVM emitters instead of its MLIR fusion
# emitters compile faster still (the Llama, ColBERT and LoRA test modules: 99 -> 65 s here);
# newer XLA removed them, and an unknown flag in XLA_FLAGS aborts (jaxlib 0.12 does).
_LEGACY_EMITTERS = tuple(int(x) for x in importlib.metadata.version("jaxlib").split(".")[:2]) < (0, 11)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
                                   + " --xla_cpu_use_fusion_emitters=false" * _LEGACY_EMITTERS)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu (a test dependency: TPU compiles) must not look for a TPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("GLOG_minloglevel", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Trainers in the loop tests compile the same step again and again (a new jit per trainer): a persistent
# compilation cache for the session turns the repeats into disk hits.
_XLA_CACHE = tempfile.mkdtemp(prefix="jmlr_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _XLA_CACHE, True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

DATA_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def require(condition: bool, what: str) -> None:
    """Real-data / real-weight tests: skip locally when absent, fail loudly under CI=true."""
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI requires {what}, which is missing")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def smollm2():
    from jmlr_jax.convert import presets

    try:
        presets.preset_path("smollm2-135m-instruct")
    except FileNotFoundError as e:
        require(False, str(e))
    return presets.load_preset("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def minilm():
    from jmlr_jax.convert import presets

    try:
        path = presets.preset_path("all-minilm-l6-v2")
    except FileNotFoundError as e:
        require(False, str(e))
    return (*presets.load_preset("all-minilm-l6-v2"), path)


def free_compiled_code() -> None:
    """Drops jax's compiled executables and hands freed heap pages back to the OS: glibc keeps them mapped (XLA's
    compiler threads fragment it: GBs after a training test)."""
    import ctypes
    import ctypes.util
    import gc

    jax.clear_caches()
    gc.collect()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Compiled executables of earlier modules are not reused later: freeing them keeps the suite's memory flat
    (modules whose tests each train a model also free after every test: tests/train/test_loop.py)."""
    yield
    free_compiled_code()


@pytest.fixture(autouse=True)
def _no_gin_leaks():
    """Gin bindings are process-global: a test that parses configs must not change later tests' defaults."""
    yield
    import gin

    gin.clear_config()


@pytest.fixture(scope="session")
def three_guidelines(tmp_path_factory, minilm) -> str:
    """A JSONL corpus of the first three real NGC guidelines (400 words each), for tests that build an index."""
    import json

    require(os.path.isdir(DATA_DIR), DATA_DIR)
    with open(os.path.join(DATA_DIR, "guidelines", "ngc_open.jsonl")) as f:
        recs = [json.loads(line) for line in f][:3]
    path = tmp_path_factory.mktemp("guidelines") / "guidelines.jsonl"
    path.write_text("\n".join(json.dumps({"id": r["id"], "title": r["title"], "text": " ".join(r["text"].split()[:400])})
                              for r in recs) + "\n")
    return str(path)

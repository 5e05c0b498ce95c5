"""Test setup: 8 fake CPU devices, offline Hugging Face, fp32-exact matmuls for parity checks."""
import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("GLOG_minloglevel", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

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


@pytest.fixture(autouse=True)
def _no_gin_leaks():
    """Gin bindings are process-global: a test that parses configs must not change later tests' defaults."""
    yield
    import gin

    gin.clear_config()

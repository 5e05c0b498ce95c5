"""jmlr_jax: Joint Medical LLM and Retrieval training (JMLR) in JAX/Flax."""
from setuptools import find_packages, setup

# Pins validated together on Python 3.11 (see ../shared/STACK.md). scann needs numpy ~= 2.0;
# protobuf < 7 keeps xmanager installable for launch/xm_launch.py.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "tensorflow-datasets==4.9.10",
    # tfds resolves a builder's code path with importlib_resources for builders defined inside a package
    # (jmlr_jax/data/tfds_builders.py) but does not declare it.
    "importlib_resources==7.1.0",
    "sentencepiece==0.2.3",
    "scann==1.4.2",
    "gin-config==0.5.0",
    "numpy==2.4.6",
    "protobuf==6.33.6",
    # Weights and tokenizers: safetensors (no pickle), HF `tokenizers` (BPE / WordPiece from tokenizer.json),
    # gguf (reads llama.cpp files and dequantises Q4_1 / Q8_0 blocks; we do not hand-write that).
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "gguf==0.19.0",
    "tqdm==4.70.1",
    # TensorBoard event files without TensorFlow (deps: numpy, packaging, protobuf, already required).
    "tensorboardX==2.6.5",
    # Generation metrics of the seed pipelines (BLEU-1, ROUGE-1/L): the maintained reference implementations.
    "sacrebleu==2.6.0",
    "rouge-score==0.1.2",
]

TEST_REQUIRES = [
    "pytest==9.0.3",
    # torch pinned exactly: 2.13.0 resolves to a CPU wheel; anything else pulls a multi-GB CUDA build.
    "torch==2.13.0",
    "transformers==5.23.0",
]

setup(
    name="jmlr_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of JMLR: joint medical LLM and retrieval training",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["jmlr_jax", "jmlr_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)

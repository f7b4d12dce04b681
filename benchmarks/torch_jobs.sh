#!/usr/bin/env bash
# The GPU work of issues 24 and 25, which needs no TensorRT: the recipes batched against their projects' loops,
# then a run's fixed cost before and after (when .fixed_cost/before is there), then the tiled recipes again on
# the compiled backend (last: its compiles take minutes). Carry .whl (benchmarks/wheels.sh: open_clip for the
# checkpoint) and .fixed_cost. trt85/run.sh runs the same as one
# of its stages; alone, it is started in a session of its own (it outlives the device call), writing into
# /tmp/torch_jobs/results, so trt85/collect.sh brings it back:
#   bash benchmarks/torch_jobs.sh start [CONDITIONS]     then   COLLECT_ROOT=/tmp/torch_jobs bash benchmarks/trt85/collect.sh SECONDS
#   bash benchmarks/torch_jobs.sh run RESULTS [CONDITIONS]      (the stages themselves, in the foreground)
# CONDITIONS: fixed_cost.sh's [image]. COMPILED_RECIPES=0 leaves out the last stage (about 5 minutes of compiles).
set -uo pipefail
root=/tmp/torch_jobs
if [ "${1:-}" = start ]; then
  mkdir -p "$root/results"; rm -f "$root/done"
  setsid nohup bash -c "bash benchmarks/torch_jobs.sh run $root/results ${2:-image} > $root/results/run.log 2>&1; touch $root/done" \
    < /dev/null > /dev/null 2>&1 &
  echo "started (log: $root/results/run.log)"; exit 0
fi
res=$2; conditions=${3:-image}; mkdir -p "$res"
source benchmarks/device_env.sh
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$root/inductor}  # run.sh's, when it runs these
stage() { echo "=== $(date +%T) $*"; }
[ -f "$res/hwinfo.md" ] || python3 -m lseg_trt.cli hwinfo > "$res/hwinfo.md" 2>&1
# the checkpoint and frames (CPU work) beside the recipes; a no-op where run.sh made them already
[ -d .fixed_cost/before/src ] && { bash benchmarks/fixed_cost.sh prep > "$res/fixed_cost-prep.log" 2>&1 & prep=$!; }
recipes() {  # OUT ARGS...: ViT-L/16's recipes in fp16, batched, against the projects' fp32 loops
  local out=$1; shift
  python3 benchmarks/recipes_bench.py --out "$res/$out" --variant vit_l16 --weights random --device cuda \
    --precisions fp16 "$@" 2> "$res/$out.log" | grep -o "'recipe': '[a-z0-9-]*'\|'speedup_vs_fp32_loop': [0-9.]*"
}
stage "downstream recipes batched (torch-fp16+graph) vs their projects' loops (issue 25)"
recipes recipes
stage "fixed cost of a run, stage by stage, before and after (issue 24)"
if [ -n "${prep:-}" ]; then
  wait "$prep"; tail -3 "$res/fixed_cost-prep.log"
  bash benchmarks/fixed_cost.sh "$res/fixed_cost" 1 "$conditions" | tail -45
fi
[ "${COMPILED_RECIPES:-1}" = 1 ] || { stage "done (COMPILED_RECIPES=0)"; exit 0; }
stage "the tiled recipes on the backend extract --recipe picks on a GPU (compiles each call shape first)"
recipes recipes-compiled --fp16-backend torch-compile-fp16+graph --recipes langseg-eval,dff,feature-3dgs,vlmaps,openscene

#!/usr/bin/env bash
# The TensorRT 8.5 run of issue 22 on the GPU machine, after receive.sh has unpacked TensorRT to /tmp/trt85/pkg.
# Engines are built through `lseg-trt build` and run through `lseg-trt bench`, `fidelity` and `extract --engine`
# beside the torch backends (fp32 eager, the seed's baseline; torch-compile-fp16+graph, our best), in one run on
# one machine. Stages go in order of value, each writing its results as soon as it ends, so a run cut short by
# the device time still returns what it finished; collect.sh packs them. Usage (started by start.sh):
#   bash benchmarks/trt85/run.sh RESULTS_DIR [all|vit|rn101]
# all: RN101-ZS's fp16 engine built while ViT-L/16 exports, then ViT-L/16's built and measured, then RN101-ZS's
# measured, then the rest; vit: ViT-L/16's engine built and measured before RN101-ZS's is built; rn101:
# RN101-ZS's fp16 engine only, for a short lease.
# The stub cuBLAS/cuDNN libraries of this TensorRT package leave TensorRT its own kernels only: every build
# passes --tactic-sources none (a TensorRT installed with its libraries needs no such option). The timing cache
# (one per GPU model) is read from benchmarks/trt85/timing/ when present and written back with the results.
set -uo pipefail
res=$1; only=${2:-all}; mkdir -p "$res"
source benchmarks/device_env.sh
export PYTHONPATH=/tmp/trt85/pkg:$PYTHONPATH TORCHINDUCTOR_CACHE_DIR=/tmp/trt85/inductor
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
timing=/tmp/trt85/trt8.5.3.1-$gpu.timing
[ -f "$timing" ] || cp "benchmarks/trt85/timing/$(basename "$timing")" "$timing" 2>/dev/null || true
L="python3 -m lseg_trt.cli"
stage() { echo "=== $(date +%T) $*"; }
python3 -m lseg_trt.cli hwinfo > "$res/hwinfo.md" 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv >> "$res/hwinfo.md" 2>&1

PROFILE="--min-shape 1x3x256x256 --opt-shape 1x3x480x480 --max-shape 8x3x1024x1024"  # engine()'s, unless given
engine() {  # VARIANT PRECISION_FLAGS... -> path of the built engine (log in $res/build-*.log)
  local variant=$1; shift
  local tag; tag=$(echo "$variant $* $PROFILE" | tr -c 'a-z0-9\n' '-' | cut -c1-120)
  # shellcheck disable=SC2086 # the profile is three options
  $L build --onnx "models/onnx/lseg_${variant}_random_fp32.onnx" --tactic-sources none --timing-cache "$timing" \
    $PROFILE --out models/engines "$@" \
    2> "$res/build-$tag.log" | tail -1
  grep -v "^\[tensorrt\] WARNING" "$res/build-$tag.log" | tail -3 >&2
  mkdir -p "$res/engines"; cp models/engines/*.json "$res/engines/" 2>/dev/null  # sidecars: build time, size
  cp "$timing" "$res/" 2>/dev/null
}
export_onnx() { $L export --weights random --variant "$1" --opset 16 --out models/onnx 2>&1 | tail -3; }
bench() {  # OUT_NAME ARGS...
  local name=$1; shift
  $L bench --out "$res/$name" "$@" 2> "$res/$name.log" | grep -v "^wrote"
}
fidelity() { local name=$1; shift; $L fidelity --out "$res/$name" "$@" 2> "$res/$name.log" | grep -v "^wrote"; }
warm() {  # fill Inductor's cache for the torch rows while TensorRT builds (CPU work; timings discarded)
  $L bench --weights random --variant "$1" --backends torch-compile-fp16+graph --iterations 1 --warmup 0 \
    --no-ceiling --out /tmp/trt85/warm "${@:2}" > /dev/null 2>&1
}

quiet_cpu() {  # timings wait for the CPU work started beside the builds: eager launches wait on the host
  [ -n "${vitexp:-}" ] && wait "$vitexp"
  [ -n "${prep:-}" ] && wait "$prep"
  return 0
}
rn101_build() {  # sets rn16
  stage "RN101-ZS: export (opset 16), fp16 engine"
  export_onnx rn101_zs
  warm rn101_zs --sizes 480 1024 &
  local warmed=$!
  rn16=$(engine rn101_zs); echo "$rn16"; wait $warmed
}
rn101_measure() {
  quiet_cpu
  stage "RN101-ZS: bench and fidelity, fp16 engine beside torch"
  bench bench-rn101-b1 --weights random --variant rn101_zs --sizes 480 1024 \
    --backends torch,torch-compile-fp16+graph --engine "$rn16"
  fidelity fidelity-rn101-fp16 --weights random --variant rn101_zs --engine "$rn16" --backends torch-compile-fp16
}
vit_build() {  # sets vit16
  stage "ViT-L/16: fp16 engine"
  wait "$vitexp"; cat "$res/export-vit.log"
  (warm vit_l16 --sizes 480 480x640 1024; warm vit_l16 --sizes 480x640 --batch 8) &
  local warmed=$!
  vit16=$(engine vit_l16); echo "$vit16"; wait $warmed
}
vit_measure() {
  quiet_cpu
  stage "ViT-L/16: bench b1 and b8, fidelity"
  bench bench-vit-b1 --weights random --variant vit_l16 --sizes 480 480x640 1024 \
    --backends torch,torch-compile-fp16+graph --engine "$vit16"
  bench bench-vit-b8 --weights random --variant vit_l16 --sizes 480x640 --batch 8 \
    --backends torch,torch-compile-fp16+graph --engine "$vit16"
  fidelity fidelity-vit-fp16 --weights random --variant vit_l16 --engine "$vit16" --backends torch-compile-fp16
}

if [ "$only" != rn101 ]; then
  stage "ViT-L/16's export and issue 24's inputs (CPU work, beside the first engine's build)"
  export_onnx vit_l16 > "$res/export-vit.log" 2>&1 & vitexp=$!
  [ -d .fixed_cost/before/src ] && { bash benchmarks/fixed_cost.sh prep > "$res/fixed_cost-prep-early.log" 2>&1 & prep=$!; }
fi
case $only in
  rn101) rn101_build; rn101_measure; stage "done"; exit 0 ;;
  vit) vit_build; vit_measure; rn101_build; rn101_measure ;;
  *) rn101_build; vit_build; vit_measure; rn101_measure ;;  # RN101's build overlaps ViT's CPU export
esac

extract_end_to_end() {  # ENGINE TAG: the seed's Feature_Extractor job, device-only beside end to end, then the CLI
  python3 benchmarks/pipeline_bench.py --device cuda --engine "$1" --backend tensorrt+graph --size 480x640 \
    --batch 8 --frames 512 --pool 4 --workers 14 --work /tmp/trt85/pipe --out "$res/pipeline-$2" \
    2> "$res/pipeline-$2.log" | head -12
  TIMEFORMAT="extract --engine ($2): %R s wall"
  time $L extract --engine "$1" --images /tmp/trt85/pipe/frames --sizes 480x640 --batch 8 --pool 4 \
    --out "/tmp/trt85/extract-$2" > "$res/extract-$2.log" 2>&1
  tail -4 "$res/extract-$2.log"
}
stage "extract --engine end to end; layer profiles"
extract_end_to_end "$vit16" vit-fp16
extract_end_to_end "$rn16" rn101-fp16
python3 benchmarks/trt_layer_profile.py --engine "$vit16" --shape 1x3x480x480 --out "$res/profile" 2>&1 | tail -30
python3 benchmarks/trt_layer_profile.py --engine "$rn16" --shape 1x3x480x480 --out "$res/profile" 2>&1 | tail -14

stage "ViT-L/16: fp16 engine with FASTER_DYNAMIC_SHAPES_0805, the preview feature TensorRT 8.6 turned on by default"
vitpv=$(engine vit_l16 --preview-features faster_dynamic_shapes_0805); echo "$vitpv"
bench bench-vit-b1-preview --sizes 480 480x640 1024 --engine "$vitpv"  # the default engine's: bench-vit-b1
bench bench-vit-b8-preview --sizes 480x640 --batch 8 --engine "$vitpv"
fidelity fidelity-vit-fp16-preview --weights random --variant vit_l16 --engine "$vitpv"

# the recipes (issue 25), then the fixed cost (issue 24), unless torch_jobs.sh start ran them on this machine
# already; after the engines' end-to-end figures, before the fp32 engines' long builds
[ -f /tmp/torch_jobs/done ] || bash benchmarks/torch_jobs.sh run "$res" image

stage "RN101-ZS: an engine whose one profile is 1x3x480x480 (issue 22's hand-made 1.512 ms engine had it)"
rnst=$(PROFILE="--min-shape 1x3x480x480 --opt-shape 1x3x480x480 --max-shape 1x3x480x480" engine rn101_zs)
echo "$rnst"
bench bench-rn101-static480 --sizes 480 --engine "$rnst" --engine "$rn16"

stage "RN101-ZS: fp32 engines, TF32 off and on"
rn32=$(engine rn101_zs --no-fp16); rntf=$(engine rn101_zs --no-fp16 --tf32); echo "$rn32 $rntf"
bench bench-rn101-b1-fp32 --sizes 480 1024 --engine "$rn32" --engine "$rntf"
fidelity fidelity-rn101-fp32 --weights random --variant rn101_zs --engine "$rn32" --engine "$rntf"

stage "ViT-L/16: fp32 engines, TF32 off and on"
vit32=$(engine vit_l16 --no-fp16); echo "$vit32"
bench bench-vit-b1-fp32 --sizes 480 480x640 1024 --engine "$vit32"
fidelity fidelity-vit-fp32 --weights random --variant vit_l16 --engine "$vit32"
vittf=$(engine vit_l16 --no-fp16 --tf32); echo "$vittf"
bench bench-vit-b1-tf32 --sizes 480 480x640 1024 --engine "$vittf"
bench bench-vit-b8-fp32 --sizes 480x640 --batch 8 --engine "$vit32" --engine "$vittf"
fidelity fidelity-vit-tf32 --weights random --variant vit_l16 --engine "$vittf"
ls -la models/engines > "$res/engines.txt"
stage "done"

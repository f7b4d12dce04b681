#!/usr/bin/env bash
# The GPU latency run of issue #5 (device tool: one NVIDIA H100/H200, torch only: TensorRT is not
# installed there, and TensorRT-RTX refuses Hopper). Usage, in the repository root on the GPU machine:
#   bash benchmarks/gpu_bench.sh OUT_DIR VARIANT [extra bench args]
set -euo pipefail
out=$1; variant=$2; shift 2
source benchmarks/device_env.sh
mkdir -p "$out"
python3 -m lseg_trt.cli hwinfo > "$out/hwinfo-$variant.md"
python3 -m lseg_trt.cli bench --variants "$variant" \
  --sizes 256 320 384 480 640 768 1024 \
  --backends torch,torch+graph,torch-fp16,torch-fp16+graph,torch-compile-fp16,torch-compile-fp16+graph \
  --cache /tmp/lseg-cache --out "$out/$variant" "$@"

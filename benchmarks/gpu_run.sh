#!/usr/bin/env bash
# The GPU runs of issues 11-13 on the device tool's machine (torch backends only: TensorRT is not installed
# there, and TensorRT-RTX refuses Hopper). Usage, in the repository root on the GPU machine:
#   bash benchmarks/gpu_run.sh OUT_DIR pipeline|multi|speed|profile|regional [ARGS]
# Each part writes its JSON/Markdown under OUT_DIR and its log beside them.
set -uo pipefail
out=$1; part=$2
source benchmarks/device_env.sh
mkdir -p "$out"
python3 -m lseg_trt.cli hwinfo > "$out/hwinfo.md" 2>&1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$out/hwinfo.md" 2>&1
case "$part" in
  pipeline)
    python3 benchmarks/pipeline_bench.py --device cuda --variant vit_l16 --backend torch-compile-fp16+graph \
      --size 480x640 --batch 8 --frames 2048 --pool 4 --workers 14 --cache /tmp/lseg-cache --work /tmp/pipe \
      --out "$out/pipeline" 2>&1 | tee "$out/pipeline.log" | grep -v "it/s\]$" ;;
  multi)
    python3 benchmarks/multi_gpu_bench.py --out "$out/multi" "${@:3}" 2>&1 | tee "$out/multi.log" ;;
  speed)
    python3 benchmarks/gpu_speed.py "$out/speed" "${@:3}" 2>&1 | tee "$out/speed.log" ;;
  profile)
    python3 benchmarks/profile_gpu.py "${@:3}" > "$out/profile.md" 2> "$out/profile.log" ;;
  regional)
    python3 benchmarks/regional_compile.py "$out/regional" --device cuda --size 480x640 "${@:3}" 2>&1 | tee "$out/regional.log" ;;
esac

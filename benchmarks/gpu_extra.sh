#!/usr/bin/env bash
# Second part of the GPU run: the ResNet-101 latency table, ONNX Runtime (CPU) at one size for
# reference, and a kernel-time profile of ViT-L/16 fp16. Usage: bash benchmarks/gpu_extra.sh OUT_DIR
set -euo pipefail
out=$1
source benchmarks/device_env.sh
bash benchmarks/gpu_bench.sh "$out" rn101_zs
python3 -m lseg_trt.cli bench --device cpu --variants vit_l16,rn101_zs --backends onnxruntime,torch \
  --sizes 480 --iterations 5 --warmup 1 --cache /tmp/lseg-cache --out "$out/ort_cpu"
python3 benchmarks/profile_gpu.py vit_l16 480 1024 > "$out/profile_vit_l16.md"
cat "$out/profile_vit_l16.md"

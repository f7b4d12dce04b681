#!/usr/bin/env bash
# The GPU fidelity run of issue #6: torch fp16 / bf16 / compile (fp32, fp16) vs torch fp32, both
# variants (embedded default weights), the three sample photos, up to 1024x1024.
# Usage, in the repository root on the GPU machine: bash benchmarks/gpu_fidelity.sh OUT_DIR
set -euo pipefail
out=$1
source benchmarks/device_env.sh
python3 -m lseg_trt.cli fidelity --backends torch-fp16,torch-bf16,torch-compile,torch-compile-fp16 \
  --sizes 480x640 1024 --cache /tmp/lseg-cache --out "$out/fidelity" || echo "fidelity exit code $?"
tar czf "$out/fidelity.tgz" -C "$out" fidelity

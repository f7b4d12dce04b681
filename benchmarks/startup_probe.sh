#!/usr/bin/env bash
# Where a warm start's seconds go on the GPU host (issue 13's "warm start to first features <= 15 s").
# Usage, repository root on the GPU machine: bash benchmarks/startup_probe.sh OUT_DIR [PYCACHE_DIR]
# With PYCACHE_DIR, Python keeps the bytecode it compiles there (PYTHONPYCACHEPREFIX), as a package that
# pip installed has it beside its sources; bytecode.txt records whether the device image's packages do
# and whether PYTHONDONTWRITEBYTECODE is set.
# Writes: hwinfo.md; bytecode.txt (as the image is, then with PYCACHE_DIR); startup.txt (interpreter
# start, `import torch`, our imports, CUDA init, Inductor's import, each timed three times in fresh
# processes, then one more warm child's stage times); importtime-*.txt (`python -X importtime`, the 40
# slowest modules by cumulative time); speed/ (gpu_speed.py's coldstart section, cold then warm, which
# fills the compile caches). Eight files: all the device tool brings back.
set -uo pipefail
out=$1
source benchmarks/device_env.sh
mkdir -p "$out"
python3 benchmarks/bytecode_facts.py > "$out/bytecode.txt" 2>&1
if [ $# -ge 2 ]; then
  export PYTHONPYCACHEPREFIX=$2
  unset PYTHONDONTWRITEBYTECODE  # else nothing is written there
  python3 -c "import lseg_trt.backends, lseg_trt.models, torch._inductor.compile_fx" >/dev/null 2>&1  # fills it
  python3 benchmarks/bytecode_facts.py >> "$out/bytecode.txt" 2>&1
fi
cat "$out/bytecode.txt"
python3 -m lseg_trt.cli hwinfo > "$out/hwinfo.md" 2>&1
LSEG_IMPORTS="from lseg_trt.backends import make_runner, parse_backend; from lseg_trt.models import load_lseg"

seconds() {  # seconds of one fresh process running the given Python code ("failed" if it failed)
  local start end
  start=$(date +%s.%N)
  python3 -c "$1" >/dev/null 2>&1 || { echo failed; return; }
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.2f}')"
}
{
  for what in "pass" "import torch" "$LSEG_IMPORTS" "import torch; torch.zeros(1, device='cuda')" \
      "import torch, torch._inductor.compile_fx"; do
    echo "$what: $(seconds "$what") $(seconds "$what") $(seconds "$what") s"
  done
} > "$out/startup.txt"
cat "$out/startup.txt"

top_imports() {  # the 40 slowest imports (cumulative microseconds) of one fresh process
  python3 -X importtime -c "$1" 2>&1 >/dev/null | sort -t'|' -k2 -n -r | head -40
}
top_imports "import torch" > "$out/importtime-torch.txt"
top_imports "$LSEG_IMPORTS" > "$out/importtime-lseg.txt"

cache=/tmp/gs
python3 benchmarks/gpu_speed.py "$out/speed" --only coldstart --cases vit_l16:1x480x480 \
  --coldstart torch-compile-fp16+graph --budget-s 120 --cache-dir "$cache" 2>&1 | tail -5

folder=$cache/coldstart/torch-compile-fp16+graph
TORCHINDUCTOR_CACHE_DIR=$folder/inductor TRITON_CACHE_DIR=$folder/triton python3 benchmarks/gpu_speed.py \
  "$out/speed" --device cuda --cache-dir "$cache" --child torch-compile-fp16+graph --cases vit_l16:1x480x480 \
  --checkpoint "$cache/coldstart/vit_l16.ckpt" --launched-at "$(date +%s.%N)" | tee -a "$out/startup.txt"

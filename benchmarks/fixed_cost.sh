#!/usr/bin/env bash
# Issue 24 on the GPU machine: a run's fixed cost stage by stage, before and after, in one run.
# Before: the tree in .fixed_cost/before (made here beforehand, carried to the device as an ignored path):
#   rm -rf .fixed_cost/before && mkdir -p .fixed_cost/before && git archive 3c786dd src | tar -x -C .fixed_cost/before
# After: this checkout. Usage, repository root on the GPU machine:
#   bash benchmarks/fixed_cost.sh prep                          random ViT-L/16 weights saved as a lang-seg checkpoint
#                                                               (1.7 GB) and 1024 frames: CPU work, run it early
#   bash benchmarks/fixed_cost.sh OUT [REPEATS] [CONDITIONS]    CONDITIONS: image (Python as the device image runs
#                                                               it: no bytecode), bytecode, or both [image,bytecode]
set -uo pipefail
source benchmarks/device_env.sh
export FIXED_COST_EXTRA_PATH=$(echo "$PYTHONPATH" | tr ':' '\n' | grep -v "^$PWD/src$" | paste -sd:)
work=/tmp/fixed_cost
mkdir -p "$work"
if [ ! -f "$work/vit_l16.ckpt" ]; then
  python3 -c "
from lseg_trt.models import random_lseg
from lseg_trt.models.synthetic import save_lightning_checkpoint
save_lightning_checkpoint(random_lseg('vit_l16'), '$work/vit_l16.part.ckpt')" && mv "$work/vit_l16.part.ckpt" "$work/vit_l16.ckpt"
fi
python3 -c "
import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks')
from fixed_cost import make_frames; make_frames(Path('$work/frames'), 1024)"
[ "$1" = prep ] && exit 0
out=$1; repeats=${2:-1}; conditions=${3:-image,bytecode}
mkdir -p "$out"
python3 benchmarks/fixed_cost.py "$out" --weights "$work/vit_l16.ckpt" --tree before=.fixed_cost/before \
  --tree after=. --conditions "$conditions" --repeats "$repeats" --frames 1024 --scratch "$work" 2> "$out/fixed_cost.log"

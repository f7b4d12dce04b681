#!/usr/bin/env bash
# The wheels the GPU scripts carry to the device image, which lacks them and reaches no registry: open_clip_torch
# (and its ftfy, wcwidth) for checkpoints, text and the fixed-cost stages; simplejpeg for the JPEG decoder.
# Run here once; then every device call that runs a script sourcing device_env.sh carries ".whl".
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_17_x86_64 -d .whl open_clip_torch ftfy wcwidth simplejpeg
ls .whl

#!/usr/bin/env bash
# TensorRT 8.5.3.1 to the GPU machine, one part per device call (a call carries at most 64 MiB; ignored files
# stay on the machine between calls while it is held). Here, once: `shared/tools/trt85/build.sh ... .trt85/out`,
# then `benchmarks/trt85/parts.sh` (55 MiB parts p00..p09 and .trt85/out/SHA256SUMS). Then one device call per
# part, back to back (about 4 s each), each carrying `.trt85/out/parts/pNN` and `.trt85/out/SHA256SUMS`:
#   bash benchmarks/trt85/receive.sh NN
# Each part is checked against its sha256 and moved to /tmp/trt85/parts; once every part listed in SHA256SUMS
# is there, they are joined and unpacked to /tmp/trt85/pkg/tensorrt and TensorRT is imported and asked for a
# builder on the GPU. Nothing here enters the package: users install TensorRT as they normally do.
set -euo pipefail
part=p$1
sums=.trt85/out/SHA256SUMS
mkdir -p /tmp/trt85/parts
if [ -f ".trt85/out/parts/$part" ]; then
  (cd .trt85/out/parts && grep " $part\$" "$OLDPWD/$sums" | sha256sum -c --quiet -) || { echo "part $part is damaged"; exit 1; }
  mv ".trt85/out/parts/$part" /tmp/trt85/parts/
fi
have=$(ls /tmp/trt85/parts | wc -l); want=$(wc -l < "$sums")
echo "part $part received: $have of $want parts on this machine"
if [ "$have" -eq "$want" ] && [ ! -f /tmp/trt85/pkg/tensorrt/tensorrt.so ]; then
  (cd /tmp/trt85/parts && sha256sum -c --quiet "$OLDPWD/$sums")
  mkdir -p /tmp/trt85/pkg && cat /tmp/trt85/parts/p* | tar -xz -C /tmp/trt85/pkg
  PYTHONPATH=/tmp/trt85/pkg python3 -c "
import tensorrt as trt
builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
print('TensorRT', trt.__version__, 'builder on the GPU:', builder is not None, 'fast fp16:', builder.platform_has_fast_fp16)"
fi

#!/usr/bin/env bash
# Re-splits the TensorRT package that `shared/tools/trt85/build.sh ... .trt85/out` made into 55 MiB parts and
# lists their sha256 in .trt85/out/SHA256SUMS, for receive.sh. 55, not build.sh's 60: a device call carries at
# most 64 MiB in all, and the repository's own files (about 4 MB) travel with every part.
set -euo pipefail
out=${1:-.trt85/out}
tmp=$(mktemp -d "$out/parts.XXXX")
cat "$out"/parts/p* | split -b $((55 << 20)) -d -a 2 - "$tmp/p"
rm -rf "$out/parts" && mv "$tmp" "$out/parts"
(cd "$out/parts" && sha256sum p*) > "$out/SHA256SUMS"
wc -l < "$out/SHA256SUMS" | xargs echo "parts:"

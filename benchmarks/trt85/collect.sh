#!/usr/bin/env bash
# Waits up to SECONDS for run.sh to end (or for MARKER to appear in its log), then packs every result it has
# written so far into $OUT/results.tgz and its log into $OUT/run.log. Usage: collect.sh SECONDS [MARKER]
set -uo pipefail
deadline=$((SECONDS + $1)); marker=${2:-}; root=${COLLECT_ROOT:-/tmp/trt85}
while [ ! -f $root/done ] && [ $SECONDS -lt $deadline ]; do
  if [ -n "$marker" ] && grep -q -- "$marker" $root/results/run.log 2>/dev/null; then break; fi
  sleep 5
done
tar -C "$root" -czf "$OUT/results.tgz" results
cp $root/results/run.log "$OUT/run.log"
[ -f $root/done ] && echo "run.sh has ended" || echo "run.sh is still running"
grep -v "it/s\]\|s/it\]" $root/results/run.log | tail -60

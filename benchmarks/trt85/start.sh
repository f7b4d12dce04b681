#!/usr/bin/env bash
# Starts run.sh in a session of its own, so it outlives this device call (the machine stays while calls follow
# within its idle window); collect.sh waits on it and brings back what it has written. Usage: start.sh [all|vit|rn101]
set -euo pipefail
[ -f /tmp/trt85/pkg/tensorrt/tensorrt.so ] || { echo "TensorRT is not unpacked: run receive.sh for every part"; exit 1; }
mkdir -p /tmp/trt85/results
setsid nohup bash -c "bash benchmarks/trt85/run.sh /tmp/trt85/results ${1:-all} > /tmp/trt85/results/run.log 2>&1; touch /tmp/trt85/done" \
  < /dev/null > /dev/null 2>&1 &
echo "started run.sh (log: /tmp/trt85/results/run.log)"

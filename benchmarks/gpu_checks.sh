#!/usr/bin/env bash
# The GPU checks in one go, for a GPU runner or a lent machine: correctness first (fixtures, search), then the
# encode throughput (the shipped config on the whole corpus, a batch_tokens sweep, a real out-of-memory back-off).
# Logs go to $OUT (default ./gpu-logs). Needs torch, transformers and the fixtures under --shared (default
# .device/shared): mkdir -p .device/shared && cp -r ../shared/fixtures .device/shared/
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-logs}
SHARED=${SHARED:-.device/shared}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep the log, go on after a failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" || { echo "=== $name FAILED (rc $?)"; status=1; }
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/device.log"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/device.log"
step fixtures 90 $PY benchmarks/gpu_fixture_check.py --shared "$SHARED"
step search 90 $PY benchmarks/gpu_search_check.py
step encode 150 $PY benchmarks/bench_gpu_encode.py
step encode_sweep 150 $PY benchmarks/bench_gpu_encode.py --docs 1500 --batch-tokens 32768,65536,131072,262144
step encode_oom 100 $PY benchmarks/bench_gpu_encode.py --docs 1000 --batch-size 4096 --batch-tokens 2000000
exit $status

#!/usr/bin/env bash
# On the GPU machine (the device tool runs it from the repo root with
# device-stage/ carried): checks every CUDA op against the CPU backend, the
# whole model, the server's integration tests on --device cuda, then times the
# attention kernels beside PyTorch. Results go to $OUT.
set -uo pipefail
S=$PWD/device-stage
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[[ -d $S/lib ]] || tar -C "$S" -xJf "$S/lib.tar.xz"
cublas=$(dirname "$(find / -name 'libcublasLt.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$S/lib:$cublas:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/device.txt"
status=0
for dtype in bf16 f16; do
  "$S/bin/tinygpt_backend_ops" --dtype=$dtype "$S/seed.safetensors" > "$OUT/backend_ops_$dtype.txt" 2>&1 || status=1
  grep -E "FAIL|passed" "$OUT/backend_ops_$dtype.txt" | tail -15
done
"$S/bin/tinygpt" generate --checkpoint "$S/seed.safetensors" --device cuda --prompt-ids 10,11,12 --max-new-tokens 8 --json
TINYGPT_BIN=$S/bin/tinygpt TINYGPT_TEST_SERVER_FLAGS=--device=cuda "$S/bin/server_test" > "$OUT/server_test_cuda.txt" 2>&1 || status=1
grep -E "^\[  |Failure|error" "$OUT/server_test_cuda.txt" | head -30
"$S/bin/tinygpt_attention_bench" > "$OUT/attention_ours.jsonl" 2> "$OUT/attention_bench.err" || status=1
PYTHONUNBUFFERED=1 python3 bench/attention_report.py "$OUT/attention_ours.jsonl" "$OUT" > "$OUT/attention_report.txt" 2>&1 || status=1
cat "$OUT/attention_report.txt"
exit $status

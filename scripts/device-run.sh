#!/usr/bin/env bash
# On the GPU machine (the device tool runs it from the repo root with
# device-stage/ carried): checks every CUDA op against the CPU backend, the
# whole model, the server's integration tests on --device cuda, then times the
# attention kernels beside PyTorch, and the CPU backend (engine steps, serving,
# training beside PyTorch) on the machine's CPU cores. Results go to $OUT (at
# most 8 files come back: log.txt, backend_ops_{bf16,f16}.txt,
# server_test_cuda.txt, attention_ours.jsonl, attention.md,
# attention_memory.png, cpu.md; `ncu` mode writes ncu.txt).
# usage: scripts/device-run.sh [checks|bench|cpu|checks+cpu|ncu|features|serve|serve-quick|serve-checks|warm-stream|profile|decode|dp|all]   (default all: checks, bench, cpu)
#        features: logprobs, penalties, n and prefix caching served on CUDA beside the CPU (features_{bf16,f16}.txt)
#        TRAIN_THREADS=1,16 picks the thread counts of the CPU training comparison.
#        serve: the serving benchmark of issues #12/#14 (bench/serve_gpu_bench.py: tinygpt serve --device cuda with a random
#        bench-125m checkpoint beside a PyTorch static-graph decoder and HF generate_batch); writes serving.md,
#        serving.png, serving.jsonl, servers.log and serve_log.txt. serve-quick: its shorter variant (--quick).
#        serve-checks: the bf16 backend-ops check and server_test on CUDA, then serve-quick. SERVE_SECONDS (540)
#        is the serving bench's own time budget; SERVE_PARTS picks its parts (e.g. SERVE_PARTS=openai: HTTP vs
#        gRPC streaming at 64 and 256 concurrent streams).
#        warm-stream: issue #20 (warm start, streaming beside unary, steady state and cold start): the bf16 backend-ops
#        check, the f16 non-finite cases, server_test on CUDA (SERVER_TEST=0 skips it), then bench/serve_gpu_bench.py
#        --parts steady,torch,floor (SERVE_PARTS overrides; SERVE_SECONDS 330).
set -uo pipefail
what=${1:-all}
S=$PWD/device-stage
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
log=$OUT/log.txt
[[ -d $S/lib ]] || tar -C "$S" -xJf "$S/lib.tar.xz"
[[ -d $S/bin ]] || tar -C "$S" -xJf "$S/bin.tar.xz"
# cuBLASLt comes from the machine's CUDA toolkit (or PyTorch's wheel).
cublas=$(dirname "$( (ls /usr/local/cuda/lib64/libcublasLt.so.13* 2>/dev/null; find / -name 'libcublasLt.so.13*' -not -path '/proc/*' 2>/dev/null) | head -1)")
export LD_LIBRARY_PATH=$S/lib:$cublas:${LD_LIBRARY_PATH:-}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  echo "cublasLt from $cublas"
  # The instruction mix of each attention kernel (SASS): MMAs against the rest.
  command -v cuobjdump > /dev/null && cuobjdump --dump-sass "$S/bin/libtinygpt_cuda.so" | python3 bench/sass_mix.py
} 2>&1 | tee "$log"
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: runs with a limit, records the outcome
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" >> "$log"
  [[ $rc == 0 ]] || status=1
}
if [[ $what == all || $what == checks || $what == checks+cpu ]]; then
  for dtype in bf16 f16; do
    step "backend ops $dtype" 150 "$S/bin/tinygpt_backend_ops" --dtype=$dtype "$S/seed.safetensors" > "$OUT/backend_ops_$dtype.txt" 2>&1
    grep -E "^FAIL|passed|error|CUDA" "$OUT/backend_ops_$dtype.txt" | head -20 | tee -a "$log"
  done
  step "generate --device cuda" 60 "$S/bin/tinygpt" generate --checkpoint "$S/seed.safetensors" --device cuda \
    --prompt-ids 10,11,12 --max-new-tokens 8 --json >> "$log" 2>&1
  TINYGPT_BIN=$S/bin/tinygpt TINYGPT_TEST_SERVER_FLAGS=--device=cuda \
    step "server_test --device=cuda" 240 "$S/bin/server_test" > "$OUT/server_test_cuda.txt" 2>&1
  grep -E "^\[  |Failure|error|Expected|Which is" "$OUT/server_test_cuda.txt" | head -40 | tee -a "$log"
fi
if [[ $what == all || $what == bench ]]; then
  step "attention bench" 200 "$S/bin/tinygpt_attention_bench" > "$OUT/attention_ours.jsonl" 2>> "$log"
  PYTHONUNBUFFERED=1 step "attention report" 200 python3 bench/attention_report.py "$OUT/attention_ours.jsonl" "$OUT" >> "$log" 2>&1
  cat "$OUT/attention.md" 2>/dev/null
fi
if [[ $what == all || $what == cpu || $what == checks+cpu ]]; then
  # The CPU backend on this machine's cores: decode steps alone, serving through
  # gRPC (server, load generator and gRPC threads share the cores), training.
  cpu=$OUT/cpu.md
  { lscpu | grep -E "^Model name|^CPU\(s\)|^Thread|^Core|^Socket|^L2|^L3"; echo "cores for this process: $(nproc)"; } > "$cpu"
  for t in 1 4 8 16; do
    echo "engine steps, OMP_NUM_THREADS=$t:" >> "$cpu"
    OMP_NUM_THREADS=$t step "engine bench $t threads" 60 "$S/bin/tinygpt_engine_bench" "$S/seed.safetensors" >> "$cpu" 2>&1
  done
  for flags in "" "" "--server-arg=--threads=8"; do
    step "serve bench $flags" 150 python3 bench/serve_cpu.py "$S/bin" "$S/seed.safetensors" $flags >> "$cpu" 2>&1
  done
  step "train bench" 420 python3 bench/train_cpu_vs_torch.py "$S/bin" --steps 20 --rounds 3 --threads "${TRAIN_THREADS:-1,2,4,8,16}" >> "$cpu" 2>&1
  cat "$cpu"
fi
if [[ $what == features ]]; then
  # Serving features (logprobs, penalties, n, prefix caching) on CUDA beside the CPU.
  for dtype in bf16 f16; do
    step "features $dtype" 120 python3 bench/serve_features_check.py "$S/bin" "$S/seed.safetensors" \
      --gpu-flags="--device=cuda --dtype=$dtype" > "$OUT/features_$dtype.txt" 2>&1
    grep -E "^(PASS|FAIL)|passed" "$OUT/features_$dtype.txt" | tee -a "$log"
  done
fi
if [[ $what == ncu ]]; then
  # Stall reasons, occupancy and executed opcodes of the kernel on the prefill shapes.
  if command -v ncu > /dev/null; then
    for shape in "B8 M2048 H16 D128" "B8 M2048 H16 D64"; do
      TINYGPT_BENCH_ONLY="$shape" step "ncu $shape" 120 ncu --section SpeedOfLight --section WarpStateStats --section Occupancy \
        --section SchedulerStats --metrics "sass__inst_executed_per_opcode,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
        -k regex:PagedFlash --launch-skip 3 --launch-count 1 "$S/bin/tinygpt_attention_bench" >> "$OUT/ncu.txt" 2>&1
    done
  fi
fi
if [[ $what == profile ]]; then
  # Decode steps of the runner alone on a random bench-125m checkpoint: step
  # time by batch size with and without graphs, then GPU time op by op.
  ck=/tmp/bench-125m.safetensors
  step "bench-125m checkpoint" 120 python3 -c "import sys; sys.path.insert(0, 'bench'); import serve_gpu_bench as b; b.make_checkpoint('$ck', b.BENCH_125M)" >> "$log" 2>&1
  prof=$OUT/profile.txt
  for g in 1 0; do
    step "engine bench graphs=$g" 120 "$S/bin/tinygpt_engine_bench" "$ck" --device=cuda --batches=1,8,64,256 --ctx=330 --graphs=$g >> "$prof" 2>&1
  done
  for n in 1 256; do
    echo "op times, $n sequences per step, no graphs:" >> "$prof"
    TINYGPT_CUDA_OP_TIMES=1 step "op times $n" 120 "$S/bin/tinygpt_engine_bench" "$ck" --device=cuda --batches=$n --ctx=330 --graphs=0 >> "$prof" 2>&1
  done
  cat "$prof"
fi
if [[ $what == decode ]]; then
  # Issue #23 (the decode step) in one call: the bf16 op/runner checks (every
  # decode kernel against the CPU backend; DECODE_CHECKS=0 skips them), then
  # (DECODE_CHECKS=step: the decode step kernel's cases first, bf16 and f16),
  # decode steps of the runner alone on a random bench-125m checkpoint at
  # position 330 for each configuration in DECODE_AB (";"-separated sets of
  # environment assignments, "base" for none), decode attention beside
  # PyTorch SDPA, and Nsight Compute's per-kernel times of one step at 1 and
  # 256 sequences (kernel count, each kernel's time, DRAM bytes). DECODE_NCU=0
  # skips the profiles; DECODE_ATTN_AB=1 runs the attention bench once per
  # configuration (JSON lines only), DECODE_ATTN=0 none; DECODE_BATCHES: the engine bench's batch
  # sizes (1,8,64,256). DECODE_TRACE=1: then per configuration the step
  # kernel's phase trace and the op times with graphs off (DECODE_TRACE_BATCHES, 1,4).
  if [[ ${DECODE_CHECKS:-1} == step || ${DECODE_CHECKS:-1} == layers ]]; then  # the decode step kernel's cases (layers: only those)
    for dtype in bf16 f16; do
      step "backend ops $dtype layers" 120 "$S/bin/tinygpt_backend_ops" --dtype=$dtype --only=layers > "$OUT/backend_ops_layers_$dtype.txt" 2>&1
      grep -E "^FAIL|passed|error|CUDA" "$OUT/backend_ops_layers_$dtype.txt" | head -20 | tee -a "$log"
    done
  fi
  if [[ ${DECODE_CHECKS:-1} == step ]]; then  # then bf16 and f16 as below, no stream kernel
    step "backend ops bf16" 150 "$S/bin/tinygpt_backend_ops" --dtype=bf16 "$S/seed.safetensors" > "$OUT/backend_ops_bf16.txt" 2>&1
    grep -E "^FAIL|passed|error|CUDA" "$OUT/backend_ops_bf16.txt" | head -20 | tee -a "$log"
    step "backend ops f16" 150 "$S/bin/tinygpt_backend_ops" --dtype=f16 --only=inference "$S/seed.safetensors" > "$OUT/backend_ops_f16.txt" 2>&1
    grep -E "^FAIL|passed|error|CUDA" "$OUT/backend_ops_f16.txt" | head -20 | tee -a "$log"
    for dtype in bf16 f16; do  # the small-code forms of the decode attention kernel and the fused-norm GEMV (for the A/B)
      TINYGPT_DECODE_SMALL_CODE=1 TINYGPT_GEMV_SMALL_NORM=1 step "backend ops $dtype inference, small code" 150 \
        "$S/bin/tinygpt_backend_ops" --dtype=$dtype --only=inference "$S/seed.safetensors" > /tmp/small_code_$dtype.txt 2>&1
      { echo "== $dtype"; cat /tmp/small_code_$dtype.txt; } >> "$OUT/backend_ops_small_code.txt"  # one file: 8 come back
      grep -E "^FAIL|passed|error|CUDA" /tmp/small_code_$dtype.txt | head -20 | tee -a "$log"
    done
  elif [[ ${DECODE_CHECKS:-1} != 0 && ${DECODE_CHECKS:-1} != layers ]]; then  # DECODE_CHECKS=stream: all but the f16 checks
    step "backend ops bf16" 150 "$S/bin/tinygpt_backend_ops" --dtype=bf16 "$S/seed.safetensors" > "$OUT/backend_ops_bf16.txt" 2>&1
    grep -E "^FAIL|passed|error|CUDA" "$OUT/backend_ops_bf16.txt" | head -20 | tee -a "$log"
    if ! grep -q " 0 failed" "$OUT/backend_ops_bf16.txt"; then  # which part: the same checks without programmatic launch
      TINYGPT_PDL=0 step "backend ops bf16, TINYGPT_PDL=0" 150 "$S/bin/tinygpt_backend_ops" --dtype=bf16 --only=inference \
        "$S/seed.safetensors" 2>&1 | grep -E "^FAIL|passed|error|CUDA" | head -20 | tee -a "$log"
    fi
    if [[ ${DECODE_CHECKS:-1} != stream ]]; then
      step "backend ops f16" 150 "$S/bin/tinygpt_backend_ops" --dtype=f16 --only=inference "$S/seed.safetensors" > "$OUT/backend_ops_f16.txt" 2>&1
      grep -E "^FAIL|passed|error|CUDA" "$OUT/backend_ops_f16.txt" | head -20 | tee -a "$log"
    fi
    # The stream decode kernel (TINYGPT_DECODE_STREAM=1; the default is the
    # split kernel) on the same attention cases, then with one-tile runs and
    # up to 31 runs per (sequence, KV head): merges of up to 32 partials.
    TINYGPT_DECODE_STREAM=1 step "backend ops bf16 attention, stream kernel" 120 "$S/bin/tinygpt_backend_ops" --dtype=bf16 \
      --only=attention 2>&1 | grep -E "^FAIL|passed|error|CUDA" | head -20 | tee -a "$log"
    TINYGPT_DECODE_STREAM=1 TINYGPT_DECODE_STREAM_MAX_PARTS=31 TINYGPT_DECODE_STREAM_MIN_TILES=1 step \
      "backend ops bf16 attention, stream kernel, 31 parts" 120 "$S/bin/tinygpt_backend_ops" --dtype=bf16 --only=attention 2>&1 \
      | grep -E "^FAIL|passed|error|CUDA" | head -20 | tee -a "$log"
  fi
  ck=/tmp/bench-125m.safetensors
  step "bench-125m checkpoint" 120 python3 -c "import sys; sys.path.insert(0, 'bench'); import serve_gpu_bench as b; b.make_checkpoint('$ck', b.BENCH_125M)" >> "$log" 2>&1
  prof=$OUT/decode_profile.txt
  IFS=';' read -ra configs <<< "${DECODE_AB:-base}"
  for round in 1 2; do  # each configuration twice, interleaved: the spread between rounds is the noise
    for c in "${configs[@]}"; do
      echo "engine steps (graphs on), round $round, config: $c" >> "$prof"
      vars=(); [[ $c != base ]] && read -ra vars <<< "$c"
      step "engine bench [$c] round $round" 120 env "${vars[@]}" "$S/bin/tinygpt_engine_bench" "$ck" --device=cuda \
        --batches="${DECODE_BATCHES:-1,8,64,256}" --ctx=330 --graphs=1 >> "$prof" 2>&1
    done
  done
  if [[ ${DECODE_TRACE:-0} == 1 ]]; then  # where the step kernel's time goes: phase trace and op times, graphs off
    for c in "${configs[@]}"; do
      echo "engine steps (graphs off, TINYGPT_STEP_TRACE=1 TINYGPT_CUDA_OP_TIMES=1), config: $c" >> "$prof"
      vars=(); [[ $c != base ]] && read -ra vars <<< "$c"
      step "engine bench traced [$c]" 120 env TINYGPT_STEP_TRACE=1 TINYGPT_CUDA_OP_TIMES=1 "${vars[@]}" "$S/bin/tinygpt_engine_bench" "$ck" \
        --device=cuda --batches="${DECODE_TRACE_BATCHES:-1,4}" --ctx=330 --graphs=0 >> "$prof" 2>&1
    done
  fi
  if [[ ${DECODE_ATTN:-1} == 0 ]]; then  # no attention bench (a call about the linear layers)
    :
  elif [[ ${DECODE_ATTN_AB:-0} == 1 ]]; then  # the decode attention bench per configuration (JSON lines, no report)
    for c in "${configs[@]}"; do
      vars=(); [[ $c != base ]] && read -ra vars <<< "$c"
      echo "{\"kind\":\"config\",\"label\":\"$c\"}" >> "$OUT/attention_ours.jsonl"
      TINYGPT_BENCH_KIND=decode step "decode attention bench [$c]" 150 env "${vars[@]}" "$S/bin/tinygpt_attention_bench" \
        >> "$OUT/attention_ours.jsonl" 2>> "$log"
    done
  else
    TINYGPT_BENCH_KIND=decode step "decode attention bench" 150 "$S/bin/tinygpt_attention_bench" > "$OUT/attention_ours.jsonl" 2>> "$log"
    step "decode attention report" 200 python3 bench/decode_attention_report.py "$OUT/attention_ours.jsonl" "$OUT" >> "$log" 2>&1
  fi
  if [[ ${DECODE_NCU:-1} == step ]]; then
    # The decode step kernel at one sequence in detail: the stall reasons per
    # issued instruction (no_instruction: the instruction cache), the top
    # SASS locations, then its code size by source line (nvdisasm of
    # device-stage/step_lineinfo.cubin.xz, which scripts/stage-device.sh
    # builds with -lineinfo: bench-125m's instantiations, D64 bf16 without
    # ALiBi, of one row and of 2-4).
    TINYGPT_DECODE_STEP_KERNEL=1 TINYGPT_CUDA_PROFILE_FROM_SYNC=1 step "ncu decode step kernel n=1" 180 ncu --profile-from-start off \
      -k regex:DecodeStepKernel --launch-count 1 --section SpeedOfLight --section LaunchStats --section Occupancy \
      --section WarpStateStats --section InstructionStats --section SchedulerStats --section SourceCounters \
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
      "$S/bin/tinygpt_engine_bench" "$ck" --device=cuda --batches=1 --ctx=330 --graphs=0 --reps=1 > "$OUT/ncu_step_kernel.txt" 2>&1
    disasm=$(command -v nvdisasm || ls /usr/local/cuda/bin/nvdisasm 2> /dev/null)
    if [[ -f $S/step_lineinfo.cubin.xz && -n $disasm ]]; then
      xz -dc "$S/step_lineinfo.cubin.xz" > /tmp/step_lineinfo.cubin
      "$disasm" -g -c /tmp/step_lineinfo.cubin > /tmp/step.sass 2>> "$log"
      step "step kernel code by line" 60 python3 bench/sass_lines.py /tmp/step.sass 'DecodeStepKernel.*Li64E13__nv_bfloat16.*Lb0EL' \
        decode_step_kernel.cuh > "$OUT/step_sass_lines.md" 2>> "$log"
    fi
  fi
  if [[ ${DECODE_NCU:-1} == 1 ]] && command -v ncu > /dev/null; then
    # The default build's kernels, then (DECODE_NCU_PEER, environment
    # assignments) the same steps with the peer configuration, e.g. cuBLASLt
    # in place of the skinny GEMM.
    IFS=';' read -ra ncu_configs <<< "base${DECODE_NCU_PEER:+;$DECODE_NCU_PEER}"
    for c in "${ncu_configs[@]}"; do
      vars=(); [[ $c != base ]] && read -ra vars <<< "$c"
      for n in 1 256; do
        TINYGPT_CUDA_PROFILE_FROM_SYNC=1 step "ncu step kernels n=$n [$c]" 180 env "${vars[@]}" ncu --profile-from-start off \
          --cache-control none --clock-control none --csv --page raw \
          --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size \
          "$S/bin/tinygpt_engine_bench" "$ck" --device=cuda --batches=$n --ctx=330 --graphs=0 --reps=3 > "$OUT/ncu_n$n.csv" 2>> "$log"
        python3 bench/ncu_step_summary.py "$OUT/ncu_n$n.csv" 3 "$n sequences at position 330 [$c]" >> "$OUT/ncu_kernels.md" 2>> "$log"
        rm -f "$OUT/ncu_n$n.csv"
      done
    done
    # The decode attention kernel of one layer in detail (stall reasons and
    # their top SASS locations, memory): the split kernel, then the stream kernel.
    for stream in 0 1; do
      for n in 1 256; do
        TINYGPT_DECODE_STREAM=$stream TINYGPT_CUDA_PROFILE_FROM_SYNC=1 step "ncu decode attention n=$n stream=$stream" 120 ncu \
          --profile-from-start off -k "regex:Decode(Stream|Attention)Kernel" --launch-count 1 --section SpeedOfLight --section Occupancy \
          --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats \
          --section SourceCounters "$S/bin/tinygpt_engine_bench" "$ck" --device=cuda --batches=$n --ctx=330 --graphs=0 --reps=1 \
          >> "$OUT/ncu_attention.txt" 2>&1
      done
    done
  fi
  cat "$prof" "$OUT/decode_attention.md" "$OUT/ncu_kernels.md" 2>/dev/null
fi
if [[ $what == dp ]]; then
  # Issue #25 on a machine of 2 or more GPUs (kind nvidia-h200-x2 or larger):
  # rendezvous ranks, one per GPU, against one process (losses, checkpoint),
  # the seed task, a killed rank, then bench-125m tokens/s at 1 and N GPUs
  # beside PyTorch DDP (bench/train_data_parallel_gpu.py; DP_ARGS adds its flags:
  # "--only checks", then "--only bench" in a second call if one call cannot hold both).
  nvidia-smi -L | tee -a "$log"
  PYTHONUNBUFFERED=1 step "data parallel on GPUs" 560 python3 bench/train_data_parallel_gpu.py "$S/bin" "$OUT" ${DP_ARGS:-} \
    > "$OUT/data_parallel_log.txt" 2>&1
  grep -E "^(PASS|FAIL|OK|FAILED)|^\||tokens/s|NCCL|rank" "$OUT/data_parallel_log.txt" | tail -40 | tee -a "$log"
fi
if [[ $what == serve-checks ]]; then
  # The engine's GPU path checked before it is timed, in the same call: the
  # bf16 op/runner checks and the server's integration tests on CUDA.
  step "backend ops bf16" 150 "$S/bin/tinygpt_backend_ops" --dtype=bf16 "$S/seed.safetensors" > "$OUT/backend_ops_bf16.txt" 2>&1
  grep -E "^FAIL|passed|error|CUDA|runner" "$OUT/backend_ops_bf16.txt" | head -20 | tee -a "$log"
  TINYGPT_BIN=$S/bin/tinygpt TINYGPT_TEST_SERVER_FLAGS=--device=cuda \
    step "server_test --device=cuda" 200 "$S/bin/server_test" > "$OUT/server_test_cuda.txt" 2>&1
  grep -E "^\[  |Failure|error|Expected|Which is" "$OUT/server_test_cuda.txt" | head -40 | tee -a "$log"
fi
if [[ $what == warm-stream ]]; then
  # Issue #20 in one call: the bf16 op/runner checks (the bucketed GEMM
  # algorithms, non-finite logits), then the steady-state / cold-start
  # serving bench (bench/serve_gpu_bench.py --parts steady) beside the
  # PyTorch static-graph peer and the floor. SERVE_SECONDS (330) is the
  # bench's own budget.
  step "backend ops bf16" 150 "$S/bin/tinygpt_backend_ops" --dtype=bf16 "$S/seed.safetensors" > "$OUT/backend_ops_bf16.txt" 2>&1
  grep -E "^FAIL|passed|error|CUDA|runner|nonfinite|non-finite" "$OUT/backend_ops_bf16.txt" | head -20 | tee -a "$log"
  step "backend ops f16 nonfinite" 60 "$S/bin/tinygpt_backend_ops" --dtype=f16 --only=nonfinite "$S/seed.safetensors" >> "$log" 2>&1
  if [[ ${SERVER_TEST:-1} == 1 ]]; then
    TINYGPT_BIN=$S/bin/tinygpt TINYGPT_TEST_SERVER_FLAGS=--device=cuda \
      step "server_test --device=cuda" 200 "$S/bin/server_test" > "$OUT/server_test_cuda.txt" 2>&1
    grep -E "^\[  |Failure|error|Expected|Which is" "$OUT/server_test_cuda.txt" | head -40 | tee -a "$log"
  fi
  total=${SERVE_SECONDS:-330}
  PYTHONUNBUFFERED=1 step "serving bench steady" $((total + 40)) python3 -u bench/serve_gpu_bench.py "$S/bin" "$OUT" \
    --parts "${SERVE_PARTS:-steady,torch,floor}" --total-seconds=$total > "$OUT/serve_log.txt" 2>&1
  grep -E "^\[|!!" "$OUT/serve_log.txt" | tail -80 >> "$log"
  sed -n '/Steady state and cold start/,$p' "$OUT/serving.md" 2>/dev/null || tail -40 "$OUT/serve_log.txt"
fi
if [[ $what == serve || $what == serve-quick || $what == serve-checks ]]; then
  # One call within the device tool's 10 minutes: the script budgets itself to ~7 (serve-quick: ~4).
  quick=; [[ $what != serve ]] && quick=--quick
  total=${SERVE_SECONDS:-540}
  PYTHONUNBUFFERED=1 step "serving bench $quick" $((total + 30)) python3 -u bench/serve_gpu_bench.py "$S/bin" "$OUT" $quick \
    --total-seconds=$total ${SERVE_PARTS:+--parts=$SERVE_PARTS} > "$OUT/serve_log.txt" 2>&1
  grep -E "^\[|!!" "$OUT/serve_log.txt" | tail -60 >> "$log"
  cat "$OUT/serving.md" 2>/dev/null || tail -40 "$OUT/serve_log.txt"
fi
grep "^== " "$log"
exit $status

#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang, ASan + UBSan) and runs each
# for FUZZ_SECONDS (default 60) from its committed seed corpus, which holds
# the regression inputs of every crash found so far: those run first, so a
# regression fails here. New inputs go to a scratch folder, not the repo.
# Exits non-zero on any crash, sanitizer report, leak, timeout or OOM; the
# input that caused it is left in build-fuzz/artifacts/TARGET/.
# Writes build-fuzz/fuzz-summary.txt (execs per target), quoted in docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
build=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${FUZZ_BUILD_JOBS:-$(nproc)}
start=$SECONDS
CC=clang CXX=clang++ cmake -S fuzz -B "$build" -DCMAKE_BUILD_TYPE= >/dev/null
cmake --build "$build" -j"$jobs" --target checkpoint_fuzzer request_fuzzer
built=$((SECONDS - start))
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
summary="$build/fuzz-summary.txt"
echo "fuzz run $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), ${secs} s per target, build ${built} s" >"$summary"
for t in checkpoint request; do
  scratch=$(mktemp -d)
  mkdir -p "$build/artifacts/$t"
  log="$build/$t.log"
  # -malloc_limit_mb: one allocation over 512 MB is a failure (the loader
  # must never size a buffer from an unchecked header); -timeout: an input
  # taking 10 s is a hang. Inputs up to 64 KB cover every seed with room.
  rc=0
  "$build/${t}_fuzzer" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$t/" "$scratch" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  rm -rf "$scratch"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  echo "$t: ${execs:-?} execs (${rate:-?}/s), ${cov:-cov: ?}, exit $rc" | tee -a "$summary"
  if [[ $rc -ne 0 ]]; then
    echo "fuzz: ${t}_fuzzer failed; the last lines of $log:" >&2
    tail -40 "$log" >&2
    exit 1
  fi
done
echo "fuzz: done in $((SECONDS - start)) s" | tee -a "$summary"

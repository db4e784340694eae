#!/usr/bin/env bash
# Builds the unit tests (model_test, ops_test, attention_test) and the
# server and client under AddressSanitizer + UndefinedBehaviorSanitizer in
# build-sanitize/ (GCC, CPU only) and runs them; any report fails the run.
# The server runs one short soak (SANITIZE_SOAK_SECONDS, 30 by default: mixed
# traffic with cancels, deadlines and invalid requests against the call
# reactors, whose lifetimes cross gRPC's threads, the waker and the engine),
# and the client its failure test; the other gRPC tests start the server
# many times, too slow under ASan for CI, and fuzz/request_fuzzer covers the
# request path.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SANITIZE_BUILD_DIR:-build-sanitize}
jobs=${SANITIZE_BUILD_JOBS:-$(nproc)}
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
start=$SECONDS
cmake -S . -B "$build" -DTINYGPT_CUDA=OFF -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$san -g1" -DCMAKE_CXX_FLAGS="$san -g1" \
  -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san" >/dev/null
tests=(model_test ops_test attention_test)
cmake --build "$build" -j"$jobs" --target "${tests[@]}" tinygpt tinygpt-client
built=$((SECONDS - start))
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The two convergence tests (hundreds of training steps of the same loop the
# other training tests run a few of) would double model_test's time under ASan.
declare -A filter=([model_test]='-Training.LearnsTheCountingTask:Training.PacksTextDocumentsWithoutPaddingAndLearns')
# The binaries run side by side (one per core); each log is printed if it fails.
pids=()
for t in "${tests[@]}"; do
  "$build/tests/$t" --gtest_brief=1 --gtest_filter="${filter[$t]:-*}" >"$build/$t.log" 2>&1 &
  pids+=($!)
done
fail=0
for i in "${!tests[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "sanitize: ${tests[$i]} failed under ASan+UBSan:" >&2
    tail -60 "$build/${tests[$i]}.log" >&2
    fail=1
  else
    echo "sanitize: ${tests[$i]}: $(grep -E '^\[  PASSED  \]' "$build/${tests[$i]}.log" | tail -1)"
  fi
done
# The server and the client, one after the other (the soak uses both cores).
# A small quarantine: filling the default 256 MB one reads as RSS growth to
# the soak's memory check.
export ASAN_OPTIONS=${SANITIZE_SERVER_ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:quarantine_size_mb=32}
py=${PYTHON:-/usr/bin/python3}
# Three notify threads (one on a 2-core machine by default): calls are then
# told of their tokens from several threads at once.
if ! "$py" tests/python/soak_test.py "$build/cli/tinygpt" . --seconds "${SANITIZE_SOAK_SECONDS:-30}" --concurrency 16 \
    --server-flag=--notify-threads=3 >"$build/soak.log" 2>&1; then
  echo "sanitize: the server's soak failed under ASan+UBSan:" >&2
  grep -E "^(FAIL|ERROR)|AddressSanitizer|runtime error" -A30 "$build/soak.log" | head -80 >&2
  fail=1
else
  echo "sanitize: server soak: $(grep -E 'passed, ' "$build/soak.log" | tail -1)"
fi
if ! "$py" tests/python/client_failure_test.py "$build/client/tinygpt-client" . >"$build/client_failure.log" 2>&1; then
  echo "sanitize: tinygpt-client's failure test failed under ASan+UBSan:" >&2
  tail -60 "$build/client_failure.log" >&2
  fail=1
else
  echo "sanitize: client failure test: $(grep -E 'passed, ' "$build/client_failure.log" | tail -1)"
fi
echo "sanitize: build ${built} s, total $((SECONDS - start)) s"
exit $fail

#!/usr/bin/env bash
# kill -9 of `tinygpt train` while it writes a checkpoint (the moment its
# temporary file appears, as issue #13 reproduced it): --resume must refuse
# the pair left behind, naming both steps, rather than resume old weights with
# newer optimizer state; the next successful save removes the dead writer's
# temporary file.
# usage: train_kill_test.sh TINYGPT_BINARY
set -uo pipefail
bin="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
out="$dir/ck.safetensors"
caught=0
for attempt in 1 2 3 4 5; do
  rm -f "$dir"/*
  "$bin" train --steps 1000000 --save-every 1 --batch 2 --threads 1 --out "$out" >/dev/null 2>&1 &
  pid=$!
  # Wait for a complete first pair, then for the checkpoint's temporary file
  # of a later save (OUT.optim is renamed into place just before it appears).
  deadline=$((SECONDS + 60))
  while [[ ! -e "$out" && $SECONDS -lt $deadline ]]; do sleep 0.01; done
  while [[ $SECONDS -lt $deadline ]]; do
    if [[ -e "$out.tmp.$pid" ]]; then
      kill -9 "$pid"
      caught=1
      break
    fi
  done
  wait "$pid" 2>/dev/null
  [[ $caught -eq 1 ]] && break
  kill -9 "$pid" 2>/dev/null
done
if [[ $caught -ne 1 ]]; then
  echo "FAIL: never saw $out.tmp.PID appear"
  exit 1
fi
fail=0
[[ -e "$out.tmp.$pid" ]] || { echo "FAIL: the killed write left no temporary file to clean up"; fail=1; }
msg=$("$bin" train --resume "$out" --steps 1000000 --out "$dir/resumed.safetensors" 2>&1)
rc=$?
if [[ $rc -eq 0 ]] || ! grep -q "cannot resume: $out is step [0-9]* (commit [0-9a-f]*) but $out.optim is step" <<<"$msg"; then
  echo "FAIL: --resume of the torn pair: exit $rc: $msg"
  fail=1
fi
# The next successful save of the same path removes the dead writer's file.
"$bin" train --steps 1 --batch 2 --out "$out" >/dev/null 2>&1 || { echo "FAIL: a fresh run to the same path"; fail=1; }
[[ ! -e "$out.tmp.$pid" ]] || { echo "FAIL: $out.tmp.$pid of the killed run is still there"; fail=1; }
# And the fresh pair resumes.
"$bin" train --resume "$out" --steps 2 --batch 2 --out "$out" >/dev/null 2>&1 || { echo "FAIL: resuming a whole pair"; fail=1; }
[[ $fail -eq 0 ]] && echo "train_kill_test: ok (killed pid $pid mid-save: $msg)"
exit $fail

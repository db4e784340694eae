#!/usr/bin/env bash
# scripts/demo.sh end to end on the built binaries (its build step skipped):
# trains a seed model the short way, serves on a free port, and its last lines
# say in words that the model continued the count (issue #26).
# usage: demo_test.sh SOURCE_DIR BUILD_DIR
set -uo pipefail
src=$1 build=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$(cd "$work" && DEMO_SKIP_BUILD=1 BUILD_DIR="$build" CHECKPOINT="$work/seed.safetensors" PORT=0 TRAIN_STEPS=60 TRAIN_BATCH=16 \
      bash "$src/scripts/demo.sh" 2>"$work/stderr")
rc=$?
echo "$out"
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; fi; }
check "demo exits 0 (exit $rc; stderr: $(tail -3 "$work/stderr"))" '[[ $rc -eq 0 ]]'
check "the answer is the continued count" 'grep -qx "output_ids: 14,15,16,17,18,19,20,21,22,23,24,25" <<<"$out"'
check "no empty text line" '! grep -qx "text: *" <<<"$out"'
check "says token ids only" 'grep -qxF "(token ids only: the model has no tokenizer)" <<<"$out"'
check "the second-last line says what the model did" \
  '[[ "$(tail -2 <<<"$out" | head -1)" == "demo: the model was given the token ids 10, 11, 12, 13 (the start of a count) and continued the count: 14 to 25, all 12 new tokens right." ]]'
check "the last line is demo: ok" '[[ "$(tail -1 <<<"$out")" == "demo: ok" ]]'
if [[ $fail -eq 0 ]]; then echo "demo_test: ok"; fi
exit $fail

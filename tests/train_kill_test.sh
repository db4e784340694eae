#!/usr/bin/env bash
# Crash consistency of training checkpoints (issue 19): `tinygpt train`
# SIGKILLs itself (TINYGPT_TEST_KILL_AT_SAVE_POINT=K) at each of the 9 points
# of a save where what is on disk changes: after half of the optimizer file,
# after all of it, after its fsync, after its rename; the same four for the
# weights (OUT); after the previous optimizer file is removed. After each
# kill, `--resume OUT` must go on from the newest complete pair (step 2 once
# OUT was renamed, step 1 before), never refuse, and end with exactly the
# weights of a run that was never killed (so no step was skipped or
# repeated). The next start removes what the kill left (temporary files, an
# optimizer file OUT does not name) before its own first save.
# usage: train_kill_test.sh TINYGPT_BINARY
set -uo pipefail
bin="$1"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0
FAIL() { echo "FAIL: $*"; fail=1; }
train() { "$bin" train --preset seed --steps 3 --save-every 1 --batch 2 --threads 1 "$@"; }
# The tensors of two checkpoints, byte for byte (their headers differ: stamps).
same_weights() {
  python3 - "$1" "$2" <<'EOF'
import json, struct, sys
def tensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return {k: data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in header.items()}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
sys.exit(0 if a == b and len(a) > 0 else 1)
EOF
}
files_of() { (cd "$dir" && ls -1 | grep -F "$(basename "$1")" | sort | tr '\n' ' '); }

train --out "$dir/ref.safetensors" >/dev/null 2>&1 || FAIL "the uninterrupted reference run"
# Points 1-9 are the first save (step 1), 10-18 the second (step 2).
for k in $(seq 10 18); do
  out="$dir/k$k.safetensors"
  TINYGPT_TEST_KILL_AT_SAVE_POINT=$k train --out "$out" >"$dir/kill.log" 2>&1
  rc=$?
  point=$(grep -o "save point $k ([^)]*)" "$dir/kill.log")
  [[ $rc -eq 137 && -n "$point" ]] || { FAIL "K=$k: expected a SIGKILL at the hook, got exit $rc: $(tail -2 "$dir/kill.log")"; continue; }
  left=$(files_of "$out")
  # The next start, stopped at its own first save point (half of its first
  # optimizer file written): what the kill left is gone already.
  TINYGPT_TEST_KILL_AT_SAVE_POINT=1 train --resume "$out" --out "$out" >"$dir/start.log" 2>&1
  rc=$?
  [[ $rc -eq 137 ]] || FAIL "K=$k: the resumed run did not reach its first save point (exit $rc): $(tail -2 "$dir/start.log")"
  at_start=$(files_of "$out")
  n_tmp=$(grep -o "\.tmp\.[0-9]*" <<<"$at_start" | sort -u | wc -l)
  n_optim=$(grep -o "\.step[0-9]*-[0-9a-f]*\.optim " <<<"$at_start" | wc -l)
  [[ $n_tmp -eq 1 && $n_optim -eq 1 ]] ||
    FAIL "K=$k ($point): at the next start the kill's leftovers are still there (left: $left; at the first save point: $at_start)"
  # Resume for real, twice killed now: it must go on from the newest complete pair.
  train --resume "$out" --out "$out" >"$dir/resume.log" 2>&1 || {
    FAIL "K=$k ($point): --resume refused: $(tail -2 "$dir/resume.log")"
    continue
  }
  expected=$((k >= 17 ? 1 : 2))  # OUT is renamed at point 17: from then on the pair of step 2
  grep -q "trained $expected steps" "$dir/resume.log" ||
    FAIL "K=$k ($point): expected to resume with $expected steps left: $(grep trained "$dir/resume.log")"
  same_weights "$out" "$dir/ref.safetensors" || FAIL "K=$k ($point): the weights differ from the uninterrupted run's"
  final=$(files_of "$out")
  [[ $(wc -w <<<"$final") -eq 2 && "$final" == *".step3-"*".optim "* ]] || FAIL "K=$k ($point): files left at the end: $final"
  echo "K=$k ($point): left $left; resumed with $expected steps to go; weights equal"
done
# The served file is a plain checkpoint.
"$bin" generate --checkpoint "$dir/k18.safetensors" --prompt-ids 1,2 --max-new-tokens 2 >/dev/null 2>&1 || FAIL "generate on the resumed checkpoint"
[[ $fail -eq 0 ]] && echo "train_kill_test: ok"
exit $fail

#!/usr/bin/env bash
# `tinygpt CMD --help` prints CMD's own flags (and the shared ones) and exits
# 0; it used to print the top-level usage and "No flags matched." (issue #13).
# usage: cli_help_test.sh TINYGPT_BINARY
set -uo pipefail
bin="$1"
fail=0
# command, a flag of its own, a flag of another command that must not appear
while read -r cmd own other; do
  for args in "$cmd --help" "$cmd --threads 1 --help" "$cmd -h"; do
    out=$("$bin" $args 2>&1)
    rc=$?
    check() {  # description, then a command that must succeed
      if ! eval "$2"; then
        echo "FAIL: tinygpt $args: $1 (exit $rc)"
        fail=1
      fi
    }
    check "exits 0" '[[ $rc -eq 0 ]]'
    check "names the command" 'grep -qF "usage: tinygpt $cmd [flags]" <<<"$out"'
    check "lists $own" 'grep -qF -- "$own (default:" <<<"$out"'
    check "lists the shared --threads" 'grep -qF -- "--threads (default:" <<<"$out"'
    check "does not list $other" '! grep -qF -- "$other" <<<"$out"'
    check "no 'No flags matched'" '! grep -qF "No flags matched" <<<"$out"'
  done
done <<'TABLE'
train --save-every --max-queue
generate --max-new-tokens --save-every
serve --max-queue --bench-steps
bench --bench-steps --max-new-tokens
TABLE
# Top-level help still lists the commands; an unknown command is an error.
"$bin" --help 2>&1 | grep -q "serve     serve" || { echo "FAIL: tinygpt --help"; fail=1; }
"$bin" nosuch --help >/dev/null 2>&1 && { echo "FAIL: tinygpt nosuch --help exits 0"; fail=1; }
if [[ $fail -eq 0 ]]; then echo "cli_help_test: ok"; fi
exit $fail

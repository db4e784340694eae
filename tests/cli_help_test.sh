#!/usr/bin/env bash
# `tinygpt CMD --help` prints CMD's own flags (and the shared ones) and exits
# 0; it used to print the top-level usage and "No flags matched." (issue #13).
# `tinygpt-client SUB --help` likewise prints SUB's flags in groups with their
# defaults, among them every flag that a README line running
# `tinygpt-client SUB` uses (issue #26).
# usage: cli_help_test.sh TINYGPT_BINARY [TINYGPT_CLIENT_BINARY README]
set -uo pipefail
bin="$1"
client="${2:-}"
readme="${3:-}"
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

if [[ -n $client ]]; then
  # subcommand, groups its help must have, flags it must list, a flag it must not list
  while read -r sub groups own other; do
    for args in "$sub --help" "$sub --target 127.0.0.1:1 --help" "$sub -h"; do
      out=$("$client" $args 2>&1)
      rc=$?
      ccheck() {
        if ! eval "$2"; then
          echo "FAIL: tinygpt-client $args: $1 (exit $rc)"
          fail=1
        fi
      }
      ccheck "exits 0" '[[ $rc -eq 0 ]]'
      ccheck "names the command" 'grep -qF "usage: tinygpt-client $sub [flags]" <<<"$out"'
      ccheck "no 'No flags matched'" '! grep -qF "No flags matched" <<<"$out"'
      for g in ${groups//,/ }; do ccheck "has the group '$g flags:'" 'grep -qF "$g flags:" <<<"$out"'; done
      for f in ${own//,/ }; do ccheck "lists $f with its default" 'grep -qF -- "$f (default:" <<<"$out"'; done
      ccheck "does not list $other" '! grep -qF -- "$other (default:" <<<"$out"'
      ccheck "every flag is in a group (no 'other flags:'; add new flags to Subcommands() in client/tinygpt_client.cc)" \
        '! grep -qF "other flags:" <<<"$out"'
    done
  done <<'TABLE'
generate connection,request,output --target,--deadline-ms,--tls-ca,--auth-token-file,--prompt-ids,--max-new-tokens,--top-logprobs,--n,--json --requests
stream connection,request --target,--prompt,--stop,--max-new-tokens --concurrency
info connection --target,--deadline-ms,--tls-ca --max-new-tokens
health connection,health --target,--service,--tls-ca --prompt-ids
bench connection,bench --target,--deadline-ms,--requests,--concurrency,--rate,--prompts-file,--shared-prefix-len,--unary,--json,--tls-ca,--auth-token-file --stop
TABLE
  # Every flag the README uses on a `tinygpt-client SUB` line is in SUB's help.
  if [[ -n $readme ]]; then
    checked=0
    while IFS= read -r line; do
      sub=$(sed -E 's/.*tinygpt-client ([a-z]+).*/\1/' <<<"$line")
      help=$("$client" "$sub" --help 2>&1)
      for f in $(grep -oE -- '--[a-z][a-z-]*' <<<"${line#*tinygpt-client }" | sort -u); do
        checked=$((checked + 1))
        grep -qF -- "$f (default:" <<<"$help" || { echo "FAIL: README line uses tinygpt-client $sub $f, which its --help does not list: $line"; fail=1; }
      done
    done < <(grep -E 'tinygpt-client (generate|stream|info|health|bench)\b' "$readme")
    [[ $checked -ge 10 ]] || { echo "FAIL: only $checked README flags found to check"; fail=1; }
  fi
  "$client" --help | grep -q "bench     drive load" || { echo "FAIL: tinygpt-client --help does not list the commands"; fail=1; }
  "$client" nosuch --help >/dev/null 2>&1 && { echo "FAIL: tinygpt-client nosuch --help exits 0"; fail=1; }
fi
if [[ $fail -eq 0 ]]; then echo "cli_help_test: ok"; fi
exit $fail

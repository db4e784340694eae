#!/usr/bin/env bash
# Builds and runs the whole test suite with CTest, then (after it passes) the
# unit tests under ASan + UBSan (scripts/sanitize.sh) and each libFuzzer
# target for FUZZ_SECONDS (scripts/fuzz.sh). TINYGPT_SKIP_SANITIZE=1 and
# TINYGPT_SKIP_FUZZ=1 leave those out of a local run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
(cd build && ctest --output-on-failure -j2 "$@")
if [[ "${TINYGPT_SKIP_SANITIZE:-0}" != 1 ]]; then scripts/sanitize.sh; fi
if [[ "${TINYGPT_SKIP_FUZZ:-0}" != 1 ]]; then scripts/fuzz.sh; fi

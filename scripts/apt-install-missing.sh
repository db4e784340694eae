#!/usr/bin/env bash
# Installs those of the named Debian packages that are not installed yet
# (nothing when all are: idempotent, no apt-get update then). As root.
# usage: scripts/apt-install-missing.sh PACKAGE...   (prints how many it installed)
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "${#missing[@]}"

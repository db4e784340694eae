#!/usr/bin/env bash
# Installs every Debian package that building and testing tinygpt needs.
# Idempotent; run as root on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(
  build-essential cmake pkg-config git
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev libopenblas-dev libsentencepiece-dev
  python3 python3-torch python3-numpy python3-grpcio python3-grpc-tools python3-sentencepiece
  python3-requests
  libboost-dev libssl-dev  # Boost.Beast/Asio and OpenSSL: the HTTP server (server/http/)
  libopenmpi-dev openmpi-bin  # data-parallel training on CPUs (train/mpi_module.cc, mpirun)
  prometheus docker-compose haproxy curl
  clang libclang-rt-14-dev libomp-dev llvm  # fuzz/ (libFuzzer, clang's OpenMP, llvm-symbolizer for reports)
  bible-kjv  # the public-domain corpus (King James Bible) of the README's text walk-through
)
# Node and npm for the OpenAI SDK test (tests/node/); a Node of another origin
# (NodeSource's bundles npm) is kept as it is.
command -v node > /dev/null && command -v npm > /dev/null || pkgs+=(nodejs npm)
scripts/apt-install-missing.sh "${pkgs[@]}" >/dev/null
echo "install-deps: all ${#pkgs[@]} packages present"

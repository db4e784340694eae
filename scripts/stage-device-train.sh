#!/usr/bin/env bash
# Stages what scripts/device-train-run.sh needs into STAGE (default
# device-stage-train/, carried to the GPU machine): tinygpt, the CUDA module,
# the backend-ops program, the shared libraries a bare CUDA machine lacks
# (compressed), the run script and the benchmark. Builds first (build/).
# usage: scripts/stage-device-train.sh [STAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-device-stage-train}
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTINYGPT_CUDA=ON > /dev/null
cmake --build build --target tinygpt tinygpt_cuda tinygpt_backend_ops tinygpt_attention_train_bench -j2 > build.log 2>&1 || { tail -40 build.log; exit 1; }
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/bench"
cp build/cli/tinygpt build/cli/libtinygpt_cuda.so build/cli/tinygpt_backend_ops build/cli/tinygpt_attention_train_bench "$stage/bin/"
# Symbols are not needed on the device and the carry limit is 64 MiB.
strip --strip-unneeded "$stage"/bin/*
cp scripts/device-train-run.sh "$stage/run.sh"
cp bench/train_gpu_vs_torch.py bench/attention_train_report.py bench/binaries.py "$stage/bench/"
cp tests/python/torch_tinygpt.py "$stage/bench/"
../shared/tools/pack-runtime-libs.sh "$stage/lib" "$stage/bin/tinygpt" "$stage/bin/tinygpt_backend_ops" "$stage/bin/libtinygpt_cuda.so"
# Libraries travel compressed (OpenBLAS alone is 35 MB; the carry limit is 64 MiB).
tar -C "$stage" -cJf "$stage/lib.tar.xz" lib && rm -rf "$stage/lib"
du -sh "$stage"

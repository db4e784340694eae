#!/usr/bin/env bash
# Stages what scripts/device-run.sh needs into device-stage/ (git-ignored,
# carried to the GPU machine): the binaries, the CUDA module, the shared
# libraries a bare CUDA machine lacks, and a trained seed checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh -DTINYGPT_CUDA=ON
stage=device-stage
mkdir -p $stage/bin
cp build/cli/tinygpt build/cli/libtinygpt_cuda.so build/cli/libtinygpt_sentencepiece.so build/cli/tinygpt_backend_ops build/cli/tinygpt_attention_bench \
   build/client/tinygpt-client build/tests/server_test build/bench/tinygpt_engine_bench $stage/bin/
# Symbols are not needed on the device and the carry limit is 64 MiB.
strip --strip-unneeded $stage/bin/*
../shared/tools/pack-runtime-libs.sh $stage/lib $stage/bin/tinygpt $stage/bin/tinygpt-client $stage/bin/server_test \
   $stage/bin/tinygpt_backend_ops $stage/bin/libtinygpt_cuda.so $stage/bin/libtinygpt_sentencepiece.so
# Libraries travel compressed (OpenBLAS alone is 35 MB; the carry limit is 64 MiB).
tar -C $stage -cJf $stage/lib.tar.xz lib && rm -rf $stage/lib
[[ -f $stage/seed.safetensors ]] || build/cli/tinygpt train --preset seed --steps 400 --batch 64 --out $stage/seed.safetensors
rm -f $stage/seed.safetensors.optim $stage/seed.safetensors.step*.optim  # the optimizer state: not needed to serve
du -sh $stage

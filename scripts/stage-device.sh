#!/usr/bin/env bash
# Stages what scripts/device-run.sh needs into device-stage/ (git-ignored,
# carried to the GPU machine): the binaries, the CUDA module, the shared
# libraries a bare CUDA machine lacks, and a trained seed checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh -DTINYGPT_CUDA=ON
stage=device-stage
rm -rf $stage/bin $stage/bin.tar.xz
mkdir -p $stage/bin
cp build/cli/tinygpt build/cli/libtinygpt_cuda.so build/cli/libtinygpt_sentencepiece.so build/cli/tinygpt_backend_ops build/cli/tinygpt_attention_bench \
   build/client/tinygpt-client build/tests/server_test build/bench/tinygpt_engine_bench $stage/bin/
# Symbols are not needed on the device and the carry limit is 64 MiB.
strip --strip-unneeded $stage/bin/*
../shared/tools/pack-runtime-libs.sh $stage/lib $stage/bin/tinygpt $stage/bin/tinygpt-client $stage/bin/server_test \
   $stage/bin/tinygpt_backend_ops $stage/bin/libtinygpt_cuda.so $stage/bin/libtinygpt_sentencepiece.so
# Libraries and binaries travel compressed (OpenBLAS alone is 35 MB, the CUDA
# module 30 MB; the carry limit is 64 MiB); device-run.sh unpacks them.
tar -C $stage -cJf $stage/lib.tar.xz lib && rm -rf $stage/lib
tar -C $stage -cJf $stage/bin.tar.xz bin && rm -rf $stage/bin
# The decode step kernel's sm_90a code with line info, for its code size by
# source line on the device (device-run.sh decode, DECODE_NCU=step: nvdisasm).
(cd build/kernels/cuda && /usr/local/cuda/bin/nvcc --options-file CMakeFiles/tinygpt_cuda.dir/includes_CUDA.rsp -O3 -DNDEBUG -lineinfo \
   -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -std=c++17 -cubin -x cu ../../../kernels/cuda/decode_step_launch.cu \
   -o ../../../$stage/step_lineinfo.cubin) && xz -f $stage/step_lineinfo.cubin
[[ -f $stage/seed.safetensors ]] || build/cli/tinygpt train --preset seed --steps 400 --batch 64 --out $stage/seed.safetensors
rm -f $stage/seed.safetensors.optim $stage/seed.safetensors.step*.optim  # the optimizer state: not needed to serve
du -sh $stage

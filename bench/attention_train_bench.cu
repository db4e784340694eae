// Forward + backward time of tinygpt's training attention on the tutorial's
// shapes (section 2: causal, B=2, H=8, D=64, fp16, M = 512 … 16384), for
// bench/attention_train_report.py, which runs PyTorch's naive, flash and
// efficient attention on the same shapes. One JSON line per M:
// {"M": ..., "ms": forward+backward median, "bytes_held": every buffer the
// step needs (fused qkv, out, dout, LSE, delta, dqkv)}.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "kernels/cuda/attention_train_launch.h"
#include "kernels/cuda/common.cuh"

using tinygpt::AttentionBatch;
using tinygpt::AttentionDims;

__global__ void FillKernel(__half* p, long n, unsigned seed) {
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < n; i += static_cast<long>(gridDim.x) * blockDim.x) {
    unsigned x = static_cast<unsigned>(i) * 2654435761u ^ seed;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    p[i] = __float2half((static_cast<float>(x & 0xffff) / 65536.f - 0.5f) * 2.f);
  }
}

int main() {
  const int B = 2, H = 8, D = 64;
  const AttentionDims dims{H, H, D, false};
  for (int M = 512; M <= 16384; M *= 2) {
    const long T = static_cast<long>(B) * M, qkv_n = T * 3 * H * D, o_n = T * H * D;
    __half *qkv, *out, *dout, *dqkv;
    float *lse, *delta;
    int32_t *cu, *lens;
    TG_CUDA_CHECK(cudaMalloc(&qkv, qkv_n * 2));
    TG_CUDA_CHECK(cudaMalloc(&dqkv, qkv_n * 2));
    TG_CUDA_CHECK(cudaMalloc(&out, o_n * 2));
    TG_CUDA_CHECK(cudaMalloc(&dout, o_n * 2));
    TG_CUDA_CHECK(cudaMalloc(&lse, T * H * 4));
    TG_CUDA_CHECK(cudaMalloc(&delta, T * H * 4));
    TG_CUDA_CHECK(cudaMalloc(&cu, (B + 1) * 4));
    TG_CUDA_CHECK(cudaMalloc(&lens, B * 4));
    const int32_t h_cu[3] = {0, M, 2 * M}, h_lens[2] = {M, M};
    TG_CUDA_CHECK(cudaMemcpy(cu, h_cu, sizeof(h_cu), cudaMemcpyHostToDevice));
    TG_CUDA_CHECK(cudaMemcpy(lens, h_lens, sizeof(h_lens), cudaMemcpyHostToDevice));
    FillKernel<<<1024, 256>>>(qkv, qkv_n, 1);
    FillKernel<<<1024, 256>>>(dout, o_n, 2);
    const AttentionBatch batch{B, cu, lens, static_cast<int>(T), M, M};
    auto step = [&] {
      tinygpt::cuda::LaunchTrainAttentionForward<__half>(dims, batch, qkv, out, lse, nullptr);
      tinygpt::cuda::LaunchTrainAttentionBackward<__half>(dims, batch, qkv, out, dout, lse, delta, dqkv, nullptr);
    };
    auto forward = [&] { tinygpt::cuda::LaunchTrainAttentionForward<__half>(dims, batch, qkv, out, lse, nullptr); };
    for (int i = 0; i < 3; ++i) step();
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    auto median_ms = [&](const auto& fn) {
      std::vector<float> ms;
      for (int i = 0; i < 10; ++i) {
        cudaEventRecord(a);
        fn();
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float t = 0;
        cudaEventElapsedTime(&t, a, b);
        ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      return ms[ms.size() / 2];
    };
    const float total_ms = median_ms(step), fwd_ms = median_ms(forward);
    TG_CUDA_CHECK(cudaGetLastError());
    const size_t held = 2 * (qkv_n * 2) + 2 * (o_n * 2) + 2 * (T * H * 4);
    std::printf("{\"M\":%d,\"ms\":%.4f,\"fwd_ms\":%.4f,\"bytes_held\":%zu}\n", M, total_ms, fwd_ms, held);
    for (void* p : {static_cast<void*>(qkv), static_cast<void*>(dqkv), static_cast<void*>(out), static_cast<void*>(dout),
                    static_cast<void*>(lse), static_cast<void*>(delta), static_cast<void*>(cu), static_cast<void*>(lens)})
      cudaFree(p);
  }
  return 0;
}

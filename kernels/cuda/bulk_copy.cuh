// Hopper's bulk copies into shared memory and the mbarriers that count their
// bytes (PTX ISA: cp.async.bulk, mbarrier). One instruction moves a whole
// contiguous range (a multiple of 16 bytes, 16-byte aligned at both ends)
// through the async proxy; the mbarrier's phase completes when the bytes it
// expects have landed, so a consumer waits on the barrier instead of on
// per-thread cp.async groups. Used by the decode step kernel
// (decode_step_kernel.cuh) to stream weight rows a layer ahead.
#pragma once
#include <cstdint>

namespace tinygpt::cuda {

__device__ __forceinline__ unsigned SmemAddr(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

// One arrival completes a phase (with its expected bytes); call once per
// barrier before any use, then __syncthreads.
__device__ __forceinline__ void MbarrierInit(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(SmemAddr(bar)) : "memory");
}

// Arrives (the phase's one arrival) and adds `bytes` to what it waits for.
__device__ __forceinline__ void MbarrierArriveExpectBytes(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SmemAddr(bar)), "r"(bytes) : "memory");
}

// A wait that has polled this many times (seconds) traps instead of hanging:
// a phase whose bytes never land is a bug (a copy not issued, a wrong
// parity), and a trap fails the launch where a hang would stall the device.
constexpr long kMbarrierPolls = 1L << 24;

// Waits until the barrier's phase of this parity (0 for the first) completes.
__device__ __forceinline__ void MbarrierWait(uint64_t* bar, unsigned parity) {
  unsigned done = 0;
  long polls = 0;
  do {
    if (++polls > kMbarrierPolls) __trap();
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(SmemAddr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// Orders this thread's earlier generic-proxy accesses of shared memory before
// its later async-proxy ones (a bulk copy into a buffer it has just read).
__device__ __forceinline__ void FenceProxyAsyncShared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// bytes (a multiple of 16) from global src to shared dst, counted on bar.
__device__ __forceinline__ void BulkCopyToSmem(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(SmemAddr(dst)),
               "l"(src), "r"(bytes), "r"(SmemAddr(bar))
               : "memory");
}

}  // namespace tinygpt::cuda

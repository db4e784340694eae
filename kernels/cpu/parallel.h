// Threading policy of the CPU backend: OpenMP regions only where the work
// pays for waking the team. Decode steps of a small model are a few thousand
// flops per op, where a parallel region costs more than it saves.
#pragma once

namespace tinygpt::cpu {
// Minimum scalar operations for an op to go parallel.
inline constexpr long kMinParallelWork = 1L << 16;
}  // namespace tinygpt::cpu

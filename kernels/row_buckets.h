// Row counts grouped into buckets for the choices a backend makes per shape
// (the CUDA backend's cuBLASLt algorithm for a linear layer): a choice made
// for one count of a bucket serves every count of it, so a server can make
// them all before it takes traffic (ModelRunner::Warmup) instead of inside
// the first requests whose prefill chunks or batches have a new row count.
#pragma once
#include <algorithm>
#include <vector>

namespace tinygpt {

// The bucket of `rows` (>= 1), named by its largest count: multiples of 8 up
// to 128, of 32 up to 512, of 128 up to 2048, then of 512. A bucket's counts
// differ by at most a quarter (or 7 rows), where GEMM algorithms keep their
// ranking; 52 buckets reach 8192 rows.
inline int RowBucket(int rows) {
  if (rows <= 128) return (rows + 7) / 8 * 8;
  if (rows <= 512) return (rows + 31) / 32 * 32;
  if (rows <= 2048) return (rows + 127) / 128 * 128;
  return (rows + 511) / 512 * 512;
}

// One row count in each bucket that 1..max_rows touches (its largest count,
// capped at max_rows), ascending: running an op once at each of these makes
// its per-bucket choice for every count up to max_rows.
inline std::vector<int> RowBucketRepresentatives(int max_rows) {
  std::vector<int> out;
  for (int rows = 1; rows <= max_rows; rows = RowBucket(rows) + 1) out.push_back(std::min(RowBucket(rows), max_rows));
  return out;
}

}  // namespace tinygpt

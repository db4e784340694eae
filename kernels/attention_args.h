// Arguments of the attention op, shared by every backend.
//
// Queries are packed: sequence s owns query rows [cu_q[s], cu_q[s+1]). Its
// keys/values number ctx_len[s] (cached prefix + the new tokens), and its
// queries are the LAST q_len positions of that context, so query i of s sits
// at absolute position ctx_len[s] - q_len + i and sees keys 0..that position
// (block-diagonal causal with offset). Training and full prefill are the case
// ctx_len == q_len. Query head h reads KV head h / (n_heads / n_kv_heads).
#pragma once
#include <cmath>
#include <cstdint>

namespace tinygpt {

struct AttentionDims {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  bool alibi = false;
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(head_dim)); }
  int group() const { return n_heads / n_kv_heads; }
};

// ALiBi slope of head h, as in the seed: (2^(-8/H))^(h+1).
inline float AlibiSlope(int h, int n_heads) {
  return std::pow(std::pow(2.0f, -8.0f / n_heads), static_cast<float>(h + 1));
}

// Keys/values stored contiguously and packed like the queries: the keys of
// sequence s are rows [cu_k[s], cu_k[s+1]) with `stride` floats between rows.
struct PackedKv {
  const float* k = nullptr;
  const float* v = nullptr;
  long stride = 0;
  const int32_t* cu_k = nullptr;
};

// Keys/values in a paged cache: [num_blocks, block_size, n_kv_heads, head_dim];
// block_tables[s * max_blocks_per_seq + j / block_size] holds position j.
struct PagedKv {
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  int block_size = 16;
  const int32_t* block_tables = nullptr;
  int max_blocks_per_seq = 0;
};

struct AttentionBatch {
  int num_seqs = 0;
  const int32_t* cu_q = nullptr;     // [num_seqs + 1]
  const int32_t* ctx_len = nullptr;  // [num_seqs]
  int total_q = 0;
  int max_q_len = 0;    // hints for kernels' grid sizing
  int max_ctx_len = 0;
};

}  // namespace tinygpt

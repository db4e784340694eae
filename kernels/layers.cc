// Backend::TransformerLayers op by op (backend.h): what every backend runs
// unless it has the layers of a step as one kernel, and the reference the
// CUDA backend's decode step kernel is checked against.
#include "kernels/backend.h"

namespace tinygpt {

void RunLayersOpByOp(Backend& b, const Backend::LayersArgs& a) {
  const int T = a.T, d = a.d_model, F = a.ffn_hidden;
  const AttentionDims& dims = a.dims;
  const int qkv_dim = (dims.n_heads + 2 * dims.n_kv_heads) * dims.head_dim;
  const float eps = a.norm_eps;
  // Small decode steps on the GPU fold each norm into the product that reads
  // it and each residual add into the product before it (backend.h); other
  // steps fuse each residual add with the norm after it.
  const bool fused = b.FusesNormIntoLinear(T, d);
  if (!fused && a.n_layers > 0) b.LayerNorm(a.x, a.layers[0].norm1_w, a.layers[0].norm1_b, a.ln, T, d, eps);
  for (int l = 0; l < a.n_layers; ++l) {
    const Backend::LayerWeights& lw = a.layers[l];
    if (fused)
      b.NormLinearKvAppend(a.x, lw.norm1_w, lw.norm1_b, eps, a.ln, lw.qkv_w, lw.qkv_b, a.qkv, T, d, qkv_dim, a.slots, dims, lw.k_cache,
                           lw.v_cache);
    else  // ln holds norm1(x) here
      b.LinearKvAppend(a.ln, lw.qkv_w, lw.qkv_b, a.qkv, T, d, qkv_dim, a.slots, dims, lw.k_cache, lw.v_cache);
    const PagedKv kv{lw.k_cache, lw.v_cache, a.block_size, a.block_tables, a.max_blocks_per_seq};
    b.PagedAttention(dims, a.batch, a.qkv, kv, a.att);
    if (fused) {
      b.LinearAddInPlace(a.att, lw.proj_w, lw.proj_b, a.tmp, a.x, T, d, d);
      b.NormLinearSwiGLU(a.x, lw.norm2_w, lw.norm2_b, eps, a.ln, lw.w12_w, lw.w12_b, a.h12, a.sw, T, d, F);
      b.LinearAddInPlace(a.sw, lw.w3_w, lw.w3_b, a.tmp, a.x, T, F, d);
      continue;
    }
    b.Linear(a.att, lw.proj_w, lw.proj_b, a.tmp, T, d, d);
    b.AddLayerNorm(a.x, a.tmp, lw.norm2_w, lw.norm2_b, a.ln, T, d, eps);
    b.LinearSwiGLU(a.ln, lw.w12_w, lw.w12_b, a.h12, a.sw, T, d, F);
    b.Linear(a.sw, lw.w3_w, lw.w3_b, a.tmp, T, F, d);
    // The residual add, fused with the next layer's first norm.
    if (l + 1 < a.n_layers)
      b.AddLayerNorm(a.x, a.tmp, a.layers[l + 1].norm1_w, a.layers[l + 1].norm1_b, a.ln, T, d, eps);
    else
      b.AddInPlace(a.x, a.tmp, static_cast<size_t>(T) * d);
  }
}

}  // namespace tinygpt

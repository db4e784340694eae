// All TinyGPT parameters live in one contiguous fp32 buffer (as in llm.c);
// `ParamLayout` names each tensor with the seed's PyTorch module name and
// nn.Linear's [out, in] layout, so checkpoints map one-to-one onto it.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace tinygpt {

struct ParamTensor {
  std::string name;
  std::vector<long> shape;
  size_t offset = 0;  // in floats, into the parameter buffer
  bool linear_weight = false;  // an nn.Linear weight [out, in] (backends may re-lay it out)
  size_t numel() const {
    size_t n = 1;
    for (long d : shape) n *= d;
    return n;
  }
};

// Pointers into the buffer for one block.
struct BlockParams {
  float *n1_w, *n1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *n2_w, *n2_b, *w12_w, *w12_b, *w3_w, *w3_b;
};

struct ModelParams {
  float *tok, *pos;  // pos is null under ALiBi
  std::vector<BlockParams> blocks;
  float *nf_w, *nf_b, *head_w, *head_b;
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& cfg);
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  size_t total() const { return total_; }
  const ParamTensor* find(const std::string& name) const;
  // Views `buffer` (total() floats) as named parameters.
  ModelParams bind(float* buffer) const;

 private:
  ModelConfig cfg_;
  std::vector<ParamTensor> tensors_;
  size_t total_ = 0;
};

}  // namespace tinygpt

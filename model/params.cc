#include "model/params.h"

#include "absl/strings/str_cat.h"

namespace tinygpt {

ParamLayout::ParamLayout(const ModelConfig& c) : cfg_(c) {
  auto add = [&](std::string name, std::vector<long> shape, bool linear_weight = false) {
    ParamTensor t{std::move(name), std::move(shape), total_, linear_weight};
    total_ += t.numel();
    tensors_.push_back(std::move(t));
  };
  const long d = c.d_model;
  add("tok.weight", {c.vocab_size, d});
  if (!c.alibi()) add("pos.weight", {c.max_seq_len, d});
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = absl::StrCat("blocks.", i, ".");
    add(p + "n1.weight", {d});
    add(p + "n1.bias", {d});
    add(p + "qkv.weight", {c.qkv_dim(), d}, true);
    add(p + "qkv.bias", {c.qkv_dim()});
    add(p + "proj.weight", {d, d}, true);
    add(p + "proj.bias", {d});
    add(p + "n2.weight", {d});
    add(p + "n2.bias", {d});
    add(p + "ff.w12.weight", {2L * c.ffn_hidden, d}, true);
    add(p + "ff.w12.bias", {2L * c.ffn_hidden});
    add(p + "ff.w3.weight", {d, c.ffn_hidden}, true);
    add(p + "ff.w3.bias", {d});
  }
  add("nf.weight", {d});
  add("nf.bias", {d});
  add("head.weight", {c.vocab_size, d}, true);
  add("head.bias", {c.vocab_size});
}

const ParamTensor* ParamLayout::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

ModelParams ParamLayout::bind(float* buf) const {
  auto at = [&](const std::string& name) { return buf + find(name)->offset; };
  ModelParams m;
  m.tok = at("tok.weight");
  m.pos = cfg_.alibi() ? nullptr : at("pos.weight");
  for (int i = 0; i < cfg_.n_layers; ++i) {
    const std::string p = absl::StrCat("blocks.", i, ".");
    m.blocks.push_back({at(p + "n1.weight"), at(p + "n1.bias"), at(p + "qkv.weight"), at(p + "qkv.bias"),
                        at(p + "proj.weight"), at(p + "proj.bias"), at(p + "n2.weight"), at(p + "n2.bias"),
                        at(p + "ff.w12.weight"), at(p + "ff.w12.bias"), at(p + "ff.w3.weight"), at(p + "ff.w3.bias")});
  }
  m.nf_w = at("nf.weight");
  m.nf_b = at("nf.bias");
  m.head_w = at("head.weight");
  m.head_b = at("head.bias");
  return m;
}

}  // namespace tinygpt

// The attention maps a model returns itself (transformers' output_attentions=True
// export): a tuple or list of post-softmax [1, heads, T, T] tensors, one per
// layer, anywhere in the forward's output (docs/attention.md). No LibTorch types.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace xcam {

struct ModelAttentions {
  int64_t heads = 0, tokens = 0;
  std::vector<std::vector<float>> layers;  // per layer: heads * T * T floats, [h][query][key]
};

class AttentionModel {
 public:
  // Loads the TorchScript model (xcam::Model::load's errors).
  static AttentionModel load(const std::string& model_path);
  AttentionModel(AttentionModel&&) noexcept;
  AttentionModel& operator=(AttentionModel&&) noexcept;
  ~AttentionModel();

  // Runs forward(input_ids [1, T] long, attention_mask [1, T] long) (only
  // input_ids when forward takes one argument) without autograd and returns
  // the LAST tuple or list in the output (depth first, in order) whose
  // elements are all [1, H, T, T] tensors of one H. Throws xcam::Error when
  // there is none ("export with output_attentions=True, or tap the softmax
  // ..."), or when its rows do not sum to 1 over the unmasked keys (not
  // post-softmax).
  ModelAttentions run(const std::vector<int64_t>& ids, const std::vector<int64_t>& mask) const;

 private:
  struct Impl;
  explicit AttentionModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace xcam

// The attention maps a model returns itself (docs/attention.md).
#include "xcam/attention_outputs.h"

#include <torch/script.h>

#include <cmath>

#include "xcam/error.h"
#include "xcam/model.h"

namespace xcam {

namespace {

// The output's structure, shapes only, for the error message.
std::string describe(const c10::IValue& v) {
  if (v.isTensor()) return "Tensor" + c10::str(v.toTensor().sizes());
  auto seq = [](const std::vector<c10::IValue>& items, const char* open, const char* close) {
    std::string out = open;
    for (size_t k = 0; k < items.size(); ++k) out += (k ? ", " : "") + describe(items[k]);
    return out + close;
  };
  if (v.isTuple()) return seq(v.toTupleRef().elements().vec(), "(", ")");
  if (v.isList()) return seq(v.toListRef().vec(), "[", "]");
  if (v.isGenericDict()) {
    std::vector<c10::IValue> values;
    for (const auto& e : v.toGenericDict()) values.push_back(e.value());
    return seq(values, "{", "}");
  }
  return v.tagKind();
}

// Elements of a tuple, list or dict (the dict's values), in order.
std::vector<c10::IValue> children(const c10::IValue& v) {
  if (v.isTuple()) return v.toTupleRef().elements().vec();
  if (v.isList()) return v.toListRef().vec();
  std::vector<c10::IValue> out;
  if (v.isGenericDict())
    for (const auto& e : v.toGenericDict()) out.push_back(e.value());
  return out;
}

// Whether `items` are all [1, H, T, T] tensors of one H.
bool is_attention_set(const std::vector<c10::IValue>& items, int64_t T) {
  if (items.empty()) return false;
  int64_t heads = -1;
  for (const auto& it : items) {
    if (!it.isTensor()) return false;
    const auto& t = it.toTensor();
    if (t.dim() != 4 || t.size(0) != 1 || t.size(2) != T || t.size(3) != T) return false;
    if (heads >= 0 && t.size(1) != heads) return false;
    heads = t.size(1);
  }
  return true;
}

void find_last(const c10::IValue& v, int64_t T, std::vector<c10::IValue>& found) {
  const auto items = children(v);
  if (is_attention_set(items, T)) found = items;
  for (const auto& c : items) find_last(c, T, found);
}

}  // namespace

struct AttentionModel::Impl {
  Model model;
  std::string path;
  size_t inputs = 2;
};

AttentionModel::AttentionModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AttentionModel::AttentionModel(AttentionModel&&) noexcept = default;
AttentionModel& AttentionModel::operator=(AttentionModel&&) noexcept = default;
AttentionModel::~AttentionModel() = default;

AttentionModel AttentionModel::load(const std::string& model_path) {
  auto impl = std::make_unique<Impl>(Impl{Model::load(model_path), model_path, 2});
  const auto& schema = impl->model.module().get_method("forward").function().getSchema();
  impl->inputs = schema.arguments().size() - 1;  // without self
  XCAM_CHECK(impl->inputs == 1 || impl->inputs == 2,
             "model '{}' takes {} inputs; `xcam attention` feeds forward(input_ids [1, T] long, attention_mask "
             "[1, T] long) (or input_ids alone)",
             model_path, impl->inputs);
  return AttentionModel(std::move(impl));
}

ModelAttentions AttentionModel::run(const std::vector<int64_t>& ids, const std::vector<int64_t>& mask) const {
  const auto T = static_cast<int64_t>(ids.size());
  XCAM_CHECK(T > 0 && mask.size() == ids.size(), "attention run: {} ids and {} mask entries", ids.size(),
             mask.size());
  torch::NoGradGuard no_grad;
  std::vector<c10::IValue> inputs = {torch::tensor(ids, torch::kLong).view({1, T})};
  if (impl_->inputs == 2) inputs.emplace_back(torch::tensor(mask, torch::kLong).view({1, T}));
  c10::IValue out;
  try {
    out = impl_->model.module().forward(inputs);
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    XCAM_THROW("model '{}' failed on input_ids and attention_mask of 1 x {}: {}", impl_->path, T,
               why.substr(0, why.find('\n')));
  }
  std::vector<c10::IValue> found;
  if (is_attention_set({out}, T)) found = {out};
  find_last(out, T, found);
  XCAM_CHECK(!found.empty(),
             "model '{}' returns no attentions (a tuple of [1, heads, {}, {}] tensors; it returns {}); export it "
             "with output_attentions=True, or tap the softmax inside the attention with `xcam explain --method "
             "attention --layer PATH/softmax`",
             impl_->path, T, T, describe(out));
  ModelAttentions res;
  res.tokens = T;
  for (size_t l = 0; l < found.size(); ++l) {
    const auto t = found[l].toTensor().to(torch::kCPU, torch::kFloat).contiguous();
    res.heads = t.size(1);
    // Post-softmax: every real query row sums to 1 over the real keys.
    const auto keep = torch::tensor(mask, torch::kLong).to(torch::kFloat);
    const auto sums = (t[0] * keep.view({1, 1, T})).sum(-1);  // [H, T]
    const double worst = ((sums - 1).abs() * keep.view({1, T})).max().item<double>();
    XCAM_CHECK(worst < 1e-3,
               "model '{}': output attention {} of shape [1, {}, {}, {}] is not post-softmax (a real query row "
               "sum over the real keys is {:.4f} away from 1); return the attention probabilities",
               impl_->path, l, res.heads, T, T, worst);
    res.layers.emplace_back(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
  }
  return res;
}

}  // namespace xcam

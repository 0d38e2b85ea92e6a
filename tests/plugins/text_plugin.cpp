// A text-only classifier plugin (ABI 2.2) for zoo/family_fakes.py's fake text
// encoder, forward(ids B x T) -> logits B x 3: samples have text and no
// image. The sequence is <cls> then the words; batch_key() keeps sentences of
// one length together, and token_layout() lays the word tokens out as a
// 1 x (T - 1) strip with their text, so maps are drawn over the words.
// Option {"vocab": "textcls_vocab.txt"} (required).
#include <nlohmann/json.hpp>

#include <algorithm>

#include "xcam/plugin.h"
#include "vocab.h"

namespace {

constexpr int64_t kCls = 1;

class TextPlugin final : public xcam::ArchPlugin {
 public:
  TextPlugin(const XcamHost*, const char* options) : vocab_(options, "text") {}
  xcam::Preprocess preprocess() const override { return {}; }
  std::vector<std::string> default_layers(const torch::jit::Module&) const override { return {"blocks.0"}; }
  std::string batch_key(const xcam::Sample& s) const override { return std::to_string(words(s).size()); }

  void prepare(torch::jit::Module&, xcam::Batch& b) const override {
    std::vector<at::Tensor> rows;
    for (const auto& s : b.samples) {
      XCAM_CHECK(!s.text.empty(), "sample '{}' has no text; this plugin reads sentences", s.id);
      std::vector<int64_t> ids{kCls};
      for (const auto& w : words(s)) ids.push_back(id_of(w, s.id));
      rows.push_back(torch::tensor(ids, torch::kLong));
    }
    b.inputs = {at::stack(rows)};
  }
  void resolve_targets(const c10::IValue& output, const xcam::TargetRequest& req, xcam::Batch& b) const override {
    const auto top = output.toTensor().argmax(1).cpu();
    b.targets.assign(req.per_sample.size(), {});
    for (size_t i = 0; i < req.per_sample.size(); ++i)
      for (const auto& r : req.per_sample[i]) {
        xcam::Target t;
        t.index = r == "top1" ? top[static_cast<int64_t>(i)].item<int64_t>() : std::stoll(r);
        t.label = "class" + std::to_string(t.index);
        t.explains = t.label + " of '" + b.samples[i].text + "'";
        b.targets[i].push_back(t);
      }
  }
  at::Tensor score(const c10::IValue& output, const xcam::Batch& b, size_t rank,
                   std::vector<double>* scores) const override {
    const auto logits = output.toTensor();
    std::vector<int64_t> idx;
    for (const auto& ts : b.targets) idx.push_back(ts.at(rank).index);
    const auto k = torch::tensor(idx, torch::kLong).unsqueeze(1);
    if (scores) {
      const auto p = logits.detach().softmax(1).gather(1, k).squeeze(1).to(torch::kDouble).contiguous();
      scores->assign(p.data_ptr<double>(), p.data_ptr<double>() + p.numel());
    }
    return logits.gather(1, k).squeeze(1);
  }
  xcam::TokenLayout token_layout(const std::string&, const at::Tensor&, const xcam::Batch& b,
                                 int64_t i) const override {
    xcam::TokenLayout lay;
    lay.words = words(b.samples.at(static_cast<size_t>(i)));
    for (size_t k = 0; k < lay.words.size(); ++k) lay.positions.push_back(static_cast<int64_t>(k) + 1);
    lay.grid_h = 1;
    lay.grid_w = static_cast<int64_t>(lay.words.size());
    return lay;
  }

 private:
  static std::vector<std::string> words(const xcam::Sample& s) { return xcam::test::words(s.text); }
  int64_t id_of(const std::string& w, const std::string& sample) const { return vocab_.id(w, sample); }
  xcam::test::Vocab vocab_;
};

}  // namespace

XCAM_DEFINE_PLUGIN(TextPlugin, "text", "0.0.1", "test: text-only classifier, maps over the words")

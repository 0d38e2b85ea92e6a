// The CNN classifier plugin: image in, logits out (B x classes), feature maps
// B x K x h x w at the taps. Targets are classes: top1 / topK (the K best, in
// one forward), a class index, or a class name from the labels file.
//
// Options (JSON):
//   "score": "logit" (default) | "probability": what y is (SPEC section 3);
//   "activation": "softmax" (default) | "sigmoid": how logits become the
//     probability that is reported (and used when score is "probability");
//     sigmoid for multi-label models.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>

#include "xcam/plugin.h"

namespace {

class CnnPlugin final : public xcam::ArchPlugin {
 public:
  CnnPlugin(const XcamHost* host, const char* options_json) : host_(host) {
    const auto opts = nlohmann::json::parse(options_json ? options_json : "{}", nullptr, false);
    XCAM_CHECK(opts.is_object(), "cnn plugin options must be a JSON object, got '{}'", options_json);
    for (const auto& [key, value] : opts.items()) {
      if (key == "score") {
        score_ = value.get<std::string>();
        XCAM_CHECK(score_ == "logit" || score_ == "probability",
                   "cnn plugin option score='{}': expected 'logit' or 'probability'", score_);
      } else if (key == "activation") {
        activation_ = value.get<std::string>();
        XCAM_CHECK(activation_ == "softmax" || activation_ == "sigmoid",
                   "cnn plugin option activation='{}': expected 'softmax' or 'sigmoid'", activation_);
      } else {
        XCAM_THROW("cnn plugin has no option '{}'; it accepts: score, activation", key);
      }
    }
  }

  xcam::Preprocess preprocess() const override { return {}; }

  // The last module that produces a 4-d feature map is a convolutional block
  // in every common classifier; naming it needs a forward, so the plugin asks
  // for the last top-level child that is not a pooling/flatten/head layer.
  std::vector<std::string> default_layers(const torch::jit::Module& model) const override {
    std::string last;
    for (const auto& child : model.named_children()) {
      std::string type = child.value.type()->name() ? child.value.type()->name()->name() : "";
      std::transform(type.begin(), type.end(), type.begin(), ::tolower);
      const bool head = type.find("pool") != std::string::npos || type.find("linear") != std::string::npos ||
                        type.find("flatten") != std::string::npos || type.find("dropout") != std::string::npos ||
                        child.name == "fc" || child.name == "classifier" || child.name == "head";
      if (!head) last = child.name;
    }
    XCAM_CHECK(!last.empty(), "cannot guess a target layer for this model; name one with --layer");
    return {last};
  }

  void prepare(torch::jit::Module&, xcam::Batch& batch) const override { batch.inputs = {batch.images}; }

  void resolve_targets(const c10::IValue& output, const xcam::TargetRequest& request,
                       xcam::Batch& batch) const override {
    const at::Tensor logits = logits_of(output).detach();
    const int64_t B = logits.size(0), C = logits.size(1);
    batch.targets.assign(static_cast<size_t>(B), {});
    for (int64_t b = 0; b < B; ++b) {
      for (const auto& text : request.per_sample.at(b)) {
        if (text.rfind("top", 0) == 0) {
          const std::string k_text = text.substr(3);
          XCAM_CHECK(!k_text.empty() && std::all_of(k_text.begin(), k_text.end(), ::isdigit),
                     "target '{}': expected topK with K a number, e.g. top1 or top3", text);
          const int64_t k = std::stoll(k_text);
          XCAM_CHECK(k >= 1 && k <= C, "target '{}': K must be between 1 and the {} classes", text, C);
          const auto idx = std::get<1>(logits[b].topk(k));
          for (int64_t i = 0; i < k; ++i) batch.targets[b].push_back(make(idx[i].item<int64_t>(), batch));
        } else if (!text.empty() && std::all_of(text.begin(), text.end(), ::isdigit)) {
          const int64_t c = std::stoll(text);
          XCAM_CHECK(c < C, "target class {} is out of range: the model has {} classes (0..{})", c, C, C - 1);
          batch.targets[b].push_back(make(c, batch));
        } else {
          const auto it = std::find(batch.labels.begin(), batch.labels.end(), text);
          XCAM_CHECK(it != batch.labels.end(),
                     "target '{}' is not a class name{}; use top1, topK, a class index, or a name from the "
                     "labels file",
                     text, batch.labels.empty() ? " (no labels file was given)" : "");
          const int64_t c = it - batch.labels.begin();
          XCAM_CHECK(c < C, "target '{}' is class {} in the labels file but the model has {} classes", text, c, C);
          batch.targets[b].push_back(make(c, batch));
        }
      }
    }
  }

  at::Tensor score(const c10::IValue& output, const xcam::Batch& batch, size_t rank,
                   std::vector<double>* scores) const override {
    const at::Tensor logits = logits_of(output);
    const int64_t B = logits.size(0);
    std::vector<int64_t> idx(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) idx[b] = batch.targets[b][rank].index;
    const auto index = torch::tensor(idx, torch::kLong).to(logits.device()).unsqueeze(1);
    const at::Tensor probs = activation_ == "sigmoid" ? logits.sigmoid() : logits.softmax(1);
    if (scores != nullptr) {
      const auto p = probs.detach().gather(1, index).squeeze(1).to(torch::kCPU, torch::kDouble).contiguous();
      scores->assign(p.data_ptr<double>(), p.data_ptr<double>() + B);
    }
    return (score_ == "probability" ? probs : logits).gather(1, index).squeeze(1);
  }

 private:
  static at::Tensor logits_of(const c10::IValue& output) {
    at::Tensor t;
    if (output.isTensor()) t = output.toTensor();
    else if (output.isTuple() && !output.toTupleRef().elements().empty() &&
             output.toTupleRef().elements()[0].isTensor())
      t = output.toTupleRef().elements()[0].toTensor();
    XCAM_CHECK(t.defined() && t.dim() == 2,
               "the cnn plugin expects the model to return logits of shape B x classes, got {}",
               t.defined() ? c10::str(t.sizes()) : output.tagKind());
    return t;
  }

  static xcam::Target make(int64_t c, const xcam::Batch& batch) {
    xcam::Target t;
    t.kind = "class";
    t.index = c;
    t.label = c < static_cast<int64_t>(batch.labels.size()) && !batch.labels[c].empty() ? batch.labels[c]
                                                                                        : std::to_string(c);
    return t;
  }

  const XcamHost* host_;
  std::string score_ = "logit";
  std::string activation_ = "softmax";
};

}  // namespace

XCAM_DEFINE_PLUGIN(CnnPlugin, "cnn", "1.0.0", "CNN classifiers: B x K x h x w taps, class targets")

// A small classifier plugin that uses the ABI 2 hooks, built three times: as
// ABI 2.0 (PLUGIN_MINOR=0), 2.1 and 2.2. It names layer "last" (an alias of block4),
// puts a payload on its targets, keeps per-sample state in the extras that
// its score reads (a factor per sample, set once by prepare()), and reports
// metadata (2.1), and asks for 96 x 96 inputs through input_size() (2.2).
// The host must call metadata() only on the 2.1 and 2.2 builds,
// input_size() only on the 2.2 one, and carry the per-sample state into the
// perturbation paths.
#include <torch/version.h>

#include <nlohmann/json.hpp>

#include "xcam/plugin.h"

#ifndef PLUGIN_MINOR
#define PLUGIN_MINOR XCAM_PLUGIN_ABI_MINOR
#endif

namespace {

class ClassifierPlugin final : public xcam::ArchPlugin {
 public:
  // Option {"words": true}: decode() "generates" a three-word caption per
  // sample, the classes ranked 1, 2, 1 (a repeated word), and each word is a
  // target (a captioner's map per generated word).
  ClassifierPlugin(const XcamHost*, const char* options) {
    const auto o = nlohmann::json::parse(options ? options : "{}", nullptr, false);
    XCAM_CHECK(o.is_object(), "classifier test plugin: options must be a JSON object, got '{}'", options);
    words_ = o.value("words", false);
  }

  void decode(torch::jit::Module& model, xcam::Batch& b) const override {
    if (!words_) return;
    torch::NoGradGuard no_grad;
    const auto top2 = std::get<1>(model.forward(b.inputs).toTensor().topk(2, 1));
    b.extras["caption"] = at::stack({top2.select(1, 0), top2.select(1, 1), top2.select(1, 0)}, 1);
  }
  xcam::Preprocess preprocess() const override {
    xcam::Preprocess p;
    p.height = p.width = 128;
    return p;
  }
  std::vector<std::string> default_layers(const torch::jit::Module&) const override { return {"block4"}; }
  std::map<std::string, std::string> layer_aliases() const override { return {{"last", "block4"}}; }
  std::array<int64_t, 2> input_size(const std::string&, int64_t, int64_t) const override { return {96, 96}; }

  // The factor of a sample: 1 + its position's parity, fixed when the batch
  // is first prepared; a perturbation batch must carry it (sliced to the sample).
  void prepare(torch::jit::Module&, xcam::Batch& b) const override {
    b.inputs = {b.images};
    const int64_t B = b.images.size(0);
    XCAM_CHECK(static_cast<int64_t>(b.samples.size()) == B, "{} samples for {} images", b.samples.size(), B);
    if (!b.extras.count("factor")) {
      std::vector<float> f;
      for (const auto& s : b.samples) f.push_back(s.id.back() % 2 == 0 ? 1.f : 3.f);
      b.extras["factor"] = torch::tensor(f);
    }
    XCAM_CHECK(b.extras.at("factor").toTensor().size(0) == B, "factor of {} rows for a batch of {}",
               b.extras.at("factor").toTensor().size(0), B);
  }

  void resolve_targets(const c10::IValue& output, const xcam::TargetRequest& req, xcam::Batch& b) const override {
    const auto logits = output.toTensor().detach();
    b.targets.assign(req.per_sample.size(), {});
    if (words_) {
      const auto caption = b.extras.at("caption").toTensor();
      for (size_t i = 0; i < req.per_sample.size(); ++i)
        for (int64_t step = 0; step < caption.size(1); ++step) {
          xcam::Target t;
          t.kind = "token";
          t.step = step;
          t.index = caption[static_cast<int64_t>(i)][step].item<int64_t>();
          t.label = "w" + std::to_string(t.index);
          t.explains = "word " + std::to_string(step) + " of the caption";
          t.payload["sample"] = b.samples.at(i).id;
          b.targets[i].push_back(t);
        }
      return;
    }
    for (size_t i = 0; i < req.per_sample.size(); ++i) {
      xcam::Target t;
      const auto& r = req.per_sample[i].at(0);
      t.index = r == "top1" ? logits[static_cast<int64_t>(i)].argmax().item<int64_t>() : std::stoll(r);
      t.label = "class" + std::to_string(t.index);
      t.explains = "class " + std::to_string(t.index) + " of " + b.samples.at(i).id;
      t.payload["sample"] = b.samples.at(i).id;
      b.targets[i].push_back(t);
    }
  }

  at::Tensor score(const c10::IValue& output, const xcam::Batch& b, size_t rank,
                   std::vector<double>* scores) const override {
    const auto logits = output.toTensor();
    std::vector<int64_t> idx;
    for (const auto& ts : b.targets) {
      XCAM_CHECK(ts.at(rank).payload.count("sample"), "target without its payload");
      idx.push_back(ts.at(rank).index);
    }
    const auto y = logits.gather(1, torch::tensor(idx).unsqueeze(1)).squeeze(1) * b.extras.at("factor").toTensor();
    if (scores) {
      const auto p = logits.detach().softmax(1).gather(1, torch::tensor(idx).unsqueeze(1)).squeeze(1).to(torch::kDouble);
      scores->assign(p.data_ptr<double>(), p.data_ptr<double>() + p.numel());
    }
    return y;
  }

  std::map<std::string, std::string> metadata(const c10::IValue& output, const xcam::Batch& b,
                                              int64_t i) const override {
    const auto& sample = b.samples.at(i);
    std::string names;
    for (const auto& [name, image] : sample.images) names += (names.empty() ? "" : ",") + name;
    std::map<std::string, std::string> m{{"hook", "metadata"},
                                         {"top", std::to_string(output.toTensor()[i].argmax().item<int64_t>())},
                                         {"images", names},
                                         {"text", sample.text},
                                         {"requests", sample.requests.empty() ? "" : sample.requests.front()}};
    // What prepare() could compute from a second image: here its mean.
    if (sample.images.count("reference"))
      m["reference_mean"] = std::to_string(sample.images.at("reference").mean().item<double>());
    if (words_) {
      std::string caption;
      const auto c = b.extras.at("caption").toTensor()[i];
      for (int64_t t = 0; t < c.size(0); ++t) caption += (t ? " w" : "w") + std::to_string(c[t].item<int64_t>());
      m["caption"] = caption;
    }
    return m;
  }

 private:
  bool words_ = false;
};

xcam::ArchPlugin* create(const XcamHost* h, const char* o) { return new ClassifierPlugin(h, o); }
void destroy(xcam::ArchPlugin* p) { delete p; }

const XcamPluginDescriptor kDescriptor = {XCAM_PLUGIN_ABI_MAJOR, PLUGIN_MINOR,  sizeof(XcamPluginDescriptor),
                                          "classifier",          "0.0.1",       TORCH_VERSION,
                                          XCAM_CXX11_ABI,        "test plugin", &create,
                                          &destroy};

}  // namespace

extern "C" __attribute__((visibility("default"))) const XcamPluginDescriptor* XCAM_PLUGIN_ENTRY(void) {
  return &kDescriptor;
}

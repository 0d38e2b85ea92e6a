// An image + prompt decoder plugin (ABI 2.2) for zoo/family_fakes.py's fake
// VLM, forward(pixels, ids) -> logits B x L x V: the image's 8 x 8 patches
// become the tokens at the <img> positions of a causal sequence
//   <bos> <vision_start> <img> x (gh * gw) <vision_end> prompt words
// Each image keeps (about) its own size: input_size() rounds each side to a
// multiple of 8 within a pixel budget, so a wide and a tall image get their
// own grids; token_layout() gives the <img> positions and that grid. The
// target is an answer word after the prompt, scored as its log-probability.
// Option {"vocab": "vlm_vocab.txt"} (required). Task {"name": "count"}: each
// sample answered, explained, written and scored against its meta "count".
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "xcam/plugin.h"
#include "vocab.h"

namespace {

// The position table has 128 entries: at most 100 image tokens and the prompt.
constexpr int64_t kPatch = 8, kMaxPixels = 80 * 80;
constexpr int64_t kBos = 1, kImg = 2, kStart = 3, kEnd = 4;

class VlmPlugin final : public xcam::ArchPlugin {
 public:
  VlmPlugin(const XcamHost*, const char* options) : vocab_(options, "vlm") {}
  xcam::Preprocess preprocess() const override {
    xcam::Preprocess p;
    p.height = p.width = 64;
    p.mean = {0.5f, 0.5f, 0.5f};
    p.std = {0.25f, 0.25f, 0.25f};
    return p;
  }
  std::vector<std::string> default_layers(const torch::jit::Module&) const override { return {"blocks.0"}; }

  // Each side to the nearest multiple of the patch; over the pixel budget,
  // both scaled down to fit and rounded down.
  std::array<int64_t, 2> input_size(const std::string&, int64_t h, int64_t w) const override {
    auto snap = [](double v, bool down) {
      const double q = v / kPatch;
      return std::max<int64_t>(1, down ? static_cast<int64_t>(q) : std::llround(q)) * kPatch;
    };
    int64_t H = snap(double(h), false), W = snap(double(w), false);
    if (H * W > kMaxPixels) {
      const double beta = std::sqrt(double(h) * double(w) / double(kMaxPixels));
      H = snap(h / beta, true);
      W = snap(w / beta, true);
    }
    return {H, W};
  }
  // One prompt length per batch: sequences need no padding.
  std::string batch_key(const xcam::Sample& s) const override { return std::to_string(words(s).size()); }

  void prepare(torch::jit::Module&, xcam::Batch& b) const override {
    const int64_t gh = b.images.size(2) / kPatch, gw = b.images.size(3) / kPatch;
    std::vector<at::Tensor> rows;
    for (const auto& s : b.samples) {
      std::vector<int64_t> ids{kBos, kStart};
      ids.insert(ids.end(), static_cast<size_t>(gh * gw), kImg);
      ids.push_back(kEnd);
      for (const auto& w : words(s)) ids.push_back(id_of(w, s.id));
      rows.push_back(torch::tensor(ids, torch::kLong));
    }
    const auto ids = at::stack(rows).to(b.images.device());
    b.extras["ids"] = ids;
    b.inputs = {b.images, ids};
  }
  void resolve_targets(const c10::IValue& output, const xcam::TargetRequest& req, xcam::Batch& b) const override {
    const auto last = output.toTensor().select(1, -1).argmax(1).cpu();
    b.targets.assign(req.per_sample.size(), {});
    for (size_t i = 0; i < req.per_sample.size(); ++i)
      for (const auto& r : req.per_sample[i]) {
        xcam::Target t;
        t.kind = "answer";
        t.index = r == "top1" ? last[static_cast<int64_t>(i)].item<int64_t>() : id_of(r, b.ids[i]);
        t.label = vocab_.word(t.index);
        t.explains = "answer '" + t.label + "' to '" + b.samples[i].text + "'";
        b.targets[i].push_back(t);
      }
  }
  at::Tensor score(const c10::IValue& output, const xcam::Batch& b, size_t rank,
                   std::vector<double>* scores) const override {
    const auto logp = output.toTensor().select(1, -1).log_softmax(1);
    std::vector<int64_t> idx;
    for (const auto& ts : b.targets) idx.push_back(ts.at(rank).index);
    const auto y = logp.gather(1, torch::tensor(idx, torch::kLong).to(logp.device()).unsqueeze(1)).squeeze(1);
    if (scores) {
      const auto p = y.detach().exp().to(torch::kDouble).cpu().contiguous();
      scores->assign(p.data_ptr<double>(), p.data_ptr<double>() + p.numel());
    }
    return y;
  }
  xcam::TokenLayout token_layout(const std::string&, const at::Tensor&, const xcam::Batch& b,
                                 int64_t i) const override {
    xcam::TokenLayout lay;
    const auto pos = b.extras.at("ids").toTensor()[i].eq(kImg).nonzero().squeeze(1).cpu().contiguous();
    lay.positions.assign(pos.data_ptr<int64_t>(), pos.data_ptr<int64_t>() + pos.numel());
    lay.grid_h = b.images.size(2) / kPatch;
    lay.grid_w = b.images.size(3) / kPatch;
    return lay;
  }
  std::map<std::string, std::string> metadata(const c10::IValue& output, const xcam::Batch&,
                                              int64_t i) const override {
    const auto top = output.toTensor()[i].select(0, -1).argmax().item<int64_t>();
    return {{"answer", vocab_.word(top)}};
  }
  void run_task(xcam::TaskHost& host, const std::string& task_json) const override;

 private:
  static std::vector<std::string> words(const xcam::Sample& s) { return xcam::test::words(s.text); }
  int64_t id_of(const std::string& w, const std::string& sample) const { return vocab_.id(w, sample); }
  xcam::test::Vocab vocab_;
};

// Counting: each sample's answer from a forward without taps, then a map of
// that answer; accuracy against the samples' meta "count".
void VlmPlugin::run_task(xcam::TaskHost& host, const std::string& task_json) const {
  const auto task = nlohmann::json::parse(task_json);
  XCAM_CHECK(task.value("name", "") == "count", "vlm test plugin: unknown task '{}'; it knows 'count'",
             task.value("name", ""));
  nlohmann::json rows = nlohmann::json::array();
  size_t correct = 0;
  for (size_t i = 0; i < host.size(); ++i) {
    const auto out = host.forward({i}).toTensor();
    const auto answer = vocab_.word(out[0].select(0, -1).argmax().item<int64_t>());
    const auto maps = host.explain({i}, {{answer}});
    host.write_maps(maps);
    host.write_panel("count_" + host.id(i), host.id(i) + ": " + answer, maps);
    const auto sample = host.sample(i);
    const auto truth = sample.meta.count("count") ? sample.meta.at("count") : "";
    correct += truth == answer;
    rows.push_back({{"id", host.id(i)}, {"answer", answer}, {"truth", truth}, {"score", maps.at(0).score}});
  }
  host.write_json("count", nlohmann::json{{"samples", rows}}.dump(2));
  host.add_metric("accuracy", host.size() ? double(correct) / double(host.size()) : 0.0);
}

}  // namespace

XCAM_DEFINE_PLUGIN(VlmPlugin, "vlm", "0.0.1", "test: image + prompt decoder, images at their own size")

// A siamese similarity plugin for zoo/attention_models.py's siamese model,
// forward(query, reference) = cosine(enc(query)[CLS], enc(reference)[CLS]):
// the sample's "image" is the query and its named image "reference" the
// other input. Its taps are block 0 of the shared encoder on each branch
// (enc.blocks.0@0, enc.blocks.0@1, aliases "query" and "reference"); the
// reference branch's map is drawn on the reference image. Tokens are laid
// on the (H / 8) x (W / 8) patch grid after the CLS token.
#include "xcam/plugin.h"

namespace {

class SiamesePlugin final : public xcam::ArchPlugin {
 public:
  SiamesePlugin(const XcamHost*, const char*) {}
  xcam::Preprocess preprocess() const override {
    xcam::Preprocess p;
    p.height = p.width = 32;
    p.mean = {0.5f, 0.5f, 0.5f};
    p.std = {0.25f, 0.25f, 0.25f};
    return p;
  }
  std::vector<std::string> default_layers(const torch::jit::Module&) const override {
    return {"enc.blocks.0@0", "enc.blocks.0@1"};
  }
  std::map<std::string, std::string> layer_aliases() const override {
    return {{"query", "enc.blocks.0@0"}, {"reference", "enc.blocks.0@1"}};
  }
  std::string image_of(const std::string& layer) const override {
    return layer.size() > 2 && layer.compare(layer.size() - 2, 2, "@1") == 0 ? "reference" : "image";
  }
  void prepare(torch::jit::Module&, xcam::Batch& b) const override {
    std::vector<at::Tensor> refs;
    for (const auto& s : b.samples) {
      const auto it = s.images.find("reference");
      XCAM_CHECK(it != s.images.end(), "sample '{}' has no reference image; name one in the manifest's \"images\"",
                 s.id);
      refs.push_back(it->second);
    }
    b.inputs = {b.images, at::stack(refs)};
  }
  void resolve_targets(const c10::IValue&, const xcam::TargetRequest& req, xcam::Batch& b) const override {
    b.targets.assign(req.per_sample.size(), {});
    for (size_t i = 0; i < req.per_sample.size(); ++i) {
      xcam::Target t;
      t.kind = "similarity";
      t.label = "similarity";
      t.explains = "similarity of " + b.samples.at(i).id + " to its reference";
      b.targets[i].push_back(t);
    }
  }
  at::Tensor score(const c10::IValue& output, const xcam::Batch&, size_t, std::vector<double>* scores) const override {
    const auto y = output.toTensor();
    if (scores) {
      const auto d = y.detach().to(torch::kDouble).contiguous();
      scores->assign(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
    }
    return y;
  }
  at::Tensor to_grid(const std::string& layer, const at::Tensor& t, const xcam::Batch& b) const override {
    const int64_t gh = b.images.size(2) / 8, gw = b.images.size(3) / 8;
    XCAM_CHECK(t.dim() == 3 && t.size(1) == 1 + gh * gw, "layer '{}': expected B x {} x C tokens, got {}", layer,
               1 + gh * gw, c10::str(t.sizes()));
    return t.narrow(1, 1, gh * gw).transpose(1, 2).reshape({t.size(0), t.size(2), gh, gw});
  }
};

}  // namespace

XCAM_DEFINE_PLUGIN(SiamesePlugin, "siamese", "0.0.1", "test: siamese similarity, maps on query and reference")

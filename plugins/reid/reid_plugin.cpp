// The re-ID plugin's hooks: options, layer types, token geometry, targets and
// scores (plugins/reid/README.md).
#include <nlohmann/json.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <set>

#include "reid.h"

namespace xcam::reid {

namespace {

// CLIP's normalisation: the re-ID ViTs this plugin is made for start from CLIP.
constexpr std::array<float, 3> kClipMean{0.48145466f, 0.4578275f, 0.40821073f};
constexpr std::array<float, 3> kClipStd{0.26862954f, 0.26130258f, 0.27577711f};

// Where the blocks of a ViT lie and where the attention probabilities are
// inside block i, by naming: Hugging Face CLIP vision (the zoo's PromptSG
// holds one as `vit`) and ViT, timm.
struct Naming {
  const char* blocks;
  const char* softmax;
};
constexpr Naming kNamings[] = {
    {"vision_model.encoder.layers.", ".self_attn/softmax"},
    {"encoder.layer.", ".attention.attention/softmax"},
    {"blocks.", ".attn/softmax"},
};

int64_t as_int(const nlohmann::json& v, const std::string& key) {
  XCAM_CHECK(v.is_number_integer() && v.get<int64_t>() > 0, "reid plugin option {}={}: expected a positive integer",
             key, v.dump());
  return v.get<int64_t>();
}

// Options such as "patch": 16 or [16, 8].
std::array<int64_t, 2> pair_of(const nlohmann::json& v, const std::string& key) {
  if (v.is_array()) {
    XCAM_CHECK(v.size() == 2, "reid plugin option {}={}: expected one integer or two", key, v.dump());
    return {as_int(v[0], key), as_int(v[1], key)};
  }
  const auto n = as_int(v, key);
  return {n, n};
}

// Token attention (probabilities B x heads x Q x N, or (B heads) x N x N)
// rather than a CNN feature map: the tap reads a softmax.
bool is_attention(const std::string& layer) { return layer.find("softmax") != std::string::npos; }

bool has_reference(const Sample& s) { return s.images.count("reference") > 0; }

// The identity classifier's weight (C x D) that prepare() keeps in extras.
at::Tensor classifier_of(const Batch& batch) {
  const auto it = batch.extras.find("classifier");
  return it == batch.extras.end() ? at::Tensor() : it->second.toTupleRef().elements().at(0).toTensor();
}

}  // namespace

ReidPlugin::ReidPlugin(const XcamHost* host, const char* options_json) : host_(host) {
  const auto opts = nlohmann::json::parse(options_json ? options_json : "{}", nullptr, false);
  XCAM_CHECK(opts.is_object(), "reid plugin options must be a JSON object, got '{}'", options_json);
  for (const auto& [key, value] : opts.items()) {
    if (key == "size") {
      const auto hw = pair_of(value, key);
      opt_.height = hw[0];
      opt_.width = hw[1];
    } else if (key == "patch") {
      const auto p = pair_of(value, key);
      opt_.patch_h = p[0];
      opt_.patch_w = p[1];
    } else if (key == "prefix_tokens") {
      XCAM_CHECK(value.is_number_integer() && value.get<int64_t>() >= 0,
                 "reid plugin option prefix_tokens={}: expected a count >= 0 (CLS, prompt tokens)", value.dump());
      opt_.prefix = value.get<int64_t>();
    } else if (key == "reference_maps") {
      XCAM_CHECK(value.is_boolean(), "reid plugin option reference_maps={}: expected true or false", value.dump());
      opt_.reference_maps = value.get<bool>();
    } else if (key == "classifier") {
      XCAM_CHECK(value.is_string(), "reid plugin option classifier={}: expected a parameter name such as "
                 "\"classifier.weight\"", value.dump());
      opt_.classifier = value.get<std::string>();
    } else if (key == "layers") {
      XCAM_CHECK(value.is_object(), "reid plugin option layers={}: expected a mapping of layer type to tap, such as "
                 "{{\"vit_last\": \"blocks.11\"}}", value.dump());
      for (const auto& [type, tap] : value.items()) {
        XCAM_CHECK(tap.is_string() && !tap.get<std::string>().empty(),
                   "reid plugin option layers.{}={}: expected a tap such as \"blocks.11\"", type, tap.dump());
        opt_.layers[type] = tap.get<std::string>();
      }
    } else {
      XCAM_THROW("reid plugin has no option '{}'; it accepts: size, patch, prefix_tokens, reference_maps, classifier, "
                 "layers",
                 key);
    }
  }
}

Preprocess ReidPlugin::preprocess() const {
  Preprocess p;
  p.height = opt_.height;
  p.width = opt_.width;
  p.mean = kClipMean;
  p.std = kClipStd;
  return p;
}

std::map<std::string, std::string> ReidPlugin::model_aliases(const torch::jit::Module& model) const {
  std::set<std::string> names;
  for (const auto& m : model.named_modules()) names.insert(m.name);
  auto last_of = [&](const std::string& prefix) {
    int64_t last = -1;
    while (names.count(prefix + std::to_string(last + 1))) ++last;
    return last;
  };
  std::map<std::string, std::string> out;
  // The first naming whose block 0 is in the tree, at the top or under a
  // wrapper's attribute (a ViTModel as `vit`).
  for (const auto& n : kNamings) {
    std::string blocks;
    const std::string first = std::string(n.blocks) + "0";
    for (const auto& name : names)
      if (name.size() >= first.size() && name.compare(name.size() - first.size(), first.size(), first) == 0 &&
          (name.size() == first.size() || name[name.size() - first.size() - 1] == '.') &&
          (blocks.empty() || name.size() < blocks.size() + 1))
        blocks = name.substr(0, name.size() - 1);
    if (blocks.empty()) continue;
    const int64_t last = last_of(blocks);
    out["vit_last"] = blocks + std::to_string(last);
    for (int64_t i = 0; i <= last; ++i)
      out["vit_attention." + std::to_string(i)] = blocks + std::to_string(i) + n.softmax;
    break;
  }
  for (const char* proj : {"vit_proj", "visual_projection"})
    if (names.count(proj)) {
      out["vit_proj"] = proj;
      break;
    }
  if (names.count("mim")) out["mim"] = "mim:in1";  // the patch tokens the prompt attends to
  if (names.count("mim.softmax")) out["mim_attention"] = "mim.softmax";
  // The tokens entering the last block after the MIM: that block's own
  // outputs at the patches reach the embedding (its prompt token) through
  // nothing, so their gradient is zero.
  if (const int64_t last = last_of("post.layers."); last >= 0)
    out["post"] = "post.layers." + std::to_string(last) + ":in";
  for (const char* m : {"bottleneck", "classifier"})
    if (names.count(m)) out[m] = m;
  for (const auto& [type, tap] : opt_.layers) out[type] = tap;
  return out;
}

std::map<std::string, std::string> ReidPlugin::layer_aliases() const {
  // Without the model (hosts before ABI 2.3): the zoo model's names.
  std::map<std::string, std::string> out{{"vit_last", "vit.vision_model.encoder.layers.3"},
                                         {"vit_proj", "vit_proj"},
                                         {"mim", "mim:in1"},
                                         {"mim_attention", "mim.softmax"},
                                         {"post", "post.layers.1:in"},
                                         {"bottleneck", "bottleneck"}};
  for (const auto& [type, tap] : opt_.layers) out[type] = tap;
  return out;
}

std::vector<std::string> ReidPlugin::default_layers(const torch::jit::Module& model) const {
  const auto aliases = model_aliases(model);
  const auto it = aliases.find("vit_last");
  XCAM_CHECK(it != aliases.end(),
             "the reid plugin finds no ViT blocks in this model (it knows the zoo's, Hugging Face CLIP and ViT, and "
             "timm naming); name a layer (`xcam layers MODEL` lists them) or give the plugin option layers.vit_last");
  return {it->second};
}

void ReidPlugin::prepare(torch::jit::Module& model, Batch& batch) const {
  const auto B = static_cast<int64_t>(batch.samples.size());
  const bool refs = B > 0 && has_reference(batch.samples[0]);
  std::vector<at::Tensor> references;
  for (const auto& s : batch.samples) {
    XCAM_CHECK(has_reference(s) == refs, "sample '{}' {} a reference image and sample '{}' {}", s.id,
               has_reference(s) ? "has" : "has no", batch.samples[0].id, refs ? "has" : "has not");
    if (refs) references.push_back(s.images.at("reference"));
  }
  batch.extras.erase("stacked");
  batch.inputs = {batch.images};
  if (refs && opt_.reference_maps) {  // one pass of [queries; references]: maps on both
    batch.inputs = {at::cat({batch.images, at::stack(references)})};
    batch.extras["stacked"] = true;
  } else if (refs && !batch.extras.count("reference_embedding")) {
    torch::NoGradGuard no_grad;
    batch.extras["reference_embedding"] = model.forward({at::stack(references)}).toTensor().detach();
  }
  if (!batch.extras.count("classifier"))
    if (const auto w = classifier_weight(model); w.defined())
      batch.extras["classifier"] = c10::ivalue::Tuple::create({w});
}

at::Tensor ReidPlugin::classifier_weight(const torch::jit::Module& model) const {
  std::lock_guard<std::mutex> lock(classifier_.mutex);
  if (classifier_.looked) return classifier_.weight;  // the plugin serves one model
  const std::vector<std::string> names = opt_.classifier.empty()
                                             ? std::vector<std::string>{"classifier.weight", "head.weight"}
                                             : std::vector<std::string>{opt_.classifier};
  for (const auto& p : model.named_parameters())
    if (std::find(names.begin(), names.end(), p.name) != names.end() && p.value.dim() == 2)
      classifier_.weight = p.value.detach();
  XCAM_CHECK(classifier_.weight.defined() || opt_.classifier.empty(),
             "reid plugin option classifier='{}': the model has no 2-d parameter of that name; give the identity "
             "classifier's weight (C x D)",
             opt_.classifier);
  classifier_.looked = true;
  return classifier_.weight;
}

at::Tensor ReidPlugin::embeddings(const c10::IValue& output, const Batch& batch) {
  XCAM_CHECK(output.isTensor() && output.toTensor().dim() == 2,
             "the model returns {}; a re-ID model returns the embeddings B x D in eval mode (plugins/reid/README.md)",
             output.isTensor() ? "a " + std::to_string(output.toTensor().dim()) + "-d tensor" : output.tagKind());
  return output.toTensor().narrow(0, 0, static_cast<int64_t>(batch.ids.size()));
}

void ReidPlugin::resolve_targets(const c10::IValue& output, const TargetRequest& request, Batch& batch) const {
  const auto emb = embeddings(output, batch).detach();
  const auto w = classifier_of(batch);
  batch.targets.assign(request.per_sample.size(), {});
  for (size_t b = 0; b < request.per_sample.size(); ++b) {
    const Sample& s = batch.samples.at(b);
    auto identity = [&](int64_t c, const std::string& req) {
      XCAM_CHECK(w.defined(), "sample '{}': target '{}' needs the identity classifier, which this model lacks; give "
                 "the plugin option classifier (its C x D weight), or ask for similarity or norm", s.id, req);
      XCAM_CHECK(c >= 0 && c < w.size(0), "sample '{}': identity {} is out of range: the classifier has {}", s.id, c,
                 w.size(0));
      Target t;
      t.kind = "class";
      t.index = c;
      t.label = static_cast<size_t>(c) < batch.labels.size() ? batch.labels[c] : "id" + std::to_string(c);
      t.explains = "identity " + t.label;
      batch.targets[b].push_back(t);
    };
    for (const auto& req : request.per_sample[b]) {
      const bool top = req.size() > 3 && req.compare(0, 3, "top") == 0 &&
                       std::all_of(req.begin() + 3, req.end(), ::isdigit);
      if (req == "similarity" || (req == "top1" && has_reference(s))) {
        XCAM_CHECK(has_reference(s), "sample '{}': target 'similarity' needs a reference image; name one in the "
                   "manifest's \"images\": {{\"reference\": ...}}, or ask for identity (top1) or norm", s.id);
        Target t;
        t.kind = "similarity";
        t.label = "similarity";
        t.explains = "cosine similarity of the embedding to the reference image's";
        batch.targets[b].push_back(t);
      } else if (req == "norm") {
        Target t;
        t.kind = "norm";
        t.label = "norm";
        t.explains = "L2 norm of the embedding";
        batch.targets[b].push_back(t);
      } else if (top || req == "identity") {
        XCAM_CHECK(w.defined() && w.size(1) == emb.size(1),
                   "sample '{}': target '{}' needs the identity classifier (C x {}), which this model lacks; give the "
                   "plugin option classifier, or ask for similarity or norm", s.id, req, emb.size(1));
        const int64_t k = req == "identity" ? 1 : std::stoll(req.substr(3));
        XCAM_CHECK(k >= 1 && k <= w.size(0), "sample '{}': '{}' asks for more identities than the classifier's {}",
                   s.id, req, w.size(0));
        const auto idx = std::get<1>(at::matmul(emb[b], w.t()).topk(k));
        for (int64_t i = 0; i < k; ++i) identity(idx[i].item<int64_t>(), req);
      } else if (!req.empty() && std::all_of(req.begin(), req.end(), ::isdigit)) {
        identity(std::stoll(req), req);
      } else {
        const auto it = std::find(batch.labels.begin(), batch.labels.end(), req);
        XCAM_CHECK(it != batch.labels.end(), "sample '{}': target '{}' is not similarity, norm, identity, topK, an "
                   "identity index or a name from the labels file", s.id, req);
        identity(it - batch.labels.begin(), req);
      }
    }
  }
}

at::Tensor ReidPlugin::score(const c10::IValue& output, const Batch& batch, size_t rank,
                             std::vector<double>* readable) const {
  const auto B = static_cast<int64_t>(batch.ids.size());
  const auto all = output.toTensor();
  const auto emb = embeddings(output, batch);
  const auto w = classifier_of(batch);
  std::vector<at::Tensor> y, shown;  // shown: the readable score, read back once for the batch
  for (int64_t b = 0; b < B; ++b) {
    const Target& t = batch.targets.at(b).at(rank);
    if (t.kind == "similarity") {
      // Not detached in a stacked pass: the rows are independent, so the
      // gradient on each side is that of the other side detached.
      const auto ref = batch.extras.count("stacked") ? all[B + b]
                                                     : batch.extras.at("reference_embedding").toTensor()[b];
      y.push_back(at::cosine_similarity(emb[b], ref.to(emb.dtype()), 0));
      shown.push_back(y.back().detach());
    } else if (t.kind == "norm") {
      y.push_back(emb[b].norm());
      shown.push_back(y.back().detach());
    } else {
      const auto logits = at::matmul(emb[b], w.t().to(emb.dtype()));
      y.push_back(logits[t.index]);
      shown.push_back(logits.detach().softmax(0)[t.index]);
    }
  }
  if (readable) {
    const auto r = at::stack(shown).to(at::kCPU, at::kDouble).contiguous();
    readable->assign(r.data_ptr<double>(), r.data_ptr<double>() + r.numel());
  }
  return at::stack(y);
}

TokenLayout ReidPlugin::token_layout(const std::string& layer, const at::Tensor& tapped, const Batch& batch,
                                     int64_t) const {
  if (!batch.images.defined()) return {};
  int64_t n = 0;
  if (tapped.dim() == 3) n = tapped.size(1);                              // B x N x C, (B heads) x N x N
  else if (tapped.dim() == 4 && is_attention(layer)) n = tapped.size(3);  // B x heads x Q x N
  else return {};                                                         // CNN feature maps, embeddings
  const int64_t H = batch.images.size(2), W = batch.images.size(3);
  XCAM_CHECK(H % opt_.patch_h == 0 && W % opt_.patch_w == 0,
             "input {} x {} is not a multiple of the patch {} x {}; set the size (preprocess.size) or the plugin option "
             "patch to the model's", H, W, opt_.patch_h, opt_.patch_w);
  const int64_t gh = H / opt_.patch_h, gw = W / opt_.patch_w;
  const int64_t prefix = opt_.prefix >= 0 ? opt_.prefix : n - gh * gw;
  XCAM_CHECK(prefix >= 0 && prefix + gh * gw == n,
             "layer '{}' has {} tokens; a {} x {} input in {} x {} patches makes a {} x {} grid{}: set the plugin "
             "options patch (and prefix_tokens) to the model's",
             layer, n, H, W, opt_.patch_h, opt_.patch_w, gh, gw,
             opt_.prefix >= 0 ? fmt::format(" after {} prefix tokens, {} in all", opt_.prefix, opt_.prefix + gh * gw)
                              : "");
  TokenLayout lay;
  lay.grid_h = gh;
  lay.grid_w = gw;
  for (int64_t q = prefix; q < n; ++q) lay.positions.push_back(q);
  return lay;
}

at::Tensor ReidPlugin::to_grid(const std::string& layer, const at::Tensor& tapped, const Batch& batch) const {
  XCAM_CHECK(tapped.dim() == 4,
             "layer '{}' gives a {}-d tensor {}: {}. Tap tokens or a feature map: the layer types vit_last, vit_proj, "
             "mim, post, or a CNN stage (`xcam layers MODEL` lists shapes)",
             layer, tapped.dim(), c10::str(tapped.sizes()),
             tapped.dim() == 2 ? "an embedding has no positions on the image" : "not B x K x h x w");
  return tapped;
}

std::vector<std::string> ReidPlugin::stacked_images(const Batch& batch) const {
  return batch.extras.count("stacked") ? std::vector<std::string>{"reference"} : std::vector<std::string>{};
}

std::map<std::string, std::string> ReidPlugin::metadata(const c10::IValue& output, const Batch& batch,
                                                        int64_t b) const {
  const auto emb = embeddings(output, batch)[b].detach().to(at::kDouble);  // this sample's row only
  std::map<std::string, std::string> meta{{"embedding_norm", fmt::format("{:.6f}", emb.norm().item<double>())}};
  if (has_reference(batch.samples.at(b))) {
    const auto ref = batch.extras.count("stacked")
                         ? output.toTensor()[static_cast<int64_t>(batch.ids.size()) + b]
                         : batch.extras.at("reference_embedding").toTensor()[b];
    meta["similarity"] =
        fmt::format("{:.6f}", at::cosine_similarity(emb, ref.detach().to(at::kDouble), 0).item<double>());
  }
  return meta;
}

}  // namespace xcam::reid

XCAM_DEFINE_PLUGIN(xcam::reid::ReidPlugin, "reid", "0.1.0",
                   "person re-ID: similarity, identity and norm maps; MIM attention; evaluate and search tasks")

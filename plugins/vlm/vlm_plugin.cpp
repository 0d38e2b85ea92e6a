// The vlm plugin's hooks (plugins/vlm/README.md): options, the model's
// geometry and tokenizer, the prompt around the image tokens, greedy answers,
// the answer's targets and scores, and where a tap's values lie on the image.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <memory>
#include <mutex>
#include <optional>

#include "vlm.h"
#include "xcam/plugin.h"
#include "xcam/tokenizer.h"

namespace xcam::vlm {

namespace {

bool has_prefix(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

bool is_count(const std::string& s) {
  return !s.empty() && s.size() < 10 && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(c); });
}

// The index N of modules `prefix`.N of the model: how many there are.
int64_t count_children(const torch::jit::Module& model, const std::string& prefix) {
  int64_t n = 0;
  for (const auto& m : model.named_modules()) {
    if (!has_prefix(m.name, prefix)) continue;
    const std::string rest = m.name.substr(prefix.size());
    if (is_count(rest)) n = std::max<int64_t>(n, std::stoll(rest) + 1);
  }
  return n;
}

int64_t int_attr(const torch::jit::Module& model, const char* name) {
  XCAM_CHECK(model.hasattr(name) && model.attr(name).isInt(),
             "the model has no integer attribute '{}'; the vlm plugin reads its geometry from the traced file's "
             "attributes: export the model with zoo/vlm_model.py (plugins/vlm/README.md)",
             name);
  return model.attr(name).toInt();
}

std::array<float, 3> float3_attr(const torch::jit::Module& model, const char* name) {
  XCAM_CHECK(model.hasattr(name) && model.attr(name).isDoubleList() && model.attr(name).toDoubleList().size() == 3,
             "the model has no attribute '{}' (three floats); export it with zoo/vlm_model.py (plugins/vlm/README.md)",
             name);
  const auto v = model.attr(name).toDoubleList();
  return {float(v[0]), float(v[1]), float(v[2])};
}

}  // namespace

struct Options {
  std::string tokenizer;          // tokenizer.json; else the model's `tokenizer` attribute
  std::string answer;             // explain this answer instead of generating one
  int64_t max_new_tokens = 8;     // greedy answers' length cap
  std::optional<std::array<float, 3>> mean, std;
};

class VlmPlugin final : public ArchPlugin {
 public:
  VlmPlugin(const XcamHost*, const char* options_json);

  Preprocess preprocess() const override;
  std::vector<std::string> default_layers(const torch::jit::Module& model) const override;
  std::map<std::string, std::string> model_aliases(const torch::jit::Module& model) const override;
  std::array<int64_t, 2> input_size(const std::string& name, int64_t height, int64_t width) const override;
  std::string batch_key(const Sample& sample) const override { return sample.id; }  // one sample a forward
  void prepare(torch::jit::Module& model, Batch& batch) const override;
  void decode(torch::jit::Module& model, Batch& batch) const override;
  void resolve_targets(const c10::IValue& output, const TargetRequest& request, Batch& batch) const override;
  at::Tensor score(const c10::IValue& output, const Batch& batch, size_t rank,
                   std::vector<double>* readable) const override;
  at::Tensor to_grid(const std::string& layer, const at::Tensor& tapped, const Batch& batch) const override;
  TokenLayout token_layout(const std::string& layer, const at::Tensor& tapped, const Batch& batch,
                           int64_t b) const override;
  std::map<std::string, std::string> metadata(const c10::IValue& output, const Batch& batch,
                                              int64_t b) const override;
  void run_task(TaskHost& host, const std::string& task_json) const override;

 private:
  // The model's geometry, tokenizer and depth, read once from the first model
  // the host shows (model_aliases() is asked before any sample).
  struct Known {
    Geometry geo;
    std::shared_ptr<const Tokenizer> tok;
    int64_t blocks = 0, layers = 0;
    at::ScalarType dtype = at::kFloat;  // the weights': pixel values are cast to it
  };
  const Known& know(const torch::jit::Module& model) const;
  const Known& known() const;
  std::string question(const Sample& s) const;
  std::vector<int64_t> generate(torch::jit::Module& model, const Batch& batch, const std::vector<int64_t>& prompt) const;
  std::vector<c10::IValue> inputs(const Known& k, const at::Tensor& image, const std::vector<int64_t>& ids) const;
  static std::vector<int64_t> row(const Batch& batch, const char* key);
  static TokenLayout vision_attention_layout(const Known& k, int64_t gh, int64_t gw);

  Options opt_;
  mutable std::mutex mutex_;
  mutable std::optional<Known> known_;
};

VlmPlugin::VlmPlugin(const XcamHost*, const char* options_json) {
  const auto opts = nlohmann::json::parse(options_json ? options_json : "{}", nullptr, false);
  XCAM_CHECK(opts.is_object(), "vlm plugin options must be a JSON object, got '{}'", options_json);
  auto three = [](const nlohmann::json& v, const std::string& key) {
    XCAM_CHECK(v.is_array() && v.size() == 3 && std::all_of(v.begin(), v.end(), [](auto& x) { return x.is_number(); }),
               "vlm plugin option {}={}: expected three numbers", key, v.dump());
    return std::array<float, 3>{v[0].get<float>(), v[1].get<float>(), v[2].get<float>()};
  };
  for (const auto& [key, value] : opts.items()) {
    if (key == "tokenizer") {
      XCAM_CHECK(value.is_string() && !value.get<std::string>().empty(),
                 "vlm plugin option tokenizer={}: expected the path of a tokenizer.json", value.dump());
      opt_.tokenizer = value.get<std::string>();
    } else if (key == "answer") {
      XCAM_CHECK(value.is_string() || value.is_number_integer(), "vlm plugin option answer={}: expected a string",
                 value.dump());
      opt_.answer = value.is_string() ? value.get<std::string>() : std::to_string(value.get<int64_t>());
    } else if (key == "max_new_tokens") {
      XCAM_CHECK(value.is_number_integer() && value.get<int64_t>() > 0,
                 "vlm plugin option max_new_tokens={}: expected a positive integer", value.dump());
      opt_.max_new_tokens = value.get<int64_t>();
    } else if (key == "mean" || key == "std") {
      (key == "mean" ? opt_.mean : opt_.std) = three(value, key);
    } else {
      XCAM_THROW("vlm plugin has no option '{}'; it accepts: tokenizer, answer, max_new_tokens, mean, std", key);
    }
  }
  // A tokenizer named here is read now, so that a wrong path fails at once.
  if (!opt_.tokenizer.empty()) (void)Tokenizer::from_file(opt_.tokenizer);
}

Preprocess VlmPlugin::preprocess() const {
  Preprocess p;
  p.height = p.width = 224;  // input_size() sizes real images; this serves `xcam layers`
  const Geometry qwen;
  p.mean = opt_.mean.value_or(qwen.mean);
  p.std = opt_.std.value_or(qwen.std);
  return p;
}

const VlmPlugin::Known& VlmPlugin::know(const torch::jit::Module& model) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (known_) return *known_;
  Known k;
  std::optional<at::ScalarType> seen;
  for (const auto& p : model.parameters()) {
    const auto t = p.scalar_type();
    XCAM_CHECK(!(t == at::kHalf && p.device().is_cpu()),
               "the model's weights are Half (float16) on the CPU, where LibTorch has no float16 kernels for its "
               "convolution, matmuls and norms: export it in bfloat16 (zoo/vlm_model.py --dtype bfloat16) or float32, "
               "or run it on a GPU");
    XCAM_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf,
               "the model's weights are {}; the vlm plugin runs float32, float64, bfloat16 (and, on a GPU, float16) "
               "exports (zoo/vlm_model.py)",
               c10::toString(t));
    XCAM_CHECK(!seen || *seen == t, "the model mixes {} and {} weights; export it in one dtype (zoo/vlm_model.py "
               "--dtype)", c10::toString(*seen), c10::toString(t));
    seen = t;
  }
  k.dtype = seen.value_or(at::kFloat);
  const auto args = model.get_method("forward").function().getSchema().arguments().size() - 1;
  XCAM_CHECK(args == 5 || args == 7,
             "the model's forward takes {} inputs; the vlm plugin runs Qwen2-VL exports, forward(input_ids, "
             "pixel_values, position_ids, vision_rotary, cu_seqlens), and Qwen2.5-VL's, with window_index and "
             "cu_window_seqlens after (zoo/vlm_model.py, plugins/vlm/README.md)",
             args);
  Geometry& g = k.geo;
  g.patch = int_attr(model, "patch_size");
  g.merge = int_attr(model, "spatial_merge_size");
  g.temporal = int_attr(model, "temporal_patch_size");
  g.min_pixels = int_attr(model, "min_pixels");
  g.max_pixels = int_attr(model, "max_pixels");
  g.vision_head_dim = int_attr(model, "vision_head_dim");
  g.image_token = int_attr(model, "image_token_id");
  g.eos = int_attr(model, "eos_token_id");
  if (args == 7) {
    g.window_size = int_attr(model, "window_size");
    g.max_windows = int_attr(model, "max_windows");
  }
  g.mean = float3_attr(model, "image_mean");
  g.std = float3_attr(model, "image_std");
  const Preprocess p = preprocess();
  for (int c = 0; c < 3; ++c)
    XCAM_CHECK(std::abs(p.mean[c] - g.mean[c]) < 1e-6f && std::abs(p.std[c] - g.std[c]) < 1e-6f,
               "the model normalises images with mean [{}] and std [{}]; the vlm plugin's are [{}] and [{}]: give the "
               "plugin options mean and std (or remove them)",
               fmt::join(g.mean, ", "), fmt::join(g.std, ", "), fmt::join(p.mean, ", "), fmt::join(p.std, ", "));
  std::string tok = opt_.tokenizer;
  if (tok.empty() && model.hasattr("tokenizer") && model.attr("tokenizer").isString())
    tok = model.attr("tokenizer").toStringRef();
  XCAM_CHECK(!tok.empty(),
             "the vlm plugin needs the model's tokenizer: give the plugin option tokenizer, the path of its "
             "tokenizer.json (the zoo's models: zoo/models/tokenizers/qwen2/tokenizer.json, named in "
             "zoo/models/vlm/vlm.json)");
  k.tok = std::make_shared<const Tokenizer>(Tokenizer::from_file(tok));
  XCAM_CHECK(k.tok->token_to_id("<|image_pad|>") == g.image_token,
             "tokenizer '{}' does not match the model: its <|image_pad|> is not the model's image token {}; give "
             "the model's own tokenizer.json (plugin option tokenizer)",
             tok, g.image_token);
  k.blocks = count_children(model, "visual.blocks.");
  k.layers = count_children(model, "model.layers.");
  XCAM_CHECK(k.blocks > 0 && k.layers > 0,
             "the model has no visual.blocks.N or model.layers.N; the vlm plugin runs transformers' Qwen2-VL "
             "exported by zoo/vlm_model.py");
  known_ = std::move(k);
  return *known_;
}

const VlmPlugin::Known& VlmPlugin::known() const {
  std::lock_guard<std::mutex> lock(mutex_);
  XCAM_CHECK(known_.has_value(), "vlm plugin: the model was not shown to the plugin yet (model_aliases())");
  return *known_;
}

// vision_last, vision.<i>, decoder.<i>, merger.
std::map<std::string, std::string> VlmPlugin::model_aliases(const torch::jit::Module& model) const {
  const Known& k = know(model);
  std::map<std::string, std::string> out{{"vision_last", fmt::format("visual.blocks.{}", k.blocks - 1)},
                                         {"merger", "visual.merger"},
                                         {"decoder_middle", fmt::format("model.layers.{}", (k.layers - 1) / 2)}};
  for (int64_t i = 0; i < k.blocks; ++i) out[fmt::format("vision.{}", i)] = fmt::format("visual.blocks.{}", i);
  for (int64_t i = 0; i < k.layers; ++i) out[fmt::format("decoder.{}", i)] = fmt::format("model.layers.{}", i);
  return out;
}

std::vector<std::string> VlmPlugin::default_layers(const torch::jit::Module& model) const {
  return {fmt::format("visual.blocks.{}", know(model).blocks - 1)};
}

std::array<int64_t, 2> VlmPlugin::input_size(const std::string&, int64_t height, int64_t width) const {
  return resized_size(height, width, known().geo);
}

std::string VlmPlugin::question(const Sample& s) const {
  if (!s.text.empty()) return s.text;
  if (const auto it = s.meta.find("question"); it != s.meta.end() && !it->second.empty()) return it->second;
  XCAM_THROW("sample '{}' has no question: the vlm plugin asks the model the sample's text (a manifest line's "
             "\"text\", or its \"question\")",
             s.id);
}

std::vector<c10::IValue> VlmPlugin::inputs(const Known& k, const at::Tensor& image,
                                           const std::vector<int64_t>& ids) const {
  const auto& g = k.geo;
  const auto dev = image.device();
  const int64_t gh = image.size(1) / g.patch, gw = image.size(2) / g.patch, T = static_cast<int64_t>(ids.size());
  std::vector<c10::IValue> in{torch::tensor(ids, at::kLong).view({1, T}).to(dev),
                               image_to_patches(image, g).to(k.dtype),
                               torch::tensor(rope_position_ids(ids, gh, gw, g), at::kLong).view({3, 1, T}).to(dev),
                               vision_rotary(gh, gw, g).to(dev), cu_seqlens(gh, gw).to(dev)};
  if (g.max_windows > 0)
    for (const auto& t : window_inputs(gh, gw, g)) in.push_back(t.to(dev));
  return in;
}

std::vector<int64_t> VlmPlugin::row(const Batch& batch, const char* key) {
  const auto t = batch.extras.at(key).toTensor().to(at::kCPU).contiguous();
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()};
}

void VlmPlugin::prepare(torch::jit::Module& model, Batch& batch) const {
  const Known& k = know(model);
  XCAM_CHECK(batch.images.defined(), "the vlm plugin explains images with a question; sample '{}' has no image",
             batch.ids.empty() ? "" : batch.ids[0]);
  XCAM_CHECK(batch.images.size(0) == 1,
             "the vlm plugin runs one sample a forward (the traced Qwen2-VL takes batch 1); got {} rows (the "
             "perturbation methods and the faithfulness metrics batch copies of a sample: use a gradient method)",
             batch.images.size(0));
  std::vector<int64_t> ids;
  if (batch.extras.count("ids")) {
    ids = row(batch, "ids");  // prompt + answer, after decode()
  } else {
    const int64_t n = batch.images.size(2) / k.geo.patch * (batch.images.size(3) / k.geo.patch) /
                      (k.geo.merge * k.geo.merge);
    ids = prompt_ids(*k.tok, n, question(batch.samples.at(0)));
    batch.extras["prompt_len"] = torch::tensor(std::vector<int64_t>{static_cast<int64_t>(ids.size())}, at::kLong).view({1, 1});
  }
  batch.inputs = inputs(k, batch.images[0], ids);
}

std::vector<int64_t> VlmPlugin::generate(torch::jit::Module& model, const Batch& batch,
                                         const std::vector<int64_t>& prompt) const {
  const Known& k = know(model);
  const Sample& s = batch.samples.at(0);
  std::string given = opt_.answer;
  if (const auto it = s.meta.find("answer"); it != s.meta.end()) given = it->second;
  if (!given.empty()) {
    auto ids = k.tok->ids(given, false);
    ids.push_back(k.geo.eos);
    return ids;
  }
  torch::NoGradGuard no_grad;
  std::vector<int64_t> ids = prompt, answer;
  for (int64_t step = 0; step < opt_.max_new_tokens; ++step) {
    const auto logits = model.forward(inputs(k, batch.images[0], ids)).toTensor();
    const int64_t next = logits[0][-1].argmax().item<int64_t>();
    answer.push_back(next);
    ids.push_back(next);
    if (next == k.geo.eos) break;
  }
  return answer;
}

void VlmPlugin::decode(torch::jit::Module& model, Batch& batch) const {
  if (batch.extras.count("answer")) return;  // a copy of a decoded batch
  const auto prompt = row(batch, "prompt_len").at(0);
  auto ids = batch.inputs.at(0).toTensor().to(at::kCPU).contiguous();
  std::vector<int64_t> seq(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
  seq.resize(static_cast<size_t>(prompt));
  const auto answer = generate(model, batch, seq);
  seq.insert(seq.end(), answer.begin(), answer.end());
  batch.extras["answer"] = torch::tensor(answer, at::kLong).view({1, -1});
  batch.extras["ids"] = torch::tensor(seq, at::kLong).view({1, -1});
  batch.inputs = inputs(know(model), batch.images[0], seq);
}

void VlmPlugin::resolve_targets(const c10::IValue& output, const TargetRequest& request, Batch& batch) const {
  const Known& k = known();
  XCAM_CHECK(output.isTensor() && output.toTensor().dim() == 3,
             "the model returns {}; a Qwen2-VL export returns logits [1, T, V] (plugins/vlm/README.md)",
             output.isTensor() ? c10::str(output.toTensor().sizes()) : output.tagKind());
  const auto answer = row(batch, "answer");
  const int64_t prompt = row(batch, "prompt_len").at(0);
  const Sample& s = batch.samples.at(0);
  const std::string text = k.tok->decode(answer);
  XCAM_CHECK(!answer.empty() && !(answer.size() == 1 && answer[0] == k.geo.eos),
             "sample '{}': the model's answer is empty (it ended at once); there is nothing to explain", s.id);
  batch.targets.assign(1, {});
  for (const auto& req : request.per_sample.at(0)) {
    Target t;
    t.payload["request"] = req;
    t.tokens = answer;
    t.step = prompt;
    if (req == "top1" || req == "answer") {
      t.kind = "answer";
      t.index = answer[0];
      t.label = text.empty() ? "answer" : text;
      t.explains = fmt::format("answer '{}' to '{}' (sum of its {} tokens' log-probabilities)", text, question(s),
                               answer.size());
    } else if (has_prefix(req, "token:")) {
      const std::string kk = req.substr(6);
      XCAM_CHECK(is_count(kk) && std::stoll(kk) < static_cast<int64_t>(answer.size()),
                 "sample '{}': target '{}': the answer '{}' has tokens 0 to {}", s.id, req, text, answer.size() - 1);
      const int64_t K = std::stoll(kk);
      t.kind = "token";
      t.step = prompt + K;
      t.index = answer[static_cast<size_t>(K)];
      t.tokens = {t.index};
      t.label = fmt::format("token{}", K);
      t.explains = fmt::format("token {} '{}' of the answer '{}'", K, k.tok->decode({t.index}, false), text);
    } else {
      XCAM_THROW("sample '{}': target '{}': the vlm plugin explains the answer (top1 or answer: the sum of its "
                 "tokens' log-probabilities) or one of its tokens (token:K); give another answer with the plugin "
                 "option answer or the manifest key \"answer\"",
                 s.id, req);
    }
    batch.targets[0].push_back(t);
  }
}

// The sum of the target's tokens' log-probabilities, log_softmax in float64
// (a confident token's gradient 1 - p cancels to noise in float32).
at::Tensor VlmPlugin::score(const c10::IValue& output, const Batch& batch, size_t rank,
                            std::vector<double>* readable) const {
  const auto logits = output.toTensor();
  const Target& t = batch.targets.at(0).at(rank);
  const auto n = static_cast<int64_t>(t.tokens.size());
  const auto dev = logits.device();
  const auto steps = at::arange(t.step - 1, t.step - 1 + n, at::TensorOptions().dtype(at::kLong).device(dev));
  const auto lp = at::log_softmax(logits[0].index_select(0, steps).to(at::kDouble), 1)
                      .gather(1, torch::tensor(t.tokens, at::kLong).to(dev).unsqueeze(1))
                      .sum()
                      .view({1});
  if (readable) readable->assign(1, std::exp(lp.item<double>()));
  return lp.to(logits.dtype());
}

TokenLayout VlmPlugin::token_layout(const std::string& layer, const at::Tensor& tapped, const Batch& batch,
                                    int64_t) const {
  const Known& k = known();
  const auto ids = batch.inputs.at(0).toTensor();
  const int64_t gh = batch.images.size(2) / k.geo.patch, gw = batch.images.size(3) / k.geo.patch;
  if (tapped.dim() == 3 && tapped.size(1) == gh * gw && tapped.size(2) == gh * gw && tapped.size(1) != ids.size(1))
    return vision_attention_layout(k, gh, gw);  // a vision block's attention, heads x P x P
  // A decoder layer's attention (1 x heads x T x T) has the image tokens among its keys.
  const bool decoder_attention = tapped.dim() == 4 && tapped.size(3) == ids.size(1);
  if (!decoder_attention && (tapped.dim() != 3 || tapped.size(1) != ids.size(1))) return {};  // vision: to_grid()
  XCAM_CHECK(decoder_attention || layer != fmt::format("model.layers.{}", k.layers - 1),
             "layer '{}' is the last decoder layer: its outputs at the image positions reach the answer's logits "
             "through no further attention, so their gradient there is exactly zero (SPEC section 6); tap a middle "
             "decoder layer (decoder_middle, decoder.{}) or a vision block (vision_last)",
             layer, (k.layers - 1) / 2);
  TokenLayout lay;
  const auto row = ids[0].to(at::kCPU).contiguous();
  for (int64_t q = 0; q < row.size(0); ++q)
    if (row.data_ptr<int64_t>()[q] == k.geo.image_token) lay.positions.push_back(q);  // raster order of merged blocks
  const int64_t m = k.geo.patch * k.geo.merge;
  lay.grid_h = batch.images.size(2) / m;
  lay.grid_w = batch.images.size(3) / m;
  return lay;
}

// The patches of a vision block's attention, laid out on the patch grid.
TokenLayout VlmPlugin::vision_attention_layout(const Known& k, int64_t gh, int64_t gw) {
  TokenLayout lay;
  lay.grid_h = gh;
  lay.grid_w = gw;
  lay.positions = vision_token_rows(gh, gw, k.geo);
  return lay;
}

at::Tensor VlmPlugin::to_grid(const std::string& layer, const at::Tensor& tapped, const Batch& batch) const {
  const Known& k = known();
  const int64_t gh = batch.images.size(2) / k.geo.patch, gw = batch.images.size(3) / k.geo.patch,
                m = k.geo.merge;
  // Qwen2.5-VL's vision blocks and merger see the merged tokens window by
  // window: put them back in raster order first.
  auto raster = [&](const at::Tensor& rows) {
    return k.geo.max_windows > 0 ? from_window_order(rows, window_inputs(gh, gw, k.geo)[0]) : rows;
  };
  if (tapped.dim() == 2 && tapped.size(0) == gh * gw) return patches_to_grid(raster(tapped), gh, gw, m);
  if (tapped.dim() == 2 && tapped.size(0) == gh * gw / (m * m))  // the merger: merged blocks
    return raster(tapped).reshape({gh / m, gw / m, tapped.size(1)}).permute({2, 0, 1}).unsqueeze(0);
  XCAM_THROW("layer '{}' gives {}; the vlm plugin lays out vision blocks ({} x C patches), the merger ({} x C) and "
             "decoder layers (1 x T x C at the image tokens): tap one of those (vision_last, decoder_middle)",
             layer, c10::str(tapped.sizes()), gh * gw, gh * gw / (m * m));
}

std::map<std::string, std::string> VlmPlugin::metadata(const c10::IValue& output, const Batch& batch,
                                                       int64_t) const {
  const Known& k = known();
  auto answer = row(batch, "answer");
  const bool ended = !answer.empty() && answer.back() == k.geo.eos;
  if (ended) answer.pop_back();
  const std::string text = k.tok->decode(answer);
  const Sample& s = batch.samples.at(0);
  const bool given = !opt_.answer.empty() || s.meta.count("answer");
  std::map<std::string, std::string> out{{"answer", text},
                                         {"question", question(s)},
                                         {"ended", ended ? "true" : "false"},
                                         {"decoding", given ? "given" : "greedy"}};
  if (is_count(text)) out["answer_count"] = std::to_string(std::stoll(text));
  Batch scored = batch;  // the whole answer's probability, whatever the target
  Target whole;
  whole.tokens = row(batch, "answer");
  whole.step = row(batch, "prompt_len").at(0);
  scored.targets = {{whole}};
  std::vector<double> p;
  torch::NoGradGuard no_grad;
  (void)score(output.toTensor().detach(), scored, 0, &p);
  out["probability"] = fmt::format("{:.6g}", p.at(0));
  return out;
}

void VlmPlugin::run_task(TaskHost& host, const std::string& task_json) const {
  const auto j = nlohmann::json::parse(task_json);
  const std::string name = j.value("name", "");
  XCAM_CHECK(name == "count", "the vlm plugin has the task count, not '{}'", name);
  run_count_task(host, task_json, !opt_.answer.empty());
}

}  // namespace xcam::vlm

XCAM_DEFINE_PLUGIN(xcam::vlm::VlmPlugin, "vlm", "0.1.0",
                   "decoder-only VLMs (Qwen2-VL exports): greedy answers, the answer's log-probability explained at "
                   "vision blocks or a middle decoder layer's image tokens")

// The explanation runtime: forward with taps, targets, gradients w.r.t. the
// taps only, and the fused map kernels.
#include <omp.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <thread>

#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/kernels/dispatch.h"
#include "xcam/kernels/types.h"
#include "xcam/model.h"
#include "xcam/plugin.h"
#include "xcam/plugin_loader.h"
#include "methods.h"
#include "onednn_convs.h"
#include "views.h"

namespace xcam {

namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::vector<std::string> read_labels(const std::string& file) {
  std::vector<std::string> labels;
  if (file.empty()) return labels;
  std::ifstream in(file);
  XCAM_CHECK(in.good(), "labels file '{}' cannot be read; give a text file with one class name a line", file);
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    labels.push_back(line);
  }
  return labels;
}

// The plugin's last error, captured from its log, for the refusal message.
std::string g_last_plugin_error;  // NOLINT: written only during create()
void capture_log(const XcamHost* host, int level, const char* msg) {
  if (level >= 3 && msg) {
    g_last_plugin_error = msg;  // reported in the refusal, not twice
    return;
  }
  plugin_host()->log(host, level, msg);
}

// An exception raised inside a plugin has its type information (and, for
// xcam::Error, its file name) in the plugin's library, which the Explainer
// unloads when it is destroyed, possibly while the exception is still on its
// way to the caller. Every public entry re-raises such errors from here.
template <typename F>
auto host_errors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error&) {
    throw;  // LibTorch's own type, in LibTorch's library
  } catch (const std::exception& e) {
    throw Error(e.what(), __FILE__, __LINE__);
  }
}

}  // namespace

const std::vector<std::string>& available_methods() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& m : methods::all()) n.push_back(m.name);
    return n;
  }();
  return names;
}

const std::vector<std::string>& cam_methods() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& m : methods::all())
      if (m.kind == methods::Kind::channel || m.kind == methods::Kind::perturbation) n.push_back(m.name);
    return n;
  }();
  return names;
}

void set_threads(int threads) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  omp_set_num_threads(n);
}

struct Explainer::Impl {
  ExplainerOptions opt;
  Preprocess pre;
  std::vector<std::string> labels;
  std::vector<std::string> layers;
  std::shared_ptr<PluginLibrary> library;
  uint32_t plugin_minor = 0;  // the plugin's abi_minor: hooks added after it are not called
  std::unique_ptr<ArchPlugin, void (*)(ArchPlugin*)> plugin{nullptr, nullptr};
  XcamHost host{};
  Model model;
  std::unique_ptr<TappedForward> tapped;
  std::vector<LowRes> lowres;
  const methods::Method* method = nullptr;

  // The model frozen and optimised for inference for the perturbed forwards
  // of Score-CAM and the faithfulness metrics: batch norm folded into the
  // convolutions and, on the CPU, every convolution on oneDNN
  // (onednn_convs.h; Winograd for the wide 3x3 ones). resnet18's Score-CAM
  // takes 5.8 s on it against 14.1 s on the model as loaded, logits as close
  // to float64 (~4e-7 relative). The model itself when the option is off or
  // the model cannot be frozen. Built on first use.
  std::optional<torch::jit::Module> fast;
  torch::jit::Module& inference_model();

  // Score-CAM's pre-normalisation map for one layer and target rank: masked
  // inputs in chunks, one batched forward each, scores kept on the device.
  // With eigen_smooth, the projection of w_k A_k (pgc's BaseCAM.get_cam_image).
  at::Tensor scorecam(const at::Tensor& a, const Batch& batch, size_t rank);
  // Ablation-CAM's for layer l: `tap` is the tapped tensor as the model made
  // it, `a` its grid, `y` the un-ablated scores (B). Per sample, copies of
  // the tap with one channel each ablated go through the rest of the model in
  // chunks; w_k = (y - y_k) / y.
  at::Tensor ablationcam(size_t l, const at::Tensor& tap, const at::Tensor& a, const Batch& batch, size_t rank,
                         const at::Tensor& y);
  // The maps of rank r's targets before aggregation: one per layer, or one
  // for all layers (cross-layer methods); each normalised at its own size
  // and resized to H x W.
  std::vector<kernels::MapOutput> method_maps(const TappedForward::Result& fwd, const std::vector<at::Tensor>& grads,
                                              const Batch& batch, size_t r, const at::Tensor& y, int64_t H,
                                              int64_t W);
  // Token scores B x N of an attention method on the patch grid: B x gh x gw.
  at::Tensor token_grid(const at::Tensor& tokens, int64_t H, int64_t W) const;
  // The batch's sample b, target `rank`, on `images` (n perturbed copies),
  // through the plugin's perturbation_batch() and prepare().
  Batch repeat_sample(const Batch& batch, int64_t b, size_t rank, const at::Tensor& images);
  // `images` (n x 3 x H x W) of sample `id` with one target for all, the
  // sample's other images, text and metadata from `like`, prepared for the model.
  Batch single_target(const at::Tensor& images, const Target& target, const std::string& id, const Sample& like);
  // A sample's other images (preprocessed), text and metadata.
  Sample sample_of(const SampleInput& in) const;
  // The plugin's readable score (probability) of `target` on each image.
  std::vector<double> probabilities(const at::Tensor& images, const Target& target, const std::string& id,
                                    const Sample& like);
  std::vector<Faithfulness> faithfulness(const std::vector<float>& nchw, int64_t batch,
                                         const std::vector<std::string>& ids, const std::vector<MapResult>& maps,
                                         const FaithfulnessOptions& o, const std::vector<SampleInput>* inputs);

  void init(ExplainerOptions options);
  // Channel and perturbation methods refuse taps that hold attention
  // probabilities (a softmax op, nn.MultiheadAttention's weights).
  void check_taps_fit_method() const;
  // `inputs` (optional): the samples' other images, text and metadata.
  std::vector<MapResult> run(const at::Tensor& images, const std::vector<std::string>& ids,
                             const std::vector<std::vector<std::string>>& requests, StageTimes* times,
                             const std::vector<SampleInput>* inputs = nullptr);

  // One forward of every view of the batch (views.h), targets resolved on
  // the reference view and padded to equal counts.
  struct Pass {
    Batch batch;
    TappedForward::Result fwd;
    size_t ranks = 0;
  };
  views::ViewSet view_set(int64_t H, int64_t W) const;
  Pass forward_pass(const views::ViewSet& set, const at::Tensor& images, const std::vector<std::string>& ids,
                    const std::vector<std::vector<std::string>>& requests, StageTimes* times,
                    const std::vector<SampleInput>* inputs);
  // The maps of rank r's targets: scores, gradients, method, layers
  // aggregated, views combined; appended to `results`, low-resolution maps
  // of the reference view kept for last_lowres().
  void rank_maps(const Pass& pass, const views::ViewSet& set, size_t r, const std::vector<std::string>& ids,
                 int64_t H, int64_t W, StageTimes* times, std::vector<MapResult>& results);
};

Explainer::Explainer(ExplainerOptions options) : impl_(new Impl) {
  host_errors([&] { impl_->init(std::move(options)); });
}

void Explainer::Impl::init(ExplainerOptions options) {
  auto& m = *this;
  m.opt = std::move(options);
  m.method = &methods::find(m.opt.method);
  XCAM_CHECK(m.opt.score_chunk > 0,
             "the perturbation chunk (--perturb-chunk, perturb_chunk) must be at least 1, got {}", m.opt.score_chunk);
  XCAM_CHECK(m.opt.device == "cpu" || (m.opt.device.rfind("cuda", 0) == 0 && torch::cuda::is_available()),
             "device '{}' is not available in this build (LibTorch {} {} CUDA); use device: cpu", m.opt.device,
             TORCH_VERSION, torch::cuda::is_available() ? "with" : "without");
  m.labels = read_labels(m.opt.labels_file);

  // Plugin: the library stays loaded while the object lives (deleter order).
  m.library = find_plugin(m.opt.plugin, plugin_search_path(m.opt.plugin_dirs));
  m.host = *plugin_host();
  m.host.log = &capture_log;
  g_last_plugin_error.clear();
  const auto& d = m.library->descriptor();
  ArchPlugin* raw = d.create(&m.host, m.opt.plugin_options.c_str());
  XCAM_CHECK(raw != nullptr, "plugin '{}' refused its options {}: {}", m.library->file(), m.opt.plugin_options,
             g_last_plugin_error.empty() ? "(no reason given)" : g_last_plugin_error);
  m.plugin = std::unique_ptr<ArchPlugin, void (*)(ArchPlugin*)>(raw, d.destroy);
  m.host.log = plugin_host()->log;  // from now on the plugin's errors go to the log

  m.model = Model::load(m.opt.model, m.opt.device);
  m.pre = m.plugin->preprocess();
  if (m.opt.height > 0) m.pre.height = m.opt.height;
  if (m.opt.width > 0) m.pre.width = m.opt.width;
  if (m.opt.mean) m.pre.mean = *m.opt.mean;
  if (m.opt.std) m.pre.std = *m.opt.std;
  m.plugin_minor = d.abi_minor;
  m.layers = m.opt.layers.empty() ? m.plugin->default_layers(m.model.module()) : m.opt.layers;
  const auto aliases = m.plugin->layer_aliases();
  for (auto& l : m.layers)
    if (const auto it = aliases.find(l); it != aliases.end()) l = it->second;
  m.tapped = std::make_unique<TappedForward>(m.model, m.layers);
  m.check_taps_fit_method();
}

void Explainer::Impl::check_taps_fit_method() const {
  if (method->kind != methods::Kind::channel && method->kind != methods::Kind::perturbation) return;
  std::map<std::string, std::string> type_of;
  for (const auto& item : model.module().named_modules())
    type_of[item.name] = item.value.type()->name() ? item.value.type()->name()->name() : "";
  for (const auto& t : tapped->taps()) {
    // Attention probabilities (B x heads x N x N) would pass for a 4-d feature map.
    const bool softmax = t.part == TapPoint::Part::op && (t.op == "softmax" || t.op == "_softmax");
    const bool mha_weights = t.part == TapPoint::Part::element && t.index == 1 &&
                             type_of[t.path].find("MultiheadAttention") != std::string::npos;
    XCAM_CHECK(!softmax && !mha_weights,
               "layer '{}' holds attention probabilities, not feature maps; method '{}' reads feature maps. Use "
               "--method attention, rollout or relevancy (with --patch), or tap a module's output",
               t.text, method->name);
  }
}

Explainer::~Explainer() {
  if (!impl_) return;
  impl_->tapped.reset();
  impl_->plugin.reset();  // before the library is closed
  const bool had_fast = impl_->fast.has_value();
  impl_.reset();
  // The oneDNN kernels and transformed weights (~150 MB for resnet18) of the
  // inference copy, now that no graph holds its weights.
  if (had_fast) onednn::release_unused();
}
Explainer::Explainer(Explainer&&) noexcept = default;

const ExplainerOptions& Explainer::options() const { return impl_->opt; }
const Preprocess& Explainer::preprocess() const { return impl_->pre; }
const std::vector<std::string>& Explainer::layers() const { return impl_->layers; }
const std::vector<std::string>& Explainer::labels() const { return impl_->labels; }
const std::vector<Explainer::LowRes>& Explainer::last_lowres() const { return impl_->lowres; }

std::vector<MapResult> Explainer::explain(const std::vector<cv::Mat>& images, const std::vector<std::string>& ids,
                                          const std::vector<std::vector<std::string>>& requests,
                                          StageTimes* times) {
  const auto t0 = Clock::now();
  std::vector<float> nchw;
  nchw.reserve(images.size() * 3 * impl_->pre.height * impl_->pre.width);
  for (const auto& im : images) preprocess_into(im, impl_->pre, nchw);
  StageTimes local;
  auto out = explain_preprocessed(nchw, static_cast<int64_t>(images.size()), ids, requests, &local);
  local.preprocess_ms = ms_since(t0) - local.forward_ms - local.backward_ms - local.cam_ms;
  if (times) *times = local;
  return out;
}

std::vector<MapResult> Explainer::explain(const std::vector<SampleInput>& samples, StageTimes* times) {
  const auto t0 = Clock::now();
  const auto& p = impl_->pre;
  std::vector<float> nchw;
  nchw.reserve(samples.size() * 3 * p.height * p.width);
  std::vector<std::string> ids;
  std::vector<std::vector<std::string>> requests;
  for (const auto& s : samples) {
    preprocess_into(s.image, p, nchw);
    ids.push_back(s.id);
    requests.push_back(s.requests);
  }
  const auto B = static_cast<int64_t>(samples.size());
  auto images = torch::from_blob(nchw.data(), {B, 3, p.height, p.width}, torch::kFloat32).to(impl_->model.device());
  StageTimes local;
  auto out = host_errors([&] { return impl_->run(images, ids, requests, &local, &samples); });
  local.preprocess_ms = ms_since(t0) - local.forward_ms - local.backward_ms - local.cam_ms;
  if (times) *times = local;
  return out;
}

std::vector<MapResult> Explainer::explain_preprocessed(const std::vector<float>& nchw, int64_t batch,
                                                       const std::vector<std::string>& ids,
                                                       const std::vector<std::vector<std::string>>& requests,
                                                       StageTimes* times) {
  const auto& p = impl_->pre;
  XCAM_CHECK(static_cast<int64_t>(nchw.size()) == batch * 3 * p.height * p.width,
             "preprocessed batch has {} floats, expected {} x 3 x {} x {}", nchw.size(), batch, p.height, p.width);
  XCAM_CHECK(static_cast<int64_t>(ids.size()) == batch, "{} ids for a batch of {}", ids.size(), batch);
  auto images = torch::from_blob(const_cast<float*>(nchw.data()), {batch, 3, p.height, p.width}, torch::kFloat32)
                    .to(impl_->model.device());
  StageTimes local;
  auto out = host_errors([&] { return impl_->run(images, ids, requests, &local); });
  if (times) *times = local;
  return out;
}

views::ViewSet Explainer::Impl::view_set(int64_t H, int64_t W) const {
  XCAM_CHECK(!(opt.aug_smooth && opt.crops.rows > 0),
             "aug_smooth and crops are two view sets; choose one of them");
  if (opt.aug_smooth) return views::augmentations();
  if (opt.crops.rows > 0) return views::crops(opt.crops.rows, opt.crops.cols, opt.crops.overlap, H, W);
  return views::identity();
}

Explainer::Impl::Pass Explainer::Impl::forward_pass(const views::ViewSet& set, const at::Tensor& images,
                                                    const std::vector<std::string>& ids,
                                                    const std::vector<std::vector<std::string>>& requests,
                                                    StageTimes* times, const std::vector<SampleInput>* inputs) {
  const int64_t B0 = images.size(0), V = static_cast<int64_t>(set.views.size()), B = B0 * V;
  Pass p;
  p.batch.labels = labels;
  p.batch.images = views::apply(set, images);
  for (int64_t v = 0; v < V; ++v) p.batch.ids.insert(p.batch.ids.end(), ids.begin(), ids.end());
  std::vector<Sample> given(static_cast<size_t>(B0));  // other images, text, meta
  if (inputs != nullptr)
    for (int64_t b0 = 0; b0 < B0; ++b0) {
      XCAM_CHECK(!inputs->at(b0).images.count("image"),
                 "sample '{}': 'image' is the main image; name the others otherwise", inputs->at(b0).id);
      given[b0] = sample_of(inputs->at(b0));
    }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t b0 = b % B0;
    Sample s = given[b0];
    s.id = ids[b0];
    s.images["image"] = p.batch.images[b];
    s.requests = requests.empty() || requests[b0].empty() ? opt.targets : requests[b0];
    p.batch.samples.push_back(std::move(s));
  }

  const auto t = Clock::now();
  plugin->prepare(model.module(), p.batch);
  plugin->decode(model.module(), p.batch);
  p.fwd = tapped->run(p.batch.inputs, /*record_grad=*/method->gradients);
  times->forward_ms = ms_since(t);

  TargetRequest req;
  for (const auto& sample : p.batch.samples) req.per_sample.push_back(sample.requests);
  auto& targets = p.batch.targets;
  plugin->resolve_targets(p.fwd.output, req, p.batch);
  XCAM_CHECK(static_cast<int64_t>(targets.size()) == B, "plugin '{}' resolved targets for {} of {} samples",
             opt.plugin, targets.size(), B);
  // Every view explains the targets resolved on the reference view.
  const int64_t ref = static_cast<int64_t>(set.reference);
  for (int64_t v = 0; v < V; ++v)
    if (v != ref)
      for (int64_t b = 0; b < B0; ++b) targets[v * B0 + b] = targets[ref * B0 + b];
  for (auto& ts : targets) {
    XCAM_CHECK(!ts.empty(), "plugin '{}' resolved no target for a sample", opt.plugin);
    p.ranks = std::max(p.ranks, ts.size());
  }
  for (auto& ts : targets)
    while (ts.size() < p.ranks) {
      ts.push_back(ts.back());
      ts.back().padding = true;
    }
  return p;
}

std::vector<MapResult> Explainer::Impl::run(const at::Tensor& images, const std::vector<std::string>& ids,
                                            const std::vector<std::vector<std::string>>& requests,
                                            StageTimes* times, const std::vector<SampleInput>* inputs) {
  const int64_t H = images.size(2), W = images.size(3);
  const auto set = view_set(H, W);
  const Pass pass = forward_pass(set, images, ids, requests, times, inputs);
  std::vector<MapResult> results;
  for (size_t r = 0; r < pass.ranks; ++r) rank_maps(pass, set, r, ids, H, W, times, results);
  return results;
}

void Explainer::Impl::rank_maps(const Pass& pass, const views::ViewSet& set, size_t r,
                                const std::vector<std::string>& ids, int64_t H, int64_t W, StageTimes* times,
                                std::vector<MapResult>& results) {
  const Batch& batch = pass.batch;
  const auto& fwd = pass.fwd;
  const int64_t B0 = static_cast<int64_t>(ids.size()), V = static_cast<int64_t>(set.views.size()), B = B0 * V;
  auto t = Clock::now();
  std::vector<double> scores;
  at::Tensor y = plugin->score(fwd.output, batch, r, &scores);
  XCAM_CHECK(y.dim() == 1 && y.size(0) == B, "plugin '{}' returned scores of shape {} for a batch of {}", opt.plugin,
             c10::str(y.sizes()), B);
  std::vector<at::Tensor> grads(layers.size());
  if (method->gradients)
    grads = torch::autograd::grad({y.sum()}, fwd.taps, /*grad_outputs=*/{}, /*retain_graph=*/r + 1 < pass.ranks,
                                  /*create_graph=*/false, /*allow_unused=*/true);
  times->backward_ms += ms_since(t);

  t = Clock::now();
  const auto outs = method_maps(fwd, grads, batch, r, y, H, W);
  const size_t M = outs.size();
  std::vector<at::Tensor> low(M), status(M);
  for (size_t l = 0; l < M; ++l) {
    low[l] = outs[l].lowres.cpu();
    status[l] = outs[l].status;
  }
  // The maps by the image they are drawn on, "image" first; within one image,
  // several layers are resized, ReLU'd, averaged and renormalised, one layer's
  // resized map renormalised too (interpolation moves its extremes off 0 and
  // 1), as the reference implementation's aggregation does. Then the views'
  // maps are put back onto the input and combined.
  std::vector<std::pair<std::string, std::vector<size_t>>> groups{{"image", {}}};
  for (size_t l = 0; l < M; ++l) {
    const std::string on = M == layers.size() ? plugin->image_of(layers[l]) : "image";
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == on; });
    if (it == groups.end()) it = groups.insert(groups.end(), {on, {}});
    it->second.push_back(l);
  }
  std::vector<at::Tensor> group_maps;
  for (const auto& [on, idx] : groups) {
    if (idx.empty()) {
      group_maps.emplace_back();
      continue;
    }
    std::vector<at::Tensor> part;
    for (size_t l : idx) part.push_back(low[l]);
    const at::Tensor m = idx.size() > 1 ? kernels::aggregate_layers(part, H, W).map
                                        : kernels::minmax_normalize(outs[idx[0]].map);
    group_maps.push_back(views::combine(set, m, B0).cpu().contiguous());
  }
  times->cam_ms += ms_since(t);

  const int64_t ref = static_cast<int64_t>(set.reference);
  std::vector<std::map<std::string, std::string>> meta(static_cast<size_t>(B0));  // ABI 2.1, once per sample
  if (plugin_minor >= 1)
    for (int64_t b0 = 0; b0 < B0; ++b0) meta[b0] = plugin->metadata(fwd.output, batch, ref * B0 + b0);
  for (size_t gi = 0; gi < groups.size(); ++gi)
    for (int64_t b0 = 0; b0 < B0 && !groups[gi].second.empty(); ++b0) {
      const int64_t b = ref * B0 + b0;  // the view that gives target and score
      const Target& tg = batch.targets[b][r];
      if (tg.padding) continue;
      MapResult m;
      m.image_id = ids[b0];
      m.on = groups[gi].first;
      m.rank = r;
      m.target_label = tg.label;
      m.target_index = tg.index;
      m.target = tg;
      m.meta = meta[b0];
      m.score = b < static_cast<int64_t>(scores.size()) ? scores[b] : y[b].item<double>();
      m.height = H;
      m.width = W;
      const float* mp = group_maps[gi].data_ptr<float>() + b0 * H * W;
      m.map.assign(mp, mp + H * W);
      for (size_t l : groups[gi].second) {
        const std::string what =
            M == layers.size() ? "layer '" + layers[l] + "'" : method->name + " of the tapped layers";
        uint8_t st = 0;  // what any of the sample's views had
        for (int64_t v = 0; v < V; ++v) st |= status[l].data_ptr<uint8_t>()[v * B0 + b0];
        if (st & kernels::kCamNonFinite)
          m.warnings.push_back(fmt::format("NaN or Inf in the activations or gradients of {}: its map is all zeros",
                                           what));
        else if (st & kernels::kCamConstant)
          m.warnings.push_back(fmt::format("map of {} is constant (zero gradients or an all-negative weighted "
                                           "sum): written as zeros; try an earlier layer",
                                           what));
      }
      results.push_back(std::move(m));
    }
  if (r == 0) lowres.assign(M, LowRes{});
  for (size_t l = 0; l < M; ++l) {
    lowres[l].height = low[l].size(1);
    lowres[l].width = low[l].size(2);
    const auto c = low[l].narrow(0, ref * B0, B0).contiguous();
    lowres[l].per_rank.emplace_back(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  }
}

std::vector<kernels::MapOutput> Explainer::Impl::method_maps(const TappedForward::Result& fwd,
                                                             const std::vector<at::Tensor>& grads, const Batch& batch,
                                                             size_t r, const at::Tensor& y, int64_t H, int64_t W) {
  using methods::Kind;
  const size_t L = layers.size();
  std::vector<kernels::MapOutput> out;
  if (method->kind == Kind::attention || method->kind == Kind::cross_layer) {
    const int64_t B = batch.images.size(0);
    std::vector<at::Tensor> attn(L), g(L);
    for (size_t l = 0; l < L; ++l) {
      attn[l] = methods::as_attention(fwd.taps[l].detach(), B, layers[l]);
      if (method->gradients) g[l] = grads[l].defined() ? grads[l].view_as(attn[l]) : torch::zeros_like(attn[l]);
    }
    auto on_grid = [&](const at::Tensor& tokens) { return kernels::normalize_resize(token_grid(tokens, H, W), H, W); };
    if (method->kind == Kind::cross_layer) return {on_grid(method->token_map(attn, g, opt.attention))};
    for (size_t l = 0; l < L; ++l) out.push_back(on_grid(method->token_map({attn[l]}, {g[l]}, opt.attention)));
    return out;
  }
  for (size_t l = 0; l < L; ++l) {
    const at::Tensor a = plugin->to_grid(layers[l], fwd.taps[l].detach(), batch);
    at::Tensor g;
    if (method->gradients) g = grads[l].defined() ? plugin->to_grid(layers[l], grads[l], batch) : torch::zeros_like(a);
    if (method->name == "gradcam" && !opt.eigen_smooth)
      out.push_back(kernels::gradcam(a, g, H, W));  // the fused one-pass kernel
    else if (method->name == "scorecam")
      out.push_back(kernels::normalize_resize(scorecam(a, batch, r), H, W));
    else if (method->name == "ablationcam")
      out.push_back(kernels::normalize_resize(ablationcam(l, fwd.taps[l].detach(), a, batch, r, y.detach()), H, W));
    else
      out.push_back(kernels::normalize_resize(methods::raw_map(*method, a, g, opt.eigen_smooth), H, W));
  }
  return out;
}

at::Tensor Explainer::Impl::token_grid(const at::Tensor& tokens, int64_t H, int64_t W) const {
  const auto& o = opt.attention;
  XCAM_CHECK(o.patch_h > 0 && o.patch_w > 0,
             "method '{}' lays the tokens on the patch grid and needs the model's patch size: set --patch P "
             "(YAML attention.patch) and, if the model has other than 1 token before the grid, --prefix-tokens",
             method->name);
  const int64_t gh = H / o.patch_h, gw = W / o.patch_w, N = tokens.size(1);
  XCAM_CHECK(o.query >= 0 && o.query < N, "query token {} is out of range: the attention has {} tokens", o.query, N);
  XCAM_CHECK(N - o.prefix == gh * gw,
             "the attention has {} tokens; {} prefix token(s) and a {} x {} grid ({} x {} input, patch {} x {}) "
             "make {}; set --prefix-tokens and --patch (YAML attention.prefix, attention.patch) to the model's",
             N, o.prefix, gh, gw, H, W, o.patch_h, o.patch_w, o.prefix + gh * gw);
  return tokens.narrow(1, o.prefix, gh * gw).reshape({tokens.size(0), gh, gw});
}

at::Tensor Explainer::Impl::scorecam(const at::Tensor& a, const Batch& batch, size_t rank) {
  torch::NoGradGuard no_grad;
  const int64_t B = a.size(0), K = a.size(1);
  auto scores = torch::empty({B, K}, a.options().dtype(torch::kFloat32));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k0 = 0; k0 < K; k0 += opt.score_chunk) {
      const int64_t k1 = std::min(K, k0 + opt.score_chunk);
      Batch masked = repeat_sample(batch, b, rank, kernels::scorecam_masks(a[b], k0, k1, batch.images[b]));
      const auto out = inference_model().forward(masked.inputs);
      scores[b].slice(0, k0, k1).copy_(plugin->score(out, masked, 0, nullptr));
    }
  }
  const auto w = scores.softmax(1);
  if (opt.eigen_smooth) return methods::eigen_projection(a.to(torch::kFloat32) * w.unsqueeze(-1).unsqueeze(-1));
  return kernels::weighted_sum_relu(a, w);
}

torch::jit::Module& Explainer::Impl::inference_model() {
  if (!fast) {
    fast = model.module();
    if (opt.optimize) {
      try {
        auto frozen = torch::jit::freeze(model.module());
        if (opt.device == "cpu" && onednn::available()) {
          const auto st = onednn::rewrite_convolutions(frozen.get_method("forward").graph(), opt.winograd);
          plugin_host()->log(plugin_host(), 0,
                             fmt::format("perturbed forwards of '{}': {} convolution(s) on oneDNN, {} Winograd, {} "
                                         "with ReLU, {} with the residual addition, {} chained in blocked layout",
                                         opt.model, st.convolutions, st.winograd, st.fused_relu, st.fused_add,
                                         st.blocked)
                                 .c_str());
        }
        fast = torch::jit::optimize_for_inference(frozen);
      } catch (const std::exception& e) {
        std::string why = e.what();
        const std::string msg = fmt::format("model '{}' cannot be frozen for the perturbed forwards ({}); using it "
                                            "as it is (slower, same results)",
                                            opt.model, why.substr(0, why.find('\n')));
        plugin_host()->log(plugin_host(), 2, msg.c_str());
      }
    }
  }
  return *fast;
}

Batch Explainer::Impl::single_target(const at::Tensor& images, const Target& target, const std::string& id,
                                     const Sample& like) {
  Batch out;
  const auto n = static_cast<size_t>(images.size(0));
  out.images = images;
  out.labels = labels;
  out.targets.assign(n, {target});
  out.ids.assign(n, id);
  for (size_t i = 0; i < n; ++i) {
    Sample s = like;
    s.id = id;
    s.images["image"] = images[static_cast<int64_t>(i)];
    out.samples.push_back(std::move(s));
  }
  plugin->prepare(model.module(), out);
  return out;
}

Batch Explainer::Impl::repeat_sample(const Batch& batch, int64_t b, size_t rank, const at::Tensor& images) {
  Batch out = plugin->perturbation_batch(batch, b, rank, images);
  XCAM_CHECK(out.images.defined() && out.images.size(0) == images.size(0) &&
                 static_cast<int64_t>(out.targets.size()) == images.size(0),
             "plugin '{}': perturbation_batch() must return the {} perturbed images, each with one target",
             opt.plugin, images.size(0));
  plugin->prepare(model.module(), out);
  return out;
}

std::vector<double> Explainer::Impl::probabilities(const at::Tensor& images, const Target& target,
                                                   const std::string& id, const Sample& like) {
  Batch part = single_target(images, target, id, like);
  const auto out = inference_model().forward(part.inputs);
  std::vector<double> p;
  plugin->score(out, part, 0, &p);
  XCAM_CHECK(static_cast<int64_t>(p.size()) == images.size(0),
             "plugin '{}' gives no readable score (probability) for its targets, which the faithfulness metrics "
             "need; use a plugin that fills the scores of ArchPlugin::score",
             opt.plugin);
  return p;
}

std::vector<Faithfulness> Explainer::faithfulness(const std::vector<cv::Mat>& images,
                                                  const std::vector<std::string>& ids,
                                                  const std::vector<MapResult>& maps,
                                                  const FaithfulnessOptions& options) {
  std::vector<float> nchw;
  nchw.reserve(images.size() * 3 * impl_->pre.height * impl_->pre.width);
  for (const auto& im : images) preprocess_into(im, impl_->pre, nchw);
  return faithfulness(nchw, static_cast<int64_t>(images.size()), ids, maps, options);
}

std::vector<Faithfulness> Explainer::faithfulness(const std::vector<float>& nchw, int64_t batch,
                                                  const std::vector<std::string>& ids,
                                                  const std::vector<MapResult>& maps,
                                                  const FaithfulnessOptions& o) {
  return host_errors([&] { return impl_->faithfulness(nchw, batch, ids, maps, o, nullptr); });
}

std::vector<Faithfulness> Explainer::faithfulness(const std::vector<SampleInput>& samples,
                                                  const std::vector<MapResult>& maps,
                                                  const FaithfulnessOptions& o) {
  std::vector<float> nchw;
  std::vector<std::string> ids;
  for (const auto& s : samples) {
    preprocess_into(s.image, impl_->pre, nchw);
    ids.push_back(s.id);
  }
  return host_errors(
      [&] { return impl_->faithfulness(nchw, static_cast<int64_t>(samples.size()), ids, maps, o, &samples); });
}

Sample Explainer::Impl::sample_of(const SampleInput& in) const {
  Sample s;
  s.id = in.id;
  for (const auto& [name, mat] : in.images) {
    std::vector<float> x;
    preprocess_into(mat, pre, x);
    s.images[name] = torch::from_blob(x.data(), {3, pre.height, pre.width}, torch::kFloat32).clone().to(model.device());
  }
  s.text = in.text;
  s.requests = in.requests;
  s.meta = in.meta;
  return s;
}

std::vector<Faithfulness> Explainer::Impl::faithfulness(const std::vector<float>& nchw, int64_t batch,
                                                        const std::vector<std::string>& ids,
                                                        const std::vector<MapResult>& maps,
                                                        const FaithfulnessOptions& o,
                                                        const std::vector<SampleInput>* inputs) {
  auto& m = *this;
  const auto& p = m.pre;
  const int64_t H = p.height, W = p.width, HW = H * W;
  XCAM_CHECK(static_cast<int64_t>(nchw.size()) == batch * 3 * HW,
             "preprocessed batch has {} floats, expected {} x 3 x {} x {}", nchw.size(), batch, H, W);
  XCAM_CHECK(static_cast<int64_t>(ids.size()) == batch, "{} ids for a batch of {}", ids.size(), batch);
  XCAM_CHECK(o.chunk > 0, "faithfulness chunk must be positive, got {}", o.chunk);
  XCAM_CHECK(o.steps >= 0, "faithfulness steps must be positive (or 0 for the default), got {}", o.steps);
  torch::NoGradGuard no_grad;
  const auto dev = m.model.device();
  const auto images =
      torch::from_blob(const_cast<float*>(nchw.data()), {batch, 3, H, W}, torch::kFloat32).to(dev, false, true);

  // Insertion's start: an 11 x 11 Gaussian (sigma 5) blur of each channel,
  // zero padded (0 is the mean colour in the normalised space).
  const auto g1 = (torch::arange(11, torch::kFloat64) - 5).pow(2).div(-2.0 * 25.0).exp();
  const auto g2 = torch::outer(g1, g1);
  const auto kernel = (g2 / g2.sum()).to(torch::kFloat32).to(dev).expand({3, 1, 11, 11}).contiguous();
  const auto blurred = torch::conv2d(images, kernel, {}, 1, 5, 1, 3);

  const int64_t n = o.steps > 0 ? o.steps : std::max<int64_t>(1, std::llround(std::sqrt(double(HW))));
  const int64_t step = (HW + n - 1) / n;
  // Each sample's other images, text and metadata, preprocessed once.
  std::vector<Sample> likes(static_cast<size_t>(batch));
  if (inputs != nullptr)
    for (int64_t b = 0; b < batch; ++b) likes[b] = sample_of(inputs->at(b));
  std::vector<Faithfulness> out;
  out.reserve(maps.size());
  for (const auto& mr : maps) {
    const auto it = std::find(ids.begin(), ids.end(), mr.image_id);
    XCAM_CHECK(it != ids.end(), "faithfulness: map for '{}' but no image with that id in the batch", mr.image_id);
    XCAM_CHECK(static_cast<int64_t>(mr.map.size()) == HW,
               "faithfulness: map for '{}' has {} values, expected {} x {} (the model's input size)", mr.image_id,
               mr.map.size(), H, W);
    const int64_t b = it - ids.begin();
    if (mr.on != "image") {  // a map on another image: perturbing this one says nothing of it
      out.emplace_back();
      continue;
    }
    const Sample& like = likes[b];
    const auto x = images[b];
    const auto sal = torch::from_blob(const_cast<float*>(mr.map.data()), {HW}, torch::kFloat32).to(dev, false, true);
    // rank[p]: position of pixel p in descending map order, ties in pixel order
    const auto order = std::get<1>(sal.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    const auto rank = torch::empty_like(order).scatter_(0, order, torch::arange(HW, order.options())).view({1, 1, H, W});

    // The perturbed inputs, in order: x, x * map, deletion states 0..n,
    // insertion states 0..n; state s has its first min(s * step, HW) pixels
    // (in map order) deleted / inserted.
    const int64_t total = 2 * n + 4;
    auto states = [&](int64_t s0, int64_t s1) {
      const auto th = (torch::arange(s0, s1, rank.options()) * step).view({-1, 1, 1, 1});
      return rank < th;  // (s1 - s0) x 1 x H x W
    };
    auto build = [&](int64_t j0, int64_t j1) {
      std::vector<at::Tensor> parts;
      if (j0 <= 0 && 0 < j1) parts.push_back(x.unsqueeze(0));
      if (j0 <= 1 && 1 < j1) parts.push_back((x * sal.view({1, H, W})).unsqueeze(0));
      const int64_t d0 = std::max(j0, int64_t{2}), d1 = std::min(j1, n + 3);
      if (d0 < d1)
        parts.push_back(x.unsqueeze(0).expand({d1 - d0, 3, H, W}).masked_fill(states(d0 - 2, d1 - 2), 0.0));
      const int64_t i0 = std::max(j0, n + 3), i1 = std::min(j1, total);
      if (i0 < i1) parts.push_back(torch::where(states(i0 - n - 3, i1 - n - 3), x.unsqueeze(0), blurred[b].unsqueeze(0)));
      return torch::cat(parts, 0);
    };
    // The map's whole target, payload included; maps made elsewhere may
    // give only the class index and label.
    Target t = mr.target;
    if (t.index < 0 && t.label.empty()) {
      t.index = mr.target_index;
      t.label = mr.target_label;
    }
    std::vector<double> probs;
    probs.reserve(static_cast<size_t>(total));
    for (int64_t j0 = 0; j0 < total; j0 += o.chunk) {
      const auto part = m.probabilities(build(j0, std::min(total, j0 + o.chunk)), t, mr.image_id, like);
      probs.insert(probs.end(), part.begin(), part.end());
    }

    Faithfulness f;
    f.base = probs[0];
    f.masked = probs[1];
    f.drop = f.base > 0 ? 100.0 * std::max(0.0, f.base - f.masked) / f.base : 0.0;
    f.increase = f.base < f.masked;
    auto auc = [&](size_t first, std::vector<double>* keep) {
      double sum = 0;
      for (int64_t s = 0; s <= n; ++s) sum += probs[first + s];
      if (keep) keep->assign(probs.begin() + first, probs.begin() + first + n + 1);
      return (sum - probs[first] / 2 - probs[first + n] / 2) / static_cast<double>(n);
    };
    f.deletion = auc(2, o.curves ? &f.deletion_curve : nullptr);
    f.insertion = auc(static_cast<size_t>(n + 3), o.curves ? &f.insertion_curve : nullptr);
    out.push_back(std::move(f));
  }
  return out;
}

at::Tensor Explainer::Impl::ablationcam(size_t l, const at::Tensor& tap, const at::Tensor& a, const Batch& batch,
                                        size_t rank, const at::Tensor& y) {
  torch::NoGradGuard no_grad;
  const int64_t B = a.size(0), K = a.size(1);
  // Channels of the tapped tensor: dim 1 of B x K x ..., or the last dim of
  // B x N x C tokens (which the plugin's to_grid turns into K = C channels).
  const int64_t cdim = tap.dim() == 3 ? 2 : 1;
  XCAM_CHECK(tap.dim() >= 2 && tap.size(cdim) == K,
             "ablationcam: layer '{}' gives a tensor of shape {} whose channels do not match the {} channels of "
             "its grid; tap a layer whose output is B x K x h x w or B x N x C",
             layers[l], c10::str(tap.sizes()), K);
  auto scores = torch::empty({B, K}, y.options().dtype(torch::kFloat32));
  for (int64_t b = 0; b < B; ++b) {
    const auto sample = tap[b].unsqueeze(0);
    // SPEC section 2: 0 when the sample's minimum is 0 (post-ReLU layers),
    // otherwise the minimum minus 1e7. Decided on the device, no host sync.
    const auto lo = sample.min();
    const auto value = at::where(lo == 0, at::zeros_like(lo), lo - 1e7);
    for (int64_t k0 = 0; k0 < K; k0 += opt.score_chunk) {
      const int64_t n = std::min(K, k0 + opt.score_chunk) - k0;
      std::vector<int64_t> reps(static_cast<size_t>(tap.dim()), 1);
      reps[0] = n;
      auto ablated = sample.repeat(reps);
      // copy i has channel k0 + i ablated: a one-hot n x K mask, broadcast
      std::vector<int64_t> mshape(static_cast<size_t>(tap.dim()), 1);
      mshape[0] = n;
      mshape[static_cast<size_t>(cdim)] = K;
      const auto mask = at::arange(K, tap.options().dtype(torch::kLong))
                            .unsqueeze(0)
                            .eq(at::arange(k0, k0 + n, tap.options().dtype(torch::kLong)).unsqueeze(1))
                            .view(mshape);
      ablated.masked_fill_(mask, value.to(ablated.dtype()));
      // the input as the model takes it; what only led up to the tap is not run
      const auto images = batch.images[b].unsqueeze(0).expand({n, -1, -1, -1});
      Batch part = repeat_sample(batch, b, rank, images);
      const auto out = tapped->run_replacing(part.inputs, l, ablated);
      scores[b].slice(0, k0, k0 + n).copy_(plugin->score(out, part, 0, nullptr));
    }
  }
  const auto y0 = y.to(torch::kFloat32).unsqueeze(1);
  const auto w = (y0 - scores) / y0;
  if (opt.eigen_smooth) return methods::eigen_projection(a.to(torch::kFloat32) * w.unsqueeze(-1).unsqueeze(-1));
  return kernels::weighted_sum_relu(a, w);
}

void Explainer::forward_only(const std::vector<float>& nchw, int64_t batch, StageTimes* times) {
  auto& m = *impl_;
  const auto& p = m.pre;
  auto images = torch::from_blob(const_cast<float*>(nchw.data()), {batch, 3, p.height, p.width}, torch::kFloat32)
                    .to(m.model.device());
  const auto t = Clock::now();
  torch::NoGradGuard no_grad;
  Batch b;
  b.images = images;
  for (int64_t i = 0; i < batch; ++i) {
    b.ids.push_back("bench" + std::to_string(i));
    b.samples.push_back(Sample{b.ids.back(), {{"image", images[i]}}, "", m.opt.targets});
  }
  host_errors([&] { m.plugin->prepare(m.model.module(), b); });
  auto out = m.model.module().forward(b.inputs);
  if (times) times->forward_ms = ms_since(t);
}

}  // namespace xcam

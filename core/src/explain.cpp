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

#include <chrono>
#include <fstream>
#include <map>
#include <thread>

#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/kernels/dispatch.h"
#include "xcam/kernels/types.h"
#include "xcam/model.h"
#include "xcam/plugin.h"
#include "xcam/plugin_loader.h"
#include "methods.h"

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

// pgc's test-time augmentation for aug_smooth: ttach's
// Compose([HorizontalFlip(), Multiply([0.9, 1, 1.1])]) in its iteration order,
// applied to the preprocessed (normalised) input tensor.
struct Augmentation {
  bool flip;
  double factor;
};
constexpr Augmentation kAugmentations[] = {{false, 0.9}, {false, 1.0}, {false, 1.1},
                                           {true, 0.9},  {true, 1.0},  {true, 1.1}};
constexpr int64_t kNumAugmentations = 6;
constexpr int64_t kIdentityAugmentation = 1;  // targets are resolved on this copy

}  // namespace

const std::vector<std::string>& available_methods() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& m : methods::all()) n.push_back(m.name);
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
  std::unique_ptr<ArchPlugin, void (*)(ArchPlugin*)> plugin{nullptr, nullptr};
  XcamHost host{};
  Model model;
  std::unique_ptr<TappedForward> tapped;
  std::vector<LowRes> lowres;
  const methods::Method* method = nullptr;

  // Score-CAM's pre-normalisation map for one layer and target rank: masked
  // inputs in chunks, one batched forward each, scores kept on the device.
  // With eigen_smooth, the projection of w_k A_k (pgc's BaseCAM.get_cam_image).
  at::Tensor scorecam(const at::Tensor& a, const Batch& batch, size_t rank);

  std::vector<MapResult> run(const at::Tensor& images, const std::vector<std::string>& ids,
                             const std::vector<std::vector<std::string>>& requests, StageTimes* times);
};

Explainer::Explainer(ExplainerOptions options) : impl_(new Impl) {
  auto& m = *impl_;
  m.opt = std::move(options);
  m.method = &methods::find(m.opt.method);
  XCAM_CHECK(m.opt.score_chunk > 0, "score_chunk must be positive, got {}", m.opt.score_chunk);
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
  m.layers = m.opt.layers.empty() ? m.plugin->default_layers(m.model.module()) : m.opt.layers;
  m.tapped = std::make_unique<TappedForward>(m.model, m.layers);
}

Explainer::~Explainer() {
  if (impl_) {
    impl_->tapped.reset();
    impl_->plugin.reset();  // before the library is closed
  }
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
  auto out = impl_->run(images, ids, requests, &local);
  if (times) *times = local;
  return out;
}

std::vector<MapResult> Explainer::Impl::run(const at::Tensor& images, const std::vector<std::string>& ids,
                                            const std::vector<std::vector<std::string>>& requests,
                                            StageTimes* times) {
  // aug_smooth: the six augmented copies of the batch in one forward, copy c
  // of sample b at c * B0 + b; their final maps are de-augmented and averaged.
  const bool aug = opt.aug_smooth;
  const int64_t B0 = images.size(0);
  const int64_t copies = aug ? kNumAugmentations : 1;
  const int64_t B = B0 * copies;
  Batch batch;
  batch.labels = labels;
  if (aug) {
    std::vector<at::Tensor> x;
    for (const auto& t : kAugmentations) {
      auto xi = t.flip ? images.flip({3}) : images;
      x.push_back(t.factor != 1.0 ? xi * t.factor : xi);
    }
    batch.images = at::cat(x, 0);
    for (int64_t c = 0; c < copies; ++c) batch.ids.insert(batch.ids.end(), ids.begin(), ids.end());
  } else {
    batch.images = images;
    batch.ids = ids;
  }

  auto t = Clock::now();
  plugin->prepare(model.module(), batch);
  plugin->decode(model.module(), batch);
  auto fwd = tapped->run(batch.inputs, /*record_grad=*/method->gradients);
  times->forward_ms = ms_since(t);

  TargetRequest req;
  req.per_sample.resize(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t b0 = b % B0;
    req.per_sample[b] = requests.empty() || requests[b0].empty() ? opt.targets : requests[b0];
  }
  plugin->resolve_targets(fwd.output, req, batch);
  XCAM_CHECK(static_cast<int64_t>(batch.targets.size()) == B, "plugin '{}' resolved targets for {} of {} samples",
             opt.plugin, batch.targets.size(), B);
  if (aug)  // every copy explains the target resolved on the un-augmented one
    for (int64_t c = 0; c < copies; ++c)
      if (c != kIdentityAugmentation)
        for (int64_t b = 0; b < B0; ++b) batch.targets[c * B0 + b] = batch.targets[kIdentityAugmentation * B0 + b];
  size_t ranks = 0;
  for (auto& ts : batch.targets) {
    XCAM_CHECK(!ts.empty(), "plugin '{}' resolved no target for a sample", opt.plugin);
    ranks = std::max(ranks, ts.size());
  }
  for (auto& ts : batch.targets)
    while (ts.size() < ranks) {
      ts.push_back(ts.back());
      ts.back().padding = true;
    }

  const size_t L = layers.size();
  const int64_t H = images.size(2), W = images.size(3);
  lowres.assign(L, LowRes{});
  std::vector<MapResult> results;
  for (size_t r = 0; r < ranks; ++r) {
    t = Clock::now();
    std::vector<double> scores;
    at::Tensor y = plugin->score(fwd.output, batch, r, &scores);
    XCAM_CHECK(y.dim() == 1 && y.size(0) == B, "plugin '{}' returned scores of shape {} for a batch of {}",
               opt.plugin, c10::str(y.sizes()), B);
    std::vector<at::Tensor> grads(L);
    if (method->gradients)
      grads = torch::autograd::grad({y.sum()}, fwd.taps, /*grad_outputs=*/{}, /*retain_graph=*/r + 1 < ranks,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    times->backward_ms += ms_since(t);

    t = Clock::now();
    std::vector<at::Tensor> low(L), status(L);
    at::Tensor maps;
    for (size_t l = 0; l < L; ++l) {
      const at::Tensor a = plugin->to_grid(layers[l], fwd.taps[l].detach(), batch);
      at::Tensor g;
      if (method->gradients)
        g = grads[l].defined() ? plugin->to_grid(layers[l], grads[l], batch) : torch::zeros_like(a);
      kernels::MapOutput out;
      if (method->name == "gradcam" && !opt.eigen_smooth)
        out = kernels::gradcam(a, g, H, W);  // the fused one-pass kernel
      else if (method->forwards)
        out = kernels::normalize_resize(scorecam(a, batch, r), H, W);
      else
        out = kernels::normalize_resize(methods::raw_map(*method, a, g, opt.eigen_smooth), H, W);
      low[l] = out.lowres.cpu();
      status[l] = out.status;
      maps = out.map;
    }
    // Several layers: resize each, relu, mean, renormalise. One layer: the
    // resized map is renormalised too (interpolation moves its extremes off
    // 0 and 1), as the reference implementation's aggregation does.
    maps = L > 1 ? kernels::aggregate_layers(low, H, W).map : kernels::minmax_normalize(maps);
    if (aug) {
      // pgc's forward_augmentation_smoothing: flip each copy's final map back,
      // then the plain mean of the six, not renormalised.
      const auto m6 = maps.view({copies, B0, H, W});
      auto sum = torch::zeros({B0, H, W}, maps.options());
      for (int64_t c = 0; c < copies; ++c) sum += kAugmentations[c].flip ? m6[c].flip({2}) : m6[c];
      maps = sum / static_cast<double>(copies);
    }
    maps = maps.cpu().contiguous();
    times->cam_ms += ms_since(t);

    for (int64_t b0 = 0; b0 < B0; ++b0) {
      const int64_t b = aug ? kIdentityAugmentation * B0 + b0 : b0;  // the copy that gives target and score
      const Target& tg = batch.targets[b][r];
      if (tg.padding) continue;
      MapResult m;
      m.image_id = ids[b0];
      m.rank = r;
      m.target_label = tg.label;
      m.target_index = tg.index;
      m.score = b < static_cast<int64_t>(scores.size()) ? scores[b] : y[b].item<double>();
      m.height = H;
      m.width = W;
      const float* mp = maps.data_ptr<float>() + b0 * H * W;
      m.map.assign(mp, mp + H * W);
      for (size_t l = 0; l < L; ++l) {
        uint8_t st = 0;  // with aug_smooth: what any of the sample's copies had
        for (int64_t c = 0; c < copies; ++c) st |= status[l].data_ptr<uint8_t>()[c * B0 + b0];
        if (st & kernels::kCamNonFinite)
          m.warnings.push_back(fmt::format("NaN or Inf in the activations or gradients of layer '{}': its map is "
                                           "all zeros",
                                           layers[l]));
        else if (st & kernels::kCamConstant)
          m.warnings.push_back(fmt::format("map of layer '{}' is constant (zero gradients or an all-negative "
                                           "weighted sum): written as zeros; try an earlier layer",
                                           layers[l]));
      }
      results.push_back(std::move(m));
    }
    for (size_t l = 0; l < L; ++l) {
      lowres[l].height = low[l].size(1);
      lowres[l].width = low[l].size(2);
      const auto c = (aug ? low[l].narrow(0, kIdentityAugmentation * B0, B0) : low[l]).contiguous();
      lowres[l].per_rank.emplace_back(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    }
  }
  return results;
}

at::Tensor Explainer::Impl::scorecam(const at::Tensor& a, const Batch& batch, size_t rank) {
  torch::NoGradGuard no_grad;
  const int64_t B = a.size(0), K = a.size(1);
  auto scores = torch::empty({B, K}, a.options().dtype(torch::kFloat32));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k0 = 0; k0 < K; k0 += opt.score_chunk) {
      const int64_t k1 = std::min(K, k0 + opt.score_chunk);
      Batch masked;
      masked.images = kernels::scorecam_masks(a[b], k0, k1, batch.images[b]);
      masked.labels = batch.labels;
      masked.extras = batch.extras;
      masked.targets.assign(static_cast<size_t>(k1 - k0), {batch.targets[b][rank]});
      masked.ids.assign(static_cast<size_t>(k1 - k0), batch.ids[b]);
      plugin->prepare(model.module(), masked);
      const auto out = model.module().forward(masked.inputs);
      scores[b].slice(0, k0, k1).copy_(plugin->score(out, masked, 0, nullptr));
    }
  }
  const auto w = scores.softmax(1);
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
  m.plugin->prepare(m.model.module(), b);
  auto out = m.model.module().forward(b.inputs);
  if (times) times->forward_ms = ms_since(t);
}

}  // namespace xcam

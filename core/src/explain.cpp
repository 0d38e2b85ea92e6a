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

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <thread>

#include "xcam/image.h"
#include "xcam/strings.h"
#include "xcam/kernels/dispatch.h"
#include "explain_impl.h"
#include "onednn_convs.h"

namespace xcam {

namespace {

// The first line of a message (LibTorch's carry a TorchScript traceback).
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::vector<std::string> read_labels(const std::string& file) {
  std::vector<std::string> labels;
  if (file.empty()) return labels;
  std::ifstream in(file);
  XCAM_CHECK(in.good(), "labels file '{}' cannot be read; give a text file with one class name a line", file);
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    XCAM_CHECK(invalid_utf8_at(line) == std::string::npos,
               "labels file '{}' line {} is not UTF-8 text (byte {} of the line); save the file as UTF-8", file,
               labels.size() + 1, invalid_utf8_at(line) + 1);
    labels.push_back(line);
  }
  while (!labels.empty() && labels.back().empty()) labels.pop_back();  // blank lines at the end
  XCAM_CHECK(!labels.empty(), "labels file '{}' is empty; give one class name a line, in class-index order", file);
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
  XCAM_CHECK(threads >= 0 && threads <= kMaxThreads, "threads must be in [0, {}] (0: all cores), got {}",
             kMaxThreads, threads);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (threads > cores)
    std::cerr << fmt::format("xcam: warning: threads {} is more than this machine's {} cores; using {}\n", threads,
                             cores, cores);
  const int n = threads > 0 ? std::min(threads, cores) : cores;
  at::set_num_threads(n);
  omp_set_num_threads(n);
}


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
  XCAM_CHECK(m.opt.height >= 0 && m.opt.width >= 0 && m.pre.height > 0 && m.pre.width > 0,
             "the input size must be positive, got {} x {}", m.pre.height, m.pre.width);
  for (int c = 0; c < 3; ++c)
    XCAM_CHECK(std::isfinite(m.pre.mean[c]) && std::isfinite(m.pre.std[c]) && m.pre.std[c] > 0,
               "preprocessing mean {} / std {}: every mean must be a number and every std a positive number",
               fmt::join(m.pre.mean, " "), fmt::join(m.pre.std, " "));
  m.plugin_minor = d.abi_minor;
  m.layers = m.opt.layers.empty() ? m.plugin->default_layers(m.model.module()) : m.opt.layers;
  const auto aliases =
      m.plugin_minor >= 3 ? m.plugin->model_aliases(m.model.module()) : m.plugin->layer_aliases();
  for (auto& l : m.layers)
    if (const auto it = aliases.find(l); it != aliases.end()) l = it->second;
  m.layers = expand_tap_patterns(m.layers, m.model.module_paths());
  m.tapped = std::make_unique<TappedForward>(m.model, m.layers);
  m.check_taps_fit_method();
}

void Explainer::Impl::check_arity(const std::vector<c10::IValue>& inputs) const {
  const auto& args = model.module().get_method("forward").function().getSchema().arguments();
  size_t required = 0;
  std::vector<std::string> names;
  for (size_t i = 1; i < args.size(); ++i) {  // after self
    names.push_back(args[i].name());
    if (!args[i].default_value()) ++required;
  }
  if (inputs.size() >= required && inputs.size() <= names.size()) return;
  throw SetupError(fmt::format("model {} takes {} input(s) in forward({}); plugin '{}' gives {}: use the plugin "
                               "made for this model (--plugin, YAML plugin)",
                               opt.model, required, fmt::join(names, ", "), opt.plugin, inputs.size()),
                   __FILE__, __LINE__);
}

// A classifier's scores (B x C) against the labels file: a count that differs
// means the names are shifted or belong to another model.
void Explainer::Impl::check_labels(const c10::IValue& output) const {
  if (labels.empty() || !output.isTensor() || output.toTensor().dim() != 2) return;
  const int64_t classes = output.toTensor().size(1);
  if (classes == static_cast<int64_t>(labels.size())) return;
  throw SetupError(fmt::format("labels file '{}' names {} classes but model {} scores {}; give the labels file "
                               "made for this model, one class name a line in class-index order",
                               opt.labels_file, labels.size(), opt.model, classes),
                   __FILE__, __LINE__);
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
  if (impl_->opt.crops.rows > 0 && impl_->opt.crops.own_size) {  // crops cut from the images as given
    std::vector<SampleInput> samples(images.size());
    for (size_t i = 0; i < images.size(); ++i) {
      samples[i].id = ids.at(i);
      samples[i].image = images[i];
      if (i < requests.size()) samples[i].requests = requests[i];
    }
    return explain(samples, times);
  }
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
  auto& m = *impl_;
  StageTimes local;
  auto out = host_errors([&] {
    return m.opt.crops.rows > 0 && m.opt.crops.own_size ? m.own_size_crops(samples, &local)
                                                         : m.explain_groups(samples, &local);
  });
  local.preprocess_ms = ms_since(t0) - local.forward_ms - local.backward_ms - local.cam_ms;
  if (times) *times = local;
  return out;
}

std::vector<MapResult> Explainer::explain_preprocessed(const std::vector<float>& nchw, int64_t batch,
                                                       const std::vector<std::string>& ids,
                                                       const std::vector<std::vector<std::string>>& requests,
                                                       StageTimes* times) {
  const auto& p = impl_->pre;
  XCAM_CHECK(impl_->opt.crops.rows == 0 || !impl_->opt.crops.own_size,
             "own-size crops are cut from the original images; explain the images, not a preprocessed batch");
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
  if (opt.crops.rows > 0 && !opt.crops.own_size)
    return views::crops(opt.crops.rows, opt.crops.cols, opt.crops.overlap, H, W);
  return views::identity();
}

Explainer::Impl::Pass Explainer::Impl::forward_pass(const views::ViewSet& set, const at::Tensor& images,
                                                    const std::vector<std::string>& ids,
                                                    const std::vector<std::vector<std::string>>& requests,
                                                    StageTimes* times, const std::vector<SampleInput>* inputs,
                                                    bool record_grad) {
  const int64_t B0 = static_cast<int64_t>(ids.size()), V = static_cast<int64_t>(set.views.size()), B = B0 * V;
  Pass p;
  p.text = !images.defined();
  p.batch.labels = labels;
  if (!p.text) p.batch.images = views::apply(set, images);
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
    if (!p.text) s.images["image"] = p.batch.images[b];
    s.requests = requests.empty() || requests[b0].empty() ? opt.targets : requests[b0];
    p.batch.samples.push_back(std::move(s));
  }

  const auto t = Clock::now();
  try {
    plugin->prepare(model.module(), p.batch);
    check_arity(p.batch.inputs);
    plugin->decode(model.module(), p.batch);
    p.fwd = tapped->run(p.batch.inputs, record_grad);
  } catch (const std::exception& e) {
    if (!p.text) throw;
    XCAM_THROW("sample '{}' is text only, and plugin '{}' cannot take it ({}); use a plugin that reads text",
               ids.at(0), opt.plugin, first_line(e.what()));
  }
  times->forward_ms += ms_since(t);
  if (plugin_minor >= 3 && !p.text) {
    p.stacked = plugin->stacked_images(p.batch);
    for (const auto& name : p.stacked)
      XCAM_CHECK(name != "image" && !p.batch.samples.empty() && p.batch.samples[0].images.count(name),
                 "plugin '{}' stacks image '{}', which sample '{}' does not have", opt.plugin, name, ids.at(0));
    XCAM_CHECK(p.stacked.empty() || method->kind != methods::Kind::perturbation,
               "method '{}' perturbs the image, and plugin '{}' explains the {} stacked with it in the same pass; "
               "use a gradient or attention method, or turn the plugin's maps on the {} off",
               method->name, opt.plugin, fmt::join(p.stacked, ", "), fmt::join(p.stacked, ", "));
  }
  check_labels(p.fwd.output);
  p.layouts = layouts_of(p.batch, p.fwd);
  XCAM_CHECK(!p.text || (!p.layouts.empty() && !p.layouts[0].index.empty() &&
                         std::none_of(p.layouts[0].words.begin(), p.layouts[0].words.end(),
                                      [](const auto& w) { return w.empty(); })),
             "sample '{}' is text only, and plugin '{}' lays out no words for layer '{}'; text samples need a "
             "plugin whose token_layout() (ABI 2.2) gives the word tokens",
             ids.at(0), opt.plugin, layers.at(0));
  if (!resolve_targets) return p;  // attention_of: the taps are all it reads

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

std::vector<Explainer::Impl::Laid> Explainer::Impl::layouts_of(const Batch& batch,
                                                               const TappedForward::Result& fwd) const {
  std::vector<Laid> out(layers.size());
  if (plugin_minor < 2) return out;
  const auto B = static_cast<int64_t>(batch.ids.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& tap = fwd.taps[l];
    for (int64_t b = 0; b < B; ++b) {
      const TokenLayout lay = plugin->token_layout(layers[l], tap, batch, b);
      if (lay.grid_h <= 0) {
        XCAM_CHECK(b == 0, "plugin '{}' lays out sample '{}' but not sample '{}' at layer '{}'", opt.plugin,
                   batch.ids[0], batch.ids[b], layers[l]);
        break;
      }
      auto& laid = out[l];
      if (b == 0) {
        laid.grid_h = lay.grid_h;
        laid.grid_w = lay.grid_w;
      }
      XCAM_CHECK(lay.grid_h == laid.grid_h && lay.grid_w == laid.grid_w,
                 "plugin '{}' lays sample '{}' out as {} x {} and sample '{}' as {} x {} in one batch at layer '{}'; "
                 "its input_size() or batch_key() must keep them apart",
                 opt.plugin, batch.ids[0], laid.grid_h, laid.grid_w, batch.ids[b], lay.grid_h, lay.grid_w, layers[l]);
      const auto n = static_cast<int64_t>(lay.positions.size());
      XCAM_CHECK(n == lay.grid_h * lay.grid_w && (lay.words.empty() || lay.words.size() == lay.positions.size()),
                 "plugin '{}' lays sample '{}' out as {} x {} with {} positions and {} words at layer '{}'",
                 opt.plugin, batch.ids[b], lay.grid_h, lay.grid_w, n, lay.words.size(), layers[l]);
      // Tokens: dim 1 of B x N x C; the keys of attention B x heads x Q x N.
      const int64_t N = tap.dim() == 4 ? tap.size(3) : tap.dim() >= 2 ? tap.size(1) : 0;
      for (int64_t q : lay.positions)
        XCAM_CHECK(q >= 0 && q < N, "plugin '{}' lays sample '{}' out at position {}; layer '{}' has {} tokens",
                   opt.plugin, batch.ids[b], q, layers[l], N);
      laid.index.push_back(torch::tensor(lay.positions, torch::kLong).to(tap.device()));
      laid.words.push_back(lay.words);
    }
  }
  return out;
}

std::vector<MapResult> Explainer::Impl::run(const at::Tensor& images, const std::vector<std::string>& ids,
                                            const std::vector<std::vector<std::string>>& requests,
                                            StageTimes* times, const std::vector<SampleInput>* inputs) {
  const bool text = !images.defined();
  XCAM_CHECK(!text || method->kind != methods::Kind::perturbation,
             "sample '{}' is text only; method '{}' perturbs images. Use a gradient or attention method", ids.at(0),
             method->name);
  XCAM_CHECK(!text || (!opt.aug_smooth && (opt.crops.rows == 0 || opt.crops.own_size)),
             "sample '{}' is text only; aug_smooth and crops transform images. Turn them off for text", ids.at(0));
  int64_t H = text ? 1 : images.size(2), W = text ? 1 : images.size(3);
  const auto set = view_set(H, W);
  // Once copies of the taps have proved faster, the pass keeps no graph;
  // when they cannot serve this batch, it runs again with one.
  const bool copies = opt.batch_targets && rank_mode == RankMode::batched && method->gradients && !text;
  Pass pass = forward_pass(set, images, ids, requests, times, inputs, method->gradients && !copies);
  if (text) W = pass.layouts[0].grid_h * pass.layouts[0].grid_w;  // a strip: 1 x T
  if (copies) {
    std::vector<std::vector<at::Tensor>> grads;
    if (pass.stacked.empty()) {
      const auto t = Clock::now();
      grads = batched_gradients(pass, 0);
      times->backward_ms += ms_since(t);
    }
    if (grads.empty()) {
      rank_mode = RankMode::one_by_one;
      pass = forward_pass(set, images, ids, requests, times, inputs, true);
    } else {
      std::vector<MapResult> results;
      for (size_t r = 0; r < pass.ranks; ++r) rank_maps(pass, set, r, ids, H, W, times, results, &grads[r]);
      return results;
    }
  }
  return pass_maps(pass, set, ids, H, W, times);
}

std::vector<MapResult> Explainer::Impl::pass_maps(const Pass& pass, const views::ViewSet& set,
                                                  const std::vector<std::string>& ids, int64_t H, int64_t W,
                                                  StageTimes* times) {
  std::vector<MapResult> results;
  // Several targets: one backward for all when that pays (batch_targets).
  // The first two batches that have several time both ways, rank 0 on the
  // pass's graph and the others from copies; the second, warm, decides.
  const bool can_batch = opt.batch_targets && rank_mode == RankMode::undecided && method->gradients &&
                         pass.ranks > 1 && !pass.text && pass.stacked.empty();
  if (can_batch) {
    const double before = times->backward_ms;
    rank_maps(pass, set, 0, ids, H, W, times, results);
    const double one = times->backward_ms - before;
    for (size_t l = 0; l < layers.size(); ++l) tapped->warm_replacing(l);  // not timed
    const auto t = Clock::now();
    const auto batched = batched_gradients(pass, 1);
    const double all = ms_since(t);
    times->backward_ms += all;
    if (batched.empty())
      rank_mode = RankMode::one_by_one;
    else if (++rank_trials == 2)
      rank_mode = all < one * static_cast<double>(pass.ranks - 1) ? RankMode::batched : RankMode::one_by_one;
    for (size_t r = 1; r < pass.ranks; ++r)
      rank_maps(pass, set, r, ids, H, W, times, results, batched.empty() ? nullptr : &batched[r]);
    return results;
  }
  for (size_t r = 0; r < pass.ranks; ++r) rank_maps(pass, set, r, ids, H, W, times, results);
  return results;
}

namespace {

// Unprepared batches as one, rows in order: images and each tensor extra
// whose first dimension is its part's size concatenated; any other extra
// must be one value in every part.
Batch concat_rows(std::vector<Batch>& parts) {
  if (parts.size() == 1) return std::move(parts[0]);  // its images stay one sample's, expanded
  Batch out = std::move(parts.at(0));
  std::vector<at::Tensor> images{out.images};
  std::map<std::string, std::vector<at::Tensor>> rows;
  const auto n0 = static_cast<int64_t>(out.ids.size());
  for (const auto& [key, value] : out.extras)
    if (value.isTensor() && value.toTensor().dim() > 0 && value.toTensor().size(0) == n0)
      rows[key].push_back(value.toTensor());
  for (size_t i = 1; i < parts.size(); ++i) {
    Batch& p = parts[i];
    const auto n = static_cast<int64_t>(p.ids.size());
    images.push_back(p.images);
    for (auto& v : p.ids) out.ids.push_back(std::move(v));
    for (auto& v : p.samples) out.samples.push_back(std::move(v));
    for (auto& v : p.targets) out.targets.push_back(std::move(v));
    XCAM_CHECK(p.extras.size() == out.extras.size(), "the copies' extras differ in number");
    for (const auto& [key, value] : p.extras) {
      if (rows.count(key)) {
        XCAM_CHECK(value.isTensor() && value.toTensor().dim() > 0 && value.toTensor().size(0) == n,
                   "extra '{}' is per row in one copy and not in another", key);
        rows[key].push_back(value.toTensor());
      } else {
        const auto it = out.extras.find(key);
        XCAM_CHECK(it != out.extras.end() && it->second.isSameIdentity(value),
                   "extra '{}' differs between copies of different samples", key);
      }
    }
  }
  out.images = at::cat(images);
  for (auto& [key, list] : rows) out.extras[key] = at::cat(list);
  return out;
}

}  // namespace

std::vector<std::vector<at::Tensor>> Explainer::Impl::batched_gradients(const Pass& pass, size_t first) {
  const Batch& batch = pass.batch;
  const auto B = static_cast<int64_t>(batch.ids.size()), R = static_cast<int64_t>(pass.ranks - first);
  const size_t L = layers.size();
  std::vector<at::Tensor> ys;  // per rank: the pass's B scores
  for (size_t r = first; r < pass.ranks; ++r) ys.push_back(plugin->score(pass.fwd.output, batch, r, nullptr).detach());
  const auto want = at::stack(ys, 1).to(at::kDouble).cpu().contiguous();  // B x R
  const double* wp = want.data_ptr<double>();
  std::vector<std::vector<std::vector<at::Tensor>>> parts_of(L, std::vector<std::vector<at::Tensor>>(R));
  std::string mixed;  // why the copies cannot stand for the ranks
  try {
    // Each sample once per rank (row i * R + r: the chunk's sample i with
    // target r), the layers after the taps run on a chunk's rows at once:
    // at most 64 rows, or the pass's batch when larger, or one sample's R.
    const int64_t per = std::max<int64_t>(1, std::max<int64_t>(64, B) / R);
    for (int64_t b0 = 0; b0 < B && mixed.empty(); b0 += per) {
      const int64_t n = std::min(B, b0 + per) - b0;
      std::vector<Batch> parts;
      for (int64_t b = b0; b < b0 + n; ++b) {
        parts.push_back(
            plugin->perturbation_batch(batch, b, 0, batch.images[b].unsqueeze(0).expand({R, -1, -1, -1})));
        XCAM_CHECK(static_cast<int64_t>(parts.back().targets.size()) == R,
                   "perturbation_batch() gave {} rows, not {}", parts.back().targets.size(), R);
        for (int64_t r = 0; r < R; ++r) {
          parts.back().targets[r] = {batch.targets[b][first + r]};
          parts.back().targets[r].front().padding = false;
        }
      }
      Batch copies = concat_rows(parts);
      plugin->prepare(model.module(), copies);
      const auto rows = at::arange(b0, b0 + n, at::kLong).repeat_interleave(R);
      for (size_t l = 0; l < L && mixed.empty(); ++l) {
        const at::Tensor& tap = pass.fwd.taps[l];
        const auto leaf = tap.detach().index_select(0, rows.to(tap.device())).requires_grad_();
        const at::Tensor y = plugin->score(tapped->run_replacing(copies.inputs, l, leaf, /*record_grad=*/true),
                                           copies, 0, nullptr);
        const auto got = y.detach().to(at::kDouble).cpu().contiguous();  // n R
        for (int64_t i = 0; i < n * R && mixed.empty(); ++i) {
          const double a = got.data_ptr<double>()[i], e = wp[b0 * R + i];
          if (!(std::abs(a - e) <= 1e-4 * (1 + std::abs(e))))
            mixed = fmt::format("sample '{}' target {} scores {} from copies of layer '{}' and {} in the batch",
                                batch.ids[b0 + i / R], i % R, a, layers[l], e);
        }
        if (!mixed.empty()) break;
        auto g = torch::autograd::grad({y.sum()}, {leaf}, {}, /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true)[0];
        if (!g.defined()) return {};  // the one-by-one path says why
        std::vector<int64_t> shape{n, R};
        for (int64_t d = 1; d < g.dim(); ++d) shape.push_back(g.size(d));
        g = g.view(shape);
        for (int64_t r = 0; r < R; ++r) parts_of[l][static_cast<size_t>(r)].push_back(g.select(1, r));
      }
    }
  } catch (const std::exception& e) {
    mixed = first_line(e.what());
  }
  std::vector<std::vector<at::Tensor>> out(pass.ranks, std::vector<at::Tensor>(L));
  if (mixed.empty())
    for (size_t l = 0; l < L; ++l)
      for (int64_t r = 0; r < R; ++r) out[first + r][l] = at::cat(parts_of[l][r]);
  if (mixed.empty()) return out;
  if (!rows_mix_noted)
    std::cerr << fmt::format("xcam: note: {} cannot explain its targets from copies of the tapped layers ({}); "
                             "one backward per target instead\n",
                             model.path(), mixed);
  rows_mix_noted = true;
  return {};
}

void Explainer::Impl::rank_maps(const Pass& pass, const views::ViewSet& set, size_t r,
                                const std::vector<std::string>& ids, int64_t H, int64_t W, StageTimes* times,
                                std::vector<MapResult>& results, const std::vector<at::Tensor>* given) {
  const Batch& batch = pass.batch;
  const auto& fwd = pass.fwd;
  const int64_t B0 = static_cast<int64_t>(ids.size()), V = static_cast<int64_t>(set.views.size()), B = B0 * V;
  auto t = Clock::now();
  std::vector<double> scores;
  at::Tensor y = plugin->score(fwd.output, batch, r, &scores);
  XCAM_CHECK(y.dim() == 1 && y.size(0) == B, "plugin '{}' returned scores of shape {} for a batch of {}", opt.plugin,
             c10::str(y.sizes()), B);
  std::vector<at::Tensor> grads(layers.size());
  if (given != nullptr)
    grads = *given;
  else if (method->gradients)
    grads = torch::autograd::grad({y.sum()}, fwd.taps, /*grad_outputs=*/{}, /*retain_graph=*/r + 1 < pass.ranks,
                                  /*create_graph=*/false, /*allow_unused=*/true);
  times->backward_ms += ms_since(t);

  t = Clock::now();
  auto outs = method_maps(pass, grads, r, y, H, W);
  const size_t M = outs.size();  // per stacked image
  for (size_t s = 1; s <= pass.stacked.size(); ++s)
    for (auto& o : method_maps(pass, grads, r, y, H, W, s)) outs.push_back(std::move(o));
  std::vector<at::Tensor> low(outs.size()), status(outs.size());
  for (size_t l = 0; l < outs.size(); ++l) {
    low[l] = outs[l].lowres.cpu();
    status[l] = outs[l].status;
  }
  // The maps by the image they are drawn on, "image" first; within one image,
  // several layers are resized, ReLU'd, averaged and renormalised, one layer's
  // resized map renormalised too (interpolation moves its extremes off 0 and
  // 1), as the reference implementation's aggregation does. Then the views'
  // maps are put back onto the input and combined.
  const auto groups = drawn_groups(pass, outs.size(), M);
  std::vector<at::Tensor> group_maps;
  for (const auto& [on, idx] : groups) {
    if (idx.empty()) {
      group_maps.emplace_back();
      continue;
    }
    std::vector<at::Tensor> part;
    for (size_t l : idx) part.push_back(low[l]);
    const auto hw = drawn_size(pass, on, H, W);
    const at::Tensor m = idx.size() > 1 ? kernels::aggregate_layers(part, hw[0], hw[1]).map
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
      m.on = pass.text ? "text" : groups[gi].first;
      if (pass.text) m.words = pass.layouts[0].words[b];
      m.rank = r;
      m.target_label = tg.label;
      m.target_index = tg.index;
      m.target = tg;
      m.meta = meta[b0];
      m.score = b < static_cast<int64_t>(scores.size()) ? scores[b] : y[b].item<double>();
      m.height = group_maps[gi].size(1);
      m.width = group_maps[gi].size(2);
      const float* mp = group_maps[gi].data_ptr<float>() + b0 * m.height * m.width;
      m.map.assign(mp, mp + m.height * m.width);
      for (size_t l : groups[gi].second) {
        const std::string what =
            M == layers.size() ? "layer '" + layers[l % M] + "'" : method->name + " of the tapped layers";
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

std::string Explainer::Impl::drawn_on(const Pass& pass, size_t stack, size_t l) const {
  return stack == 0 ? plugin->image_of(layers[l]) : pass.stacked.at(stack - 1);
}

std::vector<std::pair<std::string, std::vector<size_t>>> Explainer::Impl::drawn_groups(const Pass& pass, size_t n,
                                                                                       size_t M) const {
  std::vector<std::pair<std::string, std::vector<size_t>>> groups{{"image", {}}};
  for (size_t l = 0; l < n; ++l) {
    const std::string on = M == layers.size() ? drawn_on(pass, l / M, l % M)
                                              : (l < M ? std::string("image") : pass.stacked[l / M - 1]);
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == on; });
    if (it == groups.end()) it = groups.insert(groups.end(), {on, {}});
    it->second.push_back(l);
  }
  return groups;
}

namespace {

// Map maths in float32 at least: a half-precision model's taps and
// gradients (a bfloat16 VLM) are widened; float32 and float64 stay.
at::Tensor in_map_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf ? t.to(at::kFloat) : t;
}

}  // namespace

std::vector<kernels::MapOutput> Explainer::Impl::method_maps(const Pass& pass, const std::vector<at::Tensor>& grads,
                                                             size_t r, const at::Tensor& y, int64_t H0, int64_t W0,
                                                             size_t stack) {
  using methods::Kind;
  const auto& fwd = pass.fwd;
  const Batch& batch = pass.batch;
  const size_t L = layers.size();
  const auto B = static_cast<int64_t>(batch.ids.size());
  const auto S = static_cast<int64_t>(pass.stacked.size()) + 1;  // images stacked along the batch
  // Rows of `stack` in a tap (or its gradient) of S B rows.
  auto rows = [&](size_t l, const at::Tensor& t) {
    if (S == 1) return t;
    XCAM_CHECK(t.size(0) == S * B, "layer '{}' gives {} rows for a batch of {} samples with {} stacked image(s); "
               "tap a layer that sees every stacked image", layers[l], t.size(0), B, S - 1);
    return t.narrow(0, static_cast<int64_t>(stack) * B, B);
  };
  std::vector<kernels::MapOutput> out;
  if (method->kind == Kind::attention || method->kind == Kind::cross_layer) {
    std::vector<at::Tensor> attn(L), g(L);
    for (size_t l = 0; l < L; ++l) {
      const auto all = methods::as_attention(fwd.taps[l].detach(), S * B, layers[l], method->kind == Kind::attention);
      attn[l] = rows(l, all);
      XCAM_CHECK(opt.attention.query < attn[l].size(2),
                 "query token {} is out of range: layer '{}' has {} query token(s)", opt.attention.query, layers[l],
                 attn[l].size(2));
      if (method->gradients)
        g[l] = grads[l].defined() ? rows(l, grads[l].view_as(all)) : torch::zeros_like(attn[l]);
    }
    auto on_grid = [&](size_t l, const at::Tensor& tokens) {
      const std::string on = method->kind == Kind::cross_layer ? (stack == 0 ? "image" : pass.stacked[stack - 1])
                                                               : drawn_on(pass, stack, l);
      const auto hw = drawn_size(pass, on, H0, W0);
      return kernels::normalize_resize(token_grid(pass, l, tokens, hw[0], hw[1]), hw[0], hw[1]);
    };
    if (method->kind == Kind::cross_layer) return {on_grid(L - 1, method->token_map(attn, g, opt.attention))};
    for (size_t l = 0; l < L; ++l) out.push_back(on_grid(l, method->token_map({attn[l]}, {g[l]}, opt.attention)));
    return out;
  }
  for (size_t l = 0; l < L; ++l) {
    const auto [H, W] = drawn_size(pass, drawn_on(pass, stack, l), H0, W0);
    const at::Tensor a = in_map_precision(grid_of(pass, l, rows(l, fwd.taps[l].detach())));
    at::Tensor g;
    if (method->gradients)
      g = grads[l].defined() ? in_map_precision(grid_of(pass, l, rows(l, grads[l]))) : torch::zeros_like(a);
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

std::array<int64_t, 2> Explainer::Impl::drawn_size(const Pass& pass, const std::string& on, int64_t H,
                                                   int64_t W) const {
  if (on == "image" || pass.batch.samples.empty()) return {H, W};
  const auto& images = pass.batch.samples[0].images;  // one geometry per batch
  const auto it = images.find(on);
  return it == images.end() ? std::array<int64_t, 2>{H, W} : std::array<int64_t, 2>{it->second.size(1), it->second.size(2)};
}

at::Tensor Explainer::Impl::grid_of(const Pass& pass, size_t l, const at::Tensor& t) const {
  const Laid& laid = pass.layouts.at(l);
  if (laid.index.empty()) return plugin->to_grid(layers[l], t, pass.batch);
  XCAM_CHECK(t.dim() == 3, "layer '{}' gives a {}-d tensor {}; a token layout needs B x N x C tokens", layers[l],
             t.dim(), c10::str(t.sizes()));
  std::vector<at::Tensor> rows;
  for (size_t b = 0; b < laid.index.size(); ++b)
    rows.push_back(t[static_cast<int64_t>(b)].index_select(0, laid.index[b]).t().reshape(
        {t.size(2), laid.grid_h, laid.grid_w}));
  return at::stack(rows);
}

at::Tensor Explainer::Impl::token_grid(const Pass& pass, size_t l, const at::Tensor& tokens, int64_t H,
                                       int64_t W) const {
  const auto& o = opt.attention;
  const int64_t N = tokens.size(1);
  if (const Laid& laid = pass.layouts.at(l); !laid.index.empty()) {
    std::vector<at::Tensor> rows;
    for (size_t b = 0; b < laid.index.size(); ++b)
      rows.push_back(tokens[static_cast<int64_t>(b)].index_select(0, laid.index[b]).reshape(
          {laid.grid_h, laid.grid_w}));
    return at::stack(rows);
  }
  XCAM_CHECK(o.patch_h > 0 && o.patch_w > 0,
             "method '{}' lays the tokens on the patch grid and needs the model's patch size: set --patch P "
             "(YAML attention.patch) and, if the model has other than 1 token before the grid, --prefix-tokens",
             method->name);
  const int64_t gh = H / o.patch_h, gw = W / o.patch_w;
  XCAM_CHECK(N - o.prefix == gh * gw,
             "the attention has {} tokens; {} prefix token(s) and a {} x {} grid ({} x {} input, patch {} x {}) "
             "make {}; set --prefix-tokens and --patch (YAML attention.prefix, attention.patch) to the model's",
             N, o.prefix, gh, gw, H, W, o.patch_h, o.patch_w, o.prefix + gh * gw);
  return tokens.narrow(1, o.prefix, gh * gw).reshape({tokens.size(0), gh, gw});
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
    b.samples.push_back(Sample{b.ids.back(), {{"image", images[i]}}, "", m.opt.targets, {}});
  }
  host_errors([&] {
    m.plugin->prepare(m.model.module(), b);
    m.check_arity(b.inputs);
  });
  auto out = m.model.module().forward(b.inputs);
  if (times) times->forward_ms = ms_since(t);
}

}  // namespace xcam

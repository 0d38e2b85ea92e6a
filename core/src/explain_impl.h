// The Explainer's private state and stages, shared by its parts:
// explain.cpp (the pass: views, forward with taps, targets, gradients, map
// methods), perturb.cpp (Score-CAM, Ablation-CAM, the faithfulness metrics),
// batching.cpp (samples into batches by geometry, own-size crops) and
// task_host.cpp (the host side of a plugin's dataset task).
#pragma once

#include <torch/script.h>

#include <array>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/kernels/dispatch.h"
#include "xcam/kernels/types.h"
#include "xcam/model.h"
#include "xcam/plugin.h"
#include "xcam/plugin_loader.h"
#include "methods.h"
#include "views.h"

namespace xcam {

using Clock = std::chrono::steady_clock;
inline double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
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
  } catch (const SetupError&) {
    throw;  // the host's own
  } catch (const std::exception& e) {
    throw Error(e.what(), __FILE__, __LINE__);
  }
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
  // false while attention_of() runs: forward_pass() stops before the
  // targets (the attention does not depend on them).
  bool resolve_targets = true;

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
  struct Pass;
  // `stack`: which of the images stacked along the batch (ABI 2.3
  // stacked_images; 0 the samples' "image") the taps' rows are read for.
  std::vector<kernels::MapOutput> method_maps(const Pass& pass, const std::vector<at::Tensor>& grads, size_t r,
                                              const at::Tensor& y, int64_t H, int64_t W, size_t stack = 0);
  // Token scores B x N of an attention method on the grid: the plugin's
  // token layout of tap l when it gives one, else the patch grid of the
  // attention options: B x gh x gw.
  at::Tensor token_grid(const Pass& pass, size_t l, const at::Tensor& tokens, int64_t H, int64_t W) const;
  // Tap l's tensor (or its gradient) as B x K x gh x gw: gathered by the
  // plugin's token layout, or through its to_grid().
  at::Tensor grid_of(const Pass& pass, size_t l, const at::Tensor& t) const;
  // The size of the maps drawn on the sample's named image `on`: its input
  // size (H x W for "image" and for text).
  std::array<int64_t, 2> drawn_size(const Pass& pass, const std::string& on, int64_t H, int64_t W) const;
  // The batch's sample b, target `rank`, on `images` (n perturbed copies),
  // through the plugin's perturbation_batch() and prepare().
  Batch repeat_sample(const Batch& batch, int64_t b, size_t rank, const at::Tensor& images);
  // `images` (n x 3 x H x W) of sample `id` with one target for all, the
  // sample's other images, text and metadata from `like`, prepared for the model.
  Batch single_target(const at::Tensor& images, const Target& target, const std::string& id, const Sample& like);
  // A sample's other images (preprocessed), text and metadata.
  Sample sample_of(const SampleInput& in) const;

  // The model input size of a sample's named image: the plugin's own for it
  // (ABI 2.2 input_size) unless the user fixed the size, else the
  // preprocessing size; {0, 0} for no image (a text sample).
  std::array<int64_t, 2> size_of(const std::string& name, const cv::Mat& image) const;
  // Samples that share a batch: every image at the same input size, the
  // same batch_key(); in order of first appearance.
  struct Group {
    std::vector<size_t> index;  // into the samples
    int64_t height = 0, width = 0;  // "image"'s input size; 0 x 0: text samples
  };
  std::vector<Group> groups_of(const std::vector<SampleInput>& samples) const;
  // The group's "image"s, preprocessed: n x 3 x H x W on the model's device
  // (undefined for text samples).
  at::Tensor group_images(const std::vector<SampleInput>& samples, const Group& g) const;
  // Maps of samples, batched by geometry (groups_of), in group order.
  std::vector<MapResult> explain_groups(const std::vector<SampleInput>& samples, StageTimes* times);
  // Crops at their own size (ExplainerOptions::Crops::own_size): the whole
  // images explained, then their crops for the same targets, each crop's map
  // pasted back onto its region of the whole image's map.
  std::vector<MapResult> own_size_crops(const std::vector<SampleInput>& samples, StageTimes* times);
  // The plugin's readable score (probability) of `target` on each image.
  std::vector<double> probabilities(const at::Tensor& images, const Target& target, const std::string& id,
                                    const Sample& like);
  // The metrics of `maps` on `images` (B x 3 x H x W, preprocessed), the
  // samples' ids `ids`; `inputs` (optional): their other images, text, meta.
  std::vector<Faithfulness> faithfulness(const at::Tensor& images, const std::vector<std::string>& ids,
                                         const std::vector<MapResult>& maps, const FaithfulnessOptions& o,
                                         const std::vector<SampleInput>* inputs);

  void init(ExplainerOptions options);
  AttentionCapture attention_of(const SampleInput& sample);
  // The inputs a plugin prepared fit the model's forward (as many as it
  // takes); else a SetupError naming both.
  void check_arity(const std::vector<c10::IValue>& inputs) const;
  // A classifier's output (B x C) has as many classes as the labels file
  // names; else a SetupError naming both.
  void check_labels(const c10::IValue& output) const;
  // Channel and perturbation methods refuse taps that hold attention
  // probabilities (a softmax op, nn.MultiheadAttention's weights).
  void check_taps_fit_method() const;
  // `inputs` (optional): the samples' other images, text and metadata.
  std::vector<MapResult> run(const at::Tensor& images, const std::vector<std::string>& ids,
                             const std::vector<std::vector<std::string>>& requests, StageTimes* times,
                             const std::vector<SampleInput>* inputs = nullptr);

  // One forward of every view of the batch (views.h), targets resolved on
  // the reference view and padded to equal counts.
  // Per tap, the plugin's token layout of each sample (ABI 2.2; empty
  // `index` when it gives none).
  struct Laid {
    std::vector<at::Tensor> index;  // per sample: the positions, on the device
    int64_t grid_h = 0, grid_w = 0;
    std::vector<std::vector<std::string>> words;  // per sample, text layouts
  };
  struct Pass {
    Batch batch;
    TappedForward::Result fwd;
    size_t ranks = 0;
    bool text = false;          // text samples: no images, maps over tokens
    std::vector<Laid> layouts;  // per tap
    // Named images the plugin stacked after the batch's rows (ABI 2.3): the
    // taps have (1 + stacked.size()) B rows.
    std::vector<std::string> stacked;
  };
  // The image a map of `stack` and layer l is drawn on.
  std::string drawn_on(const Pass& pass, size_t stack, size_t l) const;
  // The n method outputs (M per stacked image: one per layer, or one for a
  // cross-layer method) grouped by the image they are drawn on, "image" first.
  std::vector<std::pair<std::string, std::vector<size_t>>> drawn_groups(const Pass& pass, size_t n, size_t M) const;
  // The plugin's layouts of every tap and sample, checked: positions in
  // range, one grid size for the whole batch.
  std::vector<Laid> layouts_of(const Batch& batch, const TappedForward::Result& fwd) const;
  views::ViewSet view_set(int64_t H, int64_t W) const;
  // `record_grad`: the pass's graph is kept for the gradients (not when
  // they come from copies of the taps).
  Pass forward_pass(const views::ViewSet& set, const at::Tensor& images, const std::vector<std::string>& ids,
                    const std::vector<std::vector<std::string>>& requests, StageTimes* times,
                    const std::vector<SampleInput>* inputs, bool record_grad);
  // The maps of every rank of `pass`, gradients as rank_mode says.
  std::vector<MapResult> pass_maps(const Pass& pass, const views::ViewSet& set, const std::vector<std::string>& ids,
                                   int64_t H, int64_t W, StageTimes* times);
  // The maps of rank r's targets: scores, gradients, method, layers
  // aggregated, views combined; appended to `results`, low-resolution maps
  // of the reference view kept for last_lowres().
  // `given`: the rank's gradients per layer when batched_gradients() made
  // them, else null (one backward on the pass's graph).
  void rank_maps(const Pass& pass, const views::ViewSet& set, size_t r, const std::vector<std::string>& ids,
                 int64_t H, int64_t W, StageTimes* times, std::vector<MapResult>& results,
                 const std::vector<at::Tensor>* given = nullptr);
  // The gradients of ranks `first`.. ([rank][layer], B x ... each; ranks
  // before `first` empty) from one backward per layer and chunk of samples
  // (Options::batch_targets): the model after each tap run on one copy of
  // it per sample and rank. Empty when the layers after a tap mix batch
  // rows (a copy's score differs from the pass's), said once on stderr.
  std::vector<std::vector<at::Tensor>> batched_gradients(const Pass& pass, size_t first);
  // How several targets' gradients are taken: decided by timing both ways
  // on the second batch that has several (the first runs cold). Once
  // `batched`, the passes keep no graph and every batch's gradients come
  // from copies (one rank: one copy).
  enum class RankMode { undecided, batched, one_by_one };
  RankMode rank_mode = RankMode::undecided;
  int rank_trials = 0;
  bool rows_mix_noted = false;
};

}  // namespace xcam

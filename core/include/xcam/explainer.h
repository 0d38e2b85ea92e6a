// The explanation runtime behind the CLI and the experiment runner: a model, a
// plugin, target layers and a method; images in, maps out. No LibTorch types
// in this header, so callers compile fast.
#pragma once

#include <opencv2/core.hpp>

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xcam/image.h"
#include "xcam/result.h"
#include "xcam/target.h"

namespace xcam {

// How attention and cross-layer methods read tokens (SPEC section 6). The
// tokens after `prefix` lie on the patch grid: (H / patch_h) x (W / patch_w)
// of the model input, row-major; they are never guessed from factor pairs.
struct AttentionOptions {
  int64_t patch_h = 0, patch_w = 0;  // 0: not set (attention methods then refuse to run)
  int64_t prefix = 1;                // tokens before the grid (CLS, distillation, prompts)
  int64_t query = 0;                 // the token whose row of attention is the map (CLS: 0); -1: the rows' mean
  std::string head_fusion = "mean";  // mean | max | min
  double discard_ratio = 0;          // rollout: fraction of the lowest fused entries set to 0
};

struct ExplainerOptions {
  std::string model;                    // TorchScript file
  std::string plugin = "cnn";           // plugin name or path to its .so
  std::string plugin_options = "{}";    // JSON object handed to the plugin
  std::vector<std::string> plugin_dirs; // searched before XCAM_PLUGIN_PATH
  std::vector<std::string> layers;      // taps; empty: the plugin's default
  std::string method = "gradcam";
  std::vector<std::string> targets{"top1"};  // requests for every sample
  int64_t height = 0, width = 0;        // input size; 0: the plugin's default
  std::optional<std::array<float, 3>> mean, std;
  std::string labels_file;              // class names, one a line
  std::string device = "cpu";
  int64_t score_chunk = 32;             // Score-CAM, Ablation-CAM: perturbed inputs per forward
  // Several targets per sample (top3, a caption's words): every target's
  // gradient from one backward per layer, the model after the tap run again
  // on one copy of the tapped value per sample and target, where that is
  // faster than one backward per target on the pass's graph. The first two
  // batches with several targets time both ways, the second (warm) keeps
  // the faster: copies win where the layers after the tap cost little per
  // row and much per node (an unrolled decoder), one backward each where
  // they are heavy (a CNN tapped early). The maps are the same either way;
  // a model whose layers after the tap mix batch rows is noticed (a copy's
  // score differs from the pass's) and gets one backward per target.
  // false: always one backward per target.
  bool batch_targets = true;
  // Score-CAM's masked inputs and the faithfulness metrics' perturbed inputs
  // go through a frozen, inference-optimised copy of the model (batch norm
  // folded; on the CPU, with oneDNN, every convolution called on oneDNN
  // directly, ReLU and residual additions fused, blocked layouts chained:
  // docs/architecture.md). false: the model as loaded.
  bool optimize = true;
  // In that copy, 3x3 stride-1 convolutions run on oneDNN's Winograd
  // algorithm (CPU with AVX-512): resnet18's Score-CAM 1.5x faster than with
  // the direct algorithm, logits as close to float64 (~4e-7 relative).
  // Ignored when !optimize.
  bool winograd = true;
  // pgc's smoothing options. aug_smooth: explain the six test-time
  // augmentations (horizontal flip x {0.9, 1, 1.1} times the normalised input)
  // in one batched forward, targets resolved on the un-augmented copy, flip
  // the final maps back and average them (not renormalised). eigen_smooth:
  // the first principal component of the per-channel terms instead of their
  // sum (ignored by eigencam / eigengradcam, which are projections already).
  bool aug_smooth = false, eigen_smooth = false;
  // Crops as views: a rows x cols grid of crops of the (preprocessed) input,
  // neighbours overlapping by `overlap` of the crop size, each explained at
  // the model's size in the same batched forward as the whole input (whose
  // targets they explain); their maps go back onto the input, overlaps
  // averaged, then min-max normalised. rows 0: off. Not with aug_smooth.
  // own_size: each crop is cut from the original image instead and taken
  // as an image of its own: sized by the plugin (a VLM's grid then comes
  // from the crop) or to the model's size, explained in batches of its
  // geometry for the targets resolved on the whole image, its map pasted
  // back onto the whole image's input grid.
  struct Crops {
    int64_t rows = 0, cols = 0;
    double overlap = 0.25;
    bool own_size = false;
  } crops;
  AttentionOptions attention;  // attention, rollout, relevancy
};

// Methods this build implements, by their CLI/YAML names.
const std::vector<std::string>& available_methods();
// Those that map a layer of feature maps (the CAM family and the
// perturbation methods, not the attention ones): `xcam compare`'s default.
const std::vector<std::string>& cam_methods();

// Faithfulness metrics of SPEC section 5 for one map. "Probability" is the
// plugin's readable score of the map's target (softmax probability for the
// cnn plugin), in [0, 1].
struct FaithfulnessOptions {
  int64_t steps = 0;      // deletion / insertion steps n; 0: round(sqrt(H * W)), i.e. 224 at 224 x 224
  int64_t chunk = 32;     // perturbed inputs per forward
  bool curves = false;    // keep the n + 1 probabilities of each curve
};

struct Faithfulness {
  double base = 0;        // Y: probability of the target on the unperturbed input
  double masked = 0;      // O: on the input multiplied by the map (in the normalised space)
  double drop = 0;        // average-drop term of this map: 100 * max(0, Y - O) / Y
  bool increase = false;  // increase-in-confidence term: Y < O
  // RISE: pixels in descending map order, n steps of ceil(H * W / n) pixels.
  // Deletion replaces them with 0 in the normalised space (the mean colour),
  // insertion puts them back into a Gaussian blur (11 x 11, sigma 5, zero
  // padded) of the input; AUC = (sum s - s_0 / 2 - s_n / 2) / n.
  double deletion = 0, insertion = 0;
  std::vector<double> deletion_curve, insertion_curve;  // with FaithfulnessOptions::curves
};

// Wall-clock milliseconds per stage of one explain() call.
struct StageTimes {
  double preprocess_ms = 0, forward_ms = 0, backward_ms = 0, cam_ms = 0;
  double total_ms() const { return preprocess_ms + forward_ms + backward_ms + cam_ms; }
};

// One sample as the caller has it: the image maps are drawn on, other named
// images (a re-ID reference), a text prompt, its target requests (empty: the
// options' targets) and metadata. Each image is preprocessed like `image`.
struct SampleInput {
  std::string id;
  cv::Mat image;                                // 8-bit RGB, any size
  std::map<std::string, cv::Mat> images;        // other named images, 8-bit RGB
  std::string text;
  std::vector<std::string> requests;
  std::map<std::string, std::string> meta;
};

// What a run lends a plugin's dataset-level task (Explainer::run_task): its
// samples, loaded on demand, and its outputs. The runner implements it over
// its writer; ArchPlugin::run_task sees it through the plugin's TaskHost.
class TaskRun {
 public:
  virtual ~TaskRun() = default;
  virtual size_t size() const = 0;
  virtual const std::string& id(size_t i) const = 0;
  // Throws xcam::Error naming an unreadable input. Called from several
  // threads at once for distinct i.
  virtual SampleInput load(size_t i) = 0;
  virtual void write_maps(const std::vector<MapResult>& maps) = 0;
  virtual void write_panel(const std::string& name, const std::string& title, const std::vector<MapResult>& maps) = 0;
  virtual void write_json(const std::string& name, const std::string& json) = 0;
  virtual void add_metric(const std::string& name, double value) = 0;
  virtual const std::string& output_dir() const = 0;
  // New samples: the images of `inputs` (TaskHost::add_inputs), and sample i
  // with sample j's image as its named image `name` (TaskHost::pair).
  virtual std::vector<size_t> add_inputs(const std::string& inputs) = 0;
  virtual size_t pair(size_t i, const std::string& name, size_t j, const std::string& id) = 0;
  // Sample i's image size as read, and a new sample cut from it
  // (TaskHost::image_size, TaskHost::crop).
  virtual std::array<int64_t, 2> image_size(size_t i) = 0;
  virtual size_t crop(size_t i, const std::array<int64_t, 4>& box, const std::string& id) = 0;
};

// One sample's post-softmax self-attention at each of the Explainer's layers
// (taps of the softmax inside attention modules, or of an attention module's
// weights: what method "attention" reads) and where each token lies on the
// model input: the plugin's token layout where it gives one, else the patch
// grid of ExplainerOptions::attention after its prefix tokens
// (`xcam attention` on images; docs/attention.md).
struct AttentionCapture {
  struct Layer {
    std::string name;                           // the tap
    int64_t heads = 0, tokens = 0;
    std::vector<float> attention;               // heads x tokens x tokens, C order: [head][query][key]
    std::vector<std::array<double, 2>> centre;  // per token: its cell's centre (y, x) in input pixels; NaN: off the image
    int64_t grid_h = 0, grid_w = 0;             // 0 x 0: no token lies on the image
    double cell_h = 0, cell_w = 0;              // a grid cell's size in input pixels
  };
  int64_t height = 0, width = 0;  // the model input
  std::vector<Layer> layers;
};

class Explainer {
 public:
  // Loads the model and plugin, resolves the layers. Throws xcam::Error with a
  // one-line reason (missing model, refused plugin, unknown layer, ...).
  explicit Explainer(ExplainerOptions options);
  ~Explainer();
  Explainer(Explainer&&) noexcept;

  const ExplainerOptions& options() const;
  const Preprocess& preprocess() const;
  const std::vector<std::string>& layers() const;
  const std::vector<std::string>& labels() const;

  // Maps for a batch of 8-bit RGB images of any size. `requests` (optional)
  // gives each sample its own target requests, overriding options().targets.
  std::vector<MapResult> explain(const std::vector<cv::Mat>& images, const std::vector<std::string>& ids,
                                 const std::vector<std::vector<std::string>>& requests = {},
                                 StageTimes* times = nullptr);

  // Maps for whole samples (SampleInput): what a plugin's prepare() sees of
  // each is all of it.
  std::vector<MapResult> explain(const std::vector<SampleInput>& samples, StageTimes* times = nullptr);

  // The same on an already preprocessed batch: batch x 3 x H x W floats.
  std::vector<MapResult> explain_preprocessed(const std::vector<float>& nchw, int64_t batch,
                                              const std::vector<std::string>& ids,
                                              const std::vector<std::vector<std::string>>& requests = {},
                                              StageTimes* times = nullptr);

  // Low-resolution maps of the last explain call, per layer: [layer][rank]
  // -> batch x h x w normalised, and their (h, w). For parity checks. With
  // aug_smooth: those of the un-augmented copy.
  struct LowRes {
    int64_t height = 0, width = 0;
    std::vector<std::vector<float>> per_rank;
  };
  const std::vector<LowRes>& last_lowres() const;

  // Faithfulness of maps (each height x width at the model's input size, for
  // its target_index) on the preprocessed batch they explain; maps[i] belongs
  // to the sample whose id is maps[i].image_id. Ties in the map keep pixel
  // order (row-major), so results are reproducible. The perturbed inputs go
  // through the model in batches of options.chunk.
  std::vector<Faithfulness> faithfulness(const std::vector<float>& nchw, int64_t batch,
                                         const std::vector<std::string>& ids, const std::vector<MapResult>& maps,
                                         const FaithfulnessOptions& options = {});
  // The same for whole samples (their other images, text and metadata reach
  // the plugin as in explain()). Maps drawn on another image than "image"
  // get a default Faithfulness (all zero): perturbing "image" says nothing
  // of them; so do maps of text samples.
  std::vector<Faithfulness> faithfulness(const std::vector<SampleInput>& samples, const std::vector<MapResult>& maps,
                                         const FaithfulnessOptions& options = {});
  // The same for 8-bit RGB images of any size (preprocessed as explain does).
  std::vector<Faithfulness> faithfulness(const std::vector<cv::Mat>& images, const std::vector<std::string>& ids,
                                         const std::vector<MapResult>& maps,
                                         const FaithfulnessOptions& options = {});

  // Runs the plugin's dataset task: `task_json` is the YAML `task:` block as
  // a JSON object with its "name". Throws xcam::Error when the plugin (ABI
  // below 2.2) has no tasks or refuses this one.
  void run_task(const std::string& task_json, TaskRun& run);

  // The attention of one sample (an image, with its other images, text and
  // metadata) at options().layers: one forward, no gradients. Throws
  // xcam::Error for a tap that is not square attention (heads x N x N; a
  // cross-attention is Q x N) or tokens that fit no grid.
  AttentionCapture attention_of(const SampleInput& sample);

  // The model's plain forward on the batch (no taps, no autograd): the
  // baseline `xcam bench` compares against.
  void forward_only(const std::vector<float>& nchw, int64_t batch, StageTimes* times);
  // The same for whole samples of one geometry, as explain() takes them:
  // preprocessed, prepared and decoded by the plugin (a VLM's answer
  // generated), then one plain forward of the decoded batch (the answer
  // teacher-forced); what an explanation costs beyond is taps, gradients
  // and maps. times->forward_ms is the whole.
  void forward_only(const std::vector<SampleInput>& samples, StageTimes* times);

 private:
  friend class ExplainerTaskHost;  // task_host.cpp
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Sets LibTorch's intra-op and OpenMP thread counts (0: all cores).
// threads above the machine's cores use the cores (with a warning); outside
// [0, kMaxThreads] is refused.
constexpr int kMaxThreads = 1024;
void set_threads(int threads);

}  // namespace xcam

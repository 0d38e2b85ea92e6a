// The C++ interface an architecture plugin implements (plugins/README.md is the
// author's guide). One interface serves every family:
//   - CNN classifiers: taps are B x K x h x w already; targets are classes.
//   - ViT re-ID: taps are tokens B x N x C; to_grid drops prefix tokens and
//     reshapes from input and patch size; the score is the cosine similarity to
//     a reference embedding the plugin computes in prepare() and keeps in extras.
//   - CNN-LSTM captioners: decode() generates the words, then rewrites the
//     batch into a teacher-forced pass with one target per word.
//   - decoder-only VLMs: prepare() builds the token sequence around the image
//     tokens; to_grid picks the image positions; the score sums the answer
//     tokens' log-probabilities.
// Versioning: virtual functions are only ever appended; the host calls one
// added in minor m only when the plugin's descriptor reports abi_minor >= m.
// ABI 2.0 (from 1.x): prepare() sees whole samples (Batch::samples), Target
// carries `explains` and a payload, and the hooks layer_aliases() and
// perturbation_batch(). 2.1: metadata(). 2.2: input_size(), batch_key(),
// token_layout() (images at their own size, text-only samples, tokens laid
// out per sample) and run_task() with the TaskHost it is given. 2.3:
// stacked_images() (one pass of a single-input model gives maps on a sample's
// image and on its named images stacked after it, a re-ID query and its
// reference), model_aliases(); TaskHost::add_inputs() and pair(). 2.4:
// TaskHost::image_size() and crop() (crops re-encoded at their own size).
#pragma once

#include <torch/script.h>
#include <torch/version.h>

#include <array>
#include <map>
#include <string>
#include <vector>

#include "xcam/error.h"
#include "xcam/plugin_abi.h"
#include "xcam/preprocess.h"
#include "xcam/result.h"
#include "xcam/target.h"

namespace xcam {

// One sample: what a plugin's prepare() sees of each row of a batch.
struct Sample {
  std::string id;
  // Named images, each 3 x H x W preprocessed float32: "image" (the one maps
  // are drawn on) always; others ("query", "reference") where the inputs
  // name them.
  std::map<std::string, at::Tensor> images;
  std::string text;                         // a prompt; empty when none
  std::vector<std::string> requests;        // its target requests as written
  std::map<std::string, std::string> meta;  // from the inputs (a manifest line's other keys)
};

// A batch on its way through the runtime.
struct Batch {
  at::Tensor images;                     // B x 3 x H x W, preprocessed, float32: each sample's "image"
  std::vector<std::string> ids;          // one id per sample (image file stem)
  std::vector<Sample> samples;           // one per row, in order
  std::vector<c10::IValue> inputs;       // the model's forward inputs (prepare())
  std::vector<std::vector<Target>> targets;  // [sample][rank]; the runtime pads to equal counts
  std::vector<std::string> labels;       // class names, empty if none were given
  std::map<std::string, c10::IValue> extras;  // plugin state for this batch
};

// The user's target requests as written, per sample: "top1", "top3", a class
// index, a class name. Plugins may accept more (a word, an answer string).
struct TargetRequest {
  std::vector<std::vector<std::string>> per_sample;  // [sample] -> requests
};

// Where a tap's tokens lie for one sample (ArchPlugin::token_layout): the
// rows `positions` of the tap's token dimension (dimension 1 of B x N x C,
// in row-major grid order) make a grid_h x grid_w grid. Image tokens of a
// VLM: the positions of the image pads in the sequence and the image's own
// grid. Text: every word token, a 1 x T grid, with `words` its tokens as
// text (the map is then drawn as a heat strip over the words). grid_h 0: no
// layout (the host calls to_grid()).
struct TokenLayout {
  std::vector<int64_t> positions;
  int64_t grid_h = 0, grid_w = 0;
  std::vector<std::string> words;  // text layouts only: one per position
};

// What the host lends a plugin's dataset-level task (ArchPlugin::run_task):
// the run's samples, forwards without taps, explanations with the run's
// method and layers, and its outputs. Indices are into the run's samples.
class TaskHost {
 public:
  virtual ~TaskHost() = default;
  virtual size_t size() const = 0;                 // the run's samples
  virtual const std::string& id(size_t i) const = 0;
  // Sample i as prepare() sees it (images preprocessed at their input size).
  virtual Sample sample(size_t i) = 0;
  // The model's output on samples `which` (one geometry), prepared and
  // decoded by the plugin, without taps or autograd; `batch` (optional)
  // receives the prepared batch.
  virtual c10::IValue forward(const std::vector<size_t>& which, Batch* batch = nullptr) = 0;
  // Maps of samples `which` with the run's method and layers; requests[k]
  // (optional, non-empty) replaces sample which[k]'s target requests.
  virtual std::vector<MapResult> explain(const std::vector<size_t>& which,
                                         const std::vector<std::vector<std::string>>& requests = {}) = 0;
  // Writes maps as the run writes its own (overlays, heatmaps, records).
  virtual void write_maps(const std::vector<MapResult>& maps) = 0;
  // One titled panel `name`.png: a row of the maps' overlays, each on its
  // sample's image, captioned by its target.
  virtual void write_panel(const std::string& name, const std::string& title, const std::vector<MapResult>& maps) = 0;
  // `name`.json in the run's output folder (`json` is the whole document).
  virtual void write_json(const std::string& name, const std::string& json) = 0;
  // A dataset-level number, reported with the run's summary and in task.json.
  virtual void add_metric(const std::string& name, double value) = 0;
  virtual const std::string& output_dir() const = 0;

  // ---- ABI 2.3 (appended: the host implements TaskHost) ----

  // The images of `inputs` (a folder, a glob or a list file, as the run's
  // `inputs.images` takes them, relative to the experiment's folder) as new
  // samples of the run, with the run's targets; returns their indices. Ids
  // are those the files would have as the run's own inputs, made unique
  // against the run's ("-2", ...). Throws xcam::Error naming an input that
  // matches nothing.
  virtual std::vector<size_t> add_inputs(const std::string& inputs) = 0;
  // A new sample `id` (unique in the run): sample i with sample j's "image"
  // as its named image `name` (a query with a gallery image as its
  // "reference"); returns its index.
  virtual size_t pair(size_t i, const std::string& name, size_t j, const std::string& id) = 0;

  // ---- ABI 2.4 (appended: the host implements TaskHost) ----

  // Sample i's image as read: {height, width} in pixels, before any resize.
  virtual std::array<int64_t, 2> image_size(size_t i) = 0;
  // A new sample `id` (unique in the run): sample i with its image cut to
  // the box {x0, y0, x1, y1} (pixels of the image as read, x1 and y1
  // exclusive) before preprocessing, so that the crop is re-encoded at the
  // size input_size() gives it (a VLM's crop gets its own grid); its text,
  // requests and metadata are sample i's. Throws xcam::Error for a box
  // outside the image or empty. Returns its index.
  virtual size_t crop(size_t i, const std::array<int64_t, 4>& box, const std::string& id) = 0;
};

class ArchPlugin {
 public:
  virtual ~ArchPlugin() = default;

  // Preprocessing defaults; the CLI and YAML may override each field.
  virtual Preprocess preprocess() const = 0;

  // Layers tapped when the user names none.
  virtual std::vector<std::string> default_layers(const torch::jit::Module& model) const = 0;

  // Fills batch.inputs (and any extras) from batch.images.
  virtual void prepare(torch::jit::Module& model, Batch& batch) const = 0;

  // Optional decoding before explaining (captions, answers); runs without taps
  // and may rewrite batch.inputs and batch.targets. Default: nothing to decode.
  virtual void decode(torch::jit::Module& model, Batch& batch) const {}

  // Resolves the requests against the forward output into batch.targets
  // (one list per sample; lists may differ in length). Throws xcam::Error
  // naming the request when it cannot be met.
  virtual void resolve_targets(const c10::IValue& output, const TargetRequest& request, Batch& batch) const = 0;

  // y_b for the targets of rank `rank`: a B-vector, differentiable w.r.t. the
  // model output. Also fills `scores` (B readable values for reports, e.g. the
  // softmax probability) when it is not null.
  virtual at::Tensor score(const c10::IValue& output, const Batch& batch, size_t rank,
                           std::vector<double>* scores) const = 0;

  // A tapped tensor as B x K x h x w (tokens to a grid, sequence positions to
  // an image). The default accepts 4-d tensors as they are.
  virtual at::Tensor to_grid(const std::string& layer, const at::Tensor& tapped, const Batch& batch) const {
    XCAM_CHECK(tapped.dim() == 4,
               "layer '{}' gives a {}-d tensor {}; this plugin expects B x K x h x w feature maps. "
               "Tap a convolutional layer (`xcam layers MODEL` lists shapes) or use a plugin that "
               "maps tokens to a grid",
               layer, tapped.dim(), c10::str(tapped.sizes()));
    return tapped;
  }

  // ---- ABI 2.0 ----

  // Names users may give as layers, each for a tap (docs/yaml.md syntax):
  // re-ID's {"mim": "mim.cross_attn/softmax", "vit_last": "encoder.layers.11", ...}.
  virtual std::map<std::string, std::string> layer_aliases() const { return {}; }

  // The named image of the sample that a tap's map is drawn on: "image" for
  // most; a siamese plugin says "reference" for the taps on its reference
  // branch. Taps of different images give separate maps from one pass;
  // taps of one image are aggregated.
  virtual std::string image_of(const std::string& layer) const { return "image"; }

  // The batch a perturbation path explains again: `images` (n x 3 x H x W,
  // perturbed copies of sample b's "image") standing for sample b, every
  // copy with target `rank` of sample b. The host calls prepare() on it
  // afterwards. The default copies the sample (its other images, text,
  // requests), the labels, and the extras, each tensor whose first dimension
  // is the batch's size cut to row b and repeated n times. A plugin whose
  // decode() left state elsewhere (a caption's token sequence) rebuilds it
  // here.
  virtual Batch perturbation_batch(const Batch& batch, int64_t b, size_t rank, const at::Tensor& images) const {
    Batch out;
    const int64_t n = images.size(0), B = static_cast<int64_t>(batch.ids.size());
    out.images = images;
    out.labels = batch.labels;
    out.ids.assign(static_cast<size_t>(n), batch.ids.at(b));
    if (static_cast<int64_t>(batch.samples.size()) > b) {
      Sample s = batch.samples[b];
      out.samples.reserve(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        s.images["image"] = images[i];
        out.samples.push_back(s);
      }
    }
    out.targets.assign(static_cast<size_t>(n), {batch.targets.at(b).at(rank)});
    for (auto& ts : out.targets) ts.front().padding = false;
    for (const auto& [key, value] : batch.extras) {
      if (value.isTensor() && value.toTensor().dim() > 0 && value.toTensor().size(0) == B) {
        const auto row = value.toTensor()[b].unsqueeze(0);
        std::vector<int64_t> reps(static_cast<size_t>(row.dim()), 1);
        reps[0] = n;
        out.extras[key] = row.repeat(reps);
      } else {
        out.extras[key] = value;
      }
    }
    return out;
  }

  // ---- ABI 2.1 ----

  // Per-sample facts for the records (a caption, an answer, a similarity, a
  // rank), as strings; written under "meta" of each of the sample's records.
  virtual std::map<std::string, std::string> metadata(const c10::IValue& output, const Batch& batch,
                                                      int64_t b) const {
    return {};
  }

  // ---- ABI 2.2 ----

  // The model input size (height, width) of the named image of a sample,
  // given its pixel size, for models that take each image at (about) its own
  // size: a VLM rounds each side to its patch multiple within a pixel
  // budget, so a wide and a tall image get their own grids. {0, 0}: the
  // preprocess() size (or the user's). The host batches samples whose images
  // share sizes (and batch_key()).
  virtual std::array<int64_t, 2> input_size(const std::string& name, int64_t height, int64_t width) const {
    return {0, 0};
  }

  // Samples with different keys never share a batch: a text encoder returns
  // the token count, so that a batch's sequences have one length. The
  // sample's id, text, requests and metadata are set; its images are not.
  virtual std::string batch_key(const Sample& sample) const { return ""; }

  // Where the tokens of a tap lie for sample b (TokenLayout), read before
  // to_grid(): a layout with grid_h > 0 replaces to_grid() for that tap.
  // Text-only samples (no "image") need one.
  virtual TokenLayout token_layout(const std::string& layer, const at::Tensor& tapped, const Batch& batch,
                                   int64_t b) const {
    return {};
  }

  // A dataset-level task (a re-ID evaluation, a keyword analysis, a counting
  // run): the YAML `task:` block as a JSON object, its `name` the task's.
  // The plugin drives it through `host`. Throws xcam::Error for a task it
  // does not know.
  virtual void run_task(TaskHost& host, const std::string& task_json) const {
    XCAM_THROW("this plugin has no dataset tasks; remove the `task:` block");
  }

  // ---- ABI 2.3 ----

  // Named images of each sample that prepare() stacked along the batch
  // dimension after the batch's own B rows, in order: a single-input model
  // fed [queries; references] as one batch of 2B, so that one forward and one
  // backward give the maps on both. Every tap then has (1 + k) B rows (B x
  // heads for a 3-d attention softmax); rows [jB, (j + 1) B) give the maps
  // drawn on image j (0: "image", j > 0: the j-th name), and score() returns
  // the B values of the batch's samples. Perturbation methods refuse such a
  // batch. Default: nothing stacked.
  virtual std::vector<std::string> stacked_images(const Batch& batch) const { return {}; }

  // layer_aliases() for this model: names that depend on its module tree
  // (the last block of a ViT of any depth, timm or Hugging Face naming). The
  // host asks this one instead of layer_aliases() from 2.3 on. Default:
  // layer_aliases().
  virtual std::map<std::string, std::string> model_aliases(const torch::jit::Module& model) const {
    return layer_aliases();
  }
};

}  // namespace xcam

// Defines the plugin's entry symbol and descriptor. CLASS must be constructible
// from (const XcamHost*, const char* options_json) and may throw; the error is
// logged through the host and create() returns null.
#define XCAM_DEFINE_PLUGIN(CLASS, NAME, VERSION, SUMMARY)                                                  \
  namespace {                                                                                              \
  xcam::ArchPlugin* xcam_plugin_create(const XcamHost* host, const char* options) {                        \
    try {                                                                                                  \
      return new CLASS(host, options);                                                                     \
    } catch (const std::exception& e) {                                                                    \
      if (host != nullptr && host->log != nullptr) host->log(host, 3, e.what());                           \
      return nullptr;                                                                                      \
    }                                                                                                      \
  }                                                                                                        \
  void xcam_plugin_destroy(xcam::ArchPlugin* p) { delete p; }                                              \
  const XcamPluginDescriptor xcam_plugin_descriptor = {                                                    \
      XCAM_PLUGIN_ABI_MAJOR, XCAM_PLUGIN_ABI_MINOR, sizeof(XcamPluginDescriptor), NAME, VERSION,          \
      TORCH_VERSION,         XCAM_CXX11_ABI,        SUMMARY,                      &xcam_plugin_create,      \
      &xcam_plugin_destroy};                                                                               \
  }                                                                                                        \
  extern "C" __attribute__((visibility("default"))) const XcamPluginDescriptor* XCAM_PLUGIN_ENTRY(void) { \
    return &xcam_plugin_descriptor;                                                                        \
  }

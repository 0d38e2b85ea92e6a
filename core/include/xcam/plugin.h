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

namespace xcam {

// One resolved target of one sample.
struct Target {
  std::string kind = "class";   // class | similarity | token | answer (plugin-defined)
  int64_t index = -1;           // class index or token id
  int64_t step = -1;            // sequence position, for token targets
  std::vector<int64_t> tokens;  // the answer's tokens, for answer targets
  std::string label;            // readable name: file names, titles
  bool padding = false;         // set by the runtime: a copy that fills a short list, not reported
};

// A batch on its way through the runtime.
struct Batch {
  at::Tensor images;                     // B x 3 x H x W, preprocessed, float32
  std::vector<std::string> ids;          // one id per sample (image file stem)
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

// The re-ID plugin (plugins/reid/README.md): person re-identification models
// that map images to embeddings, B x 3 x H x W -> B x D in eval mode. ViTs
// (a CLIP or timm encoder, a prompt cross-attending to the patches, more
// blocks, a BNNeck) and CNN backbones alike.
//
// reid_plugin.cpp: the hooks (options, layer types, token geometry, targets,
// scores). reid_task.cpp: the dataset tasks `evaluate` and `search`.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "xcam/plugin.h"

namespace xcam::reid {

struct Options {
  int64_t height = 256, width = 128;  // the usual re-ID crop
  int64_t patch_h = 16, patch_w = 16;
  int64_t prefix = -1;                 // tokens before the grid; -1: N - h * w per tap
  bool reference_maps = true;          // maps on the reference from the same pass
  std::string classifier;              // parameter of the identity classifier (C x D); "" = look for one
  std::map<std::string, std::string> layers;  // layer types given in the options
};

class ReidPlugin final : public ArchPlugin {
 public:
  ReidPlugin(const XcamHost* host, const char* options_json);

  Preprocess preprocess() const override;
  std::vector<std::string> default_layers(const torch::jit::Module& model) const override;
  void prepare(torch::jit::Module& model, Batch& batch) const override;
  void resolve_targets(const c10::IValue& output, const TargetRequest& request, Batch& batch) const override;
  at::Tensor score(const c10::IValue& output, const Batch& batch, size_t rank,
                   std::vector<double>* readable) const override;
  at::Tensor to_grid(const std::string& layer, const at::Tensor& tapped, const Batch& batch) const override;
  std::map<std::string, std::string> layer_aliases() const override;
  std::map<std::string, std::string> metadata(const c10::IValue& output, const Batch& batch,
                                              int64_t b) const override;
  TokenLayout token_layout(const std::string& layer, const at::Tensor& tapped, const Batch& batch,
                           int64_t b) const override;
  void run_task(TaskHost& host, const std::string& task_json) const override;
  std::vector<std::string> stacked_images(const Batch& batch) const override;
  std::map<std::string, std::string> model_aliases(const torch::jit::Module& model) const override;

  // The embeddings of the batch's own samples (rows 0..B-1 of the output).
  static at::Tensor embeddings(const c10::IValue& output, const Batch& batch);

 private:
  // The identity classifier's weight, looked up once (undefined: none).
  at::Tensor classifier_weight(const torch::jit::Module& model) const;

  const XcamHost* host_;
  Options opt_;
  mutable struct {
    std::mutex mutex;
    bool looked = false;
    at::Tensor weight;
  } classifier_;
};

}  // namespace xcam::reid

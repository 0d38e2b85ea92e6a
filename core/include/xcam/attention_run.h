// One attention analysis (`xcam attention`, and the YAML task `attention`;
// docs/attention.md): the texts tokenized, run through a model that returns
// its attentions, per-head statistics averaged over the texts and labelled,
// and the outputs written: attention_stats.csv / .json, a heat map of one
// statistic, and as asked the interactive pages, the view images and the
// flows. Or images: the attention read through taps inside the attention
// modules of a vision model, distances in pixels. No LibTorch types.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "xcam/attention_stats.h"
#include "xcam/explainer.h"

namespace xcam {

struct AttentionRun {
  std::string model, tokenizer, out_dir;
  std::vector<std::string> texts;
  int64_t window = 2;                 // w of the local share
  std::string stat = "entropy_norm";  // the heat map's statistic
  LabelRules rules;
  bool html = false, views = false;
  std::vector<int64_t> flows;         // token indices
  // Images instead of texts (docs/attention.md, "Images"): each image's
  // attention at explainer.layers (taps of the softmax inside the attention
  // modules; '*' stands for one path component), through the plugin, size
  // and patch grid of `explainer` as `xcam explain` takes them (model and
  // method are set here); mean_distance and local_share between the
  // tokens' cells on the model input, in pixels.
  struct Image {
    std::string path;
    std::string text;                          // a prompt (a VLM's question), or empty
    std::map<std::string, std::string> meta;   // what a plugin may read of the sample
  };
  std::vector<Image> images;
  ExplainerOptions explainer;
};

// Runs it and writes its outputs; returns the table as text and the files
// written, for the terminal. Throws xcam::Error naming a missing tokenizer,
// an unknown statistic, rules outside [0, 1], a flow token outside a text,
// texts and images both or neither, an image that cannot be read, a tap
// that is not self-attention.
std::string run_attention(const AttentionRun& run);

}  // namespace xcam

// One attention analysis (`xcam attention`, and the YAML task `attention`;
// docs/attention.md): the texts tokenized, run through a model that returns
// its attentions, per-head statistics averaged over the texts and labelled,
// and the outputs written: attention_stats.csv / .json, a heat map of one
// statistic, and as asked the interactive pages, the view images and the
// flows. No LibTorch types.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xcam/attention_stats.h"

namespace xcam {

struct AttentionRun {
  std::string model, tokenizer, out_dir;
  std::vector<std::string> texts;
  int64_t window = 2;                 // w of the local share
  std::string stat = "entropy_norm";  // the heat map's statistic
  LabelRules rules;
  bool html = false, views = false;
  std::vector<int64_t> flows;         // token indices
};

// Runs it and writes its outputs; returns the table as text and the files
// written, for the terminal. Throws xcam::Error naming a missing tokenizer,
// an unknown statistic, rules outside [0, 1], a flow token outside a text.
std::string run_attention(const AttentionRun& run);

}  // namespace xcam

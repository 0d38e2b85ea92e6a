// The captioner plugin (plugins/captioner/README.md): CNN-LSTM image
// captioners, forward(images B x 3 x H x W, tokens B x T[, detach_state])
// -> logits B x T x V, teacher forced. A caption is generated (greedy or beam
// search) without taps, then one teacher-forced pass over it gives every
// word's map: the host's one backward for all the words (the decoder run
// again from the tapped encoder output, one copy per word), never a
// forward per word.
//
// captioner_plugin.cpp: options, vocabulary, decoding, targets, scores.
// captioner_task.cpp: the dataset tasks `captions` and `keywords`.
#pragma once

#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "xcam/plugin.h"

namespace xcam::captioner {

struct Options {
  int64_t height = 224, width = 224;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f}, std{0.229f, 0.224f, 0.225f};
  std::vector<std::string> vocab;  // from the option, else the model's `vocab` attribute
  std::string start = "<start>", end = "<end>", pad = "<pad>", unknown = "<unk>";
  int64_t beam = 1;          // 1: greedy
  int64_t max_words = 20;    // length cap of a generated caption
  bool logprob = false;      // score a word by its log-probability, not its logit
  bool detach_state = false; // cut the recurrent state's gradient between steps
  int64_t pad_to = 0;        // token count a traced, unrolled forward was traced at; 0: none
  std::map<std::string, std::string> layers;  // layer types given in the options
};

// A caption's words, split on spaces.
std::vector<std::string> split_words(const std::string& text);

// Corpus BLEU-4 of hypotheses against one reference each: clipped n-gram
// precisions for n = 1..4 summed over the corpus, their geometric mean,
// times the brevity penalty exp(1 - r / c) when the hypotheses are shorter
// (c < r). No smoothing: 0 when some n has no match.
double bleu4(const std::vector<std::vector<std::string>>& hypotheses,
             const std::vector<std::vector<std::string>>& references);

class CaptionerPlugin final : public ArchPlugin {
 public:
  CaptionerPlugin(const XcamHost* host, const char* options_json);

  Preprocess preprocess() const override;
  std::vector<std::string> default_layers(const torch::jit::Module& model) const override;
  void prepare(torch::jit::Module& model, Batch& batch) const override;
  void decode(torch::jit::Module& model, Batch& batch) const override;
  void resolve_targets(const c10::IValue& output, const TargetRequest& request, Batch& batch) const override;
  at::Tensor score(const c10::IValue& output, const Batch& batch, size_t rank,
                   std::vector<double>* readable) const override;
  at::Tensor to_grid(const std::string& layer, const at::Tensor& tapped, const Batch& batch) const override;
  std::map<std::string, std::string> layer_aliases() const override;
  std::map<std::string, std::string> model_aliases(const torch::jit::Module& model) const override;
  std::map<std::string, std::string> metadata(const c10::IValue& output, const Batch& batch,
                                              int64_t b) const override;
  void run_task(TaskHost& host, const std::string& task_json) const override;

  // The words of sample b's caption in a decoded batch.
  std::vector<std::string> caption(const Batch& batch, int64_t b) const;
  // The words of one row of tokens (CPU, int64): after <start>, up to <end> or padding.
  std::vector<std::string> caption_of(const at::Tensor& row) const;
  // The vocabulary: the option's, or the model's `vocab` attribute (read by
  // the first prepare()).
  const std::vector<std::string>& vocab() const;

 private:
  // The token ids of a caption (given as text, or generated), one row each:
  // <start> words <end>, padded; B x T int64 with T the longest or pad_to.
  at::Tensor generate(torch::jit::Module& model, const Batch& batch) const;
  // Each image's generated tokens: its words, then <end> unless the length
  // cap came first. Greedy is width 1.
  std::vector<std::vector<int64_t>> beam_search(torch::jit::Module& model, const at::Tensor& images) const;
  // The logits of the next token after `prefix` (n x L), without the
  // generation methods: a forward over the prefix.
  at::Tensor next_logits(torch::jit::Module& model, const at::Tensor& images, const at::Tensor& prefix) const;
  at::Tensor model_step(torch::jit::Module& model, const at::Tensor& last, std::vector<at::Tensor>& state) const;
  static at::Tensor prefixes(const std::vector<std::vector<int64_t>>& seq, int64_t start, int64_t s);
  std::vector<c10::IValue> teacher_inputs(torch::jit::Module& model, const at::Tensor& images,
                                          const at::Tensor& tokens) const;
  int64_t id_of(const std::vector<std::string>& vocab, const std::string& token, const std::string& what) const;

  Options opt_;
  mutable struct {
    std::mutex mutex;
    std::vector<std::string> tokens;  // the model's `vocab`
    std::set<int64_t> lengths_ok;     // token counts the model's forward took
  } model_vocab_;
};

}  // namespace xcam::captioner

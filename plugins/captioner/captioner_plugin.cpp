// The captioner plugin's hooks: options, vocabulary, decoding (greedy and
// beam search), the teacher-forced pass, word targets and their scores
// (plugins/captioner/README.md).
#include <nlohmann/json.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>

#include "captioner.h"

namespace xcam::captioner {

namespace {

int64_t positive(const nlohmann::json& v, const std::string& key) {
  XCAM_CHECK(v.is_number_integer() && v.get<int64_t>() > 0,
             "captioner plugin option {}={}: expected a positive integer", key, v.dump());
  return v.get<int64_t>();
}

// "step:3" -> 3; "word:circle" -> "circle".
bool has_prefix(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// Modules that end a CNN encoder without being its last feature map.
bool is_head(const torch::jit::Module& m, const std::string& name) {
  const std::string type = m.type()->name() ? m.type()->name()->name() : "";
  for (const char* word : {"Pool", "pool", "Linear", "Flatten", "Dropout", "Identity"})
    if (type.find(word) != std::string::npos) return true;
  return name == "fc" || name == "head" || name == "classifier" || name == "embed";
}

std::vector<std::string> read_vocab_file(const std::string& file) {
  std::ifstream in(file);
  XCAM_CHECK(in.good(), "captioner plugin option vocab='{}': the file cannot be read (one token a line; or give the "
             "tokens as a list, or save them in the model as its `vocab` attribute)", file);
  std::vector<std::string> out;
  for (std::string w; std::getline(in, w);) {
    if (!w.empty() && w.back() == '\r') w.pop_back();
    out.push_back(w);
  }
  return out;
}

}  // namespace

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

double bleu4(const std::vector<std::vector<std::string>>& hypotheses,
             const std::vector<std::vector<std::string>>& references) {
  XCAM_CHECK(hypotheses.size() == references.size(), "BLEU-4: {} hypotheses for {} references", hypotheses.size(),
             references.size());
  std::array<double, 4> matches{}, totals{};
  double hyp_len = 0, ref_len = 0;
  for (size_t i = 0; i < hypotheses.size(); ++i) {
    const auto& h = hypotheses[i];
    const auto& r = references[i];
    hyp_len += static_cast<double>(h.size());
    ref_len += static_cast<double>(r.size());
    for (size_t n = 1; n <= 4; ++n) {
      std::map<std::vector<std::string>, int64_t> in_ref;
      for (size_t k = 0; k + n <= r.size(); ++k) ++in_ref[{r.begin() + k, r.begin() + k + n}];
      std::map<std::vector<std::string>, int64_t> in_hyp;
      for (size_t k = 0; k + n <= h.size(); ++k) ++in_hyp[{h.begin() + k, h.begin() + k + n}];
      for (const auto& [gram, count] : in_hyp) {
        const auto it = in_ref.find(gram);
        matches[n - 1] += static_cast<double>(std::min(count, it == in_ref.end() ? int64_t{0} : it->second));
      }
      totals[n - 1] += h.size() >= n ? static_cast<double>(h.size() - n + 1) : 0.0;
    }
  }
  if (hyp_len == 0 || *std::min_element(matches.begin(), matches.end()) == 0) return 0.0;
  double log_p = 0;
  for (size_t n = 0; n < 4; ++n) log_p += std::log(matches[n] / totals[n]) / 4;
  const double bp = hyp_len > ref_len ? 1.0 : std::exp(1.0 - ref_len / hyp_len);
  return bp * std::exp(log_p);
}

CaptionerPlugin::CaptionerPlugin(const XcamHost*, const char* options_json) {
  const auto opts = nlohmann::json::parse(options_json ? options_json : "{}", nullptr, false);
  XCAM_CHECK(opts.is_object(), "captioner plugin options must be a JSON object, got '{}'", options_json);
  auto text = [](const nlohmann::json& v, const std::string& key) {
    XCAM_CHECK(v.is_string() && !v.get<std::string>().empty(), "captioner plugin option {}={}: expected a token",
               key, v.dump());
    return v.get<std::string>();
  };
  for (const auto& [key, value] : opts.items()) {
    if (key == "size") {
      if (value.is_array()) {
        XCAM_CHECK(value.size() == 2, "captioner plugin option size={}: expected one integer or two", value.dump());
        opt_.height = positive(value[0], key);
        opt_.width = positive(value[1], key);
      } else {
        opt_.height = opt_.width = positive(value, key);
      }
    } else if (key == "vocab") {
      if (value.is_array()) {
        for (const auto& t : value) opt_.vocab.push_back(text(t, key));
      } else {
        opt_.vocab = read_vocab_file(text(value, key));
      }
      XCAM_CHECK(!opt_.vocab.empty(), "captioner plugin option vocab: the vocabulary is empty");
    } else if (key == "start" || key == "end" || key == "pad" || key == "unknown") {
      (key == "start" ? opt_.start : key == "end" ? opt_.end : key == "pad" ? opt_.pad : opt_.unknown) = text(value, key);
    } else if (key == "beam") {
      opt_.beam = positive(value, key);
    } else if (key == "max_words") {
      opt_.max_words = positive(value, key);
    } else if (key == "pad_to") {
      opt_.pad_to = positive(value, key);
      XCAM_CHECK(opt_.pad_to >= 3, "captioner plugin option pad_to={}: a caption needs at least 3 tokens", opt_.pad_to);
    } else if (key == "score") {
      XCAM_CHECK(value == "logit" || value == "logprob",
                 "captioner plugin option score={}: expected logit or logprob", value.dump());
      opt_.logprob = value == "logprob";
    } else if (key == "detach_state") {
      XCAM_CHECK(value.is_boolean(), "captioner plugin option detach_state={}: expected true or false", value.dump());
      opt_.detach_state = value.get<bool>();
    } else if (key == "layers") {
      XCAM_CHECK(value.is_object(), "captioner plugin option layers={}: expected a mapping of layer type to tap",
                 value.dump());
      for (const auto& [type, tap] : value.items()) opt_.layers[type] = text(tap, "layers." + type);
    } else {
      XCAM_THROW("captioner plugin has no option '{}'; it accepts: size, vocab, start, end, pad, unknown, beam, "
                 "max_words, pad_to, score, detach_state, layers",
                 key);
    }
  }
  if (opt_.pad_to > 0) opt_.max_words = std::min(opt_.max_words, opt_.pad_to - 2);
}

Preprocess CaptionerPlugin::preprocess() const {
  Preprocess p;
  p.height = opt_.height;
  p.width = opt_.width;
  p.mean = opt_.mean;
  p.std = opt_.std;
  return p;
}

std::map<std::string, std::string> CaptionerPlugin::layer_aliases() const {
  std::map<std::string, std::string> out{{"encoder", "encoder.layer3"}};  // the zoo model's
  for (const auto& [type, tap] : opt_.layers) out[type] = tap;
  return out;
}

// `encoder`: the encoder's last feature map, its last child that is not a
// pooling or linear head, descending into containers (Sequential).
std::map<std::string, std::string> CaptionerPlugin::model_aliases(const torch::jit::Module& model) const {
  std::map<std::string, std::string> out;
  // The shallowest module named encoder, cnn or backbone (under a wrapper's
  // attribute too).
  std::string path;
  torch::jit::Module m = model;
  for (const auto& sub : model.named_modules()) {
    const auto dot = sub.name.rfind('.');
    const std::string last = dot == std::string::npos ? sub.name : sub.name.substr(dot + 1);
    const auto depth = std::count(sub.name.begin(), sub.name.end(), '.');
    if ((last == "encoder" || last == "cnn" || last == "backbone") &&
        (path.empty() || depth < std::count(path.begin(), path.end(), '.'))) {
      path = sub.name;
      m = sub.value;
    }
  }
  while (!path.empty()) {
    std::string last;
    torch::jit::Module next = m;
    for (const auto& child : m.named_children())
      if (!is_head(child.value, child.name)) {
        last = child.name;
        next = child.value;
      }
    if (last.empty()) break;
    path += "." + last;
    const std::string type = next.type()->name() ? next.type()->name()->name() : "";
    m = next;
    if (type.find("Sequential") == std::string::npos && type.find("ModuleList") == std::string::npos) break;
  }
  if (!path.empty()) out["encoder"] = path;
  for (const auto& [type, tap] : opt_.layers) out[type] = tap;
  return out;
}

std::vector<std::string> CaptionerPlugin::default_layers(const torch::jit::Module& model) const {
  const auto aliases = model_aliases(model);
  const auto it = aliases.find("encoder");
  XCAM_CHECK(it != aliases.end(),
             "the captioner plugin finds no image encoder in this model (a submodule named encoder, cnn or "
             "backbone); name a layer (`xcam layers MODEL` lists them) or give the plugin option layers.encoder");
  return {it->second};
}

const std::vector<std::string>& CaptionerPlugin::vocab() const {
  if (!opt_.vocab.empty()) return opt_.vocab;
  std::lock_guard<std::mutex> lock(model_vocab_.mutex);
  XCAM_CHECK(!model_vocab_.tokens.empty(), "captioner: no batch was prepared yet (the vocabulary is unknown)");
  return model_vocab_.tokens;
}

int64_t CaptionerPlugin::id_of(const std::vector<std::string>& vocab, const std::string& token,
                               const std::string& what) const {
  const auto it = std::find(vocab.begin(), vocab.end(), token);
  XCAM_CHECK(it != vocab.end(), "{}: '{}' is not in the vocabulary ({} tokens{})", what, token, vocab.size(),
             vocab.size() <= 40 ? fmt::format(": {}", fmt::join(vocab, " ")) : std::string());
  return it - vocab.begin();
}

std::vector<c10::IValue> CaptionerPlugin::teacher_inputs(torch::jit::Module& model, const at::Tensor& images,
                                                         const at::Tensor& tokens) const {
  const auto args = model.get_method("forward").function().getSchema().arguments().size();  // with self
  XCAM_CHECK(args == 3 || args == 4,
             "the model's forward takes {} inputs; a captioner takes (images, tokens) or (images, tokens, "
             "detach_state) (plugins/captioner/README.md)",
             args - 1);
  XCAM_CHECK(!opt_.detach_state || args == 4,
             "captioner plugin option detach_state: the model's forward takes (images, tokens) only; export it with "
             "a third input detach_state (plugins/captioner/README.md) or turn the option off");
  std::vector<c10::IValue> in{images, tokens};
  if (args == 4) in.emplace_back(torch::tensor(opt_.detach_state ? 1.0f : 0.0f, images.options()));
  return in;
}

void CaptionerPlugin::prepare(torch::jit::Module& model, Batch& batch) const {
  if (opt_.vocab.empty()) {
    std::lock_guard<std::mutex> lock(model_vocab_.mutex);  // the plugin serves one model
    if (model_vocab_.tokens.empty()) {
      XCAM_CHECK(model.hasattr("vocab") && model.attr("vocab").isList(),
                 "the captioner plugin needs the vocabulary: give the plugin option vocab (a file, one token a line, "
                 "or a list) or save it in the model as a `vocab` attribute (a list of strings)");
      for (const auto& t : model.attr("vocab").toListRef()) model_vocab_.tokens.push_back(t.toStringRef());
      XCAM_CHECK(!model_vocab_.tokens.empty(), "the model's `vocab` attribute is empty");
    }
  }
  // A decoded batch (or a perturbed copy of one) keeps its tokens; before
  // decode(), the start token stands for the caption.
  if (const auto it = batch.extras.find("tokens"); it != batch.extras.end()) {
    batch.inputs = teacher_inputs(model, batch.images, it->second.toTensor());
  } else {
    const int64_t T = opt_.pad_to > 0 ? opt_.pad_to : 1;
    batch.inputs = teacher_inputs(
        model, batch.images,
        at::full({batch.images.size(0), T}, id_of(vocab(), opt_.start, "option start"),
                 at::TensorOptions().dtype(at::kLong).device(batch.images.device())));
  }
}

}  // namespace xcam::captioner

namespace xcam::captioner {

at::Tensor CaptionerPlugin::next_logits(torch::jit::Module& model, const at::Tensor& images,
                                        const at::Tensor& prefix) const {
  const int64_t L = prefix.size(1);
  at::Tensor tokens = prefix;
  if (opt_.pad_to > 0)
    tokens = at::cat({prefix, at::full({prefix.size(0), opt_.pad_to - L}, id_of(vocab(), opt_.pad, "option pad"),
                                       prefix.options())},
                     1);
  const auto logits = model.forward(teacher_inputs(model, images, tokens)).toTensor();
  XCAM_CHECK(logits.dim() == 3 && logits.size(1) == tokens.size(1),
             "the model returns logits {} for {} tokens; a captioner returns B x T x V. A traced model whose decoder "
             "is unrolled takes the token count it was traced with: set the plugin option pad_to",
             c10::str(logits.sizes()), tokens.size(1));
  return logits.select(1, L - 1);
}

// One decoder step through the model's step(): the logits of the next
// token of every row, and `state` advanced.
at::Tensor CaptionerPlugin::model_step(torch::jit::Module& model, const at::Tensor& last,
                                       std::vector<at::Tensor>& state) const {
  std::vector<c10::IValue> in{last};
  for (const auto& t : state) in.emplace_back(t);
  const auto out = model.get_method("step")(in);
  XCAM_CHECK(out.isTuple() && out.toTupleRef().elements().size() == state.size() + 1,
             "the model's step() returns {}; the captioner contract: (logits B x V, the new state: as many tensors as "
             "encode() returned)",
             out.tagKind());
  const auto& el = out.toTupleRef().elements();
  for (size_t k = 0; k < state.size(); ++k) state[k] = el[k + 1].toTensor();
  return el[0].toTensor();
}

// <start> and the first `s` tokens of each row's words: R x (s + 1).
at::Tensor CaptionerPlugin::prefixes(const std::vector<std::vector<int64_t>>& seq, int64_t start, int64_t s) {
  const auto R = static_cast<int64_t>(seq.size());
  auto prefix = at::empty({R, s + 1}, at::kLong);
  auto acc = prefix.accessor<int64_t, 2>();
  for (int64_t r = 0; r < R; ++r) {
    acc[r][0] = start;
    for (int64_t k = 0; k < s; ++k) acc[r][k + 1] = static_cast<size_t>(k) < seq[r].size() ? seq[r][k] : start;
  }
  return prefix;
}

std::vector<std::vector<int64_t>> CaptionerPlugin::beam_search(torch::jit::Module& model,
                                                               const at::Tensor& images) const {
  torch::NoGradGuard no_grad;
  const auto& voc = vocab();
  const int64_t start = id_of(voc, opt_.start, "option start"), end = id_of(voc, opt_.end, "option end");
  const int64_t n = images.size(0), W = opt_.beam, R = n * W;
  const bool methods = model.find_method("encode").has_value() && model.find_method("step").has_value();
  std::vector<at::Tensor> state;  // R rows each: the decoder state of every beam
  at::Tensor rows_images;
  if (methods) {
    const auto enc = model.get_method("encode")({images});
    std::vector<c10::IValue> parts = enc.isTuple() ? enc.toTupleRef().elements().vec() : std::vector<c10::IValue>{enc};
    for (const auto& p : parts) {
      XCAM_CHECK(p.isTensor() && p.toTensor().dim() >= 1 && p.toTensor().size(0) == n,
                 "the model's encode() returns {}; the captioner contract: a tuple of tensors, batch first",
                 p.tagKind());
      state.push_back(p.toTensor().repeat_interleave(W, 0));
    }
  } else {
    rows_images = images.repeat_interleave(W, 0);
  }
  std::vector<std::vector<int64_t>> seq(static_cast<size_t>(R));
  std::vector<double> score(static_cast<size_t>(R), -std::numeric_limits<double>::infinity());
  std::vector<char> alive(static_cast<size_t>(R), 0);
  for (int64_t b = 0; b < n; ++b) {
    score[b * W] = 0;
    alive[b * W] = 1;
  }
  struct Done {
    double score;
    std::vector<int64_t> tokens;
  };
  std::vector<std::vector<Done>> done(static_cast<size_t>(n));
  at::Tensor last = at::full({R}, start, at::kLong);
  for (int64_t s = 0; s < opt_.max_words && std::any_of(alive.begin(), alive.end(), [](char a) { return a; }); ++s) {
    const at::Tensor logits = methods ? model_step(model, last.to(images.device()), state)
                                      : next_logits(model, rows_images, prefixes(seq, start, s).to(images.device()));
    XCAM_CHECK(logits.dim() == 2 && logits.size(1) == static_cast<int64_t>(voc.size()),
               "the model gives {} scores a token; the vocabulary has {} tokens", logits.size(-1), voc.size());
    const auto logp = at::log_softmax(logits, 1).to(at::kCPU, at::kDouble).contiguous();
    const int64_t V = logp.size(1);
    const double* lp = logp.data_ptr<double>();
    std::vector<int64_t> parent(static_cast<size_t>(R));
    std::vector<std::vector<int64_t>> next_seq(static_cast<size_t>(R));
    std::vector<double> next_score(static_cast<size_t>(R), -std::numeric_limits<double>::infinity());
    std::vector<char> next_alive(static_cast<size_t>(R), 0);
    std::vector<int64_t> next_token(static_cast<size_t>(R), start);
    for (int64_t b = 0; b < n; ++b) {
      const int64_t room = W - static_cast<int64_t>(done[b].size());
      std::vector<std::pair<double, int64_t>> cand;  // (score, row * V + token)
      for (int64_t w = 0; w < W; ++w) {
        const int64_t r = b * W + w;
        if (!alive[r]) continue;
        for (int64_t v = 0; v < V; ++v) cand.emplace_back(score[r] + lp[r * V + v], r * V + v);
      }
      const int64_t k = std::min<int64_t>(room, static_cast<int64_t>(cand.size()));
      std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), [](const auto& x, const auto& y) {
        return x.first > y.first || (x.first == y.first && x.second < y.second);
      });
      int64_t slot = 0;
      for (int64_t i = 0; i < k; ++i) {
        const int64_t r = cand[i].second / V, v = cand[i].second % V;
        auto tokens = seq[r];
        tokens.push_back(v);
        if (v == end) {
          done[b].push_back({cand[i].first, std::move(tokens)});
          continue;
        }
        const int64_t to = b * W + slot++;
        parent[to] = r;
        next_seq[to] = std::move(tokens);
        next_score[to] = cand[i].first;
        next_alive[to] = 1;
        next_token[to] = v;
      }
      for (int64_t j = slot; j < W; ++j) parent[b * W + j] = b * W;
    }
    seq = std::move(next_seq);
    score = std::move(next_score);
    alive = std::move(next_alive);
    last = torch::tensor(next_token, at::kLong);
    const auto index = torch::tensor(parent, at::kLong).to(images.device());
    for (auto& t : state) t = t.index_select(0, index);
  }
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(n));
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t w = 0; w < W; ++w)  // the length cap: unfinished beams compete as they are
      if (alive[b * W + w]) done[b].push_back({score[b * W + w], seq[b * W + w]});
    const auto best = std::max_element(done[b].begin(), done[b].end(),
                                       [](const Done& x, const Done& y) { return x.score < y.score; });
    out[b] = best->tokens;
  }
  return out;
}

at::Tensor CaptionerPlugin::generate(torch::jit::Module& model, const Batch& batch) const {
  const auto& voc = vocab();
  const int64_t B = static_cast<int64_t>(batch.samples.size());
  const int64_t start = id_of(voc, opt_.start, "option start"), end = id_of(voc, opt_.end, "option end"),
                pad = id_of(voc, opt_.pad, "option pad");
  std::vector<std::vector<int64_t>> words(static_cast<size_t>(B));  // without <start>
  std::vector<int64_t> to_generate;
  for (int64_t b = 0; b < B; ++b) {
    const Sample& s = batch.samples[b];
    if (s.text.empty()) {
      to_generate.push_back(b);
      continue;
    }
    const bool has_unknown = std::find(voc.begin(), voc.end(), opt_.unknown) != voc.end();
    for (const auto& w : split_words(s.text))
      words[b].push_back(has_unknown && std::find(voc.begin(), voc.end(), w) == voc.end()
                             ? id_of(voc, opt_.unknown, "option unknown")
                             : id_of(voc, w, "sample '" + s.id + "': its caption"));
    XCAM_CHECK(static_cast<int64_t>(words[b].size()) <= opt_.max_words,
               "sample '{}': its caption has {} words; the plugin's length cap is {} (option max_words{})", s.id,
               words[b].size(), opt_.max_words, opt_.pad_to > 0 ? ", and pad_to - 2" : "");
    words[b].push_back(end);
  }
  if (!to_generate.empty()) {
    const auto idx = torch::tensor(to_generate, at::kLong).to(batch.images.device());
    const auto generated = beam_search(model, batch.images.index_select(0, idx));
    for (size_t k = 0; k < to_generate.size(); ++k) words[to_generate[k]] = generated[k];
  }
  int64_t T = 0;
  for (const auto& w : words) T = std::max<int64_t>(T, 1 + static_cast<int64_t>(w.size()));
  if (opt_.pad_to > 0) T = opt_.pad_to;
  auto tokens = at::full({B, T}, pad, at::kLong);
  auto acc = tokens.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    acc[b][0] = start;
    for (size_t k = 0; k < words[b].size(); ++k) acc[b][static_cast<int64_t>(k) + 1] = words[b][k];
  }
  return tokens.to(batch.images.device());
}

void CaptionerPlugin::decode(torch::jit::Module& model, Batch& batch) const {
  if (!batch.extras.count("tokens")) batch.extras["tokens"] = generate(model, batch);
  const auto tokens = batch.extras.at("tokens").toTensor();
  batch.inputs = teacher_inputs(model, batch.images, tokens);
  // A traced forward unrolled for another token count fails inside the
  // model; try each new count once on one row, to say so plainly.
  const int64_t T = tokens.size(1);
  {
    std::lock_guard<std::mutex> lock(model_vocab_.mutex);
    if (model_vocab_.lengths_ok.count(T)) return;
  }
  try {
    torch::NoGradGuard no_grad;
    model.forward(teacher_inputs(model, batch.images.narrow(0, 0, 1), tokens.narrow(0, 0, 1)));
  } catch (const std::exception& e) {
    std::string what = e.what();  // the interpreter's traceback: its last line says what failed
    while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
    what = what.substr(what.rfind('\n') + 1);
    XCAM_THROW("the model's forward fails on a {}-token caption ({}). A traced model whose decoder is unrolled "
               "takes the token count it was traced with: set the plugin option pad_to to it",
               T, what.substr(0, 200));
  }
  std::lock_guard<std::mutex> lock(model_vocab_.mutex);
  model_vocab_.lengths_ok.insert(T);
}

std::vector<std::string> CaptionerPlugin::caption(const Batch& batch, int64_t b) const {
  return caption_of(batch.extras.at("tokens").toTensor()[b].to(at::kCPU).contiguous());
}

std::vector<std::string> CaptionerPlugin::caption_of(const at::Tensor& row) const {
  const auto& voc = vocab();
  const int64_t end = id_of(voc, opt_.end, "option end"), pad = id_of(voc, opt_.pad, "option pad");
  const int64_t* tok = row.data_ptr<int64_t>();
  std::vector<std::string> out;
  for (int64_t k = 1; k < row.size(0); ++k) {
    const int64_t t = tok[k];
    if (t == end || t == pad) break;
    out.push_back(voc.at(static_cast<size_t>(t)));
  }
  return out;
}

void CaptionerPlugin::resolve_targets(const c10::IValue& output, const TargetRequest& request, Batch& batch) const {
  const auto& voc = vocab();
  XCAM_CHECK(output.isTensor() && output.toTensor().dim() == 3,
             "the model returns {}; a captioner returns logits B x T x V (plugins/captioner/README.md)",
             output.isTensor() ? std::to_string(output.toTensor().dim()) + "-d tensor" : output.tagKind());
  const auto logits = output.toTensor();
  const auto tokens = batch.extras.at("tokens").toTensor().to(at::kCPU).contiguous();  // read once
  XCAM_CHECK(logits.size(1) == tokens.size(1),
             "the model returns logits for {} steps of a {}-token sequence. A traced model whose decoder is unrolled "
             "takes the token count it was traced with: set the plugin option pad_to to it",
             logits.size(1), tokens.size(1));
  XCAM_CHECK(logits.size(2) == static_cast<int64_t>(voc.size()),
             "the model gives {} scores a token; the vocabulary has {} tokens: give the model's own vocabulary",
             logits.size(2), voc.size());
  batch.targets.assign(request.per_sample.size(), {});
  for (size_t b = 0; b < request.per_sample.size(); ++b) {
    const Sample& s = batch.samples.at(b);
    const auto words = caption_of(tokens[static_cast<int64_t>(b)]);
    const auto n = static_cast<int64_t>(words.size());
    const std::string text = fmt::format("{}", fmt::join(words, " "));
    XCAM_CHECK(n > 0, "sample '{}': its caption is empty (the model ended at once); there is no word to explain",
               s.id);
    auto word = [&](int64_t k) {
      Target t;
      t.kind = "token";
      t.step = k;
      t.index = tokens.data_ptr<int64_t>()[static_cast<int64_t>(b) * tokens.size(1) + k + 1];
      t.label = words[k];
      t.explains = fmt::format("word {} '{}' of '{}'", k + 1, words[k], text);
      t.payload["request"] = "step:" + std::to_string(k);
      batch.targets[b].push_back(t);
    };
    for (const auto& req : request.per_sample[b]) {
      if (req == "top1" || req == "words" || req == "all") {
        for (int64_t k = 0; k < n; ++k) word(k);
      } else if (req == "first") {
        word(0);
      } else if (has_prefix(req, "step:")) {
        const std::string k = req.substr(5);
        XCAM_CHECK(!k.empty() && k.size() < 9 && std::all_of(k.begin(), k.end(), ::isdigit) && std::stoll(k) < n,
                   "sample '{}': target '{}': its caption '{}' has steps 0 to {}", s.id, req, text, n - 1);
        word(std::stoll(k));
      } else {
        const std::string w = has_prefix(req, "word:") ? req.substr(5) : req;
        const auto it = std::find(words.begin(), words.end(), w);
        XCAM_CHECK(it != words.end(),
                   "sample '{}': target '{}' is not a word of its caption '{}'; ask for words (every word), first, "
                   "step:K or a word of the caption (the keywords task picks the images whose captions have it)",
                   s.id, req, text);
        word(it - words.begin());
      }
    }
  }
}

at::Tensor CaptionerPlugin::score(const c10::IValue& output, const Batch& batch, size_t rank,
                                  std::vector<double>* readable) const {
  const auto logits = output.toTensor();
  const auto B = static_cast<int64_t>(batch.ids.size());
  std::vector<int64_t> steps, tokens;
  for (int64_t b = 0; b < B; ++b) {
    const Target& t = batch.targets.at(b).at(rank);
    steps.push_back(t.step);
    tokens.push_back(t.index);
  }
  const auto dev = logits.device();
  const auto rows = at::arange(B, at::TensorOptions().dtype(at::kLong).device(dev));
  auto at_step = logits.index({rows, torch::tensor(steps, at::kLong).to(dev)});  // B x V
  const auto tok = torch::tensor(tokens, at::kLong).to(dev).unsqueeze(1);
  if (readable) {
    const auto p = at_step.detach().softmax(1).gather(1, tok).squeeze(1).to(at::kCPU, at::kDouble).contiguous();
    readable->assign(p.data_ptr<double>(), p.data_ptr<double>() + B);
  }
  // The log-probability in float64: for a confident word (p near 1) its
  // gradient 1 - p cancels to noise in float32.
  if (opt_.logprob) return at::log_softmax(at_step.to(at::kDouble), 1).gather(1, tok).squeeze(1).to(logits.dtype());
  return at_step.gather(1, tok).squeeze(1);
}

at::Tensor CaptionerPlugin::to_grid(const std::string& layer, const at::Tensor& tapped, const Batch& batch) const {
  XCAM_CHECK(tapped.dim() == 4,
             "layer '{}' gives a {}-d tensor {}; word maps come from the image encoder's feature maps B x K x h x w "
             "(layer type encoder): the pooled features and the LSTM's states have no positions on the image",
             layer, tapped.dim(), c10::str(tapped.sizes()));
  return tapped;
}

std::map<std::string, std::string> CaptionerPlugin::metadata(const c10::IValue& output, const Batch& batch,
                                                             int64_t b) const {
  const auto row = batch.extras.at("tokens").toTensor()[b].to(at::kCPU).contiguous();  // read once
  const auto words = caption_of(row);
  const auto n = static_cast<int64_t>(words.size());
  const bool ended = row.size(0) > n + 1 && row.data_ptr<int64_t>()[n + 1] == id_of(vocab(), opt_.end, "end");
  const bool given = !batch.samples.at(b).text.empty();
  return {{"caption", fmt::format("{}", fmt::join(words, " "))},
          {"words", std::to_string(words.size())},
          {"ended", ended ? "true" : "false"},
          {"decoding", given ? "given" : opt_.beam == 1 ? "greedy" : fmt::format("beam {}", opt_.beam)}};
}

}  // namespace xcam::captioner

XCAM_DEFINE_PLUGIN(xcam::captioner::CaptionerPlugin, "captioner", "0.1.0",
                   "CNN-LSTM captioners: greedy and beam captions, a map per word from one pass; captions and "
                   "keywords tasks")

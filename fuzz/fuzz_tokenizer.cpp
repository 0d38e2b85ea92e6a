// libFuzzer: the tokenizer. An input whose first byte is even is text for
// the zoo's three tokenizers: encoded (refused only for invalid UTF-8), ids
// of the text's tokens inside the vocabulary, offsets inside the text, decoded. An odd first byte
// makes the rest a tokenizer.json: accepted (then it encodes and decodes a
// mixed-script text) or refused with one xcam::Error line.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "xcam/tokenizer.h"

namespace {

const std::vector<xcam::Tokenizer>& zoo() {
  static const std::vector<xcam::Tokenizer> all = [] {
    std::vector<xcam::Tokenizer> v;
    for (const char* name : {"qwen2", "bert", "wordlevel"})
      v.push_back(xcam::Tokenizer::from_file(std::string(XCAM_SOURCE_DIR) + "/zoo/models/tokenizers/" + name +
                                             "/tokenizer.json"));
    return v;
  }();
  return all;
}

void check(const xcam::Tokenizer& tok, std::string_view text) {
  const auto e = tok.encode(text);
  if (e.ids.size() != e.offsets.size() || e.ids.size() != e.tokens.size()) __builtin_trap();
  for (size_t i = 0; i < e.ids.size(); ++i) {
    // the post-processor's ids are the file's to choose; the others come from the vocabulary
    if (!e.special[i] && (e.ids[i] < 0 || e.ids[i] >= tok.vocab_size())) __builtin_trap();
    if (e.offsets[i].first > e.offsets[i].second || e.offsets[i].second > text.size()) __builtin_trap();
  }
  (void)tok.decode(e.ids, false);
  (void)tok.decode(e.ids, true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] % 2 == 0) {
      for (const auto& tok : zoo()) check(tok, rest);
    } else {
      const auto tok = xcam::Tokenizer::from_json(std::string(rest), "fuzz.json");
      check(tok, "Héllo wörld 12 <|im_start|> [CLS] 赤い丸 👩\u200d💻  \t\n");
    }
  } catch (const xcam::Error& e) {
    xcam::fuzz::check_refusal(e);
  }
  return 0;
}

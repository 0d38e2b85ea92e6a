// Whitespace words and a one-token-a-line vocabulary, for the test plugins
// that read text (vlm_plugin.cpp, text_plugin.cpp).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "xcam/error.h"

namespace xcam::test {

// The text lower-cased and split on whitespace.
inline std::vector<std::string> words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) {
    std::transform(w.begin(), w.end(), w.begin(), [](unsigned char c) { return std::tolower(c); });
    out.push_back(w);
  }
  return out;
}

// Token i is line i of the file named by the plugin options' "vocab".
class Vocab {
 public:
  Vocab(const char* options, const char* plugin) {
    const auto o = nlohmann::json::parse(options ? options : "{}", nullptr, false);
    XCAM_CHECK(o.is_object() && o.contains("vocab") && o["vocab"].is_string(),
               "{} test plugin: options need {{\"vocab\": FILE}}, got '{}'", plugin, options ? options : "");
    const auto file = o["vocab"].get<std::string>();
    std::ifstream in(file);
    XCAM_CHECK(in.good(), "{} test plugin: vocabulary '{}' cannot be read", plugin, file);
    for (std::string w; std::getline(in, w);) tokens_.push_back(w);
  }
  int64_t id(const std::string& word, const std::string& sample) const {
    const auto it = std::find(tokens_.begin(), tokens_.end(), word);
    XCAM_CHECK(it != tokens_.end(), "sample '{}': the word '{}' is not in the vocabulary", sample, word);
    return it - tokens_.begin();
  }
  const std::string& word(int64_t id) const { return tokens_.at(static_cast<size_t>(id)); }

 private:
  std::vector<std::string> tokens_;
};

}  // namespace xcam::test

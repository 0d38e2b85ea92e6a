// A self-contained interactive HTML page of one sequence's attention (issue
// 14; docs/attention.md, "The page"): a head view (the tokens twice, lines
// from the hovered token to what it attends to, one colour per head) and a
// model view (every layer x head as a heat map; hover a token to see its
// row in each), layers and heads chosen in the page. Data embedded, no
// network. Plain C++, no LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace xcam {

struct AttentionPage {
  std::string title;
  std::vector<std::string> tokens;         // T tokens as text
  std::vector<bool> special;               // T flags (or empty): drawn greyed
  int64_t heads = 0;
  std::vector<std::vector<float>> layers;  // per layer heads * T * T, [h][query][key], post-softmax
  std::vector<std::vector<std::string>> labels;  // [layer][head] pattern labels (or empty)
};

// The page as one HTML document. Attention values are embedded as one byte
// each, round(255 * sqrt(p)) (small weights keep their resolution; the page
// squares them back). Throws xcam::Error for sizes that do not match.
std::string attention_html(const AttentionPage& page);

}  // namespace xcam

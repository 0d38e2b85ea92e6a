// Attention views as images (issue 14; docs/attention.md, "Views"): every head
// of a layer as a grid of heat maps, one head across the layers, and the
// flow from one token (lines between two token columns). Plain C++ and
// OpenCV on xcam::AttentionPage's data; RGB 8-bit images.
#pragma once

#include <opencv2/core.hpp>

#include <cstdint>
#include <string>

#include "xcam/attention_html.h"

namespace xcam {

// One head's T x T attention (attn: T * T floats, [query][key]) as a heat map:
// cell (i, j) is a cell x cell square at row i (query), column j (key), in
// viridis at index round(255 * sqrt(p_ij)) (the square root keeps weak
// weights visible, as the page does).
cv::Mat render_attention_head(const float* attn, int64_t T, int cell);

// Every head of layer `layer` side by side, titled, each captioned with its
// head index and label. Throws xcam::Error for a layer out of range.
cv::Mat render_layer_heads(const AttentionPage& page, int64_t layer);

// Head `head` in every layer, side by side.
cv::Mat render_head_layers(const AttentionPage& page, int64_t head);

// The flow from token `token` in layer `layer`: the tokens in two columns
// (queries left, keys right), a line from the query `token` to every key j
// per head, in the head's colour (the page's palette), 1 + 4 p pixels wide,
// for p >= min_weight. Geometry: row k's centre at y = 30 + 18 k + 9; the
// left column's text ends at x = 130, lines run from x = 136 to x = 364, the
// right column's text starts at x = 370; the panel is 500 wide and
// 30 + 18 T + 8 high, the layer and token named in its top line.
cv::Mat render_flow_panel(const AttentionPage& page, int64_t layer, int64_t token, double min_weight = 0.02);

// The flow from `token` in every layer, panels side by side under a title.
cv::Mat render_flow(const AttentionPage& page, int64_t token, double min_weight = 0.02);

// The RGB colour of head h in the page and the flow panels.
cv::Scalar head_colour(int64_t h);

}  // namespace xcam

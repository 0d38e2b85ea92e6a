// Attention views as images (xcam/attention_views.h).
#include "xcam/attention_views.h"

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <array>
#include <cmath>

#include "xcam/error.h"
#include "xcam/render.h"

namespace xcam {

namespace {

int64_t tokens_of(const AttentionPage& page) { return static_cast<int64_t>(page.tokens.size()); }

const float* head_data(const AttentionPage& page, int64_t layer, int64_t head) {
  const int64_t T = tokens_of(page);
  XCAM_CHECK(layer >= 0 && layer < static_cast<int64_t>(page.layers.size()),
             "attention view: layer {} is out of range; the model has layers 0 to {}", layer, page.layers.size() - 1);
  XCAM_CHECK(head >= 0 && head < page.heads, "attention view: head {} is out of range; the model has heads 0 to {}",
             head, page.heads - 1);
  const auto& a = page.layers[static_cast<size_t>(layer)];
  XCAM_CHECK(static_cast<int64_t>(a.size()) == page.heads * T * T,
             "attention view: layer {} has {} values, not heads x T x T = {} x {} x {}", layer, a.size(), page.heads,
             T, T);
  return a.data() + head * T * T;
}

std::string label_of(const AttentionPage& page, int64_t layer, int64_t head) {
  if (static_cast<size_t>(layer) < page.labels.size() && static_cast<size_t>(head) < page.labels[layer].size())
    return page.labels[layer][head];
  return "";
}

// Cells of at least 3 px, the map at most ~360 px on a side.
int cell_size(int64_t T) { return static_cast<int>(std::clamp<int64_t>(360 / std::max<int64_t>(T, 1), 3, 24)); }

}  // namespace

cv::Scalar head_colour(int64_t h) {
  // The page's palette (core/src/attention_html.cpp), as RGB.
  static const uint32_t k[] = {0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f,
                               0xbcbd22, 0x17becf, 0x393b79, 0x637939, 0x8c6d31, 0x843c39, 0x7b4173, 0x3182bd};
  const uint32_t c = k[static_cast<size_t>(h) % (sizeof(k) / sizeof(k[0]))];
  return cv::Scalar((c >> 16) & 255, (c >> 8) & 255, c & 255);
}

cv::Mat render_attention_head(const float* attn, int64_t T, int cell) {
  const auto& lut = colormap_lut(Colormap::viridis);
  cv::Mat out(static_cast<int>(T) * cell, static_cast<int>(T) * cell, CV_8UC3);
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j) {
      const double p = std::clamp(double(attn[i * T + j]), 0.0, 1.0);
      const auto at = static_cast<size_t>(std::lround(255.0 * std::sqrt(p))) * 3;
      out(cv::Rect(static_cast<int>(j) * cell, static_cast<int>(i) * cell, cell, cell))
          .setTo(cv::Scalar(lut[at], lut[at + 1], lut[at + 2]));
    }
  return out;
}

namespace {

// Heat maps of (layer, head) pairs side by side, each captioned by `name`
// ("head 2", "layer 1") and its label.
cv::Mat maps_row(const AttentionPage& page, const std::vector<std::array<int64_t, 3>>& which, const std::string& title) {
  const int64_t T = tokens_of(page);
  std::vector<std::string> headers;
  std::vector<cv::Mat> row;
  for (const auto& [layer, head, by_layer] : which) {
    row.push_back(render_attention_head(head_data(page, layer, head), T, cell_size(T)));
    const auto name = by_layer ? fmt::format("layer {}", layer) : fmt::format("head {}", head);
    const auto label = label_of(page, layer, head);
    headers.push_back(label.empty() ? name : fmt::format("{}: {}", name, label));
  }
  return render_grid(fmt::format("{}: {} (queries down, keys across; colour sqrt(p))", page.title, title), headers,
                     {}, {row});
}

}  // namespace

cv::Mat render_layer_heads(const AttentionPage& page, int64_t layer) {
  std::vector<std::array<int64_t, 3>> which;
  for (int64_t h = 0; h < page.heads; ++h) which.push_back({layer, h, 0});
  return maps_row(page, which, fmt::format("layer {}, every head", layer));
}

cv::Mat render_head_layers(const AttentionPage& page, int64_t head) {
  std::vector<std::array<int64_t, 3>> which;
  for (int64_t l = 0; l < static_cast<int64_t>(page.layers.size()); ++l) which.push_back({l, head, 1});
  return maps_row(page, which, fmt::format("head {} in every layer", head));
}

cv::Mat render_flow_panel(const AttentionPage& page, int64_t layer, int64_t token, double min_weight) {
  const int64_t T = tokens_of(page);
  XCAM_CHECK(token >= 0 && token < T, "attention flow: token {} is out of range; the text has tokens 0 to {}", token,
             T - 1);
  (void)head_data(page, layer, 0);  // checks the layer
  const int row = 18, top = 30, x_left = 130, x0 = 136, x1 = 364, x_right = 370;
  cv::Mat out(top + row * static_cast<int>(T) + 8, 500, CV_8UC3, cv::Scalar(255, 255, 255));
  auto y = [&](int64_t k) { return top + row * static_cast<int>(k) + row / 2; };
  cv::putText(out, fmt::format("layer {}: from '{}' (token {})", layer, page.tokens[token], token), cv::Point(6, 18),
              cv::FONT_HERSHEY_SIMPLEX, 0.45, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  cv::rectangle(out, cv::Rect(0, y(token) - row / 2, x_left + 4, row), cv::Scalar(255, 224, 138), cv::FILLED);
  for (int64_t k = 0; k < T; ++k) {
    const auto& t = page.tokens[k];
    const cv::Scalar ink = !page.special.empty() && page.special[k] ? cv::Scalar(128, 128, 128) : cv::Scalar(0, 0, 0);
    int base = 0;
    const auto size = cv::getTextSize(t, cv::FONT_HERSHEY_SIMPLEX, 0.42, 1, &base);
    cv::putText(out, t, cv::Point(x_left - size.width, y(k) + 5), cv::FONT_HERSHEY_SIMPLEX, 0.42, ink, 1, cv::LINE_AA);
    cv::putText(out, t, cv::Point(x_right, y(k) + 5), cv::FONT_HERSHEY_SIMPLEX, 0.42, ink, 1, cv::LINE_AA);
  }
  for (int64_t h = 0; h < page.heads; ++h) {
    const float* a = head_data(page, layer, h) + token * T;
    for (int64_t j = 0; j < T; ++j) {
      if (a[j] < min_weight) continue;
      const int width = 1 + static_cast<int>(std::lround(4.0 * a[j]));
      cv::line(out, cv::Point(x0, y(token)), cv::Point(x1, y(j)), head_colour(h), width, cv::LINE_AA);
    }
  }
  return out;
}

cv::Mat render_flow(const AttentionPage& page, int64_t token, double min_weight) {
  std::vector<cv::Mat> row;
  std::vector<std::string> cols;
  for (int64_t l = 0; l < static_cast<int64_t>(page.layers.size()); ++l) {
    row.push_back(render_flow_panel(page, l, token, min_weight));
    cols.emplace_back();  // each panel names its layer
  }
  cv::Mat grid = render_grid(fmt::format("{}: attention from token {} '{}' in every layer (a colour per head; lines "
                                         "for p >= {})",
                                         page.title, token, page.tokens.at(static_cast<size_t>(token)), min_weight),
                             cols, {}, {row}, row.front().rows);
  // A colour key under the panels.
  cv::Mat key(24, grid.cols, CV_8UC3, cv::Scalar(255, 255, 255));
  for (int64_t h = 0; h < page.heads; ++h) {
    const int x = 8 + static_cast<int>(h) * 80;
    if (x + 70 > key.cols) break;
    cv::rectangle(key, cv::Rect(x, 6, 12, 12), head_colour(h), cv::FILLED);
    cv::putText(key, fmt::format("head {}", h), cv::Point(x + 16, 17), cv::FONT_HERSHEY_SIMPLEX, 0.42,
                cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  }
  cv::Mat out;
  cv::vconcat(grid, key, out);
  return out;
}

}  // namespace xcam

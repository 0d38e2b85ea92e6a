// The traced VLM's inputs, as zoo/vlm_model.py's reference functions compute
// them (resized_size, image_to_patches, build_prompt_ids, rope_position_ids,
// vision_rotary, cu_seqlens); tests/plugins/test_vlm.cpp checks them against
// zoo/models/vlm/reference_inputs.json.
#include <algorithm>
#include <cmath>

#include "vlm.h"
#include "xcam/error.h"
#include "xcam/tokenizer.h"

namespace xcam::vlm {

std::array<int64_t, 2> resized_size(int64_t height, int64_t width, const Geometry& g) {
  const int64_t factor = g.patch * g.merge;
  XCAM_CHECK(height >= factor && width >= factor &&
                 double(std::max(height, width)) / double(std::min(height, width)) <= 200.0,
             "a {} x {} image cannot be resized for this VLM: each side must be at least {} pixels (patch {} x "
             "merge {}) and the aspect ratio at most 200",
             height, width, factor, g.patch, g.merge);
  const auto f = double(factor);
  auto h = static_cast<int64_t>(std::nearbyint(double(height) / f)) * factor;
  auto w = static_cast<int64_t>(std::nearbyint(double(width) / f)) * factor;
  if (h * w > g.max_pixels) {
    const double beta = std::sqrt(double(height) * double(width) / double(g.max_pixels));
    h = static_cast<int64_t>(std::floor(double(height) / beta / f)) * factor;
    w = static_cast<int64_t>(std::floor(double(width) / beta / f)) * factor;
  } else if (h * w < g.min_pixels) {
    const double beta = std::sqrt(double(g.min_pixels) / (double(height) * double(width)));
    h = static_cast<int64_t>(std::ceil(double(height) * beta / f)) * factor;
    w = static_cast<int64_t>(std::ceil(double(width) * beta / f)) * factor;
  }
  return {h, w};
}

at::Tensor image_to_patches(const at::Tensor& image, const Geometry& g) {
  const int64_t p = g.patch, m = g.merge, tp = g.temporal, h = image.size(1), w = image.size(2);
  XCAM_CHECK(image.dim() == 3 && image.size(0) == 3 && h % (p * m) == 0 && w % (p * m) == 0,
             "the vlm plugin takes images whose sides are multiples of {} (patch {} x merge {}), got {}; leave the "
             "input size to the plugin (no --size / preprocess.size) or give multiples of {}",
             p * m, p, m, c10::str(image.sizes()), p * m);
  const int64_t gh = h / p, gw = w / p;
  const auto frames = image.unsqueeze(0).expand({tp, 3, h, w});  // the image as tp equal frames
  return frames.reshape({1, tp, 3, gh / m, m, p, gw / m, m, p})
      .permute({0, 3, 6, 4, 7, 2, 1, 5, 8})  // t, bh, bw, mh, mw, c, frame, y, x
      .reshape({gh * gw, 3 * tp * p * p})
      .contiguous();
}

std::vector<int64_t> prompt_ids(const Tokenizer& tok, int64_t image_tokens, const std::string& question) {
  const std::string text =
      tok.chat_prompt({{"user", {ChatPart::of_image(image_tokens), ChatPart::of_text(question)}}}, true);
  return tok.ids(text, /*add_special_tokens=*/false);
}

std::vector<int64_t> rope_position_ids(const std::vector<int64_t>& ids, int64_t gh, int64_t gw, const Geometry& g) {
  const auto T = static_cast<int64_t>(ids.size());
  std::vector<int64_t> pos(static_cast<size_t>(3 * T));
  auto at = [&](int64_t axis, int64_t i) -> int64_t& { return pos[static_cast<size_t>(axis * T + i)]; };
  const auto first = std::find(ids.begin(), ids.end(), g.image_token);
  if (first == ids.end()) {
    for (int64_t i = 0; i < T; ++i) at(0, i) = at(1, i) = at(2, i) = i;
    return pos;
  }
  const int64_t s = first - ids.begin(), lh = gh / g.merge, lw = gw / g.merge, n = lh * lw;
  XCAM_CHECK(s + n <= T && std::all_of(first, first + n, [&](int64_t t) { return t == g.image_token; }),
             "the prompt must hold {} consecutive image tokens (a {} x {} grid)", n, gh, gw);
  for (int64_t i = 0; i < s; ++i) at(0, i) = at(1, i) = at(2, i) = i;
  for (int64_t r = 0; r < lh; ++r)
    for (int64_t c = 0; c < lw; ++c) {
      const int64_t i = s + r * lw + c;
      at(0, i) = s;  // one frame
      at(1, i) = s + r;
      at(2, i) = s + c;
    }
  const int64_t next = s + std::max({int64_t{0}, lh - 1, lw - 1}) + 1;
  for (int64_t i = s + n; i < T; ++i) at(0, i) = at(1, i) = at(2, i) = next + (i - s - n);
  return pos;
}

at::Tensor vision_rotary(int64_t gh, int64_t gw, const Geometry& g) {
  // As transformers computes it (float32 throughout), so the angles are the same bits.
  const int64_t d = g.vision_head_dim / 2;
  const auto inv_freq = 1.0 / at::pow(g.vision_theta, at::arange(0, d, 2, at::kFloat) / double(d));
  const auto table = at::outer(at::arange(std::max(gh, gw), at::kFloat), inv_freq);
  const int64_t m = g.merge;
  std::vector<int64_t> rows, cols;
  for (int64_t bh = 0; bh < gh / m; ++bh)
    for (int64_t bw = 0; bw < gw / m; ++bw)
      for (int64_t mh = 0; mh < m; ++mh)
        for (int64_t mw = 0; mw < m; ++mw) {
          rows.push_back(bh * m + mh);
          cols.push_back(bw * m + mw);
        }
  return at::cat({table.index_select(0, torch::tensor(rows, at::kLong)),
                  table.index_select(0, torch::tensor(cols, at::kLong))},
                 1);
}

at::Tensor cu_seqlens(int64_t gh, int64_t gw) { return torch::tensor(std::vector<int64_t>{0, gh * gw}, at::kLong); }

std::array<at::Tensor, 2> window_inputs(int64_t gh, int64_t gw, const Geometry& g) {
  const int64_t lh = gh / g.merge, lw = gw / g.merge, ws = g.window_size / g.merge / g.patch;
  XCAM_CHECK(ws > 0, "the model's window_size {} is smaller than patch x merge ({} x {})", g.window_size, g.patch,
             g.merge);
  std::vector<int64_t> order, cu{0};
  for (int64_t wr = 0; wr < lh; wr += ws)
    for (int64_t wc = 0; wc < lw; wc += ws) {
      for (int64_t r = wr; r < std::min(wr + ws, lh); ++r)
        for (int64_t c = wc; c < std::min(wc + ws, lw); ++c) order.push_back(r * lw + c);
      cu.push_back(static_cast<int64_t>(order.size()) * g.merge * g.merge);
    }
  const auto windows = static_cast<int64_t>(cu.size()) - 1;
  XCAM_CHECK(windows <= g.max_windows,
             "an image of {} x {} patches has {} attention windows; the export takes at most {} (its max_windows): "
             "re-export it with zoo/vlm_model.py --max-windows {} or lower the model's max_pixels",
             gh, gw, windows, g.max_windows, windows);
  cu.resize(static_cast<size_t>(g.max_windows + 1), cu.back());
  return {torch::tensor(order, at::kLong), torch::tensor(cu, at::kLong)};
}

at::Tensor from_window_order(const at::Tensor& rows, const at::Tensor& window_index) {
  const int64_t n = window_index.size(0);
  XCAM_CHECK(rows.size(0) % n == 0, "{} rows are not groups of the {} merged tokens", rows.size(0), n);
  const auto grouped = rows.reshape({n, rows.size(0) / n, rows.size(-1)});
  return at::empty_like(grouped).index_copy_(0, window_index.to(rows.device()), grouped).reshape(rows.sizes());
}

std::vector<int64_t> vision_token_rows(int64_t gh, int64_t gw, const Geometry& g) {
  const int64_t m = g.merge, lw = gw / m;
  std::vector<int64_t> slot(static_cast<size_t>(gh / m * lw));  // merged token -> its group's place in the rows
  for (size_t t = 0; t < slot.size(); ++t) slot[t] = static_cast<int64_t>(t);
  if (g.max_windows > 0) {
    const auto order = window_inputs(gh, gw, g)[0].contiguous();
    for (int64_t k = 0; k < order.numel(); ++k) slot[static_cast<size_t>(order.data_ptr<int64_t>()[k])] = k;
  }
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(gh * gw));
  for (int64_t r = 0; r < gh; ++r)
    for (int64_t c = 0; c < gw; ++c)
      rows.push_back(slot[static_cast<size_t>(r / m * lw + c / m)] * m * m + (r % m) * m + c % m);
  return rows;
}

at::Tensor patches_to_grid(const at::Tensor& tokens, int64_t gh, int64_t gw, int64_t merge) {
  const int64_t C = tokens.size(-1);
  return tokens.reshape({gh / merge, gw / merge, merge, merge, C})
      .permute({0, 2, 1, 3, 4})  // bh, mh, bw, mw: rows bh*m + mh, columns bw*m + mw
      .reshape({gh, gw, C})
      .permute({2, 0, 1})
      .unsqueeze(0);
}

}  // namespace xcam::vlm

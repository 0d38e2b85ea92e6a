// Views: transformed copies of the input and their maps put back (views.h).
#include "views.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "xcam/error.h"

namespace xcam::views {

ViewSet identity() { return {{View{}}, 0, false}; }

ViewSet augmentations() {
  // ttach's Compose([HorizontalFlip(), Multiply([0.9, 1, 1.1])]) in its
  // iteration order; targets are resolved on the un-augmented copy.
  ViewSet s;
  for (bool flip : {false, true})
    for (double factor : {0.9, 1.0, 1.1}) {
      View v;
      v.flip = flip;
      v.factor = factor;
      s.views.push_back(v);
    }
  s.reference = 1;
  return s;
}

ViewSet crops(int64_t rows, int64_t cols, double overlap, int64_t H, int64_t W) {
  XCAM_CHECK(rows >= 1 && cols >= 1, "crops: rows and columns must be at least 1, got {} x {}", rows, cols);
  XCAM_CHECK(overlap >= 0 && overlap < 1, "crops: the overlap must be in [0, 1), got {}", overlap);
  ViewSet s;
  View whole;
  whole.adds_map = false;
  s.views.push_back(whole);
  s.reference = 0;
  s.renormalise = true;
  // n crops of size c with overlap o*c cover L: n c - (n - 1) o c = L.
  auto size = [&](int64_t n, int64_t L) {
    return std::min(L, static_cast<int64_t>(std::ceil(double(L) / (double(n) - double(n - 1) * overlap))));
  };
  const int64_t ch = size(rows, H), cw = size(cols, W);
  XCAM_CHECK(ch >= 2 && cw >= 2, "crops: {} x {} crops of a {} x {} input are too small", rows, cols, H, W);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      View v;
      v.height = ch;
      v.width = cw;
      v.y0 = rows == 1 ? 0 : static_cast<int64_t>(std::llround(double(r) * double(H - ch) / double(rows - 1)));
      v.x0 = cols == 1 ? 0 : static_cast<int64_t>(std::llround(double(c) * double(W - cw) / double(cols - 1)));
      s.views.push_back(v);
    }
  return s;
}

namespace {

bool is_crop(const View& v, int64_t H, int64_t W) {
  return v.width > 0 && (v.width != W || v.height != H || v.x0 != 0 || v.y0 != 0);
}

}  // namespace

at::Tensor apply(const ViewSet& set, const at::Tensor& images) {
  const int64_t H = images.size(2), W = images.size(3);
  std::vector<at::Tensor> x;
  for (const auto& v : set.views) {
    at::Tensor xi = v.flip ? images.flip({3}) : images;
    if (v.factor != 1.0) xi = xi * v.factor;
    if (is_crop(v, H, W))
      xi = at::upsample_bilinear2d(xi.narrow(2, v.y0, v.height).narrow(3, v.x0, v.width), {H, W}, false);
    x.push_back(xi);
  }
  return x.size() == 1 ? x[0] : at::cat(x, 0);
}

at::Tensor combine(const ViewSet& set, const at::Tensor& maps, int64_t B) {
  const int64_t V = static_cast<int64_t>(set.views.size()), H = maps.size(1), W = maps.size(2);
  if (V == 1) return maps;
  const auto per_view = maps.view({V, B, H, W});
  auto sum = at::zeros({B, H, W}, maps.options());
  auto cover = at::zeros({1, H, W}, maps.options());
  for (int64_t v = 0; v < V; ++v) {
    const View& view = set.views[v];
    if (!view.adds_map) continue;
    at::Tensor m = view.flip ? per_view[v].flip({2}) : per_view[v];
    if (is_crop(view, H, W)) {
      m = at::upsample_bilinear2d(m.unsqueeze(1), {view.height, view.width}, false).squeeze(1);
      sum.narrow(1, view.y0, view.height).narrow(2, view.x0, view.width).add_(m);
      cover.narrow(1, view.y0, view.height).narrow(2, view.x0, view.width).add_(1.0);
    } else {
      sum += m;
      cover += 1.0;
    }
  }
  auto out = sum / cover.clamp_min(1.0);
  if (set.renormalise) {
    const auto flat = out.view({B, H * W});
    const auto lo = std::get<0>(flat.min(1, true)), hi = std::get<0>(flat.max(1, true));
    out = ((flat - lo) / (hi - lo + 1e-7)).view({B, H, W});
  }
  return out;
}

}  // namespace xcam::views

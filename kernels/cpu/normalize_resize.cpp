// CPU normalisation, resize and layer aggregation: the reference twins of
// cuda/normalize_resize.cu.
#include "xcam/kernels/normalize_resize.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "xcam/kernels/cam_math.h"

namespace xcam::kernels {

void minmax_normalize_cpu(float* x, int64_t batch, int64_t n, uint8_t* status) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    float* v = x + b * n;
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    bool finite = true;
    for (int64_t i = 0; i < n; ++i) {
      finite = finite && std::isfinite(v[i]);
      lo = std::min(lo, v[i]);
      hi = std::max(hi, v[i]);
    }
    uint8_t st = kCamOk;
    if (!finite) {
      std::fill(v, v + n, 0.f);
      st = kCamNonFinite;
    } else {
      if (hi - lo <= 0.f) st = kCamConstant;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) v[i] = minmax_scale(v[i], lo, hi);
    }
    if (status != nullptr) status[b] = st;
  }
}

namespace {
std::vector<Tap1D> axis_taps(int64_t in, int64_t out, bool align_corners) {
  std::vector<Tap1D> taps(static_cast<size_t>(out));
  for (int64_t i = 0; i < out; ++i) taps[i] = bilinear_tap(i, in, out, align_corners);
  return taps;
}
}  // namespace

void resize_bilinear_cpu(const float* in, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h,
                         int64_t out_w, bool align_corners) {
  const auto ty = axis_taps(h, out_h, align_corners);
  const auto tx = axis_taps(w, out_w, align_corners);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t y = 0; y < out_h; ++y) {
      const float* plane = in + b * h * w;
      float* row = out + (b * out_h + y) * out_w;
      for (int64_t x = 0; x < out_w; ++x) row[x] = bilinear_at(plane, w, ty[y], tx[x]);
    }
  }
}

void normalize_resize_cpu(float* cam, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h,
                          int64_t out_w, uint8_t* status) {
  minmax_normalize_cpu(cam, batch, h * w, status);
  resize_bilinear_cpu(cam, batch, h, w, out, out_h, out_w, /*align_corners=*/false);
}

void aggregate_layers_cpu(const float* const* maps, const int64_t* hs, const int64_t* ws, int64_t layers,
                          int64_t batch, int64_t out_h, int64_t out_w, float* out, uint8_t* status) {
  std::vector<std::vector<Tap1D>> ty(layers), tx(layers);
  for (int64_t l = 0; l < layers; ++l) {
    ty[l] = axis_taps(hs[l], out_h, false);
    tx[l] = axis_taps(ws[l], out_w, false);
  }
  const float inv = 1.f / static_cast<float>(layers);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t y = 0; y < out_h; ++y) {
      float* row = out + (b * out_h + y) * out_w;
      for (int64_t x = 0; x < out_w; ++x) {
        float sum = 0.f;
        for (int64_t l = 0; l < layers; ++l)
          sum += relu_keep_nan(bilinear_at(maps[l] + b * hs[l] * ws[l], ws[l], ty[l][y], tx[l][x]));
        row[x] = sum * inv;
      }
    }
  }
  minmax_normalize_cpu(out, batch, out_h * out_w, status);
}

}  // namespace xcam::kernels

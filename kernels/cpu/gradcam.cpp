// CPU Grad-CAM: the reference twin of cuda/gradcam.cu.
#include "xcam/kernels/gradcam.h"

#include <cmath>
#include <vector>

#include "dtype.h"
#include "xcam/kernels/cam_math.h"
#include "xcam/kernels/normalize_resize.h"

namespace xcam::kernels {

void gradcam_cpu(const void* activations, const void* gradients, DType dtype, CamShape s, int64_t out_h,
                 int64_t out_w, float* lowres, float* out, uint8_t* status) {
  std::vector<float> storage;
  float* cam = lowres;
  if (cam == nullptr) {
    storage.resize(static_cast<size_t>(s.batch * s.height * s.width));
    cam = storage.data();
  }
  const int64_t K = s.channels, hw = s.height * s.width;
  detail::with_dtype(dtype, activations, gradients, [&](auto A, auto G) {
    // One pass: per channel, pool g_k, then accumulate w_k * A_k.
    const auto finite = detail::channel_sum(s.batch, K, hw, cam, [&](int64_t b, int64_t k, float* acc) {
      const auto* g = G + (b * K + k) * hw;
      const auto* a = A + (b * K + k) * hw;
      const float wk = detail::gradient_mean(g, hw);  // w_k = mean_s g_k
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) acc[i] += wk * to_float(a[i]);
      return std::isfinite(wk);
    });
    for (int64_t b = 0; b < s.batch; ++b) {
      float* dst = cam + b * hw;
      bool bad = !finite[b];
      for (int64_t i = 0; i < hw && !bad; ++i) bad = !std::isfinite(dst[i]);  // relu would hide -Inf
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) dst[i] = relu(dst[i]);
      if (bad) dst[0] = NAN;  // the normaliser zeroes the map and flags it
    }
  });
  normalize_resize_cpu(cam, s.batch, s.height, s.width, out, out_h, out_w, status);
}

}  // namespace xcam::kernels

// CPU Score-CAM masks: the reference twin of cuda/scorecam.cu.
#include "xcam/kernels/scorecam.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "dtype.h"
#include "xcam/kernels/cam_math.h"

namespace xcam::kernels {

void scorecam_masks_cpu(const void* activations, DType dtype, int64_t channels, int64_t h, int64_t w, int64_t k0,
                        int64_t k1, const float* input, int64_t in_channels, int64_t out_h, int64_t out_w,
                        float* out) {
  (void)channels;
  const int64_t hw = h * w, HW = out_h * out_w;
  std::vector<Tap1D> ty(static_cast<size_t>(out_h)), tx(static_cast<size_t>(out_w));
  for (int64_t y = 0; y < out_h; ++y) ty[y] = bilinear_tap(y, h, out_h, /*align_corners=*/true);
  for (int64_t x = 0; x < out_w; ++x) tx[x] = bilinear_tap(x, w, out_w, /*align_corners=*/true);
  detail::with_dtype(dtype, activations, activations, [&](auto A, auto) {
#pragma omp parallel for schedule(dynamic)
    for (int64_t k = k0; k < k1; ++k) {
      std::vector<float> plane(static_cast<size_t>(hw));
      for (int64_t i = 0; i < hw; ++i) plane[i] = to_float(A[k * hw + i]);
      // The upsampled mask goes into the first input channel's slot, then is
      // normalised and applied to every channel.
      float* dst = out + (k - k0) * in_channels * HW;
      float lo = std::numeric_limits<float>::infinity(), hi = -lo;
      for (int64_t y = 0; y < out_h; ++y)
        for (int64_t x = 0; x < out_w; ++x) {
          const float v = bilinear_at(plane.data(), w, ty[y], tx[x]);
          dst[y * out_w + x] = v;
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
      const float inv = mask_inv_range(lo, hi);
      for (int64_t c = in_channels - 1; c >= 0; --c) {
        float* o = dst + c * HW;
        const float* in = input + c * HW;
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i) o[i] = in[i] * mask_scale(dst[i], lo, inv);
      }
    }
  });
}

}  // namespace xcam::kernels

// CPU Grad-CAM: the reference twin of cuda/gradcam.cu.
#include "xcam/kernels/gradcam.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "xcam/kernels/cam_math.h"
#include "xcam/kernels/normalize_resize.h"

namespace xcam::kernels {

void gradcam_cpu(const float* activations, const float* gradients, CamShape s, int64_t out_h, int64_t out_w,
                 float* lowres, float* out, uint8_t* status) {
  const int64_t B = s.batch, K = s.channels, hw = s.height * s.width;
  // Split channels into chunks so that a batch of one still uses every thread;
  // each (sample, chunk) accumulates into its own h x w plane.
  const int64_t threads = std::max(1, omp_get_max_threads());
  const int64_t chunks = std::min<int64_t>(K, std::max<int64_t>(1, (threads + B - 1) / B));
  const int64_t per_chunk = (K + chunks - 1) / chunks;
  std::vector<float> partial(static_cast<size_t>(B * chunks * hw));
  std::vector<uint8_t> bad(static_cast<size_t>(B * chunks), 0);
  const float inv_hw = 1.f / static_cast<float>(hw);

#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < B * chunks; ++item) {
    const int64_t b = item / chunks, c = item % chunks;
    const int64_t k0 = c * per_chunk, k1 = std::min(K, k0 + per_chunk);
    float* acc = partial.data() + item * hw;
    std::fill(acc, acc + hw, 0.f);
    bool finite = true;
    for (int64_t k = k0; k < k1; ++k) {
      const float* g = gradients + (b * K + k) * hw;
      const float* a = activations + (b * K + k) * hw;
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < hw; ++i) sum += g[i];
      const float wk = sum * inv_hw;  // w_k = mean_s g_k
      finite = finite && std::isfinite(wk);
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) acc[i] += wk * a[i];
    }
    bad[item] = !finite;
  }

  // Reduce the chunks into the low-resolution map, then relu + normalise.
  std::vector<float> cam_storage;
  float* cam = lowres;
  if (cam == nullptr) {
    cam_storage.resize(static_cast<size_t>(B * hw));
    cam = cam_storage.data();
  }
  for (int64_t b = 0; b < B; ++b) {
    float* dst = cam + b * hw;
    const float* src = partial.data() + b * chunks * hw;
    std::copy(src, src + hw, dst);
    bool any_bad = bad[b * chunks];
    for (int64_t c = 1; c < chunks; ++c) {
      const float* p = src + c * hw;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) dst[i] += p[i];
      any_bad = any_bad || bad[b * chunks + c];
    }
    // relu() would turn -Inf into 0: look for non-finite values before it.
    for (int64_t i = 0; i < hw && !any_bad; ++i) any_bad = !std::isfinite(dst[i]);
#pragma omp simd
    for (int64_t i = 0; i < hw; ++i) dst[i] = relu(dst[i]);
    if (any_bad) dst[0] = NAN;  // the normaliser zeroes the map and flags it
  }
  minmax_normalize_cpu(cam, B, hw, status);
  resize_bilinear_cpu(cam, B, s.height, s.width, out, out_h, out_w, /*align_corners=*/false);
}

}  // namespace xcam::kernels

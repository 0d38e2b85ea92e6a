// CPU weighted channel sum + ReLU: the reference twin of cuda/weighted_sum.cu.
#include "xcam/kernels/weighted_sum.h"

#include "dtype.h"
#include "xcam/kernels/cam_math.h"

namespace xcam::kernels {

void weighted_sum_relu_cpu(const void* activations, DType dtype, CamShape s, const float* weights, float* cam) {
  const int64_t K = s.channels, hw = s.height * s.width;
  detail::with_dtype(dtype, activations, activations, [&](auto A, auto) {
    detail::channel_sum(s.batch, K, hw, cam, [&](int64_t b, int64_t k, float* acc) {
      const auto* a = A + (b * K + k) * hw;
      const float wk = weights[b * K + k];
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) acc[i] += wk * to_float(a[i]);
      return true;
    });
  });
  const int64_t n = s.batch * hw;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) cam[i] = relu_keep_nan(cam[i]);
}

}  // namespace xcam::kernels

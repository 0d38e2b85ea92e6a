// CPU channel weights (Grad-CAM, Grad-CAM++, XGradCAM): the reference twin
// of cuda/pool.cu. One pass over g (and A) per channel.
#include "xcam/kernels/pool.h"

#include "dtype.h"
#include "xcam/kernels/cam_math.h"

namespace xcam::kernels {

namespace {
template <typename T>
void weights_impl(const T* activations, const T* gradients, CamShape s, WeightMethod m, float* weights) {
  const int64_t BK = s.batch * s.channels, hw = s.height * s.width;
#pragma omp parallel for schedule(static)
  for (int64_t bk = 0; bk < BK; ++bk) {
    const T* g = gradients + bk * hw;
    if (m == WeightMethod::gradcam) {
      weights[bk] = detail::gradient_mean(g, hw);
      continue;
    }
    const T* a = activations + bk * hw;
    float sum_a = 0.f, sum_ga = 0.f;
#pragma omp simd reduction(+ : sum_a, sum_ga)
    for (int64_t i = 0; i < hw; ++i) {
      const float av = to_float(a[i]);
      sum_a += av;
      sum_ga += to_float(g[i]) * av;
    }
    if (m == WeightMethod::xgradcam) {
      weights[bk] = xgradcam_weight(sum_ga, sum_a);
      continue;
    }
    float w = 0.f;  // gradcam++: needs sum_s A first, so g is read in a second loop over cached lines
#pragma omp simd reduction(+ : w)
    for (int64_t i = 0; i < hw; ++i) w += gradcampp_term(to_float(g[i]), sum_a);
    weights[bk] = w;
  }
}
}  // namespace

void channel_weights_cpu(const void* activations, const void* gradients, DType dtype, CamShape shape,
                         WeightMethod method, float* weights) {
  detail::with_dtype(dtype, activations, gradients,
                     [&](auto a, auto g) { weights_impl(a, g, shape, method, weights); });
}

}  // namespace xcam::kernels

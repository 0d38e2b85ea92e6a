// CPU element-wise maps (LayerCAM, HiResCAM, Grad-CAM element-wise): the
// reference twin of cuda/elementwise.cu.
#include "xcam/kernels/elementwise.h"

#include "dtype.h"
#include "xcam/kernels/cam_math.h"

namespace xcam::kernels {

namespace {
template <ElementwiseMethod M, typename T>
void elementwise_impl(const T* A, const T* G, CamShape s, float* cam) {
  const int64_t K = s.channels, hw = s.height * s.width;
  detail::channel_sum(s.batch, K, hw, cam, [&](int64_t b, int64_t k, float* acc) {
    const T* a = A + (b * K + k) * hw;
    const T* g = G + (b * K + k) * hw;
#pragma omp simd
    for (int64_t i = 0; i < hw; ++i) acc[i] += elementwise_term<M>(to_float(g[i]), to_float(a[i]));
    return true;
  });
  const int64_t n = s.batch * hw;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) cam[i] = relu_keep_nan(cam[i]);
}
}  // namespace

void elementwise_cam_cpu(const void* activations, const void* gradients, DType dtype, CamShape shape,
                         ElementwiseMethod method, float* cam) {
  detail::with_dtype(dtype, activations, gradients, [&](auto a, auto g) {
    switch (method) {
      case ElementwiseMethod::layercam: elementwise_impl<ElementwiseMethod::layercam>(a, g, shape, cam); break;
      case ElementwiseMethod::hirescam: elementwise_impl<ElementwiseMethod::hirescam>(a, g, shape, cam); break;
      case ElementwiseMethod::gradcam_elementwise:
        elementwise_impl<ElementwiseMethod::gradcam_elementwise>(a, g, shape, cam);
        break;
    }
  });
}

}  // namespace xcam::kernels

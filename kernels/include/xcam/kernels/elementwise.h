// Maps computed element-wise from activations and gradients, summed over
// channels, then ReLU (SPEC section 2). NaN is kept for the normaliser.
#pragma once

#include <cstdint>

#include "xcam/kernels/cam_math.h"
#include "xcam/kernels/types.h"

namespace xcam::kernels {

enum class ElementwiseMethod : uint8_t {
  layercam,             // sum_k relu(g) * A
  hirescam,             // sum_k g * A
  gradcam_elementwise,  // sum_k relu(g * A)
};

// The per-element term of each method, shared by the CPU and CUDA twins.
template <ElementwiseMethod M>
XCAM_HD float elementwise_term(float g, float a) {
  if constexpr (M == ElementwiseMethod::layercam) {
    return relu_keep_nan(g) * a;  // NaN / -Inf gradients must reach the normaliser
  } else if constexpr (M == ElementwiseMethod::hirescam) {
    return g * a;
  } else {
    return relu_keep_nan(g * a);
  }
}

// activations, gradients: B x K x h x w; cam: B x h x w float32.
void elementwise_cam_cpu(const void* activations, const void* gradients, DType dtype, CamShape shape,
                         ElementwiseMethod method, float* cam);
void elementwise_cam_cuda(const void* activations, const void* gradients, DType dtype, CamShape shape,
                          ElementwiseMethod method, float* cam, const CudaContext& ctx);

}  // namespace xcam::kernels

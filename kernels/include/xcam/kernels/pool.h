// Channel weights from one pass over the gradients (and activations, for the
// methods that need them): spatial pooling for Grad-CAM, the Grad-CAM++ and
// XGradCAM weights of SPEC section 2.
#pragma once

#include <cstdint>

#include "xcam/kernels/types.h"

namespace xcam::kernels {

enum class WeightMethod : uint8_t {
  gradcam,    // w_k = mean_s g_k                (activations unused, may be null)
  gradcampp,  // w_k = sum_s relu(g) a, a = g^2 / (2 g^2 + (sum_s A) g^3 + 1e-6)
  xgradcam,   // w_k = sum_s (g A) / (sum_s A + 1e-7)
};

// activations, gradients: B x K x h x w; weights: B x K float32.
void channel_weights_cpu(const void* activations, const void* gradients, DType dtype, CamShape shape,
                         WeightMethod method, float* weights);
void channel_weights_cuda(const void* activations, const void* gradients, DType dtype, CamShape shape,
                          WeightMethod method, float* weights, const CudaContext& ctx);

}  // namespace xcam::kernels

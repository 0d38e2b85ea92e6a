// cam = relu(sum_k w_k A_k): B x K x h x w activations and B x K weights
// to a B x h x w map (SPEC section 2). NaN is kept (not masked by the ReLU)
// so that the normaliser reports it.
#pragma once

#include <cstdint>

#include "xcam/kernels/types.h"

namespace xcam::kernels {

void weighted_sum_relu_cpu(const void* activations, DType dtype, CamShape shape, const float* weights, float* cam);
void weighted_sum_relu_cuda(const void* activations, DType dtype, CamShape shape, const float* weights, float* cam,
                            const CudaContext& ctx);

}  // namespace xcam::kernels

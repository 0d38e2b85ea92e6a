// CUDA weighted channel sum + ReLU: the twin of cpu/weighted_sum.cpp.
#include "common.cuh"
#include "reduce.cuh"
#include "xcam/kernels/weighted_sum.h"

namespace xcam::kernels {

void weighted_sum_relu_cuda(const void* activations, DType dtype, CamShape shape, const float* weights, float* cam,
                            const CudaContext& ctx) {
  using namespace cuda_detail;
  const int64_t hw = shape.height * shape.width;
  with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    channel_sum<Finish::relu_keep_nan>(WeightedTerm<T>{static_cast<const T*>(activations), weights, hw}, shape, cam,
                                       ctx);
  });
}

}  // namespace xcam::kernels

// CUDA Grad-CAM: the twin of cpu/gradcam.cpp. Four launches on ctx.stream,
// no host synchronisation:
//   1. w_k = mean_s g_k           device-wide segmented reduction (B*K segments)
//   2. cam = sum_k w_k A_k        fixed channel chunks (+ a chunk-sum pass when K > 64)
//      then relu; a NaN/Inf sum becomes NaN so the normaliser flags the sample
//   3. per-sample min-max         one block per sample (normalize_resize.cu)
//   4. bilinear resize            half-pixel centres
// lowres holds the map between the steps, so it is required here.
#include <stdexcept>

#include "common.cuh"
#include "reduce.cuh"
#include "xcam/kernels/gradcam.h"
#include "xcam/kernels/normalize_resize.h"

namespace xcam::kernels {

void gradcam_cuda(const void* activations, const void* gradients, DType dtype, CamShape shape, int64_t out_h,
                  int64_t out_w, float* lowres, float* out, uint8_t* status, const CudaContext& ctx) {
  using namespace cuda_detail;
  if (lowres == nullptr)
    throw std::invalid_argument("gradcam_cuda: lowres is required (B x h x w floats of device memory)");
  const int64_t B = shape.batch, K = shape.channels, hw = shape.height * shape.width;
  if (B == 0) return;
  TempBuffer weights(ctx, sizeof(float) * static_cast<size_t>(B * K));
  // w_k = sum * (1 / hw), as gradcam_cpu computes it.
  spatial_mean(gradients, dtype, B * K, hw, MeanScale::multiply_inverse, weights.as<float>(), ctx);
  with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    channel_sum<Finish::relu_flag_nonfinite>(
        WeightedTerm<T>{static_cast<const T*>(activations), weights.as<float>(), hw}, shape, lowres, ctx);
  });
  normalize_resize_cuda(lowres, B, shape.height, shape.width, out, out_h, out_w, status, ctx);
}

}  // namespace xcam::kernels

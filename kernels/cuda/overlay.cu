// CUDA colormap + alpha blend: the twin of cpu/overlay.cpp.
#include "common.cuh"
#include "xcam/kernels/overlay.h"

namespace xcam::kernels {
namespace cuda_detail {
namespace {

constexpr int kLutBytes = 256 * 3;

__global__ void __launch_bounds__(kThreads)
    colormap_overlay_kernel(const float* map, const uint8_t* image, int64_t n, const uint8_t* lut, float image_weight,
                            uint8_t* heat_rgb, uint8_t* out) {
  __shared__ uint8_t table[kLutBytes];
  for (int i = static_cast<int>(threadIdx.x); i < kLutBytes; i += kThreads) table[i] = lut[i];
  __syncthreads();
  for (int64_t p = global_thread(); p < n; p += grid_stride()) {
    const uint8_t* c = table + 3 * colormap_index(map[p]);
#pragma unroll
    for (int ch = 0; ch < 3; ++ch) {
      if (heat_rgb != nullptr) heat_rgb[3 * p + ch] = c[ch];
      out[3 * p + ch] = blend_channel(c[ch], image[3 * p + ch], image_weight);
    }
  }
}

}  // namespace
}  // namespace cuda_detail

void colormap_overlay_cuda(const float* map, const uint8_t* image, int64_t h, int64_t w, const uint8_t* lut,
                           float image_weight, uint8_t* heat_rgb, uint8_t* out, const CudaContext& ctx) {
  using namespace cuda_detail;
  const int64_t n = h * w;
  if (n == 0) return;
  colormap_overlay_kernel<<<grid_for(n), kThreads, 0, stream_of(ctx)>>>(map, image, n, lut, image_weight, heat_rgb,
                                                                        out);
  XCAM_KERNEL_LAUNCH_CHECK();
}

}  // namespace xcam::kernels

// CUDA Score-CAM masks: the twin of cpu/scorecam.cpp. For each channel k in
// [k0, k1): M = bilinear upsample (align_corners=true) of A_k to H x W,
// (lo, hi) = its min and max, out[k - k0, c] = input[c] * (M - lo) / (hi - lo
// + 1e-8). Three launches for the whole range of masks, none per mask:
//   1. (f16/bf16 only) the masks' activation planes to float32
//   2. one block per mask: (lo, hi) over the upsampled map, not materialised
//   3. one thread per (mask, pixel): the mask value again, times each channel
#include <cub/block/block_reduce.cuh>

#include <type_traits>

#include "common.cuh"
#include "xcam/kernels/scorecam.h"

namespace xcam::kernels {
namespace cuda_detail {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads) to_float_kernel(const T* in, int64_t n, float* out) {
  for (int64_t i = global_thread(); i < n; i += grid_stride()) out[i] = to_float(in[i]);
}

// Upsampled mask value at (y, x) of an h x w plane (align_corners=true).
__device__ __forceinline__ float mask_at(const float* plane, int64_t h, int64_t w, int64_t y, int64_t x, int64_t out_h,
                                         int64_t out_w) {
  return bilinear_at(plane, w, bilinear_tap(y, h, out_h, /*align_corners=*/true),
                     bilinear_tap(x, w, out_w, /*align_corners=*/true));
}

constexpr int kStatThreads = 512;

__global__ void __launch_bounds__(kStatThreads)
    mask_range_kernel(const float* planes, int64_t masks, int64_t h, int64_t w, int64_t out_h, int64_t out_w,
                      float2* ranges) {
  using BlockReduce = CUB_NS_QUALIFIER::BlockReduce<float2, kStatThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const int64_t n = out_h * out_w;
  for (int64_t m = blockIdx.x; m < masks; m += gridDim.x) {
    const float* plane = planes + m * h * w;
    float2 lohi = minmax_identity();
    for (int64_t p = threadIdx.x; p < n; p += kStatThreads) {
      const float v = mask_at(plane, h, w, p / out_w, p % out_w, out_h, out_w);
      lohi.x = fminf(lohi.x, v);
      lohi.y = fmaxf(lohi.y, v);
    }
    lohi = BlockReduce(temp).Reduce(lohi, MinMaxOp{});
    if (threadIdx.x == 0) ranges[m] = lohi;
    __syncthreads();  // temp is reused by the next mask
  }
}

__global__ void __launch_bounds__(kThreads)
    apply_masks_kernel(const float* planes, const float2* ranges, int64_t masks, int64_t h, int64_t w,
                       const float* input, int64_t in_channels, int64_t out_h, int64_t out_w, float* out) {
  const int64_t n = out_h * out_w;
  for (int64_t m = blockIdx.y; m < masks; m += gridDim.y) {
    const float2 r = ranges[m];
    const float inv = mask_inv_range(r.x, r.y);
    const float* plane = planes + m * h * w;
    float* dst_mask = out + m * in_channels * n;
    for (int64_t p = global_thread(); p < n; p += grid_stride()) {
      const float scaled = mask_scale(mask_at(plane, h, w, p / out_w, p % out_w, out_h, out_w), r.x, inv);
      const float* src = input + p;
      float* dst = dst_mask + p;
      for (int64_t c = 0; c < in_channels; ++c, src += n, dst += n) *dst = *src * scaled;
    }
  }
}

}  // namespace
}  // namespace cuda_detail

void scorecam_masks_cuda(const void* activations, DType dtype, int64_t channels, int64_t h, int64_t w, int64_t k0,
                         int64_t k1, const float* input, int64_t in_channels, int64_t out_h, int64_t out_w, float* out,
                         const CudaContext& ctx) {
  using namespace cuda_detail;
  (void)channels;
  const int64_t masks = k1 - k0, hw = h * w, n = out_h * out_w;
  if (masks <= 0 || n == 0) return;
  const cudaStream_t stream = stream_of(ctx);

  // The masks' planes as float32: the activations themselves for f32.
  TempBuffer converted(ctx, dtype == DType::f32 ? 0 : sizeof(float) * static_cast<size_t>(masks * hw));
  const float* planes = converted.as<float>();
  with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* first = static_cast<const T*>(activations) + k0 * hw;
    if constexpr (std::is_same_v<T, float>) {
      planes = first;
    } else {
      to_float_kernel<T><<<grid_for(masks * hw), kThreads, 0, stream>>>(first, masks * hw, converted.as<float>());
      XCAM_KERNEL_LAUNCH_CHECK();
    }
  });

  TempBuffer ranges(ctx, sizeof(float2) * static_cast<size_t>(masks));
  const unsigned stat_grid = static_cast<unsigned>(std::min<int64_t>(masks, int64_t{1} << 30));
  mask_range_kernel<<<stat_grid, kStatThreads, 0, stream>>>(planes, masks, h, w, out_h, out_w, ranges.as<float2>());
  XCAM_KERNEL_LAUNCH_CHECK();

  const dim3 grid(grid_for(n), grid_yz(masks));
  apply_masks_kernel<<<grid, kThreads, 0, stream>>>(planes, ranges.as<float2>(), masks, h, w, input, in_channels, out_h,
                                                    out_w, out);
  XCAM_KERNEL_LAUNCH_CHECK();
}

}  // namespace xcam::kernels

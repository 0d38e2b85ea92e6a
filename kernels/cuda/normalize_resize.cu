// CUDA normalisation, resize and layer aggregation: the twins of
// cpu/normalize_resize.cpp.
#include <cub/block/block_reduce.cuh>

#include <algorithm>

#include "common.cuh"
#include "xcam/kernels/normalize_resize.h"

namespace xcam::kernels {
namespace cuda_detail {
namespace {

constexpr int kNormThreads = 512;

// One block per sample: min, max and finiteness in one pass (one block-wide
// reduction of (min, max) pairs), then the scaled map, or zeros if the map had
// a NaN/Inf, in a second pass, and the sample's status.
__global__ void __launch_bounds__(kNormThreads)
    minmax_normalize_kernel(float* x, int64_t batch, int64_t n, uint8_t* status) {
  using BlockReduce = CUB_NS_QUALIFIER::BlockReduce<float2, kNormThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ float2 range;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    float* v = x + b * n;
    float2 lohi = minmax_identity();
    int finite = 1;
    for (int64_t i = tid; i < n; i += kNormThreads) {
      const float e = v[i];
      finite &= isfinite(e) ? 1 : 0;
      lohi.x = fminf(lohi.x, e);
      lohi.y = fmaxf(lohi.y, e);
    }
    lohi = BlockReduce(temp).Reduce(lohi, MinMaxOp{});
    if (tid == 0) range = lohi;
    finite = __syncthreads_and(finite);  // also publishes `range`
    const float lo = range.x, hi = range.y;
    if (finite) {
      for (int64_t i = tid; i < n; i += kNormThreads) v[i] = minmax_scale(v[i], lo, hi);
    } else {
      for (int64_t i = tid; i < n; i += kNormThreads) v[i] = 0.f;
    }
    if (tid == 0 && status != nullptr) status[b] = !finite ? kCamNonFinite : (hi - lo <= 0.f ? kCamConstant : kCamOk);
    __syncthreads();  // temp and range are reused by the next sample
  }
}

__global__ void __launch_bounds__(kThreads)
    resize_bilinear_kernel(const float* in, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h,
                           int64_t out_w, bool align_corners) {
  const int64_t n = batch * out_h * out_w;
  for (int64_t i = global_thread(); i < n; i += grid_stride()) {
    const int64_t x = i % out_w, row = i / out_w;
    const int64_t y = row % out_h, b = row / out_h;
    out[i] = bilinear_at(in + b * h * w, w, bilinear_tap(y, h, out_h, align_corners),
                         bilinear_tap(x, w, out_w, align_corners));
  }
}

// Layers per aggregation launch: the table travels as a kernel parameter and
// is only indexed with unrolled (compile-time) indices, so it never leaves
// the parameter bank for a stack frame. More layers take more launches,
// carrying the running sum in `out`.
constexpr int kLayersPerLaunch = 8;

struct LayerTable {
  const float* map[kLayersPerLaunch];
  int64_t h[kLayersPerLaunch];
  int64_t w[kLayersPerLaunch];
  int count;
};

// out = (carry ? out : 0) + sum_l relu_keep_nan(resize(map_l)), times `scale`
// on the last launch: the CPU twin's sum, in its order, then its `sum * inv`.
__global__ void __launch_bounds__(kThreads)
    aggregate_layers_kernel(LayerTable table, int64_t batch, int64_t out_h, int64_t out_w, float* out, bool carry,
                            bool last, float inv_layers) {
  const int64_t n = batch * out_h * out_w;
  for (int64_t i = global_thread(); i < n; i += grid_stride()) {
    const int64_t x = i % out_w, row = i / out_w;
    const int64_t y = row % out_h, b = row / out_h;
    float sum = carry ? out[i] : 0.f;
#pragma unroll
    for (int l = 0; l < kLayersPerLaunch; ++l) {
      if (l < table.count) {
        const int64_t h = table.h[l], w = table.w[l];
        sum += relu_keep_nan(bilinear_at(table.map[l] + b * h * w, w, bilinear_tap(y, h, out_h, false),
                                         bilinear_tap(x, w, out_w, false)));
      }
    }
    out[i] = last ? sum * inv_layers : sum;
  }
}

}  // namespace
}  // namespace cuda_detail

void minmax_normalize_cuda(float* x, int64_t batch, int64_t n, uint8_t* status, const CudaContext& ctx) {
  using namespace cuda_detail;
  if (batch == 0) return;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(batch, int64_t{1} << 30));
  minmax_normalize_kernel<<<grid, kNormThreads, 0, stream_of(ctx)>>>(x, batch, n, status);
  XCAM_KERNEL_LAUNCH_CHECK();
}

void resize_bilinear_cuda(const float* in, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h,
                          int64_t out_w, bool align_corners, const CudaContext& ctx) {
  using namespace cuda_detail;
  const int64_t n = batch * out_h * out_w;
  if (n == 0) return;
  resize_bilinear_kernel<<<grid_for(n), kThreads, 0, stream_of(ctx)>>>(in, batch, h, w, out, out_h, out_w,
                                                                       align_corners);
  XCAM_KERNEL_LAUNCH_CHECK();
}

void normalize_resize_cuda(float* cam, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h, int64_t out_w,
                           uint8_t* status, const CudaContext& ctx) {
  minmax_normalize_cuda(cam, batch, h * w, status, ctx);
  resize_bilinear_cuda(cam, batch, h, w, out, out_h, out_w, /*align_corners=*/false, ctx);
}

void aggregate_layers_cuda(const float* const* maps, const int64_t* hs, const int64_t* ws, int64_t layers,
                           int64_t batch, int64_t out_h, int64_t out_w, float* out, uint8_t* status,
                           const CudaContext& ctx) {
  using namespace cuda_detail;
  const int64_t n = batch * out_h * out_w;
  if (n == 0) return;
  const float inv_layers = 1.f / static_cast<float>(layers);
  int64_t l0 = 0;
  do {  // at least one launch: no layers give 0 * inf = NaN, flagged, as on the CPU
    LayerTable table{};
    table.count = static_cast<int>(std::min<int64_t>(kLayersPerLaunch, layers - l0));
    for (int j = 0; j < table.count; ++j) {
      table.map[j] = maps[l0 + j];
      table.h[j] = hs[l0 + j];
      table.w[j] = ws[l0 + j];
    }
    const bool carry = l0 > 0, last = l0 + table.count >= layers;
    aggregate_layers_kernel<<<grid_for(n), kThreads, 0, stream_of(ctx)>>>(table, batch, out_h, out_w, out, carry, last,
                                                                          inv_layers);
    XCAM_KERNEL_LAUNCH_CHECK();
    l0 += table.count;
  } while (l0 < layers);
  minmax_normalize_cuda(out, batch, out_h * out_w, status, ctx);
}

}  // namespace xcam::kernels

// CUDA channel weights (Grad-CAM, Grad-CAM++, XGradCAM): the twin of
// cpu/pool.cpp. Grad-CAM's spatial mean is one device-wide segmented
// reduction (one segment per sample and channel); Grad-CAM++ and XGradCAM
// need two sums per channel, so one block reduces each channel.
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/iterator/transform_output_iterator.h>
#include <cub/block/block_reduce.cuh>
#include <cub/device/device_segmented_reduce.cuh>

#include <algorithm>

#include "common.cuh"
#include "reduce.cuh"
#include "xcam/kernels/pool.h"

namespace xcam::kernels {
namespace cuda_detail {
namespace {

template <typename T>
struct ToFloat {
  __host__ __device__ float operator()(const T& x) const { return to_float(x); }
};

struct SegmentBegin {
  int64_t hw;
  __host__ __device__ int64_t operator()(int64_t i) const { return i * hw; }
};

struct MeanOf {
  float hw, inv_hw;
  MeanScale scale;
  __host__ __device__ float operator()(float sum) const { return scale == MeanScale::divide ? sum / hw : sum * inv_hw; }
};

constexpr int kPoolThreads = 128;  // maps are often 7 x 7 .. 56 x 56: a small block per channel

// One block per (sample, channel): Grad-CAM++ or XGradCAM weight.
template <WeightMethod M, typename T>
__global__ void __launch_bounds__(kPoolThreads)
    two_sum_weights_kernel(const T* activations, const T* gradients, int64_t bk_count, int64_t hw, float* weights) {
  using BlockReduce = CUB_NS_QUALIFIER::BlockReduce<float, kPoolThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ float shared_sum_a;
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t bk = blockIdx.x; bk < bk_count; bk += gridDim.x) {
    const T* a = activations + bk * hw;
    const T* g = gradients + bk * hw;
    float sum_a = 0.f, sum_ga = 0.f;
    for (int64_t i = tid; i < hw; i += kPoolThreads) {
      const float av = to_float(a[i]);
      sum_a += av;
      if constexpr (M == WeightMethod::xgradcam) sum_ga += to_float(g[i]) * av;
    }
    sum_a = BlockReduce(temp).Sum(sum_a);
    __syncthreads();
    if constexpr (M == WeightMethod::xgradcam) {
      sum_ga = BlockReduce(temp).Sum(sum_ga);
      if (tid == 0) weights[bk] = xgradcam_weight(sum_ga, sum_a);
    } else {
      // Grad-CAM++: every term needs sum_s A; g is read again (cached lines).
      if (tid == 0) shared_sum_a = sum_a;
      __syncthreads();
      const float total_a = shared_sum_a;
      float w = 0.f;
      for (int64_t i = tid; i < hw; i += kPoolThreads) w += gradcampp_term(to_float(g[i]), total_a);
      w = BlockReduce(temp).Sum(w);
      if (tid == 0) weights[bk] = w;
    }
    __syncthreads();  // temp and shared_sum_a are reused by the next channel
  }
}

}  // namespace

void spatial_mean(const void* gradients, DType dtype, int64_t segments, int64_t hw, MeanScale scale, float* out,
                  const CudaContext& ctx) {
  if (segments == 0) return;
  namespace th = THRUST_NS_QUALIFIER;
  const auto begins = th::make_transform_iterator(th::counting_iterator<int64_t>(0), SegmentBegin{hw});
  const auto means =
      th::make_transform_output_iterator(out, MeanOf{static_cast<float>(hw), 1.f / static_cast<float>(hw), scale});
  with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto values = th::make_transform_iterator(static_cast<const T*>(gradients), ToFloat<T>{});
    size_t bytes = 0;
    XCAM_CUDA_CHECK(CUB_NS_QUALIFIER::DeviceSegmentedReduce::Sum(nullptr, bytes, values, means, segments, begins,
                                                                 begins + 1, stream_of(ctx)));
    TempBuffer temp(ctx, std::max<size_t>(bytes, 1));
    XCAM_CUDA_CHECK(CUB_NS_QUALIFIER::DeviceSegmentedReduce::Sum(temp.get(), bytes, values, means, segments, begins,
                                                                 begins + 1, stream_of(ctx)));
  });
}

}  // namespace cuda_detail

void channel_weights_cuda(const void* activations, const void* gradients, DType dtype, CamShape shape,
                          WeightMethod method, float* weights, const CudaContext& ctx) {
  using namespace cuda_detail;
  const int64_t bk = shape.batch * shape.channels, hw = shape.height * shape.width;
  if (bk == 0) return;
  if (method == WeightMethod::gradcam) {
    spatial_mean(gradients, dtype, bk, hw, MeanScale::divide, weights, ctx);
    return;
  }
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(bk, int64_t{1} << 30));
  with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* a = static_cast<const T*>(activations);
    const T* g = static_cast<const T*>(gradients);
    if (method == WeightMethod::xgradcam) {
      two_sum_weights_kernel<WeightMethod::xgradcam, T>
          <<<grid, kPoolThreads, 0, stream_of(ctx)>>>(a, g, bk, hw, weights);
      XCAM_KERNEL_LAUNCH_CHECK();
    } else {
      two_sum_weights_kernel<WeightMethod::gradcampp, T>
          <<<grid, kPoolThreads, 0, stream_of(ctx)>>>(a, g, bk, hw, weights);
      XCAM_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace xcam::kernels

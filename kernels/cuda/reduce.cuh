// The two reductions the map kernels share:
//  - spatial: one value per (sample, channel) over the h x w positions; the
//    Grad-CAM mean is a device-wide cub::DeviceSegmentedReduce (pool.cu);
//  - channel: one value per (sample, position) over the K channels, then a
//    ReLU (gradcam.cu, weighted_sum.cu, elementwise.cu). Channels are split
//    into fixed chunks of 64, as in the CPU twins (cpu/dtype.h): each chunk
//    is summed into a B x chunks x h x w scratch plane (never B x K x h x w),
//    and the chunks are added in a fixed order, so results are deterministic.
#pragma once

#include <cstdint>

#include "common.cuh"

namespace xcam::kernels::cuda_detail {

// ------------------------------------------------------------- spatial ----

enum class MeanScale : uint8_t {
  divide,            // sum / hw          (channel_weights_cpu)
  multiply_inverse,  // sum * (1 / hw)    (gradcam_cpu)
};

// out[i] = mean of gradients[i * hw .. (i + 1) * hw) as float32, for i in
// [0, segments). Defined in pool.cu; one device-wide CUB call on ctx.stream.
void spatial_mean(const void* gradients, DType dtype, int64_t segments, int64_t hw, MeanScale scale, float* out,
                  const CudaContext& ctx);

// ------------------------------------------------------------- channel ----

constexpr int64_t kChannelChunk = 64;  // channels per chunk, as cpu/dtype.h
constexpr int kPositionTile = 32;      // positions per block (one warp wide: coalesced)
constexpr int kChannelLanes = 8;       // warps per block, each over every 8th channel of the chunk

enum class Finish : uint8_t {
  relu_keep_nan,        // relu that keeps NaN (weighted_sum, elementwise: as their CPU twins)
  relu_flag_nonfinite,  // NaN for NaN/+-Inf, else relu (gradcam: relu must not hide -Inf)
};

template <Finish F>
__device__ __forceinline__ float finish(float v) {
  if constexpr (F == Finish::relu_keep_nan) {
    return relu_keep_nan(v);
  } else {
    return isfinite(v) ? relu(v) : quiet_nan();  // the normaliser zeroes and flags the sample
  }
}

// Term(bk, s): the contribution of channel k of sample b (bk = b * K + k) at
// position s. With one chunk the block writes the finished map directly;
// otherwise its chunk's partial sums.
template <Finish F, typename Term>
__global__ void __launch_bounds__(kPositionTile* kChannelLanes)
    channel_chunk_kernel(Term term, int64_t batch, int64_t channels, int64_t hw, int64_t chunks, float* partial,
                         float* cam) {
  __shared__ float lanes[kChannelLanes][kPositionTile];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  const int64_t s = static_cast<int64_t>(blockIdx.x) * kPositionTile + tx;
  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) {
      const int64_t k1 = min(channels, (c + 1) * kChannelChunk);
      float acc = 0.f;
      if (s < hw) {
        for (int64_t k = c * kChannelChunk + ty; k < k1; k += kChannelLanes) acc += term(b * channels + k, s);
      }
      lanes[ty][tx] = acc;
      __syncthreads();
      if (ty == 0 && s < hw) {
        float sum = lanes[0][tx];
#pragma unroll
        for (int j = 1; j < kChannelLanes; ++j) sum += lanes[j][tx];
        if (chunks == 1) {
          cam[b * hw + s] = finish<F>(sum);
        } else {
          partial[(b * chunks + c) * hw + s] = sum;
        }
      }
      __syncthreads();  // lanes is reused by the next (b, c)
    }
  }
}

// cam[b, s] = finish(sum over chunks c, in order, of partial[b, c, s]).
template <Finish F>
__global__ void __launch_bounds__(kThreads)
    channel_finish_kernel(const float* partial, int64_t batch, int64_t chunks, int64_t hw, float* cam) {
  const int64_t n = batch * hw;
  for (int64_t i = global_thread(); i < n; i += grid_stride()) {
    const int64_t b = i / hw, s = i - b * hw;
    const float* p = partial + b * chunks * hw + s;
    float sum = p[0];
    for (int64_t c = 1; c < chunks; ++c) sum += p[c * hw];
    cam[i] = finish<F>(sum);
  }
}

// cam (B x h x w) = finish(sum_k term(b * K + k, s)), on ctx.stream.
template <Finish F, typename Term>
void channel_sum(const Term& term, CamShape shape, float* cam, const CudaContext& ctx) {
  const int64_t B = shape.batch, K = shape.channels, hw = shape.height * shape.width;
  if (B == 0 || hw == 0) return;
  const int64_t chunks = std::max<int64_t>(1, (K + kChannelChunk - 1) / kChannelChunk);
  TempBuffer partial(ctx, chunks > 1 ? sizeof(float) * static_cast<size_t>(B * chunks * hw) : 0);
  const cudaStream_t stream = stream_of(ctx);
  const dim3 block(kPositionTile, kChannelLanes);
  const dim3 grid(static_cast<unsigned>((hw + kPositionTile - 1) / kPositionTile), grid_yz(chunks), grid_yz(B));
  channel_chunk_kernel<F><<<grid, block, 0, stream>>>(term, B, K, hw, chunks, partial.as<float>(), cam);
  XCAM_KERNEL_LAUNCH_CHECK();
  if (chunks > 1) {
    channel_finish_kernel<F><<<grid_for(B * hw), kThreads, 0, stream>>>(partial.as<float>(), B, chunks, hw, cam);
    XCAM_KERNEL_LAUNCH_CHECK();
  }
}

// w[bk] * A[bk, s]: the weighted channel sum (Grad-CAM, weighted_sum_relu).
template <typename T>
struct WeightedTerm {
  const T* activations;
  const float* weights;
  int64_t hw;
  __device__ __forceinline__ float operator()(int64_t bk, int64_t s) const {
    return weights[bk] * to_float(activations[bk * hw + s]);
  }
};

}  // namespace xcam::kernels::cuda_detail

// Private helpers of the CUDA twins: element-type dispatch, launch sizes and
// the per-sample min-max reduction operator.
//
// CUB is reached as CUB_NS_QUALIFIER::cub-name: the CMake target wraps it in
// its own namespace (CUB_WRAPPED_NAMESPACE=xcam_cub, PyTorch #55292).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "launch_check.cuh"
#include "xcam/kernels/cam_math.h"
#include "xcam/kernels/types.h"

namespace xcam::kernels::cuda_detail {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with the storage type of `dtype` (float, f16_t, bf16_t).
template <typename F>
void with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(TypeTag<float>{}); return;
    case DType::f16: f(TypeTag<f16_t>{}); return;
    case DType::bf16: f(TypeTag<bf16_t>{}); return;
  }
  throw std::invalid_argument("xcam CUDA kernels: unknown DType " + std::to_string(static_cast<int>(dtype)));
}

constexpr int kThreads = 256;  // element-wise kernels

// Blocks of a grid-stride loop over n items: enough to fill the GPU many
// times over, capped so that the grid stays inside gridDim.x.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

// A grid dimension y or z (at most 65535); kernels loop with stride gridDim.
inline unsigned grid_yz(int64_t n) { return static_cast<unsigned>(std::clamp<int64_t>(n, 1, 65535)); }

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// (min, max) pair reduction for cub::BlockReduce<float2>. NaN is ignored by
// fminf/fmaxf, as by std::min/std::max in the CPU twins; callers that must
// report NaN track finiteness separately.
struct MinMaxOp {
  __device__ __forceinline__ float2 operator()(const float2& a, const float2& b) const {
    return make_float2(fminf(a.x, b.x), fmaxf(a.y, b.y));
  }
};

__device__ __forceinline__ float2 minmax_identity() { return make_float2(INFINITY, -INFINITY); }

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

}  // namespace xcam::kernels::cuda_detail

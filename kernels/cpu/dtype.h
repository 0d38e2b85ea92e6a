// Private helpers of the CPU kernels: element-type dispatch and the
// fixed-chunk channel reduction the map kernels share.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "xcam/kernels/cam_math.h"
#include "xcam/kernels/types.h"

namespace xcam::kernels::detail {

template <typename F>
void with_dtype(DType dtype, const void* a, const void* b, F&& f) {
  switch (dtype) {
    case DType::f32: f(static_cast<const float*>(a), static_cast<const float*>(b)); break;
    case DType::f16: f(static_cast<const f16_t*>(a), static_cast<const f16_t*>(b)); break;
    case DType::bf16: f(static_cast<const bf16_t*>(a), static_cast<const bf16_t*>(b)); break;
  }
}

// Grad-CAM's channel weight, the mean of a channel's n gradients, summed in
// double: zero-mean gradients cancel, and a float32 sum's rounding then shows
// in the normalised map (docs/kernels.md).
template <typename T>
float gradient_mean(const T* g, int64_t n) {
  double sum = 0.;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += to_float(g[i]);
  return static_cast<float>(sum / static_cast<double>(n));
}

// Channels per work item: fixed, so results do not depend on the thread count.
constexpr int64_t kChannelChunk = 64;

// out[b] = sum_k contribution(b, k) for B samples of hw positions, where
// `add(b, k, acc)` adds channel k's contribution to the hw floats of acc and
// returns false if something non-finite came up. Work is split over
// (sample, chunk of channels) with one scratch plane each, never B x K x hw;
// the chunks are reduced in a fixed order. Returns per-sample "all finite".
template <typename Add>
std::vector<uint8_t> channel_sum(int64_t B, int64_t K, int64_t hw, float* out, Add&& add) {
  const int64_t chunks = (K + kChannelChunk - 1) / kChannelChunk;
  std::vector<float> partial(static_cast<size_t>(B * chunks * hw));
  std::vector<uint8_t> finite(static_cast<size_t>(B * chunks), 1);
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < B * chunks; ++item) {
    const int64_t b = item / chunks, c = item % chunks;
    const int64_t k1 = std::min(K, (c + 1) * kChannelChunk);
    float* acc = partial.data() + item * hw;
    std::fill(acc, acc + hw, 0.f);
    bool ok = true;
    for (int64_t k = c * kChannelChunk; k < k1; ++k) ok = add(b, k, acc) && ok;
    finite[item] = ok;
  }
  std::vector<uint8_t> sample_finite(static_cast<size_t>(B), 1);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    float* dst = out + b * hw;
    const float* src = partial.data() + b * chunks * hw;
    std::copy(src, src + hw, dst);
    for (int64_t c = 1; c < chunks; ++c) {
      const float* p = src + c * hw;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) dst[i] += p[i];
    }
    for (int64_t c = 0; c < chunks; ++c) sample_finite[b] = sample_finite[b] && finite[b * chunks + c];
  }
  return sample_finite;
}

}  // namespace xcam::kernels::detail

// Per-element math shared by the CPU kernels and their CUDA twins, so that each
// formula exists once. Everything here is inline and host/device callable.
#pragma once

#include <cstdint>
#include <cstring>

#include "xcam/kernels/types.h"

#if defined(__CUDACC__)
#define XCAM_HD __host__ __device__ __forceinline__
#else
#define XCAM_HD inline
#endif

namespace xcam::kernels {

// ------------------------------------------------------------ loading ----

XCAM_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

XCAM_HD float to_float(float x) { return x; }
XCAM_HD float to_float(bf16_t x) { return bits_to_float(static_cast<uint32_t>(x.bits) << 16); }
XCAM_HD float to_float(f16_t x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1fu;
  const uint32_t mant = x.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // Inf / NaN
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// ----------------------------------------------------------------- math ----

// Epsilon of the per-sample min-max normalisation (SPEC section 1.5).
constexpr float kNormEps = 1e-7f;

// max(x, 0); NaN maps to 0, so callers that must report NaN check first.
XCAM_HD float relu(float x) { return x > 0.f ? x : 0.f; }

// max(x, 0) for finite x; NaN and -Inf pass through, so that the
// normaliser sees them and reports the sample (SPEC section 1.8).
XCAM_HD float relu_keep_nan(float x) { return (x < 0.f && x >= -3.402823466e38f) ? 0.f : x; }

// (x - lo) / (hi - lo + eps): a constant map becomes all zeros, never NaN.
XCAM_HD float minmax_scale(float x, float lo, float hi) { return (x - lo) / (hi - lo + kNormEps); }

// One axis of a bilinear sample: the two source indices and the weight of the
// second. Half-pixel centres (align_corners=false, OpenCV INTER_LINEAR) or the
// align_corners=true variant. `in` and `out` are the axis lengths.
struct Tap1D {
  int64_t i0, i1;
  float t;  // weight of i1
};

XCAM_HD Tap1D bilinear_tap(int64_t dst, int64_t in, int64_t out, bool align_corners) {
  float src;
  if (align_corners) {
    src = out > 1 ? static_cast<float>(dst) * static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f;
  } else {
    src = (static_cast<float>(dst) + 0.5f) * (static_cast<float>(in) / static_cast<float>(out)) - 0.5f;
    if (src < 0.f) src = 0.f;
  }
  int64_t i0 = static_cast<int64_t>(src);  // src >= 0, so truncation is floor
  if (i0 > in - 1) i0 = in - 1;
  const int64_t i1 = i0 + 1 < in ? i0 + 1 : in - 1;
  return {i0, i1, src - static_cast<float>(i0)};
}

// Value of a bilinear sample of an h x w row-major plane.
XCAM_HD float bilinear_at(const float* plane, int64_t w, const Tap1D& ty, const Tap1D& tx) {
  const float* r0 = plane + ty.i0 * w;
  const float* r1 = plane + ty.i1 * w;
  const float top = r0[tx.i0] + tx.t * (r0[tx.i1] - r0[tx.i0]);
  const float bot = r1[tx.i0] + tx.t * (r1[tx.i1] - r1[tx.i0]);
  return top + ty.t * (bot - top);
}

// Grad-CAM++ coefficient (SPEC section 2): a = g^2 / (2 g^2 + (sum_s A) g^3
// + 1e-6), 0 where g == 0; the weight sums relu(g) * a over space.
XCAM_HD float gradcampp_term(float g, float sum_a) {
  if (g == 0.f) return 0.f;
  const float g2 = g * g;
  const float alpha = g2 / (2.f * g2 + sum_a * g2 * g + 1e-6f);
  return relu(g) * alpha;
}

// XGradCAM weight from its two spatial sums: sum_s(g A) / (sum_s A + 1e-7).
XCAM_HD float xgradcam_weight(float sum_ga, float sum_a) { return sum_ga / (sum_a + 1e-7f); }

// Score-CAM mask normalisation (per channel, after upsampling):
// (m - lo) / (hi - lo + 1e-8), written as (m - lo) * mask_inv_range(lo, hi).
constexpr float kMaskEps = 1e-8f;
XCAM_HD float mask_inv_range(float lo, float hi) { return 1.f / (hi - lo + kMaskEps); }
XCAM_HD float mask_scale(float m, float lo, float inv_range) { return (m - lo) * inv_range; }

// Colormap index of a map value in [0, 1]: truncation of 255 * v, as the
// reference renderer does (np.uint8(255 * mask)); out-of-range values clamp
// and NaN maps to 0 (it fails both comparisons), never outside the table.
XCAM_HD int colormap_index(float v) {
  const float s = 255.f * v;
  return s > 0.f ? (s < 255.f ? static_cast<int>(s) : 255) : 0;
}

// Alpha blend of one colour channel, computed in float and rounded once.
XCAM_HD uint8_t blend_channel(uint8_t heat, uint8_t image, float image_weight) {
  const float v = (1.f - image_weight) * static_cast<float>(heat) + image_weight * static_cast<float>(image);
  const float r = v + 0.5f;
  return static_cast<uint8_t>(r > 255.f ? 255.f : r);
}

}  // namespace xcam::kernels

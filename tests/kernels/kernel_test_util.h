// Helpers shared by the kernel tests (test_kernels.cpp, test_dispatch.cpp,
// test_kernels_cuda.cpp). Header-only and free of LibTorch: the CUDA test is
// a plain C++ binary. The ATen helpers are in kernel_test_util_aten.h.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "xcam/kernels/elementwise.h"
#include "xcam/kernels/pool.h"
#include "xcam/kernels/types.h"

namespace xcam::kernels::test_util {

inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
inline constexpr float kInf = std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------
// Seeds: a fresh one per test, or XCAM_TEST_SEED=<n> to replay a run.
// ---------------------------------------------------------------------------

inline uint64_t pick_test_seed() {
  if (const char* s = std::getenv("XCAM_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// What every failure prints (SCOPED_TRACE).
inline std::string seed_trace(uint64_t seed) {
  return "seed " + std::to_string(seed) + " (replay: XCAM_TEST_SEED=" + std::to_string(seed) + ")";
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

// A TEST_P case name from the parameter's operator<<, with every character
// that is not alphanumeric replaced by '_'.
template <typename P>
std::string param_name(const testing::TestParamInfo<P>& info) {
  std::ostringstream os;
  os << info.param;
  std::string s = os.str();
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_') ch = '_';
  return s;
}

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
  }
  return "unknown";
}

inline const char* method_name(WeightMethod m) {
  switch (m) {
    case WeightMethod::gradcam: return "gradcam";
    case WeightMethod::gradcampp: return "gradcampp";
    case WeightMethod::xgradcam: return "xgradcam";
  }
  return "unknown";
}

inline const char* method_name(ElementwiseMethod m) {
  switch (m) {
    case ElementwiseMethod::layercam: return "layercam";
    case ElementwiseMethod::hirescam: return "hirescam";
    case ElementwiseMethod::gradcam_elementwise: return "gradcam_elementwise";
  }
  return "unknown";
}

inline constexpr std::array<DType, 3> kDTypes = {DType::f32, DType::f16, DType::bf16};
inline constexpr std::array<WeightMethod, 3> kWeightMethods = {WeightMethod::gradcam, WeightMethod::gradcampp,
                                                               WeightMethod::xgradcam};
inline constexpr std::array<ElementwiseMethod, 3> kElementwiseMethods = {
    ElementwiseMethod::layercam, ElementwiseMethod::hirescam, ElementwiseMethod::gradcam_elementwise};

// ---------------------------------------------------------------------------
// Shapes (TEST_P parameters; operator<< gives the case name)
// ---------------------------------------------------------------------------

// Grad-CAM: B x K x h x w activations, resized to H x W.
struct CamCase {
  int64_t B, K, h, w, H, W;
};
inline std::ostream& operator<<(std::ostream& os, const CamCase& c) {
  return os << "B" << c.B << "_K" << c.K << "_" << c.h << "x" << c.w << "_to_" << c.H << "x" << c.W;
}

// Low-resolution grids with the output size each is resized to: 1x1,
// integer upscales (7, 14 -> 224), non-integer ones, a non-square grid, and a
// downscale (56x56 -> 20x30).
inline constexpr std::array<std::array<int64_t, 4>, 6> kCamGrids = {{
    {1, 1, 224, 224},
    {7, 7, 224, 224},
    {14, 14, 224, 224},
    {16, 8, 50, 37},
    {24, 36, 100, 130},
    {56, 56, 20, 30},
}};

// Min-max normalisation: B maps of h x w.
struct NormCase {
  int64_t B, h, w;
};
inline std::ostream& operator<<(std::ostream& os, const NormCase& c) {
  return os << "B" << c.B << "_" << c.h << "x" << c.w;
}

// Bilinear resize of B maps h x w -> H x W.
struct ResizeCase {
  int64_t B, h, w, H, W;
  bool align_corners;
};
inline std::ostream& operator<<(std::ostream& os, const ResizeCase& c) {
  return os << "B" << c.B << "_" << c.h << "x" << c.w << "_to_" << c.H << "x" << c.W
            << (c.align_corners ? "_align_corners" : "_half_pixel");
}

// Layer aggregation: B samples, one h x w grid per layer, resized to H x W.
struct AggCase {
  int64_t B;
  std::vector<std::array<int64_t, 2>> grids;
  int64_t H, W;
};
inline std::ostream& operator<<(std::ostream& os, const AggCase& c) {
  os << "B" << c.B;
  if (c.grids.size() > 4) return os << "_" << c.grids.size() << "layers_to_" << c.H << "x" << c.W;
  for (const auto& g : c.grids) os << "_" << g[0] << "x" << g[1];
  return os << "_to_" << c.H << "x" << c.W;
}

// Colormap overlay of an h x w map, image weight a.
struct OverlayCase {
  int64_t h, w;
  float image_weight;
};
inline std::ostream& operator<<(std::ostream& os, const OverlayCase& c) {
  return os << c.h << "x" << c.w << "_a" << static_cast<int>(std::lround(c.image_weight * 100)) << "pct";
}

}  // namespace xcam::kernels::test_util

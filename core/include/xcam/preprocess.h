// Preprocessing settings (no OpenCV, no LibTorch: plugins include this).
#pragma once

#include <array>
#include <cstdint>

namespace xcam {

// How images become input tensors: resize to height x width (bilinear,
// half-pixel centres), RGB, divide by 255, subtract mean, divide by std.
struct Preprocess {
  int64_t height = 224;
  int64_t width = 224;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
};

}  // namespace xcam

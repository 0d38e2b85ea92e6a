// The LibTorch half of the kernel test helpers (test_kernels.cpp,
// test_dispatch.cpp); kernel_test_util.h is the part without LibTorch.
#pragma once

#include <torch/script.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>
#include <string>

#include "kernel_test_util.h"
#include "xcam/kernels/types.h"

namespace xcam::kernels::test_util {

// Random tensors from a fresh seed per test, reported on failure.
class Rng {
 public:
  Rng() : seed_(pick_test_seed()), gen_(at::detail::createCPUGenerator(seed_)) {}
  std::string trace() const { return seed_trace(seed_); }
  at::Tensor randn(at::IntArrayRef s) { return at::randn(s, gen_, at::kFloat); }
  at::Tensor rand(at::IntArrayRef s) { return at::rand(s, gen_, at::kFloat); }
  at::Tensor bytes(at::IntArrayRef s) { return at::randint(256, s, gen_, at::kByte); }
  int64_t index(int64_t n) { return at::randint(n, {1}, gen_, at::kLong).item<int64_t>(); }

 private:
  uint64_t seed_;
  at::Generator gen_;
};

inline at::ScalarType scalar_type_of(DType d) {
  switch (d) {
    case DType::f32: return at::kFloat;
    case DType::f16: return at::kHalf;
    case DType::bf16: return at::kBFloat16;
  }
  return at::kFloat;
}

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: return DType::f32;
  }
}

// B x K x h x w of a 4-d tensor.
inline CamShape shape_of(const at::Tensor& t) { return {t.size(0), t.size(1), t.size(2), t.size(3)}; }
inline float* fptr(const at::Tensor& t) { return t.data_ptr<float>(); }

}  // namespace xcam::kernels::test_util

// Element types and CUDA context shared by every kernel op.
//
// Inputs may be float32, float16 or bfloat16 (half-precision models); maps are
// always float32 and every sum accumulates in float32. Pointers to inputs are
// `const void*` with a DType; f16/bf16 are bit-compatible with at::Half /
// at::BFloat16 and with CUDA's __half / __nv_bfloat16.
#pragma once

#include <cstddef>
#include <cstdint>

namespace xcam::kernels {

enum class DType : uint8_t { f32, f16, bf16 };

struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

struct CamShape {
  int64_t batch = 0;     // B
  int64_t channels = 0;  // K
  int64_t height = 0;    // h
  int64_t width = 0;     // w
};

// Per-sample status bits reported by the map kernels.
enum CamStatus : uint8_t {
  kCamOk = 0,
  kCamConstant = 1,   // the map was constant before normalisation: output zeros
  kCamNonFinite = 2,  // NaN/Inf in the activations or gradients: output zeros
};

// Device memory for the temporary storage of device-wide CUB calls, owned by
// the caller (the at::Tensor dispatch passes LibTorch's caching allocator).
struct DeviceAllocator {
  void* (*allocate)(size_t bytes, void* context) = nullptr;
  void (*release)(void* ptr, void* context) = nullptr;
  void* context = nullptr;
};

// Where a CUDA twin runs: a cudaStream_t (opaque here so that CPU code needs
// no CUDA headers) and the allocator for temporaries.
struct CudaContext {
  void* stream = nullptr;  // cudaStream_t; null: the legacy default stream
  DeviceAllocator allocator;
};

}  // namespace xcam::kernels

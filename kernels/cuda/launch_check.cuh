// Error checks, the stream and temporary device memory of the CUDA twins.
//
// Every `<<<...>>>` launch is followed, as its next statement, by
// XCAM_KERNEL_LAUNCH_CHECK(); tests/kernels/check_kernel_launches.py fails the
// build's tests on a launch without one (PyTorch C10_CUDA_KERNEL_LAUNCH_CHECK).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>

#include "xcam/kernels/types.h"

namespace xcam::kernels::cuda_detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error: ") + what + " failed at " + file + ":" + std::to_string(line) +
                           ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

// After a kernel launch: a bad configuration (grid, block, shared memory) or
// an earlier asynchronous error shows up here. Does not synchronise.
inline void check_kernel_launch(const char* file, int line) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, "kernel launch", file, line);
}

}  // namespace xcam::kernels::cuda_detail

// Throws std::runtime_error naming the statement, file, line and CUDA error.
#define XCAM_CUDA_CHECK(expr)                                                                    \
  do {                                                                                           \
    const cudaError_t xcam_cuda_err_ = (expr);                                                   \
    if (xcam_cuda_err_ != cudaSuccess)                                                           \
      ::xcam::kernels::cuda_detail::throw_cuda_error(xcam_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// The statement right after every `<<<...>>>` launch.
#define XCAM_KERNEL_LAUNCH_CHECK() ::xcam::kernels::cuda_detail::check_kernel_launch(__FILE__, __LINE__)

namespace xcam::kernels::cuda_detail {

inline cudaStream_t stream_of(const CudaContext& ctx) { return static_cast<cudaStream_t>(ctx.stream); }

// Temporary device memory for one op: from the caller's allocator when it has
// one (LibTorch's caching allocator, stream-ordered on ctx.stream), else
// cudaMallocAsync / cudaFreeAsync on ctx.stream. Released when the host
// function returns, after the work that uses it is enqueued; both sources
// are stream-ordered, so no synchronisation is needed.
class TempBuffer {
 public:
  // No allocation for 0 bytes (get() is then null; CUB callers ask for at
  // least 1, since CUB reads a null temp pointer as a size query).
  TempBuffer(const CudaContext& ctx, size_t bytes) : ctx_(ctx) {
    if (bytes == 0) return;
    if (ctx_.allocator.allocate != nullptr) {
      ptr_ = ctx_.allocator.allocate(bytes, ctx_.allocator.context);
      if (ptr_ == nullptr)
        throw std::runtime_error("CUDA temporary storage: the caller's allocator returned null for " +
                                 std::to_string(bytes) + " bytes");
    } else {
      XCAM_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream_of(ctx_)));
    }
  }
  ~TempBuffer() {
    if (ptr_ == nullptr) return;
    if (ctx_.allocator.allocate != nullptr) {
      if (ctx_.allocator.release != nullptr) ctx_.allocator.release(ptr_, ctx_.allocator.context);
    } else {
      (void)cudaFreeAsync(ptr_, stream_of(ctx_));  // a destructor does not throw
    }
  }
  TempBuffer(const TempBuffer&) = delete;
  TempBuffer& operator=(const TempBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  CudaContext ctx_;
  void* ptr_ = nullptr;
};

}  // namespace xcam::kernels::cuda_detail

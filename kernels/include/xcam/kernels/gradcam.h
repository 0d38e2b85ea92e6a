// Fused Grad-CAM: channel weights from spatially pooled gradients, weighted
// channel sum, ReLU, per-sample min-max normalisation and bilinear resize, in
// one pass over the activations and gradients (SPEC sections 1-2).
//
// Raw-pointer API over contiguous buffers; the at::Tensor dispatch in
// xcam/kernels/dispatch.h checks arguments and calls it. Every CPU op has a
// CUDA twin with the same signature plus a CudaContext, in cuda/<op>.cu;
// buffers of a CUDA twin are device pointers.
#pragma once

#include <cstdint>

#include "xcam/kernels/types.h"

namespace xcam::kernels {

// activations, gradients: B x K x h x w. lowres (optional, may be null):
// B x h x w, the normalised map before resize. out: B x H x W in [0, 1].
// status: B entries of CamStatus. lowres is required by the CUDA twin.
// Threads: OpenMP, over samples and fixed-size channel chunks (results do not
// depend on the thread count); scratch is B x chunks x h x w floats, never
// B x K x h x w.
void gradcam_cpu(const void* activations, const void* gradients, DType dtype, CamShape shape, int64_t out_h,
                 int64_t out_w, float* lowres, float* out, uint8_t* status);
void gradcam_cuda(const void* activations, const void* gradients, DType dtype, CamShape shape, int64_t out_h,
                  int64_t out_w, float* lowres, float* out, uint8_t* status, const CudaContext& ctx);

// float32 convenience overload.
inline void gradcam_cpu(const float* activations, const float* gradients, CamShape shape, int64_t out_h,
                        int64_t out_w, float* lowres, float* out, uint8_t* status) {
  gradcam_cpu(activations, gradients, DType::f32, shape, out_h, out_w, lowres, out, status);
}

}  // namespace xcam::kernels

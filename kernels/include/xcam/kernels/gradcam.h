// Fused Grad-CAM: channel weights from spatially pooled gradients, weighted
// channel sum, ReLU, per-sample min-max normalisation and bilinear resize, in
// one pass over the activations and gradients (SPEC sections 1-2).
//
// Raw-pointer API over contiguous float32 buffers; the at::Tensor dispatch in
// xcam/kernels/dispatch.h checks arguments and calls it. Every CPU op here has
// (or will have) a CUDA twin with the same signature in cuda/<op>.cu.
#pragma once

#include <cstdint>

namespace xcam::kernels {

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

// activations, gradients: B x K x h x w. lowres (optional, may be null):
// B x h x w, the normalised map before resize. out: B x H x W in [0, 1].
// status: B entries of CamStatus. Threads: OpenMP, over samples and channel
// chunks; scratch is B x chunks x h x w floats, never B x K x h x w.
void gradcam_cpu(const float* activations, const float* gradients, CamShape shape, int64_t out_h,
                 int64_t out_w, float* lowres, float* out, uint8_t* status);

}  // namespace xcam::kernels

// Score-CAM mask preparation (SPEC section 2): for channels k0..k1-1 of one
// sample's activations, upsample A_k to the input size (bilinear,
// align_corners=true), min-max it per channel with eps 1e-8, and multiply the
// input by it: one masked input per channel, ready for a batched forward.
#pragma once

#include <cstdint>

#include "xcam/kernels/types.h"

namespace xcam::kernels {

// activations: K x h x w (one sample); input: C x H x W float32;
// out: (k1 - k0) x C x H x W float32.
void scorecam_masks_cpu(const void* activations, DType dtype, int64_t channels, int64_t h, int64_t w, int64_t k0,
                        int64_t k1, const float* input, int64_t in_channels, int64_t out_h, int64_t out_w,
                        float* out);
void scorecam_masks_cuda(const void* activations, DType dtype, int64_t channels, int64_t h, int64_t w, int64_t k0,
                         int64_t k1, const float* input, int64_t in_channels, int64_t out_h, int64_t out_w,
                         float* out, const CudaContext& ctx);

}  // namespace xcam::kernels

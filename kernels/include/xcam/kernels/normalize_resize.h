// Per-sample min-max normalisation, bilinear resize, and multi-layer
// aggregation (SPEC section 1, steps 5-7).
#pragma once

#include <cstdint>

#include "xcam/kernels/types.h"

namespace xcam::kernels {

// In place: x[b] = (x[b] - min) / (max - min + 1e-7) for each of `batch` maps of
// `n` floats. A map with a NaN/Inf becomes zeros and gets kCamNonFinite in
// status (if not null); a constant one becomes zeros and gets kCamConstant.
void minmax_normalize_cpu(float* x, int64_t batch, int64_t n, uint8_t* status);
void minmax_normalize_cuda(float* x, int64_t batch, int64_t n, uint8_t* status, const CudaContext& ctx);

// Bilinear resize of `batch` h x w planes to H x W. align_corners=false is the
// half-pixel convention of torch interpolate / OpenCV INTER_LINEAR.
void resize_bilinear_cpu(const float* in, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h,
                         int64_t out_w, bool align_corners);
void resize_bilinear_cuda(const float* in, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h,
                          int64_t out_w, bool align_corners, const CudaContext& ctx);

// Normalise + resize fused: cam (B x h x w) is normalised in place (it becomes
// the low-resolution map) and resized to out (B x H x W); the resize reads the
// normalised values, so the two steps cost one extra read of the small map.
void normalize_resize_cpu(float* cam, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h,
                          int64_t out_w, uint8_t* status);
void normalize_resize_cuda(float* cam, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h,
                           int64_t out_w, uint8_t* status, const CudaContext& ctx);

// Several target layers of one batch: maps[l] is B x hs[l] x ws[l], already
// normalised. out = minmax(mean_l relu(resize(maps[l]))), B x H x W, without
// materialising the resized layers.
void aggregate_layers_cpu(const float* const* maps, const int64_t* hs, const int64_t* ws, int64_t layers,
                          int64_t batch, int64_t out_h, int64_t out_w, float* out, uint8_t* status);
// CUDA: `maps`, `hs` and `ws` are host arrays; maps[l] point to device memory.
void aggregate_layers_cuda(const float* const* maps, const int64_t* hs, const int64_t* ws, int64_t layers,
                           int64_t batch, int64_t out_h, int64_t out_w, float* out, uint8_t* status,
                           const CudaContext& ctx);

}  // namespace xcam::kernels

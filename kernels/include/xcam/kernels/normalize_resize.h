// Per-sample min-max normalisation, bilinear resize, and multi-layer
// aggregation (SPEC section 1, steps 5-7).
#pragma once

#include <cstdint>

namespace xcam::kernels {

// In place: x[b] = (x[b] - min) / (max - min + 1e-7) for each of `batch` maps of
// `n` floats. A map with a NaN/Inf becomes zeros and gets kCamNonFinite in
// status (if not null); a constant one becomes zeros and gets kCamConstant.
void minmax_normalize_cpu(float* x, int64_t batch, int64_t n, uint8_t* status);

// Bilinear resize of `batch` h x w planes to H x W. align_corners=false is the
// half-pixel convention of torch interpolate / OpenCV INTER_LINEAR.
void resize_bilinear_cpu(const float* in, int64_t batch, int64_t h, int64_t w, float* out, int64_t out_h,
                         int64_t out_w, bool align_corners);

// Several target layers of one batch: maps[l] is B x hs[l] x ws[l], already
// normalised. out = minmax(mean_l relu(resize(maps[l]))), B x H x W, without
// materialising the resized layers.
void aggregate_layers_cpu(const float* const* maps, const int64_t* hs, const int64_t* ws, int64_t layers,
                          int64_t batch, int64_t out_h, int64_t out_w, float* out, uint8_t* status);

}  // namespace xcam::kernels

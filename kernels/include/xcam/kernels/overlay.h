// Colormap lookup and alpha blend with the image (SPEC section 4).
#pragma once

#include <cstdint>

#include "xcam/kernels/types.h"

namespace xcam::kernels {

// map: H x W in [0, 1]; lut: 256 RGB triples; image, out: H x W x 3 RGB.
// heat_rgb (optional, may be null): H x W x 3, the colormapped map alone.
// out = round((1 - image_weight) * lut[trunc(255 * map)] + image_weight * image).
void colormap_overlay_cpu(const float* map, const uint8_t* image, int64_t h, int64_t w, const uint8_t* lut,
                          float image_weight, uint8_t* heat_rgb, uint8_t* out);
void colormap_overlay_cuda(const float* map, const uint8_t* image, int64_t h, int64_t w, const uint8_t* lut,
                           float image_weight, uint8_t* heat_rgb, uint8_t* out, const CudaContext& ctx);

}  // namespace xcam::kernels

// CPU colormap + alpha blend: the reference twin of cuda/overlay.cu.
#include "xcam/kernels/overlay.h"

#include "xcam/kernels/cam_math.h"

namespace xcam::kernels {

void colormap_overlay_cpu(const float* map, const uint8_t* image, int64_t h, int64_t w, const uint8_t* lut,
                          float image_weight, uint8_t* heat_rgb, uint8_t* out) {
#pragma omp parallel for schedule(static)
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      const int64_t p = y * w + x;
      const uint8_t* c = lut + 3 * colormap_index(map[p]);
      for (int ch = 0; ch < 3; ++ch) {
        if (heat_rgb != nullptr) heat_rgb[3 * p + ch] = c[ch];
        out[3 * p + ch] = blend_channel(c[ch], image[3 * p + ch], image_weight);
      }
    }
  }
}

}  // namespace xcam::kernels

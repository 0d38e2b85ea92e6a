// libFuzzer: the image loader (load_rgb: PNG, JPEG, BMP, ... through OpenCV)
// and the preprocessing that follows it. Accepted, or refused with one
// xcam::Error line. -rss_limit_mb in scripts/fuzz.sh bounds what a forged
// header may make the decoder allocate.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "xcam/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The first byte picks the extension (OpenCV decodes by content, not name).
  static const char* const kNames[] = {"input.png", "input.jpg", "input.bmp", "input.tif"};
  const std::string name = size > 0 ? kNames[data[0] % 4] : kNames[0];
  const std::string file = xcam::fuzz::write_input(name, data, size);
  try {
    const cv::Mat rgb = xcam::load_rgb(file);
    if (rgb.type() != CV_8UC3 || rgb.empty()) __builtin_trap();
    xcam::Preprocess p;
    p.height = 17;
    p.width = 23;
    std::vector<float> out;
    xcam::preprocess_into(rgb, p, out);
    if (out.size() != 3u * 17u * 23u) __builtin_trap();
  } catch (const xcam::Error& e) {
    xcam::fuzz::check_refusal(e);
  }
  return 0;
}

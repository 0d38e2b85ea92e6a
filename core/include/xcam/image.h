// Image loading and preprocessing (OpenCV; no LibTorch).
#pragma once

#include <opencv2/core.hpp>

#include <string>
#include <vector>

#include "xcam/preprocess.h"

namespace xcam {

// Reads an image file as 8-bit RGB. Throws xcam::Error naming the file when it
// is missing, unreadable or not a decodable image.
cv::Mat load_rgb(const std::string& path);

namespace detail {
// A JPEG file's bytes decoded by libjpeg straight into `rgb` (8-bit RGB), the
// pixels cv::imread gives; false for what only OpenCV decodes as it should
// (EXIF orientation, CMYK, corrupt data, errors): load_rgb then asks OpenCV.
bool decode_jpeg(const unsigned char* data, size_t size, cv::Mat& rgb);
}  // namespace detail

// Appends 3 x height x width normalised floats (CHW) of `rgb` to `out`.
void preprocess_into(const cv::Mat& rgb, const Preprocess& p, std::vector<float>& out);
// The same written at `dst` (3 x height x width floats), for callers that
// fill one batch from several threads.
void preprocess_to(const cv::Mat& rgb, const Preprocess& p, float* dst);

}  // namespace xcam

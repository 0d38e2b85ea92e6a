// Image loading and preprocessing.
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <filesystem>
#include <fstream>

#include "xcam/error.h"
#include "xcam/image.h"

namespace xcam {

cv::Mat load_rgb(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto st = fs::status(path, ec);  // no exception: a symbolic-link loop is this item's error only
  XCAM_CHECK(!ec || st.type() == fs::file_type::not_found, "image '{}' cannot be reached: {}", path, ec.message());
  XCAM_CHECK(fs::exists(st), "image '{}' does not exist", path);
  XCAM_CHECK(fs::is_regular_file(st), "image '{}' is not a file", path);
  std::ifstream probe(path, std::ios::binary);
  XCAM_CHECK(probe.good(), "image '{}' cannot be read (permissions?)", path);
  cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
  XCAM_CHECK(!bgr.empty(), "image '{}' could not be decoded: corrupt or not an image (PNG, JPEG, BMP, ...)", path);
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

void preprocess_into(const cv::Mat& rgb, const Preprocess& p, std::vector<float>& out) {
  XCAM_CHECK(rgb.type() == CV_8UC3, "preprocess expects an 8-bit RGB image, got OpenCV type {}", rgb.type());
  cv::Mat resized = rgb;
  if (rgb.rows != p.height || rgb.cols != p.width)
    cv::resize(rgb, resized, cv::Size(static_cast<int>(p.width), static_cast<int>(p.height)), 0, 0,
               cv::INTER_LINEAR);
  const size_t plane = static_cast<size_t>(p.height * p.width);
  const size_t base = out.size();
  out.resize(base + 3 * plane);
  for (int y = 0; y < resized.rows; ++y) {
    const uint8_t* row = resized.ptr<uint8_t>(y);
    for (int x = 0; x < resized.cols; ++x) {
      for (int c = 0; c < 3; ++c) {
        const float v = static_cast<float>(row[3 * x + c]) / 255.f;
        out[base + c * plane + static_cast<size_t>(y) * p.width + x] = (v - p.mean[c]) / p.std[c];
      }
    }
  }
}

}  // namespace xcam

// Image loading and preprocessing.
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "xcam/error.h"
#include "xcam/image.h"

namespace xcam {

namespace {

// The formats xcam reads, told by their first bytes as OpenCV's decoders
// tell them (OpenCV picks a decoder by content, not by name); anything else
// is refused before OpenCV sees it. The reason is OpenCV's DICOM decoder
// (GDCM), which aborts the whole process on a malformed file (found by
// fuzzing) and so would take a batch with it: OpenCV tries it, after the
// formats below, on any file with "DICM" at byte 128. PNG, JPEG, BMP and TIFF
// are matched by the same fixed prefix OpenCV checks, so such a file goes to
// their decoders; WebP and PNM are checked further by OpenCV than here, so
// for them the DICOM marker is refused too.
bool known_image_format(const unsigned char* b, size_t n) {
  const auto at = [&](size_t offset, const char* sig, size_t len) {
    return n >= offset + len && std::memcmp(b + offset, sig, len) == 0;
  };
  if (at(0, "\x89PNG\r\n\x1a\n", 8)) return true;
  if (at(0, "\xff\xd8\xff", 3)) return true;
  if (at(0, "BM", 2)) return true;
  if (at(0, "II*\0", 4) || at(0, "MM\0*", 4)) return true;
  if (at(128, "DICM", 4)) return false;
  if (at(0, "RIFF", 4) && at(8, "WEBPVP8", 7)) return true;
  if (n >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '7' && (b[2] == ' ' || b[2] == '\t' || b[2] == '\r' || b[2] == '\n'))
    return true;
  return false;
}

}  // namespace

cv::Mat load_rgb(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto st = fs::status(path, ec);  // no exception: a symbolic-link loop is this item's error only
  XCAM_CHECK(!ec || st.type() == fs::file_type::not_found, "image '{}' cannot be reached: {}", path, ec.message());
  XCAM_CHECK(fs::exists(st), "image '{}' does not exist", path);
  XCAM_CHECK(fs::is_regular_file(st), "image '{}' is not a file", path);
  std::ifstream probe(path, std::ios::binary);
  XCAM_CHECK(probe.good(), "image '{}' cannot be read (permissions?)", path);
  unsigned char head[132] = {};
  probe.read(reinterpret_cast<char*>(head), sizeof head);
  XCAM_CHECK(known_image_format(head, static_cast<size_t>(probe.gcount())),
             "image '{}' could not be decoded: it is not a PNG, JPEG, BMP, TIFF, WebP or PNM file (by its first "
             "bytes); convert it to PNG",
             path);
  cv::Mat bgr;
  try {
    bgr = cv::imread(path, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {  // OpenCV 4.6 checks a header's size outside its own catch (found by fuzzing)
    XCAM_THROW("image '{}' could not be decoded: OpenCV refused its header ({})", path, e.err);
  }
  XCAM_CHECK(!bgr.empty(), "image '{}' could not be decoded: corrupt or not an image (PNG, JPEG, BMP, ...)", path);
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

void preprocess_into(const cv::Mat& rgb, const Preprocess& p, std::vector<float>& out) {
  const size_t base = out.size();
  out.resize(base + static_cast<size_t>(3 * p.height * p.width));
  preprocess_to(rgb, p, out.data() + base);
}

void preprocess_to(const cv::Mat& rgb, const Preprocess& p, float* dst) {
  XCAM_CHECK(rgb.type() == CV_8UC3, "preprocess expects an 8-bit RGB image, got OpenCV type {}", rgb.type());
  cv::Mat resized = rgb;
  if (rgb.rows != p.height || rgb.cols != p.width)
    cv::resize(rgb, resized, cv::Size(static_cast<int>(p.width), static_cast<int>(p.height)), 0, 0,
               cv::INTER_LINEAR);
  const size_t plane = static_cast<size_t>(p.height * p.width);
  // Each channel's 256 values, computed as the formula would per pixel (the
  // same floats), then looked up.
  float lut[3][256];
  for (int c = 0; c < 3; ++c)
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) / 255.f - p.mean[c]) / p.std[c];
  for (int y = 0; y < resized.rows; ++y) {
    const uint8_t* row = resized.ptr<uint8_t>(y);
    float* r = dst + static_cast<size_t>(y) * p.width;
    float* g = r + plane;
    float* b = g + plane;
    for (int x = 0; x < resized.cols; ++x) {
      r[x] = lut[0][row[3 * x]];
      g[x] = lut[1][row[3 * x + 1]];
      b[x] = lut[2][row[3 * x + 2]];
    }
  }
}

}  // namespace xcam

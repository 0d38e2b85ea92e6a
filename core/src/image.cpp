// Image loading and preprocessing.
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

// jpeglib.h uses size_t and FILE without including their headers.
#include <jpeglib.h>

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

// JPEG through libjpeg itself, the library OpenCV decodes JPEG with, set as
// OpenCV sets it (ISLOW DCT, fancy upsampling), so the pixels are the same:
// cv::imread spends about 100 us an image around a decode that takes 60 us
// for a 128 x 64 re-ID crop (its EXIF pass reads the file again). Whatever
// this path does not take as OpenCV would, OpenCV decodes: an EXIF block (the
// orientation OpenCV applies), CMYK or YCCK, a warning from libjpeg (corrupt
// data OpenCV decodes as far as it can, and says so), an error, more pixels
// than OpenCV accepts.
struct JpegErrors {
  jpeg_error_mgr mgr;
  std::jmp_buf failed;
};

[[noreturn]] void jpeg_failed(j_common_ptr c) { std::longjmp(reinterpret_cast<JpegErrors*>(c->err)->failed, 1); }

void jpeg_message(j_common_ptr c, int level) {
  if (level < 0) ++c->err->num_warnings;
}

bool has_exif(const jpeg_decompress_struct& c) {
  for (auto* m = c.marker_list; m; m = m->next)
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) return true;
  return false;
}

// The whole of a file whose first `n` bytes, `head`, have been read.
std::vector<unsigned char> read_rest(std::FILE* f, const unsigned char* head, size_t n) {
  std::vector<unsigned char> bytes(head, head + n);
  if (std::fseek(f, 0, SEEK_END) != 0) return bytes;
  const long size = std::ftell(f);
  if (size <= static_cast<long>(n) || std::fseek(f, static_cast<long>(n), SEEK_SET) != 0) return bytes;
  bytes.resize(static_cast<size_t>(size));
  bytes.resize(n + std::fread(bytes.data() + n, 1, bytes.size() - n, f));
  return bytes;
}

}  // namespace

bool detail::decode_jpeg(const unsigned char* data, size_t size, cv::Mat& rgb) {
  jpeg_decompress_struct c{};
  JpegErrors err{};
  c.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_failed;
  err.mgr.emit_message = jpeg_message;
  jpeg_create_decompress(&c);
  if (setjmp(err.failed)) {
    jpeg_destroy_decompress(&c);
    return false;
  }
  jpeg_mem_src(&c, data, static_cast<unsigned long>(size));
  jpeg_save_markers(&c, JPEG_APP0 + 1, 0xffff);
  jpeg_read_header(&c, TRUE);
  const bool plain = c.jpeg_color_space == JCS_YCbCr || c.jpeg_color_space == JCS_GRAYSCALE ||
                     c.jpeg_color_space == JCS_RGB;
  constexpr uint64_t kMaxPixels = uint64_t{1} << 30;  // OpenCV's CV_IO_MAX_IMAGE_PIXELS
  if (!plain || has_exif(c) || c.err->num_warnings > 0 ||
      static_cast<uint64_t>(c.image_width) * c.image_height > kMaxPixels) {
    jpeg_destroy_decompress(&c);
    return false;
  }
  c.out_color_space = JCS_RGB;
  c.dct_method = JDCT_ISLOW;
  c.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&c);
  rgb.create(static_cast<int>(c.output_height), static_cast<int>(c.output_width), CV_8UC3);
  while (c.output_scanline < c.output_height) {
    JSAMPROW row = rgb.ptr<uint8_t>(static_cast<int>(c.output_scanline));
    jpeg_read_scanlines(&c, &row, 1);
  }
  jpeg_finish_decompress(&c);
  const bool clean = c.err->num_warnings == 0;
  jpeg_destroy_decompress(&c);
  return clean;
}

cv::Mat load_rgb(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto st = fs::status(path, ec);  // no exception: a symbolic-link loop is this item's error only
  XCAM_CHECK(!ec || st.type() == fs::file_type::not_found, "image '{}' cannot be reached: {}", path, ec.message());
  XCAM_CHECK(fs::exists(st), "image '{}' does not exist", path);
  XCAM_CHECK(fs::is_regular_file(st), "image '{}' is not a file", path);
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  XCAM_CHECK(file != nullptr, "image '{}' cannot be read (permissions?)", path);
  unsigned char head[132] = {};
  const size_t got = std::fread(head, 1, sizeof head, file.get());
  XCAM_CHECK(known_image_format(head, got),
             "image '{}' could not be decoded: it is not a PNG, JPEG, BMP, TIFF, WebP or PNM file (by its first "
             "bytes); convert it to PNG",
             path);
  if (got >= 3 && std::memcmp(head, "\xff\xd8\xff", 3) == 0) {
    const auto bytes = read_rest(file.get(), head, got);
    cv::Mat rgb;
    if (detail::decode_jpeg(bytes.data(), bytes.size(), rgb)) return rgb;
  }
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

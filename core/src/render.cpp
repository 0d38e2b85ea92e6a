// Rendering with OpenCV; per-pixel math in the overlay kernel.
#include "xcam/render.h"

#include <libdeflate.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>

#include "xcam/error.h"
#include "xcam/io.h"
#include "xcam/kernels/normalize_resize.h"
#include "xcam/kernels/overlay.h"

namespace xcam {

Colormap parse_colormap(const std::string& name) {
  if (name == "jet") return Colormap::jet;
  if (name == "viridis") return Colormap::viridis;
  if (name == "turbo") return Colormap::turbo;
  if (name == "inferno") return Colormap::inferno;
  if (name == "gray") return Colormap::gray;
  XCAM_THROW("unknown colormap '{}'; choose jet, viridis, turbo, inferno or gray", name);
}

const std::array<uint8_t, 768>& colormap_lut(Colormap c) {
  static const auto tables = [] {
    std::array<std::array<uint8_t, 768>, 5> t{};
    cv::Mat ramp(1, 256, CV_8UC1);
    for (int i = 0; i < 256; ++i) ramp.at<uint8_t>(0, i) = static_cast<uint8_t>(i);
    const int codes[4] = {cv::COLORMAP_JET, cv::COLORMAP_VIRIDIS, cv::COLORMAP_TURBO, cv::COLORMAP_INFERNO};
    for (int m = 0; m < 4; ++m) {
      cv::Mat bgr;
      cv::applyColorMap(ramp, bgr, codes[m]);
      for (int i = 0; i < 256; ++i) {
        const auto px = bgr.at<cv::Vec3b>(0, i);
        t[m][3 * i] = px[2];
        t[m][3 * i + 1] = px[1];
        t[m][3 * i + 2] = px[0];
      }
    }
    for (int i = 0; i < 256; ++i) t[4][3 * i] = t[4][3 * i + 1] = t[4][3 * i + 2] = static_cast<uint8_t>(i);
    return t;
  }();
  return tables[static_cast<int>(c)];
}

std::vector<float> map_at_image_size(const std::vector<float>& map, int64_t map_h, int64_t map_w,
                                     const cv::Mat& rgb) {
  if (rgb.rows == map_h && rgb.cols == map_w) return map;
  std::vector<float> out(static_cast<size_t>(rgb.rows) * rgb.cols);
  kernels::resize_bilinear_cpu(map.data(), 1, map_h, map_w, out.data(), rgb.rows, rgb.cols, false);
  return out;
}

Rendered render_overlay(const cv::Mat& rgb, const std::vector<float>& map, float image_weight, Colormap c) {
  XCAM_CHECK(rgb.type() == CV_8UC3 && rgb.isContinuous(), "render_overlay expects a continuous 8-bit RGB image");
  XCAM_CHECK(map.size() == static_cast<size_t>(rgb.rows) * rgb.cols, "map has {} values for a {} x {} image",
             map.size(), rgb.rows, rgb.cols);
  XCAM_CHECK(image_weight >= 0.f && image_weight <= 1.f, "overlay alpha {} is outside [0, 1]", image_weight);
  Rendered r;
  r.heat.create(rgb.rows, rgb.cols, CV_8UC3);
  r.overlay.create(rgb.rows, rgb.cols, CV_8UC3);
  kernels::colormap_overlay_cpu(map.data(), rgb.ptr<uint8_t>(), rgb.rows, rgb.cols, colormap_lut(c).data(),
                                image_weight, r.heat.ptr<uint8_t>(), r.overlay.ptr<uint8_t>());
  return r;
}

namespace {

// The largest scale in [min_scale, scale] at which `text` fits in `width`.
double fit_scale(const std::string& text, int width, double scale, double min_scale) {
  int baseline = 0;
  while (scale > min_scale && cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, scale, 1, &baseline).width > width)
    scale -= 0.05;
  return std::max(scale, min_scale);
}

int text_width(const std::string& text, double scale) {
  int baseline = 0;
  return cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, scale, 1, &baseline).width;
}

}  // namespace

cv::Mat render_token_strip(const std::vector<std::string>& words, const std::vector<float>& values, Colormap c,
                           const std::string& title, int max_width) {
  XCAM_CHECK(words.size() == values.size() && !words.empty(), "token strip: {} words and {} values", words.size(),
             values.size());
  const int box_h = 30, gap = 4, pad = 6, title_h = title.empty() ? 0 : 30;
  const double scale = 0.55;
  // Boxes left to right, wrapped onto a new line where the next would pass max_width.
  std::vector<cv::Rect> boxes;
  int x = gap, y = title_h + gap, right = 0;
  for (const auto& w : words) {
    const int bw = text_width(w, scale) + 2 * pad;
    if (x > gap && x + bw + gap > max_width) {
      x = gap;
      y += box_h + gap;
    }
    boxes.emplace_back(x, y, bw, box_h);
    x += bw + gap;
    right = std::max(right, x);
  }
  const int width = std::max(right, title.empty() ? 0 : std::min(max_width, text_width(title, 0.5) + 8));
  cv::Mat strip(y + box_h + gap, width, CV_8UC3, cv::Scalar(255, 255, 255));
  const auto& lut = colormap_lut(c);
  for (size_t i = 0; i < words.size(); ++i) {
    const float v = std::isfinite(values[i]) ? std::clamp(values[i], 0.f, 1.f) : 0.f;
    const auto k = static_cast<size_t>(std::lround(v * 255.f)) * 3;
    const cv::Scalar colour(lut[k], lut[k + 1], lut[k + 2]);
    cv::rectangle(strip, boxes[i], colour, cv::FILLED);
    // Dark text on light boxes, light on dark (Rec. 601 luma).
    const double luma = 0.299 * lut[k] + 0.587 * lut[k + 1] + 0.114 * lut[k + 2];
    const cv::Scalar ink = luma > 128 ? cv::Scalar(0, 0, 0) : cv::Scalar(255, 255, 255);
    cv::putText(strip, words[i], cv::Point(boxes[i].x + pad, boxes[i].y + box_h - 10), cv::FONT_HERSHEY_SIMPLEX, scale,
                ink, 1, cv::LINE_AA);
  }
  if (!title.empty())
    cv::putText(strip, title, cv::Point(4, title_h - 10), cv::FONT_HERSHEY_SIMPLEX,
                fit_scale(title, strip.cols - 8, 0.5, 0.3), cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  return strip;
}

cv::Mat render_stack(const std::string& title, const std::vector<cv::Mat>& parts) {
  const int title_h = 30, gap = 4;
  int width = text_width(title, 0.5) + 8, height = title_h;
  for (const auto& p : parts) {
    width = std::max(width, p.cols);
    height += p.rows + gap;
  }
  cv::Mat out(height, width, CV_8UC3, cv::Scalar(255, 255, 255));
  int y = title_h;
  for (const auto& p : parts) {
    p.copyTo(out(cv::Rect(0, y, p.cols, p.rows)));
    y += p.rows + gap;
  }
  cv::putText(out, title, cv::Point(4, title_h - 10), cv::FONT_HERSHEY_SIMPLEX, 0.5, cv::Scalar(0, 0, 0), 1,
              cv::LINE_AA);
  return out;
}

cv::Mat render_grid(const std::string& title, const std::vector<std::string>& col_headers,
                    const std::vector<std::string>& row_labels, const std::vector<std::vector<cv::Mat>>& tiles,
                    int min_tile) {
  const size_t rows = tiles.size(), cols = col_headers.size();
  XCAM_CHECK(rows > 0 && cols > 0, "render_grid needs at least one row and one column, got {} x {}", rows, cols);
  XCAM_CHECK(row_labels.empty() || row_labels.size() == rows, "render_grid: {} row labels for {} rows",
             row_labels.size(), rows);
  const cv::Mat* first = nullptr;
  int tallest = 0;
  for (const auto& row : tiles) {
    XCAM_CHECK(row.size() == cols, "render_grid: a row has {} tiles for {} column headers", row.size(), cols);
    for (const auto& t : row) {
      if (t.empty()) continue;
      XCAM_CHECK(t.type() == CV_8UC3, "render_grid expects 8-bit RGB tiles");
      if (!first) first = &t;
      tallest = std::max(tallest, t.rows);
    }
  }
  const int tile_h = std::max(min_tile, tallest);
  const int tile_w =
      first ? std::max(1, static_cast<int>(std::lround(static_cast<double>(first->cols) * tile_h / first->rows)))
            : tile_h;
  const int gap = 4, title_h = 30, header_h = 22, pad = 4;
  const double text_scale = 0.45;

  int label_w = 0;
  for (const auto& l : row_labels) label_w = std::max(label_w, text_width(l, text_scale) + 2 * pad);
  std::vector<int> col_w(cols), col_x(cols);
  int width = label_w;
  for (size_t c = 0; c < cols; ++c) {
    col_w[c] = std::max(tile_w, text_width(col_headers[c], text_scale) + 2 * pad);
    col_x[c] = width;
    width += col_w[c] + gap;
  }
  const int height = title_h + header_h + static_cast<int>(rows) * (tile_h + gap);
  cv::Mat grid(height, width, CV_8UC3, cv::Scalar(255, 255, 255));
  const cv::Scalar black(0, 0, 0);

  const double title_scale = fit_scale(title, width - 2 * pad, 0.6, 0.3);
  cv::putText(grid, title, cv::Point(pad, title_h - 10), cv::FONT_HERSHEY_SIMPLEX, title_scale, black, 1,
              cv::LINE_AA);
  for (size_t c = 0; c < cols; ++c) {
    const int w = text_width(col_headers[c], text_scale);
    cv::putText(grid, col_headers[c], cv::Point(col_x[c] + (col_w[c] - w) / 2, title_h + header_h - 7),
                cv::FONT_HERSHEY_SIMPLEX, text_scale, black, 1, cv::LINE_AA);
  }
  for (size_t r = 0; r < rows; ++r) {
    const int y = title_h + header_h + static_cast<int>(r) * (tile_h + gap);
    if (!row_labels.empty())
      cv::putText(grid, row_labels[r], cv::Point(pad, y + tile_h / 2 + 5), cv::FONT_HERSHEY_SIMPLEX, text_scale,
                  black, 1, cv::LINE_AA);
    for (size_t c = 0; c < cols; ++c) {
      const cv::Rect cell(col_x[c] + (col_w[c] - tile_w) / 2, y, tile_w, tile_h);
      cv::Mat roi = grid(cell);
      const cv::Mat& t = tiles[r][c];
      if (t.empty()) {
        roi.setTo(cv::Scalar(224, 224, 224));
        const int w = text_width("n/a", text_scale);
        cv::putText(grid, "n/a", cv::Point(cell.x + (tile_w - w) / 2, y + tile_h / 2 + 5), cv::FONT_HERSHEY_SIMPLEX,
                    text_scale, black, 1, cv::LINE_AA);
      } else {
        cv::resize(t, roi, roi.size(), 0, 0, t.rows == tile_h && t.cols == tile_w ? cv::INTER_NEAREST : cv::INTER_LINEAR);
      }
    }
  }
  return grid;
}

namespace {

void put_u32(std::string& out, uint32_t v) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                     static_cast<char>(v)};
  out.append(b, 4);
}

// A PNG chunk: length, type, data, and the CRC of type and data.
void put_chunk(std::string& out, const char* type, const uint8_t* data, size_t size) {
  put_u32(out, static_cast<uint32_t>(size));
  const size_t start = out.size();
  out.append(type, 4);
  out.append(reinterpret_cast<const char*>(data), size);
  put_u32(out, libdeflate_crc32(0, out.data() + start, size + 4));
}

constexpr size_t kKeepBytes = size_t{16} << 20;

struct Compressor {
  libdeflate_compressor* c = libdeflate_alloc_compressor(1);
  ~Compressor() { libdeflate_free_compressor(c); }
};

}  // namespace

std::string encode_png_fast(const cv::Mat& rgb) {
  XCAM_CHECK(rgb.type() == CV_8UC3 && !rgb.empty(), "PNG encoding expects an 8-bit RGB image, got OpenCV type {}",
             rgb.type());
  // Every row with the Sub filter (each byte less the one a pixel to its
  // left), as OpenCV's fast setting does; deflated by libdeflate at level 1.
  const size_t w = static_cast<size_t>(rgb.cols), h = static_cast<size_t>(rgb.rows), row = 3 * w;
  thread_local std::vector<uint8_t> raw;
  thread_local std::vector<uint8_t> packed;
  thread_local Compressor compressor;
  raw.resize((row + 1) * h);
  for (size_t y = 0; y < h; ++y) {
    const uint8_t* in = rgb.ptr<uint8_t>(static_cast<int>(y));
    uint8_t* out = raw.data() + y * (row + 1);
    out[0] = 1;  // Sub
    std::copy(in, in + std::min<size_t>(3, row), out + 1);
    for (size_t i = 3; i < row; ++i) out[1 + i] = static_cast<uint8_t>(in[i] - in[i - 3]);
  }
  XCAM_CHECK(compressor.c != nullptr, "PNG encoding: libdeflate could not allocate a compressor (out of memory)");
  packed.resize(libdeflate_zlib_compress_bound(compressor.c, raw.size()));
  const size_t n = libdeflate_zlib_compress(compressor.c, raw.data(), raw.size(), packed.data(), packed.size());
  XCAM_CHECK(n > 0, "PNG encoding: libdeflate failed on a {} x {} image", w, h);

  std::string png("\x89PNG\r\n\x1a\n", 8);
  uint8_t ihdr[13] = {};
  for (int i = 0; i < 4; ++i) {
    ihdr[i] = static_cast<uint8_t>(w >> (24 - 8 * i));
    ihdr[4 + i] = static_cast<uint8_t>(h >> (24 - 8 * i));
  }
  ihdr[8] = 8;   // bits per channel
  ihdr[9] = 2;   // RGB; compression, filter method and interlace stay 0
  png.reserve(8 + 25 + n + 12 + 12);
  put_chunk(png, "IHDR", ihdr, sizeof ihdr);
  constexpr size_t kMaxChunk = size_t{1} << 30;  // a chunk's length must stay below 2^31
  for (size_t at = 0; at < n; at += kMaxChunk) put_chunk(png, "IDAT", packed.data() + at, std::min(kMaxChunk, n - at));
  put_chunk(png, "IEND", nullptr, 0);
  // The buffers stay with the writer thread for the next image; not a large
  // image's, which would keep its size resident for the rest of the run.
  if (raw.capacity() > kKeepBytes) std::vector<uint8_t>().swap(raw);
  if (packed.capacity() > kKeepBytes) std::vector<uint8_t>().swap(packed);
  return png;
}

void write_png(const std::string& path, const cv::Mat& rgb, int level) {
  XCAM_CHECK(level >= -1 && level <= 9, "PNG compression level must be -1 (fast) or 0..9, got {}", level);
  if (level < 0) {
    write_file_atomic(path, encode_png_fast(rgb));
    return;
  }
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<uint8_t> buf;
  const std::vector<int> params = {cv::IMWRITE_PNG_COMPRESSION, level};
  XCAM_CHECK(cv::imencode(".png", bgr, buf, params), "PNG encoding failed for '{}'", path);
  write_file_atomic(path, std::string(buf.begin(), buf.end()));
}

}  // namespace xcam

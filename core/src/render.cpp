// Rendering with OpenCV; per-pixel math in the overlay kernel.
#include "xcam/render.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>

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

cv::Mat render_panel(const cv::Mat& rgb, const Rendered& r, const std::string& title) {
  const int tile_h = std::max(224, rgb.rows);
  const int tile_w = static_cast<int>(std::lround(static_cast<double>(rgb.cols) * tile_h / rgb.rows));
  const int gap = 4, title_h = 34;
  cv::Mat panel(title_h + tile_h, 3 * tile_w + 2 * gap, CV_8UC3, cv::Scalar(255, 255, 255));
  const cv::Mat* tiles[3] = {&rgb, &r.heat, &r.overlay};
  const char* captions[3] = {"image", "heatmap", "overlay"};
  for (int i = 0; i < 3; ++i) {
    cv::Mat roi = panel(cv::Rect(i * (tile_w + gap), title_h, tile_w, tile_h));
    cv::resize(*tiles[i], roi, roi.size(), 0, 0, tiles[i] == &rgb ? cv::INTER_LINEAR : cv::INTER_NEAREST);
    cv::putText(panel, captions[i], cv::Point(i * (tile_w + gap) + 4, title_h + tile_h - 6),
                cv::FONT_HERSHEY_SIMPLEX, 0.45, cv::Scalar(255, 255, 255), 1, cv::LINE_AA);
  }
  double scale = 0.6;
  int baseline = 0;
  while (scale > 0.3 &&
         cv::getTextSize(title, cv::FONT_HERSHEY_SIMPLEX, scale, 1, &baseline).width > panel.cols - 8)
    scale -= 0.05;
  cv::putText(panel, title, cv::Point(4, title_h - 11), cv::FONT_HERSHEY_SIMPLEX, scale, cv::Scalar(0, 0, 0), 1,
              cv::LINE_AA);
  return panel;
}

void write_png(const std::string& path, const cv::Mat& rgb) {
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<uint8_t> buf;
  XCAM_CHECK(cv::imencode(".png", bgr, buf), "PNG encoding failed for '{}'", path);
  write_file_atomic(path, std::string(buf.begin(), buf.end()));
}

}  // namespace xcam

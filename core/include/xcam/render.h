// Heatmaps, overlays and panels (SPEC section 4).
#pragma once

#include <opencv2/core.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace xcam {

enum class Colormap { jet, viridis, turbo, inferno, gray };
Colormap parse_colormap(const std::string& name);  // throws xcam::Error listing the names
const std::array<uint8_t, 768>& colormap_lut(Colormap c);  // 256 RGB triples

// `map` is at the model's input size (map_h x map_w); it is resized
// bilinearly to the image's size when they differ.
std::vector<float> map_at_image_size(const std::vector<float>& map, int64_t map_h, int64_t map_w, const cv::Mat& rgb);

struct Rendered {
  cv::Mat heat;     // RGB colormapped map
  cv::Mat overlay;  // RGB (1 - a) * heat + a * image, rounded once
};
// `map` at the image's size; image_weight is a in SPEC section 4.
Rendered render_overlay(const cv::Mat& rgb, const std::vector<float>& map, float image_weight, Colormap c);

// A map over text tokens as a heat strip (RGB): one box per word, filled
// with the colormap's colour of its value in [0, 1], the word written in it;
// boxes wrap onto new lines at max_width pixels. `title` (optional) above.
cv::Mat render_token_strip(const std::vector<std::string>& words, const std::vector<float>& values, Colormap c,
                           const std::string& title = "", int max_width = 1024);

// RGB pictures one under the other, left-aligned on white, under a title line.
cv::Mat render_stack(const std::string& title, const std::vector<cv::Mat>& parts);

// A titled grid of RGB tiles: `tiles[r][c]` (any sizes; an empty Mat is a
// grey tile marked "n/a"), `col_headers` above the columns, `row_labels`
// (optional) left of the rows. Every tile is scaled to tile_h x tile_w:
// tile_h = max(min_tile, the tallest tile), tile_w by the first tile's
// aspect. A column is as wide as its tile or its header, whichever is wider,
// the tile centred. Geometry, in pixels: height = 30 (title) + 22 (headers)
// + rows * (tile_h + 4); width = label column + sum over columns of
// (column width + 4), the label column as wide as the widest row label.
cv::Mat render_grid(const std::string& title, const std::vector<std::string>& col_headers,
                    const std::vector<std::string>& row_labels, const std::vector<std::vector<cv::Mat>>& tiles,
                    int min_tile = 128);

// Writes an RGB image as PNG, atomically. Throws xcam::Error naming the file.
// level -1 (fast, the default): encode_png_fast; 0..9: OpenCV's encoder at
// that zlib level with adaptive filters, smaller files for more time
// (docs/results.md measures the trade-off).
void write_png(const std::string& path, const cv::Mat& rgb, int level = -1);

// The bytes of a PNG of an 8-bit RGB image: the Sub filter on every row,
// deflated by libdeflate at level 1 (3-4x faster than OpenCV's encoder at
// its fast setting, and smaller: bench_kernels BM_Png*).
std::string encode_png_fast(const cv::Mat& rgb);

}  // namespace xcam

// Localisation metrics (SPEC section 5). The pointing game is inline: the
// plugins' dataset tasks (word grounding) score their maps with it too.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "xcam/retrieval.h"

namespace xcam {

struct Box {
  std::string label;
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // pixels; x1, y1 exclusive
};

// Ground truth per image file name. Reads
//   {"images": {"a.png": [{"label": "cat", "box": [x0, y0, x1, y1]}, ...]}}
// (or the same mapping at the top level). Throws xcam::Error naming the file
// and the entry that is malformed.
std::map<std::string, std::vector<Box>> read_boxes(const std::string& path);

// Pointing-game tolerance in pixels: 15 at 224 px, scaled down with the
// shorter side of smaller images.
inline double pointing_tolerance(int64_t height, int64_t width) {
  const double shorter = static_cast<double>(std::min(height, width));
  return shorter < 224.0 ? 15.0 * shorter / 224.0 : 15.0;
}

namespace detail {
// Distance from pixel centre (x, y) to a box: 0 inside.
inline double distance_to_box(double x, double y, const Box& b) {
  const double dx = std::max({b.x0 - x, 0.0, x - (b.x1 - 1)});
  const double dy = std::max({b.y0 - y, 0.0, y - (b.y1 - 1)});
  return std::hypot(dx, dy);
}
inline bool near_any(double x, double y, const std::vector<Box>& boxes, double tol) {
  return std::any_of(boxes.begin(), boxes.end(), [&](const Box& b) { return distance_to_box(x, y, b) <= tol; });
}
}  // namespace detail

struct PointingResult {
  bool hit = false;
  int64_t peak_x = 0, peak_y = 0;  // argmax of the map (first in row-major order)
  double energy = 0;               // energy pointing game: map mass inside the boxes
};

// `map` is height x width at image resolution; `boxes` are the boxes of the
// target class in that image (a class may appear more than once).
inline PointingResult pointing_game(const float* map, int64_t height, int64_t width, const std::vector<Box>& boxes) {
  PointingResult r;
  int64_t best = 0;
  double total = 0, inside = 0;
  for (int64_t i = 0; i < height * width; ++i) {
    if (map[i] > map[best]) best = i;
    total += map[i];
  }
  for (int64_t y = 0; y < height; ++y)
    for (int64_t x = 0; x < width; ++x) {
      const bool in_box = std::any_of(boxes.begin(), boxes.end(), [&](const Box& b) {
        return x >= b.x0 && x < b.x1 && y >= b.y0 && y < b.y1;
      });
      if (in_box) inside += map[y * width + x];
    }
  r.peak_x = best % width;
  r.peak_y = best / width;
  r.hit = detail::near_any(static_cast<double>(r.peak_x), static_cast<double>(r.peak_y), boxes,
                           pointing_tolerance(height, width));
  r.energy = total > 0 ? inside / total : 0.0;
  return r;
}

// Hit if the image centre lies within tolerance of a box: the baseline.
inline bool centre_point_hit(int64_t height, int64_t width, const std::vector<Box>& boxes) {
  return detail::near_any(static_cast<double>(width / 2), static_cast<double>(height / 2), boxes,
                          pointing_tolerance(height, width));
}

// Score = mean over classes of hits / (hits + misses).
class PointingGame {
 public:
  void add(const std::string& cls, bool hit) {
    auto& c = counts_[cls];
    (hit ? c.first : c.second) += 1;
  }
  double score() const {
    if (counts_.empty()) return 0.0;
    double sum = 0;
    for (const auto& [cls, c] : counts_) sum += static_cast<double>(c.first) / (c.first + c.second);
    return sum / static_cast<double>(counts_.size());
  }
  const std::map<std::string, std::pair<int, int>>& per_class() const { return counts_; }  // hits, misses
  int total() const {
    int n = 0;
    for (const auto& [cls, c] : counts_) n += c.first + c.second;
    return n;
  }

 private:
  std::map<std::string, std::pair<int, int>> counts_;
};


}  // namespace xcam

// Localisation metrics (SPEC section 5).
#pragma once

#include <algorithm>
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
double pointing_tolerance(int64_t height, int64_t width);

struct PointingResult {
  bool hit = false;
  int64_t peak_x = 0, peak_y = 0;  // argmax of the map (first in row-major order)
  double energy = 0;               // energy pointing game: map mass inside the boxes
};

// `map` is height x width at image resolution; `boxes` are the boxes of the
// target class in that image (a class may appear more than once).
PointingResult pointing_game(const float* map, int64_t height, int64_t width, const std::vector<Box>& boxes);

// Hit if the image centre lies within tolerance of a box: the baseline.
bool centre_point_hit(int64_t height, int64_t width, const std::vector<Box>& boxes);

// Score = mean over classes of hits / (hits + misses).
class PointingGame {
 public:
  void add(const std::string& cls, bool hit);
  double score() const;
  const std::map<std::string, std::pair<int, int>>& per_class() const { return counts_; }  // hits, misses
  int total() const;

 private:
  std::map<std::string, std::pair<int, int>> counts_;
};


}  // namespace xcam

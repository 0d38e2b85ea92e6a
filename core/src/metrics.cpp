// Pointing game and energy pointing game.
#include "xcam/metrics.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include "xcam/error.h"

namespace xcam {

std::map<std::string, std::vector<Box>> read_boxes(const std::string& path) {
  std::ifstream in(path);
  XCAM_CHECK(in.good(), "boxes file '{}' cannot be read", path);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    XCAM_THROW("boxes file '{}' is not valid JSON: {}", path, e.what());
  }
  const auto& images = j.contains("images") ? j["images"] : j;
  XCAM_CHECK(images.is_object(), "boxes file '{}': expected an object mapping image file names to box lists",
             path);
  std::map<std::string, std::vector<Box>> out;
  for (const auto& [name, list] : images.items()) {
    XCAM_CHECK(list.is_array(), "boxes file '{}': entry '{}' must be a list of {{label, box}}", path, name);
    for (const auto& item : list) {
      XCAM_CHECK(item.is_object() && item.contains("label") && item.contains("box") && item["box"].is_array() &&
                     item["box"].size() == 4,
                 "boxes file '{}': entry '{}' has an item without label and box [x0, y0, x1, y1]: {}", path, name,
                 item.dump());
      Box b;
      b.label = item["label"].is_string() ? item["label"].get<std::string>() : item["label"].dump();
      b.x0 = item["box"][0].get<double>();
      b.y0 = item["box"][1].get<double>();
      b.x1 = item["box"][2].get<double>();
      b.y1 = item["box"][3].get<double>();
      XCAM_CHECK(b.x1 > b.x0 && b.y1 > b.y0, "boxes file '{}': entry '{}' has an empty box {}", path, name,
                 item["box"].dump());
      out[name].push_back(b);
    }
  }
  return out;
}

double pointing_tolerance(int64_t height, int64_t width) {
  const double shorter = static_cast<double>(std::min(height, width));
  return shorter < 224.0 ? 15.0 * shorter / 224.0 : 15.0;
}

namespace {
// Distance from pixel centre (x, y) to a box: 0 inside.
double distance_to_box(double x, double y, const Box& b) {
  const double dx = std::max({b.x0 - x, 0.0, x - (b.x1 - 1)});
  const double dy = std::max({b.y0 - y, 0.0, y - (b.y1 - 1)});
  return std::hypot(dx, dy);
}
bool near_any(double x, double y, const std::vector<Box>& boxes, double tol) {
  return std::any_of(boxes.begin(), boxes.end(), [&](const Box& b) { return distance_to_box(x, y, b) <= tol; });
}
}  // namespace

PointingResult pointing_game(const float* map, int64_t height, int64_t width, const std::vector<Box>& boxes) {
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
  r.hit = near_any(static_cast<double>(r.peak_x), static_cast<double>(r.peak_y), boxes,
                   pointing_tolerance(height, width));
  r.energy = total > 0 ? inside / total : 0.0;
  return r;
}

bool centre_point_hit(int64_t height, int64_t width, const std::vector<Box>& boxes) {
  return near_any(static_cast<double>(width / 2), static_cast<double>(height / 2), boxes,
                  pointing_tolerance(height, width));
}

void PointingGame::add(const std::string& cls, bool hit) {
  auto& c = counts_[cls];
  (hit ? c.first : c.second) += 1;
}

double PointingGame::score() const {
  if (counts_.empty()) return 0.0;
  double sum = 0;
  for (const auto& [cls, c] : counts_) sum += static_cast<double>(c.first) / (c.first + c.second);
  return sum / static_cast<double>(counts_.size());
}

int PointingGame::total() const {
  int n = 0;
  for (const auto& [cls, c] : counts_) n += c.first + c.second;
  return n;
}


}  // namespace xcam

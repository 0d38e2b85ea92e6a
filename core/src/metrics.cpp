// The ground-truth boxes file (the pointing game itself is inline in the header).
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

}  // namespace xcam

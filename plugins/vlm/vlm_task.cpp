// The vlm plugin's dataset task `count` (plugins/vlm/README.md, "The count
// task"): every sample asked its question as a whole image and as crops
// re-encoded at their own grids (TaskHost::crop), one count and one map per
// strategy:
//   global  the image as it is
//   crop    one crop (a box in fractions of the image): its own count, held
//           against the objects whose centres lie in it, its map pasted
//   dense   a rows x cols grid of tiles: the tiles' counts summed, their
//           maps pasted back
//   hybrid  the global image and its four quadrants: the quadrants' counts
//           summed; the map is the mean of the global map and the pasted
//           quadrants' map
//   boxes   the user's crop boxes: counts summed (objects in the boxes'
//           union are the truth), maps pasted
// Each crop's map is normalised on its own (it answers its own question);
// pasted maps are averaged where crops overlap, zero where none lies, then
// min-max normalised. Per strategy: MAE, RMSE, exact share, hotspot
// coverage (the share of counted objects whose box holds a map value >=
// `hotspot`) and the map energy outside the objects' boxes beside the area
// outside them; the worst counting errors get a panel.
// Sharded (docs/scaling.md): shard I of N counts the I-th of N runs of the
// samples, writes their maps and their lines (count_part.json); the merge
// joins the lines, computes the figures over every sample and explains the
// worst samples again for their panels: what one run writes.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>

#include "vlm.h"
#include "xcam/plugin.h"

namespace xcam::vlm {

namespace {

using Frac = std::array<double, 4>;  // x0, y0, x1, y1 as fractions of the image
using Pix = std::array<int64_t, 4>;  // the same in pixels, x1 and y1 exclusive

const std::vector<std::string> kStrategies{"global", "crop", "dense", "hybrid", "boxes"};

struct CountTask {
  std::vector<std::string> strategies;
  Frac crop{0.25, 0.25, 0.75, 0.75};
  int64_t rows = 3, cols = 3;
  std::vector<Frac> boxes;
  double hotspot = 0.5;
  int64_t worst = 5;
  // Set by the host for sharded runs (docs/scaling.md): shard I of N counts
  // its run of the samples; the merge reads the shards' parts.
  int64_t shard = -1, shards = 0;
  std::vector<std::string> merge;  // the shards' task folders
};

Frac fraction_box(const nlohmann::json& v, const std::string& what) {
  XCAM_CHECK(v.is_array() && v.size() == 4 && std::all_of(v.begin(), v.end(), [](auto& x) { return x.is_number(); }),
             "vlm task count: {}={} must be [x0, y0, x1, y1], fractions of the image in [0, 1]", what, v.dump());
  const Frac f{v[0].get<double>(), v[1].get<double>(), v[2].get<double>(), v[3].get<double>()};
  XCAM_CHECK(0 <= f[0] && f[0] < f[2] && f[2] <= 1 && 0 <= f[1] && f[1] < f[3] && f[3] <= 1,
             "vlm task count: {}={} must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
             "(fractions of the image, so that one box fits images of any size)",
             what, v.dump());
  return f;
}

CountTask parse_count(const nlohmann::json& j) {
  CountTask t;
  for (const auto& [key, value] : j.items()) {
    if (key == "name") continue;
    if (key == "strategies") {
      const auto list = value.is_string() ? nlohmann::json::array({value}) : value;
      XCAM_CHECK(list.is_array() && !list.empty(), "vlm task count: strategies={} must be a list of {}", value.dump(),
                 fmt::join(kStrategies, ", "));
      for (const auto& s : list) {
        XCAM_CHECK(s.is_string() && std::count(kStrategies.begin(), kStrategies.end(), s.get<std::string>()),
                   "vlm task count: strategy {} is not one of {}", s.dump(), fmt::join(kStrategies, ", "));
        if (!std::count(t.strategies.begin(), t.strategies.end(), s.get<std::string>()))
          t.strategies.push_back(s.get<std::string>());
      }
    } else if (key == "crop") {
      t.crop = fraction_box(value, "crop");
    } else if (key == "grid") {
      XCAM_CHECK(value.is_array() && value.size() == 2 && value[0].is_number_integer() &&
                     value[1].is_number_integer() && value[0].get<int64_t>() >= 1 && value[1].get<int64_t>() >= 1 &&
                     value[0].get<int64_t>() * value[1].get<int64_t>() >= 2,
                 "vlm task count: grid={} must be [rows, cols], at least two tiles", value.dump());
      t.rows = value[0].get<int64_t>();
      t.cols = value[1].get<int64_t>();
    } else if (key == "boxes") {
      XCAM_CHECK(value.is_array() && !value.empty(),
                 "vlm task count: boxes={} must be a list of [x0, y0, x1, y1] (fractions of the image)", value.dump());
      for (size_t k = 0; k < value.size(); ++k) t.boxes.push_back(fraction_box(value[k], fmt::format("boxes[{}]", k)));
    } else if (key == "hotspot") {
      XCAM_CHECK(value.is_number() && value.get<double>() > 0 && value.get<double>() <= 1,
                 "vlm task count: hotspot={} must be a map value in (0, 1]", value.dump());
      t.hotspot = value.get<double>();
    } else if (key == "worst") {
      XCAM_CHECK(value.is_number_integer() && value.get<int64_t>() >= 0,
                 "vlm task count: worst={} must be an integer >= 0 (samples with a panel)", value.dump());
      t.worst = value.get<int64_t>();
    } else if (key == "shard") {
      XCAM_CHECK(value.is_object() && value.value("index", -1) >= 0 && value.value("index", -1) < value.value("count", 0),
                 "vlm task count: shard={} must be {{\"index\": I, \"count\": N}} with 0 <= I < N", value.dump());
      t.shard = value["index"].get<int64_t>();
      t.shards = value["count"].get<int64_t>();
    } else if (key == "merge") {
      XCAM_CHECK(value.is_array() && !value.empty() && std::all_of(value.begin(), value.end(), [](auto& d) { return d.is_string(); }),
                 "vlm task count: merge={} must be the list of the shards' folders", value.dump());
      for (const auto& d : value) t.merge.push_back(d.get<std::string>());
    } else {
      XCAM_THROW("vlm task count has no key '{}'; it takes strategies, crop, grid, boxes, hotspot, worst (and shard, "
                 "merge from `xcam run --shard`, `xcam merge`)",
                 key);
    }
  }
  if (t.strategies.empty()) {
    t.strategies = {"global", "crop", "dense", "hybrid"};
    if (!t.boxes.empty()) t.strategies.push_back("boxes");
  }
  XCAM_CHECK(!std::count(t.strategies.begin(), t.strategies.end(), "boxes") || !t.boxes.empty(),
             "vlm task count: strategy boxes needs `boxes: [[x0, y0, x1, y1], ...]` (fractions of the image)");
  return t;
}

int64_t rounded(double v) { return static_cast<int64_t>(std::llround(v)); }

Pix to_pixels(const Frac& f, int64_t H, int64_t W) {
  auto at = [](double v, int64_t n) { return std::clamp<int64_t>(rounded(v * double(n)), 0, n); };
  return {at(f[0], W), at(f[1], H), at(f[2], W), at(f[3], H)};
}

// rows x cols tiles covering the image exactly.
std::vector<Frac> tiles(int64_t rows, int64_t cols) {
  std::vector<Frac> out;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      out.push_back({double(c) / double(cols), double(r) / double(rows), double(c + 1) / double(cols),
                     double(r + 1) / double(rows)});
  return out;
}

// A sample's ground truth from its manifest line: "count" (required) and
// "boxes" ([[x0, y0, x1, y1], ...] of the counted objects, pixels of the
// image as read; optional).
struct Truth {
  int64_t count = 0;
  std::vector<Pix> boxes;
  bool has_boxes = false;
};

Truth truth_of(const Sample& s) {
  Truth t;
  const auto c = s.meta.find("count");
  XCAM_CHECK(c != s.meta.end(),
             "vlm task count: sample '{}' has no \"count\"; give each manifest line the true count (and the objects' "
             "\"boxes\", [[x0, y0, x1, y1], ...] in pixels, for coverage and background)",
             s.id);
  const auto n = nlohmann::json::parse(c->second, nullptr, false);
  XCAM_CHECK(n.is_number_integer() && n.get<int64_t>() >= 0, "vlm task count: sample '{}': \"count\" {} must be an "
             "integer >= 0", s.id, c->second);
  t.count = n.get<int64_t>();
  const auto b = s.meta.find("boxes");
  if (b == s.meta.end()) return t;
  const auto j = nlohmann::json::parse(b->second, nullptr, false);
  XCAM_CHECK(j.is_array(), "vlm task count: sample '{}': \"boxes\" must be a list of [x0, y0, x1, y1], got {}", s.id,
             b->second);
  for (const auto& box : j) {
    XCAM_CHECK(box.is_array() && box.size() == 4 &&
                   std::all_of(box.begin(), box.end(), [](const auto& v) { return v.is_number(); }) &&
                   box[2].get<double>() > box[0].get<double>() && box[3].get<double>() > box[1].get<double>(),
               "vlm task count: sample '{}': box {} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0", s.id,
               box.dump());
    t.boxes.push_back({rounded(box[0].get<double>()), rounded(box[1].get<double>()), rounded(box[2].get<double>()),
                       rounded(box[3].get<double>())});
  }
  XCAM_CHECK(static_cast<int64_t>(t.boxes.size()) == t.count,
             "vlm task count: sample '{}' has count {} but {} boxes; the boxes are the counted objects'", s.id,
             t.count, t.boxes.size());
  t.has_boxes = true;
  return t;
}

bool centre_in(const Pix& object, const Pix& region) {
  const double cx = 0.5 * double(object[0] + object[2]), cy = 0.5 * double(object[1] + object[3]);
  return cx >= double(region[0]) && cx < double(region[2]) && cy >= double(region[1]) && cy < double(region[3]);
}

// One region's explanation: its map (at its sample's input size) and count.
struct Region {
  Pix box{};
  MapResult map;
  std::optional<int64_t> count;  // empty: the answer is not a number
  std::string error;             // the region could not be explained
};

// One strategy's outcome on one sample.
struct Outcome {
  std::string strategy;
  std::optional<int64_t> count, truth;
  std::vector<const Region*> parts;  // the regions it counted
  at::Tensor map;                    // h x w at the whole image's input size, [0, 1]
  std::vector<Pix> objects;          // the counted objects it is held against
  Pix region{};                      // where its map lies (the whole image but for crop)
  std::string error;
};

// `m`'s map as an h x w float tensor.
at::Tensor map_tensor(const MapResult& m) {
  return torch::from_blob(const_cast<float*>(m.map.data()), {m.height, m.width}, at::kFloat).clone();
}

at::Tensor normalised(at::Tensor m) {
  const double lo = m.min().item<double>(), hi = m.max().item<double>();
  return hi > lo ? (m - lo) / (hi - lo) : at::zeros_like(m);
}

// The regions' maps pasted onto an h x w frame of an H x W image: averaged
// where they overlap, zero where none lies, min-max normalised.
at::Tensor paste(const std::vector<const Region*>& parts, int64_t h, int64_t w, int64_t H, int64_t W) {
  auto sum = at::zeros({h, w}, at::kFloat), cover = at::zeros({h, w}, at::kFloat);
  const double sy = double(h) / double(H), sx = double(w) / double(W);
  for (const Region* r : parts) {
    const int64_t x0 = rounded(double(r->box[0]) * sx), y0 = rounded(double(r->box[1]) * sy);
    const int64_t x1 = std::max(x0 + 1, rounded(double(r->box[2]) * sx)),
                  y1 = std::max(y0 + 1, rounded(double(r->box[3]) * sy));
    const std::vector<int64_t> size{y1 - y0, x1 - x0};
    const auto piece =
        at::upsample_bilinear2d(map_tensor(r->map).view({1, 1, r->map.height, r->map.width}), size, false)[0][0];
    sum.slice(0, y0, y1).slice(1, x0, x1).add_(piece);
    cover.slice(0, y0, y1).slice(1, x0, x1).add_(1);
  }
  return normalised(sum / cover.clamp_min(1));
}

// Hotspot coverage and background energy of a map (h x w at the input size
// of an H x W image) against objects in image pixels, within `region`.
struct Localisation {
  int64_t objects = 0, covered = 0;
  double background = 0, background_area = 0;  // shares of the region's energy and area
};

Localisation localise(const at::Tensor& map, const std::vector<Pix>& objects, const Pix& region, int64_t H, int64_t W,
                      double hotspot) {
  Localisation out;
  const int64_t h = map.size(0), w = map.size(1);
  const double sy = double(h) / double(H), sx = double(w) / double(W);
  auto cells = [&](const Pix& b) {
    return std::array<int64_t, 4>{std::clamp<int64_t>(int64_t(std::floor(b[0] * sx)), 0, w - 1),
                                  std::clamp<int64_t>(int64_t(std::floor(b[1] * sy)), 0, h - 1),
                                  std::clamp<int64_t>(int64_t(std::ceil(b[2] * sx)), 1, w),
                                  std::clamp<int64_t>(int64_t(std::ceil(b[3] * sy)), 1, h)};
  };
  auto inside = at::zeros({h, w}, at::kBool);
  for (const auto& o : objects) {
    const auto c = cells(o);
    const auto cell = map.slice(0, c[1], c[3]).slice(1, c[0], c[2]);
    ++out.objects;
    if (cell.numel() > 0 && cell.max().item<double>() >= hotspot) ++out.covered;
    inside.slice(0, c[1], c[3]).slice(1, c[0], c[2]).fill_(true);
  }
  const auto r = cells(region);
  const auto m = map.slice(0, r[1], r[3]).slice(1, r[0], r[2]).to(at::kDouble);
  const auto outside = inside.slice(0, r[1], r[3]).slice(1, r[0], r[2]).logical_not();
  const double total = m.sum().item<double>();
  out.background = total > 0 ? (m * outside).sum().item<double>() / total : 1.0;
  out.background_area = outside.to(at::kDouble).mean().item<double>();
  return out;
}

// Sums of one strategy over the samples.
struct Tally {
  int64_t n = 0, exact = 0, failed = 0;
  double abs = 0, sq = 0;
  int64_t objects = 0, covered = 0, localised = 0;
  double background = 0, background_area = 0;
};

struct SampleRun {
  size_t index = 0;
  std::string id;
  Truth truth;
  int64_t H = 0, W = 0;
  std::map<Pix, Region> regions;  // every region explained, the whole image's among them
  const Region* global = nullptr;
  std::vector<Outcome> outcomes;  // point into `regions`
};

// A strategy's map as a record of the sample: the whole image's map with the
// strategy's values; the answer facts only where they are the strategy's.
MapResult strategy_map(const SampleRun& s, const Outcome& o, const Localisation* loc) {
  MapResult m = s.global->map;
  if (o.strategy != "global") m.meta.clear();
  m.image_id = s.id;
  m.on = "image";
  m.target_label = o.strategy;
  m.map.assign(o.map.data_ptr<float>(), o.map.data_ptr<float>() + o.map.numel());
  m.height = o.map.size(0);
  m.width = o.map.size(1);
  m.meta["strategy"] = o.strategy;
  m.meta["count"] = o.count ? std::to_string(*o.count) : "";
  m.meta["true_count"] = o.truth ? std::to_string(*o.truth) : "";
  m.meta["crops"] = std::to_string(o.parts.size());
  if (loc) {
    m.meta["coverage"] = loc->objects ? fmt::format("{:.4f}", double(loc->covered) / double(loc->objects)) : "";
    m.meta["background_share"] = fmt::format("{:.4f}", loc->background);
  }
  return m;
}

// Sample i explained under every strategy of the task: every region any
// strategy needs explained once, each strategy's count and map.
SampleRun explain_sample(TaskHost& host, size_t i, const CountTask& task) {
  SampleRun s;
  s.index = i;
  s.id = host.id(i);
  const Sample sample = host.sample(i);
  s.truth = truth_of(sample);
  XCAM_CHECK(!sample.meta.count("answer"),
             "vlm task count: sample '{}' gives an \"answer\"; counting needs the model's own answers on every "
             "crop: remove the key",
             s.id);
  const auto hw = host.image_size(i);
  s.H = hw[0];
  s.W = hw[1];
  auto region = [&](const Pix& box) -> const Region& {
    auto it = s.regions.find(box);
    if (it != s.regions.end()) return it->second;
    Region r;
    r.box = box;
    try {
      const bool whole = box == Pix{0, 0, s.W, s.H};
      const size_t k =
          whole ? i : host.crop(i, box, fmt::format("{}@{}_{}_{}_{}", s.id, box[0], box[1], box[2], box[3]));
      const auto maps = host.explain({k});
      XCAM_CHECK(!maps.empty(), "no map");
      r.map = maps.front();
      const auto c = r.map.meta.find("answer_count");
      if (c != r.map.meta.end()) r.count = std::stoll(c->second);
      else r.error = fmt::format("the answer '{}' is not a number", r.map.meta["answer"]);
    } catch (const std::exception& e) {
      r.error = e.what();
    }
    return s.regions.emplace(box, std::move(r)).first->second;
  };
  const Region& global = region({0, 0, s.W, s.H});
  s.global = &global;
  const int64_t h = global.map.height, w = global.map.width;  // 0: the whole image failed
  for (const auto& name : task.strategies) {
    Outcome o;
    o.strategy = name;
    o.region = {0, 0, s.W, s.H};
    std::vector<Frac> parts;
    if (name == "global") parts = {{0, 0, 1, 1}};
    else if (name == "crop") parts = {task.crop};
    else if (name == "dense") parts = tiles(task.rows, task.cols);
    else if (name == "hybrid") parts = tiles(2, 2);
    else parts = task.boxes;
    for (const auto& f : parts) o.parts.push_back(&region(to_pixels(f, s.H, s.W)));
    if (name == "crop") o.region = o.parts.front()->box;
    // The truth: the image's count where the parts tile it, else the
    // objects whose centres lie in a part.
    const bool tiling = name == "global" || name == "dense" || name == "hybrid";
    if (tiling) {
      o.truth = s.truth.count;
      o.objects = s.truth.boxes;
    } else if (s.truth.has_boxes) {
      for (const auto& b : s.truth.boxes)
        if (std::any_of(o.parts.begin(), o.parts.end(), [&](const Region* r) { return centre_in(b, r->box); }))
          o.objects.push_back(b);
      o.truth = static_cast<int64_t>(o.objects.size());
    }
    int64_t sum = 0;
    for (const Region* r : o.parts) {
      if (!r->count) {
        o.error = fmt::format("crop [{}, {}, {}, {}]: {}", r->box[0], r->box[1], r->box[2], r->box[3], r->error);
        break;
      }
      sum += *r->count;
    }
    if (o.error.empty() && h > 0) {
      o.count = sum;
      o.map = name == "global" ? map_tensor(global.map) : paste(o.parts, h, w, s.H, s.W);
      if (name == "hybrid") o.map = normalised(0.5f * (map_tensor(global.map) + o.map));
    }
    s.outcomes.push_back(std::move(o));
  }
  return s;
}

// Sample s's line in count.json: per strategy its count, error and
// localisation; `maps` receives the strategies' maps, to be written.
nlohmann::json sample_line(const SampleRun& s, const CountTask& task, std::vector<MapResult>& maps) {
  nlohmann::json line{{"id", s.id}, {"true_count", s.truth.count}, {"strategies", nlohmann::json::object()}};
  for (const auto& o : s.outcomes) {
    nlohmann::json entry{{"crops", o.parts.size()}};
    if (!o.error.empty() || !o.count) {
      entry["error"] = o.error.empty() ? "the whole image could not be explained" : o.error;
      std::cerr << "xcam: vlm task count: " << s.id << " [" << o.strategy
                << "] skipped: " << entry["error"].get<std::string>() << "\n";
      line["strategies"][o.strategy] = entry;
      continue;
    }
    entry["count"] = *o.count;
    std::optional<Localisation> loc;
    if (o.truth) {
      entry["true_count"] = *o.truth;
      entry["error"] = *o.count - *o.truth;
    }
    if (s.truth.has_boxes) {
      loc = localise(o.map, o.objects, o.region, s.H, s.W, task.hotspot);
      entry["objects"] = loc->objects;
      entry["covered"] = loc->covered;
      entry["background_share"] = loc->background;
      entry["background_area"] = loc->background_area;
    }
    nlohmann::json crops = nlohmann::json::array();
    for (const Region* r : o.parts) crops.push_back({{"box", r->box}, {"count", *r->count}});
    entry["per_crop"] = crops;
    line["strategies"][o.strategy] = entry;
    maps.push_back(strategy_map(s, o, loc ? &*loc : nullptr));
  }
  return line;
}

// The dataset figures per strategy, from the samples' lines (a whole run's
// or the shards' joined: the same sums in the same order).
nlohmann::json summarise(const nlohmann::json& lines, const CountTask& task, TaskHost& host) {
  std::map<std::string, Tally> tally;
  for (const auto& line : lines)
    for (const auto& [name, e] : line.at("strategies").items()) {
      Tally& t = tally[name];
      if (!e.contains("count")) {
        ++t.failed;
        continue;
      }
      if (e.contains("true_count")) {
        const int64_t err = e.at("error").get<int64_t>();
        ++t.n;
        t.abs += double(std::llabs(err));
        t.sq += double(err * err);
        t.exact += err == 0;
      }
      if (e.contains("objects")) {
        t.objects += e.at("objects").get<int64_t>();
        t.covered += e.at("covered").get<int64_t>();
        t.background += e.at("background_share").get<double>();
        t.background_area += e.at("background_area").get<double>();
        ++t.localised;
      }
    }
  nlohmann::json summary = nlohmann::json::object();
  for (const auto& name : task.strategies) {
    const Tally& t = tally[name];
    nlohmann::json j{{"samples", t.n}, {"failed", t.failed}};
    if (t.n > 0) {
      j["mae"] = t.abs / double(t.n);
      j["rmse"] = std::sqrt(t.sq / double(t.n));
      j["exact"] = double(t.exact) / double(t.n);
      host.add_metric(name + "_mae", t.abs / double(t.n));
      host.add_metric(name + "_rmse", std::sqrt(t.sq / double(t.n)));
      host.add_metric(name + "_exact", double(t.exact) / double(t.n));
    }
    if (t.objects > 0) {
      j["coverage"] = double(t.covered) / double(t.objects);
      host.add_metric(name + "_coverage", double(t.covered) / double(t.objects));
    }
    if (t.localised > 0) {
      j["background_share"] = t.background / double(t.localised);
      j["background_area"] = t.background_area / double(t.localised);
      host.add_metric(name + "_background_share", t.background / double(t.localised));
      host.add_metric(name + "_background_area", t.background_area / double(t.localised));
    }
    summary[name] = j;
  }
  return summary;
}

// A sample's largest counting error over the strategies with a truth (0:
// none wrong or none counted).
int64_t largest_error(const nlohmann::json& line) {
  int64_t worst = 0;
  for (const auto& [name, e] : line.at("strategies").items())
    if (e.contains("count") && e.contains("true_count")) worst = std::max<int64_t>(worst, std::llabs(e.at("error").get<int64_t>()));
  return worst;
}

// Keeps the `k` largest errors seen, ties to the earlier sample: the
// samples that get a panel, in panel order.
struct Worst {
  size_t k = 0;
  std::vector<std::pair<int64_t, size_t>> top;  // largest error, sample
  // Whether sample i with error e is among them; `dropped` receives a sample
  // that no longer is.
  bool add(int64_t e, size_t i, std::optional<size_t>& dropped) {
    dropped.reset();
    if (e <= 0 || k == 0) return false;
    auto at = std::find_if(top.begin(), top.end(), [&](const auto& p) { return p.first < e; });
    if (static_cast<size_t>(at - top.begin()) >= k) return false;
    top.insert(at, {e, i});
    if (top.size() > k) {
      dropped = top.back().second;
      top.pop_back();
    }
    return true;
  }
};

// The shards' parts joined: their lines in the run's sample order, each part
// holding the ids this run gives those samples.
nlohmann::json read_parts(const TaskHost& host, const CountTask& task) {
  nlohmann::json lines = nlohmann::json::array();
  for (const auto& d : task.merge) {
    const auto path = std::filesystem::path(d) / "count_part.json";
    std::ifstream in(path);
    XCAM_CHECK(in.good(), "vlm task count: shard folder {} has no count_part.json: run that shard (it starts its "
               "samples over), then merge again", d);
    const auto part = nlohmann::json::parse(in, nullptr, false);
    XCAM_CHECK(part.is_object() && part.contains("samples") && part.contains("begin"),
               "vlm task count: {} is not a shard's part (cut short?): run that shard again, then merge", path.string());
    XCAM_CHECK(part["begin"].get<size_t>() == lines.size(),
               "vlm task count: the shards' parts do not follow each other: {} starts at sample {}, expected {}",
               path.string(), part["begin"].dump(), lines.size());
    for (const auto& line : part["samples"]) {
      const size_t i = lines.size();
      XCAM_CHECK(i < host.size() && line.at("id").get<std::string>() == host.id(i),
                 "vlm task count: {} has sample '{}' where this run has '{}': the shards ran other inputs; run them "
                 "again", path.string(), line.at("id").get<std::string>(), i < host.size() ? host.id(i) : "none");
      lines.push_back(line);
    }
  }
  XCAM_CHECK(lines.size() == host.size(), "vlm task count: the shards' parts hold {} of the {} samples", lines.size(),
             host.size());
  return lines;
}

}  // namespace

void run_count_task(TaskHost& host, const std::string& task_json, bool answer_given) {
  const CountTask task = parse_count(nlohmann::json::parse(task_json));
  XCAM_CHECK(!answer_given,
             "vlm task count: the plugin option `answer` is set; counting needs the model's own answers on every "
             "crop: remove it");
  const size_t n = host.size();
  XCAM_CHECK(n > 0, "vlm task count: the run has no inputs");
  // Shard I of N counts the I-th of N runs of samples and writes its lines
  // (count_part.json); its maps are written as a whole run's are.
  size_t begin = 0, end = n;
  if (task.shard >= 0) {
    begin = static_cast<size_t>(task.shard) * n / static_cast<size_t>(task.shards);
    end = static_cast<size_t>(task.shard + 1) * n / static_cast<size_t>(task.shards);
  }
  // The model's first calls in a process run TorchScript's profiling
  // passes, whose sums may differ from later calls' in the last bits: two
  // untimed calls first, as a plain run makes, so that a sample's maps do
  // not depend on where it falls in a run or a shard.
  auto warm_up = [&host](size_t i) {
    try {
      for (int k = 0; k < 2; ++k) host.explain({i});
    } catch (const std::exception&) {
      // the sample's own pass reports it
    }
  };
  Worst worst{static_cast<size_t>(task.worst), {}};
  std::map<size_t, SampleRun> kept;  // the samples with a panel so far
  nlohmann::json lines = nlohmann::json::array();
  if (!task.merge.empty()) {
    lines = read_parts(host, task);
    std::optional<size_t> dropped;
    for (size_t i = 0; i < n; ++i) worst.add(largest_error(lines[i]), i, dropped);
  } else {
    if (begin < end) warm_up(begin);
    for (size_t i = begin; i < end; ++i) {
      SampleRun s = explain_sample(host, i, task);
      std::vector<MapResult> maps;
      lines.push_back(sample_line(s, task, maps));
      if (!maps.empty()) host.write_maps(maps);
      std::optional<size_t> dropped;
      if (task.shard < 0 && worst.add(largest_error(lines.back()), i, dropped)) kept.emplace(i, std::move(s));
      if (dropped) kept.erase(*dropped);
    }
  }
  if (task.shard >= 0) {
    host.write_json("count_part", nlohmann::json{{"shard", {{"index", task.shard}, {"count", task.shards}}},
                                                 {"begin", begin},
                                                 {"samples", lines}}
                                      .dump(1));
    host.add_metric("counted_samples", static_cast<double>(end - begin));
    return;
  }
  const auto summary = summarise(lines, task, host);

  // The worst counting errors: a panel each, the image and every
  // strategy's map (a merge explains those samples again).
  // A re-run's panels replace the last run's, whose worst samples may differ.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(host.output_dir(), ec)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("worst_", 0) == 0 && e.path().extension() == ".png") std::filesystem::remove(e.path(), ec);
  }
  nlohmann::json panels = nlohmann::json::array();
  if (!task.merge.empty() && !worst.top.empty()) warm_up(worst.top.front().second);
  for (size_t k = 0; k < worst.top.size(); ++k) {
    const auto [error, i] = worst.top[k];
    if (!kept.count(i)) kept.emplace(i, explain_sample(host, i, task));
    const SampleRun& s = kept.at(i);
    std::vector<MapResult> tiles_;
    for (const auto& o : s.outcomes) {
      if (!o.count) continue;
      if (tiles_.empty()) {
        MapResult image = strategy_map(s, o, nullptr);
        image.meta["panel_tile"] = "image";
        image.meta["panel_header"] = fmt::format("{} (true {})", s.id, s.truth.count);
        tiles_.push_back(image);
      }
      MapResult m = strategy_map(s, o, nullptr);
      m.meta["panel_header"] = fmt::format("{}: {}{}", o.strategy, *o.count, o.truth ? fmt::format(" (true {})", *o.truth) : "");
      if (o.truth) m.meta["panel_border"] = *o.count == *o.truth ? "green" : "red";
      tiles_.push_back(m);
    }
    if (tiles_.empty()) continue;
    const std::string name = fmt::format("worst_{:02d}_{}", k + 1, s.id);
    host.write_panel(name, fmt::format("{}: true count {}, largest error {}", s.id, s.truth.count, error), tiles_);
    panels.push_back({{"id", s.id}, {"largest_error", error}, {"panel", name + ".png"}});
  }
  auto given = nlohmann::json::parse(task_json);
  given.erase("merge");
  host.write_json("count", nlohmann::json{{"task", given},
                                          {"hotspot", task.hotspot},
                                          {"strategies", summary},
                                          {"worst", panels},
                                          {"samples", lines}}
                               .dump(1));
}

}  // namespace xcam::vlm

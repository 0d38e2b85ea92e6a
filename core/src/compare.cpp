// Method comparison: the table of each method and layer set, its text, CSV
// and JSON forms, and the per-image grids of overlays.
#include "xcam/compare.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <tuple>

#include "xcam/error.h"
#include "xcam/image.h"
#include "xcam/io.h"
#include "xcam/render.h"
#include "xcam/strings.h"
#include "json_text.h"

namespace xcam {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string>& compare_metrics() {
  static const std::vector<std::string> names{"pointing", "energy", "deletion", "insertion", "drop", "increase", "ms"};
  return names;
}

bool higher_is_better(const std::string& metric) {
  return metric == "pointing" || metric == "centre" || metric == "energy" || metric == "insertion" ||
         metric == "increase";
}

void check_compare_metric(const std::string& metric) {
  const auto& known = compare_metrics();
  if (std::find(known.begin(), known.end(), metric) != known.end()) return;
  const auto near = closest_names(metric, known, 1);
  XCAM_THROW("unknown sort key '{}'{}; choose from: {}", metric,
             near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near[0]), fmt::join(known, ", "));
}

std::optional<double> CompareRow::value(const std::string& metric) const {
  if (metric == "pointing") return pointing;
  if (metric == "centre") return centre;
  if (metric == "energy") return energy;
  if (metric == "deletion") return deletion;
  if (metric == "insertion") return insertion;
  if (metric == "drop") return drop;
  if (metric == "increase") return increase;
  if (metric == "ms") return ms;
  check_compare_metric(metric);
  return std::nullopt;
}

std::vector<CompareRow> compare_rows(const std::vector<ItemRecord>& records, const std::string& sort_by) {
  check_compare_metric(sort_by);
  struct Mean {
    double sum = 0;
    int n = 0;
    void add(const std::optional<double>& v) {
      if (v) sum += *v, ++n;
    }
    std::optional<double> get(double scale = 1) const {
      return n > 0 ? std::optional<double>(scale * sum / n) : std::nullopt;
    }
  };
  struct Group {
    std::string method, layers;
    PointingGame pg, centre;
    Mean energy, deletion, insertion, drop, increase;
    std::map<std::string, int> maps_of_image;
    std::vector<const ItemRecord*> items;
  };
  std::vector<Group> groups;
  for (const auto& r : records) {
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const Group& g) { return g.method == r.method && g.layers == r.layers; });
    if (it == groups.end()) {
      groups.push_back({});
      it = std::prev(groups.end());
      it->method = r.method;
      it->layers = r.layers;
    }
    Group& g = *it;
    g.items.push_back(&r);
    ++g.maps_of_image[r.image];
    if (r.pointing_hit) {
      g.pg.add(r.target, *r.pointing_hit);
      g.centre.add(r.target, r.centre_hit.value_or(false));
    }
    g.energy.add(r.energy);
    g.deletion.add(r.deletion);
    g.insertion.add(r.insertion);
    g.drop.add(r.drop);
    if (r.increase) g.increase.add(*r.increase ? 1.0 : 0.0);
  }

  std::vector<CompareRow> rows;
  for (const auto& g : groups) {
    CompareRow row;
    row.method = g.method;
    row.layers = g.layers;
    row.maps = static_cast<int>(g.items.size());
    if (g.pg.total() > 0) {
      row.pointing = g.pg.score();
      row.centre = g.centre.score();
    }
    row.energy = g.energy.get();
    row.deletion = g.deletion.get();
    row.insertion = g.insertion.get();
    row.drop = g.drop.get();
    row.increase = g.increase.get(100.0);
    // A record's timings are its image's (one explain call for all of the
    // image's targets): the image's time counts once, shared by its maps.
    double total = 0;
    for (const auto* r : g.items)
      total += (r->forward_ms + r->backward_ms + r->cam_ms) / g.maps_of_image.at(r->image);
    row.ms = g.items.empty() ? 0.0 : total / static_cast<double>(g.items.size());
    rows.push_back(std::move(row));
  }
  const bool higher = higher_is_better(sort_by);
  std::stable_sort(rows.begin(), rows.end(), [&](const CompareRow& a, const CompareRow& b) {
    const auto va = a.value(sort_by), vb = b.value(sort_by);
    if (!va || !vb) return va.has_value() && !vb.has_value();
    return higher ? *va > *vb : *va < *vb;
  });
  return rows;
}

namespace {

struct Column {
  const char* name;
  int decimals;
};
// The metric columns in table order, with the decimals the text table shows.
const std::vector<Column>& metric_columns() {
  static const std::vector<Column> cols{{"pointing", 3}, {"centre", 3}, {"energy", 3}, {"deletion", 4},
                                        {"insertion", 4}, {"drop", 2},  {"increase", 2}, {"ms", 2}};
  return cols;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// A grid tile: the record's overlay PNG, else its .npy map rendered on the
// image; empty when the record has neither.
cv::Mat grid_tile(const std::string& dir, const std::string& overlay, const std::string& npy, const cv::Mat& rgb,
                  const OutputOptions& out, Colormap cmap) {
  cv::Mat tile;
  if (!overlay.empty()) {
    const std::string path = (fs::path(dir) / overlay).string();
    try {
      tile = load_rgb(path);
    } catch (const Error& e) {
      XCAM_THROW("overlay '{}' could not be read; re-run with --force to write it again ({})", path, e.what());
    }
  } else if (!npy.empty() && !rgb.empty()) {
    const auto map = read_npy((fs::path(dir) / npy).string());
    XCAM_CHECK(map.shape.size() == 2 && map.shape[0] == rgb.rows && map.shape[1] == rgb.cols && !map.f32.empty(),
               "map '{}' is not a float32 {} x {} array (the image's size); re-run with --force", npy, rgb.rows,
               rgb.cols);
    tile = render_overlay(rgb, map.f32, out.alpha, cmap).overlay;
  }
  return tile;
}

}  // namespace

std::string format_comparison(const std::vector<CompareRow>& rows, const std::string& sort_by) {
  std::vector<std::string> header{"method", "layers", "maps"};
  std::vector<std::string> better{"", "", ""};
  for (const auto& c : metric_columns()) {
    header.push_back(c.name);
    better.push_back(std::string(c.name) == "centre" ? "baseline"
                                                     : higher_is_better(c.name) ? "higher" : "lower");
  }
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows) {
    std::vector<std::string> line{r.method, r.layers, std::to_string(r.maps)};
    for (const auto& c : metric_columns()) {
      const auto v = r.value(c.name);
      line.push_back(v ? fmt::format("{:.{}f}", *v, c.decimals) : "-");
    }
    cells.push_back(std::move(line));
  }
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) {
    width[i] = std::max(header[i].size(), better[i].size());
    for (const auto& line : cells) width[i] = std::max(width[i], line[i].size());
  }
  auto put = [&](const std::vector<std::string>& line) {
    std::string s;
    for (size_t i = 0; i < line.size(); ++i) {
      if (i) s += "  ";
      // text columns left-aligned, numbers right-aligned
      s += i < 2 ? fmt::format("{:<{}}", line[i], width[i]) : fmt::format("{:>{}}", line[i], width[i]);
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s + "\n";
  };
  std::string out = fmt::format(
      "comparison sorted by {} ({} is better); drop and increase in percent, ms per map (explanation only)\n",
      sort_by, higher_is_better(sort_by) ? "higher" : "lower");
  out += put(header);
  out += put(better);
  for (const auto& line : cells) out += put(line);
  return out;
}

void write_comparison(const std::string& dir, const std::vector<CompareRow>& rows, const std::string& sort_by) {
  json j{{"sort_by", sort_by}, {"higher_is_better", json::object()}, {"rows", json::array()}};
  std::ostringstream csv;
  csv << "method,layers,maps";
  for (const auto& c : metric_columns()) {
    csv << ',' << c.name;
    j["higher_is_better"][c.name] = higher_is_better(c.name);
  }
  csv << '\n';
  for (const auto& r : rows) {
    json row{{"method", r.method}, {"layers", r.layers}, {"maps", r.maps}};
    csv << csv_field(r.method) << ',' << csv_field(r.layers) << ',' << r.maps;
    for (const auto& c : metric_columns()) {
      const auto v = r.value(c.name);
      row[c.name] = v ? json(*v) : json(nullptr);
      csv << ',' << (v ? fmt::format("{:.6f}", *v) : "");
    }
    csv << '\n';
    j["rows"].push_back(std::move(row));
  }
  write_file_atomic((fs::path(dir) / "compare.json").string(), json_text(j, 2) + "\n");
  write_file_atomic((fs::path(dir) / "compare.csv").string(), csv.str());
}

std::vector<std::string> write_grids(const std::string& dir, const std::vector<ItemRecord>& records,
                                     const std::vector<SampleSpec>& samples, const OutputOptions& out) {
  const Colormap cmap = parse_colormap(out.colormap);
  std::vector<std::string> methods, layer_sets;
  // One grid per sample, image it is drawn on and target: (id, on, target), in order of first appearance.
  using Key = std::tuple<std::string, std::string, std::string>;
  std::vector<Key> items;
  std::map<Key, std::map<std::pair<std::string, std::string>, const ItemRecord*>> cells;  // -> (layers, method)
  auto add_once = [](auto& v, const auto& x) {
    if (std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
  };
  for (const auto& r : records) {
    if (r.on == "text") continue;  // maps over words: no image to lay them on
    add_once(methods, r.method);
    add_once(layer_sets, r.layers);
    add_once(items, Key{r.id, r.on, r.target});
    cells[{r.id, r.on, r.target}][{r.layers, r.method}] = &r;
  }
  // The picture each grid's maps are drawn on: the sample's image, or its other named image.
  std::map<std::pair<std::string, std::string>, std::string> path_of;
  const auto ids = sample_ids(samples);
  for (size_t i = 0; i < samples.size(); ++i) {
    path_of[{ids[i], "image"}] = samples[i].image;
    for (const auto& [name, p] : samples[i].images) path_of[{ids[i], name}] = p;
  }

  std::vector<std::string> written;
  if (items.empty()) return written;
  const fs::path grid_dir = fs::path(dir) / "grid";
  std::error_code ec;
  fs::create_directories(grid_dir, ec);
  XCAM_CHECK(!ec, "cannot create the grid directory '{}': {}", grid_dir.string(), ec.message());

  std::string loaded_path;
  cv::Mat rgb;
  for (const auto& [id, on, target] : items) {
    const auto where = path_of.find({id, on});
    const std::string path = where != path_of.end() ? where->second : "";
    if (path != loaded_path) {
      loaded_path = path;
      rgb = path.empty() ? cv::Mat() : load_rgb(path);
    }
    const std::string image = path.empty() ? id : fs::path(path).filename().string();
    const auto& here = cells.at({id, on, target});
    std::vector<std::vector<cv::Mat>> tiles;
    double score = 0;
    bool have_score = false;
    for (const auto& layers : layer_sets) {
      std::vector<cv::Mat> row{rgb};
      for (const auto& method : methods) {
        const auto it = here.find({layers, method});
        cv::Mat tile;
        if (it != here.end()) {
          const ItemRecord& r = *it->second;
          if (!have_score) score = r.score, have_score = true;
          std::string overlay, npy;
          for (const auto& o : r.outputs) {
            if (ends_with(o, ".png") && !ends_with(o, "_panel.png")) overlay = o;  // not the sample's panel
            if (ends_with(o, ".npy")) npy = o;
          }
          try {
            tile = grid_tile(dir, overlay, npy, rgb, out, cmap);
          } catch (const Error& e) {  // one missing tile: shown as n/a, the grids go on
            std::cerr << "xcam: warning: comparison grid of " << image << " [" << target << "]: " << e.what()
                      << "\n";
          }
        }
        row.push_back(tile);
      }
      tiles.push_back(std::move(row));
    }
    std::vector<std::string> headers{"image"};
    headers.insert(headers.end(), methods.begin(), methods.end());
    const std::string title = have_score ? fmt::format("{} | target {} | p={:.3f}", image, target, score)
                                         : fmt::format("{} | target {}", image, target);
    // Named as the maps are: <id>_<target>, <id>_<name>_<target> on another named image.
    const std::string file =
        (grid_dir / (id + "_" + (on == "image" ? "" : safe_name(on) + "_") + safe_name(target) + ".png")).string();
    write_png(file, render_grid(title, headers, layer_sets, tiles));
    written.push_back(file);
  }
  return written;
}

}  // namespace xcam

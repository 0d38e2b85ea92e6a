// YAML experiments and the output writer shared with `xcam explain`.
#include "xcam/experiment.h"

#include <glob.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "xcam/compare.h"
#include "xcam/error.h"
#include "xcam/io.h"
#include "xcam/render.h"
#include "xcam/strings.h"

namespace xcam {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------- YAML ----

namespace {

struct Yaml {
  std::string file;

  [[noreturn]] void fail(const YAML::Node& n, const std::string& msg) const {
    XCAM_THROW("{}:{}: {}", file, n.Mark().is_null() ? 0 : n.Mark().line + 1, msg);
  }

  void only_keys(const YAML::Node& map, const std::string& where, const std::vector<std::string>& known) const {
    if (!map.IsMap()) fail(map, fmt::format("'{}' must be a mapping of keys to values", where));
    for (const auto& kv : map) {
      const auto key = kv.first.as<std::string>();
      if (std::find(known.begin(), known.end(), key) != known.end()) continue;
      const auto near = closest_names(key, known, 1);
      fail(kv.first, fmt::format("unknown key '{}' in {}{}; known keys: {}", key, where,
                                 near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near[0]),
                                 fmt::join(known, ", ")));
    }
  }

  template <typename T>
  T as(const YAML::Node& n, const std::string& key, const char* expected) const {
    try {
      return n.as<T>();
    } catch (const YAML::Exception&) {
      fail(n, fmt::format("key '{}' must be {}", key, expected));
    }
  }

  // A scalar or a list of scalars, as strings.
  std::vector<std::string> strings(const YAML::Node& n, const std::string& key) const {
    std::vector<std::string> out;
    if (n.IsScalar()) {
      out.push_back(n.as<std::string>());
    } else if (n.IsSequence()) {
      for (const auto& item : n) out.push_back(as<std::string>(item, key, "a string or a list of strings"));
    } else {
      fail(n, fmt::format("key '{}' must be a string or a list of strings", key));
    }
    return out;
  }

  std::array<float, 3> triple(const YAML::Node& n, const std::string& key) const {
    if (!n.IsSequence() || n.size() != 3) fail(n, fmt::format("key '{}' must be a list of 3 numbers (R, G, B)", key));
    return {as<float>(n[0], key, "a number"), as<float>(n[1], key, "a number"), as<float>(n[2], key, "a number")};
  }
};

std::string resolve(const std::string& base, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  return (fs::path(base) / p).lexically_normal().string();
}

}  // namespace

ExperimentConfig load_experiment(const std::string& path) {
  XCAM_CHECK(fs::exists(path), "experiment file '{}' does not exist", path);
  Yaml y{path};
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    XCAM_THROW("{}:{}: invalid YAML: {}", path, e.mark.line + 1, e.msg);
  }
  if (!root.IsMap()) y.fail(root, "an experiment is a mapping with at least model, layers and inputs");
  y.only_keys(root, "the experiment", {"name", "model", "plugin", "plugin_dirs", "plugin_options", "labels",
                                       "preprocess", "layers", "methods", "targets", "inputs", "batch_size",
                                       "threads", "device", "aug_smooth", "eigen_smooth", "perturb_chunk", "winograd",
                                       "outputs", "compare"});
  const std::string base = fs::path(path).parent_path().string();
  ExperimentConfig c;
  c.file = path;
  c.name = root["name"] ? y.as<std::string>(root["name"], "name", "a string") : fs::path(path).stem().string();

  if (!root["model"]) y.fail(root, "missing key 'model': the TorchScript file to explain");
  auto& e = c.explainer;
  e.model = resolve(base, y.as<std::string>(root["model"], "model", "a file path"));
  if (root["plugin"]) e.plugin = y.as<std::string>(root["plugin"], "plugin", "a plugin name");
  if (root["plugin_dirs"])
    for (const auto& d : y.strings(root["plugin_dirs"], "plugin_dirs")) e.plugin_dirs.push_back(resolve(base, d));
  if (root["plugin_options"]) {
    const auto& po = root["plugin_options"];
    if (!po.IsMap()) y.fail(po, "key 'plugin_options' must be a mapping");
    json j = json::object();
    for (const auto& kv : po) j[kv.first.as<std::string>()] = kv.second.as<std::string>();
    e.plugin_options = j.dump();
  }
  if (root["labels"]) e.labels_file = resolve(base, y.as<std::string>(root["labels"], "labels", "a file path"));
  if (const auto& pre = root["preprocess"]) {
    y.only_keys(pre, "preprocess", {"size", "mean", "std"});
    if (pre["size"]) {
      if (!pre["size"].IsSequence() || pre["size"].size() != 2) y.fail(pre["size"], "key 'size' must be [height, width]");
      e.height = y.as<int64_t>(pre["size"][0], "size", "an integer");
      e.width = y.as<int64_t>(pre["size"][1], "size", "an integer");
      if (e.height <= 0 || e.width <= 0) y.fail(pre["size"], "key 'size' must be positive");
    }
    if (pre["mean"]) e.mean = y.triple(pre["mean"], "mean");
    if (pre["std"]) e.std = y.triple(pre["std"], "std");
  }
  if (root["device"]) e.device = y.as<std::string>(root["device"], "device", "cpu or cuda");
  if (root["aug_smooth"]) e.aug_smooth = y.as<bool>(root["aug_smooth"], "aug_smooth", "true or false");
  if (root["eigen_smooth"]) e.eigen_smooth = y.as<bool>(root["eigen_smooth"], "eigen_smooth", "true or false");
  if (root["perturb_chunk"]) {
    e.score_chunk = y.as<int64_t>(root["perturb_chunk"], "perturb_chunk", "a positive integer");
    if (e.score_chunk < 1) y.fail(root["perturb_chunk"], "key 'perturb_chunk' must be at least 1");
  }
  if (root["winograd"]) e.winograd = y.as<bool>(root["winograd"], "winograd", "true or false");

  if (const auto& layers = root["layers"]) {
    if (layers.IsScalar()) {
      c.layer_sets.push_back({layers.as<std::string>()});
    } else if (layers.IsSequence()) {
      for (const auto& item : layers) c.layer_sets.push_back(y.strings(item, "layers"));
    } else {
      y.fail(layers, "key 'layers' must be a layer, or a list whose items are layers or lists of layers");
    }
  } else {
    c.layer_sets.push_back({});  // the plugin's default
  }
  c.methods = root["methods"] ? y.strings(root["methods"], "methods") : std::vector<std::string>{"gradcam"};
  for (const auto& m : c.methods) {
    const auto& known = available_methods();
    if (std::find(known.begin(), known.end(), m) == known.end())
      y.fail(root["methods"], fmt::format("method '{}' is not available; choose from: {}", m, fmt::join(known, ", ")));
  }
  c.targets = root["targets"] ? y.strings(root["targets"], "targets") : std::vector<std::string>{"top1"};

  if (!root["inputs"]) y.fail(root, "missing key 'inputs' (images: a glob, a list or a list file)");
  const auto& in = root["inputs"];
  std::vector<std::string> patterns;
  if (in.IsMap()) {
    y.only_keys(in, "inputs", {"images", "boxes"});
    if (!in["images"]) y.fail(in, "missing key 'images' in inputs");
    patterns = y.strings(in["images"], "images");
    if (in["boxes"]) c.boxes = resolve(base, y.as<std::string>(in["boxes"], "boxes", "a JSON file path"));
  } else {
    patterns = y.strings(in, "inputs");
  }
  c.images = expand_inputs(patterns, base);
  if (std::find(c.targets.begin(), c.targets.end(), "annotated") != c.targets.end() && c.boxes.empty())
    y.fail(root["targets"], "targets: annotated needs inputs.boxes (the ground-truth boxes file)");

  if (root["batch_size"]) {
    c.batch_size = y.as<int>(root["batch_size"], "batch_size", "a positive integer");
    if (c.batch_size < 1) y.fail(root["batch_size"], "key 'batch_size' must be at least 1");
  }
  if (root["threads"]) c.threads = y.as<int>(root["threads"], "threads", "an integer (0: all cores)");

  c.outputs.dir = resolve(base, "../out/" + c.name);
  if (const auto& o = root["outputs"]) {
    y.only_keys(o, "outputs", {"dir", "save", "colormap", "alpha"});
    if (o["dir"]) c.outputs.dir = resolve(base, y.as<std::string>(o["dir"], "dir", "a directory path"));
    if (o["save"]) {
      c.outputs.save_map = c.outputs.save_overlay = c.outputs.save_panel = false;
      for (const auto& s : y.strings(o["save"], "save")) {
        if (s == "map") c.outputs.save_map = true;
        else if (s == "overlay") c.outputs.save_overlay = true;
        else if (s == "panel") c.outputs.save_panel = true;
        else y.fail(o["save"], fmt::format("unknown output '{}' in save; choose from: map, overlay, panel", s));
      }
    }
    if (o["colormap"]) {
      c.outputs.colormap = y.as<std::string>(o["colormap"], "colormap", "a colormap name");
      try {
        parse_colormap(c.outputs.colormap);
      } catch (const Error& err) {
        y.fail(o["colormap"], err.what());
      }
    }
    if (o["alpha"]) {
      c.outputs.alpha = y.as<float>(o["alpha"], "alpha", "a number in [0, 1]");
      if (c.outputs.alpha < 0.f || c.outputs.alpha > 1.f) y.fail(o["alpha"], "key 'alpha' must be in [0, 1]");
    }
  }

  if (const auto& cmp = root["compare"]) {
    // `compare: true` (or an empty mapping) takes every default; false is off.
    if (cmp.IsScalar() && !cmp.Scalar().empty()) {
      if (y.as<bool>(cmp, "compare", "true, false or a mapping (sort_by, steps, chunk, grid)")) c.compare.emplace();
    } else if (cmp.IsNull()) {
      c.compare.emplace();
    } else {
      y.only_keys(cmp, "compare", {"sort_by", "steps", "chunk", "grid"});
      auto& k = c.compare.emplace();
      if (cmp["sort_by"]) {
        k.sort_by = y.as<std::string>(cmp["sort_by"], "sort_by", "a metric name");
        try {
          check_compare_metric(k.sort_by);
        } catch (const Error& err) {
          y.fail(cmp["sort_by"], err.what());
        }
      }
      if (cmp["steps"]) {
        k.faithfulness.steps = y.as<int64_t>(cmp["steps"], "steps", "an integer (0: the default)");
        if (k.faithfulness.steps < 0) y.fail(cmp["steps"], "key 'steps' must be at least 0 (0: round(sqrt(H * W)))");
      }
      if (cmp["chunk"]) {
        k.faithfulness.chunk = y.as<int64_t>(cmp["chunk"], "chunk", "a positive integer");
        if (k.faithfulness.chunk < 1) y.fail(cmp["chunk"], "key 'chunk' must be at least 1");
      }
      if (cmp["grid"]) k.grid = y.as<bool>(cmp["grid"], "grid", "true or false");
      if ((k.sort_by == "pointing" || k.sort_by == "energy") && c.boxes.empty())
        y.fail(cmp["sort_by"], fmt::format("sort_by: {} needs inputs.boxes (the ground-truth boxes file)", k.sort_by));
    }
    if (c.compare && c.compare->grid && !c.outputs.save_map && !c.outputs.save_overlay)
      y.fail(cmp, "compare.grid needs outputs.save to include map or overlay (the grid's tiles); add one, or set "
                  "grid: false");
  }
  return c;
}

std::vector<std::string> expand_inputs(const std::vector<std::string>& patterns, const std::string& base_dir) {
  static const std::set<std::string> image_ext{".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"};
  std::vector<std::string> out;
  for (const auto& raw : patterns) {
    const std::string p = resolve(base_dir, raw);
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> here;
      fs::directory_iterator it(p, ec);
      XCAM_CHECK(!ec, "input directory '{}' cannot be read: {}", p, ec.message());
      for (; it != fs::directory_iterator(); it.increment(ec)) {
        std::string ext = it->path().extension().string();
        std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
        if (image_ext.count(ext)) here.push_back(it->path().string());
      }
      std::sort(here.begin(), here.end());
      out.insert(out.end(), here.begin(), here.end());
    } else if (fs::path(p).extension() == ".txt") {
      std::ifstream in(p);
      XCAM_CHECK(in.good(), "input list '{}' cannot be read", p);
      const std::string list_dir = fs::path(p).parent_path().string();
      for (std::string line; std::getline(in, line);)
        if (!line.empty() && line[0] != '#') out.push_back(resolve(list_dir, line));
    } else {
      glob_t g{};
      const int rc = ::glob(p.c_str(), 0, nullptr, &g);
      if (rc != 0 || g.gl_pathc == 0) {
        globfree(&g);
        // Say why: the directory part is missing or unreadable, or nothing matched.
        const fs::path dir = fs::path(p).parent_path();
        XCAM_CHECK(dir.empty() || fs::is_directory(dir, ec), "input '{}' matches no file: directory '{}' does not exist",
                   p, dir.string());
        XCAM_CHECK(dir.empty() || ::access(dir.c_str(), R_OK | X_OK) == 0,
                   "input '{}': directory '{}' cannot be read (permissions?)", p, dir.string());
        XCAM_THROW("input '{}' matches no file", p);
      }
      std::vector<std::string> here(g.gl_pathv, g.gl_pathv + g.gl_pathc);
      globfree(&g);
      std::sort(here.begin(), here.end());
      out.insert(out.end(), here.begin(), here.end());
    }
  }
  XCAM_CHECK(!out.empty(), "no input image found in {}", fmt::join(patterns, ", "));
  return out;
}

// -------------------------------------------------------------- records ----

namespace {

json to_json(const ItemRecord& r) {
  json j{{"image", r.image},   {"method", r.method},       {"layers", r.layers},
         {"target", r.target}, {"target_index", r.target_index}, {"rank", r.rank},
         {"score", r.score},   {"status", r.status},       {"forward_ms", r.forward_ms},
         {"backward_ms", r.backward_ms}, {"cam_ms", r.cam_ms}, {"outputs", r.outputs},
         {"warnings", r.warnings}};
  j["pointing_hit"] = r.pointing_hit ? json(*r.pointing_hit) : json(nullptr);
  j["centre_hit"] = r.centre_hit ? json(*r.centre_hit) : json(nullptr);
  j["energy"] = r.energy ? json(*r.energy) : json(nullptr);
  j["deletion"] = r.deletion ? json(*r.deletion) : json(nullptr);
  j["insertion"] = r.insertion ? json(*r.insertion) : json(nullptr);
  j["drop"] = r.drop ? json(*r.drop) : json(nullptr);
  j["increase"] = r.increase ? json(*r.increase) : json(nullptr);
  return j;
}

ItemRecord from_json(const json& j) {
  ItemRecord r;
  r.image = j.at("image");
  r.method = j.at("method");
  r.layers = j.at("layers");
  r.target = j.at("target");
  r.target_index = j.at("target_index");
  r.rank = j.at("rank");
  r.score = j.at("score");
  r.status = j.at("status");
  r.forward_ms = j.at("forward_ms");
  r.backward_ms = j.at("backward_ms");
  r.cam_ms = j.at("cam_ms");
  r.outputs = j.at("outputs").get<std::vector<std::string>>();
  r.warnings = j.at("warnings").get<std::vector<std::string>>();
  if (!j.at("pointing_hit").is_null()) r.pointing_hit = j.at("pointing_hit").get<bool>();
  if (!j.at("centre_hit").is_null()) r.centre_hit = j.at("centre_hit").get<bool>();
  if (!j.at("energy").is_null()) r.energy = j.at("energy").get<double>();
  // Records written without the faithfulness metrics have no such keys.
  auto number = [&](const char* key) {
    return j.contains(key) && !j[key].is_null() ? std::optional<double>(j[key].get<double>()) : std::nullopt;
  };
  r.deletion = number("deletion");
  r.insertion = number("insertion");
  r.drop = number("drop");
  if (j.contains("increase") && !j["increase"].is_null()) r.increase = j["increase"].get<bool>();
  return r;
}

void write_results(const std::string& dir, const std::vector<ItemRecord>& records) {
  json all = json::array();
  std::ostringstream csv;
  csv << "image,method,layers,target,target_index,rank,score,forward_ms,backward_ms,cam_ms,pointing_hit,"
         "centre_hit,energy,deletion,insertion,drop,increase,warnings\n";
  auto opt_bool = [](const std::optional<bool>& b) { return b ? std::string(*b ? "1" : "0") : std::string(); };
  auto opt_num = [](const std::optional<double>& v) { return v ? fmt::format("{:.6f}", *v) : std::string(); };
  for (const auto& r : records) {
    all.push_back(to_json(r));
    csv << csv_field(r.image) << ',' << r.method << ',' << csv_field(r.layers) << ',' << csv_field(r.target) << ','
        << r.target_index << ',' << r.rank << ',' << r.score << ',' << r.forward_ms << ',' << r.backward_ms << ','
        << r.cam_ms << ',' << opt_bool(r.pointing_hit) << ',' << opt_bool(r.centre_hit) << ','
        << opt_num(r.energy) << ',' << opt_num(r.deletion) << ',' << opt_num(r.insertion) << ','
        << opt_num(r.drop) << ',' << opt_bool(r.increase) << ',' << csv_field(fmt::format("{}", fmt::join(r.warnings, "; ")))
        << '\n';
  }
  write_file_atomic((fs::path(dir) / "results.json").string(), all.dump(2) + "\n");
  write_file_atomic((fs::path(dir) / "results.csv").string(), csv.str());
}

// The method as results and output directories name it: smoothing options
// are part of it, so a re-run with other options never resumes from these.
std::string method_label(const ExplainerOptions& o) {
  return o.method + (o.aug_smooth ? "+aug" : "") + (o.eigen_smooth ? "+eigen" : "");
}

void add_pointing(RunSummary& s, const std::string& key, const ItemRecord& r) {
  if (!r.pointing_hit) return;
  auto& [maps, centre] = s.pointing[key];
  maps.add(r.target, *r.pointing_hit);
  centre.add(r.target, r.centre_hit.value_or(false));
}

}  // namespace

std::string safe_name(const std::string& s) {
  std::string out;
  for (char ch : s) out += (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.') ? ch : '_';
  return out.empty() ? "_" : out;
}

// ------------------------------------------------------- explain + write ----

void explain_and_write(Explainer& ex, const std::vector<std::string>& images, int batch_size,
                       const std::vector<std::string>& targets,
                       const std::map<std::string, std::vector<Box>>* boxes, const OutputOptions& out,
                       std::vector<ItemRecord>& records, RunSummary& summary, const RunOptions& opt,
                       const std::string& progress_label) {
  const Colormap cmap = parse_colormap(out.colormap);
  const std::string layers = fmt::format("{}", fmt::join(ex.layers(), "+"));
  const fs::path item_dir = fs::path(out.dir) / ".items";
  const bool annotated = std::find(targets.begin(), targets.end(), "annotated") != targets.end();
  const bool tty = opt.progress && ::isatty(STDERR_FILENO);
  size_t finished = 0;

  auto progress = [&] {
    if (tty)
      std::cerr << fmt::format("\r{}{} / {} images", progress_label.empty() ? "" : progress_label + ": ", finished,
                               images.size())
                << std::flush;
  };

  // Resume: an image whose record file exists (written last, atomically) and
  // whose outputs all exist is finished; with the faithfulness metrics on,
  // its records must carry them too.
  std::vector<std::string> pending;
  for (const auto& img : images) {
    const fs::path rec = item_dir / (fs::path(img).filename().string() + ".json");
    bool done = false;
    if (!opt.force && fs::exists(rec)) {
      try {
        std::ifstream in(rec);
        const json j = json::parse(in);
        std::vector<ItemRecord> rs;
        for (const auto& item : j) rs.push_back(from_json(item));
        done = std::all_of(rs.begin(), rs.end(), [&](const ItemRecord& r) {
          return (!out.faithfulness || (r.deletion && r.insertion && r.drop && r.increase)) &&
                 std::all_of(r.outputs.begin(), r.outputs.end(),
                             [&](const std::string& o) { return fs::exists(fs::path(out.dir) / o); });
        });
        if (done) {
          for (auto& r : rs) {
            add_pointing(summary, r.method + " " + r.layers, r);
            records.push_back(std::move(r));
          }
          ++summary.skipped;
          ++finished;
        }
      } catch (const std::exception&) {
        done = false;  // a damaged record: redo the image
      }
    }
    if (!done) pending.push_back(img);
  }
  progress();

  auto fail = [&](const std::string& img, const std::string& why) {
    ++summary.failed;
    summary.failures.push_back(fmt::format("{}: {}", img, why));
    if (tty) std::cerr << "\n";
    std::cerr << "xcam: skipped " << img << ": " << why << "\n";
  };

  for (size_t start = 0; start < pending.size(); start += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(pending.size(), start + static_cast<size_t>(batch_size));
    std::vector<cv::Mat> rgbs;
    std::vector<std::string> paths, ids;
    std::vector<std::vector<std::string>> requests;
    for (size_t i = start; i < end; ++i) {
      const std::string& img = pending[i];
      try {
        std::vector<std::string> req = targets;
        if (annotated) {
          const auto name = fs::path(img).filename().string();
          const auto it = boxes ? boxes->find(name) : std::map<std::string, std::vector<Box>>::const_iterator{};
          XCAM_CHECK(boxes && it != boxes->end() && !it->second.empty(),
                     "targets: annotated, but the boxes file has no box for '{}'", name);
          req.clear();
          for (const auto& b : it->second)
            if (std::find(req.begin(), req.end(), b.label) == req.end()) req.push_back(b.label);
        }
        rgbs.push_back(load_rgb(img));
        paths.push_back(img);
        ids.push_back(fs::path(img).stem().string());
        requests.push_back(std::move(req));
      } catch (const Error& e) {
        fail(img, e.what());
        ++finished;
      }
    }
    if (rgbs.empty()) continue;
    if (opt.warmup && start == 0) {
      // Untimed, twice: the first calls pay for one-off set-up (thread pools,
      // allocator, the TorchScript executor's profiling run and the
      // optimisation after it). Errors show up again in the timed call below.
      try {
        for (int w = 0; w < 2; ++w) ex.explain(rgbs, ids, requests);
      } catch (const std::exception&) {
      }
    }

    // One batch; if it fails as a whole, retry its images one by one so a
    // single bad item is reported and skipped and the others complete.
    std::vector<std::vector<size_t>> groups{{}};
    for (size_t i = 0; i < rgbs.size(); ++i) groups[0].push_back(i);
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const auto group = groups[gi];
      std::vector<cv::Mat> g_rgb;
      std::vector<std::string> g_ids;
      std::vector<std::vector<std::string>> g_req;
      for (size_t i : group) {
        g_rgb.push_back(rgbs[i]);
        g_ids.push_back(ids[i]);
        g_req.push_back(requests[i]);
      }
      std::vector<MapResult> maps;
      std::vector<Faithfulness> faith;
      StageTimes t;
      try {
        maps = ex.explain(g_rgb, g_ids, g_req, &t);
        // The metric forwards are not part of the explanation's timings.
        if (out.faithfulness) faith = ex.faithfulness(g_rgb, g_ids, maps, *out.faithfulness);
      } catch (const std::exception& e) {
        if (group.size() > 1) {
          for (size_t i : group) groups.push_back({i});
        } else {
          fail(paths[group[0]], e.what());
          ++finished;
        }
        continue;
      }
      const double n = static_cast<double>(group.size());
      for (size_t i : group) {
        std::vector<ItemRecord> item_records;
        try {
          for (size_t mi = 0; mi < maps.size(); ++mi) {
            const MapResult& m = maps[mi];
            if (m.image_id != ids[i]) continue;
            ItemRecord r;
            r.image = fs::path(paths[i]).filename().string();
            r.method = method_label(ex.options());
            r.layers = layers;
            r.target = m.target_label;
            r.target_index = m.target_index;
            r.rank = m.rank;
            r.score = m.score;
            r.forward_ms = t.forward_ms / n;
            r.backward_ms = t.backward_ms / n;
            r.cam_ms = t.cam_ms / n;
            r.warnings = m.warnings;
            if (!faith.empty()) {
              r.deletion = faith[mi].deletion;
              r.insertion = faith[mi].insertion;
              r.drop = faith[mi].drop;
              r.increase = faith[mi].increase;
            }
            for (const auto& w : m.warnings) std::cerr << "xcam: warning: " << paths[i] << " [" << m.target_label << "]: " << w << "\n";
            const auto full = map_at_image_size(m.map, m.height, m.width, rgbs[i]);
            const std::string stem = ids[i] + "_" + safe_name(m.target_label);
            if (out.save_map) {
              write_npy((fs::path(out.dir) / (stem + ".npy")).string(), {rgbs[i].rows, rgbs[i].cols}, full.data());
              r.outputs.push_back(stem + ".npy");
            }
            if (out.save_overlay || out.save_panel) {
              const auto rendered = render_overlay(rgbs[i], full, out.alpha, cmap);
              if (out.save_overlay) {
                write_png((fs::path(out.dir) / (stem + ".png")).string(), rendered.overlay);
                r.outputs.push_back(stem + ".png");
              }
              if (out.save_panel) {
                const std::string title = fmt::format("{} | {} @ {} | {} p={:.3f}", r.image, r.method, layers,
                                                      m.target_label, m.score);
                write_png((fs::path(out.dir) / (stem + "_panel.png")).string(), render_panel(rgbs[i], rendered, title));
                r.outputs.push_back(stem + "_panel.png");
              }
            }
            if (boxes) {
              const auto it = boxes->find(r.image);
              if (it != boxes->end()) {
                std::vector<Box> cls;
                for (const auto& b : it->second)
                  if (b.label == m.target_label) cls.push_back(b);
                if (!cls.empty()) {
                  const auto pg = pointing_game(full.data(), rgbs[i].rows, rgbs[i].cols, cls);
                  r.pointing_hit = pg.hit;
                  r.energy = pg.energy;
                  r.centre_hit = centre_point_hit(rgbs[i].rows, rgbs[i].cols, cls);
                }
              }
            }
            item_records.push_back(std::move(r));
          }
          json j = json::array();
          for (const auto& r : item_records) j.push_back(to_json(r));
          write_file_atomic((item_dir / (fs::path(paths[i]).filename().string() + ".json")).string(), j.dump(1));
        } catch (const Error& e) {
          fail(paths[i], e.what());
          ++finished;
          progress();
          continue;
        }
        for (auto& r : item_records) {
          add_pointing(summary, r.method + " " + r.layers, r);
          records.push_back(std::move(r));
        }
        ++summary.done;
        ++finished;
        progress();
      }
    }
  }
  if (tty) std::cerr << "\n";
}

RunSummary run_experiment(const ExperimentConfig& cfg, const RunOptions& opt) {
  RunSummary summary;
  std::map<std::string, std::vector<Box>> boxes;
  if (!cfg.boxes.empty()) boxes = read_boxes(cfg.boxes);
  set_threads(cfg.threads);
  std::vector<ItemRecord>& records = summary.records;
  RunOptions run_opt = opt;
  run_opt.warmup = opt.warmup || cfg.compare.has_value();  // comparable times per map
  for (const auto& method : cfg.methods) {
    for (const auto& layer_set : cfg.layer_sets) {
      ExplainerOptions eo = cfg.explainer;
      eo.method = method;
      eo.layers = layer_set;
      eo.targets = cfg.targets;
      Explainer ex(eo);
      OutputOptions out = cfg.outputs;
      if (cfg.compare) out.faithfulness = cfg.compare->faithfulness;
      const std::string layers = fmt::format("{}", fmt::join(ex.layers(), "+"));
      const std::string label = method_label(eo);
      out.dir = (fs::path(cfg.outputs.dir) / label / safe_name(layers)).string();
      std::vector<ItemRecord> part;
      explain_and_write(ex, cfg.images, cfg.batch_size, cfg.targets, cfg.boxes.empty() ? nullptr : &boxes, out,
                        part, summary, run_opt, label + " @ " + layers);
      for (auto& r : part) {
        for (auto& o : r.outputs) o = (fs::path(label) / safe_name(layers) / o).string();
        records.push_back(std::move(r));
      }
    }
  }
  write_results(cfg.outputs.dir, records);
  if (cfg.compare) {
    write_comparison(cfg.outputs.dir, compare_rows(records, cfg.compare->sort_by), cfg.compare->sort_by);
    if (cfg.compare->grid) write_grids(cfg.outputs.dir, records, cfg.images, cfg.outputs);
  }
  return summary;
}

void print_summary(const RunSummary& s, bool pointing) {
  std::cout << fmt::format("done {}, resumed {}, failed {}\n", s.done, s.skipped, s.failed);
  for (const auto& [key, pg] : s.pointing) {
    if (!pointing) break;
    std::cout << fmt::format("pointing game [{}]: {:.3f} over {} maps (centre-point baseline {:.3f})\n", key,
                             pg.first.score(), pg.first.total(), pg.second.score());
    for (const auto& [cls, c] : pg.first.per_class())
      std::cout << fmt::format("  {:<12} {:>3} / {:<3} = {:.3f}\n", cls, c.first, c.first + c.second,
                               static_cast<double>(c.first) / (c.first + c.second));
  }
  for (const auto& f : s.failures) std::cout << "failed: " << f << "\n";
}

}  // namespace xcam

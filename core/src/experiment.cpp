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
#include <iterator>
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

  // A mapping's key as text: keys are plain names, not lists or mappings.
  std::string key_of(const YAML::Node& key) const {
    if (!key.IsScalar()) fail(key, "a key must be a plain name, not a list or a mapping");
    if (invalid_utf8_at(key.Scalar()) != std::string::npos)
      fail(key, "this key does not read as UTF-8 text (control bytes in the file?); save it as plain UTF-8 text");
    return key.as<std::string>();
  }

  void only_keys(const YAML::Node& map, const std::string& where, const std::vector<std::string>& known) const {
    if (!map.IsMap()) fail(map, fmt::format("'{}' must be a mapping of keys to values", where));
    for (const auto& kv : map) {
      const auto key = key_of(kv.first);
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

  // Every mapping in `n`, recursively, with each key once: a key given
  // twice is refused (YAML readers keep the first, the docs promise no key
  // is ignored).
  void unique_keys(const YAML::Node& n) const {
    if (n.IsSequence())
      for (const auto& item : n) unique_keys(item);
    if (!n.IsMap()) return;
    std::map<std::string, int> line_of;
    for (const auto& kv : n) {
      const auto key = key_of(kv.first);
      const auto [it, fresh] = line_of.emplace(key, kv.first.Mark().line + 1);
      if (!fresh) fail(kv.first, fmt::format("key '{}' is given twice (first on line {}); keep one", key, it->second));
      unique_keys(kv.second);
    }
  }

  std::array<float, 3> triple(const YAML::Node& n, const std::string& key) const {
    if (!n.IsSequence() || n.size() != 3) fail(n, fmt::format("key '{}' must be a list of 3 numbers (R, G, B)", key));
    return {as<float>(n[0], key, "a number"), as<float>(n[1], key, "a number"), as<float>(n[2], key, "a number")};
  }
};

// A YAML value as JSON with its type: plain scalars that read as a boolean,
// an integer, a number or null become one (YAML 1.2's core schema); quoted
// ones stay strings; sequences and mappings recursively.
json yaml_to_json(const Yaml& y, const YAML::Node& n) {
  if (n.IsSequence()) {
    json a = json::array();
    for (const auto& item : n) a.push_back(yaml_to_json(y, item));
    return a;
  }
  if (n.IsMap()) {
    json o = json::object();
    for (const auto& kv : n) o[y.key_of(kv.first)] = yaml_to_json(y, kv.second);
    return o;
  }
  if (!n.IsScalar() || n.IsNull()) return nullptr;
  const std::string v = n.Scalar();
  // A file that is UTF-8 can still read as other bytes: control bytes in it
  // make the YAML reader decode parts of it otherwise.
  if (invalid_utf8_at(v) != std::string::npos)
    y.fail(n, "this value does not read as UTF-8 text (control bytes in the file?); save it as plain UTF-8 text");
  if (n.Tag() == "!") return v;  // quoted
  if (v == "true" || v == "True" || v == "TRUE") return true;
  if (v == "false" || v == "False" || v == "FALSE") return false;
  if (v == "~" || v == "null" || v == "Null" || v == "NULL") return nullptr;
  try {
    size_t used = 0;
    const long long i = std::stoll(v, &used);
    if (used == v.size()) return i;
    const double d = std::stod(v, &used);
    if (used == v.size()) return d;
  } catch (const std::exception&) {
  }
  return v;
}

// The `attention:` block: how attention methods read tokens.
void load_attention(const Yaml& y, const YAML::Node& at, AttentionOptions& o) {
  if (!at.IsMap()) y.fail(at, "key 'attention' must be a mapping (patch, prefix, query, head_fusion, discard_ratio)");
  y.only_keys(at, "attention", {"patch", "prefix", "query", "head_fusion", "discard_ratio"});
  if (const auto& p = at["patch"]) {
    if (p.IsSequence() && p.size() == 2) {
      o.patch_h = y.as<int64_t>(p[0], "patch", "an integer");
      o.patch_w = y.as<int64_t>(p[1], "patch", "an integer");
    } else {
      o.patch_h = o.patch_w = y.as<int64_t>(p, "patch", "an integer or [height, width]");
    }
    if (o.patch_h < 1 || o.patch_w < 1) y.fail(p, "key 'patch' must be positive");
  }
  if (at["prefix"]) o.prefix = y.as<int64_t>(at["prefix"], "prefix", "an integer");
  if (o.prefix < 0) y.fail(at["prefix"], "key 'prefix' must be at least 0");
  if (const auto& q = at["query"]) {
    const auto v = y.as<std::string>(q, "query", "a token index or mean");
    if (v == "mean") o.query = -1;
    else if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos)
      y.fail(q, "key 'query' must be a token index (an integer >= 0) or mean (the mean of every query's row)");
    else o.query = std::stoll(v);
  }
  if (at["head_fusion"]) o.head_fusion = y.as<std::string>(at["head_fusion"], "head_fusion", "mean, max or min");
  if (o.head_fusion != "mean" && o.head_fusion != "max" && o.head_fusion != "min")
    y.fail(at["head_fusion"], "key 'head_fusion' must be mean, max or min");
  if (at["discard_ratio"]) o.discard_ratio = y.as<double>(at["discard_ratio"], "discard_ratio", "a number in [0, 1)");
  if (!(o.discard_ratio >= 0 && o.discard_ratio < 1)) y.fail(at["discard_ratio"], "key 'discard_ratio' must be in [0, 1)");
}

std::string resolve(const std::string& base, const std::string& p) {
  if (p.empty() || fs::path(p).is_absolute()) return p;
  return (fs::path(base) / p).lexically_normal().string();
}

}  // namespace

namespace {

// model, plugin, labels, preprocessing and the options of every explanation.
void load_explainer(const Yaml& y, const YAML::Node& root, const std::string& base, ExplainerOptions& e) {
  if (!root["model"]) y.fail(root, "missing key 'model': the TorchScript file to explain");
  e.model = resolve(base, y.as<std::string>(root["model"], "model", "a file path"));
  if (root["plugin"]) e.plugin = y.as<std::string>(root["plugin"], "plugin", "a plugin name");
  if (root["plugin_dirs"])
    for (const auto& d : y.strings(root["plugin_dirs"], "plugin_dirs")) e.plugin_dirs.push_back(resolve(base, d));
  if (root["plugin_options"]) {
    const auto& po = root["plugin_options"];
    if (!po.IsMap()) y.fail(po, "key 'plugin_options' must be a mapping");
    e.plugin_options = yaml_to_json(y, po).dump();
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
  if (root["batch_targets"])
    e.batch_targets = y.as<bool>(root["batch_targets"], "batch_targets", "true or false");
  if (root["winograd"]) e.winograd = y.as<bool>(root["winograd"], "winograd", "true or false");
  if (const auto& at = root["attention"]) load_attention(y, at, e.attention);
  if (const auto& cr = root["crops"]) {
    y.only_keys(cr, "crops", {"grid", "overlap", "own_size"});
    if (cr["own_size"]) e.crops.own_size = y.as<bool>(cr["own_size"], "own_size", "true or false");
    const auto& g = cr["grid"];
    if (!g || !g.IsSequence() || g.size() != 2) y.fail(cr, "key 'crops' needs grid: [rows, columns]");
    e.crops.rows = y.as<int64_t>(g[0], "grid", "an integer");
    e.crops.cols = y.as<int64_t>(g[1], "grid", "an integer");
    if (e.crops.rows < 1 || e.crops.cols < 1) y.fail(g, "key 'grid' must be at least [1, 1]");
    if (cr["overlap"]) e.crops.overlap = y.as<double>(cr["overlap"], "overlap", "a number in [0, 1)");
    if (!(e.crops.overlap >= 0 && e.crops.overlap < 1)) y.fail(cr["overlap"], "key 'overlap' must be in [0, 1)");
    if (e.aug_smooth) y.fail(cr, "crops and aug_smooth are two view sets; choose one of them");
  }

}

// layers (layer sets), methods and targets.
void load_runs(const Yaml& y, const YAML::Node& root, ExperimentConfig& c) {
  if (const auto& layers = root["layers"]) {
    if (layers.IsScalar()) {
      c.layer_sets.push_back({layers.as<std::string>()});
    } else if (layers.IsSequence()) {
      for (const auto& item : layers) {
        c.layer_sets.push_back(y.strings(item, "layers"));
        if (c.layer_sets.back().empty()) y.fail(item, "an empty layer set in 'layers'; give at least one layer");
      }
      if (c.layer_sets.empty())
        y.fail(layers, "key 'layers' is an empty list; give layers, or leave the key out for the plugin's default");
    } else {
      y.fail(layers, "key 'layers' must be a layer, or a list whose items are layers or lists of layers");
    }
  } else {
    c.layer_sets.push_back({});  // the plugin's default
  }
  c.methods = root["methods"] ? y.strings(root["methods"], "methods") : std::vector<std::string>{"gradcam"};
  if (c.methods.empty()) y.fail(root["methods"], "key 'methods' is an empty list; give at least one method");
  for (const auto& m : c.methods) {
    const auto& known = available_methods();
    if (std::find(known.begin(), known.end(), m) == known.end())
      y.fail(root["methods"], fmt::format("method '{}' is not available; choose from: {}", m, fmt::join(known, ", ")));
  }
  c.targets = root["targets"] ? y.strings(root["targets"], "targets") : std::vector<std::string>{"top1"};
  if (c.targets.empty()) y.fail(root["targets"], "key 'targets' is an empty list; give at least one target");

}

// inputs (images and boxes), batch size and threads.
void load_inputs(const Yaml& y, const YAML::Node& root, const std::string& base, ExperimentConfig& c) {
  if (!root["inputs"]) y.fail(root, "missing key 'inputs' (images: a glob, a list or a list file)");
  const auto& in = root["inputs"];
  std::vector<std::string> patterns;
  if (in.IsMap()) {
    y.only_keys(in, "inputs", {"images", "manifest", "boxes"});
    if (in["boxes"]) c.boxes = resolve(base, y.as<std::string>(in["boxes"], "boxes", "a JSON file path"));
    if (in["manifest"]) {
      if (in["images"]) y.fail(in, "inputs take images or a manifest, not both");
      c.samples = read_manifest(resolve(base, y.as<std::string>(in["manifest"], "manifest", "a JSONL file path")));
      for (const auto& sp : c.samples) c.images.push_back(sp.image);
    } else {
      if (!in["images"]) y.fail(in, "missing key 'images' (or 'manifest') in inputs");
      patterns = y.strings(in["images"], "images");
    }
  } else {
    patterns = y.strings(in, "inputs");
  }
  if (c.samples.empty()) c.images = expand_inputs(patterns, base);
  if (std::find(c.targets.begin(), c.targets.end(), "annotated") != c.targets.end() && c.boxes.empty())
    y.fail(root["targets"], "targets: annotated needs inputs.boxes (the ground-truth boxes file)");

  if (root["batch_size"]) {
    c.batch_size = y.as<int>(root["batch_size"], "batch_size", "a positive integer");
    if (c.batch_size < 1) y.fail(root["batch_size"], "key 'batch_size' must be at least 1");
  }
  if (root["threads"]) {
    c.threads = y.as<int>(root["threads"], "threads", "an integer (0: all cores)");
    if (c.threads < 0 || c.threads > kMaxThreads)
      y.fail(root["threads"], fmt::format("key 'threads' must be in [0, {}] (0: all cores)", kMaxThreads));
  }
  if (root["io_threads"]) {
    c.io_threads = y.as<int>(root["io_threads"], "io_threads", "an integer (0: no pipeline)");
    if (c.io_threads < 0 || c.io_threads > 64) y.fail(root["io_threads"], "key 'io_threads' must be in [0, 64]");
  }

}

// outputs: directory, what is saved, colormap and alpha.
void load_outputs(const Yaml& y, const YAML::Node& root, const std::string& base, ExperimentConfig& c) {
  c.outputs.dir = resolve(base, "../out/" + c.name);
  if (const auto& o = root["outputs"]) {
    y.only_keys(o, "outputs", {"dir", "save", "colormap", "alpha", "png_level"});
    if (o["png_level"]) {
      c.outputs.png_level = y.as<int>(o["png_level"], "png_level", "an integer: -1 (fast) or 0..9");
      if (c.outputs.png_level < -1 || c.outputs.png_level > 9) y.fail(o["png_level"], "key 'png_level' must be -1 or 0..9");
    }
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

}

// task: {name: attention, tokenizer, window, stat, rules, html, views, flow}
// over the inputs' texts (a manifest's "text" lines).
void load_attention(const Yaml& y, const YAML::Node& task, const std::string& base, ExperimentConfig& c) {
  y.only_keys(task, "task (attention)", {"name", "tokenizer", "window", "stat", "rules", "html", "views", "flow"});
  AttentionRun& a = c.attention.emplace();
  a.model = c.explainer.model;
  // Texts (a manifest of "text" lines) need the tokenizer; images are read
  // at the experiment's layers through its plugin.
  const bool texts = std::any_of(c.samples.begin(), c.samples.end(),
                                 [](const auto& sp) { return sp.image.empty() && !sp.text.empty(); });
  if (texts && !task["tokenizer"]) y.fail(task, "task attention needs 'tokenizer' (the model's tokenizer.json)");
  if (task["tokenizer"]) a.tokenizer = resolve(base, y.as<std::string>(task["tokenizer"], "tokenizer", "a file path"));
  if (task["window"]) a.window = y.as<int64_t>(task["window"], "window", "an integer >= 0");
  if (a.window < 0) y.fail(task["window"], "key 'window' must be an integer >= 0");
  if (task["stat"]) a.stat = y.as<std::string>(task["stat"], "stat", "a statistic's name");
  if (task["html"]) a.html = y.as<bool>(task["html"], "html", "true or false");
  if (task["views"]) a.views = y.as<bool>(task["views"], "views", "true or false");
  if (const auto& f = task["flow"]) {
    for (const auto& v : y.strings(f, "flow")) {
      const auto t = std::strtoll(v.c_str(), nullptr, 10);
      if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos)
        y.fail(f, "key 'flow' must be token indices (integers >= 0)");
      a.flows.push_back(t);
    }
  }
  if (const auto& rules = task["rules"]) {
    y.only_keys(rules, "task.rules", {"structured", "local", "broad"});
    if (rules["structured"]) a.rules.structured = y.as<double>(rules["structured"], "structured", "a share in [0, 1]");
    if (rules["local"]) a.rules.local = y.as<double>(rules["local"], "local", "a share in [0, 1]");
    if (rules["broad"]) a.rules.broad = y.as<double>(rules["broad"], "broad", "a share in [0, 1]");
  }
  if (!texts) {
    for (const auto& sp : c.samples.empty() ? samples_of(c.images) : c.samples) {
      if (sp.image.empty()) y.fail(task, fmt::format("task attention reads images or texts, not both: sample '{}' "
                                                     "has no image", sp.id));
      a.images.push_back({sp.image, sp.text, sp.meta});
    }
    if (a.images.empty()) y.fail(task, "task attention has no input: give images, or a manifest of texts");
    a.explainer = c.explainer;
    for (const auto& set : c.layer_sets) a.explainer.layers.insert(a.explainer.layers.end(), set.begin(), set.end());
    return;
  }
  for (const auto& sp : c.samples) {
    if (sp.text.empty())
      y.fail(task, fmt::format("task attention reads texts: sample '{}' has no \"text\" (give a manifest of "
                               "{{\"text\": ...}} lines)",
                               sp.id.empty() ? sp.image : sp.id));
    a.texts.push_back(sp.text);
  }
}

// compare: `true`, an empty mapping, or sort_by, steps, chunk, grid.
void load_compare(const Yaml& y, const YAML::Node& cmp, ExperimentConfig& c) {
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

// The task JSON that one method and layer set runs: a merge's shard folders
// (`merge`, from xcam merge) made that run's folders within them.
std::string task_for(const std::string& task, const std::string& label, const std::string& layers) {
  auto j = json::parse(task);
  if (!j.is_object() || !j.contains("merge")) return task;
  for (auto& d : j["merge"]) d = (fs::path(d.get<std::string>()) / label / safe_name(layers)).string();
  return j.dump();
}

}  // namespace

ExperimentConfig load_experiment(const std::string& path) {
  XCAM_CHECK(fs::exists(path), "experiment file '{}' does not exist", path);
  Yaml y{path};
  YAML::Node root;
  try {
    std::ifstream in(path, std::ios::binary);
    XCAM_CHECK(in.good(), "experiment file '{}' cannot be read", path);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t bad = invalid_utf8_at(text);
    XCAM_CHECK(bad == std::string::npos, "{}:{}: not UTF-8 text (byte {} of the file); save the experiment as UTF-8",
               path, std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(std::min(bad, text.size())), '\n') + 1,
               bad + 1);
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    XCAM_THROW("{}:{}: invalid YAML: {}", path, e.mark.line + 1, e.msg);
  }
  if (!root.IsMap()) y.fail(root, "an experiment is a mapping with at least model, layers and inputs");
  y.unique_keys(root);
  y.only_keys(root, "the experiment", {"name", "model", "plugin", "plugin_dirs", "plugin_options", "labels",
                                       "preprocess", "layers", "methods", "targets", "inputs", "batch_size",
                                       "threads", "io_threads", "device", "aug_smooth", "eigen_smooth", "perturb_chunk", "batch_targets", "winograd",
                                       "attention", "crops", "outputs", "compare", "task"});
  const std::string base = fs::path(path).parent_path().string();
  ExperimentConfig c;
  c.file = path;
  c.name = root["name"] ? y.as<std::string>(root["name"], "name", "a string") : fs::path(path).stem().string();

  load_explainer(y, root, base, c.explainer);
  load_runs(y, root, c);
  load_inputs(y, root, base, c);
  load_outputs(y, root, base, c);
  if (const auto& cmp = root["compare"]) load_compare(y, cmp, c);
  if (const auto& task = root["task"]) {
    if (!task.IsMap() || !task["name"]) y.fail(task, "key 'task' must be a mapping with the task's 'name'");
    if (c.compare) y.fail(task, "a run has a task or a comparison, not both");
    c.task = yaml_to_json(y, task).dump();
    if (y.as<std::string>(task["name"], "task.name", "a string") == "attention") load_attention(y, task, base, c);
  }
  return c;
}

std::vector<SampleSpec> samples_of(const std::vector<std::string>& images) {
  std::vector<SampleSpec> out(images.size());
  for (size_t i = 0; i < images.size(); ++i) out[i].image = images[i];
  return out;
}

std::vector<SampleSpec> read_manifest(const std::string& path) {
  std::ifstream in(path);
  XCAM_CHECK(in.good(), "manifest '{}' cannot be read; give a JSON Lines file, one sample a line", path);
  const std::string dir = fs::path(path).parent_path().string();
  std::vector<SampleSpec> out;
  std::set<std::string> ids;
  int lineno = 0;
  for (std::string line; std::getline(in, line);) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json j = json::parse(line, nullptr, false);
    const auto where = fmt::format("{}:{}", path, lineno);
    XCAM_CHECK(j.is_object(), "{}: not a JSON object; a line is {{\"image\": \"a.png\", ...}}", where);
    XCAM_CHECK((j.contains("image") && j["image"].is_string()) || (!j.contains("image") && j.contains("text")),
               "{}: no \"image\" (the path of the image maps are drawn on) and no \"text\" (a text-only sample)",
               where);
    SampleSpec sp;
    for (const auto& [key, value] : j.items()) {
      if (key == "image") {
        sp.image = resolve(dir, value.get<std::string>());
      } else if (key == "id") {
        XCAM_CHECK(value.is_string() && !value.get<std::string>().empty(), "{}: \"id\" must be a string", where);
        sp.id = value.get<std::string>();
        XCAM_CHECK(ids.insert(sp.id).second, "{}: id '{}' is used twice; ids name the outputs", where, sp.id);
      } else if (key == "text") {
        XCAM_CHECK(value.is_string(), "{}: \"text\" must be a string", where);
        sp.text = value.get<std::string>();
      } else if (key == "targets") {
        XCAM_CHECK(value.is_string() || (value.is_array() && std::all_of(value.begin(), value.end(),
                                                                          [](const json& v) { return v.is_string(); })),
                   "{}: \"targets\" must be a string or a list of strings", where);
        if (value.is_string()) sp.targets = {value.get<std::string>()};
        else sp.targets = value.get<std::vector<std::string>>();
      } else if (key == "images") {
        XCAM_CHECK(value.is_object(), "{}: \"images\" must map names to paths, e.g. {{\"reference\": \"r.png\"}}",
                   where);
        for (const auto& [name, p] : value.items()) {
          XCAM_CHECK(p.is_string() && name != "image", "{}: images.{} must be a path, and not named 'image'", where,
                     name);
          sp.images[name] = resolve(dir, p.get<std::string>());
        }
      } else {
        sp.meta[key] = value.is_string() ? value.get<std::string>() : value.dump();
      }
    }
    out.push_back(std::move(sp));
  }
  XCAM_CHECK(!out.empty(), "manifest '{}' has no sample", path);
  return out;
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

RunSummary run_experiment(const ExperimentConfig& cfg, const RunOptions& opt) {
  RunSummary summary;
  if (cfg.attention) {  // the host's attention analysis of the texts or images
    set_threads(cfg.threads);
    AttentionRun a = *cfg.attention;
    a.out_dir = cfg.outputs.dir;
    std::cout << run_attention(a);
    summary.done = static_cast<int>(a.texts.size() + a.images.size());
    return summary;
  }
  std::map<std::string, std::vector<Box>> boxes;
  if (!cfg.boxes.empty()) boxes = read_boxes(cfg.boxes);
  set_threads(cfg.threads);
  std::vector<ItemRecord>& records = summary.records;
  RunOptions run_opt = opt;
  run_opt.io_threads = cfg.io_threads;
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
      const auto samples = cfg.samples.empty() ? samples_of(cfg.images) : cfg.samples;
      if (!cfg.task.empty())
        run_task_and_write(ex, task_for(cfg.task, label, layers), samples, cfg.targets, out, part, summary,
                           cfg.file.empty() ? "." : fs::path(cfg.file).parent_path().string());
      else
        explain_and_write(ex, samples, cfg.batch_size, cfg.targets, cfg.boxes.empty() ? nullptr : &boxes, out, part,
                          summary, run_opt, label + " @ " + layers);
      for (auto& r : part) {
        for (auto& o : r.outputs) o = (fs::path(label) / safe_name(layers) / o).string();
        records.push_back(std::move(r));
      }
    }
  }
  write_results(cfg.outputs.dir, records);
  write_summary(cfg.outputs.dir, summary, cfg.threads, cfg.io_threads);
  if (cfg.compare) {
    write_comparison(cfg.outputs.dir, compare_rows(records, cfg.compare->sort_by), cfg.compare->sort_by);
    if (cfg.compare->grid)
      write_grids(cfg.outputs.dir, records, cfg.samples.empty() ? samples_of(cfg.images) : cfg.samples, cfg.outputs);
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
  if (s.maps > 0)
    std::cout << fmt::format("{} maps in {:.2f} s: {:.1f} maps/s\n", s.maps, s.seconds, s.maps_per_second());
  for (const auto& [name, value] : s.metrics) std::cout << fmt::format("{}: {:.6g}\n", name, value);
  for (const auto& f : s.failures) std::cout << "failed: " << f << "\n";
}

}  // namespace xcam

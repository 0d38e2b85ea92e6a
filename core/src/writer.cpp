// The output writer `xcam explain` and the runner share: per input, its maps
// explained in batches, written under names unique per input and per target
// rank, and a record file written last; resume by a digest of everything that
// decides an item's outputs; results.json / results.csv merged across runs.
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "xcam/error.h"
#include "xcam/experiment.h"
#include "xcam/io.h"
#include "xcam/render.h"
#include "xcam/strings.h"
#include "json_text.h"

namespace xcam {

namespace fs = std::filesystem;
using nlohmann::json;

// -------------------------------------------------------------- records ----

namespace {

json to_json(const ItemRecord& r) {
  json j{{"image", r.image},   {"id", r.id},       {"on", r.on},       {"method", r.method},       {"layers", r.layers},
         {"target", r.target}, {"target_index", r.target_index}, {"rank", r.rank},
         {"score", r.score},   {"status", r.status},       {"forward_ms", r.forward_ms},
         {"backward_ms", r.backward_ms}, {"cam_ms", r.cam_ms}, {"outputs", r.outputs},
         {"warnings", r.warnings}, {"meta", r.meta}};
  auto opt = [](const auto& v) { return v ? json(*v) : json(nullptr); };
  j["pointing_hit"] = opt(r.pointing_hit);
  j["centre_hit"] = opt(r.centre_hit);
  j["energy"] = opt(r.energy);
  j["deletion"] = opt(r.deletion);
  j["insertion"] = opt(r.insertion);
  j["drop"] = opt(r.drop);
  j["increase"] = opt(r.increase);
  if (!r.words.empty()) {
    json tokens = json::array();
    for (size_t i = 0; i < r.words.size(); ++i) tokens.push_back({{"token", r.words[i]}, {"value", r.word_values[i]}});
    j["tokens"] = tokens;
  }
  return j;
}

ItemRecord from_json(const json& j) {
  ItemRecord r;
  r.image = j.at("image");
  r.id = j.value("id", fs::path(r.image).stem().string());
  r.on = j.value("on", "image");
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
  if (j.contains("meta") && j["meta"].is_object()) r.meta = j["meta"].get<std::map<std::string, std::string>>();
  auto number = [&](const char* key) {
    return j.contains(key) && !j[key].is_null() ? std::optional<double>(j[key].get<double>()) : std::nullopt;
  };
  auto flag = [&](const char* key) {
    return j.contains(key) && !j[key].is_null() ? std::optional<bool>(j[key].get<bool>()) : std::nullopt;
  };
  r.pointing_hit = flag("pointing_hit");
  r.centre_hit = flag("centre_hit");
  r.energy = number("energy");
  r.deletion = number("deletion");
  r.insertion = number("insertion");
  r.drop = number("drop");
  r.increase = flag("increase");
  if (j.contains("tokens") && j["tokens"].is_array())
    for (const auto& t : j["tokens"]) {
      r.words.push_back(t.at("token"));
      r.word_values.push_back(t.at("value"));
    }
  return r;
}


// What makes a row of results.json: one map of one input, method, layers,
// target and rank, as its files are named (a task can draw several targets of
// one rank: the VLM count task's strategies).
std::string row_key(const json& j) {
  return fmt::format("{}\n{}\n{}\n{}\n{}\n{}", j.value("id", fs::path(j.value("image", "")).stem().string()),
                     j.value("on", "image"), j.value("method", ""), j.value("layers", ""), j.value("target", ""),
                     j.value("rank", 0));
}

}  // namespace

void add_pointing(RunSummary& s, const ItemRecord& r) {
  if (!r.pointing_hit) return;
  auto& [maps, centre] = s.pointing[r.method + " " + r.layers];
  maps.add(r.target, *r.pointing_hit);
  centre.add(r.target, r.centre_hit.value_or(false));
}

std::vector<ItemRecord> read_results(const std::string& dir) {
  const fs::path file = fs::path(dir) / "results.json";
  std::ifstream in(file);
  XCAM_CHECK(in.good(), "{} does not exist or cannot be read", file.string());
  std::vector<ItemRecord> out;
  try {
    for (const auto& row : json::parse(in)) out.push_back(from_json(row));
  } catch (const json::exception& e) {
    XCAM_THROW("{} is not a results file xcam wrote ({})", file.string(), e.what());
  }
  return out;
}

void write_results(const std::string& dir, const std::vector<ItemRecord>& records) {
  // Rows of earlier runs on this folder (another method, other inputs) stay;
  // a row this run wrote again replaces its old one.
  json all = json::array();
  std::set<std::string> fresh;
  for (const auto& r : records) fresh.insert(row_key(to_json(r)));
  const fs::path file = fs::path(dir) / "results.json";
  if (fs::exists(file)) {
    try {
      std::ifstream in(file);
      for (const auto& row : json::parse(in))
        if (!fresh.count(row_key(row))) all.push_back(row);
    } catch (const std::exception& e) {
      std::cerr << "xcam: warning: " << file.string() << " is unreadable (" << e.what()
                << "); it is written anew with this run's rows only\n";
      all = json::array();
    }
  }
  // This run's rows, the last one of a key where a map was written twice.
  std::map<std::string, size_t> last;
  for (size_t i = 0; i < records.size(); ++i) last[row_key(to_json(records[i]))] = i;
  for (size_t i = 0; i < records.size(); ++i)
    if (last[row_key(to_json(records[i]))] == i) all.push_back(to_json(records[i]));
  std::ostringstream csv;
  csv << "image,id,on,method,layers,target,target_index,rank,score,forward_ms,backward_ms,cam_ms,pointing_hit,"
         "centre_hit,energy,deletion,insertion,drop,increase,warnings\n";
  auto opt_bool = [](const std::optional<bool>& b) { return b ? std::string(*b ? "1" : "0") : std::string(); };
  auto opt_num = [](const std::optional<double>& v) { return v ? fmt::format("{:.6f}", *v) : std::string(); };
  for (const auto& row : all) {
    const ItemRecord r = from_json(row);
    csv << csv_field(r.image) << ',' << csv_field(r.id) << ',' << csv_field(r.on) << ',' << r.method << ',' << csv_field(r.layers) << ','
        << csv_field(r.target) << ',' << r.target_index << ',' << r.rank << ',' << r.score << ',' << r.forward_ms
        << ',' << r.backward_ms << ',' << r.cam_ms << ',' << opt_bool(r.pointing_hit) << ','
        << opt_bool(r.centre_hit) << ',' << opt_num(r.energy) << ',' << opt_num(r.deletion) << ','
        << opt_num(r.insertion) << ',' << opt_num(r.drop) << ',' << opt_bool(r.increase) << ','
        << csv_field(fmt::format("{}", fmt::join(r.warnings, "; "))) << '\n';
  }
  write_file_atomic(file.string(), json_text(all, 2) + "\n");
  write_file_atomic((fs::path(dir) / "results.csv").string(), csv.str());
}

void write_summary(const std::string& dir, const RunSummary& s, int threads, int io_threads) {
  const json j{{"done", s.done},         {"resumed", s.skipped},   {"failed", s.failed},
               {"maps", s.maps},         {"seconds", s.seconds},   {"maps_per_second", s.maps_per_second()},
               {"threads", threads},     {"io_threads", io_threads}, {"metrics", s.metrics},
               {"failures", s.failures}};
  write_file_atomic((fs::path(dir) / "summary.json").string(), json_text(j, 2) + "\n");
}

std::string method_label(const ExplainerOptions& o) {
  std::string label = o.method + (o.aug_smooth ? "+aug" : "") + (o.eigen_smooth ? "+eigen" : "");
  if (o.crops.rows > 0)
    label += fmt::format("+crops{}x{}o{}{}", o.crops.rows, o.crops.cols, o.crops.overlap, o.crops.own_size ? "own" : "");
  return label;
}

std::string safe_name(const std::string& s) {
  std::string out;
  for (char ch : s) out += (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.') ? ch : '_';
  return out.empty() ? "_" : out;
}

// ------------------------------------------------------ names and resume ----

namespace {

// 64-bit FNV-1a: stable across builds and machines, unlike std::hash.
std::string digest_of(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return fmt::format("{:016x}", h);
}

// A file as far as a re-run cares: its path, size and modification time.
std::string file_stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return path + " (missing)";
  return fmt::format("{} {} {}.{}", path, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
}

// Everything of the run that decides an item's outputs (the item's own
// image and requests are added per item).
std::string run_fingerprint(const Explainer& ex, const OutputOptions& out) {
  const auto& o = ex.options();
  const auto& p = ex.preprocess();
  const auto& a = o.attention;
  std::string s = fmt::format(
      "model {}\nplugin {} {}\nlayers {}\nmethod {}\nsize {} {}\nmean {}\nstd {}\nlabels {}\nattention {} {} {} {} "
      "{} {}\nchunk {}\noutputs {} {} {} {} {}\n",
      file_stamp(o.model), o.plugin, o.plugin_options, fmt::join(ex.layers(), "+"), method_label(o), p.height,
      p.width, fmt::join(p.mean, " "), fmt::join(p.std, " "), o.labels_file.empty() ? "" : file_stamp(o.labels_file),
      a.patch_h, a.patch_w, a.prefix, a.query, a.head_fusion, a.discard_ratio, o.score_chunk, out.save_map,
      out.save_overlay, out.save_panel, out.colormap, out.alpha);
  if (out.faithfulness) s += fmt::format("faithfulness {} {}\n", out.faithfulness->steps, out.faithfulness->chunk);
  return s;
}

// Ids unique among `images`: the stem, or for stems that several inputs
// share, the stem after as many parent folders as tell them apart.
std::vector<std::string> input_ids(const std::vector<std::string>& images) {
  std::vector<std::string> ids(images.size());
  std::vector<size_t> todo(images.size());
  for (size_t i = 0; i < images.size(); ++i) todo[i] = i;
  for (size_t depth = 0; !todo.empty(); ++depth) {
    std::map<std::string, std::vector<size_t>> by_id;
    for (size_t i : todo) {
      if (images[i].empty()) continue;  // a text sample: named by sample_ids()
      fs::path p = fs::absolute(images[i]).lexically_normal();
      std::string id = p.stem().string();
      fs::path parent = p.parent_path();
      for (size_t d = 0; d < depth && !parent.empty() && parent != parent.root_path(); ++d) {
        id = parent.filename().string() + "_" + id;
        parent = parent.parent_path();
      }
      ids[i] = safe_name(id);
      by_id[ids[i]].push_back(i);
    }
    todo.clear();
    for (const auto& [id, members] : by_id)
      if (members.size() > 1 && depth < 64) todo.insert(todo.end(), members.begin(), members.end());
  }
  return ids;
}

}  // namespace

std::vector<std::string> sample_ids(const std::vector<SampleSpec>& samples) {
  std::vector<std::string> images;
  for (const auto& sp : samples) images.push_back(sp.image);
  auto ids = input_ids(images);
  for (size_t i = 0; i < samples.size(); ++i) {
    if (!samples[i].id.empty()) ids[i] = safe_name(samples[i].id);
    else if (images[i].empty()) ids[i] = fmt::format("text{}", i + 1);
  }
  // Ids that still meet (an explicit "a/b" and "a_b", "text3" and a file text3.png): the later ones get "-2", "-3", ...
  std::set<std::string> used;
  for (auto& id : ids) {
    std::string unique = id;
    for (int k = 2; !used.insert(unique).second; ++k) unique = fmt::format("{}-{}", id, k);
    id = unique;
  }
  return ids;
}

namespace {

// Output stems of one input's maps: <id>_<label>, and <id>_<label>_r<rank>
// where two targets of the input share a label (a repeated word, `top1,0,0`).
// A map drawn on another named image than "image" gets that name too:
// <id>_<name>_<label>.
std::vector<std::string> output_stems(const std::string& id, const std::vector<const MapResult*>& maps) {
  auto base = [&](const MapResult* m) {
    const bool main = m->on == "image" || m->on == "text";  // the sample itself
    return id + "_" + (main ? "" : safe_name(m->on) + "_") + safe_name(m->target_label);
  };
  std::map<std::string, int> uses;
  for (const auto* m : maps) ++uses[base(m)];
  std::vector<std::string> stems;
  for (const auto* m : maps) stems.push_back(base(m) + (uses[base(m)] > 1 ? "_r" + std::to_string(m->rank) : ""));
  return stems;
}

// Temporary files of atomic writes (".NAME.tmpPID") left by a run that was
// killed: removed when that process is gone.
void remove_stale_temporaries(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const auto pos = name.rfind(".tmp");
    if (name.empty() || name[0] != '.' || pos == std::string::npos || pos + 4 >= name.size()) continue;
    const std::string pid = name.substr(pos + 4);
    if (!std::all_of(pid.begin(), pid.end(), ::isdigit) || pid.size() > 9) continue;
    const pid_t p = static_cast<pid_t>(std::stol(pid));
    if (p != ::getpid() && ::kill(p, 0) != 0 && errno == ESRCH) fs::remove(it->path(), ec);
  }
}

// The records of a finished item: its record file exists, was written for
// the same digest, and every output it names exists (with the faithfulness
// metrics on, its records carry them). Nothing when the item must be redone.
std::optional<std::vector<ItemRecord>> finished_item(const fs::path& record, const std::string& digest,
                                                     const OutputOptions& out) {
  std::error_code ec;
  if (!fs::exists(record, ec)) return std::nullopt;
  try {
    std::ifstream in(record);
    const json j = json::parse(in);
    if (!j.is_object() || j.value("digest", "") != digest) return std::nullopt;
    std::vector<ItemRecord> rs;
    for (const auto& item : j.at("records")) rs.push_back(from_json(item));
    const bool complete = std::all_of(rs.begin(), rs.end(), [&](const ItemRecord& r) {
      return (!out.faithfulness || r.on != "image" || (r.deletion && r.insertion && r.drop && r.increase)) &&
             std::all_of(r.outputs.begin(), r.outputs.end(),
                         [&](const std::string& o) { return fs::exists(fs::path(out.dir) / o); });
    });
    if (complete) return rs;
  } catch (const std::exception&) {
  }
  return std::nullopt;  // a damaged record: redo the item
}

}  // namespace

// ------------------------------------------------------- explain + write ----

namespace {

struct Item {
  std::string path, id, digest;
  std::vector<std::string> requests;
  SampleSpec spec;
  cv::Mat rgb;
  std::map<std::string, cv::Mat> others;  // the sample's other named images
  // How messages name it: its image, or its id for a text sample.
  const std::string& name() const { return path.empty() ? id : path; }
};

// What the Explainer takes of an item.
SampleInput input_of(const Item& item) {
  return SampleInput{item.id, item.rgb, item.others, item.spec.text, item.requests, item.spec.meta};
}

// The sample's own part of its digest: its files and what its line says.
std::string sample_stamp(const SampleSpec& sp, const std::vector<std::string>& requests) {
  std::string s = fmt::format("input {}\nrequests {}\ntext {}\n", file_stamp(sp.image), fmt::join(requests, ","),
                              sp.text);
  for (const auto& [name, p] : sp.images) s += fmt::format("image {} {}\n", name, file_stamp(p));
  for (const auto& [k, v] : sp.meta) s += fmt::format("meta {} {}\n", k, v);
  return s;
}

using Clock = std::chrono::steady_clock;

// A few threads that run tasks in the order given; submit() returns the
// task's future. The runner's pipeline: images read ahead, items written
// while the next batch computes.
class WorkPool {
 public:
  explicit WorkPool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  ~WorkPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
    for (auto& t : threads_) t.join();
  }
  template <typename R, typename F>
  std::future<R> submit(F&& f) {
    auto task = std::make_shared<std::packaged_task<R()>>(std::forward<F>(f));
    auto future = task->get_future();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tasks_.emplace_back([task] { (*task)(); });
    }
    ready_.notify_one();
    return future;
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::vector<std::thread> threads_;
  std::deque<std::function<void()>> tasks_;
  std::mutex mutex_;
  std::condition_variable ready_;
  bool stop_ = false;
};

// What writing one item gave: its records, or why it failed.
struct Outcome {
  std::string name;  // the item, as messages name it
  std::vector<ItemRecord> records;
  std::string error;
};

// A batch of items with their images read, and the items that could not be.
struct Loaded {
  std::vector<Item> items;
  std::vector<std::pair<std::string, std::string>> failures;  // item, why
};

// Shared state of one explain_and_write call.
struct Writer {
  Writer(Explainer& e, const std::map<std::string, std::vector<Box>>* b, const OutputOptions& o,
         std::vector<ItemRecord>& r, RunSummary& s, bool show_progress)
      : ex(e), boxes(b), out(o), records(r), summary(s), cmap(parse_colormap(o.colormap)),
        layers(fmt::format("{}", fmt::join(e.layers(), "+"))), item_dir(fs::path(o.dir) / ".items"),
        tty(show_progress) {}

  Explainer& ex;
  const std::map<std::string, std::vector<Box>>* boxes;
  const OutputOptions& out;
  std::vector<ItemRecord>& records;
  RunSummary& summary;
  Colormap cmap;
  std::string layers;
  fs::path item_dir;
  bool tty;
  size_t finished = 0, total = 0, resumed = 0;
  std::string progress_label;
  // The pipeline (RunOptions::io_threads > 0): items written by the pool's
  // threads while the next batch computes, taken back in order.
  WorkPool* pool = nullptr;
  std::deque<std::future<Outcome>> in_flight;
  size_t max_in_flight = 0;
  size_t maps_done = 0;
  Clock::time_point started = Clock::now();

  // "label: 37 / 48 samples, 812 maps/s, ETA 0:02" on a terminal: the rate
  // of this run's maps, the ETA from this run's samples per second.
  void progress() const {
    if (!tty) return;
    const double sec = std::chrono::duration<double>(Clock::now() - started).count();
    const size_t fresh = finished - resumed;
    std::string rate;
    if (fresh > 0 && sec > 0) {
      const double eta = double(total - finished) * sec / double(fresh);
      rate = fmt::format(", {:.0f} maps/s, ETA {}:{:02d}", double(maps_done) / sec, int(eta) / 60, int(eta) % 60);
    }
    std::cerr << fmt::format("\r{}{} / {} samples{}   ", progress_label.empty() ? "" : progress_label + ": ", finished,
                             total, rate)
              << std::flush;
  }

  void fail(const std::string& img, const std::string& why) {
    ++summary.failed;
    ++finished;
    summary.failures.push_back(fmt::format("{}: {}", img, why));
    if (tty) std::cerr << "\n";
    std::cerr << "xcam: skipped " << img << ": " << why << "\n";
    progress();
  }

  // The requests of one input: the run's targets, or every boxed class.
  std::vector<std::string> requests_of(const std::string& img, const std::vector<std::string>& targets) const {
    if (std::find(targets.begin(), targets.end(), "annotated") == targets.end()) return targets;
    const auto name = fs::path(img).filename().string();
    const auto it = boxes ? boxes->find(name) : std::map<std::string, std::vector<Box>>::const_iterator{};
    XCAM_CHECK(boxes && it != boxes->end() && !it->second.empty(),
               "targets: annotated, but the boxes file has no box for '{}'", name);
    std::vector<std::string> req;
    for (const auto& b : it->second)
      if (std::find(req.begin(), req.end(), b.label) == req.end()) req.push_back(b.label);
    return req;
  }

  // One map's outputs and its record.
  // One sample's panel, filled map by map: a row per map (image | heatmap |
  // overlay, labelled with its target), or a titled strip per map for text.
  struct Panel {
    std::vector<std::vector<cv::Mat>> rows;
    std::vector<std::string> labels;
    std::vector<cv::Mat> strips;
  };

  ItemRecord write_map(const Item& item, const MapResult& m, const std::string& stem, const Faithfulness* f,
                       const StageTimes& t, double n, Panel& panel) const {
    ItemRecord r;
    r.image = item.path.empty() ? "" : fs::path(item.path).filename().string();
    r.id = item.id;
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
    r.meta = item.spec.meta;  // the manifest line's other keys, then what the plugin reports
    for (const auto& [k, v] : m.meta) r.meta[k] = v;
    if (f && m.on == "image") {
      r.deletion = f->deletion;
      r.insertion = f->insertion;
      r.drop = f->drop;
      r.increase = f->increase;
    }
    for (const auto& w : m.warnings) std::cerr << "xcam: warning: " << item.name() << " [" << m.target_label << "]: " << w << "\n";
    r.on = m.on;
    if (m.on == "text") {
      write_text_map(m, stem, r);
      if (out.save_panel)
        panel.strips.push_back(render_token_strip(m.words, m.map, cmap, fmt::format("{} p={:.3f}", m.target_label, m.score)));
      return r;
    }
    const auto other = item.others.find(m.on);
    XCAM_CHECK(m.on == "image" || other != item.others.end(),
               "the plugin draws a map on image '{}', which sample '{}' does not have; give it in the manifest's "
               "\"images\"",
               m.on, item.id);
    const cv::Mat& rgb = m.on == "image" ? item.rgb : other->second;
    const auto full = map_at_image_size(m.map, m.height, m.width, rgb);
    const fs::path dir(out.dir);
    if (out.save_map) {
      write_npy((dir / (stem + ".npy")).string(), {rgb.rows, rgb.cols}, full.data());
      r.outputs.push_back(stem + ".npy");
    }
    if (out.save_overlay || out.save_panel) {
      const auto rendered = render_overlay(rgb, full, out.alpha, cmap);
      if (out.save_overlay) {
        write_png((dir / (stem + ".png")).string(), rendered.overlay, out.png_level);
        r.outputs.push_back(stem + ".png");
      }
      if (out.save_panel) {
        panel.rows.push_back({rgb, rendered.heat, rendered.overlay});
        panel.labels.push_back(fmt::format("{}{} p={:.3f}", m.target_label, m.on == "image" ? "" : " (" + m.on + ")",
                                           m.score));
      }
    }
    if (boxes && m.on == "image") {
      const auto it = boxes->find(r.image);
      std::vector<Box> cls;
      if (it != boxes->end())
        for (const auto& b : it->second)
          if (b.label == m.target_label) cls.push_back(b);
      if (!cls.empty()) {
        const auto pg = pointing_game(full.data(), item.rgb.rows, item.rgb.cols, cls);
        r.pointing_hit = pg.hit;
        r.energy = pg.energy;
        r.centre_hit = centre_point_hit(item.rgb.rows, item.rgb.cols, cls);
      }
    }
    return r;
  }

  // A map over a text sample's tokens: the values (1 x T .npy), a heat strip
  // over the words (.png; with a title line for the panel) and the numbers in
  // the record.
  void write_text_map(const MapResult& m, const std::string& stem, ItemRecord& r) const {
    XCAM_CHECK(m.words.size() == m.map.size(), "map of text sample '{}' has {} values for {} words", r.id,
               m.map.size(), m.words.size());
    r.words = m.words;
    r.word_values = m.map;
    const fs::path dir(out.dir);
    if (out.save_map) {
      write_npy((dir / (stem + ".npy")).string(), {1, static_cast<int64_t>(m.map.size())}, m.map.data());
      r.outputs.push_back(stem + ".npy");
    }
    if (out.save_overlay) {
      write_png((dir / (stem + ".png")).string(), render_token_strip(m.words, m.map, cmap), out.png_level);
      r.outputs.push_back(stem + ".png");
    }
  }

  // The sample's panel, all its targets in one picture: <id>_panel.png
  // (its name; empty when panels are off or it has no map).
  std::string write_panel(const Item& item, const Panel& panel) const {
    if (!out.save_panel || (panel.rows.empty() && panel.strips.empty())) return "";
    const std::string shown = item.path.empty() ? item.id : fs::path(item.path).filename().string();
    const std::string name = item.id + "_panel.png",
                      title = fmt::format("{} | {} @ {}", shown, method_label(ex.options()), layers);
    const cv::Mat picture = panel.rows.empty()
                                ? render_stack(title, panel.strips)
                                : render_grid(title, {"image", "heatmap", "overlay"}, panel.labels, panel.rows);
    write_png((fs::path(out.dir) / name).string(), picture, out.png_level);
    return name;
  }

  // Writes the outputs of one explained item, then its record file (last,
  // atomically: a killed run never leaves a record for missing outputs).
  // Writes one item's outputs, then its record file. Only reads the
  // writer's shared state, so the writer threads run it side by side.
  Outcome render_item(const Item& item, const std::vector<MapResult>& maps, const std::vector<Faithfulness>& faith,
                      const StageTimes& t, double n) const {
    Outcome o{item.name(), {}, {}};
    try {
      std::vector<const MapResult*> mine;
      std::vector<const Faithfulness*> mine_f;
      for (size_t mi = 0; mi < maps.size(); ++mi)
        if (maps[mi].image_id == item.id) {
          mine.push_back(&maps[mi]);
          mine_f.push_back(faith.empty() ? nullptr : &faith[mi]);
        }
      const auto stems = output_stems(item.id, mine);
      Panel panel;
      for (size_t k = 0; k < mine.size(); ++k)
        o.records.push_back(write_map(item, *mine[k], stems[k], mine_f[k], t, n, panel));
      if (const auto name = write_panel(item, panel); !name.empty())
        for (auto& r : o.records) r.outputs.push_back(name);
      json rs = json::array();
      for (const auto& r : o.records) rs.push_back(to_json(r));
      const json j{{"input", item.path}, {"digest", item.digest}, {"records", rs}};
      write_file_atomic((item_dir / (item.id + ".json")).string(), json_text(j, 1));
    } catch (const std::exception& e) {
      o.error = e.what();
    }
    return o;
  }

  // Takes a written item into the run (records, counts, progress): on the
  // calling thread, in item order.
  void finish(Outcome&& o) {
    if (!o.error.empty()) {
      fail(o.name, o.error);
      return;
    }
    maps_done += o.records.size();
    for (auto& r : o.records) {
      add_pointing(summary, r);
      records.push_back(std::move(r));
    }
    ++summary.done;
    ++finished;
    progress();
  }

  void write_item(const Item& item, const std::vector<MapResult>& maps, const std::vector<Faithfulness>& faith,
                  const StageTimes& t, double n) {
    finish(render_item(item, maps, faith, t, n));
  }

  // Explains `items` in one batch; when the batch fails as a whole, its items
  // one by one, so that a single bad item is reported and skipped.
  void explain_batch(const std::vector<Item>& items) {
    std::vector<std::vector<size_t>> groups{{}};
    for (size_t i = 0; i < items.size(); ++i) groups[0].push_back(i);
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const auto group = groups[gi];
      std::vector<SampleInput> samples;
      for (size_t i : group) samples.push_back(input_of(items[i]));
      std::vector<MapResult> maps;
      std::vector<Faithfulness> faith;
      StageTimes t;
      try {
        maps = ex.explain(samples, &t);
        // The metric forwards are not part of the explanation's timings.
        if (out.faithfulness) faith = ex.faithfulness(samples, maps, *out.faithfulness);
      } catch (const SetupError&) {
        throw;  // the run's set-up: no sample would do better
      } catch (const std::exception& e) {
        if (group.size() > 1)
          for (size_t i : group) groups.push_back({i});
        else
          fail(items[group[0]].name(), e.what());
        continue;
      }
      const double n = static_cast<double>(group.size());
      for (size_t i : group) {
        if (!pool) {
          write_item(items[i], maps, faith, t, n);
          continue;
        }
        // The item's own maps, copied: the writer thread owns them.
        std::vector<MapResult> mine;
        std::vector<Faithfulness> mine_f;
        for (size_t k = 0; k < maps.size(); ++k)
          if (maps[k].image_id == items[i].id) {
            mine.push_back(maps[k]);
            if (!faith.empty()) mine_f.push_back(faith[k]);
          }
        in_flight.push_back(pool->submit<Outcome>(
            [this, item = items[i], mine = std::move(mine), mine_f = std::move(mine_f), t, n] {
              return render_item(item, mine, mine_f, t, n);
            }));
      }
      drain(max_in_flight);
    }
  }

  // Finishes written items, oldest first, until at most `keep` are in flight.
  void drain(size_t keep) {
    while (in_flight.size() > keep) {
      finish(in_flight.front().get());
      in_flight.pop_front();
    }
  }
};

}  // namespace

namespace {

// What the outputs need, checked before anything is computed: the folder
// can be made and written to, the overlay weight and PNG level are sane.
void check_outputs(const OutputOptions& out) {
  XCAM_CHECK(out.alpha >= 0 && out.alpha <= 1, "the overlay's image weight (alpha) must be in [0, 1], got {}",
             out.alpha);
  XCAM_CHECK(out.png_level >= -1 && out.png_level <= 9, "png_level must be -1 (fast) or 0..9, got {}", out.png_level);
  std::error_code ec;
  fs::create_directories(fs::path(out.dir) / ".items", ec);
  const auto probe = fs::path(out.dir) / fmt::format(".xcam-write-test{}", ::getpid());
  bool ok = !ec && std::ofstream(probe).good();
  fs::remove(probe, ec);
  ok = ok && std::ofstream(fs::path(out.dir) / ".items" / probe.filename()).good();
  fs::remove(fs::path(out.dir) / ".items" / probe.filename(), ec);
  XCAM_CHECK(ok, "cannot create output directory '{}' or write in it (permissions? read-only disk? a file in the "
             "way?); choose another with --out or outputs.dir",
             out.dir);
}

// The items to explain, of `kept` (each with its finished records, if any)
// cut into batches of `step` as a fresh run makes them: a batch whose items
// are all finished is taken as it is (its records counted as resumed); a
// batch with any item unfinished is explained again whole, so that every
// map is computed in the batch a fresh run computes it in (the same numbers
// bit for bit: a shard's or an interrupted run's outputs equal an
// uninterrupted run's).
std::vector<Item> take_finished_batches(std::vector<std::pair<Item, std::optional<std::vector<ItemRecord>>>>& kept,
                                        size_t step, Writer& w, std::vector<ItemRecord>& records,
                                        RunSummary& summary) {
  std::vector<Item> pending;
  for (size_t start = 0; start < kept.size(); start += step) {
    const size_t end = std::min(kept.size(), start + step);
    const bool whole = std::all_of(kept.begin() + start, kept.begin() + end, [](const auto& k) { return k.second; });
    for (size_t i = start; i < end; ++i) {
      if (!whole) {
        pending.push_back(std::move(kept[i].first));
        continue;
      }
      for (const auto& r : *kept[i].second) {
        add_pointing(summary, r);
        records.push_back(r);
      }
      ++summary.skipped;
      ++w.finished;
      ++w.resumed;
    }
  }
  return pending;
}

}  // namespace

void explain_and_write(Explainer& ex, const std::vector<SampleSpec>& samples, int batch_size,
                       const std::vector<std::string>& targets,
                       const std::map<std::string, std::vector<Box>>* boxes, const OutputOptions& out,
                       std::vector<ItemRecord>& records, RunSummary& summary, const RunOptions& opt,
                       const std::string& progress_label) {
  check_outputs(out);
  Writer w(ex, boxes, out, records, summary, opt.progress && ::isatty(STDERR_FILENO));
  w.progress_label = progress_label;
  w.total = samples.size();
  remove_stale_temporaries(out.dir);
  remove_stale_temporaries(w.item_dir);
  const std::string fingerprint = run_fingerprint(ex, out);
  std::vector<std::string> images;
  for (const auto& sp : samples) images.push_back(sp.image);
  const auto ids = sample_ids(samples);

  // Resume: items finished with the same digest are taken as they are, a
  // batch at a time (take_finished_batches).
  std::vector<std::pair<Item, std::optional<std::vector<ItemRecord>>>> kept;
  for (size_t i = 0; i < samples.size(); ++i) {
    Item item;
    item.path = images[i];
    item.id = ids[i];
    item.spec = samples[i];
    try {
      item.requests = samples[i].targets.empty() ? w.requests_of(images[i], targets) : samples[i].targets;
    } catch (const Error& e) {
      w.fail(images[i], e.what());
      continue;
    }
    item.digest = digest_of(fingerprint + sample_stamp(samples[i], item.requests));
    auto done = opt.force ? std::nullopt : finished_item(w.item_dir / (item.id + ".json"), item.digest, out);
    kept.emplace_back(std::move(item), std::move(done));
  }
  const auto step = static_cast<size_t>(batch_size);
  std::vector<Item> pending = take_finished_batches(kept, step, w, records, summary);
  w.progress();

  // The pipeline: with io_threads, the next batch's images are read and the
  // finished items written on the pool while a batch computes; at most two
  // batches of items wait to be written (memory stays flat).
  std::optional<WorkPool> pool;
  if (opt.io_threads > 0) {
    pool.emplace(opt.io_threads);
    w.pool = &*pool;
    w.max_in_flight = 2 * static_cast<size_t>(batch_size);
  }
  auto load = [&pending, step](size_t start) {
    Loaded l;
    for (size_t i = start; i < std::min(pending.size(), start + step); ++i) {
      try {
        Item item = pending[i];  // the images are held for this batch only
        if (!item.path.empty()) item.rgb = load_rgb(item.path);
        for (const auto& [name, p] : item.spec.images) item.others[name] = load_rgb(p);
        l.items.push_back(std::move(item));
      } catch (const Error& e) {
        l.failures.emplace_back(pending[i].name(), e.what());
      }
    }
    return l;
  };
  std::future<Loaded> ahead;
  if (pool && !pending.empty()) ahead = pool->submit<Loaded>([&load] { return load(0); });
  bool warmed = !opt.warmup;
  for (size_t start = 0; start < pending.size(); start += step) {
    Loaded batch = pool ? ahead.get() : load(start);
    if (pool && start + step < pending.size()) ahead = pool->submit<Loaded>([&load, next = start + step] { return load(next); });
    for (const auto& [name, why] : batch.failures) w.fail(name, why);
    if (batch.items.empty()) continue;
    if (!warmed) {
      // Untimed, twice: the first calls pay for one-off set-up (thread pools,
      // allocator, the TorchScript executor's profiling run and the
      // optimisation after it). Errors show up again in the timed call.
      std::vector<SampleInput> warm;
      for (const auto& it : batch.items) warm.push_back(input_of(it));
      try {
        for (int k = 0; k < 2; ++k) ex.explain(warm);
      } catch (const std::exception&) {
      }
      warmed = true;
    }
    w.explain_batch(batch.items);
  }
  w.drain(0);
  const double sec = std::chrono::duration<double>(Clock::now() - w.started).count();
  summary.seconds += sec;
  summary.maps += w.maps_done;
  if (w.tty) std::cerr << "\n";
}

// ------------------------------------------------------------- tasks ----

namespace {

// A task's sample: the input `spec` as item `id`, with its own targets or
// else the run's.
Item task_item(const SampleSpec& spec, const std::string& id, const std::vector<std::string>& run_targets) {
  Item item;
  item.path = spec.image;
  item.id = id;
  item.spec = spec;
  item.requests = spec.targets.empty() ? run_targets : spec.targets;
  return item;
}

// A task panel tile's border (MapResult::meta "panel_border"): green, red,
// or #rrggbb; 3 px inside the tile.
void draw_border(cv::Mat& rgb, const std::string& colour) {
  cv::Scalar c;
  if (colour == "green") c = cv::Scalar(0, 170, 0);
  else if (colour == "red") c = cv::Scalar(220, 0, 0);
  else {
    XCAM_CHECK(colour.size() == 7 && colour[0] == '#' &&
                   colour.find_first_not_of("0123456789abcdefABCDEF", 1) == std::string::npos,
               "panel_border '{}' is not green, red or #rrggbb", colour);
    const auto v = std::stoul(colour.substr(1), nullptr, 16);
    c = cv::Scalar((v >> 16) & 255, (v >> 8) & 255, v & 255);
  }
  const int t = std::max(1, std::min({3, rgb.cols / 4, rgb.rows / 4}));
  cv::rectangle(rgb, cv::Rect(0, 0, rgb.cols, rgb.rows), c, 2 * t);  // half of it is clipped
}

// The run's side of a plugin's dataset task: samples loaded on demand, maps
// written as explain_and_write writes them, panels, JSON and metrics.
class RunnerTask final : public TaskRun {
 public:
  RunnerTask(Writer& w, std::vector<Item> items, std::vector<std::string> targets, std::string base)
      : w_(w), items_(std::move(items)), targets_(std::move(targets)), base_(std::move(base)) {}
  size_t size() const override { return items_.size(); }
  const std::string& id(size_t i) const override { return items_.at(i).id; }
  const std::string& output_dir() const override { return w_.out.dir; }
  SampleInput load(size_t i) override { return input_of(loaded(i)); }

  void write_maps(const std::vector<MapResult>& maps) override {
    for (size_t i = 0; i < items_.size(); ++i)
      if (std::any_of(maps.begin(), maps.end(), [&](const MapResult& m) { return m.image_id == items_[i].id; }))
        w_.write_item(loaded(i), maps, {}, StageTimes{}, 1.0);
  }
  void write_panel(const std::string& name, const std::string& title, const std::vector<MapResult>& maps) override {
    std::vector<std::string> headers;
    std::vector<cv::Mat> tiles;
    for (const auto& m : maps) {
      const Item& item = loaded(index_of(m.image_id));
      const auto header = m.meta.find("panel_header");
      headers.push_back(header != m.meta.end() ? header->second : m.image_id + " " + m.target_label);
      if (m.on == "text") {
        tiles.push_back(render_token_strip(m.words, m.map, w_.cmap));
        continue;
      }
      const auto it = item.others.find(m.on);
      XCAM_CHECK(m.on == "image" || it != item.others.end(), "task panel '{}': sample '{}' has no image '{}'", name,
                 m.image_id, m.on);
      const cv::Mat& rgb = m.on == "image" ? item.rgb : it->second;
      const auto tile = m.meta.find("panel_tile");
      XCAM_CHECK(tile == m.meta.end() || tile->second == "image", "task panel '{}': panel_tile '{}' is not 'image'",
                 name, tile->second);
      if (tile != m.meta.end()) tiles.push_back(rgb.clone());  // the image itself, before its maps
      else
        tiles.push_back(render_overlay(rgb, map_at_image_size(m.map, m.height, m.width, rgb), w_.out.alpha, w_.cmap).overlay);
      if (const auto border = m.meta.find("panel_border"); border != m.meta.end())
        draw_border(tiles.back(), border->second);
    }
    XCAM_CHECK(!tiles.empty(), "task panel '{}' has no maps", name);
    write_png((fs::path(w_.out.dir) / (safe_name(name) + ".png")).string(), render_grid(title, headers, {}, {tiles}));
  }
  void write_json(const std::string& name, const std::string& text) override {
    write_file_atomic((fs::path(w_.out.dir) / (safe_name(name) + ".json")).string(), text + "\n");
  }
  void add_metric(const std::string& name, double value) override { metrics[name] = value; }
  std::map<std::string, double> metrics;

  std::vector<size_t> add_inputs(const std::string& inputs) override {
    const auto specs = samples_of(expand_inputs({inputs}, base_));
    std::set<std::string> taken;
    for (const auto& item : items_) taken.insert(item.id);
    std::vector<size_t> added;
    const auto ids = sample_ids(specs);
    for (size_t k = 0; k < specs.size(); ++k) {
      Item item = task_item(specs[k], ids[k], targets_);
      for (int n = 2; taken.count(item.id); ++n) item.id = ids[k] + "-" + std::to_string(n);
      taken.insert(item.id);
      added.push_back(items_.size());
      items_.push_back(std::move(item));
    }
    w_.total = items_.size();
    return added;
  }
  size_t pair(size_t i, const std::string& name, size_t j, const std::string& id) override {
    XCAM_CHECK(!items_.at(j).path.empty(), "task: sample '{}' has no image to pair with", items_.at(j).id);
    XCAM_CHECK(std::none_of(items_.begin(), items_.end(), [&](const Item& it) { return it.id == id; }),
               "task: a sample '{}' is already in the run; give the pair another id", id);
    Item item = items_.at(i);
    item.id = id;
    item.spec.id = id;
    item.spec.images[name] = items_.at(j).path;
    item.others.erase(name);
    if (!items_[j].rgb.empty()) item.others[name] = items_[j].rgb;
    items_.push_back(std::move(item));
    return items_.size() - 1;
  }
  std::array<int64_t, 2> image_size(size_t i) override {
    const Item& item = loaded(i);
    XCAM_CHECK(!item.rgb.empty(), "task: sample '{}' has no image", item.id);
    return {item.rgb.rows, item.rgb.cols};
  }
  size_t crop(size_t i, const std::array<int64_t, 4>& box, const std::string& id) override {
    const auto [h, w] = image_size(i);
    const auto [x0, y0, x1, y1] = box;
    XCAM_CHECK(0 <= x0 && x0 < x1 && x1 <= w && 0 <= y0 && y0 < y1 && y1 <= h,
               "task: crop [{}, {}, {}, {}] of sample '{}' is empty or outside its {} x {} image (x0 y0 x1 y1, "
               "pixels, x1 and y1 exclusive)",
               x0, y0, x1, y1, items_.at(i).id, w, h);
    XCAM_CHECK(std::none_of(items_.begin(), items_.end(), [&](const Item& it) { return it.id == id; }),
               "task: a sample '{}' is already in the run; give the crop another id", id);
    Item item = items_.at(i);
    item.id = id;
    item.spec.id = id;
    item.rgb = item.rgb(cv::Rect(int(x0), int(y0), int(x1 - x0), int(y1 - y0))).clone();
    items_.push_back(std::move(item));
    return items_.size() - 1;
  }

 private:
  size_t index_of(const std::string& id) const {
    for (size_t i = 0; i < items_.size(); ++i)
      if (items_[i].id == id) return i;
    XCAM_THROW("task: no sample '{}' in this run", id);
  }
  // Item i with its images read (kept for the task's length: tasks revisit samples).
  const Item& loaded(size_t i) {
    Item& item = items_.at(i);
    if (item.rgb.empty() && !item.path.empty()) item.rgb = load_rgb(item.path);
    for (const auto& [name, p] : item.spec.images)
      if (!item.others.count(name)) item.others[name] = load_rgb(p);
    return item;
  }

  Writer& w_;
  std::vector<Item> items_;
  std::vector<std::string> targets_;  // the run's, for added samples
  std::string base_;                  // where relative inputs are resolved
};

}  // namespace

void run_task_and_write(Explainer& ex, const std::string& task_json, const std::vector<SampleSpec>& samples,
                        const std::vector<std::string>& targets, const OutputOptions& out,
                        std::vector<ItemRecord>& records, RunSummary& summary, const std::string& base_dir) {
  check_outputs(out);
  Writer w(ex, nullptr, out, records, summary, false);
  fs::create_directories(w.item_dir);
  remove_stale_temporaries(out.dir);
  remove_stale_temporaries(w.item_dir);
  std::vector<Item> items;
  const auto ids = sample_ids(samples);
  for (size_t i = 0; i < samples.size(); ++i) items.push_back(task_item(samples[i], ids[i], targets));
  w.total = items.size();
  RunnerTask run(w, std::move(items), targets, base_dir);
  ex.run_task(task_json, run);
  json metrics = json::object();
  for (const auto& [k, v] : run.metrics) {
    metrics[k] = v;
    summary.metrics[k] = v;
  }
  // The task as configured: a merge's shard folders are the run's business.
  auto task = json::parse(task_json);
  if (task.is_object()) task.erase("merge");
  write_file_atomic((fs::path(out.dir) / "task.json").string(),
                    json_text(json{{"task", task}, {"metrics", metrics}}, 2) + "\n");
}

}  // namespace xcam

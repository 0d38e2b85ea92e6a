// The captioner plugin's dataset tasks (plugins/captioner/README.md, "Tasks"):
//   captions  every sample's caption and a map per word from one pass; a
//             panel of the image and its first words' maps; per-word records
//             (probability, peak, energy in each box); with references, exact
//             match and BLEU-4; with boxes, the word-grounding pointing game
//             beside the centre baseline and the first word's map;
//   keywords  which captions contain each keyword, the keyword's maps for
//             those images, and a table: count, mean probability, pointing
//             game where boxes are known.
#include <nlohmann/json.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "captioner.h"
#include "xcam/metrics.h"

namespace xcam::captioner {

namespace {

struct Task {
  std::string name;
  int64_t batch = 16;   // samples explained together
  int64_t show = 8;     // samples (captions) or images per keyword (keywords) with a panel
  int64_t words = 8;    // word maps in a caption's panel
  std::vector<std::string> keywords;
};

Task parse_task(const std::string& task_json) {
  const auto j = nlohmann::json::parse(task_json);
  Task t;
  t.name = j.value("name", "");
  XCAM_CHECK(t.name == "captions" || t.name == "keywords",
             "the captioner plugin has the tasks captions and keywords, not '{}'", t.name);
  auto count = [&](const std::string& key, bool zero_ok) {
    const auto& v = j.at(key);
    XCAM_CHECK(v.is_number_integer() && v.get<int64_t>() >= (zero_ok ? 0 : 1),
               "captioner task {}: {}={} must be an integer {}", t.name, key, v.dump(), zero_ok ? ">= 0" : ">= 1");
    return v.get<int64_t>();
  };
  for (const auto& [key, value] : j.items()) {
    if (key == "name") continue;
    if (key == "batch") t.batch = count(key, false);
    else if (key == "show") t.show = count(key, true);
    else if (key == "words") t.words = count(key, false);
    else if (key == "keywords" && t.name == "keywords") {
      const auto list = value.is_string() ? nlohmann::json::array({value}) : value;
      XCAM_CHECK(list.is_array() && !list.empty(), "captioner task keywords: keywords={} must be a word or a list",
                 value.dump());
      for (const auto& w : list) {
        XCAM_CHECK(w.is_string() && split_words(w.get<std::string>()).size() == 1,
                   "captioner task keywords: keyword {} must be one word", w.dump());
        t.keywords.push_back(w.get<std::string>());
      }
    } else if (key == "shard" || key == "merge") {
      XCAM_THROW("captioner task {} does not split into shards (its BLEU-4 and grounding figures are computed over "
                 "every caption at once): run it whole, without --shard",
                 t.name);
    } else {
      XCAM_THROW("captioner task {} has no key '{}'; it takes batch, show{}", t.name, key,
                 t.name == "captions" ? ", words" : ", keywords");
    }
  }
  XCAM_CHECK(t.name != "keywords" || !t.keywords.empty(), "captioner task keywords needs `keywords: [word, ...]`");
  return t;
}

// A sample's ground truth, from its manifest line: "reference" (the true
// caption) and "boxes" ({"red circle": [x0, y0, x1, y1], ...}: each object
// by the words that name it), in the pixels of the image; "size": [H, W] of
// the image when it is not at the model's input size.
struct Truth {
  std::vector<std::string> reference;
  std::map<std::string, Box> objects;  // object name -> box at the map's size
  bool has_boxes = false;

  // The boxes of the objects whose names contain `word` (a colour, a shape).
  std::vector<Box> boxes_of(const std::string& word) const {
    std::vector<Box> out;
    for (const auto& [name, box] : objects) {
      const auto parts = split_words(name);
      if (std::find(parts.begin(), parts.end(), word) != parts.end()) out.push_back(box);
    }
    return out;
  }
};

Truth truth_of(const Sample& s, int64_t height, int64_t width) {
  Truth t;
  if (const auto it = s.meta.find("reference"); it != s.meta.end()) t.reference = split_words(it->second);
  const auto it = s.meta.find("boxes");
  if (it == s.meta.end()) return t;
  const auto j = nlohmann::json::parse(it->second, nullptr, false);
  XCAM_CHECK(j.is_object(), "sample '{}': \"boxes\" must map each object's name to [x0, y0, x1, y1], got {}", s.id,
             it->second);
  double sy = 1, sx = 1;
  if (const auto size = s.meta.find("size"); size != s.meta.end()) {
    const auto hw = nlohmann::json::parse(size->second, nullptr, false);
    XCAM_CHECK(hw.is_array() && hw.size() == 2 && hw[0].is_number() && hw[1].is_number() && hw[0].get<double>() > 0 &&
                   hw[1].get<double>() > 0,
               "sample '{}': \"size\" must be [height, width] of the image, got {}", s.id, size->second);
    sy = static_cast<double>(height) / hw[0].get<double>();
    sx = static_cast<double>(width) / hw[1].get<double>();
  }
  for (const auto& [name, box] : j.items()) {
    XCAM_CHECK(box.is_array() && box.size() == 4 && std::all_of(box.begin(), box.end(), [](const auto& v) {
                 return v.is_number();
               }) && box[2].template get<double>() > box[0].template get<double>() &&
                   box[3].template get<double>() > box[1].template get<double>(),
               "sample '{}': the box of '{}' must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {}", s.id, name,
               box.dump());
    t.objects[name] = Box{name, box[0].get<double>() * sx, box[1].get<double>() * sy, box[2].get<double>() * sx,
                          box[3].get<double>() * sy};
  }
  t.has_boxes = true;
  return t;
}

// The maps of `which`, explained `batch` samples at a time.
std::vector<MapResult> explain_all(TaskHost& host, const std::vector<size_t>& which, int64_t batch,
                                   const std::vector<std::vector<std::string>>& requests = {}) {
  std::vector<MapResult> out;
  for (size_t at = 0; at < which.size(); at += static_cast<size_t>(batch)) {
    const size_t to = std::min(which.size(), at + static_cast<size_t>(batch));
    const std::vector<size_t> part(which.begin() + static_cast<std::ptrdiff_t>(at),
                                   which.begin() + static_cast<std::ptrdiff_t>(to));
    std::vector<std::vector<std::string>> req;
    if (!requests.empty())
      req.assign(requests.begin() + static_cast<std::ptrdiff_t>(at), requests.begin() + static_cast<std::ptrdiff_t>(to));
    auto maps = host.explain(part, req);
    host.write_maps(maps);
    for (auto& m : maps) out.push_back(std::move(m));
  }
  return out;
}

// The image of a sample as the first tile of its panel.
MapResult image_tile(const MapResult& like) {
  MapResult t = like;
  t.meta = {{"panel_tile", "image"}, {"panel_header", like.image_id}};
  return t;
}

nlohmann::json word_record(const MapResult& m, const Truth& truth) {
  const auto peak = pointing_game(m.map.data(), m.height, m.width, {});
  nlohmann::json r{{"word", m.target_label},
                   {"step", m.target.step},
                   {"probability", m.score},
                   {"peak", {peak.peak_x, peak.peak_y}}};
  if (truth.has_boxes) {
    nlohmann::json energy = nlohmann::json::object();
    for (const auto& [name, box] : truth.objects)
      energy[name] = pointing_game(m.map.data(), m.height, m.width, {box}).energy;
    r["box_energy"] = energy;
  }
  return r;
}

void run_captions(TaskHost& host, const Task& task) {
  std::vector<size_t> all(host.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  const auto maps = explain_all(host, all, task.batch);
  std::map<std::string, std::vector<const MapResult*>> by_sample;
  for (const auto& m : maps) by_sample[m.image_id].push_back(&m);

  std::vector<std::vector<std::string>> hyps, refs;
  PointingGame words_pg, centre_pg, first_pg;
  int64_t exact = 0, hits = 0, grounded = 0;
  nlohmann::json records = nlohmann::json::array();
  for (size_t i = 0; i < host.size(); ++i) {
    const auto it = by_sample.find(host.id(i));
    if (it == by_sample.end()) continue;
    auto mine = it->second;
    std::sort(mine.begin(), mine.end(), [](const MapResult* a, const MapResult* b) { return a->rank < b->rank; });
    const MapResult& first = *mine.front();
    const Truth truth = truth_of(host.sample(i), first.height, first.width);
    const std::string caption = first.meta.count("caption") ? first.meta.at("caption") : "";
    nlohmann::json rec{{"id", host.id(i)}, {"caption", caption}};
    if (!truth.reference.empty()) {
      hyps.push_back(split_words(caption));
      refs.push_back(truth.reference);
      exact += hyps.back() == refs.back();
      rec["reference"] = fmt::format("{}", fmt::join(truth.reference, " "));
      rec["exact"] = hyps.back() == refs.back();
    }
    nlohmann::json words = nlohmann::json::array();
    for (const MapResult* m : mine) {
      auto w = word_record(*m, truth);
      const auto boxes = truth.boxes_of(m->target_label);
      if (!boxes.empty()) {  // a content word: it names an object
        const bool hit = pointing_game(m->map.data(), m->height, m->width, boxes).hit;
        words_pg.add(m->target_label, hit);
        centre_pg.add(m->target_label, centre_point_hit(m->height, m->width, boxes));
        first_pg.add(m->target_label, pointing_game(first.map.data(), first.height, first.width, boxes).hit);
        hits += hit;
        ++grounded;
        w["hit"] = hit;
      }
      words.push_back(w);
    }
    rec["words"] = words;
    records.push_back(rec);
    if (static_cast<int64_t>(records.size()) <= task.show) {
      std::vector<MapResult> tiles{image_tile(first)};
      for (size_t k = 0; k < mine.size() && static_cast<int64_t>(k) < task.words; ++k) {
        tiles.push_back(*mine[k]);
        tiles.back().meta["panel_header"] = mine[k]->target_label;
      }
      host.write_panel(host.id(i) + "_words", fmt::format("{}: \"{}\"", host.id(i), caption), tiles);
    }
  }
  host.write_json("captions", nlohmann::json{{"captions", records}}.dump(1));
  host.add_metric("captions", static_cast<double>(records.size()));
  if (!refs.empty()) {
    host.add_metric("exact_match", static_cast<double>(exact) / static_cast<double>(refs.size()));
    host.add_metric("bleu4", bleu4(hyps, refs));
  }
  if (grounded > 0) {
    host.add_metric("grounded_words", static_cast<double>(grounded));
    host.add_metric("pointing", words_pg.score());
    host.add_metric("pointing_hits", static_cast<double>(hits) / static_cast<double>(grounded));
    host.add_metric("pointing_centre", centre_pg.score());
    host.add_metric("pointing_first_word", first_pg.score());
  }
}

void run_keywords(const CaptionerPlugin& plugin, TaskHost& host, const Task& task) {
  // Every caption, without taps.
  std::vector<std::vector<std::string>> captions(host.size());
  for (size_t at = 0; at < host.size(); at += static_cast<size_t>(task.batch)) {
    std::vector<size_t> part;
    for (size_t i = at; i < std::min(host.size(), at + static_cast<size_t>(task.batch)); ++i) part.push_back(i);
    Batch b;
    host.forward(part, &b);
    for (size_t k = 0; k < part.size(); ++k) captions[part[k]] = plugin.caption(b, static_cast<int64_t>(k));
  }
  nlohmann::json table = nlohmann::json::array();
  std::ofstream csv(host.output_dir() + "/keywords.csv");
  csv << "keyword,count,mean_probability,pointing,pointing_centre,with_boxes\n";
  for (const auto& kw : task.keywords) {
    std::vector<size_t> which;
    for (size_t i = 0; i < captions.size(); ++i)
      if (std::find(captions[i].begin(), captions[i].end(), kw) != captions[i].end()) which.push_back(i);
    nlohmann::json row{{"keyword", kw}, {"count", which.size()}, {"images", nlohmann::json::array()}};
    double probability = 0;
    int64_t boxed = 0, hits = 0, centre = 0;
    std::vector<MapResult> panel;
    if (!which.empty()) {
      const auto maps = explain_all(host, which, task.batch,
                                    std::vector<std::vector<std::string>>(which.size(), {"word:" + kw}));
      for (size_t k = 0; k < maps.size(); ++k) {
        const MapResult& m = maps[k];
        const Truth truth = truth_of(host.sample(which[k]), m.height, m.width);
        nlohmann::json image = word_record(m, truth);
        image["id"] = m.image_id;
        image["caption"] = fmt::format("{}", fmt::join(captions[which[k]], " "));
        probability += m.score;
        if (const auto boxes = truth.boxes_of(kw); !boxes.empty()) {
          const bool hit = pointing_game(m.map.data(), m.height, m.width, boxes).hit;
          hits += hit;
          centre += centre_point_hit(m.height, m.width, boxes);
          ++boxed;
          image["hit"] = hit;
        }
        row["images"].push_back(image);
        if (static_cast<int64_t>(panel.size()) < task.show) {
          panel.push_back(m);
          panel.back().meta["panel_header"] = m.image_id;
        }
      }
      probability /= static_cast<double>(maps.size());
      row["mean_probability"] = probability;
      host.add_metric(kw + ".mean_probability", probability);
      host.write_panel("keyword_" + kw, fmt::format("'{}': {} of {} captions", kw, which.size(), host.size()), panel);
    }
    host.add_metric(kw + ".count", static_cast<double>(which.size()));
    if (boxed > 0) {
      row["pointing"] = static_cast<double>(hits) / static_cast<double>(boxed);
      row["pointing_centre"] = static_cast<double>(centre) / static_cast<double>(boxed);
      host.add_metric(kw + ".pointing", row["pointing"].get<double>());
    }
    row["with_boxes"] = boxed;
    csv << fmt::format("{},{},{},{},{},{}\n", kw, which.size(), which.empty() ? "" : fmt::format("{:.6f}", probability),
                       boxed ? fmt::format("{:.6f}", static_cast<double>(hits) / boxed) : "",
                       boxed ? fmt::format("{:.6f}", static_cast<double>(centre) / boxed) : "", boxed);
    table.push_back(row);
  }
  XCAM_CHECK(csv.good(), "captioner task keywords: '{}/keywords.csv' could not be written", host.output_dir());
  host.write_json("keywords", nlohmann::json{{"keywords", table}}.dump(1));
}

}  // namespace

void CaptionerPlugin::run_task(TaskHost& host, const std::string& task_json) const {
  const Task task = parse_task(task_json);
  XCAM_CHECK(host.size() > 0, "captioner task {}: the run has no inputs", task.name);
  if (task.name == "captions") run_captions(host, task);
  else run_keywords(*this, host, task);
}

}  // namespace xcam::captioner

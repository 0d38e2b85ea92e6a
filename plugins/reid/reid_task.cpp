// The re-ID plugin's dataset tasks (plugins/reid/README.md, "Tasks"):
//   evaluate  queries against a gallery with the Market-1501 protocol: mAP,
//             CMC Rank-1/5/10 and mINP, then a panel for each of the first
//             `show` queries: the query | its top-k gallery images, each with
//             its similarity map, green or red by identity;
//   search    the same ranking and panels for every query, identities optional
//             (a folder of queries against one gallery).
#include <nlohmann/json.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "reid.h"
#include "xcam/retrieval.h"

namespace xcam::reid {

namespace {

// The identity and camera of a Market-1501 file name (its id):
// PPPP_cCsS_FFFFFF_NN, with -1 for junk. False when the name is not one.
bool market_name(const std::string& id, int64_t& pid, int64_t& cam) {
  auto digits = [](const std::string& s, size_t from, size_t to) {
    return to > from && to <= s.size() &&
           std::all_of(s.begin() + static_cast<std::ptrdiff_t>(from), s.begin() + static_cast<std::ptrdiff_t>(to),
                       [](char c) { return c >= '0' && c <= '9'; });
  };
  std::vector<std::string> part;
  for (size_t at = 0;;) {
    const size_t next = id.find('_', at);
    part.push_back(id.substr(at, next == std::string::npos ? std::string::npos : next - at));
    if (next == std::string::npos) break;
    at = next + 1;
  }
  if (part.size() != 4 || !(part[0] == "-1" || digits(part[0], 0, part[0].size()))) return false;
  const std::string& c = part[1];  // cCsS
  const size_t s = c.find('s');
  if (c.empty() || c[0] != 'c' || s == std::string::npos || !digits(c, 1, s) || !digits(c, s + 1, c.size()) ||
      !digits(part[2], 0, part[2].size()) || !digits(part[3], 0, part[3].size()) || part[0].size() > 9 || s > 9)
    return false;
  pid = std::stoll(part[0]);
  cam = std::stoll(c.substr(1, s - 1));
  return true;
}

struct Task {
  std::string name;
  std::string query, gallery;  // inputs; query empty: the run's own
  int64_t batch = 64;
  std::string distance = "euclidean";
  int64_t show = 10, top_k = 5, max_rank = 50;
  // Set by the host for sharded runs (docs/scaling.md): shard I of N embeds
  // only its part of the images; the merge reads every shard's part.
  int64_t shard = -1, shards = 0;
  std::vector<std::string> merge;  // the shards' task folders
};

Task parse_task(const std::string& task_json) {
  const auto j = nlohmann::json::parse(task_json);
  Task t;
  t.name = j.value("name", "");
  XCAM_CHECK(t.name == "evaluate" || t.name == "search",
             "unknown task '{}'; the reid plugin knows 'evaluate' (metrics and panels) and 'search' (panels)", t.name);
  t.show = t.name == "search" ? -1 : 10;
  for (const auto& [key, v] : j.items()) {
    auto count = [&](int64_t lo) {
      XCAM_CHECK(v.is_number_integer() && v.get<int64_t>() >= lo, "task {}: {}={} must be an integer >= {}", t.name,
                 key, v.dump(), lo);
      return v.get<int64_t>();
    };
    if (key == "name") continue;
    if (key == "query" || key == "gallery") {
      XCAM_CHECK(v.is_string() && !v.get<std::string>().empty(),
                 "task {}: {} must be a folder, a glob or a list file of images", t.name, key);
      (key == "query" ? t.query : t.gallery) = v.get<std::string>();
    } else if (key == "batch") {
      t.batch = count(1);
    } else if (key == "distance") {
      t.distance = v.is_string() ? v.get<std::string>() : "";
      XCAM_CHECK(t.distance == "euclidean" || t.distance == "cosine",
                 "task {}: distance={} must be euclidean (squared, the protocol's) or cosine", t.name, v.dump());
    } else if (key == "show") {
      t.show = count(-1);
    } else if (key == "top_k") {
      t.top_k = count(1);
    } else if (key == "max_rank") {
      t.max_rank = count(1);
    } else if (key == "shard") {
      XCAM_CHECK(v.is_object() && v.value("index", -1) >= 0 && v.value("index", -1) < v.value("count", 0),
                 "task {}: shard={} must be {{\"index\": I, \"count\": N}} with 0 <= I < N", t.name, v.dump());
      t.shard = v["index"].get<int64_t>();
      t.shards = v["count"].get<int64_t>();
    } else if (key == "merge") {
      XCAM_CHECK(v.is_array() && !v.empty(), "task {}: merge={} must be the list of the shards' folders", t.name,
                 v.dump());
      for (const auto& d : v) t.merge.push_back(d.get<std::string>());
    } else {
      XCAM_THROW("task {} has no key '{}'; it takes query, gallery, batch, distance, show, top_k, max_rank (and "
                 "shard, merge from `xcam run --shard`, `xcam merge`)", t.name,
                 key);
    }
  }
  XCAM_CHECK(!t.gallery.empty(), "task {} needs a gallery (a folder of images: gallery: bounding_box_test)", t.name);
  return t;
}

// The embeddings of samples `which`, `batch` per forward, float64.
at::Tensor embed(TaskHost& host, const std::vector<size_t>& which, int64_t batch) {
  std::vector<at::Tensor> parts;
  for (size_t i = 0; i < which.size(); i += static_cast<size_t>(batch)) {
    const std::vector<size_t> chunk(which.begin() + static_cast<std::ptrdiff_t>(i),
                                    which.begin() + static_cast<std::ptrdiff_t>(
                                                        std::min(which.size(), i + static_cast<size_t>(batch))));
    Batch b;
    const auto out = host.forward(chunk, &b);
    parts.push_back(ReidPlugin::embeddings(out, b).to(at::kCPU, at::kDouble));
  }
  return at::cat(parts);
}

// A shard's part of the embeddings, in its task folder: embeddings.f64 (raw
// float64, row-major) and embeddings.json (written last: the part is whole).
void write_part(TaskHost& host, const std::vector<size_t>& which, size_t begin, const at::Tensor& x, double ms,
                const Task& task) {
  namespace fs = std::filesystem;
  const auto c = x.contiguous();
  const fs::path dir = host.output_dir(), tmp = dir / "embeddings.f64.tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f.write(reinterpret_cast<const char*>(c.data_ptr<double>()), static_cast<std::streamsize>(c.numel() * 8));
    XCAM_CHECK(f.good(), "task {}: cannot write {}", task.name, tmp.string());
  }
  fs::rename(tmp, dir / "embeddings.f64");
  nlohmann::json ids = nlohmann::json::array();
  for (size_t i : which) ids.push_back(host.id(i));
  host.write_json("embeddings", nlohmann::json{{"shard", {{"index", task.shard}, {"count", task.shards}}},
                                               {"begin", begin},
                                               {"rows", c.size(0)},
                                               {"dim", c.size(1)},
                                               {"embedding_ms", ms},
                                               {"ids", ids}}
                                        .dump(1));
}

// The shards' parts joined: the embeddings of `all` in order, and the sum of
// the shards' embedding times. Each part must hold the ids this run gives
// its rows (the same query and gallery inputs).
at::Tensor read_parts(const TaskHost& host, const std::vector<size_t>& all, const Task& task, double& ms) {
  namespace fs = std::filesystem;
  std::vector<at::Tensor> parts;
  size_t next = 0;
  ms = 0;
  for (const auto& d : task.merge) {
    const fs::path meta = fs::path(d) / "embeddings.json", raw = fs::path(d) / "embeddings.f64";
    std::ifstream m(meta);
    XCAM_CHECK(m.good() && fs::exists(raw),
               "task {}: shard folder {} has no embeddings (embeddings.json, embeddings.f64): run that shard (it "
               "resumes), then merge again",
               task.name, d);
    const auto j = nlohmann::json::parse(m);
    const auto rows = j.at("rows").get<int64_t>(), dim = j.at("dim").get<int64_t>();
    const auto& ids = j.at("ids");
    XCAM_CHECK(j.at("begin").get<size_t>() == next && next + static_cast<size_t>(rows) <= all.size() &&
                   ids.size() == static_cast<size_t>(rows),
               "task {}: the shards' parts do not follow each other: {} starts at row {}, expected {}", task.name,
               meta.string(), j.at("begin").dump(), next);
    for (int64_t r = 0; r < rows; ++r)
      XCAM_CHECK(ids[static_cast<size_t>(r)].get<std::string>() == host.id(all[next + static_cast<size_t>(r)]),
                 "task {}: {} row {} is '{}', this run's is '{}': the shards ran other inputs; run them again",
                 task.name, meta.string(), r, ids[static_cast<size_t>(r)].get<std::string>(),
                 host.id(all[next + static_cast<size_t>(r)]));
    XCAM_CHECK(fs::file_size(raw) == static_cast<uintmax_t>(rows * dim * 8), "task {}: {} has {} bytes, not {} x {} doubles",
               task.name, raw.string(), fs::file_size(raw), rows, dim);
    auto x = at::empty({rows, dim}, at::kDouble);
    std::ifstream f(raw, std::ios::binary);
    f.read(reinterpret_cast<char*>(x.data_ptr<double>()), static_cast<std::streamsize>(rows * dim * 8));
    if (rows > 0) parts.push_back(x);  // a shard with no whole batch of its own holds none
    ms += j.value("embedding_ms", 0.0);
    next += static_cast<size_t>(rows);
  }
  XCAM_CHECK(next == all.size(), "task {}: the shards' parts hold {} of the {} images", task.name, next, all.size());
  return at::cat(parts);
}

// The id of the first of `queries` and `gallery` that is not a Market-1501 name.
std::string first_unnamed(const TaskHost& host, const std::vector<size_t>& queries, const std::vector<size_t>& gallery) {
  int64_t p, c;
  for (const auto* set : {&queries, &gallery})
    for (size_t i : *set)
      if (!market_name(host.id(i), p, c)) return host.id(i);
  return "";
}

// The query beside its ranked gallery images `shown` (sample indices), one
// pass per pair giving the map on the query and on the gallery image; each
// written, and a panel ranked_<query>.png: the query with its map against the
// first, then each gallery image with its map, rank and cosine, framed by
// `match` (1 green, 0 red, -1 none).
void write_ranked(TaskHost& host, size_t query, const std::vector<size_t>& shown, const std::vector<int>& match,
                  bool reference_maps) {
  const std::string qid = host.id(query);
  std::vector<size_t> pairs;
  for (size_t r = 0; r < shown.size(); ++r)
    pairs.push_back(host.pair(query, "reference", shown[r], fmt::format("{}_rank{}_{}", qid, r + 1, host.id(shown[r]))));
  const auto maps = host.explain(pairs, std::vector<std::vector<std::string>>(pairs.size(), {"similarity"}));
  std::vector<MapResult> tiles;
  for (size_t r = 0; r < shown.size(); ++r) {
    const std::string pid = host.id(pairs[r]);
    for (const auto& m : maps) {
      if (m.image_id != pid) continue;
      if (m.on == "image" && r == 0) {
        MapResult query_tile = m;
        query_tile.meta["panel_header"] = fmt::format("query {} (map vs #1)", qid);
        tiles.insert(tiles.begin(), query_tile);
      }
      if (m.on == "reference" || (m.on == "image" && !reference_maps)) {
        MapResult tile = m;
        tile.meta["panel_header"] = fmt::format("#{} {} sim {:.3f}", r + 1, host.id(shown[r]), m.score);
        if (match[r] >= 0) tile.meta["panel_border"] = match[r] ? "green" : "red";
        tiles.push_back(tile);
      }
    }
  }
  host.write_maps(maps);
  const bool named = !match.empty() && match[0] >= 0;
  host.write_panel("ranked_" + qid,
                   fmt::format("{}: query and its top {} gallery images{}", qid, shown.size(),
                               named ? " (green: same identity)" : ""),
                   tiles);
}

}  // namespace

void ReidPlugin::run_task(TaskHost& host, const std::string& task_json) const {
  const Task task = parse_task(task_json);
  std::vector<size_t> queries;
  if (task.query.empty())
    for (size_t i = 0; i < host.size(); ++i) queries.push_back(i);
  else
    queries = host.add_inputs(task.query);
  const auto gallery = host.add_inputs(task.gallery);
  XCAM_CHECK(!queries.empty() && !gallery.empty(), "task {}: {} queries and {} gallery images; give both",
             task.name, queries.size(), gallery.size());

  // Identities and cameras from the file names, where they are Market-1501's.
  const size_t nq = queries.size(), ng = gallery.size();
  std::vector<int64_t> qp(nq), qc(nq), gp(ng), gc(ng);
  bool named = true;
  for (size_t i = 0; i < nq && named; ++i) named = market_name(host.id(queries[i]), qp[i], qc[i]);
  for (size_t j = 0; j < ng && named; ++j) named = market_name(host.id(gallery[j]), gp[j], gc[j]);
  XCAM_CHECK(named || task.name == "search",
             "task evaluate needs Market-1501 file names (PPPP_cCsS_FFFFFF_NN.jpg, -1 for junk) for identities and "
             "cameras; '{}' is not one. Rename the images, or rank without identities with task search",
             first_unnamed(host, queries, gallery));

  // Queries and gallery in one sequence of full batches: fewer distinct
  // batch shapes for the TorchScript executor to specialise on.
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&t0] { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); };
  std::vector<size_t> all = queries;
  all.insert(all.end(), gallery.begin(), gallery.end());
  if (task.shard >= 0) {
    // Shard I of N: the I-th of N runs of whole batches, so that each batch
    // holds what it holds in a single run (the same embeddings, bit for bit).
    const size_t b = static_cast<size_t>(task.batch), batches = (all.size() + b - 1) / b;
    const size_t i = static_cast<size_t>(task.shard), n = static_cast<size_t>(task.shards);
    const size_t begin = std::min(all.size(), i * batches / n * b), end = std::min(all.size(), (i + 1) * batches / n * b);
    const std::vector<size_t> mine(all.begin() + static_cast<std::ptrdiff_t>(begin),
                                   all.begin() + static_cast<std::ptrdiff_t>(end));
    const auto part = mine.empty() ? at::empty({0, 0}, at::kDouble) : embed(host, mine, task.batch);
    write_part(host, mine, begin, part, since(), task);
    host.add_metric("embedded_images", static_cast<double>(mine.size()));
    return;
  }
  double ms = 0;
  const auto embedded = task.merge.empty() ? embed(host, all, task.batch) : read_parts(host, all, task, ms);
  if (task.merge.empty()) ms = since();
  const auto q = embedded.narrow(0, 0, static_cast<int64_t>(nq)), g = embedded.narrow(0, static_cast<int64_t>(nq),
                                                                                     static_cast<int64_t>(ng));
  // For `xcam bench --e2e`: the embedding forwards' time against plain ones
  // (a merge: the shards' times summed).
  host.add_metric("embedding_ms", ms);
  host.add_metric("embedded_images", static_cast<double>(nq + ng));
  host.add_metric("embedding_batch", static_cast<double>(task.batch));
  at::Tensor dist;
  if (task.distance == "cosine") {
    auto unit = [](const at::Tensor& x) { return x / x.norm(2, 1, true).clamp_min(1e-12); };
    dist = 1 - at::matmul(unit(q), unit(g).t());
  } else {
    dist = (q.pow(2).sum(1, true) + g.pow(2).sum(1).unsqueeze(0) - 2 * at::matmul(q, g.t())).clamp_min(0);
  }
  dist = dist.contiguous();
  const std::vector<double> d(dist.data_ptr<double>(), dist.data_ptr<double>() + dist.numel());

  nlohmann::json doc{{"task", task.name}, {"queries", nq}, {"gallery", ng}, {"distance", task.distance}};
  if (named && task.name == "evaluate") {
    const auto s = retrieval_scores(d, qp, qc, gp, gc, static_cast<size_t>(task.max_rank));
    for (const auto& [key, value] : std::vector<std::pair<std::string, double>>{
             {"mAP", s.mAP}, {"rank1", s.rank(1)}, {"rank5", s.rank(5)}, {"rank10", s.rank(10)}, {"mINP", s.mINP}}) {
      host.add_metric(key, value);
      doc[key] = value;
    }
    host.add_metric("valid_queries", static_cast<double>(s.valid_queries));
    doc["valid_queries"] = s.valid_queries;
    doc["skipped_queries"] = s.skipped_queries;
    doc["cmc"] = s.cmc;
  }

  // Per query, the gallery by distance (stable), without the query's identity
  // on its own camera and the junk when identities are known (as the protocol
  // drops them); the first top_k shown.
  nlohmann::json ranking = nlohmann::json::array();
  const size_t show = task.show < 0 ? nq : std::min(nq, static_cast<size_t>(task.show));
  for (size_t i = 0; i < nq; ++i) {
    std::vector<size_t> order(ng);
    std::iota(order.begin(), order.end(), size_t{0});
    const double* row = d.data() + i * ng;
    std::stable_sort(order.begin(), order.end(), [row](size_t a, size_t b) { return row[a] < row[b]; });
    std::vector<size_t> top;
    for (size_t j : order) {
      if (named && (gp[j] == -1 || (gp[j] == qp[i] && gc[j] == qc[i]))) continue;
      top.push_back(j);
      if (top.size() == static_cast<size_t>(task.top_k)) break;
    }
    nlohmann::json entry{{"query", host.id(queries[i])}, {"top", nlohmann::json::array()}};
    for (size_t r = 0; r < top.size(); ++r) {
      nlohmann::json hit{{"gallery", host.id(gallery[top[r]])}, {"rank", r + 1}, {"distance", row[top[r]]}};
      if (named) hit["match"] = gp[top[r]] == qp[i];
      entry["top"].push_back(hit);
    }
    ranking.push_back(entry);
    if (i >= show || top.empty()) continue;

    std::vector<size_t> shown;
    std::vector<int> match;  // -1: identities unknown
    for (size_t j : top) {
      shown.push_back(gallery[j]);
      match.push_back(named ? int(gp[j] == qp[i]) : -1);
    }
    write_ranked(host, queries[i], shown, match, opt_.reference_maps);
  }
  doc["ranking"] = ranking;
  host.write_json(task.name == "evaluate" ? "retrieval" : "search", doc.dump(1));
}

}  // namespace xcam::reid

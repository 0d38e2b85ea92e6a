// Sharded runs: one shard of a run's samples, and the shards joined into
// what one run writes (docs/scaling.md).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "xcam/error.h"
#include "xcam/experiment.h"
#include "xcam/io.h"
#include "json_text.h"

namespace fs = std::filesystem;

namespace xcam {

namespace {

// The run's samples, each with the id a whole run gives it.
std::vector<SampleSpec> all_samples(const ExperimentConfig& cfg) {
  auto samples = cfg.samples.empty() ? samples_of(cfg.images) : cfg.samples;
  const auto ids = sample_ids(samples);
  for (size_t k = 0; k < samples.size(); ++k) samples[k].id = ids[k];
  return samples;
}

// What a shard's summary.json holds.
nlohmann::json read_summary(const fs::path& dir) {
  std::ifstream in(dir / "summary.json");
  XCAM_CHECK(in.good(), "no summary.json in {}", dir.string());
  return nlohmann::json::parse(in);
}

// Moves every file under `from` into `to` at the same relative path (a file
// there already is replaced), but the shard's own results and summary and
// files named in `keep` (a task's parts, which the merge has read).
void move_outputs(const fs::path& from, const fs::path& to, const std::set<std::string>& keep = {}) {
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(from))
    if (e.is_regular_file()) files.push_back(e.path());
  for (const auto& f : files) {
    const auto rel = fs::relative(f, from);
    if (rel == "results.json" || rel == "results.csv" || rel == "summary.json" || keep.count(f.filename().string()))
      continue;
    fs::create_directories((to / rel).parent_path());
    fs::rename(f, to / rel);
  }
}

}  // namespace

std::pair<size_t, size_t> shard_range(size_t samples, size_t batch, const Shard& shard) {
  const size_t batches = (samples + batch - 1) / batch, n = static_cast<size_t>(shard.count),
               i = static_cast<size_t>(shard.index);
  return {std::min(samples, i * batches / n * batch), std::min(samples, (i + 1) * batches / n * batch)};
}

Shard parse_shard(const std::string& text) {
  const auto slash = text.find('/');
  Shard s;
  bool ok = slash != std::string::npos && slash > 0 && slash + 1 < text.size() &&
            text.find_first_not_of("0123456789/") == std::string::npos && text.find('/', slash + 1) == std::string::npos;
  if (ok) {
    s.index = std::stoi(text.substr(0, slash));
    s.count = std::stoi(text.substr(slash + 1));
    ok = s.count >= 1 && s.index >= 0 && s.index < s.count;
  }
  XCAM_CHECK(ok, "--shard '{}' is not I/N with 0 <= I < N (shard I of N, counted from 0: 0/4 to 3/4)", text);
  return s;
}

std::string shard_dir(const ExperimentConfig& cfg, const Shard& shard) {
  return (fs::path(cfg.outputs.dir) / "shards" / fmt::format("{}-of-{}", shard.index, shard.count)).string();
}

RunSummary run_shard(const ExperimentConfig& cfg, const Shard& shard, const RunOptions& opt) {
  const char* whole = cfg.attention ? "an attention analysis" : cfg.compare ? "a comparison" : nullptr;
  XCAM_CHECK(whole == nullptr,
             "experiment '{}' is {}: its figures need every sample at once, so it does not split into shards; run "
             "it whole, or shard a plain run or a task that splits (re-ID evaluate and search, VLM count)",
             cfg.name, whole);
  if (!cfg.task.empty()) {
    // The task splits its own work (the plugin's task reads `shard`); its
    // samples stay whole, so that every shard sees the same inputs.
    ExperimentConfig part = cfg;
    auto task = nlohmann::json::parse(cfg.task);
    task["shard"] = {{"index", shard.index}, {"count", shard.count}};
    part.task = task.dump();
    part.outputs.dir = shard_dir(cfg, shard);
    return run_experiment(part, opt);
  }
  ExperimentConfig part = cfg;
  part.samples.clear();
  part.images.clear();
  const auto samples = all_samples(cfg);
  const auto [begin, end] = shard_range(samples.size(), static_cast<size_t>(std::max(cfg.batch_size, 1)), shard);
  for (size_t k = begin; k < end; ++k) {
    part.samples.push_back(samples[k]);
    part.images.push_back(samples[k].image);
  }
  XCAM_CHECK(!part.samples.empty(), "shard {}/{} of experiment '{}' has no samples: it has {} in all", shard.index,
             shard.count, cfg.name, samples.size());
  part.outputs.dir = shard_dir(cfg, shard);
  return run_experiment(part, opt);
}

namespace {

// The summary of shard I of N, which must have finished.
nlohmann::json finished_shard(const ExperimentConfig& cfg, int i, int count) {
  const fs::path dir = shard_dir(cfg, {i, count});
  XCAM_CHECK(fs::exists(dir / "summary.json"),
             "shard {}/{} of experiment '{}' has not finished ({} has no summary.json): run `xcam run {} --shard "
             "{}/{}` (it resumes), then merge again",
             i, count, cfg.name, dir.string(), cfg.file, i, count);
  return read_summary(dir);
}

// A task's shards joined: the task run once more over the whole input, with
// `merge` naming the shards' folders; it reads their parts (re-ID: the
// embeddings; VLM counting: the samples' counts) instead of computing them,
// and writes what one run writes. The maps the shards wrote (counting's
// per-sample maps) join the merged folder, their records before the merge's own.
RunSummary merge_task_shards(const ExperimentConfig& cfg, int count) {
  auto task = nlohmann::json::parse(cfg.task);
  task["merge"] = nlohmann::json::array();
  nlohmann::json shards = nlohmann::json::array();
  std::vector<nlohmann::json> summaries;
  for (int i = 0; i < count; ++i) {
    const fs::path dir = shard_dir(cfg, {i, count});
    summaries.push_back(finished_shard(cfg, i, count));
    task["merge"].push_back(fs::absolute(dir).string());
    shards.push_back({{"shard", fmt::format("{}/{}", i, count)},
                      {"maps", summaries.back().value("maps", 0)},
                      {"seconds", summaries.back().value("seconds", 0.0)}});
  }
  ExperimentConfig whole = cfg;
  whole.task = task.dump();
  auto merged = run_experiment(whole, RunOptions{});
  std::vector<ItemRecord> records;
  for (int i = 0; i < count; ++i) {
    const fs::path dir = shard_dir(cfg, {i, count});
    for (auto& r : read_results(dir.string())) records.push_back(std::move(r));
    move_outputs(dir, cfg.outputs.dir, {"task.json", "count_part.json", "embeddings.json", "embeddings.f64"});
    merged.done += summaries[static_cast<size_t>(i)].value("done", 0);
    merged.maps += summaries[static_cast<size_t>(i)].value("maps", size_t{0});
  }
  if (!records.empty()) {
    for (auto& r : merged.records) records.push_back(std::move(r));
    merged.records = std::move(records);
    write_results(cfg.outputs.dir, merged.records);
    write_summary(cfg.outputs.dir, merged, cfg.threads, cfg.io_threads);
  }
  write_file_atomic((fs::path(cfg.outputs.dir) / "shards.json").string(), json_text(shards, 2) + "\n");
  return merged;
}

}  // namespace

RunSummary merge_shards(const ExperimentConfig& cfg, int count) {
  XCAM_CHECK(count >= 1, "a merge needs the shard count N >= 1, got {}", count);
  const auto samples = all_samples(cfg);
  std::map<std::string, size_t> position;  // sample id -> its place in the whole run
  for (size_t k = 0; k < samples.size(); ++k) position[samples[k].id] = k;
  if (!cfg.task.empty()) return merge_task_shards(cfg, count);
  RunSummary merged;
  nlohmann::json shards = nlohmann::json::array();
  std::vector<std::string> groups;  // "method\nlayers" in the order the runs made them
  std::vector<ItemRecord> records;
  for (int i = 0; i < count; ++i) {
    const fs::path dir = shard_dir(cfg, {i, count});
    const auto summary = finished_shard(cfg, i, count);
    for (auto& r : read_results(dir.string())) {
      const std::string group = r.method + "\n" + r.layers;
      if (std::find(groups.begin(), groups.end(), group) == groups.end()) groups.push_back(group);
      add_pointing(merged, r);
      records.push_back(std::move(r));
    }
    move_outputs(dir, cfg.outputs.dir);
    merged.done += summary.value("done", 0);
    merged.skipped += summary.value("resumed", 0);
    merged.failed += summary.value("failed", 0);
    merged.maps += summary.value("maps", size_t{0});
    merged.seconds += summary.value("seconds", 0.0);
    for (const auto& f : summary.value("failures", std::vector<std::string>{})) merged.failures.push_back(f);
    shards.push_back({{"shard", fmt::format("{}/{}", i, count)},
                      {"done", summary.value("done", 0)},
                      {"resumed", summary.value("resumed", 0)},
                      {"failed", summary.value("failed", 0)},
                      {"maps", summary.value("maps", 0)},
                      {"seconds", summary.value("seconds", 0.0)},
                      {"maps_per_second", summary.value("maps_per_second", 0.0)}});
  }
  // The whole run's order: method and layer set, then sample, image, rank.
  auto key = [&](const ItemRecord& r) {
    const auto g = std::find(groups.begin(), groups.end(), r.method + "\n" + r.layers) - groups.begin();
    const auto p = position.find(r.id);
    return std::make_tuple(g, p == position.end() ? samples.size() : p->second, r.on != "image", r.on, r.rank);
  };
  std::stable_sort(records.begin(), records.end(),
                   [&](const ItemRecord& a, const ItemRecord& b) { return key(a) < key(b); });
  fs::create_directories(cfg.outputs.dir);
  write_results(cfg.outputs.dir, records);
  write_summary(cfg.outputs.dir, merged, cfg.threads, cfg.io_threads);
  write_file_atomic((fs::path(cfg.outputs.dir) / "shards.json").string(), json_text(shards, 2) + "\n");
  merged.records = std::move(records);
  return merged;
}

SlurmScripts slurm_scripts(const ExperimentConfig& cfg, int count, const SlurmOptions& opt) {
  XCAM_CHECK(count >= 1, "a sharded run needs N >= 1 shards, got {}", count);
  SlurmScripts out;
  out.dir = (fs::path(cfg.outputs.dir) / "slurm").string();
  const std::string name = "xcam-" + safe_name(cfg.name);
  auto header = [&](const std::string& job, const std::string& log) {
    std::string h = fmt::format("#!/bin/bash\n#SBATCH --job-name={}\n#SBATCH --output={}/{}\n#SBATCH --cpus-per-task={}\n",
                                job, out.dir, log, opt.cpus);
    if (!opt.partition.empty()) h += fmt::format("#SBATCH --partition={}\n", opt.partition);
    if (!opt.time.empty()) h += fmt::format("#SBATCH --time={}\n", opt.time);
    if (!opt.mem.empty()) h += fmt::format("#SBATCH --mem={}\n", opt.mem);
    return h;
  };
  out.shards = header(name, "shard-%a.log") + fmt::format("#SBATCH --array=0-{}\n", count - 1) +
               fmt::format("# Shard $SLURM_ARRAY_TASK_ID of {} of experiment '{}'; a shard that is run again "
                           "resumes\n# (sbatch --array=I {}/shards.sbatch).\nset -euo pipefail\ncd '{}'\n"
                           "exec '{}' run '{}' --shard \"$SLURM_ARRAY_TASK_ID/{}\"\n",
                           count, cfg.name, out.dir, opt.workdir, opt.xcam, opt.config, count);
  out.merge = header(name + "-merge", "merge.log") +
              fmt::format("# The {} shards of experiment '{}' joined into {}.\nset -euo pipefail\ncd '{}'\n"
                          "exec '{}' merge '{}' --shards {}\n",
                          count, cfg.name, cfg.outputs.dir, opt.workdir, opt.xcam, opt.config, count);
  return out;
}

}  // namespace xcam

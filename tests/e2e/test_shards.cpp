// Sharded runs (docs/scaling.md): `xcam run CONFIG --shard I/N` on the demo
// experiment's images, one shard killed half-way and run again (it
// resumes), `xcam merge` joining the four; the merged records and maps equal
// a single run's, nothing lost or written twice. The re-ID evaluation split
// four ways (each shard embeds its part, the merge ranks over the whole
// gallery) equals one run; so does the VLM count task split three ways.
// Bad shards are refused.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "../common.h"

namespace fs = std::filesystem;
using xcam::test::run_command;
using xcam::test::source;
using xcam::test::TempDir;
using xcam::test::xcam_cmd;

namespace {

// 30 of the demo's images and its model with Score-CAM (a few seconds a shard, so that
// a shard can be killed while it runs), batches of 2, outputs in `out`.
std::string write_config(const TempDir& tmp, const std::string& out, const std::string& extra = "") {
  const auto path = tmp / (fs::path(out).filename().string() + ".yaml");
  std::ofstream(path) << "model: " << source("zoo/models/shapes_cnn_scripted.pt") << "\nlabels: "
                      << source("zoo/models/shapes_labels.txt")
                      << "\nplugin_options: {activation: sigmoid}\npreprocess: {size: [128, 128]}\n"
                      << "layers: [block4]\nmethods: [scorecam]\ntargets: annotated\ninputs:\n  images: "
                      << source("zoo/data/shapes/val_0[0-2]*.png") << "\n  boxes: " << source("zoo/data/shapes/boxes.json")
                      << "\nbatch_size: 2\nthreads: 1\nio_threads: 0\noutputs: {dir: " << out
                      << ", save: [map, overlay]}\n"
                      << extra;
  return path;
}

// A record without its timings, as text: what must not depend on the split.
std::string untimed(nlohmann::json row) {
  for (const char* k : {"forward_ms", "backward_ms", "cam_ms"}) row.erase(k);
  return row.dump();
}

std::vector<std::string> records(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& row : nlohmann::json::parse(std::ifstream(dir + "/results.json"))) out.push_back(untimed(row));
  return out;
}

std::string bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

size_t count_items(const fs::path& dir) {
  std::error_code ec;
  size_t n = 0;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().parent_path().filename() == ".items" && it->path().extension() == ".json") ++n;
  return n;
}

TEST(Shards, MergedEqualsOneRunAndAKilledShardResumes) {
  TempDir tmp("shards");
  const auto whole_cfg = write_config(tmp, tmp / "whole");
  const auto split_cfg = write_config(tmp, tmp / "split");
  const auto whole = run_command(xcam_cmd() + "run " + whole_cfg);
  ASSERT_EQ(whole.status, 0) << whole.output;

  for (int i : {0, 1, 3}) {
    const auto r = run_command(xcam_cmd() + "run " + split_cfg + " --shard " + std::to_string(i) + "/4");
    ASSERT_EQ(r.status, 0) << r.output;
  }
  // Shard 2 killed (SIGKILL) once a few of its items are written.
  const fs::path shard2 = tmp / "split/shards/2-of-4";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const auto cmd = xcam_cmd() + "run " + split_cfg + " --shard 2/4 >/dev/null 2>&1";
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (count_items(shard2) < 3 && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  const size_t written = count_items(shard2);
  ASSERT_GE(written, 3u);
  ASSERT_FALSE(fs::exists(shard2 / "summary.json")) << "shard 2 finished before it was killed";

  // The merge refuses an unfinished shard and names it.
  const auto early = run_command(xcam_cmd() + "merge " + split_cfg + " --shards 4");
  EXPECT_NE(early.status, 0);
  EXPECT_NE(early.output.find("shard 2/4 of experiment"), std::string::npos) << early.output;
  EXPECT_NE(early.output.find("--shard 2/4` (it resumes)"), std::string::npos) << early.output;

  const auto again = run_command(xcam_cmd() + "run " + split_cfg + " --shard 2/4");
  ASSERT_EQ(again.status, 0) << again.output;
  // Finished batches are taken as they are; a batch cut short is explained again whole.
  const size_t resumed = written / 2 * 2;
  EXPECT_NE(again.output.find("resumed " + std::to_string(resumed) + ","), std::string::npos)
      << "killed after " << written << " items: " << again.output;

  const auto merged = run_command(xcam_cmd() + "merge " + split_cfg + " --shards 4");
  ASSERT_EQ(merged.status, 0) << merged.output;
  // The pointing game over every map, as the single run prints it.
  const auto line = [](const std::string& out) { return out.substr(out.find("pointing game"), 80); };
  EXPECT_EQ(line(merged.output), line(whole.output));

  // The same records in the same order, none twice; the same maps byte for byte.
  const auto a = records(tmp / "whole"), b = records(tmp / "split");
  ASSERT_EQ(a.size(), b.size());
  EXPECT_GT(a.size(), 60u);
  EXPECT_EQ(a, b);
  EXPECT_EQ(std::set<std::string>(b.begin(), b.end()).size(), b.size());
  size_t files = 0;
  for (const auto& row : nlohmann::json::parse(std::ifstream(tmp / "whole/results.json")))
    for (const auto& o : row["outputs"]) {
      const auto rel = o.get<std::string>();
      ASSERT_TRUE(fs::exists(tmp / ("split/" + rel))) << rel;
      EXPECT_TRUE(bytes(tmp / ("whole/" + rel)) == bytes(tmp / ("split/" + rel))) << rel;
      ++files;
    }
  EXPECT_EQ(files, 2 * a.size());
  const auto summary = nlohmann::json::parse(std::ifstream(tmp / "split/summary.json"));
  EXPECT_EQ(summary["done"].get<int>() + summary["resumed"].get<int>(), 30);
  EXPECT_EQ(summary["resumed"], resumed);
  const auto shards = nlohmann::json::parse(std::ifstream(tmp / "split/shards.json"));
  ASSERT_EQ(shards.size(), 4u);
  EXPECT_EQ(shards[2]["resumed"], resumed);

  // The merged folder is a finished run: running it whole resumes everything.
  const auto rerun = run_command(xcam_cmd() + "run " + split_cfg);
  ASSERT_EQ(rerun.status, 0) << rerun.output;
  EXPECT_NE(rerun.output.find("done 0, resumed 30, failed 0"), std::string::npos) << rerun.output;
}

// Every file under `dir` (relative path -> bytes) but the shards' folder and
// what holds timings (summary, records, task.json).
std::map<std::string, std::string> outputs(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const auto rel = fs::relative(e.path(), dir).string();
    const auto name = e.path().filename().string();
    if (!e.is_regular_file() || rel.rfind("shards", 0) == 0 || rel.find(".items") != std::string::npos) continue;
    if (name == "summary.json" || name == "task.json" || name.rfind("results.", 0) == 0) continue;
    out[rel] = bytes(e.path().string());
  }
  return out;
}

// One run of `whole_cfg`, then `split_cfg` as shards 0/n to n-1/n.
void run_whole_and_shards(const std::string& whole_cfg, const std::string& split_cfg, int n) {
  const auto whole = run_command(xcam_cmd() + "run " + whole_cfg);
  ASSERT_EQ(whole.status, 0) << whole.output;
  for (int i = 0; i < n; ++i) {
    const auto r = run_command(xcam_cmd() + "run " + split_cfg + " --shard " + std::to_string(i) + "/" + std::to_string(n));
    ASSERT_EQ(r.status, 0) << r.output;
  }
}

// The re-ID evaluation of the bundled query and gallery sets, outputs in tmp/out.
std::string reid_config(const TempDir& tmp, const std::string& out, int batch) {
  const auto path = tmp / (out + ".yaml");
  std::ofstream(path) << "model: " << source("zoo/models/reid_promptsg_traced.pt")
                      << "\nplugin: reid\npreprocess: {size: [128, 64]}\nlayers: vit_last\nmethods: [gradcam]\n"
                      << "inputs: {images: " << source("zoo/data/reid/query")
                      << "}\ntask: {name: evaluate, gallery: " << source("zoo/data/reid/bounding_box_test")
                      << ", batch: " << batch << ", show: 2, top_k: 3}\nthreads: 1\noutputs: {dir: " << (tmp / out)
                      << "}\n";
  return path;
}

// The re-ID evaluation split four ways: each shard embeds its runs of whole
// batches of the queries and the gallery, the merge ranks over the whole
// set. mAP, CMC, mINP, the ranking, the panels and their maps equal one run's.
TEST(Shards, ReidEvaluationMergedEqualsOneRun) {
  TempDir tmp("shards-reid");
  auto config = [&](const std::string& out) { return reid_config(tmp, out, 16); };
  const auto whole_cfg = config("whole"), split_cfg = config("split");
  ASSERT_NO_FATAL_FAILURE(run_whole_and_shards(whole_cfg, split_cfg, 4));
  // Each shard embedded its own rows: 60 queries + 172 gallery images, none twice.
  size_t rows = 0, next = 0;
  for (int i = 0; i < 4; ++i)
    for (const auto& e : fs::recursive_directory_iterator(fs::path(tmp / "split/shards") / (std::to_string(i) + "-of-4")))
      if (e.path().filename() == "embeddings.json") {
        const auto j = nlohmann::json::parse(std::ifstream(e.path()));
        EXPECT_EQ(j["begin"].get<size_t>(), next) << e.path();
        next += j["rows"].get<size_t>();
        rows += j["rows"].get<size_t>();
        EXPECT_GT(j["rows"].get<size_t>(), 0u);
      }
  EXPECT_EQ(rows, 232u);

  // A shard missing: the merge says which and how to finish it.
  fs::rename(tmp / "split/shards/1-of-4/summary.json", tmp / "summary.json");
  const auto early = run_command(xcam_cmd() + "merge " + split_cfg + " --shards 4");
  EXPECT_NE(early.status, 0);
  EXPECT_NE(early.output.find("shard 1/4 of experiment"), std::string::npos) << early.output;
  fs::rename(tmp / "summary.json", tmp / "split/shards/1-of-4/summary.json");

  const auto merged = run_command(xcam_cmd() + "merge " + split_cfg + " --shards 4");
  ASSERT_EQ(merged.status, 0) << merged.output;
  const auto a = outputs(tmp / "whole"), b = outputs(tmp / "split");
  ASSERT_EQ(a.size(), b.size());
  size_t panels = 0;
  for (const auto& [rel, data] : a) {
    ASSERT_TRUE(b.count(rel)) << rel;
    EXPECT_TRUE(b.at(rel) == data) << rel << " differs";
    panels += rel.find("ranked_") != std::string::npos;
  }
  EXPECT_EQ(panels, 2u);
  EXPECT_EQ(records(tmp / "whole"), records(tmp / "split"));
  // The figures over the whole set, not an average of the shards'.
  auto metrics = [](const fs::path& dir) {
    for (const auto& e : fs::recursive_directory_iterator(dir))
      if (e.path().filename() == "task.json" && fs::relative(e.path(), dir).string().rfind("shards", 0) != 0)
        return nlohmann::json::parse(std::ifstream(e.path()))["metrics"];
    return nlohmann::json();
  };
  const auto ma = metrics(tmp / "whole"), mb = metrics(tmp / "split");
  for (const char* k : {"mAP", "rank1", "rank5", "rank10", "mINP", "valid_queries", "embedded_images"}) {
    ASSERT_TRUE(ma.contains(k)) << k;
    EXPECT_EQ(ma[k], mb[k]) << k;
  }
  EXPECT_GT(ma["mAP"].get<double>(), 0.3);
}

// More shards than batches: 232 images in batches of 128 make two, so shard
// 0 of 3 embeds nothing; the merge still equals one run.
TEST(Shards, ReidShardWithoutABatchOfItsOwn) {
  TempDir tmp("shards-reid-empty");
  const auto whole_cfg = reid_config(tmp, "whole", 128), split_cfg = reid_config(tmp, "split", 128);
  ASSERT_NO_FATAL_FAILURE(run_whole_and_shards(whole_cfg, split_cfg, 3));
  std::vector<size_t> rows;
  for (int i = 0; i < 3; ++i)
    for (const auto& e : fs::recursive_directory_iterator(fs::path(tmp / "split/shards") / (std::to_string(i) + "-of-3")))
      if (e.path().filename() == "embeddings.json")
        rows.push_back(nlohmann::json::parse(std::ifstream(e.path()))["rows"].get<size_t>());
  EXPECT_EQ(rows, (std::vector<size_t>{0, 128, 104}));
  const auto merged = run_command(xcam_cmd() + "merge " + split_cfg + " --shards 3");
  ASSERT_EQ(merged.status, 0) << merged.output;
  const auto a = outputs(tmp / "whole"), b = outputs(tmp / "split");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [rel, data] : a) {
    ASSERT_TRUE(b.count(rel)) << rel;
    EXPECT_TRUE(b.at(rel) == data) << rel << " differs";
  }
  EXPECT_EQ(records(tmp / "whole"), records(tmp / "split"));
}

// VLM counting split three ways: each shard counts its run of the scenes
// and writes their maps; the merge joins the counts, computes MAE, coverage
// and background over every scene and draws the worst errors' panels. The
// figures, count.json, the panels, the maps and their records equal one run's.
TEST(Shards, VlmCountMergedEqualsOneRun) {
  TempDir tmp("shards-vlm");
  {
    std::ifstream in(source("zoo/data/vlm/manifest.jsonl"));
    std::ofstream out(tmp / "manifest.jsonl");
    int n = 0;
    for (std::string l; n < 10 && std::getline(in, l); ++n) {
      auto j = nlohmann::json::parse(l);
      j["image"] = source("zoo/data/vlm/" + j["image"].get<std::string>());
      out << j.dump() << "\n";
    }
  }
  auto config = [&](const std::string& out) {
    const auto path = tmp / (out + ".yaml");
    std::ofstream(path) << "name: count\nmodel: " << source("zoo/models/vlm/qwen2_vl_count_traced.pt")
                        << "\nplugin: vlm\nplugin_options: {tokenizer: "
                        << source("zoo/models/tokenizers/qwen2/tokenizer.json")
                        << "}\nlayers: vision_last\nmethods: [gradcam]\ninputs: {manifest: " << (tmp / "manifest.jsonl")
                        << "}\ntask: {name: count, strategies: [global, crop, hybrid], worst: 3}\nthreads: 1\n"
                        << "outputs: {dir: " << (tmp / out) << ", save: [map, overlay]}\n";
    return path;
  };
  const auto whole_cfg = config("whole"), split_cfg = config("split");
  ASSERT_NO_FATAL_FAILURE(run_whole_and_shards(whole_cfg, split_cfg, 3));
  // Each shard counted its own scenes: 3, 3 and 4 of the 10, in order.
  std::vector<size_t> begins, sizes;
  for (int i = 0; i < 3; ++i)
    for (const auto& e : fs::recursive_directory_iterator(fs::path(tmp / "split/shards") / (std::to_string(i) + "-of-3")))
      if (e.path().filename() == "count_part.json") {
        const auto j = nlohmann::json::parse(std::ifstream(e.path()));
        begins.push_back(j["begin"].get<size_t>());
        sizes.push_back(j["samples"].size());
      }
  EXPECT_EQ(begins, (std::vector<size_t>{0, 3, 6}));
  EXPECT_EQ(sizes, (std::vector<size_t>{3, 3, 4}));

  const auto merged = run_command(xcam_cmd() + "merge " + split_cfg + " --shards 3");
  ASSERT_EQ(merged.status, 0) << merged.output;
  const auto a = outputs(tmp / "whole"), b = outputs(tmp / "split");
  ASSERT_EQ(a.size(), b.size());
  size_t panels = 0, counts = 0;
  for (const auto& [rel, data] : a) {
    ASSERT_TRUE(b.count(rel)) << rel;
    EXPECT_TRUE(b.at(rel) == data) << rel << " differs";
    panels += rel.find("worst_") != std::string::npos;
    counts += fs::path(rel).filename() == "count.json";
  }
  EXPECT_EQ(counts, 1u);
  EXPECT_GE(panels, 1u);
  const auto ra = records(tmp / "whole"), rb = records(tmp / "split");
  // A row per scene and strategy: the strategies' maps share rank 0 and
  // differ by target, as their files do.
  EXPECT_EQ(ra.size(), 30u);
  std::set<std::string> targets;
  for (const auto& r : ra) targets.insert(nlohmann::json::parse(r).at("target").get<std::string>());
  EXPECT_EQ(targets.size(), 3u);
  EXPECT_EQ(ra, rb);
  auto metrics = [](const fs::path& dir) {
    return nlohmann::json::parse(std::ifstream(dir / "gradcam/visual.blocks.3/task.json"))["metrics"];
  };
  const auto ma = metrics(tmp / "whole"), mb = metrics(tmp / "split");
  for (const char* k : {"global_mae", "crop_mae", "hybrid_rmse", "global_coverage", "hybrid_background_share"}) {
    ASSERT_TRUE(ma.contains(k)) << k;
    EXPECT_EQ(ma[k], mb[k]) << k;
  }
}

TEST(Shards, BadShardsAreRefused) {
  TempDir tmp("shards-bad");
  const auto cfg = write_config(tmp, tmp / "o");
  for (const std::string s : {"4/4", "1", "-1/4", "a/b", "1/0", "1/2/3"}) {
    const auto r = run_command(xcam_cmd() + "run " + cfg + " --shard " + s);
    EXPECT_NE(r.status, 0) << s;
    EXPECT_NE(r.output.find("is not I/N with 0 <= I < N"), std::string::npos) << s << ": " << r.output;
  }
  const auto cmp = write_config(tmp, tmp / "c", "compare: {sort_by: pointing}\n");
  const auto c = run_command(xcam_cmd() + "run " + cmp + " --shard 0/2");
  EXPECT_NE(c.status, 0);
  EXPECT_NE(c.output.find("is a comparison: its figures need every sample at once"), std::string::npos) << c.output;
  // A task that needs every sample at once says so (the plugin's task).
  const auto cap = tmp / "captions.yaml";
  std::ofstream(cap) << "model: " << source("zoo/models/captioner_scripted.pt")
                     << "\nplugin: captioner\npreprocess: {size: [128, 128]}\nlayers: encoder\nmethods: [gradcam]\n"
                     << "inputs: {images: '" << source("zoo/data/captioner/images/scene_00[0-3].png")
                     << "'}\ntask: {name: captions}\nthreads: 1\noutputs: {dir: " << (tmp / "cap") << "}\n";
  const auto t = run_command(xcam_cmd() + "run " + cap + " --shard 0/2");
  EXPECT_NE(t.status, 0);
  EXPECT_NE(t.output.find("captioner task captions does not split into shards"), std::string::npos) << t.output;
  const auto none = run_command(xcam_cmd() + "merge " + cfg + " --shards 3");
  EXPECT_NE(none.status, 0);
  EXPECT_NE(none.output.find("shard 0/3 of experiment"), std::string::npos) << none.output;
}

}  // namespace

// Sharded runs (docs/scaling.md): `xcam run CONFIG --shard I/N` on the demo
// experiment's images, one shard killed half-way and run again (it
// resumes), `xcam merge` joining the four; the merged records and maps equal
// a single run's, nothing lost or written twice. Bad shards are refused.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
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

TEST(Shards, BadShardsAreRefused) {
  TempDir tmp("shards-bad");
  const auto cfg = write_config(tmp, tmp / "o");
  for (const std::string s : {"4/4", "1", "-1/4", "a/b", "1/0", "1/2/3"}) {
    const auto r = run_command(xcam_cmd() + "run " + cfg + " --shard " + s);
    EXPECT_NE(r.status, 0) << s;
    EXPECT_NE(r.output.find("is not I/N with 0 <= I < N"), std::string::npos) << s << ": " << r.output;
  }
  const auto task = write_config(tmp, tmp / "t", "task: {name: evaluate}\n");
  const auto t = run_command(xcam_cmd() + "run " + task + " --shard 0/2");
  EXPECT_NE(t.status, 0);
  EXPECT_NE(t.output.find("is a task: its figures need every sample at once"), std::string::npos) << t.output;
  const auto none = run_command(xcam_cmd() + "merge " + cfg + " --shards 3");
  EXPECT_NE(none.status, 0);
  EXPECT_NE(none.output.find("shard 0/3 of experiment"), std::string::npos) << none.output;
}

}  // namespace

// Output names and resume of `xcam explain` (the writer the runner shares):
// names unique per target rank and per input, resume keyed by a digest of
// what decides the outputs, stale temporaries removed, results merged across
// runs on one folder.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>

#include "../common.h"
#include "xcam/io.h"

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

namespace fs = std::filesystem;
using xcam::test::run_command;
using xcam::test::source;
using xcam::test::TempDir;
using xcam::test::xcam_cmd;

namespace {

std::string explain(const std::string& out, const std::string& args, const std::string& inputs) {
  return xcam_cmd() + "explain --plugin-dir " + xcam::test::binary("plugins") + " --model " +
         source("zoo/models/shapes_cnn_traced.pt") + " --labels " + source("zoo/models/shapes_labels.txt") +
         " --size 128 128 --threads 2 --out " + out + " " + args + " " + inputs;
}

nlohmann::json rows(const std::string& dir) {
  std::ifstream in(dir + "/results.json");
  return nlohmann::json::parse(in);
}

std::vector<float> map_of(const std::string& path) { return xcam::read_npy(path).f32; }

std::string image(int i) { return source("zoo/data/shapes/val_00" + std::to_string(i) + ".png"); }

TEST(Outputs, RepeatedLabelsGetDistinctFilesAndRecords) {
  TempDir tmp("names");
  const auto r = run_command(explain(tmp / "o", "--layer block4 --target top1,circle,circle", image(0)));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = rows(tmp / "o");
  ASSERT_EQ(j.size(), 3u) << j.dump(1);
  std::set<std::string> files;
  for (const auto& row : j)
    for (const auto& o : row["outputs"]) {
      files.insert(o.get<std::string>());
      EXPECT_TRUE(fs::exists(tmp / ("o/" + o.get<std::string>()))) << o;
    }
  EXPECT_EQ(files.size(), 6u) << j.dump(1);  // .npy and .png of each of the 3 maps
  EXPECT_TRUE(files.count("val_000_circle_r1.npy") && files.count("val_000_circle_r2.npy")) << j.dump(1);
  // The two circle maps are the same target's, the same numbers.
  EXPECT_EQ(map_of(tmp / "o/val_000_circle_r1.npy"), map_of(tmp / "o/val_000_circle_r2.npy"));
}

TEST(Outputs, SameStemInTwoFoldersAreTwoItems) {
  TempDir tmp("stems");
  fs::create_directories(tmp / "a");
  fs::create_directories(tmp / "b");
  fs::copy_file(image(0), tmp / "a/x.png");
  fs::copy_file(image(1), tmp / "b/x.png");
  const std::string inputs = (tmp / "a/x.png") + " " + (tmp / "b/x.png");
  const auto r = run_command(explain(tmp / "o", "--layer block4", inputs));
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<std::string> npys;
  for (const auto& e : fs::directory_iterator(tmp / "o"))
    if (e.path().extension() == ".npy") npys.push_back(e.path().filename().string());
  std::sort(npys.begin(), npys.end());
  ASSERT_EQ(npys.size(), 2u);
  EXPECT_EQ(npys[0].rfind("a_x_", 0), 0u) << npys[0];
  EXPECT_EQ(npys[1].rfind("b_x_", 0), 0u) << npys[1];
  EXPECT_NE(map_of(tmp / ("o/" + npys[0])), map_of(tmp / ("o/" + npys[1])));
  const auto again = run_command(explain(tmp / "o", "--layer block4", inputs));
  EXPECT_NE(again.output.find("done 0, resumed 2, failed 0"), std::string::npos) << again.output;
}

TEST(Resume, WhatDecidesTheOutputsDecidesTheResume) {
  TempDir tmp("digest");
  const std::string out = tmp / "o";
  auto run = [&](const std::string& args) { return run_command(explain(out, args, image(0))); };
  ASSERT_EQ(run("--layer block4 --target square").status, 0);
  const auto first = map_of(out + "/val_000_square.npy");
  const auto same = run("--layer block4 --target square");
  EXPECT_NE(same.output.find("done 0, resumed 1"), std::string::npos) << same.output;
  // Another layer and method into the same folder: recomputed, not resumed.
  const auto other = run("--layer block2 --method eigencam --target square");
  EXPECT_NE(other.output.find("done 1, resumed 0"), std::string::npos) << other.output;
  EXPECT_NE(map_of(out + "/val_000_square.npy"), first);
  // Another input size, another colormap: recomputed too.
  for (const std::string args : {"--layer block2 --method eigencam --target square --colormap viridis",
                                 "--layer block2 --method eigencam --target square --colormap viridis --alpha 0.3"}) {
    const auto r = run(args);
    EXPECT_NE(r.output.find("done 1, resumed 0"), std::string::npos) << args << "\n" << r.output;
  }
  // Both methods' rows are in results.json: runs on one folder merge.
  std::set<std::string> methods;
  for (const auto& row : rows(out)) methods.insert(row["method"].get<std::string>());
  EXPECT_EQ(methods, (std::set<std::string>{"gradcam", "eigencam"}));
  EXPECT_EQ(rows(out).size(), 2u);
}

TEST(Resume, StaleTemporariesAreRemovedAndAHalfRecordIsRedone) {
  TempDir tmp("stale");
  const std::string out = tmp / "o";
  ASSERT_EQ(run_command(explain(out, "--layer block4", image(0))).status, 0);
  // What a killed run leaves: a temporary of a dead process, and a record cut short.
  std::ofstream(out + "/.val_000_circle.npy.tmp999999999") << "partial";
  std::ofstream(out + "/.items/.val_000.json.tmp999999999") << "partial";
  const std::string record = out + "/.items/val_000.json";
  std::string text;
  {
    std::ifstream in(record);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::ofstream(record) << text.substr(0, text.size() / 2);
  const auto r = run_command(explain(out, "--layer block4", image(0)));
  EXPECT_NE(r.output.find("done 1, resumed 0"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out + "/.val_000_circle.npy.tmp999999999"));
  EXPECT_FALSE(fs::exists(out + "/.items/.val_000.json.tmp999999999"));
  const auto again = run_command(explain(out, "--layer block4", image(0)));
  EXPECT_NE(again.output.find("done 0, resumed 1"), std::string::npos) << again.output;
}

}  // namespace

namespace {

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The pipeline (images read ahead, items written by threads while the next
// batch computes) changes nothing a run writes: the demo experiment over its
// 48 images with io_threads 0 and 3 gives the same .npy bytes, the same PNG
// pixels, and the same records in the same order (timings aside).
TEST(Pipeline, SameOutputsWithAndWithoutWriterThreads) {
  TempDir tmp("pipeline");
  std::ifstream demo(source("configs/shapes_demo.yaml"));
  std::string cfg((std::istreambuf_iterator<char>(demo)), {});
  auto replace = [&](const std::string& from, const std::string& to) {
    for (size_t at = cfg.find(from); at != std::string::npos; at = cfg.find(from, at + to.size()))
      cfg.replace(at, from.size(), to);
  };
  replace("../", source("") + "/");
  replace("batch_size: 16", "batch_size: 5");  // batches that do not divide the 48 images
  std::map<int, fs::path> dirs;
  for (int io : {0, 3}) {
    std::string c = cfg;
    const std::string from = "dir: " + source("") + "/out/shapes-demo";
    c.replace(c.find(from), from.size(), "dir: " + tmp / ("io" + std::to_string(io)));
    std::ofstream(tmp / "c.yaml") << c;
    const auto r = run_command(xcam_cmd() + "run " + (tmp / "c.yaml") + " --io-threads " + std::to_string(io));
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("done 96, resumed 0, failed 0"), std::string::npos) << r.output;
    dirs[io] = tmp / ("io" + std::to_string(io));
  }
  size_t files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dirs[0])) {
    const auto rel = fs::relative(e.path(), dirs[0]);
    const auto ext = e.path().extension();
    if (!e.is_regular_file() || (ext != ".npy" && ext != ".png")) continue;
    ASSERT_TRUE(fs::exists(dirs[3] / rel)) << rel;
    if (ext == ".npy") {
      EXPECT_EQ(bytes_of(e.path()), bytes_of(dirs[3] / rel)) << rel;
    } else {
      const auto a = cv::imread(e.path().string(), cv::IMREAD_UNCHANGED), b = cv::imread((dirs[3] / rel).string(), cv::IMREAD_UNCHANGED);
      ASSERT_EQ(a.size(), b.size()) << rel;
      EXPECT_EQ(cv::norm(a, b, cv::NORM_INF), 0) << rel;
    }
    ++files;
  }
  EXPECT_GT(files, 300u);  // 2 layer sets x (96 maps x 2 + 48 panels)
  auto strip = [](nlohmann::json rs) {
    for (auto& r : rs)
      for (const char* k : {"forward_ms", "backward_ms", "cam_ms"}) r.erase(k);
    return rs;
  };
  EXPECT_EQ(strip(rows(dirs[0].string())), strip(rows(dirs[3].string())));
  std::ifstream s(dirs[3] / "summary.json");
  const auto summary = nlohmann::json::parse(s);
  EXPECT_EQ(summary["maps"], 234);
  EXPECT_EQ(summary["io_threads"], 3);
  EXPECT_GT(summary["maps_per_second"].get<double>(), 0);
}

}  // namespace

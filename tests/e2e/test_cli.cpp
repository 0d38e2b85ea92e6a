// The xcam binary end to end: the demo experiment and its numbers, resume,
// and every kind of bad input giving a one-line error without losing work.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <filesystem>
#include <map>
#include <set>

#include "../common.h"
#include "xcam/image.h"
#include "xcam/io.h"

namespace fs = std::filesystem;
using xcam::test::expect_one_line_error;
using xcam::test::run_command;
using xcam::test::source;
using xcam::test::xcam_cmd;
using xcam::test::TempDir;

namespace {

// A copy of the demo config with absolute paths and the outputs in `out`.
std::string demo_config(const TempDir& tmp, const std::string& images, const std::string& extra = "") {
  const std::string cfg = tmp / "demo.yaml";
  std::ofstream(cfg) << "name: e2e\n"
                     << "model: " << source("zoo/models/shapes_cnn_traced.pt") << "\n"
                     << "labels: " << source("zoo/models/shapes_labels.txt") << "\n"
                     << "plugin_dirs: [" << xcam::test::binary("plugins") << "]\n"
                     << "preprocess: {size: [128, 128]}\n"
                     << "layers: [block4]\n"
                     << "targets: annotated\n"
                     << "inputs:\n  images: " << images << "\n  boxes: " << source("zoo/data/shapes/boxes.json")
                     << "\n"
                     << "batch_size: 5\nthreads: 2\n"
                     << "outputs: {dir: " << (tmp / "out") << ", save: [map, overlay]}\n"
                     << extra;
  return cfg;
}

nlohmann::json results(const TempDir& tmp) {
  std::ifstream in(tmp / "out/results.json");
  return nlohmann::json::parse(in);
}


TEST(Demo, PointingGameBeatsBaselineAndOutputsAreReal) {
  TempDir tmp("demo");
  const auto r = run_command(xcam_cmd() + "run " + demo_config(tmp, source("zoo/data/shapes/*.png")));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = results(tmp);
  // Recompute the pointing game from the per-item records.
  std::map<std::string, std::pair<int, int>> per_class, centre;
  for (const auto& item : j) {
    ASSERT_FALSE(item["pointing_hit"].is_null()) << item.dump();
    auto& c = per_class[item["target"]];
    (item["pointing_hit"].get<bool>() ? c.first : c.second)++;
    auto& b = centre[item["target"]];
    (item["centre_hit"].get<bool>() ? b.first : b.second)++;
  }
  auto score = [](const auto& m) {
    double s = 0;
    for (const auto& [k, c] : m) s += double(c.first) / (c.first + c.second);
    return s / m.size();
  };
  EXPECT_EQ(per_class.size(), 4u);
  EXPECT_GE(score(per_class), 0.8);
  EXPECT_LT(score(centre), 0.5);
  EXPECT_NE(r.output.find("pointing game [gradcam block4]"), std::string::npos) << r.output;

  // The first record's outputs: an 8-bit RGB overlay PNG and a float map in
  // [0, 1] (upsampled from 16 x 16, so its peak is just under 1).
  const auto& first = j[0];
  const auto map = xcam::read_npy(tmp / ("out/" + first["outputs"][0].get<std::string>()));
  ASSERT_EQ(map.shape, (std::vector<int64_t>{128, 128}));
  EXPECT_GT(*std::max_element(map.f32.begin(), map.f32.end()), 0.9f);
  EXPECT_LE(*std::max_element(map.f32.begin(), map.f32.end()), 1.0f);
  EXPECT_GE(*std::min_element(map.f32.begin(), map.f32.end()), 0.0f);
  const cv::Mat png = cv::imread(tmp / ("out/" + first["outputs"][1].get<std::string>()), cv::IMREAD_UNCHANGED);
  EXPECT_EQ(png.rows, 128);
  EXPECT_EQ(png.channels(), 3);
}

TEST(Demo, ReRunResumesAndForceRedoes) {
  TempDir tmp("resume");
  const auto cfg = demo_config(tmp, source("zoo/data/shapes/val_00*.png"));
  ASSERT_EQ(run_command(xcam_cmd() + "run " + cfg).status, 0);
  const auto first = xcam::read_npy(tmp / "out/gradcam/block4/val_001_square.npy").f32;
  const auto before = fs::last_write_time(tmp / "out/gradcam/block4/val_006_cross.npy");
  fs::remove(tmp / "out/gradcam/block4/val_000_circle.npy");  // lost output: val_000 is redone
  const auto again = run_command(xcam_cmd() + "run " + cfg);
  ASSERT_EQ(again.status, 0) << again.output;
  // Resume goes a batch at a time (batch_size 5): val_000's batch (val_000 to
  // val_004) is explained again whole, with the same numbers; the other
  // batch is taken as it is.
  EXPECT_NE(again.output.find("done 5, resumed 5, failed 0"), std::string::npos) << again.output;
  EXPECT_TRUE(fs::exists(tmp / "out/gradcam/block4/val_000_circle.npy"));
  EXPECT_EQ(xcam::read_npy(tmp / "out/gradcam/block4/val_001_square.npy").f32, first);
  EXPECT_EQ(fs::last_write_time(tmp / "out/gradcam/block4/val_006_cross.npy"), before);
  std::set<std::string> images;
  for (const auto& item : results(tmp)) images.insert(item["image"]);
  EXPECT_EQ(images.size(), 10u) << "resumed items stay in the results";
  const auto forced = run_command(xcam_cmd() + "run --force " + cfg);
  EXPECT_NE(forced.output.find("done 10, resumed 0"), std::string::npos) << forced.output;
}

TEST(BadInput, CorruptImageIsSkippedAndTheRestComplete) {
  TempDir tmp("corrupt");
  fs::create_directories(tmp / "imgs");
  for (const char* n : {"val_000.png", "val_001.png", "val_002.png"})
    fs::copy(source(std::string("zoo/data/shapes/") + n), tmp / (std::string("imgs/") + n));
  std::ofstream(tmp / "imgs/val_010.png") << "\x89PNG but then nothing useful";
  const auto r = run_command(xcam_cmd() + "run " + demo_config(tmp, tmp / "imgs/*.png"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("skipped " + (tmp / "imgs/val_010.png") + ": image"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("could not be decoded"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("done 3, resumed 0, failed 1"), std::string::npos) << r.output;
  std::set<std::string> images;
  for (const auto& item : results(tmp)) images.insert(item["image"]);
  EXPECT_EQ(images, (std::set<std::string>{"val_000.png", "val_001.png", "val_002.png"}));
}

TEST(BadInput, OneLineErrorsNamingTheInput) {
  TempDir tmp("errors");
  const std::string img = source("zoo/data/shapes/val_000.png");
  const std::string base = xcam_cmd() + "explain --plugin-dir " + xcam::test::binary("plugins") +
                           " --size 128 128 --out " + (tmp / "o") + " ";
  expect_one_line_error(run_command(base + "--model /nope/model.pt " + img), "model '/nope/model.pt' does not exist");
  std::ofstream(tmp / "bad.pt") << "not torchscript";
  expect_one_line_error(run_command(base + "--model " + (tmp / "bad.pt") + " " + img), "is not a TorchScript archive");
  const std::string model = source("zoo/models/shapes_cnn_scripted.pt");
  expect_one_line_error(run_command(base + "--model " + model + " --layer block5 " + img),
                        "layer 'block5' not found in " + model + "; did you mean 'block1', 'block2', 'block3'");
  expect_one_line_error(run_command(base + "--model " + model + " --plugin " +
                                    xcam::test::binary("tests/fake-plugins/major/libxcam_plugin_fake.so") + " " + img),
                        "incompatible ABI major version");
  expect_one_line_error(run_command(base + "--model " + model + " --plugin-options '{\"score\": 3}' " + img),
                        "plugin '");
  std::ofstream(tmp / "exp.yaml") << "model: m.pt\ninputs: " << source("zoo/data/shapes") << "\nmethod: gradcam\n";
  expect_one_line_error(run_command(xcam_cmd() + "run " + (tmp / "exp.yaml")),
                        "exp.yaml:3: unknown key 'method' in the experiment (did you mean 'methods'?)");
  std::ofstream(tmp / "chunk.yaml") << "model: m.pt\ninputs: " << source("zoo/data/shapes") << "\nperturb_chunk: 0\n";
  expect_one_line_error(run_command(xcam_cmd() + "run " + (tmp / "chunk.yaml")),
                        "chunk.yaml:3: key 'perturb_chunk' must be at least 1");
  std::ofstream(tmp / "wino.yaml") << "model: m.pt\ninputs: " << source("zoo/data/shapes") << "\nwinograd: sometimes\n";
  expect_one_line_error(run_command(xcam_cmd() + "run " + (tmp / "wino.yaml")),
                        "wino.yaml:3: key 'winograd' must be true or false");
  expect_one_line_error(run_command(base + "--model " + model + " --method ablationcam --perturb-chunk 0 " + img),
                        "the perturbation chunk (--perturb-chunk, perturb_chunk) must be at least 1, got 0");
  // Output directory that cannot be created: under a regular file.
  std::ofstream(tmp / "file") << "x";
  const auto r = run_command(xcam_cmd() + "explain --plugin-dir " + xcam::test::binary("plugins") +
                             " --size 128 128 --model " + model + " --out " + (tmp / "file/sub") + " " + img);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("cannot create output directory"), std::string::npos) << r.output;
}

TEST(BadInput, UnreadableInputDirectory) {
  // Permissions do not stop root: as root, run xcam as the unprivileged
  // 'nobody' user (setpriv, util-linux).
  std::string prefix;
  if (::geteuid() == 0) {
    if (!fs::exists("/usr/bin/setpriv")) GTEST_SKIP() << "running as root without setpriv";
    prefix = "/usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups ";
  }
  TempDir tmp("unreadable");
  fs::create_directories(tmp / "locked");
  fs::permissions(tmp.str(), fs::perms::all, fs::perm_options::add);
  fs::permissions(tmp / "locked", fs::perms::none);
  const auto cfg = demo_config(tmp, tmp / "locked");
  fs::permissions(cfg, fs::perms::all, fs::perm_options::add);
  expect_one_line_error(run_command(prefix + xcam_cmd() + "run " + cfg), "cannot be read");
}

TEST(Cli, ExplainWritesDocumentedNames) {
  TempDir tmp("explain");
  const auto r = run_command(xcam_cmd() + "explain --plugin-dir " + xcam::test::binary("plugins") +
                             " --model " + source("zoo/models/shapes_cnn_traced.pt") + " --labels " +
                             source("zoo/models/shapes_labels.txt") +
                             " --layer block4 --target top2 --size 128 128 --panel --out " + (tmp / "o") + " " +
                             source("zoo/data/shapes/val_000.png"));
  ASSERT_EQ(r.status, 0) << r.output;
  // val_000 holds a circle and a square: top2 explains exactly those.
  for (const char* f : {"val_000_circle.npy", "val_000_circle.png", "val_000_panel.png", "val_000_square.npy",
                        "val_000_square.png"})
    EXPECT_TRUE(fs::exists(tmp / (std::string("o/") + f))) << f << "\n" << r.output;
  // One panel for the sample, a row per target: 30 (title) + 22 (headers) + 2 x (128 + 4) pixels high.
  const auto panel = xcam::load_rgb(tmp / "o/val_000_panel.png");
  EXPECT_EQ(panel.rows, 30 + 22 + 2 * (128 + 4));
  EXPECT_FALSE(fs::exists(tmp / "o/val_000_circle_panel.png"));
  // results.json / results.csv, as the help says: a row per map.
  std::ifstream in(tmp / "o/results.json");
  ASSERT_TRUE(in) << r.output;
  const auto rows = nlohmann::json::parse(in);
  ASSERT_EQ(rows.size(), 2u);
  std::set<std::string> targets;
  for (const auto& row : rows) targets.insert(row["target"].get<std::string>());
  EXPECT_EQ(targets, (std::set<std::string>{"circle", "square"}));
  std::ifstream csv(tmp / "o/results.csv");
  std::string line;
  size_t lines = 0;
  while (std::getline(csv, line)) ++lines;
  EXPECT_EQ(lines, 3u);
}

TEST(Cli, PluginsAndLayersListings) {
  const auto p = run_command(xcam_cmd() + "plugins --plugin-dir " + xcam::test::binary("tests/fake-plugins/torch"));
  EXPECT_EQ(p.status, 0);
  EXPECT_NE(p.output.find("REFUSED"), std::string::npos) << p.output;
  EXPECT_NE(p.output.find("built against LibTorch 0.0.1"), std::string::npos) << p.output;
  EXPECT_NE(p.output.find("cnn        loaded"), std::string::npos) << p.output;
  const auto l = run_command(xcam_cmd() + "layers --size 128 128 " + source("zoo/models/shapes_cnn_scripted.pt"));
  EXPECT_EQ(l.status, 0);
  EXPECT_NE(l.output.find("block4 "), std::string::npos);
  EXPECT_NE(l.output.find("[1, 128, 16, 16]"), std::string::npos) << l.output;
  EXPECT_NE(l.output.find("block4.0 "), std::string::npos);
}

TEST(Cli, LayersListsTupleElementsOpsAndRefusesTwoInputModels) {
  const auto att = [](const std::string& f) { return xcam::test::models("attention/" + f); };
  const auto l = run_command(xcam_cmd() + "layers --size 32 32 " + att("mha_scripted.pt"));
  ASSERT_EQ(l.status, 0) << l.output;
  EXPECT_NE(l.output.find("encoder.blocks.1.attn.attn           MultiheadAttention                   0  a tuple of 2:"),
            std::string::npos)
      << l.output;
  EXPECT_NE(l.output.find("encoder.blocks.1.attn.attn[1]"), std::string::npos) << l.output;
  EXPECT_NE(l.output.find("[1, 4, 17, 17]"), std::string::npos) << l.output;
  // The ops inside a module, with their tap names and shapes; a scripted
  // F.softmax is a function call, tappable by its name.
  const auto o = run_command(xcam_cmd() + "layers " + att("vit_hf_scripted.pt") +
                             " --size 32 32 --ops encoder.blocks.0.attn");
  ASSERT_EQ(o.status, 0) << o.output;
  for (const char* row : {"encoder.blocks.0.attn/softmax", "call __torch__.torch.nn.functional.softmax",
                          "encoder.blocks.0.attn/matmul#1", "encoder.blocks.0.attn/dropout"})
    EXPECT_NE(o.output.find(row), std::string::npos) << row << "\n" << o.output;
  const auto b = run_command(xcam_cmd() + "layers " + att("branchy_scripted.pt") +
                             " --size 32 32 --ops encoder.blocks.0.attn");
  EXPECT_NE(b.output.find("encoder.blocks.0.attn/softmax      aten::softmax        1  not tappable: inside an if or a loop"),
            std::string::npos)
      << b.output;
  expect_one_line_error(run_command(xcam_cmd() + "layers " + att("siamese_traced.pt")),
                        "takes 2 inputs in forward(query, reference)");
  expect_one_line_error(run_command(xcam_cmd() + "layers " + att("vit_timm_traced.pt") + " --ops encoder.blocks.9"),
                        "module 'encoder.blocks.9' not found");
}

}  // namespace

// `xcam compare` end to end on the shapes CNN: the table's order, its CSV,
// JSON and printed forms against each other and against the per-map
// records, the grids, resume, and bad sort keys.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "../common.h"

namespace fs = std::filesystem;
using nlohmann::json;
using xcam::test::expect_one_line_error;
using xcam::test::run_command;
using xcam::test::source;
using xcam::test::xcam_cmd;
using xcam::test::TempDir;

namespace {

const std::vector<std::string> kMetrics{"pointing", "centre", "energy", "deletion", "insertion", "drop", "increase", "ms"};

// Three methods x two layer sets on four images; few deletion / insertion
// steps keep it quick (the metrics' plumbing is under test, not their
// resolution).
std::string compare_config(const TempDir& tmp, const std::string& compare = "{sort_by: deletion, steps: 16}") {
  const std::string cfg = tmp / "compare.yaml";
  std::ofstream(cfg) << "name: e2e-compare\n"
                     << "model: " << source("zoo/models/shapes_cnn_traced.pt") << "\n"
                     << "labels: " << source("zoo/models/shapes_labels.txt") << "\n"
                     << "plugin_dirs: [" << xcam::test::binary("plugins") << "]\n"
                     << "plugin_options: {activation: sigmoid}\n"
                     << "preprocess: {size: [128, 128], mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}\n"
                     << "layers: [block4, [block3, block4]]\n"
                     << "methods: [gradcam, eigencam, hirescam]\n"
                     << "targets: annotated\n"
                     << "inputs:\n  images: " << source("zoo/data/shapes/val_00[0-3].png")
                     << "\n  boxes: " << source("zoo/data/shapes/boxes.json") << "\n"
                     << "batch_size: 4\nthreads: 2\n"
                     << "outputs: {dir: " << (tmp / "out") << ", save: [map, overlay]}\n"
                     << "compare: " << compare << "\n";
  return cfg;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s) {
    if (ch == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  out.push_back(cur);
  return out;
}

// compare.csv as rows of cells (no quoted fields in these names).
std::vector<std::vector<std::string>> read_csv(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(split(line, ','));
  return rows;
}

// The printed table's rows (method, layers, then the cells), read from the
// line after the column names and directions to the "table:" line.
std::vector<std::vector<std::string>> printed_rows(const std::string& output) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(output);
  bool in_table = false;
  int header_lines = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("comparison sorted by", 0) == 0) {
      in_table = true;
      header_lines = 2;
      continue;
    }
    if (!in_table) continue;
    if (header_lines > 0) {
      --header_lines;
      continue;
    }
    if (line.rfind("table:", 0) == 0) break;
    std::istringstream cells(line);
    std::vector<std::string> row;
    for (std::string c; cells >> c;) row.push_back(c);
    rows.push_back(row);
  }
  return rows;
}

void expect_near_or_missing(const json& a, const std::string& csv, const std::string& what) {
  if (csv.empty()) {
    EXPECT_TRUE(a.is_null()) << what;
  } else {
    ASSERT_FALSE(a.is_null()) << what;
    EXPECT_NEAR(a.get<double>(), std::stod(csv), 1e-6) << what;
  }
}

TEST(Compare, TableIsSortedAndAgreesWithTheRecords) {
  TempDir tmp("compare");
  const auto cfg = compare_config(tmp);
  const auto r = run_command(xcam_cmd() + "compare " + cfg);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("comparison sorted by deletion (lower is better)"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("pointing game ["), std::string::npos) << "the table replaces the per-key lines\n"
                                                                 << r.output;

  const json cmp = read_json(tmp / "out/compare.json");
  EXPECT_EQ(cmp["sort_by"], "deletion");
  const json& rows = cmp["rows"];
  ASSERT_EQ(rows.size(), 6u) << cmp.dump(1);
  for (size_t i = 1; i < rows.size(); ++i)
    EXPECT_LE(rows[i - 1]["deletion"].get<double>(), rows[i]["deletion"].get<double>()) << "lower deletion first";

  // CSV: same rows, same order, same numbers.
  const auto csv = read_csv(tmp / "out/compare.csv");
  ASSERT_EQ(csv.size(), rows.size() + 1);
  std::vector<std::string> header{"method", "layers", "maps"};
  header.insert(header.end(), kMetrics.begin(), kMetrics.end());
  EXPECT_EQ(csv[0], header);
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& c = csv[i + 1];
    ASSERT_EQ(c.size(), header.size());
    EXPECT_EQ(c[0], rows[i]["method"]);
    EXPECT_EQ(c[1], rows[i]["layers"]);
    EXPECT_EQ(std::stoi(c[2]), rows[i]["maps"].get<int>());
    for (size_t m = 0; m < kMetrics.size(); ++m)
      expect_near_or_missing(rows[i][kMetrics[m]], c[3 + m], c[0] + " " + c[1] + " " + kMetrics[m]);
  }

  // The printed table: same order and maps counts.
  const auto printed = printed_rows(r.output);
  ASSERT_EQ(printed.size(), rows.size()) << r.output;
  for (size_t i = 0; i < rows.size(); ++i) {
    ASSERT_GE(printed[i].size(), 3u + kMetrics.size()) << r.output;
    EXPECT_EQ(printed[i][0], rows[i]["method"]) << r.output;
    EXPECT_EQ(printed[i][1], rows[i]["layers"]) << r.output;
    EXPECT_EQ(printed[i][2], std::to_string(rows[i]["maps"].get<int>())) << r.output;
    EXPECT_NEAR(std::stod(printed[i][6]), rows[i]["deletion"].get<double>(), 5e-5) << r.output;
  }

  // Recompute each row from the per-map records of results.json.
  struct Acc {
    int maps = 0, increase = 0;
    double energy = 0, deletion = 0, insertion = 0, drop = 0, time = 0;
    std::map<std::string, std::pair<int, int>> pg;
    std::map<std::string, int> per_image;
    std::vector<json> items;
  };
  std::map<std::string, Acc> acc;
  const json results = read_json(tmp / "out/results.json");
  for (const auto& item : results) {
    auto& a = acc[item["method"].get<std::string>() + " " + item["layers"].get<std::string>()];
    ++a.maps;
    ASSERT_FALSE(item["deletion"].is_null()) << item.dump();
    a.deletion += item["deletion"].get<double>();
    a.insertion += item["insertion"].get<double>();
    a.drop += item["drop"].get<double>();
    a.increase += item["increase"].get<bool>() ? 1 : 0;
    a.energy += item["energy"].get<double>();
    auto& p = a.pg[item["target"]];
    (item["pointing_hit"].get<bool>() ? p.first : p.second)++;
    ++a.per_image[item["image"]];
    a.items.push_back(item);
  }
  ASSERT_EQ(acc.size(), rows.size());
  for (const auto& row : rows) {
    const std::string key = row["method"].get<std::string>() + " " + row["layers"].get<std::string>();
    ASSERT_TRUE(acc.count(key)) << key;
    auto& a = acc[key];
    EXPECT_EQ(row["maps"].get<int>(), a.maps) << key;
    EXPECT_NEAR(row["deletion"].get<double>(), a.deletion / a.maps, 1e-9) << key;
    EXPECT_NEAR(row["insertion"].get<double>(), a.insertion / a.maps, 1e-9) << key;
    EXPECT_NEAR(row["drop"].get<double>(), a.drop / a.maps, 1e-9) << key;
    EXPECT_NEAR(row["increase"].get<double>(), 100.0 * a.increase / a.maps, 1e-9) << key;
    EXPECT_NEAR(row["energy"].get<double>(), a.energy / a.maps, 1e-9) << key;
    double pg = 0;
    for (const auto& [cls, c] : a.pg) pg += double(c.first) / (c.first + c.second);
    EXPECT_NEAR(row["pointing"].get<double>(), pg / a.pg.size(), 1e-9) << key;
    // ms per map: each image's explanation time once, over the maps.
    double total = 0;
    for (const auto& item : a.items)
      total += (item["forward_ms"].get<double>() + item["backward_ms"].get<double>() + item["cam_ms"].get<double>()) /
               a.per_image[item["image"]];
    EXPECT_NEAR(row["ms"].get<double>(), total / a.maps, 1e-9) << key;
    EXPECT_GT(row["ms"].get<double>(), 0.0) << key;
    // AUCs and percentages in range.
    EXPECT_GE(row["deletion"].get<double>(), 0.0);
    EXPECT_LE(row["insertion"].get<double>(), 1.0);
    EXPECT_GE(row["drop"].get<double>(), 0.0);
    EXPECT_LE(row["drop"].get<double>(), 100.0);
    if (row["method"] == "gradcam") {
      EXPECT_GE(row["pointing"].get<double>(), 0.8) << key;
      EXPECT_LT(row["centre"].get<double>(), 0.5) << key;
    }
  }

  // One grid per image and target: the image column and three methods, two
  // layer sets, 128 px tiles (render_grid's geometry: 30 + 22 + rows * (tile + 4)
  // high; columns of tile + 4 after a label column narrower than a tile).
  std::set<std::string> expected;
  for (const auto& item : results)
    expected.insert(fs::path(item["image"].get<std::string>()).stem().string() + "_" +
                    item["target"].get<std::string>() + ".png");
  std::set<std::string> found;
  for (const auto& e : fs::directory_iterator(tmp / "out/grid")) found.insert(e.path().filename().string());
  EXPECT_EQ(found, expected);
  for (const auto& name : expected) {
    const cv::Mat grid = cv::imread(tmp / ("out/grid/" + name), cv::IMREAD_COLOR);
    ASSERT_FALSE(grid.empty()) << name;
    EXPECT_EQ(grid.rows, 30 + 22 + 2 * (128 + 4)) << name;
    EXPECT_GE(grid.cols, 4 * (128 + 4)) << name;
    EXPECT_LT(grid.cols, 4 * (128 + 4) + 128) << name;
  }

  // A re-run resumes every item and writes the same table; `xcam run` takes
  // the experiment's compare key too.
  const std::string csv_before = read_text(tmp / "out/compare.csv");
  const auto again = run_command(xcam_cmd() + "run " + cfg);
  ASSERT_EQ(again.status, 0) << again.output;
  EXPECT_NE(again.output.find("done 0, resumed 24, failed 0"), std::string::npos) << again.output;
  EXPECT_EQ(read_text(tmp / "out/compare.csv"), csv_before);
  EXPECT_EQ(printed_rows(again.output), printed) << again.output;

  // --sort overrides the file's key: higher insertion first, nothing redone.
  const auto by_insertion = run_command(xcam_cmd() + "compare " + cfg + " --sort insertion");
  ASSERT_EQ(by_insertion.status, 0) << by_insertion.output;
  EXPECT_NE(by_insertion.output.find("done 0, resumed 24"), std::string::npos) << by_insertion.output;
  EXPECT_NE(by_insertion.output.find("comparison sorted by insertion (higher is better)"), std::string::npos);
  const json resorted = read_json(tmp / "out/compare.json");
  EXPECT_EQ(resorted["sort_by"], "insertion");
  ASSERT_EQ(resorted["rows"].size(), rows.size());
  for (size_t i = 1; i < rows.size(); ++i)
    EXPECT_GE(resorted["rows"][i - 1]["insertion"].get<double>(), resorted["rows"][i]["insertion"].get<double>());
}


TEST(Compare, BadSortKeyIsOneLineNamingTheChoices) {
  TempDir tmp("compare-bad");
  const std::string choices = "choose from: pointing, energy, deletion, insertion, drop, increase, ms";
  const auto auc = run_command(xcam_cmd() + "compare " + compare_config(tmp) + " --sort auc");
  expect_one_line_error(auc, "unknown sort key 'auc'");
  EXPECT_NE(auc.output.find(choices), std::string::npos) << auc.output;
  expect_one_line_error(run_command(xcam_cmd() + "compare " + compare_config(tmp) + " --sort insert"),
                        "unknown sort key 'insert' (did you mean 'insertion'?); " + choices);
  expect_one_line_error(run_command(xcam_cmd() + "run " + compare_config(tmp, "{sort_by: speed}")),
                        "compare.yaml:16: unknown sort key 'speed'");
  expect_one_line_error(run_command(xcam_cmd() + "run " + compare_config(tmp, "{sort: ms}")),
                        "compare.yaml:16: unknown key 'sort' in compare (did you mean 'sort_by'?)");
  expect_one_line_error(run_command(xcam_cmd() + "compare " + compare_config(tmp) + " --layer block3"),
                        "--layer applies to the flag form (with --model)");
  EXPECT_FALSE(fs::exists(tmp / "out")) << "nothing runs after a refused option";
}

TEST(Compare, FlagFormWithoutYaml) {
  TempDir tmp("compare-flags");
  const auto r = run_command(xcam_cmd() + "compare --model " + source("zoo/models/shapes_cnn_traced.pt") +
                             " --plugin-dir " + xcam::test::binary("plugins") + " --labels " +
                             source("zoo/models/shapes_labels.txt") +
                             " --size 128 128 --threads 2 --methods gradcam,eigencam --layer block4 "
                             "--layer block3+block4 --target annotated --boxes " +
                             source("zoo/data/shapes/boxes.json") + " --steps 8 --sort pointing --out " +
                             (tmp / "o") + " " + source("zoo/data/shapes/val_000.png"));
  ASSERT_EQ(r.status, 0) << r.output;
  const json cmp = read_json(tmp / "o/compare.json");
  ASSERT_EQ(cmp["rows"].size(), 4u) << cmp.dump(1);
  std::set<std::string> layer_sets;
  for (const auto& row : cmp["rows"]) {
    layer_sets.insert(row["layers"].get<std::string>());
    EXPECT_EQ(row["maps"], 2) << "val_000 boxes a circle and a square";
  }
  EXPECT_EQ(layer_sets, (std::set<std::string>{"block4", "block3+block4"}));
  EXPECT_TRUE(fs::exists(tmp / "o/grid/val_000_circle.png"));
  EXPECT_TRUE(fs::exists(tmp / "o/gradcam/block3_block4/val_000_square.npy"));
}

}  // namespace

namespace {

// Two inputs with one file name from different folders: each gets its own
// grid, named by its sample id as its maps are, drawn on its own image.
TEST(Compare, GridsOfInputsSharingAStemStayApart) {
  TempDir tmp("compare-stems");
  fs::create_directories(tmp / "a");
  fs::create_directories(tmp / "b");
  fs::copy_file(source("zoo/data/shapes/val_000.png"), tmp / "a/x.png");
  fs::copy_file(source("zoo/data/shapes/val_001.png"), tmp / "b/x.png");
  const auto r = run_command(xcam_cmd() + "compare --model " + source("zoo/models/shapes_cnn_traced.pt") +
                             " --plugin-dir " + xcam::test::binary("plugins") + " --size 128 128 --threads 2 "
                             "--methods gradcam --layer block4 --target 0 --steps 4 --out " + (tmp / "o") + " " +
                             (tmp / "a/x.png") + " " + (tmp / "b/x.png"));
  ASSERT_EQ(r.status, 0) << r.output;
  const cv::Mat a = cv::imread(tmp / "o/grid/a_x_0.png", cv::IMREAD_COLOR);
  const cv::Mat b = cv::imread(tmp / "o/grid/b_x_0.png", cv::IMREAD_COLOR);
  ASSERT_FALSE(a.empty()) << r.output;
  ASSERT_FALSE(b.empty()) << r.output;
  EXPECT_GT(cv::norm(a, b, cv::NORM_INF), 0);  // two images, two grids
  EXPECT_FALSE(fs::exists(tmp / "o/grid/x_0.png"));
}

}  // namespace

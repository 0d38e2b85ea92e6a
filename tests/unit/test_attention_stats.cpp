// Per-head attention statistics and pattern labels (docs/attention.md):
// every statistic against a float64 reference and the zoo's Python reference,
// the label of each hand-made pattern, and `xcam attention` end to end on the
// zoo BERT (its designed heads found by their labels) and its errors.
#include <gtest/gtest.h>
#include <torch/script.h>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <random>

#include "../common.h"
#include "xcam/attention_html.h"
#include "xcam/attention_stats.h"
#include "xcam/attention_views.h"
#include "xcam/render.h"
#include "xcam/strings.h"
#include "xcam/error.h"

using xcam::test::expect_one_line_error;
using xcam::test::run_command;
using xcam::test::source;
using xcam::test::TempDir;
using xcam::test::xcam_cmd;

namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.is_open()) << path;
  return nlohmann::json::parse(in);
}

const nlohmann::json& fixture() {
  static const nlohmann::json j = read_json(source("zoo/models/bert/attention_fixture.json"));
  return j;
}

// The statistics written out in float64, straight from their definitions in
// attention_stats.h: a[i][j] of one head, `valid` / `cls` / `sep` per position.
std::vector<double> reference_stats(const std::vector<std::vector<double>>& a, const std::vector<bool>& valid,
                                    const std::vector<bool>& cls, const std::vector<bool>& sep, int64_t w) {
  const auto T = static_cast<int64_t>(a.size());
  double n = 0;
  for (const bool v : valid) n += v ? 1 : 0;
  double ent = 0, ent_n = 0, dist = 0, c = 0, s = 0, diag = 0, prev = 0, next = 0, local = 0, causal = 0;
  double prev_rows = 0, next_rows = 0;
  for (int64_t i = 0; i < T; ++i) {
    if (!valid[i]) continue;
    double e = 0;
    for (int64_t j = 0; j < T; ++j) {
      if (!valid[j]) continue;
      const double p = a[i][j];
      if (p > 0) e -= p * std::log(p);
      dist += p * std::fabs(static_cast<double>(i - j));
      if (cls[j]) c += p;
      if (sep[j]) s += p;
      if (i == j) diag += p;
      if (std::abs(i - j) <= w) local += p;
      if (j <= i) causal += p;
    }
    ent += e;
    ent_n += n > 1 ? e / std::log(n) : 0;
    if (i > 0 && valid[i - 1]) prev += a[i][i - 1], prev_rows += 1;
    if (i + 1 < T && valid[i + 1]) next += a[i][i + 1], next_rows += 1;
  }
  return {ent / n,   ent_n / n, dist / n, c / n, s / n, diag / n, prev_rows ? prev / prev_rows : 0,
          next_rows ? next / next_rows : 0, local / n, causal / n};
}

void expect_near_all(const std::vector<double>& got, const std::vector<double>& want, double tol,
                     const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k)
    EXPECT_NEAR(got[k], want[k], tol * std::max(1.0, std::fabs(want[k])))
        << what << " " << xcam::head_stat_names()[k];
}

// One layer of the fixture as floats [h][i][j] and as float64 rows.
std::vector<float> fixture_layer(size_t layer, std::vector<std::vector<std::vector<double>>>& heads) {
  const auto& att = fixture()["attentions"][layer];
  std::vector<float> flat;
  heads.clear();
  for (const auto& head : att) {
    heads.emplace_back();
    for (const auto& row : head) {
      heads.back().push_back(row.get<std::vector<double>>());
      for (const double p : heads.back().back()) flat.push_back(static_cast<float>(p));
    }
  }
  return flat;
}

xcam::TokenFacts fixture_facts() {
  xcam::TokenFacts f;
  for (const auto& t : fixture()["texts"][0]["tokens"]) {
    f.cls.push_back(t == "[CLS]");
    f.sep.push_back(t == "[SEP]");
  }
  return f;
}

TEST(AttentionStats, EveryStatisticEqualsTheFloat64Reference) {
  const auto facts = fixture_facts();
  const auto T = static_cast<int64_t>(facts.cls.size());
  ASSERT_EQ(T, 24);
  const std::vector<bool> all(static_cast<size_t>(T), true);
  for (size_t l = 0; l < 2; ++l) {
    std::vector<std::vector<std::vector<double>>> heads;
    const auto flat = fixture_layer(l, heads);
    const auto stats = xcam::layer_head_stats(flat.data(), 4, T, facts);
    ASSERT_EQ(stats.size(), 4u);
    for (size_t h = 0; h < 4; ++h) {
      const auto got = xcam::head_stat_values(stats[h]);
      expect_near_all(got, reference_stats(heads[h], all, facts.cls, facts.sep, 2), 1e-6,
                      "layer " + std::to_string(l) + " head " + std::to_string(h));
      // The zoo's Python statistics of the same text (zoo/bert_model.py).
      const auto& py = fixture()["head_statistics"][std::to_string(l) + "." + std::to_string(h)];
      const std::vector<std::pair<const char*, double>> pairs = {
          {"entropy", stats[h].entropy},           {"mean_distance", stats[h].mean_distance},
          {"cls", stats[h].cls_share},             {"sep", stats[h].sep_share},
          {"diagonal", stats[h].diagonal_share},   {"previous_token", stats[h].previous_share}};
      for (const auto& [name, v] : pairs) {
        const double want = py[name].get<double>();
        EXPECT_NEAR(v, want, 1e-6 * std::max(1.0, std::fabs(want))) << l << "." << h << " " << name;
      }
    }
  }
}

// Padding rows and columns do not count: the stats of a padded sequence with
// garbage in its padding equal those of the unpadded one (random attention,
// rows normalised, fresh each run).
TEST(AttentionStats, PaddingIsExcluded) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> u(0.01f, 1.0f);
  const int64_t H = 3, T = 9, P = 4, TP = T + P;
  std::vector<float> small(static_cast<size_t>(H * T * T)), padded(static_cast<size_t>(H * TP * TP));
  for (auto& v : padded) v = u(rng);  // garbage in the padding
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < T; ++i) {
      float sum = 0;
      for (int64_t j = 0; j < T; ++j) sum += small[(h * T + i) * T + j] = u(rng);
      for (int64_t j = 0; j < T; ++j) {
        small[(h * T + i) * T + j] /= sum;
        padded[(h * TP + i) * TP + j] = small[(h * T + i) * T + j];
      }
    }
  xcam::TokenFacts fs, fp;
  fs.cls.assign(T, false);
  fs.cls[0] = true;
  fs.sep.assign(T, false);
  fs.sep[T - 1] = true;
  fp.cls = fs.cls;
  fp.sep = fs.sep;
  fp.cls.resize(TP, false);
  fp.sep.resize(TP, true);  // padding flagged as separators must still not count
  fp.valid.assign(TP, true);
  for (int64_t k = T; k < TP; ++k) fp.valid[k] = false;
  const auto a = xcam::layer_head_stats(small.data(), H, T, fs);
  const auto b = xcam::layer_head_stats(padded.data(), H, TP, fp);
  for (int64_t h = 0; h < H; ++h)
    expect_near_all(xcam::head_stat_values(b[h]), xcam::head_stat_values(a[h]), 1e-12, "head " + std::to_string(h));
  EXPECT_GT(a[0].local_share, 0.1);  // not trivially zero
}

TEST(AttentionStats, RejectsBadShapes) {
  std::vector<float> a(16, 0.25f);
  xcam::TokenFacts f;
  f.cls.assign(3, false);  // 3 facts for T = 4
  EXPECT_THROW(xcam::layer_head_stats(a.data(), 1, 4, f), xcam::Error);
  f.cls.clear();
  f.valid.assign(4, false);
  EXPECT_THROW(xcam::layer_head_stats(a.data(), 1, 4, f), xcam::Error);
}

// A one-head [T, T] attention whose row i puts all its mass on key k(i), or
// spreads it uniformly over keys(i).
template <typename Keys>
std::vector<float> pattern(int64_t T, Keys keys) {
  std::vector<float> a(static_cast<size_t>(T * T), 0.0f);
  for (int64_t i = 0; i < T; ++i) {
    const std::vector<int64_t> ks = keys(i);
    for (const int64_t j : ks) a[i * T + j] += 1.0f / static_cast<float>(ks.size());
  }
  return a;
}

struct LabelCase {
  std::string name;
  std::function<std::vector<int64_t>(int64_t, int64_t)> keys;  // (i, T) -> keys
  std::string label;
};

TEST(AttentionLabels, HandMadePatternsGetTheirLabel) {
  const int64_t T = 16;
  const std::vector<LabelCase> cases = {
      {"previous", [](int64_t i, int64_t) { return std::vector<int64_t>{std::max<int64_t>(i - 1, 0)}; },
       "previous-token"},
      {"next", [](int64_t i, int64_t t) { return std::vector<int64_t>{std::min(i + 1, t - 1)}; }, "next-token"},
      {"self", [](int64_t i, int64_t) { return std::vector<int64_t>{i}; }, "self"},
      {"cls", [](int64_t, int64_t) { return std::vector<int64_t>{0}; }, "CLS"},
      {"sep", [](int64_t, int64_t t) { return std::vector<int64_t>{t - 1}; }, "separator"},
      {"local",
       [](int64_t i, int64_t t) {
         std::vector<int64_t> k;
         for (int64_t j = std::max<int64_t>(0, i - 2); j <= std::min(t - 1, i + 2); ++j) k.push_back(j);
         return k;
       },
       "local"},
      {"broad",
       [](int64_t, int64_t t) {
         std::vector<int64_t> k;
         for (int64_t j = 0; j < t; ++j) k.push_back(j);
         return k;
       },
       "broad"},
      // Two far keys chosen by content: sharp, distant, not one structural position.
      {"global", [](int64_t i, int64_t t) { return std::vector<int64_t>{(i + t / 2) % t, (i + t / 2 + 3) % t}; },
       "global"},
  };
  xcam::TokenFacts f;
  f.cls.assign(T, false);
  f.cls[0] = true;
  f.sep.assign(T, false);
  f.sep[T - 1] = true;
  for (const auto& c : cases) {
    const auto a = pattern(T, [&](int64_t i) { return c.keys(i, T); });
    const auto s = xcam::layer_head_stats(a.data(), 1, T, f)[0];
    EXPECT_EQ(xcam::head_label(s), c.label) << c.name;
  }
  // Without [CLS] the first position is the first token.
  const auto a = pattern(T, [](int64_t) { return std::vector<int64_t>{0}; });
  xcam::TokenFacts none;
  const auto s = xcam::layer_head_stats(a.data(), 1, T, none)[0];
  EXPECT_DOUBLE_EQ(s.cls_share, 1.0);
  EXPECT_EQ(xcam::head_label(s, {}, false), "first-token");
}

TEST(AttentionLabels, ExactValuesOfSimplePatterns) {
  const int64_t T = 10;
  xcam::TokenFacts f;
  const auto prev = pattern(T, [](int64_t i) { return std::vector<int64_t>{std::max<int64_t>(i - 1, 0)}; });
  const auto s = xcam::layer_head_stats(prev.data(), 1, T, f)[0];
  EXPECT_DOUBLE_EQ(s.previous_share, 1.0);
  EXPECT_DOUBLE_EQ(s.next_share, 0.0);
  EXPECT_DOUBLE_EQ(s.diagonal_share, 0.1);  // row 0 attends to itself
  EXPECT_DOUBLE_EQ(s.mean_distance, 0.9);
  EXPECT_DOUBLE_EQ(s.causal_share, 1.0);
  EXPECT_DOUBLE_EQ(s.entropy, 0.0);
  const auto uni = pattern(T, [](int64_t) {
    std::vector<int64_t> k(10);
    std::iota(k.begin(), k.end(), 0);
    return k;
  });
  const auto u = xcam::layer_head_stats(uni.data(), 1, T, f)[0];
  EXPECT_NEAR(u.entropy, std::log(10.0), 1e-6);
  EXPECT_NEAR(u.entropy_norm, 1.0, 1e-6);
  EXPECT_NEAR(u.causal_share, 0.55, 1e-6);  // mean over i of (i + 1) / 10
  // Thresholds are the rules': a 0.45 previous-token share is not enough.
  xcam::HeadStats h;
  h.previous_share = 0.45;
  h.entropy_norm = 0.5;
  EXPECT_EQ(xcam::head_label(h), "global");
  EXPECT_EQ(xcam::head_label(h, {0.4, 0.5, 0.8}), "previous-token");
}

// Image tokens: a CLS token, then a 2 x 3 grid of 16 x 8 pixel cells. Each
// grid token attends to its right-hand neighbour (the row's last to the
// CLS token); distances in pixels between centres, locality in cells.
TEST(AttentionStats, PixelDistancesOnTheGrid) {
  const int64_t T = 7;
  xcam::TokenFacts f;
  f.window = 1;
  f.cell_h = 16;
  f.cell_w = 8;
  const double nan = std::nan("");
  f.centre.push_back({nan, nan});
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c) f.centre.push_back({(r + 0.5) * 16, (c + 0.5) * 8});
  f.cls = {true, false, false, false, false, false, false};
  const auto right = pattern(T, [](int64_t i) {
    if (i == 0) return std::vector<int64_t>{4};                    // CLS: to cell (1, 0)
    return std::vector<int64_t>{(i - 1) % 3 == 2 ? 0 : i + 1};     // the next cell in the row, or CLS
  });
  const auto s = xcam::layer_head_stats(right.data(), 1, T, f)[0];
  // Four of the six grid rows move 8 pixels; the two row ends go to CLS (no distance, not local).
  EXPECT_DOUBLE_EQ(s.mean_distance, 4 * 8.0 / 6);
  EXPECT_DOUBLE_EQ(s.local_share, 4.0 / 6);
  EXPECT_DOUBLE_EQ(s.cls_share, 2.0 / 7);
  // Two cells away is not local with w = 1, and is with w = 2.
  const auto two = pattern(T, [](int64_t i) { return std::vector<int64_t>{i >= 1 && (i - 1) % 3 == 0 ? i + 2 : i}; });
  EXPECT_DOUBLE_EQ(xcam::layer_head_stats(two.data(), 1, T, f)[0].local_share, 4.0 / 6);
  EXPECT_DOUBLE_EQ(xcam::layer_head_stats(two.data(), 1, T, f)[0].mean_distance, 2 * 16.0 / 6);
  f.window = 2;
  EXPECT_DOUBLE_EQ(xcam::layer_head_stats(two.data(), 1, T, f)[0].local_share, 1.0);
  // A diagonal step: hypot(16, 8).
  const auto diag = pattern(T, [](int64_t i) { return std::vector<int64_t>{i == 1 ? 5 : i}; });
  EXPECT_NEAR(xcam::layer_head_stats(diag.data(), 1, T, f)[0].mean_distance, std::hypot(16.0, 8.0) / 6, 1e-12);
  f.centre.pop_back();
  EXPECT_THROW(xcam::layer_head_stats(right.data(), 1, T, f), xcam::Error);
}

TEST(TapPatterns, StarStandsForOneComponent) {
  const std::vector<std::string> paths{"blocks", "blocks.0", "blocks.0.attn", "blocks.1", "blocks.1.attn",
                                       "blocks.1.attn.proj", "head"};
  EXPECT_EQ(xcam::expand_tap_patterns({"blocks.*.attn/softmax", "head"}, paths),
            (std::vector<std::string>{"blocks.0.attn/softmax", "blocks.1.attn/softmax", "head"}));
  EXPECT_EQ(xcam::expand_tap_patterns({"blocks.*@0[1]"}, paths),
            (std::vector<std::string>{"blocks.0@0[1]", "blocks.1@0[1]"}));
  EXPECT_EQ(xcam::expand_tap_patterns({"*.*.attn.*"}, paths), (std::vector<std::string>{"blocks.1.attn.proj"}));
  try {
    xcam::expand_tap_patterns({"layers.*.attn/softmax"}, paths);
    FAIL();
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'layers.*.attn/softmax' fits no module path"), std::string::npos);
  }
}

TEST(AttentionTable, CsvJsonAndHeatmap) {
  xcam::AttentionTable t;
  t.rows = {{xcam::HeadStats{}, xcam::HeadStats{}}, {xcam::HeadStats{}, xcam::HeadStats{}}};
  t.rows[1][0].cls_share = 0.9;
  xcam::label_table(t);
  EXPECT_EQ(t.labels[1][0], "CLS");
  const auto csv = xcam::attention_table_csv(t);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5);
  EXPECT_NE(csv.find("1,0,0,0,0,0.9,"), std::string::npos) << csv;
  const auto j = nlohmann::json::parse(xcam::attention_table_json(t));
  ASSERT_EQ(j["heads"].size(), 4u);
  EXPECT_EQ(j["heads"][2]["label"], "CLS");
  EXPECT_DOUBLE_EQ(j["heads"][2]["cls_share"].get<double>(), 0.9);
  TempDir tmp("attention-table");
  xcam::write_attention_heatmap(tmp / "h.png", t, "cls_share");
  const auto img = cv::imread(tmp / "h.png");
  EXPECT_FALSE(img.empty());
  EXPECT_THROW(xcam::write_attention_heatmap(tmp / "x.png", t, "nope"), xcam::Error);
}

// ---- `xcam attention` end to end on the zoo BERT ----

std::string attention_cmd(const std::vector<std::string>& texts, const std::string& out) {
  std::string cmd = xcam_cmd() + "attention --threads 2 --model " + source("zoo/models/bert/bert_patterns_traced.pt") +
                    " --tokenizer " + source("zoo/models/tokenizers/bert/tokenizer.json") + " --out " + out;
  for (const auto& t : texts) cmd += " --text '" + t + "'";
  return cmd;
}

std::map<std::pair<int, int>, nlohmann::json> heads_of(const std::string& json_path) {
  std::map<std::pair<int, int>, nlohmann::json> out;
  const auto j = read_json(json_path);
  for (const auto& h : j["heads"]) out[{h["layer"].get<int>(), h["head"].get<int>()}] = h;
  return out;
}

// The YAML task `attention` (configs/bert_attention.yaml's form) writes what
// the command writes for the same texts, byte for byte; its rules relabel
// (broad above 1.0: no head is broad); a bad key names itself.
TEST(AttentionCli, YamlTaskEqualsTheCommand) {
  TempDir tmp("attention-yaml");
  std::vector<std::string> texts;
  std::string lines;
  for (const auto& t : fixture()["texts"]) {
    texts.push_back(t["text"].get<std::string>());
    lines += nlohmann::json{{"text", texts.back()}}.dump() + "\n";
  }
  std::ofstream(tmp / "texts.jsonl") << lines;
  auto yaml = [&](const std::string& dir, const std::string& extra) {
    const std::string path = tmp / (dir + ".yaml");
    std::ofstream(path) << "name: a\nmodel: " << source("zoo/models/bert/bert_patterns_traced.pt")
                        << "\ninputs:\n  manifest: " << (tmp / "texts.jsonl") << "\ntask:\n  name: attention\n"
                        << "  tokenizer: " << source("zoo/models/tokenizers/bert/tokenizer.json") << "\n" << extra
                        << "threads: 2\noutputs:\n  dir: " << (tmp / dir) << "\n";
    return run_command(xcam_cmd() + "run " + path);
  };
  const auto y = yaml("yaml", "  html: true\n");
  ASSERT_EQ(y.status, 0) << y.output;
  const auto c = run_command(attention_cmd(texts, tmp / "cli") + " --html");
  ASSERT_EQ(c.status, 0) << c.output;
  for (const auto* f : {"attention_stats.csv", "attention_stats.json", "attention_1.html", "attention_4.html"}) {
    std::ifstream a(tmp / (std::string("yaml/") + f)), b(tmp / (std::string("cli/") + f));
    const std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
    EXPECT_FALSE(sa.empty()) << f;
    EXPECT_EQ(sa, sb) << f;
  }
  const auto strict = yaml("strict", "  rules: {broad: 1.0}\n");
  ASSERT_EQ(strict.status, 0) << strict.output;
  const auto before = heads_of(tmp / "yaml/attention_stats.json"), after = heads_of(tmp / "strict/attention_stats.json");
  int broad = 0;
  for (const auto& [k, h] : before) {
    broad += h["label"] == "broad";
    EXPECT_NE(after.at(k)["label"], "broad");
  }
  EXPECT_GT(broad, 0);
  const auto bad = yaml("bad", "  heads: 3\n");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.output.find("unknown key 'heads' in task (attention)"), std::string::npos) << bad.output;
}

TEST(AttentionCli, DesignedHeadsGetTheirLabels) {
  std::vector<std::string> texts;
  for (const auto& t : fixture()["texts"]) texts.push_back(t["text"].get<std::string>());
  ASSERT_EQ(texts.size(), 4u);
  TempDir tmp("attention-cli");
  const auto r = run_command(attention_cmd(texts, tmp.str()));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("previous-token"), std::string::npos) << r.output;
  const auto heads = heads_of(tmp / "attention_stats.json");
  ASSERT_EQ(heads.size(), 8u);
  EXPECT_EQ(heads.at({0, 1})["label"], "previous-token") << heads.at({0, 1}).dump();
  EXPECT_GT(heads.at({0, 1})["previous_share"].get<double>(), 0.85);
  EXPECT_EQ(heads.at({1, 0})["label"], "CLS") << heads.at({1, 0}).dump();
  EXPECT_GT(heads.at({1, 0})["cls_share"].get<double>(), 0.95);
  // The bracket head: sharp (not broad) and not on any structural position.
  const auto& bracket = heads.at({1, 2});
  std::cout << "layer 1 head 2 (bracket partner): " << bracket.dump() << "\n";
  EXPECT_NE(bracket["label"], "broad");
  EXPECT_NE(bracket["label"], "CLS");
  EXPECT_NE(bracket["label"], "previous-token");
  std::ifstream csv(tmp / "attention_stats.csv");
  const std::string text((std::istreambuf_iterator<char>(csv)), std::istreambuf_iterator<char>());
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 9);
  const auto png = cv::imread(tmp / "attention_entropy_norm.png");
  EXPECT_FALSE(png.empty());
}

// One text through tokenizer, traced model and statistics equals the zoo's
// float64 eager statistics of the same text (float32 model: 1e-4).
TEST(AttentionCli, OneTextEqualsTheZooReference) {
  TempDir tmp("attention-one");
  const auto r = run_command(attention_cmd({fixture()["texts"][0]["text"].get<std::string>()}, tmp.str()));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto heads = heads_of(tmp / "attention_stats.json");
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 4; ++h) {
      const auto& py = fixture()["head_statistics"][std::to_string(l) + "." + std::to_string(h)];
      const auto& got = heads.at({l, h});
      for (const auto& [ours, theirs] : std::vector<std::pair<std::string, std::string>>{
               {"entropy", "entropy"},
               {"mean_distance", "mean_distance"},
               {"cls_share", "cls"},
               {"sep_share", "sep"},
               {"diagonal_share", "diagonal"},
               {"previous_share", "previous_token"}})
        EXPECT_NEAR(got[ours].get<double>(), py[theirs].get<double>(), 1e-4) << l << "." << h << " " << ours;
    }
}

TEST(AttentionCli, OneLineErrors) {
  TempDir tmp("attention-errors");
  // A model that takes ids and a mask and returns no attentions.
  torch::jit::Module m("NoAttention");
  m.define("def forward(self, ids, mask):\n  return (ids.float().unsqueeze(-1), mask.float())\n");
  m.save(tmp / "noatt.pt");
  const std::string tok = source("zoo/models/tokenizers/bert/tokenizer.json");
  const auto r = run_command(xcam_cmd() + "attention --model " + (tmp / "noatt.pt") + " --tokenizer " + tok +
                             " --text 'a b c' --out " + (tmp / "o"));
  expect_one_line_error(r, "returns no attentions");
  expect_one_line_error(r, "export it with output_attentions=True");
  expect_one_line_error(r, "it returns (Tensor[1, 5, 1], Tensor[1, 5])");  // [CLS] a b c [SEP]
  const std::string bert = source("zoo/models/bert/bert_patterns_traced.pt");
  expect_one_line_error(
      run_command(xcam_cmd() + "attention --model " + bert + " --text 'a b c' --out " + (tmp / "o")),
      "give --tokenizer tokenizer.json");
  expect_one_line_error(run_command(xcam_cmd() + "attention --model " + bert + " --tokenizer " + (tmp / "nope.json") +
                                    " --text 'a b c' --out " + (tmp / "o")),
                        "nope.json' does not exist");
  expect_one_line_error(run_command(xcam_cmd() + "attention --model " + bert + " --tokenizer " + tok +
                                    " --text 'a b c' --flow 5 --out " + (tmp / "o")),
                        "--flow 5: text 1 has tokens 0 to 4 ([CLS] a b c [SEP])");
}

}  // namespace

// The page's embedded data: every attention value as round(255 sqrt(p)),
// base64 per layer, tokens as given (a "</script>" in a token cannot end the
// data element), labels; wrong sizes refused.
TEST(AttentionPage, EmbedsTheAttentionAndTheTokens) {
  const int64_t H = 2, T = 3;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  xcam::AttentionPage page;
  page.title = "t";
  page.tokens = {"[CLS]", "</script><b>x", "[SEP]"};
  page.special = {true, false, true};
  page.heads = H;
  for (int l = 0; l < 2; ++l) {
    std::vector<float> a(static_cast<size_t>(H * T * T));
    for (auto& v : a) v = u(rng);
    a[0] = 0.f;
    a[1] = 1.f;
    page.layers.push_back(a);
  }
  page.labels = {{"CLS", "local"}, {"broad", "global"}};
  const auto html = xcam::attention_html(page);
  EXPECT_EQ(html.find("</script><b>"), std::string::npos);
  const auto open = html.find("<script id=\"data\" type=\"application/json\">");
  ASSERT_NE(open, std::string::npos);
  const auto start = html.find('>', open) + 1, end = html.find("</script>", start);
  std::string text = html.substr(start, end - start);
  for (size_t at = 0; (at = text.find("<\\/", at)) != std::string::npos;) text.replace(at, 3, "</");
  const auto data = nlohmann::json::parse(text);
  EXPECT_EQ(data.at("tokens").get<std::vector<std::string>>(), page.tokens);
  EXPECT_EQ(data.at("labels")[1][0], "broad");
  EXPECT_EQ(data.at("heads"), H);
  const std::string b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (size_t l = 0; l < 2; ++l) {
    const std::string s = data.at("attention")[l];
    std::vector<int> bytes;
    for (size_t i = 0; i + 3 < s.size(); i += 4) {
      uint32_t n = 0;
      int pad = 0;
      for (int k = 0; k < 4; ++k) {
        n <<= 6;
        if (s[i + k] == '=') ++pad;
        else n |= static_cast<uint32_t>(b64.find(s[i + k]));
      }
      for (int k = 0; k < 3 - pad; ++k) bytes.push_back(static_cast<int>((n >> (16 - 8 * k)) & 255));
    }
    ASSERT_EQ(bytes.size(), page.layers[l].size());
    for (size_t k = 0; k < bytes.size(); ++k)
      EXPECT_EQ(bytes[k], std::lround(255.0 * std::sqrt(double(page.layers[l][k])))) << l << " " << k;
    EXPECT_EQ(bytes[0], 0);
    EXPECT_EQ(bytes[1], 255);
  }
  page.layers[1].pop_back();
  EXPECT_THROW(xcam::attention_html(page), xcam::Error);
}

// The views: a head's heat map colours cell (i, j) by sqrt(p_ij); the flow
// panel draws a line from the chosen query to each key it attends to, in its
// head's colour, and none to a key it ignores; out-of-range tokens and
// layers are refused.
TEST(AttentionViews, HeatMapCellsAndFlowLines) {
  const int64_t T = 4, H = 2;
  xcam::AttentionPage page;
  page.title = "views";
  page.tokens = {"[CLS]", "a", "b", "[SEP]"};
  page.heads = H;
  std::vector<float> a(static_cast<size_t>(H * T * T), 0.f);
  auto at = [&](int64_t h, int64_t i, int64_t j) -> float& { return a[static_cast<size_t>((h * T + i) * T + j)]; };
  for (int64_t i = 0; i < T; ++i) {
    at(0, i, (i + 1) % T) = 0.75f;  // head 0: mostly the next token
    at(0, i, i) = 0.25f;
    at(1, i, 0) = 1.f;  // head 1: [CLS]
  }
  page.layers = {a, a};
  const auto& lut = xcam::colormap_lut(xcam::Colormap::viridis);
  const auto heat = xcam::render_attention_head(a.data(), T, 5);
  ASSERT_EQ(heat.rows, 20);
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j) {
      const auto px = heat.at<cv::Vec3b>(static_cast<int>(i) * 5 + 2, static_cast<int>(j) * 5 + 2);
      const auto k = static_cast<size_t>(std::lround(255.0 * std::sqrt(double(at(0, i, j))))) * 3;
      EXPECT_EQ(px, cv::Vec3b(lut[k], lut[k + 1], lut[k + 2])) << i << " " << j;
    }
  const auto flow = xcam::render_flow_panel(page, 1, 1);
  auto y = [](int64_t k) { return 30 + 18 * static_cast<int>(k) + 9; };
  auto mid = [&](int64_t j) { return flow.at<cv::Vec3b>((y(1) + y(j)) / 2, (136 + 364) / 2); };
  auto rgb = [](const cv::Scalar& c) { return cv::Vec3b(uchar(c[0]), uchar(c[1]), uchar(c[2])); };
  EXPECT_EQ(mid(2), rgb(xcam::head_colour(0)));  // head 0: token 1 -> token 2 (0.75)
  EXPECT_EQ(mid(0), rgb(xcam::head_colour(1)));  // head 1: token 1 -> [CLS]
  EXPECT_EQ(mid(3), cv::Vec3b(255, 255, 255));   // nothing to [SEP]
  EXPECT_NE(xcam::head_colour(0), xcam::head_colour(1));
  EXPECT_THROW(xcam::render_flow_panel(page, 0, 4), xcam::Error);
  EXPECT_THROW(xcam::render_flow_panel(page, 2, 0), xcam::Error);
  EXPECT_THROW(xcam::render_layer_heads(page, 2), xcam::Error);
  EXPECT_THROW(xcam::render_head_layers(page, 2), xcam::Error);
  const auto grid = xcam::render_layer_heads(page, 0);
  EXPECT_GE(grid.cols, 2 * 128);  // both heads, each at least 128 px wide
}

// `xcam attention` on images (docs/attention.md, "Images"): per-head
// statistics of three ViTs of different naming (the zoo's PromptSG-shaped
// CLIP encoder, timm's vit_small, transformers' ViTModel) read through taps
// of the softmax inside their attention modules, distances in pixels,
// against float64 statistics of the eager models (zoo/reid_fixtures.py);
// the token grid from the re-ID plugin's layout and from the patch options
// alike; the YAML task writing what the command writes; mistakes named.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../common.h"
#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/image.h"

namespace {

using xcam::test::run_command;
using xcam::test::TempDir;

std::string fixture(const std::string& f) { return xcam::test::models("reid/" + f); }
std::string reid_plugin() { return xcam::test::binary("plugins/reid/libxcam_plugin_reid.so"); }
std::string model_file(const std::string& name) {
  return name == "reid_promptsg_traced.pt" ? xcam::test::source("zoo/models/" + name) : fixture(name);
}
// The first pair's query, as zoo/reid_fixtures.py reads it.
std::string query() {
  const auto pairs = nlohmann::json::parse(std::ifstream(fixture("pairs.json")));
  return xcam::test::source("zoo/data/reid/" + pairs.at(0).at("query").get<std::string>());
}

// The taps as a pattern: the reference's first tap with its block index as '*'.
std::string pattern_of(const std::string& tap) {
  const auto at = tap.find(".0.");
  return tap.substr(0, at) + ".*." + tap.substr(at + 3);
}

std::string attention_cmd(const std::string& model, const std::string& pattern, const std::string& out) {
  return xcam::test::xcam_cmd() + "attention --threads 2 --plugin " + reid_plugin() + " --size 128 64 --model " +
         model + " --image " + query() + " --layer '" + pattern + "' --out " + out;
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(std::ifstream(path)); }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(AttentionImages, StatisticsEqualFloat64OnThreeViTs) {
  const auto refs = read_json(fixture("attention_stats.json"));
  ASSERT_EQ(refs.size(), 3u);
  for (const auto& [name, ref] : refs.items()) {
    TempDir tmp("attention-images");
    const auto r = run_command(attention_cmd(model_file(name), pattern_of(ref["layers"][0]), tmp.str()));
    ASSERT_EQ(r.status, 0) << r.output;
    const auto got = read_json(tmp / "attention_stats.json");
    EXPECT_EQ(got["layers"], ref["layers"]) << name;  // the pattern expanded in block order
    EXPECT_EQ(got["distance"], "pixels");
    EXPECT_EQ(got["images"], 1);
    const auto& heads = got["heads"];
    size_t k = 0, checked = 0;
    for (size_t l = 0; l < ref["heads"].size(); ++l)
      for (size_t h = 0; h < ref["heads"][l].size(); ++h, ++k) {
        ASSERT_LT(k, heads.size()) << name;
        EXPECT_EQ(heads[k]["layer"], l);
        EXPECT_EQ(heads[k]["head"], h);
        for (const auto& [stat, value] : ref["heads"][l][h].items()) {
          const double want = value.get<double>(), have = heads[k][stat].get<double>();
          EXPECT_NEAR(have, want, 1e-5 + 1e-5 * std::abs(want)) << name << " layer " << l << " head " << h << " "
                                                                  << stat;
          ++checked;
        }
      }
    EXPECT_EQ(k, heads.size()) << name;
    EXPECT_GE(checked, 40u) << name;
  }
  // The statistics are not blind to where the tokens lie: the zoo model's
  // heads differ in mean distance by more than the tolerance.
  const auto& zoo = refs["reid_promptsg_traced.pt"]["heads"];
  double lo = 1e9, hi = 0;
  for (const auto& layer : zoo)
    for (const auto& h : layer) {
      lo = std::min(lo, h["mean_distance"].get<double>());
      hi = std::max(hi, h["mean_distance"].get<double>());
    }
  EXPECT_GT(hi - lo, 1.0);
}

// Without a plugin layout (the cnn plugin), the patch size and prefix from
// the options put the tokens where the re-ID plugin's layout does.
TEST(AttentionImages, PatchOptionsPlaceTokensAsThePluginLayout) {
  const std::string taps = "blocks.*.attn/softmax";
  auto make = [&](const std::string& plugin) {
    xcam::ExplainerOptions o;
    o.model = fixture("timm_vit_small.pt");
    o.plugin = plugin;
    o.method = "attention";
    o.layers = {taps};
    o.height = 128;
    o.width = 64;
    o.mean = std::array<float, 3>{0.48145466f, 0.4578275f, 0.40821073f};
    o.std = std::array<float, 3>{0.26862954f, 0.26130258f, 0.27577711f};
    o.attention.patch_h = o.attention.patch_w = 16;
    o.attention.prefix = 1;
    return o;
  };
  xcam::SampleInput s;
  s.id = "q";
  s.image = xcam::load_rgb(query());
  xcam::Explainer by_plugin(make(reid_plugin())), by_options(make("cnn"));
  EXPECT_EQ(by_options.layers().size(), 12u);
  const auto a = by_plugin.attention_of(s), b = by_options.attention_of(s);
  ASSERT_EQ(a.layers.size(), 12u);
  ASSERT_EQ(b.layers.size(), 12u);
  for (size_t l = 0; l < 12; ++l) {
    const auto& x = a.layers[l];
    const auto& y = b.layers[l];
    EXPECT_EQ(x.heads, 6);
    ASSERT_EQ(x.tokens, 33);
    EXPECT_EQ(y.tokens, 33);
    EXPECT_EQ(x.grid_h, 8);
    EXPECT_EQ(y.grid_w, 4);
    EXPECT_DOUBLE_EQ(y.cell_h, 16.0);
    EXPECT_TRUE(std::isnan(x.centre[0][0]) && std::isnan(y.centre[0][0]));  // the CLS token
    for (size_t k = 1; k < 33; ++k) {
      EXPECT_DOUBLE_EQ(x.centre[k][0], y.centre[k][0]);
      EXPECT_DOUBLE_EQ(y.centre[k][0], ((k - 1) / 4 + 0.5) * 16) << k;
      EXPECT_DOUBLE_EQ(y.centre[k][1], ((k - 1) % 4 + 0.5) * 16) << k;
    }
    ASSERT_EQ(x.attention.size(), y.attention.size());
    for (size_t i = 0; i < x.attention.size(); ++i) ASSERT_NEAR(x.attention[i], y.attention[i], 1e-6) << l;
  }
}

// The YAML task over images writes the command's outputs byte for byte.
TEST(AttentionImages, YamlTaskWritesWhatTheCommandWrites) {
  TempDir tmp("attention-images-yaml");
  const std::string pattern = "vit.encoder.layer.*.attention.attention/softmax";
  const auto c = run_command(attention_cmd(fixture("hf_vit.pt"), pattern, tmp / "cli") + " --views --html");
  ASSERT_EQ(c.status, 0) << c.output;
  std::ofstream(tmp / "run.yaml") << "model: " << fixture("hf_vit.pt") << "\nplugin: " << reid_plugin()
                                  << "\npreprocess: {size: [128, 64]}\nlayers: ['" << pattern << "']\ninputs: ["
                                  << query() << "]\nthreads: 2\ntask: {name: attention, views: true, html: true}\n"
                                  << "outputs: {dir: " << (tmp / "yaml") << "}\n";
  const auto y = run_command(xcam::test::xcam_cmd() + "run " + (tmp / "run.yaml"));
  ASSERT_EQ(y.status, 0) << y.output;
  for (const std::string f : {"attention_stats.json", "attention_stats.csv", "attention_entropy_norm.png",
                              "attention_1.html", "attention_1_layer3.png", "attention_1_head2.png"})
    EXPECT_EQ(read_text(tmp / ("cli/" + f)), read_text(tmp / ("yaml/" + f))) << f;
  // The page names the tokens by their cells: the CLS token off the grid, then 0,0 to 7,3.
  const auto page = read_text(tmp / "cli/attention_1.html");
  for (const std::string t : {"\"#0\"", "\"0,0\"", "\"7,3\""}) EXPECT_NE(page.find(t), std::string::npos) << t;
  EXPECT_NE(c.output.find("mean_distance in pixels"), std::string::npos) << c.output;
}

TEST(AttentionImages, MistakesAreNamed) {
  TempDir tmp("attention-images-errors");
  const std::string zoo = model_file("reid_promptsg_traced.pt");
  auto error_of = [&](const std::string& cmd) {
    const auto r = run_command(cmd);
    EXPECT_NE(r.status, 0) << cmd;
    return r.output;
  };
  // The MIM's prompt attends to the patches: one query over N keys.
  EXPECT_NE(error_of(attention_cmd(zoo, "mim.softmax", tmp.str())).find("is a cross-attention (1 query token(s) over 32 keys"),
            std::string::npos);
  EXPECT_NE(error_of(attention_cmd(zoo, "vit.vision_model.encoder.blocks.*.attn/softmax", tmp.str()))
                .find("fits no module path"),
            std::string::npos);
  EXPECT_NE(error_of(attention_cmd(zoo, "vit.vision_model.encoder.layers.3", tmp.str())).find("attention probabilities"),
            std::string::npos);
  const auto no_layer = error_of(xcam::test::xcam_cmd() + "attention --model " + zoo + " --image " + query() +
                                 " --out " + tmp.str());
  EXPECT_NE(no_layer.find("give --layer"), std::string::npos) << no_layer;
  const auto both = error_of(attention_cmd(zoo, "vit.vision_model.encoder.layers.*.self_attn/softmax", tmp.str()) +
                             " --text 'a b'");
  EXPECT_NE(both.find("takes texts or images, not both"), std::string::npos) << both;
}

}  // namespace

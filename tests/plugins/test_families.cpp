// Family shapes the ABI 2.2 hooks exist for, with real plugins over
// zoo/family_fakes.py's models and float64 references:
//   (b) an image + prompt decoder: image tokens at positions of a causal
//       sequence, a wide and a tall image in one run, each on its own grid;
//   a text-only classifier: sentences without images, maps over the words.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "../common.h"
#include "../unit/explain_util.h"
#include "xcam/experiment.h"
#include "xcam/explainer.h"
#include "xcam/image.h"
#include "xcam/io.h"
#include "xcam/render.h"
#include "vocab.h"

#include <opencv2/imgproc.hpp>

namespace {

std::string zoo(const std::string& f) { return xcam::test::models("families/" + f); }
std::string plugin(const std::string& name) {
  return std::string(XCAM_FAKE_PLUGIN_DIR) + "/" + name + "/libxcam_plugin_" + name + ".so";
}

// A gh x gw reference map as the runtime draws it: bilinear (half-pixel
// centres) to H x W, then min-max normalised.
std::vector<float> at_input_size(const xcam::NpyArray& grid, int64_t H, int64_t W) {
  auto g = torch::tensor(grid.f32).view({1, 1, grid.shape.at(0), grid.shape.at(1)});
  auto m = torch::upsample_bilinear2d(g, {H, W}, false).view({H * W});
  m = (m - m.min()) / (m.max() - m.min());
  return std::vector<float>(m.data_ptr<float>(), m.data_ptr<float>() + H * W);
}

xcam::ExplainerOptions vlm_options(const std::string& variant) {
  xcam::ExplainerOptions o;
  o.model = zoo("vlm_" + variant + ".pt");
  o.plugin = plugin("vlm");
  o.plugin_options = nlohmann::json{{"vocab", zoo("vlm_vocab.txt")}}.dump();
  o.targets = {"two"};
  return o;
}

xcam::SampleInput vlm_sample(const std::string& id, const cv::Mat& image) {
  xcam::SampleInput s;
  s.id = id;
  s.image = image;
  s.text = "how many circles are there ?";
  return s;
}

// (b) A wide (48 x 80) and a tall (88 x 48) image in one explain() call:
// each keeps its size, its grid (6 x 10, 11 x 6) comes from it, and its map
// equals the float64 Grad-CAM at blocks.0 over the image positions of the
// sequence; a second wide image shares the wide one's batch and gives what it
// gives alone; the answer's probability is the float64 one.
TEST(ImagePromptDecoder, OwnGridsPerImageLikeFloat64) {
  const auto wide = xcam::load_rgb(zoo("vlm_wide.png")), tall = xcam::load_rgb(zoo("vlm_tall.png"));
  cv::Mat flipped;
  cv::flip(wide, flipped, 1);
  for (const std::string variant : {"scripted", "traced"}) {
    xcam::Explainer ex(vlm_options(variant));
    const auto maps = ex.explain(std::vector<xcam::SampleInput>{vlm_sample("wide", wide), vlm_sample("tall", tall),
                                                                vlm_sample("flipped", flipped)});
    ASSERT_EQ(maps.size(), 3u) << variant;
    std::map<std::string, const xcam::MapResult*> by_id;
    for (const auto& m : maps) by_id[m.image_id] = &m;
    for (const auto& [id, H, W] : {std::tuple{"wide", 48, 80}, std::tuple{"tall", 88, 48}}) {
      const auto& m = *by_id.at(id);
      ASSERT_EQ(m.height, H) << id;
      ASSERT_EQ(m.width, W) << id;
      EXPECT_EQ(m.target_label, "two");
      EXPECT_EQ(m.target.explains, "answer 'two' to 'how many circles are there ?'");
      const auto ref = xcam::read_npy(zoo(std::string("vlm_cam_") + id + ".npy"));
      EXPECT_LT(xcam::test::max_abs_diff(m.map, at_input_size(ref, H, W), 0), 1e-4) << variant << " " << id;
      const double logp = xcam::read_npy(zoo(std::string("vlm_score_") + id + ".npy")).f32.at(0);
      EXPECT_NEAR(m.score, std::exp(logp), 1e-5) << id;
      EXPECT_FALSE(m.meta.at("answer").empty());
    }
    const auto alone = ex.explain(std::vector<xcam::SampleInput>{vlm_sample("flipped", flipped)});
    EXPECT_LT(xcam::test::max_abs_diff(by_id.at("flipped")->map, alone.at(0).map, 0), 1e-5);
    EXPECT_GT(xcam::test::max_abs_diff(by_id.at("flipped")->map, by_id.at("wide")->map, 0), 0.1);
  }
}

// Images of any size are rounded to the patch multiple (within the pixel
// budget) by the plugin, not squeezed into one size; a size given by the
// user fixes the size again.
TEST(ImagePromptDecoder, PluginSizesEachImage) {
  cv::Mat odd, big;
  cv::resize(xcam::load_rgb(zoo("vlm_wide.png")), odd, cv::Size(83, 45));
  cv::resize(odd, big, cv::Size(400, 200));
  xcam::Explainer ex(vlm_options("scripted"));
  const auto maps = ex.explain(std::vector<xcam::SampleInput>{vlm_sample("odd", odd), vlm_sample("big", big)});
  ASSERT_EQ(maps.size(), 2u);
  EXPECT_EQ(maps[0].height, 48);  // 45 x 83 -> 48 x 80
  EXPECT_EQ(maps[0].width, 80);
  EXPECT_EQ(maps[1].height, 56);  // 200 x 400 over 80 x 80 pixels: divided by 3.54, rounded down -> 56 x 112
  EXPECT_EQ(maps[1].width, 112);
  // The maps are those of the images resized to those sizes beforehand.
  for (const auto& [m, image] : {std::pair{&maps[0], odd}, std::pair{&maps[1], big}}) {
    cv::Mat sized;
    cv::resize(image, sized, cv::Size(int(m->width), int(m->height)), 0, 0, cv::INTER_LINEAR);
    const auto same = ex.explain(std::vector<xcam::SampleInput>{vlm_sample(m->image_id, sized)});
    EXPECT_LT(xcam::test::max_abs_diff(m->map, same.at(0).map, 0), 1e-6) << m->image_id;
  }
  auto fixed = vlm_options("scripted");
  fixed.height = fixed.width = 64;
  xcam::Explainer ex64(fixed);
  const auto m64 = ex64.explain(std::vector<xcam::SampleInput>{vlm_sample("odd", odd)});
  EXPECT_EQ(m64.at(0).height, 64);
  EXPECT_EQ(m64.at(0).width, 64);
  cv::Mat square;
  cv::resize(odd, square, cv::Size(64, 64), 0, 0, cv::INTER_LINEAR);
  const auto own = ex.explain(std::vector<xcam::SampleInput>{vlm_sample("odd", square)});
  EXPECT_LT(xcam::test::max_abs_diff(m64.at(0).map, own.at(0).map, 0), 1e-6);
}

xcam::ExplainerOptions text_options(const std::string& variant) {
  xcam::ExplainerOptions o;
  o.model = zoo("textcls_" + variant + ".pt");
  o.plugin = plugin("text");
  o.plugin_options = nlohmann::json{{"vocab", zoo("textcls_vocab.txt")}}.dump();
  o.targets = {"1"};
  return o;
}

xcam::SampleInput sentence(const std::string& id, const std::string& text) {
  xcam::SampleInput s;
  s.id = id;
  s.text = text;
  return s;
}

// Text-only samples of two lengths in one call: each sentence's map lies
// over its words and equals the float64 Grad-CAM; a third sentence of the
// first one's length shares its batch without changing its map.
TEST(TextOnly, MapsOverWordsLikeFloat64) {
  const std::vector<std::string> text{"the movie was great", "the plot was boring but the acting was fun"};
  for (const std::string variant : {"scripted", "traced"}) {
    xcam::Explainer ex(text_options(variant));
    const auto maps = ex.explain(std::vector<xcam::SampleInput>{
        sentence("s0", text[0]), sentence("s1", text[1]), sentence("s2", "the movie was bad")});
    ASSERT_EQ(maps.size(), 3u);
    std::map<std::string, const xcam::MapResult*> by_id;
    for (const auto& m : maps) by_id[m.image_id] = &m;
    for (int i : {0, 1}) {
      const auto& m = *by_id.at("s" + std::to_string(i));
      EXPECT_EQ(m.on, "text");
      EXPECT_EQ(m.words, xcam::test::words(text[i]));
      EXPECT_EQ(m.height, 1);
      ASSERT_EQ(m.width, static_cast<int64_t>(m.words.size()));
      const auto ref = xcam::read_npy(zoo("textcls_cam_" + std::to_string(i) + ".npy"));
      EXPECT_LT(xcam::test::max_abs_diff(m.map, ref.f32, 0), 1e-5) << variant << " s" << i;
      const auto logits = xcam::read_npy(zoo("textcls_logits_" + std::to_string(i) + ".npy")).f32;
      const double denom = std::exp(logits[0]) + std::exp(logits[1]) + std::exp(logits[2]);
      EXPECT_NEAR(m.score, std::exp(logits[1]) / denom, 1e-5);
    }
    const auto alone = ex.explain(std::vector<xcam::SampleInput>{sentence("s0", text[0])});
    EXPECT_LT(xcam::test::max_abs_diff(by_id.at("s0")->map, alone.at(0).map, 0), 1e-6);
  }
}

// What cannot work on text is refused up front, naming the sample and what to do.
TEST(TextOnly, RefusesImageOnlyPaths) {
  auto o = text_options("scripted");
  o.method = "scorecam";
  xcam::Explainer score(o);
  try {
    score.explain(std::vector<xcam::SampleInput>{sentence("s0", "the movie was great")});
    FAIL() << "scorecam on text";
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sample 's0' is text only; method 'scorecam' perturbs images"),
              std::string::npos)
        << e.what();
  }
  // The faithfulness metrics perturb images: a text sample's maps get none.
  xcam::Explainer ex(text_options("scripted"));
  const std::vector<xcam::SampleInput> s0{sentence("s0", "the movie was great")};
  const auto f = ex.faithfulness(s0, ex.explain(s0));
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].base, 0);
  EXPECT_EQ(f[0].deletion, 0);
  xcam::ExplainerOptions cnn;
  cnn.model = xcam::test::source("zoo/models/shapes_cnn_traced.pt");
  xcam::Explainer image_only(cnn);
  try {
    image_only.explain(std::vector<xcam::SampleInput>{sentence("s0", "the movie was great")});
    FAIL() << "text through the cnn plugin";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("sample 's0'"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace {

nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// Text samples from a JSON Lines manifest through `xcam explain`: a heat
// strip over the words (each box in the colormap's colour of its word's
// value), the values as .npy and in the records; a re-run resumes them.
TEST(TextOnly, ManifestToStripsAndRecords) {
  xcam::test::TempDir tmp("text_manifest");
  std::ofstream(tmp / "m.jsonl") << "{\"text\": \"the movie was great\", \"id\": \"good\"}\n"
                                 << "{\"text\": \"the plot was boring but the acting was fun\", \"lang\": \"en\"}\n";
  const std::string cmd = xcam::test::xcam_cmd() + "explain --model " + zoo("textcls_scripted.pt") + " --plugin " +
                          plugin("text") + " --plugin-options '{\"vocab\": \"" + zoo("textcls_vocab.txt") +
                          "\"}' --target 1 --manifest " + (tmp / "m.jsonl") + " --out " + (tmp / "out");
  const auto r = xcam::test::run_command(cmd);
  ASSERT_EQ(r.status, 0) << r.output;
  xcam::Explainer ex(text_options("scripted"));
  const auto maps = ex.explain(std::vector<xcam::SampleInput>{sentence("good", "the movie was great"),
                                                              sentence("text2", "the plot was boring but the acting was fun")});
  const auto rows = read_json(std::filesystem::path(tmp / "out") / "results.json");
  ASSERT_EQ(rows.size(), 2u);
  const auto& lut = xcam::colormap_lut(xcam::Colormap::jet);
  for (const auto& m : maps) {
    const auto row = std::find_if(rows.begin(), rows.end(), [&](const auto& j) { return j["id"] == m.image_id; });
    ASSERT_NE(row, rows.end()) << m.image_id;
    EXPECT_EQ((*row)["on"], "text");
    ASSERT_EQ((*row)["tokens"].size(), m.words.size());
    for (size_t k = 0; k < m.words.size(); ++k) {
      EXPECT_EQ((*row)["tokens"][k]["token"], m.words[k]);
      EXPECT_NEAR((*row)["tokens"][k]["value"].get<double>(), m.map[k], 1e-6);
    }
    const auto npy = xcam::read_npy((std::filesystem::path(tmp / "out") / (m.image_id + "_class1.npy")).string());
    EXPECT_EQ(npy.shape, (std::vector<int64_t>{1, static_cast<int64_t>(m.words.size())}));
    EXPECT_LT(xcam::test::max_abs_diff(npy.f32, m.map, 0), 1e-7);
    // The first word's box starts at (4, 4): its colour is the map's.
    const auto strip = xcam::load_rgb((std::filesystem::path(tmp / "out") / (m.image_id + "_class1.png")).string());
    const auto k = static_cast<size_t>(std::lround(m.map[0] * 255.f)) * 3;
    const auto px = strip.at<cv::Vec3b>(6, 6);
    EXPECT_EQ(px, cv::Vec3b(lut[k], lut[k + 1], lut[k + 2])) << m.image_id;
  }
  EXPECT_EQ(rows[1].value("meta", nlohmann::json::object()).value("lang", ""), "en");
  const auto again = xcam::test::run_command(cmd);
  EXPECT_NE(again.output.find("done 0, resumed 2"), std::string::npos) << again.output;
}

// A plugin's dataset task through `xcam run` (YAML `task:`): the counting
// task of the VLM plugin forwards each sample without taps, explains its
// answer, writes the maps (as a run writes them), a panel and its JSON, and
// reports accuracy against the manifest's "count".
TEST(Task, CountingRunThroughTheHost) {
  xcam::test::TempDir tmp("vlm_task");
  xcam::Explainer ex(vlm_options("scripted"));
  // The answers the model gives, to make one sample right and one wrong.
  ex.explain(std::vector<xcam::SampleInput>{vlm_sample("wide", xcam::load_rgb(zoo("vlm_wide.png")))});
  auto o = vlm_options("scripted");
  o.targets = {"top1"};
  xcam::Explainer top(o);
  const auto wide = top.explain(std::vector<xcam::SampleInput>{vlm_sample("wide", xcam::load_rgb(zoo("vlm_wide.png")))});
  const auto tall = top.explain(std::vector<xcam::SampleInput>{vlm_sample("tall", xcam::load_rgb(zoo("vlm_tall.png")))});
  const std::string prompt = "\"text\": \"how many circles are there ?\"";
  std::ofstream(tmp / "m.jsonl") << "{\"image\": \"" << zoo("vlm_wide.png") << "\", \"id\": \"wide\", " << prompt
                                 << ", \"count\": \"" << wide.at(0).target_label << "\"}\n"
                                 << "{\"image\": \"" << zoo("vlm_tall.png") << "\", \"id\": \"tall\", " << prompt
                                 << ", \"count\": \"not-" << tall.at(0).target_label << "\"}\n";
  std::ofstream(tmp / "run.yaml") << "name: count\nmodel: " << zoo("vlm_scripted.pt") << "\nplugin: " << plugin("vlm")
                                  << "\nplugin_options: {vocab: " << zoo("vlm_vocab.txt")
                                  << "}\nlayers: [blocks.0]\nmethods: [gradcam]\ninputs: {manifest: m.jsonl}\n"
                                  << "outputs: {dir: out}\ntask: {name: count}\n";
  const auto r = xcam::test::run_command(xcam::test::xcam_cmd() + "run " + (tmp / "run.yaml"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("accuracy: 0.5"), std::string::npos) << r.output;
  const auto dir = std::filesystem::path(tmp / "out") / "gradcam" / "blocks.0";
  const auto task = read_json(dir / "task.json");
  EXPECT_EQ(task["task"]["name"], "count");
  EXPECT_DOUBLE_EQ(task["metrics"]["accuracy"].get<double>(), 0.5);
  const auto count = read_json(dir / "count.json");
  ASSERT_EQ(count["samples"].size(), 2u);
  EXPECT_EQ(count["samples"][0]["answer"], wide.at(0).target_label);
  EXPECT_EQ(count["samples"][1]["answer"], tall.at(0).target_label);
  EXPECT_NEAR(count["samples"][1]["score"].get<double>(), tall.at(0).score, 1e-5);
  // The task's maps, written as a run writes them: the tall image's at its own size.
  const auto npy = xcam::read_npy((dir / ("tall_" + tall.at(0).target_label + ".npy")).string());
  EXPECT_EQ(npy.shape, (std::vector<int64_t>{88, 48}));
  const auto full = xcam::map_at_image_size(tall.at(0).map, tall.at(0).height, tall.at(0).width,
                                            xcam::load_rgb(zoo("vlm_tall.png")));
  EXPECT_LT(xcam::test::max_abs_diff(npy.f32, full, 0), 1e-6);
  EXPECT_TRUE(std::filesystem::exists(dir / "count_tall.png"));
  EXPECT_TRUE(std::filesystem::exists(dir / ".items" / "tall.json"));
}

// A task the plugin does not know is refused with the plugin's reason.
TEST(Task, UnknownTaskIsOneLineError) {
  xcam::test::TempDir tmp("vlm_task_bad");
  std::ofstream(tmp / "m.jsonl") << "{\"image\": \"" << zoo("vlm_wide.png") << "\", \"text\": \"how many circles\"}\n";
  std::ofstream(tmp / "run.yaml") << "model: " << zoo("vlm_scripted.pt") << "\nplugin: " << plugin("vlm")
                                  << "\nplugin_options: {vocab: " << zoo("vlm_vocab.txt")
                                  << "}\nlayers: [blocks.0]\ninputs: {manifest: m.jsonl}\noutputs: {dir: out}\n"
                                  << "task: {name: retrieval}\n";
  const auto r = xcam::test::run_command(xcam::test::xcam_cmd() + "run " + (tmp / "run.yaml"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("\nxcam: error: vlm test plugin: unknown task 'retrieval'; it knows 'count'\n"),
            std::string::npos)
      << r.output;
}

}  // namespace

namespace {

// Crops at their own size: cut from the original image, each sized by the
// plugin as an image of its own (a 48 x 40 half of the wide image gets a
// 6 x 5 grid), explained for the whole image's target, and pasted back:
// the map is the crops' maps side by side, min-max normalised.
TEST(ImagePromptDecoder, OwnSizeCropsPasteBack) {
  const auto wide = xcam::load_rgb(zoo("vlm_wide.png"));
  auto o = vlm_options("scripted");
  o.targets = {"top1"};
  o.crops.rows = 1;
  o.crops.cols = 2;
  o.crops.overlap = 0;
  o.crops.own_size = true;
  xcam::Explainer ex(o);
  const auto maps = ex.explain(std::vector<xcam::SampleInput>{vlm_sample("wide", wide)});
  ASSERT_EQ(maps.size(), 1u);
  ASSERT_EQ(maps[0].height, 48);
  ASSERT_EQ(maps[0].width, 80);

  auto plain = vlm_options("scripted");
  plain.targets = {maps[0].target_label};
  xcam::Explainer alone(plain);
  std::vector<float> expect(48 * 80);
  for (int c = 0; c < 2; ++c) {
    const auto half = alone.explain(std::vector<xcam::SampleInput>{
        vlm_sample("half", wide(cv::Rect(40 * c, 0, 40, 48)).clone())});
    ASSERT_EQ(half.at(0).width, 40);
    for (int y = 0; y < 48; ++y)
      for (int x = 0; x < 40; ++x) expect[y * 80 + 40 * c + x] = half[0].map[y * 40 + x];
  }
  const auto [lo, hi] = std::minmax_element(expect.begin(), expect.end());
  const float l = *lo, h = *hi;
  for (auto& v : expect) v = (v - l) / (h - l);
  EXPECT_LT(xcam::test::max_abs_diff(maps[0].map, expect, 0), 1e-5);
  // Not the whole image's own map.
  xcam::Explainer whole(plain);
  EXPECT_GT(xcam::test::max_abs_diff(maps[0].map,
                                     whole.explain(std::vector<xcam::SampleInput>{vlm_sample("wide", wide)})[0].map, 0),
            0.1);
}

}  // namespace

namespace {

// `xcam layers` feeds a text model through its plugin, a sentence and no image.
TEST(TextOnly, LayersListsTheTextModel) {
  const std::string base = xcam::test::xcam_cmd() + "layers " + zoo("textcls_scripted.pt") + " --plugin " +
                           plugin("text") + " --plugin-options '{\"vocab\": \"" + zoo("textcls_vocab.txt") + "\"}'";
  const auto r = xcam::test::run_command(base + " --text 'the movie was great' --text-only");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("(input from plugin"), std::string::npos) << r.output;
  // <cls> and four words: 1 x 5 x 32 out of the block.
  const auto row = r.output.find("\nblocks.0 ");
  ASSERT_NE(row, std::string::npos) << r.output;
  EXPECT_NE(r.output.substr(row, r.output.find('\n', row + 1) - row).find("[1, 5, 32]"), std::string::npos)
      << r.output;
  // Without the text, the plugin says what it misses.
  xcam::test::expect_one_line_error(xcam::test::run_command(base + " --text-only"),
                                    "give --plugin, and --text with --text-only");
}

}  // namespace

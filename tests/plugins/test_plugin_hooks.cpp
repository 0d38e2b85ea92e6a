// The ABI 2 hooks through the Explainer, with a real plugin built as ABI 2.0
// and as 2.1 (tests/plugins/classifier_plugin.cpp) on the shapes CNN:
// aliases resolve to taps, metadata() is called on the 2.1 build only,
// targets keep their payload, and the perturbation paths (Score-CAM,
// Ablation-CAM, faithfulness) carry each sample's own state, so a batch gives
// what each sample gives alone.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>

#include "../common.h"
#include "../unit/explain_util.h"
#include "xcam/explainer.h"
#include "xcam/image.h"
#include "xcam/io.h"
#include "xcam/render.h"

#include <opencv2/imgproc.hpp>

namespace {

std::string plugin(const std::string& build) {
  return std::string(XCAM_FAKE_PLUGIN_DIR) + "/" + build + "/libxcam_plugin_classifier.so";
}

xcam::ExplainerOptions options(const std::string& build, const std::string& method = "gradcam") {
  xcam::ExplainerOptions o;
  o.model = xcam::test::source("zoo/models/shapes_cnn_traced.pt");
  o.plugin = plugin(build);
  o.layers = {"last"};
  o.method = method;
  return o;
}

std::vector<float> inputs(int64_t B) {
  const auto x = xcam::test::golden("shapes_input");
  return std::vector<float>(x.f32.begin(), x.f32.begin() + B * 3 * 128 * 128);
}

// input_size() came with ABI 2.2: the 2.2 build's 96 x 96 is used, the same
// override in the 2.0 and 2.1 builds is never called (their maps stay at the
// preprocess() size, 128 x 128).
TEST(PluginHooks, InputSizeOnlyFor22) {
  for (const auto& [build, size] : std::vector<std::pair<std::string, int>>{{"classifier20", 128}, {"classifier21", 128}, {"classifier22", 96}}) {
    xcam::Explainer ex(options(build));
    xcam::SampleInput s;
    s.id = "s0";
    s.image = xcam::load_rgb(xcam::test::source("zoo/data/shapes/val_000.png"));
    const auto maps = ex.explain(std::vector<xcam::SampleInput>{s});
    ASSERT_EQ(maps.size(), 1u) << build;
    EXPECT_EQ(maps[0].height, size) << build;
    EXPECT_EQ(maps[0].width, size) << build;
    // The same map as the 2.1 build's with that size given by the user.
    auto fixed = options("classifier21");
    fixed.height = fixed.width = size;
    xcam::Explainer ref(fixed);
    EXPECT_LT(xcam::test::max_abs_diff(maps[0].map, ref.explain(std::vector<xcam::SampleInput>{s})[0].map, 0), 1e-6)
        << build;
  }
}

TEST(PluginHooks, AliasesPayloadAndMetadataOnlyFor21) {
  for (const std::string build : {"classifier20", "classifier21"}) {
    xcam::Explainer ex(options(build));
    EXPECT_EQ(ex.layers(), std::vector<std::string>{"block4"}) << build;
    const auto maps = ex.explain_preprocessed(inputs(2), 2, {"s0", "s1"});
    ASSERT_EQ(maps.size(), 2u);
    for (const auto& m : maps) {
      EXPECT_EQ(m.target.payload.at("sample"), m.image_id);
      EXPECT_EQ(m.target.explains, "class " + std::to_string(m.target_index) + " of " + m.image_id);
      if (build == "classifier21") {
        EXPECT_EQ(m.meta.at("hook"), "metadata");
        EXPECT_EQ(m.meta.at("top"), std::to_string(m.target_index));
      } else {
        EXPECT_TRUE(m.meta.empty()) << "metadata() of an ABI 2.0 plugin was called";
      }
    }
  }
}

// Sample s1 scores three times its logit; in a batch, Score-CAM's and
// Ablation-CAM's copies of s1 must keep that factor, and the faithfulness
// metrics the target's payload.
TEST(PluginHooks, PerturbationPathsCarryEachSamplesState) {
  for (const std::string method : {"scorecam", "ablationcam"}) {
    xcam::Explainer ex(options("classifier21", method));
    const auto x = inputs(2);
    const auto both = ex.explain_preprocessed(x, 2, {"s0", "s1"}, {{"1"}, {"2"}});
    const std::vector<float> x1(x.begin() + 3 * 128 * 128, x.end());
    const auto alone = ex.explain_preprocessed(x1, 1, {"s1"}, {{"2"}});
    ASSERT_EQ(both.size(), 2u);
    EXPECT_LT(xcam::test::max_abs_diff(both[1].map, alone[0].map, 0), 1e-5) << method;
    const auto f_both = ex.faithfulness(x, 2, {"s0", "s1"}, both);
    const auto f_alone = ex.faithfulness(x1, 1, {"s1"}, alone);
    EXPECT_NEAR(f_both[1].deletion, f_alone[0].deletion, 1e-6) << method;
    EXPECT_NEAR(f_both[1].insertion, f_alone[0].insertion, 1e-6) << method;
  }
}

// `xcam layers --plugin`: the model is fed through the plugin's prepare(),
// at the plugin's size unless --size says otherwise; a plugin that cannot
// build the inputs says why in one line.
TEST(Layers, FedThroughThePlugin) {
  const auto model = xcam::test::source("zoo/models/shapes_cnn_traced.pt");
  const auto l = xcam::test::run_command(xcam::test::xcam_cmd() + "layers " + model + " --plugin " +
                                         plugin("classifier21"));
  ASSERT_EQ(l.status, 0) << l.output;
  EXPECT_NE(l.output.find("input from plugin"), std::string::npos) << l.output;
  EXPECT_NE(l.output.find("[1, 128, 16, 16]"), std::string::npos) << l.output;  // block4 at the plugin's 128 x 128
  const auto siamese = std::string(XCAM_FAKE_PLUGIN_DIR) + "/siamese/libxcam_plugin_siamese.so";
  const auto s = xcam::test::run_command(xcam::test::xcam_cmd() + "layers " +
                                         xcam::test::models("attention/siamese_traced.pt") + " --plugin " + siamese);
  xcam::test::expect_one_line_error(s, "has no reference image");
}

// (c) decode, then one target per generated word, a word repeated: each
// map its own files and record, the repeated word's two maps equal.
TEST(Decode, RepeatedWordsGetTheirOwnFilesAndRecords) {
  xcam::test::TempDir tmp("words");
  const auto r = xcam::test::run_command(
      xcam::test::xcam_cmd() + "explain --plugin " + plugin("classifier21") + " --plugin-options '{\"words\": true}'" +
      " --model " + xcam::test::source("zoo/models/shapes_cnn_traced.pt") + " --layer block3 --out " + (tmp / "o") +
      " " + xcam::test::source("zoo/data/shapes/val_000.png"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(tmp / "o/results.json");
  auto rows = nlohmann::json::parse(in);
  ASSERT_EQ(rows.size(), 3u) << rows.dump(1);
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a["rank"] < b["rank"]; });
  std::set<std::string> files;
  for (const auto& row : rows)
    for (const auto& o : row["outputs"]) files.insert(o.get<std::string>());
  EXPECT_EQ(files.size(), 6u) << rows.dump(1);
  const std::string w0 = rows[0]["target"], w1 = rows[1]["target"];
  EXPECT_EQ(rows[2]["target"], w0);
  EXPECT_NE(w0, w1);
  EXPECT_EQ(rows[0]["outputs"][0], "val_000_" + w0 + "_r0.npy");
  EXPECT_EQ(rows[1]["outputs"][0], "val_000_" + w1 + ".npy");
  EXPECT_EQ(rows[2]["outputs"][0], "val_000_" + w0 + "_r2.npy");
  EXPECT_EQ(rows[0]["meta"]["caption"], w0 + " " + w1 + " " + w0);
  // equal up to float rounding: one from the pass's graph, the other from
  // the copies that the first batch with several targets times
  const auto m0 = xcam::read_npy(tmp / ("o/val_000_" + w0 + "_r0.npy")).f32;
  const auto m2 = xcam::read_npy(tmp / ("o/val_000_" + w0 + "_r2.npy")).f32;
  ASSERT_EQ(m0.size(), m2.size());
  for (size_t i = 0; i < m0.size(); ++i) ASSERT_NEAR(m0[i], m2[i], 1e-5) << i;
  EXPECT_NE(xcam::read_npy(tmp / ("o/val_000_" + w0 + "_r0.npy")).f32,
            xcam::read_npy(tmp / ("o/val_000_" + w1 + ".npy")).f32);
}

// A JSON Lines manifest: a sample with a second named image, a prompt, its
// own targets and metadata reaches prepare() whole; ids name the outputs;
// changing the second image recomputes the sample on a re-run (one sample a
// batch: a resumed batch is redone whole).
TEST(Manifest, SamplesReachThePluginWhole) {
  xcam::test::TempDir tmp("manifest");
  const auto img = [](int i) { return xcam::test::source("zoo/data/shapes/val_00" + std::to_string(i) + ".png"); };
  std::filesystem::copy_file(img(1), tmp / "ref.png");
  std::ofstream(tmp / "m.jsonl") << "{\"image\": \"" << img(0)
                                 << "\", \"images\": {\"reference\": \"ref.png\"}, \"text\": \"a prompt\", "
                                    "\"targets\": [\"2\"], \"split\": \"query\"}\n"
                                 << "\n{\"image\": \"" << img(2) << "\", \"id\": \"second\"}\n";
  const std::string cmd = xcam::test::xcam_cmd() + "explain --plugin " + plugin("classifier21") + " --model " +
                          xcam::test::source("zoo/models/shapes_cnn_traced.pt") + " --layer last --manifest " +
                          (tmp / "m.jsonl") + " --batch 1 --out " + (tmp / "o");
  const auto r = xcam::test::run_command(cmd);
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(tmp / "o/results.json");
  const auto rows = nlohmann::json::parse(in);
  ASSERT_EQ(rows.size(), 2u) << rows.dump(1);
  const auto& q = rows[0]["id"] == "val_000" ? rows[0] : rows[1];
  const auto& s = rows[0]["id"] == "second" ? rows[0] : rows[1];
  EXPECT_EQ(q["target_index"], 2);
  EXPECT_EQ(q["meta"]["images"], "image,reference");
  EXPECT_EQ(q["meta"]["text"], "a prompt");
  EXPECT_EQ(q["meta"]["requests"], "2");
  EXPECT_EQ(q["meta"]["split"], "query");
  EXPECT_TRUE(q["meta"].contains("reference_mean"));
  EXPECT_EQ(s["meta"]["images"], "image");
  EXPECT_EQ(s["meta"]["requests"], "top1");
  EXPECT_EQ(s["outputs"][0].get<std::string>().rfind("second_", 0), 0u) << s.dump();
  const auto same = xcam::test::run_command(cmd);
  EXPECT_NE(same.output.find("done 0, resumed 2"), std::string::npos) << same.output;
  std::filesystem::copy_file(img(3), tmp / "ref.png", std::filesystem::copy_options::overwrite_existing);
  const auto changed = xcam::test::run_command(cmd);
  EXPECT_NE(changed.output.find("done 1, resumed 1"), std::string::npos) << changed.output;
  // A bad line is named.
  std::ofstream(tmp / "bad.jsonl") << "{\"image\": \"" << img(0) << "\"}\n{\"id\": \"nothing\"}\n";
  const auto bad = xcam::test::run_command(xcam::test::xcam_cmd() + "explain --model " +
                                           xcam::test::source("zoo/models/shapes_cnn_traced.pt") + " --manifest " +
                                           (tmp / "bad.jsonl") + " --out " + (tmp / "b"));
  xcam::test::expect_one_line_error(bad, "bad.jsonl:2: no \"image\" (the path of the image maps are drawn on) and no "
                                         "\"text\"");
  // A text-only line is a sample; an image plugin reports it and skips it, the image samples are written.
  std::ofstream(tmp / "text.jsonl") << "{\"image\": \"" << img(0) << "\"}\n{\"text\": \"no image\"}\n";
  const auto text = xcam::test::run_command(xcam::test::xcam_cmd() + "explain --model " +
                                            xcam::test::source("zoo/models/shapes_cnn_traced.pt") + " --manifest " +
                                            (tmp / "text.jsonl") + " --out " + (tmp / "t"));
  EXPECT_EQ(text.status, 1);
  EXPECT_NE(text.output.find("done 1, resumed 0, failed 1"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("skipped text2: sample 'text2' is text only, and plugin 'cnn' cannot take it"),
            std::string::npos)
      << text.output;
}

// (a) siamese similarity: one pass gives the query's map on the query image
// and the reference's map on the reference image, each equal to a float64
// Grad-CAM of the cosine similarity (zoo/attention_models.py).
TEST(Siamese, OnePassMapsBothImagesLikeFloat64) {
  const auto zoo = [](const std::string& f) { return xcam::test::models("attention/" + f); };
  xcam::ExplainerOptions o;
  o.model = zoo("siamese_traced.pt");
  o.plugin = std::string(XCAM_FAKE_PLUGIN_DIR) + "/siamese/libxcam_plugin_siamese.so";
  std::vector<float> traced_query_map;
  for (const std::string variant : {"traced", "scripted"}) {
    o.model = zoo("siamese_" + variant + ".pt");
    xcam::Explainer ex(o);
    xcam::SampleInput s;
    s.id = "q";
    s.image = xcam::load_rgb(zoo("siamese_query.png"));
    s.images["reference"] = xcam::load_rgb(zoo("siamese_reference.png"));
    const auto maps = ex.explain(std::vector<xcam::SampleInput>{s});
    ASSERT_EQ(maps.size(), 2u) << variant;
    EXPECT_EQ(maps[0].on, "image");
    EXPECT_EQ(maps[1].on, "reference");
    const auto& low = ex.last_lowres();
    ASSERT_EQ(low.size(), 2u);
    const auto cq = xcam::read_npy(zoo("siamese_cam_q.npy")), cr = xcam::read_npy(zoo("siamese_cam_r.npy"));
    EXPECT_LT(xcam::test::max_abs_diff(low[0].per_rank[0], cq.f32, 0), 1e-5) << variant;
    EXPECT_LT(xcam::test::max_abs_diff(low[1].per_rank[0], cr.f32, 0), 1e-5) << variant;
    EXPECT_GT(xcam::test::max_abs_diff(low[0].per_rank[0], low[1].per_rank[0], 0), 0.1);
    if (variant == "traced") traced_query_map = maps[0].map;
  }
  // Through the writer: the reference's map is a file of its own, at the
  // reference image's size.
  xcam::test::TempDir tmp("siamese");
  cv::Mat big;
  cv::resize(xcam::load_rgb(zoo("siamese_reference.png")), big, cv::Size(48, 40));
  xcam::write_png(tmp / "ref.png", big);
  std::ofstream(tmp / "m.jsonl") << "{\"image\": \"" << zoo("siamese_query.png")
                                 << "\", \"id\": \"q\", \"images\": {\"reference\": \"ref.png\"}}\n"
                                 << "{\"image\": \"" << zoo("siamese_query.png") << "\", \"id\": \"q2\", "
                                 << "\"images\": {\"reference\": \"" << zoo("siamese_reference.png") << "\"}}\n";
  const auto r = xcam::test::run_command(xcam::test::xcam_cmd() + "explain --plugin " + o.plugin + " --model " +
                                         zoo("siamese_traced.pt") + " --manifest " + (tmp / "m.jsonl") +
                                         " --out " + (tmp / "o"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto ref_map = xcam::read_npy(tmp / "o/q_reference_similarity.npy");
  EXPECT_EQ(ref_map.shape, (std::vector<int64_t>{40, 48}));
  EXPECT_EQ(xcam::read_npy(tmp / "o/q_similarity.npy").shape, (std::vector<int64_t>{32, 32}));
  // q2 is the pair explained above: the writer's file holds the same map, to
  // float32 rounding (another process, and q2 runs second in its batch:
  // 1.2e-6 has been seen).
  EXPECT_LT(xcam::test::max_abs_diff(xcam::read_npy(tmp / "o/q2_similarity.npy").f32, traced_query_map, 0), 1e-5);
  // The reference's map is in [0, 1] with its peak and floor kept after resizing.
  const auto [lo, hi] = std::minmax_element(ref_map.f32.begin(), ref_map.f32.end());
  EXPECT_LT(*lo, 0.05f);
  EXPECT_GT(*hi, 0.9f);
}

// (f) Score-CAM and the faithfulness metrics with the siamese plugin: the
// perturbed copies of each sample keep its own reference, so a batch of two
// samples gives what each gives alone.
TEST(Siamese, PerturbationPathsEqualEachSampleAlone) {
  const auto zoo = [](const std::string& f) { return xcam::test::models("attention/" + f); };
  xcam::ExplainerOptions o;
  o.model = zoo("siamese_traced.pt");
  o.plugin = std::string(XCAM_FAKE_PLUGIN_DIR) + "/siamese/libxcam_plugin_siamese.so";
  o.layers = {"query"};
  o.score_chunk = 8;
  const auto q = xcam::load_rgb(zoo("siamese_query.png")), r = xcam::load_rgb(zoo("siamese_reference.png"));
  std::vector<xcam::SampleInput> two(2);
  two[0].id = "a";
  two[0].image = q;
  two[0].images["reference"] = r;
  two[1].id = "b";
  two[1].image = r;
  two[1].images["reference"] = q;
  for (const std::string method : {"scorecam", "ablationcam"}) {
    o.method = method;
    xcam::Explainer ex(o);
    const auto both = ex.explain(two);
    ASSERT_EQ(both.size(), 2u);
    const auto f_both = ex.faithfulness(two, both);
    for (size_t i = 0; i < 2; ++i) {
      const std::vector<xcam::SampleInput> one{two[i]};
      const auto alone = ex.explain(one);
      EXPECT_LT(xcam::test::max_abs_diff(both[i].map, alone[0].map, 0), 1e-5) << method << " sample " << i;
      // The same map scored alone (maps from a batch and alone differ by
      // ~1e-6, enough to reorder near-equal pixels of the deletion curve).
      const auto f_alone = ex.faithfulness(one, {both[i]});
      EXPECT_NEAR(f_both[i].deletion, f_alone[0].deletion, 1e-6) << method;
      EXPECT_NEAR(f_both[i].insertion, f_alone[0].insertion, 1e-6) << method;
      EXPECT_NEAR(f_both[i].base, both[i].score, 1e-5) << "faithfulness scores the sample with its own reference";
    }
    EXPECT_GT(xcam::test::max_abs_diff(both[0].map, both[1].map, 0), 0.05);
  }
}

}  // namespace

// The captioner plugin (plugins/captioner) on the zoo's CNN-LSTM model and
// its committed held-out scenes (zoo/data/captioner), against
// zoo/captioner_fixtures.py's references: captions (greedy and beam, through
// the generation methods and through forward alone), every word's map from
// one pass equal to float64 Grad-CAM, BLEU-4 against a float64 reference, and
// the word grounding of the captions task.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "../common.h"
#include "../unit/explain_util.h"
#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/image.h"

namespace fs = std::filesystem;

namespace {

std::string fixture(const std::string& f) { return xcam::test::models("captioner/" + f); }
std::string data(const std::string& f) { return xcam::test::source("zoo/data/captioner/" + f); }
std::string plugin() { return xcam::test::binary("plugins/captioner/libxcam_plugin_captioner.so"); }
std::string zoo_model(const std::string& kind = "scripted") {
  return xcam::test::source("zoo/models/captioner_" + kind + ".pt");
}

const nlohmann::json& reference() {
  static const nlohmann::json ref = nlohmann::json::parse(std::ifstream(fixture("reference.json")));
  return ref;
}

xcam::ExplainerOptions options(const std::string& model = zoo_model(), const nlohmann::json& plugin_options = {}) {
  xcam::ExplainerOptions o;
  o.model = model;
  o.plugin = plugin();
  o.plugin_options = plugin_options.is_null() ? "{}" : plugin_options.dump();
  o.height = 128;
  o.width = 128;
  return o;
}

std::vector<cv::Mat> scenes(size_t n, std::vector<std::string>& ids) {
  std::vector<cv::Mat> out;
  ids.clear();
  for (size_t k = 0; k < n; ++k) {
    ids.push_back(reference().at("images").at(k).get<std::string>());
    out.push_back(xcam::load_rgb(data("images/" + ids.back() + ".png")));
  }
  return out;
}

// The caption each image's maps were made for (its records' meta).
std::map<std::string, std::string> captions_of(const std::vector<xcam::MapResult>& maps) {
  std::map<std::string, std::string> out;
  for (const auto& m : maps) out[m.image_id] = m.meta.at("caption");
  return out;
}

std::vector<std::string> words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// Corpus BLEU-4 with one reference each, written independently of the
// plugin's: n-gram counts as sorted lists, clipped by merging.
long double bleu4_reference(const std::vector<std::vector<std::string>>& hyp,
                            const std::vector<std::vector<std::string>>& ref) {
  long double match[4] = {0, 0, 0, 0}, total[4] = {0, 0, 0, 0}, c = 0, r = 0;
  for (size_t i = 0; i < hyp.size(); ++i) {
    c += hyp[i].size();
    r += ref[i].size();
    for (size_t n = 1; n <= 4; ++n) {
      auto grams = [n](const std::vector<std::string>& s) {
        std::vector<std::string> g;
        for (size_t k = 0; k + n <= s.size(); ++k) {
          std::string joined;
          for (size_t j = k; j < k + n; ++j) joined += s[j] + "\x1f";
          g.push_back(joined);
        }
        std::sort(g.begin(), g.end());
        return g;
      };
      const auto h = grams(hyp[i]), rf = grams(ref[i]);
      std::vector<std::string> common;
      std::set_intersection(h.begin(), h.end(), rf.begin(), rf.end(), std::back_inserter(common));
      match[n - 1] += common.size();
      total[n - 1] += h.size();
    }
  }
  long double log_sum = 0;
  for (int n = 0; n < 4; ++n) {
    if (match[n] == 0) return 0;
    log_sum += std::log(match[n] / total[n]);
  }
  const long double bp = c > r ? 1.0L : std::exp(1.0L - r / c);
  return bp * std::exp(log_sum / 4);
}

}  // namespace

// Greedy and beam captions equal the reference decoder's on the scripted and
// the traced model (the traced one at its trace length, pad_to 16), and
// through forward alone when the model has no generation methods.
TEST(Captioner, CaptionsEqualTheReferenceDecoder) {
  std::vector<std::string> ids;
  const auto images = scenes(24, ids);
  const std::vector<std::vector<std::string>> first(ids.size(), {"first"});
  const auto& ref = reference();
  struct Case {
    std::string model;
    nlohmann::json opts;
    const char* key;
  };
  const std::vector<Case> cases{{zoo_model(), {}, "greedy"},
                                {zoo_model("traced"), {{"pad_to", 16}}, "greedy"},
                                {fixture("captioner_forward_only.pt"), {}, "greedy"},
                                {zoo_model(), {{"beam", 3}}, "beam3"},
                                {fixture("captioner_forward_only.pt"), {{"beam", 3}}, "beam3"}};
  for (const auto& c : cases) {
    xcam::Explainer ex(options(c.model, c.opts));
    EXPECT_EQ(ex.layers(), std::vector<std::string>{"encoder.layer3"});
    const auto caps = captions_of(ex.explain(images, ids, first));
    for (const auto& id : ids) EXPECT_EQ(caps.at(id), ref.at(c.key).at(id).get<std::string>()) << c.model << " " << id;
  }
  // Beam search finds captions at least as likely as greedy's, and the float64
  // model decodes as the float32 one on these scenes.
  for (const auto& id : ids) {
    EXPECT_EQ(ref.at("greedy64").at(id), ref.at("greedy").at(id)) << id;
    EXPECT_EQ(ref.at("beam3_64").at(id), ref.at("beam3").at(id)) << id;
  }
}

// Every word's map from one teacher-forced pass equals float64 Grad-CAM of
// that word (logit, log-probability, and with the recurrent state detached);
// the maps of a caption's words differ from each other.
TEST(Captioner, EveryWordsMapFromOnePassEqualsFloat64) {
  std::vector<std::string> ids;
  const auto images = scenes(4, ids);
  const auto& ref = reference().at("maps");
  for (const char* variant : {"logit", "logit_detach", "logprob"}) {
    nlohmann::json opts{{"pad_to", 16}};  // the traced model
    if (std::string(variant) == "logit_detach") opts["detach_state"] = true;
    if (std::string(variant) == "logprob") opts["score"] = "logprob";
    xcam::Explainer ex(options(zoo_model("traced"), opts));
    const auto maps = ex.explain(images, ids);
    const auto& low = ex.last_lowres().at(0);
    ASSERT_EQ(low.height, 8);
    ASSERT_EQ(low.width, 8);
    for (size_t b = 0; b < ids.size(); ++b) {
      const auto& r = ref.at(ids[b]);
      const auto expected_words = r.at("words").get<std::vector<std::string>>();
      std::vector<const xcam::MapResult*> mine;
      for (const auto& m : maps)
        if (m.image_id == ids[b]) mine.push_back(&m);
      ASSERT_EQ(mine.size(), expected_words.size()) << ids[b];
      for (size_t k = 0; k < mine.size(); ++k) {
        EXPECT_EQ(mine[k]->target_label, expected_words[k]);
        EXPECT_EQ(mine[k]->target.step, static_cast<int64_t>(k));
        const auto& rank = low.per_rank.at(mine[k]->rank);
        const std::vector<float> got(rank.begin() + static_cast<std::ptrdiff_t>(b * 64),
                                     rank.begin() + static_cast<std::ptrdiff_t>((b + 1) * 64));
        const auto want = r.at(variant).at(k).get<std::vector<float>>();
        EXPECT_LT(xcam::test::max_abs_diff(got, want, 0), 1e-4) << variant << " " << ids[b] << " word " << k;
      }
      // The colour and the shape of the first object against those of the
      // second: different maps (not one map for every word).
      EXPECT_GT(xcam::test::max_abs_diff(mine[1]->map, mine[6]->map, 0), 0.3) << variant << " " << ids[b];
    }
  }
}

// The captions task: exact match and BLEU-4 equal to an independent
// long-double BLEU over the captions it wrote and to the fixture's float64
// figure; the grounding of colour and shape words by the pointing game
// reaches 0.8, above the centre and above the first word's map for every word.
TEST(Captioner, CaptionsTaskScoresCaptionsAndGrounding) {
  xcam::test::TempDir tmp("captioner_task");
  const std::string yaml = tmp / "captions.yaml";
  std::ofstream(yaml) << "name: captions\nmodel: " << zoo_model() << "\nplugin: " << plugin()
                      << "\npreprocess:\n  size: [128, 128]\nlayers: encoder\nmethods: [gradcam]\ninputs:\n  manifest: " << data("manifest.jsonl")
                      << "\ntask:\n  name: captions\n  show: 2\n  words: 4\nthreads: 2\noutputs:\n  dir: "
                      << (tmp / "out") << "\n";
  const auto r = xcam::test::run_command(xcam::test::xcam_cmd() + "run " + yaml);
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string dir = tmp / "out/gradcam/encoder.layer3";
  const auto metrics = nlohmann::json::parse(std::ifstream(dir + "/task.json")).at("metrics");
  const auto doc = nlohmann::json::parse(std::ifstream(dir + "/captions.json")).at("captions");
  ASSERT_EQ(doc.size(), reference().at("images").size());
  std::vector<std::vector<std::string>> hyp, refs;
  size_t exact = 0;
  for (const auto& c : doc) {
    EXPECT_EQ(c.at("caption"), reference().at("greedy").at(c.at("id").get<std::string>())) << c.at("id");
    hyp.push_back(words(c.at("caption")));
    refs.push_back(words(c.at("reference")));
    exact += hyp.back() == refs.back();
  }
  EXPECT_NEAR(metrics.at("bleu4").get<double>(), static_cast<double>(bleu4_reference(hyp, refs)), 1e-12);
  EXPECT_NEAR(metrics.at("bleu4").get<double>(), reference().at("bleu4").get<double>(), 1e-12);
  EXPECT_NEAR(metrics.at("exact_match").get<double>(), static_cast<double>(exact) / doc.size(), 1e-12);
  EXPECT_GT(metrics.at("bleu4").get<double>(), 0.8);
  EXPECT_GE(metrics.at("pointing").get<double>(), 0.8);
  EXPECT_GT(metrics.at("pointing").get<double>(), metrics.at("pointing_centre").get<double>() + 0.3);
  EXPECT_GT(metrics.at("pointing").get<double>(), metrics.at("pointing_first_word").get<double>() + 0.2);

  // Per-word records: probability, peak, and the energy in each object's box.
  const auto& w = doc.at(0).at("words").at(1);
  EXPECT_GT(w.at("probability").get<double>(), 0.5);
  std::string first_line;
  std::getline(std::ifstream(data("manifest.jsonl")) >> std::ws, first_line);
  EXPECT_EQ(w.at("box_energy").size(), nlohmann::json::parse(first_line).at("boxes").size());
  // Panels for the first two captions only; maps for every word.
  const std::string id0 = doc.at(0).at("id"), id2 = doc.at(2).at("id");
  EXPECT_TRUE(fs::exists(dir + "/" + id0 + "_words.png"));
  EXPECT_FALSE(fs::exists(dir + "/" + id2 + "_words.png"));
  EXPECT_GE(xcam::load_rgb(dir + "/" + id0 + "_words.png").cols, 5 * 128);  // the image and 4 words
  size_t npy = 0;
  for (const auto& e : fs::directory_iterator(dir))
    npy += e.path().extension() == ".npy" && e.path().filename().string().rfind(id2 + "_", 0) == 0;
  EXPECT_EQ(npy, words(doc.at(2).at("caption")).size());
}

// The keywords task finds the captions with each keyword (as the references
// captions say), explains the keyword in them, and tabulates it.
TEST(Captioner, KeywordsTaskFindsTheCaptionsAndGroundsTheWord) {
  xcam::test::TempDir tmp("captioner_kw");
  const auto r = xcam::test::run_command(
      xcam::test::xcam_cmd() + "explain --plugin " + plugin() + " --model " + zoo_model() + " --size 128 128 --out " +
      (tmp / "o") + " --manifest " + data("manifest.jsonl") +
      " --task '{\"name\": \"keywords\", \"keywords\": [\"circle\", \"red\", \"dog\"], \"show\": 3}'");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto table = nlohmann::json::parse(std::ifstream(tmp / "o/keywords.json")).at("keywords");
  ASSERT_EQ(table.size(), 3u);
  for (const auto& row : table) {
    const std::string kw = row.at("keyword");
    size_t expected = 0;
    for (const auto& [id, cap] : reference().at("greedy").items()) {
      const auto ws = words(cap.get<std::string>());
      expected += std::find(ws.begin(), ws.end(), kw) != ws.end();
    }
    EXPECT_EQ(row.at("count").get<size_t>(), expected) << kw;
    EXPECT_EQ(row.at("images").size(), expected) << kw;
    if (expected == 0) {
      EXPECT_FALSE(row.contains("pointing"));
      EXPECT_FALSE(fs::exists(tmp / ("o/keyword_" + kw + ".png")));
      continue;
    }
    EXPECT_GT(expected, 10u) << kw;
    // Grad-CAM grounds colour words best (docs/captioner.md): red at 0.8 or
    // more; every keyword well above the image centre.
    if (kw == "red") {
      EXPECT_GE(row.at("pointing").get<double>(), 0.8);
    }
    EXPECT_GT(row.at("pointing").get<double>(), row.at("pointing_centre").get<double>() + 0.2) << kw;
    EXPECT_GT(row.at("mean_probability").get<double>(), 0.5) << kw;
    EXPECT_TRUE(fs::exists(tmp / ("o/keyword_" + kw + ".png")));
  }
  std::ifstream csv(tmp / "o/keywords.csv");
  std::string header, line;
  std::getline(csv, header);
  EXPECT_EQ(header, "keyword,count,mean_probability,pointing,pointing_centre,with_boxes");
  std::getline(csv, line);
  EXPECT_EQ(line.rfind("circle," + std::to_string(table.at(0).at("count").get<size_t>()) + ",", 0), 0u) << line;
}

// A given caption is explained as given (no decoding), word by word.
TEST(Captioner, GivenCaptionAndSingleWordTargets) {
  xcam::Explainer ex(options());
  xcam::SampleInput s;
  s.id = "given";
  s.image = xcam::load_rgb(data("images/scene_000.png"));
  s.text = "a blue square";
  s.requests = {"word:square", "step:0"};
  const auto maps = ex.explain({s});
  ASSERT_EQ(maps.size(), 2u);
  EXPECT_EQ(maps[0].target_label, "square");
  EXPECT_EQ(maps[0].target.step, 2);
  EXPECT_EQ(maps[1].target_label, "a");
  EXPECT_EQ(maps[0].meta.at("decoding"), "given");
  EXPECT_EQ(maps[0].meta.at("caption"), "a blue square");
}

// Bad input: what is wrong and what to do.
TEST(Captioner, ErrorsNameTheInputAndTheFix) {
  std::vector<std::string> ids;
  const auto images = scenes(2, ids);
  auto error_of = [&](const xcam::ExplainerOptions& o, const std::vector<std::vector<std::string>>& req = {}) {
    try {
      xcam::Explainer ex(o);
      ex.explain(images, ids, req);
    } catch (const xcam::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // The traced model is unrolled for 16 tokens.
  EXPECT_NE(error_of(options(zoo_model("traced"))).find("set the plugin option pad_to"), std::string::npos);
  EXPECT_NE(error_of(options(zoo_model()), {{"dog"}, {"dog"}}).find("target 'dog' is not a word of its caption"),
            std::string::npos);
  EXPECT_NE(error_of(options(zoo_model()), {{"step:40"}, {"step:40"}}).find("has steps 0 to"), std::string::npos);
  EXPECT_NE(error_of(options(fixture("captioner_two_inputs.pt"), {{"detach_state", true}}))
                .find("export it with a third input detach_state"),
            std::string::npos);
  EXPECT_NE(error_of(options(zoo_model(), {{"vocab", "/nonexistent/vocab.txt"}})).find("cannot be read"),
            std::string::npos);
  EXPECT_NE(error_of(options(zoo_model(), {{"vocab", {"a", "b"}}})).find("'<start>' is not in the vocabulary (2 tokens"),
            std::string::npos);
  EXPECT_NE(error_of(options(zoo_model(), {{"beams", 3}})).find("has no option 'beams'"), std::string::npos);
  auto bad_layer = options();
  bad_layer.layers = {"bridge.project"};
  EXPECT_NE(error_of(bad_layer).find("have no positions on the image"), std::string::npos);
}

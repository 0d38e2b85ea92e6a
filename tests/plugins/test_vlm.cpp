// The vlm plugin (plugins/vlm) on the zoo's traced Qwen2-VL counter
// (zoo/models/vlm/qwen2_vl_count_traced.pt): the model's inputs against
// zoo/models/vlm/reference_inputs.json, and, on two held-out scenes whose
// grids (12 x 20, 18 x 14) the trace (16 x 16) never saw, the greedy answers
// and the Grad-CAM maps at a vision block and at a middle decoder layer's
// image tokens against zoo/vlm_fixtures.py's eager transformers model in
// float64; the refusals (no question, a float16 model, no tokenizer, the
// last decoder layer).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <iostream>
#include <map>

#include "../../plugins/vlm/vlm.h"
#include "../common.h"
#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/image.h"
#include "xcam/tokenizer.h"

namespace {

std::string src(const std::string& f) { return xcam::test::source(f); }
std::string plugin() { return xcam::test::binary("plugins/vlm/libxcam_plugin_vlm.so"); }
const std::string kModel = "zoo/models/vlm/qwen2_vl_count_traced.pt";
const std::string kTokenizer = "zoo/models/tokenizers/qwen2/tokenizer.json";

const nlohmann::json& inputs_ref() {
  static const nlohmann::json j = nlohmann::json::parse(std::ifstream(src("zoo/models/vlm/reference_inputs.json")));
  return j;
}
const nlohmann::json& eager_ref() {
  static const nlohmann::json j = nlohmann::json::parse(std::ifstream(xcam::test::models("vlm/reference.json")));
  return j;
}
const xcam::Tokenizer& tokenizer() {
  static const auto tok = xcam::Tokenizer::from_file(src(kTokenizer));
  return tok;
}

// The zoo model's geometry (zoo/models/vlm/vlm.json).
xcam::vlm::Geometry zoo_geometry() {
  xcam::vlm::Geometry g;
  const auto& r = inputs_ref();
  g.patch = r.at("patch");
  g.merge = r.at("merge");
  g.temporal = r.at("temporal_patch");
  g.min_pixels = r.at("min_pixels");
  g.max_pixels = r.at("max_pixels");
  g.vision_head_dim = r.at("vision_head_dim");
  g.image_token = r.at("image_token_id");
  return g;
}

xcam::ExplainerOptions options(const std::vector<std::string>& layers = {}, const std::string& model = src(kModel),
                               nlohmann::json plugin_options = {{"tokenizer", src(kTokenizer)}}) {
  xcam::ExplainerOptions o;
  o.model = model;
  o.plugin = plugin();
  o.plugin_options = plugin_options.dump();
  o.layers = layers;
  return o;
}

std::vector<xcam::SampleInput> scenes() {
  std::vector<xcam::SampleInput> out;
  for (const auto& s : eager_ref().at("samples")) {
    xcam::SampleInput in;
    in.id = s.at("id");
    in.image = xcam::load_rgb(src("zoo/data/vlm/" + s.at("image").get<std::string>()));
    in.text = s.at("question");
    out.push_back(in);
  }
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

// Sizes, prompt ids, 3-axis position ids, vision rotary angles and cu_seqlens
// of the three small images of reference_inputs.json; its resize cases.
TEST(VlmInputs, EqualReferenceInputs) {
  const auto g = zoo_geometry();
  for (const auto& c : inputs_ref().at("resize_cases")) {
    const auto s = xcam::vlm::resized_size(c.at("in")[0], c.at("in")[1], g);
    EXPECT_EQ(s[0], c.at("out")[0].get<int64_t>()) << c.dump();
    EXPECT_EQ(s[1], c.at("out")[1].get<int64_t>()) << c.dump();
  }
  EXPECT_THROW(xcam::vlm::resized_size(15, 100, g), xcam::Error);
  EXPECT_THROW(xcam::vlm::resized_size(16, 3300, g), xcam::Error);
  const auto question = "how many red circles?";
  for (const auto& c : inputs_ref().at("cases")) {
    const auto rs = xcam::vlm::resized_size(c.at("image_size")[0], c.at("image_size")[1], g);
    EXPECT_EQ(nlohmann::json(rs), c.at("resized"));
    const int64_t gh = rs[0] / g.patch, gw = rs[1] / g.patch;
    EXPECT_EQ(nlohmann::json({1, gh, gw}), c.at("grid_thw"));
    const auto ids = xcam::vlm::prompt_ids(tokenizer(), gh * gw / 4, question);
    EXPECT_EQ(nlohmann::json(ids), c.at("input_ids"));
    const auto pos = xcam::vlm::rope_position_ids(ids, gh, gw, g);
    const auto T = static_cast<int64_t>(ids.size());
    for (int64_t a = 0; a < 3; ++a)
      EXPECT_EQ(nlohmann::json(std::vector<int64_t>(pos.begin() + a * T, pos.begin() + (a + 1) * T)),
                c.at("position_ids")[a]);
    const auto rot = xcam::vlm::vision_rotary(gh, gw, g);
    const auto& want = c.at("vision_rotary");
    ASSERT_EQ(rot.size(0), static_cast<int64_t>(want.size()));
    ASSERT_EQ(rot.size(1), 8);
    for (int64_t i = 0; i < rot.size(0); ++i)
      for (int64_t j = 0; j < 8; ++j)  // the file rounds to 6 decimals
        EXPECT_NEAR(rot[i][j].item<float>(), want[i][j].get<double>(), 5.01e-7) << i << " " << j;
    EXPECT_EQ(nlohmann::json(std::vector<int64_t>{0, gh * gw}), c.at("cu_seqlens"));
    const auto cu = xcam::vlm::cu_seqlens(gh, gw);
    EXPECT_EQ(cu[1].item<int64_t>(), gh * gw);
  }
}

// On the held-out grids: the prompt and the position ids of prompt + answer
// equal transformers' (through the fixture), the rotary angles bit for bit.
TEST(VlmInputs, UnseenGridsEqualTheFixtureExactly) {
  const auto g = zoo_geometry();
  for (const auto& s : eager_ref().at("samples")) {
    const int64_t gh = s.at("grid")[0], gw = s.at("grid")[1];
    auto ids = xcam::vlm::prompt_ids(tokenizer(), gh * gw / 4, s.at("question"));
    EXPECT_EQ(nlohmann::json(ids), s.at("prompt_ids"));
    for (const auto& t : s.at("answer_ids")) ids.push_back(t);
    const auto pos = xcam::vlm::rope_position_ids(ids, gh, gw, g);
    const auto T = static_cast<int64_t>(ids.size());
    for (int64_t a = 0; a < 3; ++a)
      EXPECT_EQ(nlohmann::json(std::vector<int64_t>(pos.begin() + a * T, pos.begin() + (a + 1) * T)),
                s.at("position_ids")[a]);
    const auto rot = xcam::vlm::vision_rotary(gh, gw, g).contiguous();
    const auto& want = s.at("vision_rotary");
    ASSERT_EQ(rot.numel(), static_cast<int64_t>(want.size()));
    int64_t differ = 0;
    for (int64_t i = 0; i < rot.numel(); ++i) differ += rot.data_ptr<float>()[i] != want[i].get<float>();
    EXPECT_EQ(differ, 0) << s.at("id");
  }
}

// Patch rows in (bh, bw, mh, mw) order with values in (c, frame, y, x) order,
// and a vision block's rows put back on the patch grid.
TEST(VlmInputs, PatchOrderAndItsInverse) {
  const auto g = zoo_geometry();
  const int64_t H = 48, W = 32, p = g.patch, gh = H / p, gw = W / p;  // 6 x 4 patches
  const auto image = torch::randn({3, H, W});
  const auto pv = xcam::vlm::image_to_patches(image, g);
  ASSERT_EQ(pv.sizes(), (std::vector<int64_t>{gh * gw, 3 * 2 * p * p}));
  int64_t bad = 0;
  for (int64_t bh = 0; bh < gh / 2; ++bh)
    for (int64_t bw = 0; bw < gw / 2; ++bw)
      for (int64_t mh = 0; mh < 2; ++mh)
        for (int64_t mw = 0; mw < 2; ++mw) {
          const int64_t r = ((bh * (gw / 2) + bw) * 2 + mh) * 2 + mw;
          const int64_t row = bh * 2 + mh, col = bw * 2 + mw;
          for (int64_t c = 0; c < 3; ++c)
            for (int64_t f = 0; f < 2; ++f)
              for (int64_t y = 0; y < p; ++y)
                for (int64_t x = 0; x < p; ++x)
                  bad += pv[r][((c * 2 + f) * p + y) * p + x].item<float>() !=
                         image[c][row * p + y][col * p + x].item<float>();
          // The block output of this row (its patch's row and column as channels) lands at (row, col).
        }
  EXPECT_EQ(bad, 0);
  auto tokens = torch::zeros({gh * gw, 2});
  for (int64_t r = 0; r < gh * gw; ++r) {
    const int64_t blk = r / 4, in = r % 4;
    tokens[r][0] = (blk / (gw / 2)) * 2 + in / 2;
    tokens[r][1] = (blk % (gw / 2)) * 2 + in % 2;
  }
  const auto grid = xcam::vlm::patches_to_grid(tokens, gh, gw, 2);
  ASSERT_EQ(grid.sizes(), (std::vector<int64_t>{1, 2, gh, gw}));
  for (int64_t y = 0; y < gh; ++y)
    for (int64_t x = 0; x < gw; ++x) {
      EXPECT_EQ(grid[0][0][y][x].item<float>(), float(y));
      EXPECT_EQ(grid[0][1][y][x].item<float>(), float(x));
    }
}

// Greedy answers equal the eager model's; Grad-CAM of the answer at the last
// vision block and at the middle decoder layer's image tokens equal the
// float64 eager references to 1e-4; the maps come at each image's own size.
TEST(Vlm, AnswersAndMapsEqualEagerFloat64) {
  xcam::Explainer ex(options({"vision_last", "decoder.1"}));
  EXPECT_EQ(ex.layers(), (std::vector<std::string>{"visual.blocks.3", "model.layers.1"}));
  const auto& ref = eager_ref();
  const auto samples = scenes();
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& s = ref.at("samples")[i];
    EXPECT_EQ(s.at("answer_ids"), s.at("answer_ids64"));  // float32 and float64 eager answer alike
    const auto maps = ex.explain({samples[i]});
    ASSERT_EQ(maps.size(), 1u);
    const auto& m = maps[0];
    EXPECT_EQ(m.meta.at("answer"), s.at("answer").get<std::string>()) << s.at("id");
    EXPECT_EQ(m.meta.at("answer_count"), s.at("answer").get<std::string>());
    EXPECT_EQ(m.meta.at("ended"), "true");
    EXPECT_EQ(m.target.tokens, s.at("answer_ids").get<std::vector<int64_t>>());
    EXPECT_NEAR(m.score, std::exp(s.at("logprob").get<double>()), 1e-5);
    EXPECT_NEAR(std::stod(m.meta.at("probability")), std::exp(s.at("logprob").get<double>()), 1e-5);
    EXPECT_EQ(m.height, s.at("size")[0].get<int64_t>());
    EXPECT_EQ(m.width, s.at("size")[1].get<int64_t>());
    const int64_t gh = s.at("grid")[0], gw = s.at("grid")[1];
    const auto& low = ex.last_lowres();
    ASSERT_EQ(low.size(), 2u);
    const std::vector<std::pair<const char*, std::array<int64_t, 2>>> want{{"cam_vision", {gh, gw}},
                                                                           {"cam_decoder", {gh / 2, gw / 2}}};
    for (size_t l = 0; l < 2; ++l) {
      ASSERT_EQ(low[l].height, want[l].second[0]);
      ASSERT_EQ(low[l].width, want[l].second[1]);
      const auto& got = low[l].per_rank.at(0);
      const auto expect = s.at(want[l].first).get<std::vector<double>>();
      ASSERT_EQ(got.size(), expect.size());
      double err = 0, top = 0;
      for (size_t k = 0; k < got.size(); ++k) {
        err = std::max(err, std::abs(double(got[k]) - expect[k]));
        top = std::max(top, expect[k]);
      }
      EXPECT_LT(err, 1e-4) << s.at("id") << " " << want[l].first;
      std::cout << s.at("id").get<std::string>() << " " << want[l].first << " " << low[l].height << "x"
                << low[l].width << ": max |xcam - float64 eager| " << err << "\n";
      EXPECT_GT(top, 0.99);  // not a constant map
    }
  }
}

// The default layer is the last vision block; a given answer (manifest key
// "answer") is explained instead of the generated one, and token:K explains
// one of its tokens.
TEST(Vlm, GivenAnswerAndOneToken) {
  xcam::Explainer ex(options());
  EXPECT_EQ(ex.layers(), std::vector<std::string>{"visual.blocks.3"});
  auto in = scenes().at(1);  // 4 red circles; the model answers 3
  in.meta["answer"] = "4";
  in.requests = {"answer", "token:0", "token:1"};
  const auto maps = ex.explain({in});
  ASSERT_EQ(maps.size(), 3u);
  EXPECT_EQ(maps[0].meta.at("answer"), "4");
  EXPECT_EQ(maps[0].meta.at("decoding"), "given");
  EXPECT_EQ(maps[0].target.tokens.size(), 2u);  // '4' and <|im_end|>
  EXPECT_EQ(maps[1].target.kind, "token");
  // log p(answer) = log p(token 0) + log p(token 1)
  EXPECT_NEAR(std::log(maps[0].score), std::log(maps[1].score) + std::log(maps[2].score), 1e-6);
  EXPECT_NEAR(std::stod(maps[0].meta.at("probability")), maps[0].score, 1e-6);
  EXPECT_LT(maps[0].score, std::exp(eager_ref().at("samples")[1].at("logprob").get<double>()));  // not greedy's
}

// Bad input: one line that says what to do.
TEST(Vlm, RefusesWithOneLineSayingWhatToDo) {
  auto no_text = scenes().at(0);
  no_text.text.clear();
  const auto q = error_of([&] { xcam::Explainer(options()).explain({no_text}); });
  EXPECT_NE(q.find("has no question"), std::string::npos) << q;
  EXPECT_NE(q.find("\"text\""), std::string::npos) << q;

  const auto half = error_of([] { xcam::Explainer ex(options({}, xcam::test::models("vlm/vlm_half.pt"))); });
  EXPECT_NE(half.find("Half"), std::string::npos) << half;
  EXPECT_NE(half.find("export the model in float32"), std::string::npos) << half;

  const auto no_tok = error_of([] { xcam::Explainer ex(options({}, src(kModel), nlohmann::json::object())); });
  EXPECT_NE(no_tok.find("give the plugin option tokenizer"), std::string::npos) << no_tok;
  const auto bad_tok = error_of([] { xcam::Explainer ex(options({}, src(kModel), {{"tokenizer", "/no/such.json"}})); });
  EXPECT_NE(bad_tok.find("/no/such.json"), std::string::npos) << bad_tok;

  const auto last = error_of([] { xcam::Explainer(options({"decoder.2"})).explain({scenes().at(0)}); });
  EXPECT_NE(last.find("last decoder layer"), std::string::npos) << last;
  EXPECT_NE(last.find("exactly zero"), std::string::npos) << last;
  for (const auto* e : {&q, &half, &no_tok, &bad_tok, &last}) EXPECT_EQ(e->find('\n'), std::string::npos) << *e;
}

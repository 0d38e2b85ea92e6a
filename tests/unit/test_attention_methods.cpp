// The attention methods of the registry (SPEC section 6) on the tiny ViTs of
// zoo/attention_models.py, against float64 reimplementations in numpy:
// tap-as-map, attention rollout (mean and max fusion, with a discard ratio)
// and gradient-weighted relevancy, on the token scores and end to end
// through the Explainer (tokens laid on the patch grid, normalised), traced
// and scripted, timm-style and Hugging-Face-style attention. Also: the method
// table of docs/methods.md lists exactly the registry's methods.
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include <fstream>
#include <regex>
#include <set>

#include "../common.h"
#include "explain_util.h"
#include "methods.h"
#include "xcam/error.h"
#include "xcam/io.h"
#include "xcam/model.h"

namespace {

namespace methods = xcam::methods;

std::string zoo(const std::string& name) { return xcam::test::models("attention/" + name); }

at::Tensor npy(const std::string& name) {
  const auto a = xcam::read_npy(zoo(name));
  return torch::from_blob(const_cast<float*>(a.f32.data()), a.shape, torch::kFloat32).clone();
}

double rel_norm(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(torch::kFloat64) - b.to(torch::kFloat64)).norm() / b.to(torch::kFloat64).norm()).item<double>();
}

const std::vector<std::string> kProbs{"encoder.blocks.0.attn/softmax", "encoder.blocks.1.attn/softmax"};

class AttentionMethods : public ::testing::TestWithParam<std::string> {
 protected:
  std::string kind() const { return GetParam().substr(0, GetParam().rfind('_')); }
  std::string model() const { return zoo(GetParam() + ".pt"); }
};

TEST_P(AttentionMethods, TokenScoresEqualFloat64) {
  xcam::Model m = xcam::Model::load(model());
  xcam::TappedForward tf(m, kProbs);
  const auto r = tf.run({npy("taps_input.npy")});
  const auto g = torch::autograd::grad({r.output.toTensor().select(1, 3).sum()}, r.taps);
  const std::vector<at::Tensor> attn{r.taps[0].detach(), r.taps[1].detach()}, grads{g[0], g[1]};
  xcam::AttentionOptions o;
  EXPECT_LT(rel_norm(methods::find("attention").token_map({attn[1]}, {}, o), npy(kind() + "_attention1.npy")), 1e-5);
  EXPECT_LT(rel_norm(methods::find("rollout").token_map(attn, {}, o), npy(kind() + "_rollout.npy")), 1e-5);
  EXPECT_LT(rel_norm(methods::find("relevancy").token_map(attn, grads, o), npy(kind() + "_relevancy.npy")), 1e-5);
  o.head_fusion = "max";
  o.discard_ratio = 0.5;
  EXPECT_LT(rel_norm(methods::find("rollout").token_map(attn, {}, o), npy(kind() + "_rollout_max_d0.5.npy")), 1e-5);
  // query -1: the mean of every query's row (encoders without a CLS token),
  // against the same products written out here in float64.
  xcam::AttentionOptions mean_rows;
  mean_rows.query = -1;
  const auto A0 = attn[0].to(torch::kFloat64).mean(1), A1 = attn[1].to(torch::kFloat64).mean(1);
  const auto eye = torch::eye(A0.size(-1), torch::kFloat64).unsqueeze(0);
  auto step = [&](const at::Tensor& a) {
    const auto t = 0.5 * a + 0.5 * eye;
    return t / t.sum(-1, true);
  };
  const auto roll = at::bmm(step(A1), step(A0)).mean(1);
  auto cam = [&](size_t l) { return (grads[l].to(torch::kFloat64) * attn[l].to(torch::kFloat64)).clamp_min(0).mean(1); };
  auto R = eye.expand_as(A0).clone();
  R = R + at::bmm(cam(0), R);
  R = R + at::bmm(cam(1), R);
  EXPECT_LT(rel_norm(methods::find("attention").token_map({attn[1]}, {}, mean_rows), A1.mean(1)), 1e-6);
  EXPECT_LT(rel_norm(methods::find("rollout").token_map(attn, {}, mean_rows), roll), 1e-6);
  EXPECT_LT(rel_norm(methods::find("relevancy").token_map(attn, grads, mean_rows), R.mean(1)), 1e-6);
}

// Through the Explainer: the low-resolution map is the CLS row's patch
// tokens on the 4 x 4 grid, min-max normalised.
TEST_P(AttentionMethods, ExplainerLaysTokensOnThePatchGrid) {
  const auto x = xcam::read_npy(zoo("taps_input.npy"));
  for (const std::string method : {"rollout", "relevancy", "attention"}) {
    auto o = xcam::test::cnn_options(model(), "", 32, method);
    o.layers = method == "attention" ? std::vector<std::string>{kProbs[1]} : kProbs;
    o.attention.patch_h = o.attention.patch_w = 8;
    xcam::Explainer ex(o);
    const auto maps = ex.explain_preprocessed(x.f32, 2, xcam::test::sample_ids(2), {{"3"}, {"3"}});
    ASSERT_EQ(maps.size(), 2u);
    const auto& low = ex.last_lowres();
    ASSERT_EQ(low.size(), 1u) << method;
    EXPECT_EQ(low[0].height, 4);
    EXPECT_EQ(low[0].width, 4);
    auto ref = npy(kind() + "_" + method + (method == "attention" ? "1" : "") + ".npy").narrow(1, 1, 16);
    const auto lo = std::get<0>(ref.min(1, true)), hi = std::get<0>(ref.max(1, true));
    ref = (ref - lo) / (hi - lo + 1e-7);
    const auto got = torch::from_blob(const_cast<float*>(low[0].per_rank[0].data()), {2, 16}, torch::kFloat32);
    EXPECT_LT((got - ref).abs().max().item<double>(), 1e-5) << method;
    // The full-resolution map peaks inside the patch the grid says.
    for (int b = 0; b < 2; ++b) {
      const auto& map = maps[b].map;
      const auto peak = std::max_element(map.begin(), map.end()) - map.begin();
      const auto cell = ref[b].argmax().item<int64_t>();
      EXPECT_EQ((peak / 32) / 8 * 4 + (peak % 32) / 8, cell) << method << " sample " << b;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, AttentionMethods,
                         ::testing::Values("vit_timm_traced", "vit_timm_scripted", "vit_hf_traced", "vit_hf_scripted"),
                         [](const auto& info) { return info.param; });

std::string error_of(const xcam::ExplainerOptions& o) {
  try {
    xcam::Explainer ex(o);
    const auto x = xcam::read_npy(zoo("taps_input.npy"));
    ex.explain_preprocessed(x.f32, 2, xcam::test::sample_ids(2));
  } catch (const xcam::Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(AttentionMethodErrors, GridAndTapMistakesAreNamed) {
  auto o = xcam::test::cnn_options(zoo("vit_timm_traced.pt"), "", 32, "rollout");
  o.layers = kProbs;
  EXPECT_NE(error_of(o).find("needs the model's patch size: set --patch"), std::string::npos) << error_of(o);
  o.attention.patch_h = o.attention.patch_w = 16;
  EXPECT_NE(error_of(o).find("the attention has 17 tokens; 1 prefix token(s) and a 2 x 2 grid"), std::string::npos)
      << error_of(o);
  // A CAM method on attention probabilities: refused, not taken as a 17 x 17 image.
  auto cam = xcam::test::cnn_options(zoo("vit_timm_scripted.pt"), kProbs[1], 32, "gradcam");
  EXPECT_NE(error_of(cam).find("holds attention probabilities, not feature maps"), std::string::npos)
      << error_of(cam);
  auto mha = xcam::test::cnn_options(zoo("mha_scripted.pt"), "encoder.blocks.1.attn.attn[1]", 32, "scorecam");
  EXPECT_NE(error_of(mha).find("holds attention probabilities"), std::string::npos) << error_of(mha);
  o.attention.patch_h = o.attention.patch_w = 8;
  o.layers = {"encoder.blocks.1.norm1"};
  EXPECT_NE(error_of(o).find("attention methods read attention probabilities B x heads x N x N"), std::string::npos)
      << error_of(o);
}

// docs/methods.md's method table has one row per registry entry, in order.
TEST(MethodRegistry, DocsTableListsEveryMethod) {
  std::ifstream in(xcam::test::source("docs/methods.md"));
  ASSERT_TRUE(in) << "docs/methods.md";
  std::vector<std::string> documented;
  bool in_table = false;
  const std::regex row(R"(^\| (`?)([a-z+\-]+)\1 \|)");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("| method | kind |", 0) == 0) {
      in_table = true;
      continue;
    }
    if (in_table && line.empty()) break;
    std::smatch m;
    if (in_table && std::regex_search(line, m, row)) documented.push_back(m[2]);
  }
  EXPECT_EQ(documented, xcam::available_methods());
}

}  // namespace

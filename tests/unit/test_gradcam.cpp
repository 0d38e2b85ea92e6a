// Grad-CAM end to end through the Explainer (real plugin, real models):
// against a float64 ATen reference computed here from the same taps, and
// against golden maps written by the peer library (tests/data/golden).
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include "../common.h"
#include "explain_util.h"
#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/io.h"
#include "xcam/model.h"

namespace {

using xcam::test::explain_targets;
using xcam::test::sample_ids;

struct Case {
  std::string name, model, layer;
  int64_t size;
  std::string golden;  // prefix in tests/data/golden
  friend std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }
};

std::string model_path(const Case& c) {
  return c.model.rfind("zoo/", 0) == 0 ? xcam::test::source(c.model) : xcam::test::models(c.model);
}

xcam::ExplainerOptions options(const Case& c, std::vector<std::string> layers) {
  xcam::ExplainerOptions o;
  o.model = model_path(c);
  o.plugin = "cnn";
  o.plugin_dirs = {xcam::test::binary("plugins")};
  o.layers = std::move(layers);
  o.height = o.width = c.size;
  return o;
}

at::Tensor to_tensor(const xcam::NpyArray& a) {
  return torch::from_blob(const_cast<float*>(a.f32.data()), a.shape, torch::kFloat32).clone();
}

// Float64 Grad-CAM of SPEC sections 1-2 from activations and gradients.
at::Tensor reference_lowres(const at::Tensor& A, const at::Tensor& g) {
  const auto a = A.to(torch::kDouble), gd = g.to(torch::kDouble);
  auto cam = (gd.mean({2, 3}, true) * a).sum(1).relu();
  const auto lo = std::get<0>(cam.flatten(1).min(1)).view({-1, 1, 1});
  const auto hi = std::get<0>(cam.flatten(1).max(1)).view({-1, 1, 1});
  return (cam - lo) / (hi - lo + 1e-7);
}

// Resize (half-pixel bilinear), then min-max again: interpolation moves the
// extremes of the normalised map, and the final map spans [0, 1] again.
at::Tensor resize(const at::Tensor& maps, int64_t H, int64_t W) {
  const auto r = at::upsample_bilinear2d(maps.unsqueeze(1), {H, W}, false).squeeze(1);
  const auto lo = std::get<0>(r.flatten(1).min(1)).view({-1, 1, 1});
  const auto hi = std::get<0>(r.flatten(1).max(1)).view({-1, 1, 1});
  return (r - lo) / (hi - lo + 1e-7);
}

class GradCam : public ::testing::TestWithParam<Case> {
 protected:
  xcam::NpyArray load(const std::string& suffix) {
    const auto path = xcam::test::data("golden/" + GetParam().golden + "_" + suffix + ".npy");
    return xcam::read_npy(path);
  }
};

TEST_P(GradCam, MatchesFloat64Reference) {
  const Case& c = GetParam();
  const auto input = load("input");
  const auto targets = load("targets");
  const int64_t B = input.shape[0];
  xcam::Explainer ex(options(c, {c.layer}));
  const auto maps = explain_targets(ex, input, targets);
  ASSERT_EQ(static_cast<int64_t>(maps.size()), B);

  // Reference: same taps, float64 math.
  xcam::Model m = xcam::Model::load(model_path(c));
  xcam::TappedForward tf(m, {c.layer});
  const auto x = to_tensor(input);
  const auto r = tf.run({x});
  const auto logits = r.output.toTensor();
  const auto idx = torch::tensor(targets.i64, torch::kLong).unsqueeze(1);
  const auto g = torch::autograd::grad({logits.gather(1, idx).sum()}, {r.taps[0]})[0];
  const auto low_ref = reference_lowres(r.taps[0].detach(), g);
  const auto map_ref = resize(low_ref, c.size, c.size);

  const auto low = torch::from_blob(const_cast<float*>(ex.last_lowres()[0].per_rank[0].data()), low_ref.sizes(),
                                    torch::kFloat32);
  EXPECT_LT((low.to(torch::kDouble) - low_ref).abs().max().item<double>(), 1e-5);
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(maps[b].target_index, targets.i64[b]);
    const auto mb = torch::from_blob(const_cast<float*>(maps[b].map.data()), {c.size, c.size}, torch::kFloat32);
    const double err = (mb.to(torch::kDouble) - map_ref[b]).abs().max().item<double>();
    EXPECT_LT(err, 1e-5) << "sample " << b;
    EXPECT_GT(map_ref[b].max().item<double>(), 0.99);  // not a degenerate map
  }
}

TEST_P(GradCam, MatchesPeerGoldens) {
  const Case& c = GetParam();
  const auto input = load("input");
  const auto targets = load("targets");
  const auto peer_low = load(c.layer + "_lowres");
  const auto peer_map = load(c.layer + "_map");
  const int64_t B = input.shape[0];
  xcam::Explainer ex(options(c, {c.layer}));
  const auto maps = explain_targets(ex, input, targets);
  const auto& low = ex.last_lowres()[0].per_rank[0];
  ASSERT_EQ(low.size(), peer_low.f32.size());
  double low_err = 0, map_err = 0;
  for (size_t i = 0; i < low.size(); ++i) low_err = std::max(low_err, std::abs(double(low[i]) - peer_low.f32[i]));
  for (int64_t b = 0; b < B; ++b)
    for (size_t i = 0; i < maps[b].map.size(); ++i)
      map_err = std::max(map_err, std::abs(double(maps[b].map[i]) - peer_map.f32[b * maps[b].map.size() + i]));
  std::printf("[ parity   ] %s: max abs error vs peer: low-res %.2e, resized %.2e\n", c.name.c_str(), low_err,
              map_err);
  EXPECT_LT(low_err, 1e-4);  // SPEC section 2: low-resolution map
  EXPECT_LT(map_err, 1e-3);  // resized map
}

const Case kCases[] = {
    {"shapes_traced", "zoo/models/shapes_cnn_traced.pt", "block4", 128, "shapes"},
    {"shapes_scripted", "zoo/models/shapes_cnn_scripted.pt", "block4", 128, "shapes"},
    {"resnet18_traced", "resnet18_traced.pt", "layer4", 224, "resnet18"},
    {"resnet18_scripted", "resnet18_scripted.pt", "layer4", 224, "resnet18"},
};
INSTANTIATE_TEST_SUITE_P(Models, GradCam, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.name; });

TEST(GradCamLayers, TwoLayersMatchPeerAggregation) {
  const Case c = kCases[1];
  const auto input = xcam::read_npy(xcam::test::data("golden/shapes_input.npy"));
  const auto targets = xcam::read_npy(xcam::test::data("golden/shapes_targets.npy"));
  const auto peer = xcam::read_npy(xcam::test::data("golden/shapes_block3+block4_map.npy"));
  xcam::Explainer ex(options(c, {"block3", "block4"}));
  const int64_t B = input.shape[0];
  const auto maps = explain_targets(ex, input, targets);
  double err = 0;
  for (int64_t b = 0; b < B; ++b)
    for (size_t i = 0; i < maps[b].map.size(); ++i)
      err = std::max(err, std::abs(double(maps[b].map[i]) - peer.f32[b * maps[b].map.size() + i]));
  EXPECT_LT(err, 1e-3);
}

TEST(GradCamTargets, TopKInOneForwardEqualsSingleTargets) {
  const Case c = kCases[0];
  const auto input = xcam::read_npy(xcam::test::data("golden/shapes_input.npy"));
  const int64_t B = input.shape[0];
  const std::vector<std::string> ids = sample_ids(B);
  auto o = options(c, {"block4"});
  o.targets = {"top3"};
  xcam::Explainer ex(o);
  const auto top = ex.explain_preprocessed(input.f32, B, ids);
  ASSERT_EQ(static_cast<int64_t>(top.size()), 3 * B);
  for (const auto& m : top) {
    auto single_opt = options(c, {"block4"});
    xcam::Explainer single(single_opt);
    const int64_t b = std::stoll(m.image_id.substr(1));
    std::vector<float> one(input.f32.begin() + b * 3 * 128 * 128, input.f32.begin() + (b + 1) * 3 * 128 * 128);
    const auto s = single.explain_preprocessed(one, 1, {m.image_id}, {{std::to_string(m.target_index)}});
    double err = 0;
    for (size_t i = 0; i < m.map.size(); ++i) err = std::max(err, std::abs(double(m.map[i]) - s[0].map[i]));
    EXPECT_LT(err, 1e-5) << m.image_id << " rank " << m.rank;
    EXPECT_NEAR(m.score, s[0].score, 1e-6);
  }
  // Ranks are in decreasing score order.
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_GE(top[b].score, top[B + b].score);
    EXPECT_GE(top[B + b].score, top[2 * B + b].score);
  }
}

// Every rank's gradients from one backward (the layers after the tap run on
// one copy of it per target) equal one backward per target on the pass's
// graph: two layers at once, methods that read the gradients differently.
TEST(GradCamTargets, BatchedTargetsEqualOneBackwardPerTarget) {
  const auto input = xcam::read_npy(xcam::test::data("golden/shapes_input.npy"));
  const int64_t B = input.shape[0];
  for (const std::string method : {"gradcam", "gradcam++", "layercam"}) {
    auto o = options(kCases[0], {"block2", "block4"});
    o.method = method;
    o.targets = {"top4"};
    xcam::Explainer batched(o);
    o.batch_targets = false;
    xcam::Explainer one_by_one(o);
    testing::internal::CaptureStderr();
    const auto a = batched.explain_preprocessed(input.f32, B, sample_ids(B));
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");  // no fallback
    const auto b = one_by_one.explain_preprocessed(input.f32, B, sample_ids(B));
    ASSERT_EQ(a.size(), b.size());
    ASSERT_EQ(static_cast<int64_t>(a.size()), 4 * B);
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i].target_index, b[i].target_index);
      EXPECT_LT(xcam::test::max_abs_diff(a[i].map, b[i].map, 0), 1e-5) << method << " " << a[i].image_id << " rank "
                                                                       << a[i].rank;
      EXPECT_NEAR(a[i].score, b[i].score, 1e-6);
    }
  }
}

// A model whose layers after the tap mix the batch's rows (each activation
// plus half the previous row's): copies of one sample's tap do not stand for
// the batch, the copies' scores say so, and the ranks go one backward each
// (a note on stderr), maps equal to the float64 reference of that batch
// (rank r's gradient: of the sum of the batch's rank-r scores, as one
// backward on the pass's graph gives it).
TEST(GradCamTargets, LayersThatMixBatchRowsFallBackToOneBackwardPerTarget) {
  xcam::test::TempDir tmp("mix");
  torch::manual_seed(3);
  torch::jit::Module body("Body");
  body.register_parameter("w", torch::randn({6, 3, 3, 3}), false);
  body.define("def forward(self, x):\n  return torch.relu(torch.conv2d(x, self.w, None, 2, 1))\n");
  torch::jit::Module m("Mix");
  m.register_module("body", body);
  m.register_parameter("fc", torch::randn({5, 6}), false);
  m.define(
      "def forward(self, x):\n"
      "  a = self.body.forward(x)\n"
      "  a = torch.tanh(a + 0.5 * a.roll(1, 0))\n"
      "  return torch.matmul(a.mean([2, 3]), self.fc.t())\n");
  m.save(tmp / "mix.pt");
  auto o = xcam::test::cnn_options(tmp / "mix.pt", "body", 32);
  o.targets = {"top3"};
  xcam::Explainer ex(o);
  const int64_t B = 3;
  const auto x = torch::randn({B, 3, 32, 32});
  std::vector<float> in(x.data_ptr<float>(), x.data_ptr<float>() + x.numel());
  testing::internal::CaptureStderr();
  const auto maps = ex.explain_preprocessed(in, B, sample_ids(B));
  const std::string note = testing::internal::GetCapturedStderr();
  EXPECT_NE(note.find("one backward per target instead"), std::string::npos) << note;
  ASSERT_EQ(static_cast<int64_t>(maps.size()), 3 * B);
  // float64 reference on the whole batch
  auto md = m.clone();
  md.to(torch::kDouble);
  const auto A = md.attr("body").toModule().forward({x.to(torch::kDouble)}).toTensor().detach().requires_grad_();
  const auto y = torch::matmul(torch::tanh(A + 0.5 * A.roll(1, 0)).mean({2, 3}), md.attr("fc").toTensor().t());
  for (size_t r = 0; r < 3; ++r) {
    auto s = y.new_zeros({});
    for (int64_t b = 0; b < B; ++b) s = s + y[b][maps[r * B + b].target_index];
    const auto g = torch::autograd::grad({s}, {A}, {}, true)[0];
    const auto ref = resize(reference_lowres(A.detach(), g), 32, 32).to(torch::kFloat32).contiguous();
    const std::vector<float> rv(ref.data_ptr<float>(), ref.data_ptr<float>() + ref.numel());
    for (int64_t b = 0; b < B; ++b)
      EXPECT_LT(xcam::test::max_abs_diff(maps[r * B + b].map, rv, b * 32 * 32), 1e-4) << "sample " << b << " rank " << r;
  }
}

TEST(GradCamTargets, UnknownClassNameAndOutOfRangeIndexAreRefused) {
  auto o = options(kCases[0], {"block4"});
  o.labels_file = xcam::test::source("zoo/models/shapes_labels.txt");
  xcam::Explainer ex(o);
  const auto input = xcam::read_npy(xcam::test::data("golden/shapes_input.npy"));
  std::vector<float> one(input.f32.begin(), input.f32.begin() + 3 * 128 * 128);
  try {
    ex.explain_preprocessed(one, 1, {"a"}, {{"hexagon"}});
    FAIL();
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("target 'hexagon' is not a class name"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ex.explain_preprocessed(one, 1, {"a"}, {{"17"}}), xcam::Error);
  const auto by_name = ex.explain_preprocessed(one, 1, {"a"}, {{"square"}});
  EXPECT_EQ(by_name[0].target_index, 1);
  EXPECT_EQ(by_name[0].target_label, "square");
}

}  // namespace

// Every CAM method xcam shares with the peer library (pytorch-grad-cam 1.5.5),
// end to end through the Explainer, against golden maps the peer wrote
// (zoo/golden_gradcam.py, tests/data/golden/<model>_<layer>_<method>_map.npy).
// Grad-CAM itself is covered by test_gradcam.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "../common.h"
#include "explain_util.h"
#include "xcam/explainer.h"
#include "xcam/io.h"

namespace {

using xcam::test::golden;
using xcam::test::max_abs_diff;

struct ModelCase {
  std::string name, model, layer;
  int64_t size;
  std::string golden;  // prefix in tests/data/golden
  bool gradcam = false;  // has a <prefix>_<layer>_gradcam_map golden (test_gradcam covers the others)
};

struct MethodCase {
  std::string method;  // ExplainerOptions::method
  std::string token;   // golden file-name tag
  bool sign_free;      // eigen methods: the peer's sign is arbitrary
};

struct Case {
  ModelCase m;
  MethodCase k;
  friend std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.m.name << "/" << c.k.method; }
};

const ModelCase kModels[] = {
    {"shapes_traced", "zoo/models/shapes_cnn_traced.pt", "block4", 128, "shapes"},
    {"shapes_scripted", "zoo/models/shapes_cnn_scripted.pt", "block4", 128, "shapes"},
    // an inner layer: block4's conv follows, so the methods differ (at block4,
    // before global average pooling and a linear layer, hirescam = xgradcam = gradcam)
    {"shapes_traced_block3", "zoo/models/shapes_cnn_traced.pt", "block3", 128, "shapes", true},
    {"shapes_scripted_block3", "zoo/models/shapes_cnn_scripted.pt", "block3", 128, "shapes", true},
    {"resnet18_traced", "resnet18_traced.pt", "layer4", 224, "resnet18"},
    {"resnet18_scripted", "resnet18_scripted.pt", "layer4", 224, "resnet18"},
};

const MethodCase kMethods[] = {
    {"gradcam", "gradcam", false},
    {"gradcam++", "gradcampp", false},
    {"xgradcam", "xgradcam", false},
    {"layercam", "layercam", false},
    {"hirescam", "hirescam", false},
    {"gradcam-elementwise", "gradcam-elementwise", false},
    {"eigencam", "eigencam", true},
    {"eigengradcam", "eigengradcam", true},
    {"scorecam", "scorecam", false},
    {"ablationcam", "ablationcam", false},
};

const ModelCase& model_case(const std::string& name) {
  for (const auto& m : kModels)
    if (m.name == name) return m;
  throw std::runtime_error("no model case " + name);
}

std::string model_path(const ModelCase& c) {
  return c.model.rfind("zoo/", 0) == 0 ? xcam::test::source(c.model) : xcam::test::models(c.model);
}

xcam::ExplainerOptions options(const ModelCase& c, const std::string& method) {
  return xcam::test::cnn_options(model_path(c), c.layer, c.size, method);
}

// One model case with the peer's input batch, targets and the map of golden `map`.
struct PeerRun {
  const ModelCase& m;
  xcam::NpyArray input, targets, peer;
  size_t hw;
};
PeerRun peer_run(const std::string& model, const std::string& map) {
  const ModelCase& m = model_case(model);
  return {m, golden(m.golden + "_input"), golden(m.golden + "_targets"), golden(map),
          static_cast<size_t>(m.size * m.size)};
}

class Methods : public ::testing::TestWithParam<Case> {};

TEST_P(Methods, MatchesPeerGoldens) {
  const Case& c = GetParam();
  const auto input = golden(c.m.golden + "_input");
  const auto targets = golden(c.m.golden + "_targets");
  const std::string prefix = c.m.golden + "_" + c.m.layer + "_" + c.k.token;
  const auto peer = golden(prefix + "_map");
  const int64_t B = input.shape[0];
  const size_t hw = static_cast<size_t>(c.m.size * c.m.size);
  ASSERT_EQ(peer.f32.size(), B * hw);

  xcam::Explainer ex(options(c.m, c.k.method));
  const auto ids = xcam::test::sample_ids(B);
  const auto maps = xcam::test::explain_targets(ex, input, targets);
  ASSERT_EQ(static_cast<int64_t>(maps.size()), B);
  ASSERT_EQ(ex.last_lowres().size(), 1u);

  xcam::NpyArray flipped;
  if (c.k.sign_free) flipped = golden(prefix + "_map_flipped");
  double err = 0;
  std::string per_sample;
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(maps[b].target_index, targets.i64[b]);
    ASSERT_EQ(maps[b].map.size(), hw);
    double e = max_abs_diff(maps[b].map, peer.f32, b * hw);
    std::string which;
    if (c.k.sign_free) {
      const double ef = max_abs_diff(maps[b].map, flipped.f32, b * hw);
      which = ef < e ? "(flipped)" : "";
      e = std::min(e, ef);
    }
    per_sample += " " + std::to_string(b) + ":" + [&] {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.2e%s", e, which.c_str());
      return std::string(buf);
    }();
    EXPECT_LT(e, 1e-3) << "sample " << b;  // SPEC section 2: resized map
    err = std::max(err, e);
  }
  std::printf("[ parity   ] %s %s: max abs error vs peer %.2e (per sample%s)\n", c.m.name.c_str(),
              c.k.method.c_str(), err, per_sample.c_str());
}

std::vector<Case> all_cases() {
  std::vector<Case> v;
  for (const auto& m : kModels)
    for (const auto& k : kMethods)
      if (k.method != "gradcam" || m.gradcam) v.push_back({m, k});
  return v;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string s = info.param.m.name + "_" + info.param.k.token;
  for (auto& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Peer, Methods, ::testing::ValuesIn(all_cases()), case_name);

// Score-CAM's masked forwards run on the model as loaded (optimize off), on
// the frozen copy with oneDNN's direct convolutions (winograd off) or with its
// Winograd ones (the default): every path matches the peer, and each other.
TEST(ScoreCamForwardPaths, EveryPathMatchesThePeer) {
  const auto [m, input, targets, peer, hw] = peer_run("shapes_traced_block3", "shapes_block3_scorecam_map");
  std::vector<std::vector<xcam::MapResult>> runs;
  for (const auto& [optimize, winograd] : {std::pair{true, true}, {true, false}, {false, false}}) {
    auto o = options(m, "scorecam");
    o.optimize = optimize;
    o.winograd = winograd;
    xcam::Explainer ex(o);
    runs.push_back(xcam::test::explain_targets(ex, input, targets));
    for (size_t b = 0; b < runs.back().size(); ++b)
      EXPECT_LT(max_abs_diff(runs.back()[b].map, peer.f32, b * hw), 1e-3)
          << "optimize " << optimize << " winograd " << winograd << " sample " << b;
  }
  for (size_t r = 1; r < runs.size(); ++r)
    for (size_t b = 0; b < runs[0].size(); ++b)
      EXPECT_LT(max_abs_diff(runs[r][b].map, runs[0][b].map, 0), 1e-5) << "path " << r << " sample " << b;
}

// Top-2 targets and two layers in one call, for every method: each layer's
// low-resolution map of each rank equals a one-layer, one-target call's.
TEST(MethodsTargets, TopKAndSeveralLayersInOneCallEqualSeparateCalls) {
  const ModelCase& m = model_case("shapes_traced");
  const auto input = golden("shapes_input");
  const int64_t B = 2;
  const std::vector<float> x(input.f32.begin(), input.f32.begin() + B * 3 * m.size * m.size);
  const auto ids = xcam::test::sample_ids(B);
  for (const auto& k : xcam::cam_methods()) {
    auto o = xcam::test::cnn_options(model_path(m), "block3", m.size, k);
    o.layers = {"block3", "block4"};
    o.targets = {"top2"};
    xcam::Explainer both(o);
    const auto maps = both.explain_preprocessed(x, B, ids);
    ASSERT_EQ(static_cast<int64_t>(maps.size()), 2 * B) << k;
    const auto low = both.last_lowres();
    ASSERT_EQ(low.size(), 2u);
    for (size_t l = 0; l < 2; ++l) {
      auto ol = xcam::test::cnn_options(model_path(m), o.layers[l], m.size, k);
      xcam::Explainer single(ol);
      for (size_t r = 0; r < 2; ++r) {
        std::vector<std::vector<std::string>> req;
        for (int64_t b = 0; b < B; ++b) req.push_back({std::to_string(maps[r * B + b].target_index)});
        single.explain_preprocessed(x, B, ids, req);
        const auto& ref = single.last_lowres().at(0).per_rank.at(0);
        const auto& got = low[l].per_rank.at(r);
        ASSERT_EQ(got.size(), ref.size()) << k;
        EXPECT_LT(max_abs_diff(got, ref, 0), 1e-5) << k << " layer " << o.layers[l] << " rank " << r;
      }
    }
  }
}

// SPEC section 1.8: a constant input (all-zero tensor: constant activations,
// degenerate SVD, equal Score-CAM masks) gives finite maps, never NaN.
TEST(MethodsDegenerate, ConstantInputGivesFiniteMaps) {
  const ModelCase& m = model_case("shapes_scripted");
  const int64_t B = 2;
  const std::vector<float> zeros(static_cast<size_t>(B * 3 * m.size * m.size), 0.f);
  for (const auto& k : kMethods) {
    if (k.method == "gradcam") continue;  // test_gradcam
    xcam::Explainer ex(options(m, k.method));
    const auto maps = ex.explain_preprocessed(zeros, B, {"z0", "z1"});
    ASSERT_EQ(static_cast<int64_t>(maps.size()), B) << k.method;
    for (const auto& mp : maps) {
      size_t bad = 0, nonzero = 0;
      for (float v : mp.map) {
        bad += !std::isfinite(v);
        nonzero += v != 0.f;
      }
      EXPECT_EQ(bad, 0u) << k.method << " " << mp.image_id;
      // (zero padding makes block4's activations vary near the borders, so
      // not every map is constant; one that is must say so)
      if (nonzero == 0) {
        ASSERT_EQ(mp.warnings.size(), 1u) << k.method << " " << mp.image_id;
        EXPECT_NE(mp.warnings[0].find("constant"), std::string::npos) << mp.warnings[0];
      }
    }
    for (const auto& layer : ex.last_lowres())
      for (const auto& rank : layer.per_rank)
        for (float v : rank) ASSERT_TRUE(std::isfinite(v)) << k.method << " low-res";
  }
}

// SPEC section 1.8: a target whose Grad-CAM sum is negative everywhere
// (resnet18's seeded weights, sample 0, class 698: max of sum_k w_k A_k is
// -4.06) gives an all-zero map and a warning; sample 1 in the same batch
// still matches the peer.
TEST(MethodsDegenerate, AllNegativeSumIsReportedAndTheOtherIsIntact) {
  const auto [m, input, targets, peer, hw] = peer_run("resnet18_traced", "resnet18_layer4_map");
  xcam::Explainer ex(options(m, "gradcam"));
  const auto maps = ex.explain_preprocessed(input.f32, 2, {"neg", "ok"}, {{"698"}, {std::to_string(targets.i64[1])}});
  ASSERT_EQ(maps.size(), 2u);
  size_t nonzero = 0;
  for (float v : maps[0].map) nonzero += v != 0.f;
  EXPECT_EQ(nonzero, 0u);
  ASSERT_EQ(maps[0].warnings.size(), 1u);
  EXPECT_NE(maps[0].warnings[0].find("all-negative"), std::string::npos) << maps[0].warnings[0];
  EXPECT_TRUE(maps[1].warnings.empty());
  EXPECT_LT(max_abs_diff(maps[1].map, peer.f32, hw), 1e-3);
}

// SPEC section 1.8: NaN in one sample's activations and gradients (a NaN
// pixel in its input) gives that sample an all-zero map and a warning; the
// other sample of the batch is untouched, and the call goes on.
TEST(MethodsDegenerate, NaNInOneSampleIsReportedAndTheOtherIsIntact) {
  const ModelCase& m = model_case("shapes_scripted");
  const auto input = golden("shapes_input");
  const size_t n = static_cast<size_t>(3 * m.size * m.size);
  std::vector<float> x(input.f32.begin(), input.f32.begin() + 2 * n);
  x[n + 40 * m.size + 50] = std::nanf("");  // sample 1, channel 0, row 40, column 50
  const std::vector<float> clean(input.f32.begin(), input.f32.begin() + n);
  for (const auto& k : xcam::cam_methods()) {
    xcam::Explainer ex(options(m, k));
    const auto maps = ex.explain_preprocessed(x, 2, {"ok", "nan"}, {{"0"}, {"0"}});
    ASSERT_EQ(maps.size(), 2u) << k;
    size_t nonzero = 0;
    for (float v : maps[1].map) nonzero += v != 0.f;  // NaN counts as non-zero
    EXPECT_EQ(nonzero, 0u) << k;
    ASSERT_EQ(maps[1].warnings.size(), 1u) << k;
    EXPECT_NE(maps[1].warnings[0].find("NaN"), std::string::npos) << k << ": " << maps[1].warnings[0];
    EXPECT_TRUE(maps[0].warnings.empty()) << k;
    const auto alone = ex.explain_preprocessed(clean, 1, {"ok"}, {{"0"}});
    EXPECT_LT(max_abs_diff(maps[0].map, alone[0].map, 0), 1e-5) << k;
  }
}

}  // namespace

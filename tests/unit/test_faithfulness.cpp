// Faithfulness metrics (SPEC section 5: deletion / insertion AUC, average
// drop, increase in confidence) against a float64 reference that scores
// every perturbed input on its own (zoo/golden_faithfulness.py), on the
// peer's Grad-CAM maps of the shapes CNN; and what the numbers must say.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../common.h"
#include "explain_util.h"
#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/io.h"

namespace {

using xcam::test::golden;

constexpr int64_t kSize = 128;
constexpr size_t kHW = kSize * kSize;

class Faithfulness : public ::testing::Test {
 protected:
  static xcam::ExplainerOptions options() {
    auto o = xcam::test::cnn_options(xcam::test::source("zoo/models/shapes_cnn_traced.pt"), "block4", kSize);
    o.plugin_options = R"({"activation": "sigmoid"})";
    return o;
  }
  void SetUp() override {
    input_ = golden("shapes_input");
    targets_ = golden("shapes_targets");
    const auto maps = golden("shapes_block4_map");
    B_ = input_.shape[0];
    ids_ = xcam::test::sample_ids(B_);
    for (int64_t b = 0; b < B_; ++b) {
      xcam::MapResult m;
      m.image_id = ids_[b];
      m.target_index = targets_.i64[b];
      m.height = m.width = kSize;
      m.map.assign(maps.f32.begin() + b * kHW, maps.f32.begin() + (b + 1) * kHW);
      maps_.push_back(std::move(m));
    }
  }
  xcam::NpyArray input_, targets_;
  int64_t B_ = 0;
  std::vector<std::string> ids_;
  std::vector<xcam::MapResult> maps_;
};

TEST_F(Faithfulness, MatchesTheFloat64Reference) {
  const auto ref = golden("shapes_block4_faithfulness");      // B x [Y, O, del, ins, del10, ins10]
  const auto curves = golden("shapes_block4_faithfulness_n10");  // B x 2 x 11
  xcam::Explainer ex(options());
  const auto f = ex.faithfulness(input_.f32, B_, ids_, maps_);  // n = 128 for 128 x 128
  xcam::FaithfulnessOptions o10;
  o10.steps = 10;  // 16384 pixels: steps of 1639, the last one short
  o10.curves = true;
  o10.chunk = 5;   // chunks that straddle the kinds of perturbed input
  const auto f10 = ex.faithfulness(input_.f32, B_, ids_, maps_, o10);
  ASSERT_EQ(static_cast<int64_t>(f.size()), B_);
  ASSERT_EQ(static_cast<int64_t>(f10.size()), B_);
  double err = 0;
  double sum_drop = 0, sum_ref_drop = 0;
  int increase = 0, ref_increase = 0;
  for (int64_t b = 0; b < B_; ++b) {
    const float* r = ref.f32.data() + b * 6;
    const std::vector<std::pair<double, double>> pairs{{f[b].base, r[0]},      {f[b].masked, r[1]},
                                                       {f[b].deletion, r[2]},  {f[b].insertion, r[3]},
                                                       {f10[b].deletion, r[4]}, {f10[b].insertion, r[5]}};
    for (size_t i = 0; i < pairs.size(); ++i) {
      EXPECT_NEAR(pairs[i].first, pairs[i].second, 1e-4) << "sample " << b << " value " << i;
      err = std::max(err, std::abs(pairs[i].first - pairs[i].second));
    }
    ASSERT_EQ(f10[b].deletion_curve.size(), 11u);
    ASSERT_EQ(f10[b].insertion_curve.size(), 11u);
    EXPECT_TRUE(f[b].deletion_curve.empty());
    for (size_t s = 0; s <= 10; ++s) {
      EXPECT_NEAR(f10[b].deletion_curve[s], curves.f32[b * 22 + s], 1e-4) << "sample " << b << " step " << s;
      EXPECT_NEAR(f10[b].insertion_curve[s], curves.f32[b * 22 + 11 + s], 1e-4) << "sample " << b << " step " << s;
    }
    // deletion starts from the input, insertion ends at it
    EXPECT_DOUBLE_EQ(f10[b].deletion_curve.front(), f10[b].base);
    EXPECT_NEAR(f10[b].insertion_curve.back(), f10[b].base, 1e-6);
    sum_drop += f[b].drop;
    sum_ref_drop += 100.0 * std::max(0.0, double(r[0]) - r[1]) / r[0];
    increase += f[b].increase;
    ref_increase += r[0] < r[1];
  }
  EXPECT_NEAR(sum_drop / B_, sum_ref_drop / B_, 1e-2);  // percent
  EXPECT_EQ(increase, ref_increase);
  std::printf("[ faithful ] max abs error vs float64 reference %.2e; average drop %.2f%%, increase %d / %lld\n", err,
              sum_drop / B_, increase, static_cast<long long>(B_));
}

// A Grad-CAM map that finds the shape must beat its own inverse: lower
// deletion AUC, higher insertion AUC. (Not pixel noise: deleting scattered
// pixels destroys any image fast, a known weakness of the deletion metric.)
TEST_F(Faithfulness, AGoodMapBeatsItsInverse) {
  xcam::Explainer ex(options());
  std::vector<std::vector<std::string>> req;
  for (int64_t c = 0; c < B_; ++c) req.push_back({std::to_string(c)});  // class c in sample c
  const auto maps = ex.explain_preprocessed(input_.f32, B_, ids_, req);
  auto inverse = maps;
  for (auto& m : inverse)
    for (auto& v : m.map) v = 1.f - v;
  xcam::FaithfulnessOptions o;
  o.steps = 32;
  const auto good = ex.faithfulness(input_.f32, B_, ids_, maps, o);
  const auto bad = ex.faithfulness(input_.f32, B_, ids_, inverse, o);
  int checked = 0;
  for (int64_t b = 0; b < B_; ++b) {
    if (good[b].base < 0.5) continue;  // the class is not in this image
    ++checked;
    EXPECT_LT(good[b].deletion, bad[b].deletion) << "sample " << b;
    EXPECT_GT(good[b].insertion, bad[b].insertion) << "sample " << b;
  }
  EXPECT_GE(checked, 2);
}

TEST_F(Faithfulness, BadInputIsRefused) {
  xcam::Explainer ex(options());
  auto wrong_id = maps_;
  wrong_id[0].image_id = "nobody";
  EXPECT_THROW(ex.faithfulness(input_.f32, B_, ids_, wrong_id), xcam::Error);
  auto wrong_size = maps_;
  wrong_size[1].map.resize(100);
  try {
    ex.faithfulness(input_.f32, B_, ids_, wrong_size);
    FAIL() << "a 100-value map was accepted";
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("128 x 128"), std::string::npos) << e.what();
  }
  xcam::FaithfulnessOptions o;
  o.chunk = 0;
  EXPECT_THROW(ex.faithfulness(input_.f32, B_, ids_, maps_, o), xcam::Error);
}

// An error raised inside the plugin reaches a caller outside the Explainer's
// scope intact, after the plugin's library is unloaded.
TEST_F(Faithfulness, PluginErrorsOutliveTheExplainer) {
  std::string what;
  try {
    xcam::Explainer ex(options());
    ex.explain_preprocessed(input_.f32, B_, ids_, {{"no-such-class"}, {"0"}, {"0"}, {"0"}});
  } catch (const xcam::Error& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("no-such-class"), std::string::npos) << what;
}

}  // namespace

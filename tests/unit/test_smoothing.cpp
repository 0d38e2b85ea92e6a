// The smoothing options of the peer library (pytorch-grad-cam 1.5.5):
// aug_smooth (test-time augmentation) and eigen_smooth (principal component of
// the weighted activations), end to end through the Explainer, against golden
// maps the peer wrote (zoo/golden_gradcam.py,
// tests/data/golden/shapes_block4_<method>_{augsmooth,eigensmooth}_map.npy).
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

const char* kModel = "zoo/models/shapes_cnn_scripted.pt";
const char* kLayer = "block4";
constexpr int64_t kSize = 128;

struct Case {
  std::string method;  // ExplainerOptions::method
  std::string token;   // golden file-name tag
  bool aug;            // aug_smooth, else eigen_smooth
  friend std::ostream& operator<<(std::ostream& os, const Case& c) {
    return os << c.method << (c.aug ? "/aug" : "/eigen");
  }
};

xcam::ExplainerOptions options(const std::string& method) {
  return xcam::test::cnn_options(xcam::test::source(kModel), kLayer, kSize, method);
}

class Smoothing : public ::testing::TestWithParam<Case> {};

TEST_P(Smoothing, MatchesPeerGoldens) {
  const Case& c = GetParam();
  const auto input = golden("shapes_input");
  const auto targets = golden("shapes_targets");
  const std::string prefix = std::string("shapes_") + kLayer + "_" + c.token + (c.aug ? "_augsmooth" : "_eigensmooth");
  const auto peer = golden(prefix + "_map");
  const int64_t B = input.shape[0];
  const size_t hw = static_cast<size_t>(kSize * kSize);
  ASSERT_EQ(peer.f32.size(), B * hw);

  auto o = options(c.method);
  o.aug_smooth = c.aug;
  o.eigen_smooth = !c.aug;
  xcam::Explainer ex(o);
  const auto ids = xcam::test::sample_ids(B);
  const auto maps = xcam::test::explain_targets(ex, input, targets);
  ASSERT_EQ(static_cast<int64_t>(maps.size()), B);

  xcam::NpyArray flipped;
  if (!c.aug) flipped = golden(prefix + "_map_flipped");  // the peer's projection sign is arbitrary
  double err = 0;
  std::string per_sample;
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(maps[b].image_id, ids[b]);
    EXPECT_EQ(maps[b].target_index, targets.i64[b]);
    ASSERT_EQ(maps[b].map.size(), hw);
    double e = max_abs_diff(maps[b].map, peer.f32, b * hw);
    std::string which;
    if (!c.aug) {
      const double ef = max_abs_diff(maps[b].map, flipped.f32, b * hw);
      which = ef < e ? "(flipped)" : "";
      e = std::min(e, ef);
    }
    char buf[48];
    std::snprintf(buf, sizeof buf, " %lld:%.2e%s", static_cast<long long>(b), e, which.c_str());
    per_sample += buf;
    EXPECT_LT(e, 1e-3) << "sample " << b;  // SPEC section 2: resized map
    err = std::max(err, e);
  }
  std::printf("[ parity   ] shapes_scripted %s %s: max abs error vs peer %.2e (per sample%s)\n", c.method.c_str(),
              c.aug ? "aug_smooth" : "eigen_smooth", err, per_sample.c_str());
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string s = info.param.token + (info.param.aug ? "_aug" : "_eigen");
  for (auto& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Peer, Smoothing,
                         ::testing::Values(Case{"gradcam", "gradcam", true}, Case{"gradcam", "gradcam", false},
                                           Case{"gradcam++", "gradcampp", true},
                                           Case{"gradcam++", "gradcampp", false}),
                         case_name);

// aug_smooth explains the six augmented copies in one batched forward. Its maps
// must equal those of explaining each augmented input on its own (with the
// target resolved on the un-augmented input), flipped back and averaged.
TEST(AugSmooth, EqualsMeanOfSeparateExplanations) {
  const auto input = golden("shapes_input");
  const int64_t B = input.shape[0];
  const int64_t HW = kSize * kSize, CHW = 3 * HW;
  std::vector<std::string> ids;
  for (int64_t b = 0; b < B; ++b) ids.push_back("s" + std::to_string(b));

  // Default targets (top1): resolved on the un-augmented copy.
  auto o = options("gradcam");
  xcam::Explainer plain(o);
  const auto top1 = plain.explain_preprocessed(input.f32, B, ids);
  o.aug_smooth = true;
  xcam::Explainer smooth(o);
  xcam::StageTimes times;
  const auto maps = smooth.explain_preprocessed(input.f32, B, ids, {}, &times);
  ASSERT_EQ(static_cast<int64_t>(maps.size()), B);
  EXPECT_GT(times.forward_ms, 0);
  ASSERT_EQ(smooth.last_lowres().size(), 1u);
  ASSERT_EQ(smooth.last_lowres()[0].per_rank.size(), 1u);
  EXPECT_EQ(static_cast<int64_t>(smooth.last_lowres()[0].per_rank[0].size()),
            B * smooth.last_lowres()[0].height * smooth.last_lowres()[0].width);  // B maps, not 6B

  std::vector<std::vector<std::string>> req;
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(maps[b].target_index, top1[b].target_index);
    EXPECT_DOUBLE_EQ(maps[b].score, top1[b].score);
    req.push_back({std::to_string(top1[b].target_index)});
  }

  struct Aug {
    bool flip;
    float factor;
  };
  const Aug augs[] = {{false, 0.9f}, {false, 1.f}, {false, 1.1f}, {true, 0.9f}, {true, 1.f}, {true, 1.1f}};
  std::vector<float> sum(static_cast<size_t>(B * HW), 0.f);
  for (const auto& a : augs) {
    std::vector<float> x(input.f32.size());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t ch = 0; ch < 3; ++ch)
        for (int64_t i = 0; i < kSize; ++i)
          for (int64_t j = 0; j < kSize; ++j) {
            const int64_t src = b * CHW + ch * HW + i * kSize + (a.flip ? kSize - 1 - j : j);
            const float v = input.f32[src];
            x[b * CHW + ch * HW + i * kSize + j] = a.factor != 1.f ? v * a.factor : v;
          }
    const auto one = plain.explain_preprocessed(x, B, ids, req);
    ASSERT_EQ(static_cast<int64_t>(one.size()), B);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < kSize; ++i)
        for (int64_t j = 0; j < kSize; ++j)
          sum[b * HW + i * kSize + j] += one[b].map[i * kSize + (a.flip ? kSize - 1 - j : j)];
  }
  double err = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < HW; ++p) err = std::max(err, std::abs(double(maps[b].map[p]) - sum[b * HW + p] / 6.f));
  std::printf("[ parity   ] aug_smooth batched vs six separate explanations: max abs error %.2e\n", err);
  EXPECT_LT(err, 1e-5);
}

// EigenCAM is a projection already: eigen_smooth changes nothing (as in the peer).
TEST(EigenSmooth, IgnoredByEigenCam) {
  const auto input = golden("shapes_input");
  const int64_t B = input.shape[0];
  std::vector<std::string> ids;
  for (int64_t b = 0; b < B; ++b) ids.push_back("s" + std::to_string(b));
  auto o = options("eigencam");
  const auto a = xcam::Explainer(o).explain_preprocessed(input.f32, B, ids);
  o.eigen_smooth = true;
  const auto e = xcam::Explainer(o).explain_preprocessed(input.f32, B, ids);
  ASSERT_EQ(a.size(), e.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].map, e[i].map);
}

}  // namespace

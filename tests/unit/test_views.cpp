// Views: crops explained in the same forward as the whole input and put back
// onto it, against explaining each crop alone (the crop resized to the model
// size as its own input, its map resized back and pasted, overlaps
// averaged, the result min-max normalised); and the view geometry.
#include <gtest/gtest.h>
#include <torch/script.h>

#include "../common.h"
#include "explain_util.h"
#include "views.h"
#include "xcam/error.h"
#include "xcam/explainer.h"
#include "xcam/io.h"

namespace {

namespace views = xcam::views;

TEST(Views, CropGridCoversTheInputWithTheOverlapAsked) {
  const auto s = views::crops(2, 3, 0.25, 128, 96);
  ASSERT_EQ(s.views.size(), 7u);  // the whole input, then the crops
  EXPECT_FALSE(s.views[0].adds_map);
  EXPECT_TRUE(s.renormalise);
  // 2 crops of h with h/4 overlap cover 128: h = ceil(128 / 1.75) = 74.
  EXPECT_EQ(s.views[1].height, 74);
  EXPECT_EQ(s.views[1].width, static_cast<int64_t>(std::ceil(96 / 2.5)));
  EXPECT_EQ(s.views.back().y0 + s.views.back().height, 128);
  EXPECT_EQ(s.views.back().x0 + s.views.back().width, 96);
  EXPECT_THROW(views::crops(0, 2, 0.1, 64, 64), xcam::Error);
  EXPECT_THROW(views::crops(2, 2, 1.0, 64, 64), xcam::Error);
}

struct CropCase {
  int64_t rows, cols;
  double overlap;
  friend std::ostream& operator<<(std::ostream& os, const CropCase& c) {
    return os << c.rows << "x" << c.cols << "_o" << c.overlap;
  }
};

class CropViews : public ::testing::TestWithParam<CropCase> {};

TEST_P(CropViews, EqualExplainingEachCropAlone) {
  const auto c = GetParam();
  const int64_t S = 128, B = 2;
  const auto input = xcam::test::golden("shapes_input");
  const std::vector<float> x(input.f32.begin(), input.f32.begin() + B * 3 * S * S);
  const auto model = xcam::test::source("zoo/models/shapes_cnn_traced.pt");
  auto o = xcam::test::cnn_options(model, "block3", S);
  o.crops = {c.rows, c.cols, c.overlap};
  xcam::Explainer cropped(o);
  const auto got = cropped.explain_preprocessed(x, B, xcam::test::sample_ids(B), {{"0"}, {"2"}});
  ASSERT_EQ(got.size(), 2u);

  xcam::Explainer plain(xcam::test::cnn_options(model, "block3", S));
  const auto images = torch::from_blob(const_cast<float*>(x.data()), {B, 3, S, S}, torch::kFloat32);
  const auto set = views::crops(c.rows, c.cols, c.overlap, S, S);
  auto sum = torch::zeros({B, S, S}, torch::kFloat64), cover = torch::zeros({1, S, S}, torch::kFloat64);
  for (const auto& v : set.views) {
    if (!v.adds_map) continue;
    const auto crop = at::upsample_bilinear2d(images.narrow(2, v.y0, v.height).narrow(3, v.x0, v.width), {S, S},
                                              false).contiguous();
    const std::vector<float> cx(crop.data_ptr<float>(), crop.data_ptr<float>() + crop.numel());
    const auto maps = plain.explain_preprocessed(cx, B, xcam::test::sample_ids(B), {{"0"}, {"2"}});
    for (int64_t b = 0; b < B; ++b) {
      auto m = torch::from_blob(const_cast<float*>(maps[b].map.data()), {1, 1, S, S}, torch::kFloat32);
      m = at::upsample_bilinear2d(m, {v.height, v.width}, false).squeeze().to(torch::kFloat64);
      sum[b].narrow(0, v.y0, v.height).narrow(1, v.x0, v.width) += m;
    }
    cover.narrow(1, v.y0, v.height).narrow(2, v.x0, v.width) += 1.0;
  }
  auto ref = (sum / cover).view({B, S * S});
  const auto lo = std::get<0>(ref.min(1, true)), hi = std::get<0>(ref.max(1, true));
  ref = (ref - lo) / (hi - lo + 1e-7);
  for (int64_t b = 0; b < B; ++b) {
    const auto g = torch::from_blob(const_cast<float*>(got[b].map.data()), {S * S}, torch::kFloat32);
    EXPECT_LT((g.to(torch::kFloat64) - ref[b]).abs().max().item<double>(), 1e-5) << "sample " << b;
    // Targets and scores come from the whole input, as without crops.
    EXPECT_EQ(got[b].target_index, b == 0 ? 0 : 2);
  }
}

INSTANTIATE_TEST_SUITE_P(Grids, CropViews,
                         ::testing::Values(CropCase{1, 1, 0.0}, CropCase{2, 2, 0.0}, CropCase{1, 2, 0.5},
                                           CropCase{3, 2, 0.25}),
                         [](const auto& info) {
                           std::ostringstream os;
                           os << info.param;
                           std::string n = os.str();
                           std::replace(n.begin(), n.end(), '.', 'p');
                           return n;
                         });

TEST(CropViews, OneCropEqualsNoViews) {
  const int64_t S = 128;
  const auto input = xcam::test::golden("shapes_input");
  const std::vector<float> x(input.f32.begin(), input.f32.begin() + 3 * S * S);
  const auto model = xcam::test::source("zoo/models/shapes_cnn_traced.pt");
  auto o = xcam::test::cnn_options(model, "block4", S);
  xcam::Explainer plain(o);
  o.crops = {1, 1, 0.0};
  xcam::Explainer one(o);
  const auto a = plain.explain_preprocessed(x, 1, {"s"}), b = one.explain_preprocessed(x, 1, {"s"});
  EXPECT_LT(xcam::test::max_abs_diff(b[0].map, a[0].map, 0), 1e-6);
  o.aug_smooth = true;
  try {
    xcam::Explainer both(o);
    both.explain_preprocessed(x, 1, {"s"});
    FAIL() << "aug_smooth with crops accepted";
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("choose one of them"), std::string::npos) << e.what();
  }
}

}  // namespace

// The ABI 2 hooks through the Explainer, with a real plugin built as ABI 2.0
// and as 2.1 (tests/plugins/classifier_plugin.cpp) on the shapes CNN:
// aliases resolve to taps, metadata() is called on the 2.1 build only,
// targets keep their payload, and the perturbation paths (Score-CAM,
// Ablation-CAM, faithfulness) carry each sample's own state, so a batch gives
// what each sample gives alone.
#include <gtest/gtest.h>

#include "../common.h"
#include "../unit/explain_util.h"
#include "xcam/explainer.h"

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

}  // namespace

// Layer taps on real TorchScript models (torchvision architectures exported
// at test time with seeded weights, traced and scripted): tapped values must
// equal what the modules compute, gradients must be the exact ones, and bad
// paths must be refused with a useful message.
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include "../common.h"
#include "xcam/error.h"
#include "xcam/model.h"

namespace {

using xcam::Model;
using xcam::TappedForward;

torch::jit::Module sub(Model& m, const std::string& path) {
  torch::jit::Module cur = m.module();
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '.');) cur = cur.attr(part).toModule();
  return cur;
}

at::Tensor call(torch::jit::Module m, const at::Tensor& x) { return m.forward({x}).toTensor(); }

double max_abs(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

class TapsOnResNet : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const auto path = xcam::test::models("resnet18_" + GetParam() + ".pt");
    if (!xcam::test::file_exists(path)) GTEST_FAIL() << "missing " << path << " (the zoo export fixture did not run)";
    model_ = std::make_unique<Model>(Model::load(path));
    torch::manual_seed(1);
    x_ = torch::randn({2, 3, 224, 224});
  }
  std::unique_ptr<Model> model_;
  at::Tensor x_;
};

TEST_P(TapsOnResNet, OutputIsUnchangedAndTapsAreWhatModulesCompute) {
  TappedForward tf(*model_, {"layer4", "layer3.1.conv1", "layer3.1.conv2", "layer1.0.relu@0"});
  const auto r = tf.run({x_});
  at::Tensor ref;
  {
    torch::NoGradGuard g;
    ref = model_->module().forward({x_}).toTensor();
  }
  EXPECT_EQ(max_abs(r.output.toTensor(), ref), 0.0);

  torch::NoGradGuard g;
  // The classifier head applied to the layer4 tap gives the logits.
  const auto head = call(sub(*model_, "fc"), r.taps[0].mean({2, 3}));
  EXPECT_LT(max_abs(head, ref), 1e-4);
  // conv2(relu(bn1(conv1 tap))) is the conv2 tap: taps read the right values,
  // and the in-place ReLU after conv1's BN left the tap intact.
  const auto chain = call(sub(*model_, "layer3.1.conv2"),
                          torch::relu(call(sub(*model_, "layer3.1.bn1"), r.taps[1])));
  EXPECT_LT(max_abs(chain, r.taps[2]), 1e-4);
  // The first of the block's two ReLU calls: relu(bn1(conv1(maxpool out))).
  const auto first = torch::relu(call(sub(*model_, "layer1.0.bn1"),
                                      call(sub(*model_, "layer1.0.conv1"),
                                           call(sub(*model_, "maxpool"), torch::relu(call(sub(*model_, "bn1"),
                                                                                          call(sub(*model_, "conv1"), x_)))))));
  EXPECT_LT(max_abs(first, r.taps[3]), 1e-4);
}

TEST_P(TapsOnResNet, GradientsAreExactAndStartAtTheEarliestTap) {
  TappedForward tf(*model_, {"layer4", "layer3"});
  const auto r = tf.run({x_});
  // layer3 runs first: it is the autograd leaf, layer4 is downstream of it.
  EXPECT_TRUE(r.taps[1].is_leaf());
  EXPECT_TRUE(r.taps[1].requires_grad());
  EXPECT_FALSE(r.taps[0].is_leaf());
  const int64_t c = 7;
  const auto y = r.output.toTensor().select(1, c).sum();
  const auto g = torch::autograd::grad({y}, r.taps);
  // y = fc(mean_s A) so dy/dA = W_fc[c] / (h w) at every position.
  const auto w = sub(*model_, "fc").attr("weight").toTensor()[c];
  const auto expected = (w / 49.0).view({1, 512, 1, 1}).expand({2, 512, 7, 7});
  EXPECT_LT(max_abs(g[0], expected), 1e-7);
  EXPECT_GT(g[1].abs().sum().item<double>(), 0.0);
  // Parameters are frozen: nothing was accumulated into them.
  for (const auto& p : model_->module().parameters()) {
    EXPECT_FALSE(p.requires_grad());
    EXPECT_FALSE(p.grad().defined());
  }
}

// Ablation-CAM's forwards: the rest of the model on a replaced tap value.
TEST_P(TapsOnResNet, ReplacingATapRunsOnlyWhatFollowsIt) {
  TappedForward tf(*model_, {"layer4", "layer3.1.conv1"});
  const auto r = tf.run({x_}, /*record_grad=*/false);
  torch::NoGradGuard g;
  const auto ref = model_->module().forward({x_}).toTensor();
  // The tapped value itself gives the model's output.
  EXPECT_EQ(max_abs(tf.run_replacing({x_}, 0, r.taps[0].clone()).toTensor(), ref), 0.0);
  // Another value: fc(mean) of it, whatever the input says.
  const auto other = torch::rand_like(r.taps[0]) * 3;
  const auto out = tf.run_replacing({torch::zeros_like(x_)}, 0, other.clone()).toTensor();
  EXPECT_LT(max_abs(out, call(sub(*model_, "fc"), other.mean({2, 3}))), 1e-4);
  // An inner tap: the residual path still reads the block's input, so the
  // replaced conv1 output and the real input both matter.
  auto conv1 = r.taps[1].clone();
  EXPECT_LT(max_abs(tf.run_replacing({x_}, 1, conv1).toTensor(), ref), 1e-5);
  conv1 = r.taps[1].clone();
  conv1.select(1, 0).fill_(100.f);
  EXPECT_GT(max_abs(tf.run_replacing({x_}, 1, conv1).toTensor(), ref), 1e-3);
  EXPECT_THROW(tf.run_replacing({x_}, 2, r.taps[0]), xcam::Error);
}

TEST_P(TapsOnResNet, CallIndexSelectsTheCall) {
  TappedForward last(*model_, {"layer2.1.relu"});
  TappedForward first(*model_, {"layer2.1.relu@0"});
  TappedForward second(*model_, {"layer2.1.relu@1"});
  const auto a = last.run({x_}, false), b = first.run({x_}, false), c = second.run({x_}, false);
  EXPECT_EQ(max_abs(a.taps[0], c.taps[0]), 0.0);
  EXPECT_GT(max_abs(a.taps[0], b.taps[0]), 1e-3);
}

TEST_P(TapsOnResNet, BadPathsAreRefusedWithHints) {
  try {
    TappedForward tf(*model_, {"layer5"});
    FAIL() << "layer5 accepted";
  } catch (const xcam::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("layer 'layer5' not found"), std::string::npos) << msg;
    EXPECT_NE(msg.find("did you mean 'layer"), std::string::npos) << msg;
    EXPECT_NE(msg.find("xcam layers"), std::string::npos) << msg;
  }
  try {
    TappedForward tf(*model_, {"layer4@3"});
    FAIL() << "layer4@3 accepted";
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("runs 1 time(s)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TappedForward(*model_, {"layer4@x"}), xcam::Error);
}

INSTANTIATE_TEST_SUITE_P(Variants, TapsOnResNet, ::testing::Values("traced", "scripted"),
                         [](const auto& info) { return info.param; });

TEST(Taps, InPlaceReluAfterTheTapLeavesItIntact) {
  // vgg11: features.18 is a conv followed by ReLU(inplace=True).
  Model m = Model::load(xcam::test::models("vgg11_scripted.pt"));
  torch::manual_seed(2);
  const auto x = torch::randn({1, 3, 224, 224});
  TappedForward tf(m, {"features.17", "features.18"});
  const auto r = tf.run({x}, false);
  EXPECT_LT(r.taps[1].min().item<double>(), 0.0);  // pre-ReLU values survived
  EXPECT_LT(max_abs(call(sub(m, "features.18"), r.taps[0]), r.taps[1]), 1e-4);
}

TEST(Taps, WholeSequentialOnMobileNet) {
  for (const std::string variant : {"traced", "scripted"}) {
    Model m = Model::load(xcam::test::models("mobilenet_v2_" + variant + ".pt"));
    torch::manual_seed(3);
    const auto x = torch::randn({2, 3, 160, 192});  // not square
    TappedForward tf(m, {"features"});
    const auto r = tf.run({x}, false);
    EXPECT_EQ(r.taps[0].size(2), 5);
    EXPECT_EQ(r.taps[0].size(3), 6);
    torch::NoGradGuard g;
    const auto head = call(sub(m, "classifier"), r.taps[0].mean({2, 3}));
    EXPECT_LT(max_abs(head, r.output.toTensor()), 1e-4) << variant;
  }
}

TEST(Model, MissingAndNonTorchScriptFilesAreRefused) {
  try {
    Model::load("/nonexistent/model.pt");
    FAIL();
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos);
  }
  xcam::test::TempDir tmp("model");
  {
    std::ofstream(tmp / "fake.pt") << "this is not a zip archive";
  }
  try {
    Model::load(tmp / "fake.pt");
    FAIL();
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a TorchScript archive"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line";
  }
}

}  // namespace

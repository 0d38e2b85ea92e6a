// The perturbed forwards' convolutions on oneDNN (core/src/onednn_convs.h):
// the xcam::conv2d_onednn and xcam::max_pool2d_onednn operators against
// float64 ATen on odd shapes and both layouts, and whole rewritten models
// (resnet18: Winograd, fused residual additions, blocked chains; mobilenet_v2:
// grouped convolutions, unfused activations; the shapes CNN) against their
// float64 forward.
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/script.h>

#include <ostream>
#include <string>

#include "../common.h"
#include "explain_util.h"
#include "onednn_convs.h"
#include "xcam/explainer.h"

namespace {

using Opt = c10::optional<at::Tensor>;

at::Tensor conv_op(const at::Tensor& x, const at::Tensor& w, const Opt& b, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool winograd, bool relu,
                   const Opt& residual, bool residual_inplace, bool blocked_out) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("xcam::conv2d_onednn", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const Opt&, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, int64_t, bool, bool, const Opt&, bool, bool)>();
  return op.call(x, w, b, stride, padding, dilation, groups, winograd, relu, residual, residual_inplace, blocked_out);
}

at::Tensor pool_op(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                   bool blocked_out) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("xcam::max_pool2d_onednn", "")
          .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, bool)>();
  return op.call(x, kernel, stride, padding, blocked_out);
}

// The machine's block: 16 channels with AVX-512, 8 without (onednn_convs.cpp).
const int64_t kB = __builtin_cpu_supports("avx512f") ? 16 : 8;

// NCHW <-> the blocked layout N x C/B x H x W x B.
at::Tensor blocked(const at::Tensor& x) {
  return x.view({x.size(0), x.size(1) / kB, kB, x.size(2), x.size(3)}).permute({0, 1, 3, 4, 2}).contiguous();
}
at::Tensor unblocked(const at::Tensor& x) {
  if (x.dim() == 4) return x;
  return x.permute({0, 1, 4, 2, 3}).reshape({x.size(0), x.size(1) * kB, x.size(2), x.size(3)});
}

double rel_err(const at::Tensor& got, const at::Tensor& ref) {
  return (got.to(at::kDouble) - ref).norm().item<double>() / std::max(ref.norm().item<double>(), 1e-30);
}

struct ConvCase {
  int64_t n, c, o, h, w, k, stride, pad, dil, groups;
  bool winograd, relu, residual, blocked_in, blocked_out;
};
std::ostream& operator<<(std::ostream& os, const ConvCase& p) {
  return os << "N" << p.n << "_C" << p.c << "_O" << p.o << "_" << p.h << "x" << p.w << "_k" << p.k << "s" << p.stride
            << "p" << p.pad << "d" << p.dil << "g" << p.groups << (p.winograd ? "_wino" : "") << (p.relu ? "_relu" : "")
            << (p.residual ? "_res" : "") << (p.blocked_in ? "_bin" : "") << (p.blocked_out ? "_bout" : "");
}

class ConvOp : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvOp, MatchesFloat64Convolution) {
  if (!xcam::onednn::available()) GTEST_SKIP() << "built without oneDNN";
  const ConvCase p = GetParam();
  torch::manual_seed(static_cast<uint64_t>(p.n * 131 + p.c * 17 + p.o + p.h));
  const auto x = torch::randn({p.n, p.c, p.h, p.w});
  const auto w = torch::randn({p.o, p.c / p.groups, p.k, p.k}) * std::sqrt(2.0 / (p.c / p.groups * p.k * p.k));
  const auto b = torch::randn({p.o}) * 0.1;
  auto ref = at::conv2d(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble), p.stride, p.pad, p.dil, p.groups);
  Opt residual;
  if (p.residual) {
    const auto r = torch::randn(ref.sizes());
    ref = ref + r.to(at::kDouble);
    residual = p.blocked_in ? blocked(r) : r;
  }
  if (p.relu) ref = ref.relu();
  // Twice: the second call runs the cached plan (and its reused buffers).
  for (int call = 0; call < 2; ++call) {
    const auto out = conv_op(p.blocked_in ? blocked(x) : x, w, b, {p.stride, p.stride}, {p.pad, p.pad},
                             {p.dil, p.dil}, p.groups, p.winograd, p.relu, residual, false, p.blocked_out);
    // Blocked output only where the channels fill whole blocks.
    EXPECT_EQ(out.dim(), p.blocked_out && p.o % kB == 0 ? 5 : 4);
    EXPECT_LT(rel_err(unblocked(out), ref), p.winograd ? 2e-5 : 2e-6) << "call " << call;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ConvOp,
    ::testing::Values(
        // n   c   o   h   w  k  s  p  d  g  wino   relu   res    b_in   b_out
        ConvCase{1, 32, 32, 8, 8, 3, 1, 1, 1, 1, true, false, false, false, false},
        ConvCase{5, 64, 64, 56, 56, 3, 1, 1, 1, 1, true, true, false, true, true},      // resnet layer1
        ConvCase{3, 64, 32, 13, 17, 3, 1, 1, 1, 1, true, true, true, true, true},       // odd size, residual
        ConvCase{2, 32, 48, 9, 11, 3, 1, 0, 1, 1, true, false, true, false, true},      // no padding
        ConvCase{2, 24, 40, 15, 15, 3, 1, 1, 1, 1, true, true, false, false, false},    // channels not x16
        ConvCase{2, 3, 64, 65, 47, 7, 2, 3, 1, 1, false, true, false, false, true},     // a stem
        ConvCase{4, 64, 128, 28, 28, 1, 2, 0, 1, 1, false, false, false, true, true},   // downsample
        ConvCase{2, 32, 32, 19, 19, 3, 2, 1, 1, 1, false, true, true, true, false},     // stride 2 + residual
        ConvCase{2, 32, 32, 12, 12, 3, 1, 2, 2, 1, false, false, false, false, false},  // dilated
        ConvCase{2, 32, 64, 12, 10, 3, 1, 1, 1, 4, false, true, false, true, true},     // grouped
        ConvCase{2, 32, 32, 12, 10, 3, 1, 1, 1, 32, false, false, false, false, true},  // depthwise
        ConvCase{1, 32, 32, 1, 1, 3, 1, 1, 1, 1, true, true, true, true, true}),        // 1 x 1 image
    [](const ::testing::TestParamInfo<ConvCase>& i) {
      std::ostringstream os;
      os << i.param;
      return os.str();
    });

TEST(ConvOp, ResidualBufferBecomesTheOutputWhenAllowed) {
  if (!xcam::onednn::available()) GTEST_SKIP() << "built without oneDNN";
  torch::manual_seed(3);
  const auto x = torch::randn({2, 32, 10, 10}), w = torch::randn({32, 32, 3, 3}) * 0.1, b = torch::randn({32});
  const auto r = torch::randn({2, 32, 10, 10});
  const auto ref = (at::conv2d(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble), 1, 1) + r.to(at::kDouble)).relu();
  const auto res = blocked(r);
  const auto out = conv_op(blocked(x), w, b, {1, 1}, {1, 1}, {1, 1}, 1, true, true, res, true, true);
  EXPECT_LT(rel_err(unblocked(out), ref), 2e-5);
  EXPECT_TRUE(out.is_same(res));  // written in place, no copy
  // Not allowed: the residual is left as it was.
  const auto kept = blocked(r);
  const auto out2 = conv_op(blocked(x), w, b, {1, 1}, {1, 1}, {1, 1}, 1, true, true, kept, false, true);
  EXPECT_FALSE(out2.is_same(kept));
  EXPECT_TRUE(unblocked(kept).equal(r));
}

TEST(ConvOp, OtherInputsFallBackToATen) {
  if (!xcam::onednn::available()) GTEST_SKIP() << "built without oneDNN";
  torch::manual_seed(4);
  const auto x = torch::randn({2, 16, 9, 9}, at::kDouble), w = torch::randn({16, 16, 3, 3}, at::kDouble);
  const auto out = conv_op(x, w, Opt(), {1, 1}, {1, 1}, {1, 1}, 1, true, true, Opt(), false, false);
  EXPECT_EQ(out.scalar_type(), at::kDouble);
  EXPECT_TRUE(out.equal(at::conv2d(x, w, {}, 1, 1).relu()));
  // A shape error still names the problem, from ATen.
  EXPECT_THROW(conv_op(torch::randn({2, 8, 9, 9}), torch::randn({16, 16, 3, 3}), Opt(), {1, 1}, {1, 1}, {1, 1}, 1,
                       true, false, Opt(), false, false),
               c10::Error);
}

TEST(PoolOp, MaxPoolingEqualsATenInBothLayouts) {
  if (!xcam::onednn::available()) GTEST_SKIP() << "built without oneDNN";
  torch::manual_seed(5);
  for (const auto& [h, w, k, s, pad] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>>{
           {15, 15, 3, 2, 1}, {112, 112, 3, 2, 1}, {7, 9, 2, 2, 0}, {5, 5, 3, 1, 1}}) {
    const auto x = torch::randn({3, 32, h, w});
    const auto ref = at::max_pool2d(x, {k, k}, {s, s}, {pad, pad});
    for (bool bin : {false, true})
      for (bool bout : {false, true}) {
        const auto out = pool_op(bin ? blocked(x) : x, {k, k}, {s, s}, {pad, pad}, bout);
        EXPECT_EQ(out.dim(), bout ? 5 : 4);
        EXPECT_TRUE(unblocked(out).equal(ref)) << h << "x" << w << " k" << k << " in " << bin << " out " << bout;
      }
  }
}

// ------------------------------------------------------------ whole models ---

struct ModelCase {
  std::string file;
  int64_t n, h, w;
  xcam::onednn::RewriteStats expect;  // with Winograd kernels on this CPU
  int64_t blocked8 = -1;                // outputs kept blocked with 8-channel blocks (no AVX-512), if other
};
std::ostream& operator<<(std::ostream& os, const ModelCase& c) { return os << c.file; }

class RewrittenModel : public ::testing::TestWithParam<ModelCase> {};

TEST_P(RewrittenModel, LogitsMatchFloat64) {
  if (!xcam::onednn::available()) GTEST_SKIP() << "built without oneDNN";
  const ModelCase c = GetParam();
  const auto path = c.file.rfind("shapes", 0) == 0 ? std::string(XCAM_SOURCE_DIR) + "/zoo/models/" + c.file
                                                    : xcam::test::models(c.file);
  if (!xcam::test::file_exists(path)) GTEST_FAIL() << "missing " << path << " (the zoo export fixture did not run)";
  auto model = torch::jit::load(path);
  model.eval();
  auto reference = torch::jit::load(path);
  reference.eval();
  reference.to(at::kDouble);
  auto fast = torch::jit::freeze(model);
  auto plain = torch::jit::freeze(model);
  const auto st = xcam::onednn::rewrite_convolutions(fast.get_method("forward").graph(), true);
  EXPECT_EQ(st.convolutions, c.expect.convolutions);
  EXPECT_TRUE(st.winograd == c.expect.winograd || st.winograd == 0) << st.winograd;  // 0: no AVX-512
  EXPECT_EQ(st.fused_relu, c.expect.fused_relu);
  EXPECT_EQ(st.fused_add, c.expect.fused_add);
  EXPECT_EQ(st.blocked, kB == 8 && c.blocked8 >= 0 ? c.blocked8 : c.expect.blocked);
  fast = torch::jit::optimize_for_inference(fast);  // as the explainer runs it

  torch::NoGradGuard no_grad;
  torch::manual_seed(6);
  for (const auto& [n, h, w] : {std::tuple{c.n, c.h, c.w}, std::tuple<int64_t, int64_t, int64_t>{3, c.h + 13, c.w - 7}}) {
    const auto x = torch::randn({n, 3, h, w});
    const auto ref = reference.forward({x.to(at::kDouble)}).toTensor();
    const double direct = rel_err(plain.forward({x}).toTensor(), ref);
    for (int call = 0; call < 2; ++call) {
      const double got = rel_err(fast.forward({x}).toTensor(), ref);
      // Winograd trades a little float32 accuracy for speed: within a few
      // times the direct convolutions' own error, and far below SPEC's 1e-3.
      EXPECT_LT(got, std::max(20 * direct, 1e-6)) << "batch " << n << " " << h << "x" << w << " call " << call;
      EXPECT_LT(got, 1e-5);
      if (call == 0) std::printf("[ onednn   ] %s %ldx%ldx%ld: rel err vs float64 %.2e (direct float32 %.2e)\n",
                                 c.file.c_str(), static_cast<long>(n), static_cast<long>(h), static_cast<long>(w), got,
                                 direct);
    }
  }
}

TEST(RewrittenModel, KernelsAndWeightsAreFreedWithTheModel) {
  if (!xcam::onednn::available()) GTEST_SKIP() << "built without oneDNN";
  const auto path = xcam::test::models("resnet18_traced.pt");
  if (!xcam::test::file_exists(path)) GTEST_FAIL() << "missing " << path << " (the zoo export fixture did not run)";
  xcam::onednn::release_unused();
  const auto before = xcam::onednn::cache_stats();
  torch::NoGradGuard no_grad;
  {
    auto model = torch::jit::load(path);
    model.eval();
    auto fast = torch::jit::freeze(model);
    const auto st = xcam::onednn::rewrite_convolutions(fast.get_method("forward").graph(), true);
    fast.forward({torch::randn({2, 3, 64, 64})});
    const auto first = xcam::onednn::cache_stats();
    EXPECT_EQ(first.plans, before.plans + static_cast<size_t>(st.convolutions));  // one kernel per convolution
    EXPECT_GT(first.weight_bytes, before.weight_bytes + 40u * 1000 * 1000);      // 11.2 M conv weights, 4 bytes
    fast.forward({torch::randn({3, 3, 64, 64})});
    const auto during = xcam::onednn::cache_stats();
    // A new batch size: new kernels, mostly the same transformed weights (a
    // direct kernel may want another layout for another batch size; the
    // Winograd transforms, most of the bytes, are not made again).
    EXPECT_EQ(during.plans, before.plans + 2 * static_cast<size_t>(st.convolutions));
    EXPECT_LT(during.weight_bytes - first.weight_bytes, first.weight_bytes / 10);
    xcam::onednn::release_unused();  // the model still lives: nothing goes
    EXPECT_EQ(xcam::onednn::cache_stats().plans, during.plans);
  }
  xcam::onednn::release_unused();
  const auto after = xcam::onednn::cache_stats();
  EXPECT_EQ(after.plans, before.plans);
  EXPECT_EQ(after.weight_bytes, before.weight_bytes);
}

TEST(RewrittenModel, AnExplainerFreesItsKernelsWhenDestroyed) {
  if (!xcam::onednn::available()) GTEST_SKIP() << "built without oneDNN";
  xcam::onednn::release_unused();
  const auto before = xcam::onednn::cache_stats();
  std::vector<float> image(3 * 128 * 128);
  for (size_t i = 0; i < image.size(); ++i) image[i] = static_cast<float>((i * 7919) % 255) / 255.f - 0.5f;
  {
    xcam::Explainer ex(xcam::test::cnn_options(xcam::test::source("zoo/models/shapes_cnn_traced.pt"), "block4", 128,
                                               "scorecam"));
    const auto maps = ex.explain_preprocessed(image, 1, {"x"}, {{"top1"}});
    ASSERT_EQ(maps.size(), 1u);
    EXPECT_GT(xcam::onednn::cache_stats().plans, before.plans);  // the masked forwards ran on oneDNN
  }
  EXPECT_EQ(xcam::onednn::cache_stats().plans, before.plans);
  EXPECT_EQ(xcam::onednn::cache_stats().weight_bytes, before.weight_bytes);
}

INSTANTIATE_TEST_SUITE_P(
    Zoo, RewrittenModel,
    ::testing::Values(
        // resnet18: 20 convolutions, the 13 of 3x3 stride 1 on Winograd, 17 ReLUs and the 8 residual additions
        // folded in, everything but the last convolution (read by the average pooling) chained, and the max
        // pooling after the stem too.
        ModelCase{"resnet18_traced.pt", 8, 224, 224, {20, 13, 17, 8, 20}},
        ModelCase{"resnet18_scripted.pt", 8, 224, 224, {20, 13, 17, 8, 20}},
        // mobilenet_v2: ReLU6 is not folded (its outputs leave the chain); the 10 inverted-residual additions
        // are, and the 15 bottleneck outputs they read stay blocked (17 in blocks of 8: two more have 8k
        // channels).
        ModelCase{"mobilenet_v2_traced.pt", 8, 160, 160, {52, 0, 0, 10, 15}, 17},
        ModelCase{"shapes_cnn_traced.pt", 16, 128, 128, {4, 2, 4, 0, 6}}),
    [](const ::testing::TestParamInfo<ModelCase>& i) {
      std::string s = i.param.file.substr(0, i.param.file.find('.'));
      return s;
    });

}  // namespace

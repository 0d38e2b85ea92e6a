// Tests of the at::Tensor face of the kernels (xcam/kernels/dispatch.h,
// kernels/src/dispatch.cpp): for float32, float16 and bfloat16 tensors the
// results equal the raw CPU kernels (themselves tested against float64 in
// test_kernels.cpp) and, for Grad-CAM and the resize, a float64 reference;
// non-contiguous inputs (transposed, sliced, channels-last) give the results
// of their contiguous copies; bad arguments throw c10::Error with a message
// that names the problem.
//
// Every failure prints the seed; XCAM_TEST_SEED=<n> replays a run.
#include <torch/script.h>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "xcam/kernels/dispatch.h"
#include "xcam/kernels/elementwise.h"
#include "xcam/kernels/gradcam.h"
#include "xcam/kernels/normalize_resize.h"
#include "xcam/kernels/overlay.h"
#include "xcam/kernels/pool.h"
#include "xcam/kernels/scorecam.h"
#include "xcam/kernels/weighted_sum.h"
#include "kernel_test_util.h"
#include "kernel_test_util_aten.h"

namespace {

using namespace xcam::kernels;
using namespace xcam::kernels::test_util;
using at::Tensor;

CamShape shape_of(const Tensor& t) { return {t.size(0), t.size(1), t.size(2), t.size(3)}; }
float* fptr(const Tensor& t) { return t.data_ptr<float>(); }
Tensor f32(at::IntArrayRef s) { return at::full(s, std::numeric_limits<float>::quiet_NaN(), at::kFloat); }
Tensor u8(at::IntArrayRef s) { return at::full(s, 0xEE, at::kByte); }

// Exactly equal, same shape and dtype (NaN never expected here).
void expect_same(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  ASSERT_EQ(got.scalar_type(), want.scalar_type()) << what;
  EXPECT_TRUE(got.device().is_cpu()) << what;
  EXPECT_TRUE(at::equal(got, want)) << what << ": differs from the raw kernel (max abs diff "
                                    << (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>()
                                    << ")";
}

// Relative-norm check of a float32 result against a float64 reference.
void expect_near(const Tensor& got, const Tensor& ref, double rel, const std::string& what) {
  ASSERT_EQ(got.sizes(), ref.sizes()) << what;
  const double diff = (got.to(at::kDouble) - ref).norm().item<double>(), norm = ref.norm().item<double>();
  EXPECT_LE(diff, rel * norm) << what << ": relative error " << diff / norm;
}

// `f` must throw c10::Error whose message contains every word of `words`.
void expect_error(const std::string& what, const std::function<void()>& f, std::initializer_list<std::string> words) {
  try {
    f();
    ADD_FAILURE() << what << ": no error";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const std::string& w : words)
      EXPECT_NE(msg.find(w), std::string::npos) << what << ": the message \"" << msg << "\" does not say \"" << w
                                                << "\"";
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw an exception that is not a c10::Error: " << e.what();
  }
}

// ---------------------------------------------------------------------------
// The raw kernels on contiguous copies (the expected results).
// ---------------------------------------------------------------------------

MapOutput raw_gradcam(const Tensor& A_in, const Tensor& g_in, int64_t H, int64_t W) {
  const Tensor A = A_in.contiguous(), g = g_in.contiguous();
  const CamShape s = shape_of(A);
  MapOutput r{f32({s.batch, H, W}), f32({s.batch, s.height, s.width}), u8({s.batch})};
  gradcam_cpu(A.data_ptr(), g.data_ptr(), dtype_of(A), s, H, W, fptr(r.lowres), fptr(r.map),
              r.status.data_ptr<uint8_t>());
  return r;
}

Tensor raw_weights(const Tensor& A_in, const Tensor& g_in, WeightMethod m) {
  const Tensor A = A_in.contiguous(), g = g_in.contiguous();
  const CamShape s = shape_of(A);
  Tensor w = f32({s.batch, s.channels});
  channel_weights_cpu(A.data_ptr(), g.data_ptr(), dtype_of(A), s, m, fptr(w));
  return w;
}

Tensor raw_weighted_sum(const Tensor& A_in, const Tensor& w_in) {
  const Tensor A = A_in.contiguous(), w = w_in.to(at::kFloat).contiguous();
  const CamShape s = shape_of(A);
  Tensor cam = f32({s.batch, s.height, s.width});
  weighted_sum_relu_cpu(A.data_ptr(), dtype_of(A), s, fptr(w), fptr(cam));
  return cam;
}

Tensor raw_elementwise(const Tensor& A_in, const Tensor& g_in, ElementwiseMethod m) {
  const Tensor A = A_in.contiguous(), g = g_in.contiguous();
  const CamShape s = shape_of(A);
  Tensor cam = f32({s.batch, s.height, s.width});
  elementwise_cam_cpu(A.data_ptr(), g.data_ptr(), dtype_of(A), s, m, fptr(cam));
  return cam;
}

MapOutput raw_normalize_resize(const Tensor& cam, int64_t H, int64_t W) {
  const int64_t B = cam.size(0), h = cam.size(1), w = cam.size(2);
  MapOutput r{f32({B, H, W}), cam.to(at::kFloat).contiguous().clone(), u8({B})};
  normalize_resize_cpu(fptr(r.lowres), B, h, w, fptr(r.map), H, W, r.status.data_ptr<uint8_t>());
  return r;
}

Tensor raw_scorecam(const Tensor& A_in, int64_t k0, int64_t k1, const Tensor& input_in) {
  const Tensor A = A_in.contiguous(), input = input_in.to(at::kFloat).contiguous();
  const int64_t C = input.size(0), H = input.size(1), W = input.size(2);
  Tensor out = f32({k1 - k0, C, H, W});
  scorecam_masks_cpu(A.data_ptr(), dtype_of(A), A.size(0), A.size(1), A.size(2), k0, k1, fptr(input), C, H, W,
                     fptr(out));
  return out;
}

// Grad-CAM lowres map in float64 (SPEC 1-2): relu(sum_k mean_s(g_k) A_k), min-max.
Tensor gradcam_lowres_ref(const Tensor& A_in, const Tensor& g_in) {
  const Tensor A = A_in.to(at::kDouble), g = g_in.to(at::kDouble);
  const Tensor cam = (g.mean({2, 3}, true) * A).sum(1).relu();
  const Tensor flat = cam.reshape({cam.size(0), -1});
  const Tensor lo = std::get<0>(flat.min(1, true)), hi = std::get<0>(flat.max(1, true));
  return ((flat - lo) / (hi - lo + 1e-7)).view(cam.sizes());
}

// ---------------------------------------------------------------------------
// Input types: the dispatch of each op taking activations equals the raw kernel.
// ---------------------------------------------------------------------------

class DispatchDTypes : public testing::TestWithParam<DType> {
 protected:
  at::ScalarType st() const { return scalar_type_of(GetParam()); }
  double rel_tol() const { return GetParam() == DType::f32 ? 1e-5 : 5e-3; }
};

TEST_P(DispatchDTypes, GradCam) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({3, 70, 14, 14}).to(st()), g = rng.randn({3, 70, 14, 14}).to(st());
  const MapOutput r = gradcam(A, g, 100, 130);
  const MapOutput want = raw_gradcam(A, g, 100, 130);
  expect_same(r.map, want.map, "map");
  expect_same(r.lowres, want.lowres, "lowres");
  expect_same(r.status, want.status, "status");
  expect_near(r.lowres, gradcam_lowres_ref(A, g), rel_tol(), "lowres against float64");
}

TEST_P(DispatchDTypes, ChannelWeights) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({3, 70, 7, 9}).abs().to(st()), g = rng.randn({3, 70, 7, 9}).to(st());
  for (WeightMethod m : kWeightMethods) {
    SCOPED_TRACE("method " + std::to_string(static_cast<int>(m)));
    expect_same(channel_weights(A, g, m), raw_weights(A, g, m), "weights");
  }
}

TEST_P(DispatchDTypes, WeightedSumRelu) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({3, 70, 7, 9}).to(st()), w = rng.randn({3, 70});
  expect_same(weighted_sum_relu(A, w), raw_weighted_sum(A, w), "cam");
  // Weights of another floating type are converted to float32.
  const Tensor w64 = rng.randn({3, 70}).to(at::kDouble);
  expect_same(weighted_sum_relu(A, w64), raw_weighted_sum(A, w64), "cam, float64 weights");
}

TEST_P(DispatchDTypes, ElementwiseCam) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({3, 70, 7, 9}).to(st()), g = rng.randn({3, 70, 7, 9}).to(st());
  for (ElementwiseMethod m : kElementwiseMethods) {
    SCOPED_TRACE("method " + std::to_string(static_cast<int>(m)));
    expect_same(elementwise_cam(A, g, m), raw_elementwise(A, g, m), "cam");
  }
}

TEST_P(DispatchDTypes, ScoreCamMasks) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({70, 7, 9}).to(st()), input = rng.randn({3, 50, 37});
  for (const auto& r : std::vector<std::array<int64_t, 2>>{{0, 32}, {64, 70}, {5, 6}}) {
    SCOPED_TRACE("channels [" + std::to_string(r[0]) + ", " + std::to_string(r[1]) + ")");
    expect_same(scorecam_masks(A, r[0], r[1], input), raw_scorecam(A, r[0], r[1], input), "masked inputs");
  }
  // A float64 input is converted to float32.
  const Tensor input64 = input.to(at::kDouble);
  expect_same(scorecam_masks(A, 0, 8, input64), raw_scorecam(A, 0, 8, input64), "masked inputs, float64 input");
}

// Half maps are converted to float32 before the map ops.
TEST_P(DispatchDTypes, MapOpsConvertTheMapToFloat) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor cam = rng.randn({3, 14, 14}).relu().to(st());
  const MapOutput r = normalize_resize(cam, 100, 130);
  const MapOutput want = raw_normalize_resize(cam, 100, 130);
  expect_same(r.map, want.map, "normalize_resize map");
  expect_same(r.lowres, want.lowres, "normalize_resize lowres");
  const Tensor resized = resize_bilinear(cam, 50, 37, true);
  Tensor want_resized = f32({3, 50, 37});
  const Tensor cam32 = cam.to(at::kFloat).contiguous();
  resize_bilinear_cpu(fptr(cam32), 3, 14, 14, fptr(want_resized), 50, 37, true);
  expect_same(resized, want_resized, "resize_bilinear");
}

INSTANTIATE_TEST_SUITE_P(Kernels, DispatchDTypes, testing::Values(DType::f32, DType::f16, DType::bf16),
                         [](const testing::TestParamInfo<DType>& i) { return std::string(dtype_name(i.param)); });

// ---------------------------------------------------------------------------
// The float32 map ops.
// ---------------------------------------------------------------------------

TEST(Dispatch, NormalizeResizeLeavesItsInputAlone) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor cam = rng.randn({4, 7, 9}).relu();
  cam[2].zero_();  // a constant map
  const Tensor before = cam.clone();
  const MapOutput r = normalize_resize(cam, 64, 48);
  const MapOutput want = raw_normalize_resize(cam, 64, 48);
  expect_same(r.map, want.map, "map");
  expect_same(r.lowres, want.lowres, "lowres");
  expect_same(r.status, want.status, "status");
  EXPECT_EQ(r.status[2].item<int>(), int{kCamConstant});
  EXPECT_TRUE(at::equal(cam, before)) << "normalize_resize modified its input";
}

TEST(Dispatch, MinMaxNormalize) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor maps = rng.randn({4, 3, 7, 9});
  maps[1].fill_(2.f);
  maps[3][0][0][0] = std::numeric_limits<float>::quiet_NaN();
  const Tensor before = maps.clone();
  Tensor status;
  const Tensor got = minmax_normalize(maps, &status);
  Tensor want = maps.contiguous().clone();
  Tensor want_status = u8({4});
  minmax_normalize_cpu(fptr(want), 4, 3 * 7 * 9, want_status.data_ptr<uint8_t>());
  expect_same(got, want, "maps");
  expect_same(status, want_status, "status");
  EXPECT_EQ(status[1].item<int>(), int{kCamConstant});
  EXPECT_EQ(status[3].item<int>(), int{kCamNonFinite});
  EXPECT_TRUE(at::equal(maps.nan_to_num(0), before.nan_to_num(0))) << "minmax_normalize modified its input";
  expect_same(minmax_normalize(maps), want, "maps, no status");
}

TEST(Dispatch, ResizeBilinear) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor maps = rng.randn({3, 16, 8});
  for (bool ac : {false, true}) {
    SCOPED_TRACE(ac ? "align_corners" : "half-pixel");
    const Tensor got = resize_bilinear(maps, 50, 37, ac);
    Tensor want = f32({3, 50, 37});
    resize_bilinear_cpu(fptr(maps), 3, 16, 8, fptr(want), 50, 37, ac);
    expect_same(got, want, "resized");
    const Tensor ref =
        at::upsample_bilinear2d(maps.to(at::kDouble).unsqueeze(1), at::IntArrayRef{50, 37}, ac).squeeze(1);
    expect_near(got, ref, 1e-5, "resized against float64");
  }
}

TEST(Dispatch, AggregateLayers) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor a = rng.rand({3, 7, 7}), b = rng.rand({3, 14, 10});
  const MapOutput r = aggregate_layers({a, b}, 64, 48);
  Tensor want = f32({3, 64, 48}), want_status = u8({3});
  const float* ptrs[] = {fptr(a), fptr(b)};
  const int64_t hs[] = {7, 14}, ws[] = {7, 10};
  aggregate_layers_cpu(ptrs, hs, ws, 2, 3, 64, 48, fptr(want), want_status.data_ptr<uint8_t>());
  expect_same(r.map, want, "map");
  expect_same(r.status, want_status, "status");
}

TEST(Dispatch, ColormapOverlay) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  constexpr int64_t H = 37, W = 50;
  const Tensor map = rng.rand({H, W}), image = rng.bytes({H, W, 3}), lut = rng.bytes({256, 3});
  Tensor want = u8({H, W, 3}), want_heat = u8({H, W, 3});
  colormap_overlay_cpu(fptr(map), image.data_ptr<uint8_t>(), H, W, lut.data_ptr<uint8_t>(), 0.3f,
                       want_heat.data_ptr<uint8_t>(), want.data_ptr<uint8_t>());
  Tensor heat;
  expect_same(colormap_overlay(map, image, lut, 0.3f, &heat), want, "overlay");
  expect_same(heat, want_heat, "heat");
  expect_same(colormap_overlay(map, image, lut.view({768}), 0.3f), want, "overlay, flat LUT, no heat");
}

// ---------------------------------------------------------------------------
// Non-contiguous inputs give the results of their contiguous copies.
// ---------------------------------------------------------------------------

// B x K x h x w views that are not contiguous.
std::vector<std::pair<std::string, Tensor>> strided_4d(Rng& rng, int64_t B, int64_t K, int64_t h, int64_t w,
                                                       at::ScalarType st) {
  return {
      {"transposed", rng.randn({B, h, K, w}).to(st).transpose(1, 2)},
      {"sliced", rng.randn({B, 2 * K, h, w + 3}).to(st).slice(1, 0, 2 * K, 2).slice(3, 1, w + 1)},
      {"channels_last", rng.randn({B, K, h, w}).to(st).contiguous(at::MemoryFormat::ChannelsLast)},
      {"batch_sliced", rng.randn({2 * B, K, h, w}).to(st).slice(0, 1, 2 * B, 2)},
  };
}

TEST(DispatchStrided, ActivationOpsEqualContiguousCopies) {
  constexpr int64_t B = 3, K = 70, h = 7, w = 9;
  for (DType d : {DType::f32, DType::f16, DType::bf16}) {
    const at::ScalarType st = scalar_type_of(d);
    Rng rng;
    SCOPED_TRACE(rng.trace());
    const auto As = strided_4d(rng, B, K, h, w, st), gs = strided_4d(rng, B, K, h, w, st);
    for (size_t i = 0; i < As.size(); ++i) {
      const Tensor& A = As[i].second;
      const Tensor g = gs[(i + 1) % gs.size()].second;  // a different layout for g
      SCOPED_TRACE(std::string(dtype_name(d)) + " A " + As[i].first + ", g " + gs[(i + 1) % gs.size()].first);
      ASSERT_FALSE(A.is_contiguous());
      ASSERT_FALSE(g.is_contiguous());
      const Tensor Ac = A.contiguous(), gc = g.contiguous();
      const MapOutput r = gradcam(A, g, 50, 37), rc = gradcam(Ac, gc, 50, 37);
      expect_same(r.map, rc.map, "gradcam map");
      expect_same(r.lowres, rc.lowres, "gradcam lowres");
      for (WeightMethod m : kWeightMethods)
        expect_same(channel_weights(A, g, m), channel_weights(Ac, gc, m), "channel_weights");
      const Tensor wk = rng.randn({B, 2 * K}).slice(1, 0, 2 * K, 2);  // strided weights too
      expect_same(weighted_sum_relu(A, wk), weighted_sum_relu(Ac, wk.contiguous()), "weighted_sum_relu");
      for (ElementwiseMethod m : kElementwiseMethods)
        expect_same(elementwise_cam(A, g, m), elementwise_cam(Ac, gc, m), "elementwise_cam");
      const Tensor A3 = A[1];  // K x h x w, not contiguous
      const Tensor input = rng.randn({40, 30, 3}).permute({2, 0, 1});  // C x H x W view of an HWC image
      expect_same(scorecam_masks(A3, 3, 40, input), scorecam_masks(A3.contiguous(), 3, 40, input.contiguous()),
                  "scorecam_masks");
    }
  }
}

TEST(DispatchStrided, MapOpsEqualContiguousCopies) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor cam = rng.randn({3, 9, 7}).relu().transpose(1, 2);  // 3 x 7 x 9
  const Tensor cam2 = rng.randn({3, 14, 20}).relu().slice(2, 0, 20, 2);  // 3 x 14 x 10
  ASSERT_FALSE(cam.is_contiguous());
  ASSERT_FALSE(cam2.is_contiguous());
  const MapOutput r = normalize_resize(cam, 64, 48), rc = normalize_resize(cam.contiguous(), 64, 48);
  expect_same(r.map, rc.map, "normalize_resize map");
  expect_same(r.lowres, rc.lowres, "normalize_resize lowres");
  expect_same(minmax_normalize(cam), minmax_normalize(cam.contiguous()), "minmax_normalize");
  expect_same(resize_bilinear(cam2, 50, 37, true), resize_bilinear(cam2.contiguous(), 50, 37, true), "resize");
  const Tensor l1 = minmax_normalize(cam), l2 = minmax_normalize(cam2);
  // The same values in column-major planes: views that are not contiguous.
  const auto column_major = [](const Tensor& t) { return t.transpose(1, 2).contiguous().transpose(1, 2); };
  ASSERT_FALSE(column_major(l1).is_contiguous());
  const MapOutput agg = aggregate_layers({column_major(l1), column_major(l2)}, 64, 48);
  expect_same(agg.map, aggregate_layers({l1, l2}, 64, 48).map, "aggregate_layers");

  const Tensor map = rng.rand({48, 64}).t();  // 64 x 48
  const Tensor image = rng.bytes({64, 96, 3}).slice(1, 0, 96, 2);  // 64 x 48 x 3, every other column
  const Tensor lut = rng.bytes({3, 256}).t();  // 256 x 3, transposed
  ASSERT_FALSE(image.is_contiguous());
  expect_same(colormap_overlay(map, image, lut, 0.5f),
              colormap_overlay(map.contiguous(), image.contiguous(), lut.contiguous(), 0.5f), "colormap_overlay");
}

// ---------------------------------------------------------------------------
// Bad arguments: c10::Error naming the problem.
// ---------------------------------------------------------------------------

class DispatchErrors : public testing::Test {
 protected:
  Rng rng;
  const Tensor A = rng.randn({3, 70, 7, 9}), g = rng.randn({3, 70, 7, 9});
};

TEST_F(DispatchErrors, ActivationOpsCheckRankShapeAndDtype) {
  const Tensor A3 = A.flatten(2), g3 = g.flatten(2);  // B x K x hw
  const Tensor g_small = rng.randn({3, 70, 7, 8}), g_batch = rng.randn({2, 70, 7, 9});
  const Tensor g_half = g.to(at::kHalf), Ai = A.to(at::kInt), gi = g.to(at::kInt);
  const Tensor Ad = A.to(at::kDouble), gd = g.to(at::kDouble), empty = rng.randn({0, 70, 7, 9});
  using Op = std::function<void(const Tensor&, const Tensor&)>;
  const std::vector<std::pair<std::string, Op>> ops = {
      {"gradcam", [](const Tensor& a, const Tensor& b) { gradcam(a, b, 224, 224); }},
      {"channel_weights", [](const Tensor& a, const Tensor& b) { channel_weights(a, b, WeightMethod::gradcampp); }},
      {"elementwise_cam",
       [](const Tensor& a, const Tensor& b) { elementwise_cam(a, b, ElementwiseMethod::layercam); }},
  };
  for (const auto& [name, op] : ops) {
    expect_error(name + ", 3-D activations", [&] { op(A3, g3); }, {"activations", "B x K x h x w", "[3, 70, 63]"});
    expect_error(name + ", shape mismatch", [&] { op(A, g_small); },
                 {"activations", "gradients", "differ in shape", "[3, 70, 7, 9]", "[3, 70, 7, 8]"});
    expect_error(name + ", batch mismatch", [&] { op(A, g_batch); }, {"differ in shape"});
    expect_error(name + ", dtype mismatch", [&] { op(A, g_half); }, {"differ in dtype", "Float", "Half"});
    expect_error(name + ", int tensors", [&] { op(Ai, gi); }, {"float32, float16 or bfloat16", "Int"});
    expect_error(name + ", float64 tensors", [&] { op(Ad, gd); }, {"float32, float16 or bfloat16", "Double"});
    expect_error(name + ", empty", [&] { op(empty, empty); }, {"empty"});
  }
  expect_error("gradcam, zero output height", [&] { gradcam(A, g, 0, 224); },
               {"output size must be positive", "0 x 224"});
  expect_error("gradcam, negative output width", [&] { gradcam(A, g, 224, -1); }, {"output size must be positive"});
}

TEST_F(DispatchErrors, WeightedSumChecksWeights) {
  expect_error("weights of the wrong K", [&] { weighted_sum_relu(A, rng.randn({3, 69})); },
               {"weights must be B x K", "3 x 70", "[3, 69]"});
  expect_error("weights of the wrong B", [&] { weighted_sum_relu(A, rng.randn({2, 70})); }, {"weights must be B x K"});
  expect_error("1-D weights", [&] { weighted_sum_relu(A, rng.randn({210})); }, {"weights must be B x K"});
  expect_error("3-D activations", [&] { weighted_sum_relu(A.flatten(2), rng.randn({3, 70})); },
               {"activations", "B x K x h x w"});
  expect_error("int activations", [&] { weighted_sum_relu(A.to(at::kInt), rng.randn({3, 70})); },
               {"float32, float16 or bfloat16", "Int"});
}

TEST_F(DispatchErrors, MapOpsCheckRankAndOutputSize) {
  const Tensor cam = rng.rand({3, 7, 9});
  expect_error("normalize_resize, 4-D map", [&] { normalize_resize(cam.unsqueeze(1), 64, 48); },
               {"map must be B x h x w", "[3, 1, 7, 9]"});
  expect_error("normalize_resize, empty map", [&] { normalize_resize(rng.rand({3, 0, 9}), 64, 48); },
               {"map must be B x h x w"});
  expect_error("normalize_resize, zero output size", [&] { normalize_resize(cam, 64, 0); },
               {"output size must be positive", "64 x 0"});
  expect_error("minmax_normalize, 1-D", [&] { minmax_normalize(rng.rand({9})); }, {"maps must be B x ..."});
  expect_error("resize_bilinear, 2-D", [&] { resize_bilinear(cam[0], 64, 48, false); }, {"maps must be B x h x w"});
  expect_error("resize_bilinear, zero output size", [&] { resize_bilinear(cam, 0, 0, true); },
               {"output size must be positive"});
  expect_error("aggregate_layers, no layers", [&] { aggregate_layers({}, 64, 48); }, {"at least one layer"});
  expect_error("aggregate_layers, different B", [&] { aggregate_layers({cam, rng.rand({2, 14, 14})}, 64, 48); },
               {"same B"});
  expect_error("aggregate_layers, 2-D layer", [&] { aggregate_layers({cam, cam[0]}, 64, 48); },
               {"B x h x w"});
  expect_error("aggregate_layers, zero output size", [&] { aggregate_layers({cam}, 0, 48); },
               {"output size must be positive"});
}

TEST_F(DispatchErrors, ScoreCamMasksChecksChannelRangeAndRanks) {
  const Tensor acts = rng.randn({70, 7, 9}), input = rng.randn({3, 50, 37});
  expect_error("k1 > K", [&] { scorecam_masks(acts, 64, 71, input); }, {"channel range", "[64, 71)", "70"});
  expect_error("k0 < 0", [&] { scorecam_masks(acts, -1, 5, input); }, {"channel range", "[-1, 5)"});
  expect_error("empty range", [&] { scorecam_masks(acts, 5, 5, input); }, {"channel range", "[5, 5)"});
  expect_error("reversed range", [&] { scorecam_masks(acts, 9, 5, input); }, {"channel range"});
  expect_error("4-D activations", [&] { scorecam_masks(acts.unsqueeze(0), 0, 1, input); },
               {"activations must be K x h x w", "one sample"});
  expect_error("4-D input", [&] { scorecam_masks(acts, 0, 1, input.unsqueeze(0)); }, {"input must be C x H x W"});
  expect_error("int activations", [&] { scorecam_masks(acts.to(at::kInt), 0, 1, input); },
               {"float32, float16 or bfloat16", "Int"});
}

TEST_F(DispatchErrors, ColormapOverlayChecksImageLutAndWeight) {
  const Tensor map = rng.rand({37, 50}), image = rng.bytes({37, 50, 3}), lut = rng.bytes({256, 3});
  expect_error("image of another size", [&] { colormap_overlay(map, rng.bytes({37, 51, 3}), lut, 0.5f); },
               {"image must be H x W x 3 uint8 matching the map", "[37, 51, 3]"});
  expect_error("image of another height", [&] { colormap_overlay(map, rng.bytes({36, 50, 3}), lut, 0.5f); },
               {"matching the map"});
  expect_error("RGBA image", [&] { colormap_overlay(map, rng.bytes({37, 50, 4}), lut, 0.5f); },
               {"H x W x 3"});
  expect_error("float image", [&] { colormap_overlay(map, image.to(at::kFloat), lut, 0.5f); }, {"uint8", "Float"});
  expect_error("3-D map", [&] { colormap_overlay(map.unsqueeze(0), image, lut, 0.5f); }, {"map must be H x W"});
  expect_error("short LUT", [&] { colormap_overlay(map, image, rng.bytes({255, 3}), 0.5f); },
               {"lut must be 256 x 3 uint8"});
  expect_error("float LUT", [&] { colormap_overlay(map, image, lut.to(at::kFloat), 0.5f); },
               {"lut must be 256 x 3 uint8"});
  for (float a : {-0.1f, 1.5f, std::numeric_limits<float>::quiet_NaN()})
    expect_error("image weight " + std::to_string(a), [&] { colormap_overlay(map, image, lut, a); },
                 {"image weight must be in [0, 1]"});
}

// Tensors that are not on the CPU (meta tensors, which every build has).
TEST_F(DispatchErrors, DevicesAreChecked) {
  const Tensor A_meta = at::empty({3, 70, 7, 9}, at::TensorOptions().device(at::kMeta));
  expect_error("gradients on another device", [&] { gradcam(A, A_meta, 64, 48); }, {"different devices"});
  expect_error("weights on another device",
               [&] { weighted_sum_relu(A, at::empty({3, 70}, at::TensorOptions().device(at::kMeta))); },
               {"different devices"});
  expect_error("input on another device",
               [&] { scorecam_masks(A[0], 0, 4, at::empty({3, 8, 8}, at::TensorOptions().device(at::kMeta))); },
               {"different devices"});
  if (!cuda_kernels_built())
    expect_error("meta tensors", [&] { channel_weights(A_meta, A_meta, WeightMethod::gradcam); }, {"meta"});
}

// Activation planes of size 0 must be refused: the bilinear taps of an empty
// axis index element -1. Run in a child process so that a crash fails the
// test instead of the binary (the threadsafe style re-executes the binary,
// so no OpenMP pool is forked).
[[noreturn]] void exit_with_error_kind(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error&) {
    std::exit(0);
  } catch (...) {
    std::exit(2);
  }
  std::exit(1);  // returned normally
}

TEST(DispatchErrorsDeathTest, ScoreCamMasksRefusesEmptyActivationPlanes) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const auto call = [](int64_t h, int64_t w) {
    return [h, w] { scorecam_masks(at::randn({8, h, w}), 0, 4, at::randn({3, 32, 32})); };
  };
  EXPECT_EXIT(exit_with_error_kind(call(0, 7)), testing::ExitedWithCode(0), "")
      << "K x 0 x 7 activations: expected c10::Error (exit 0); 1 = no error, 2 = another exception, signal = crash";
  EXPECT_EXIT(exit_with_error_kind(call(7, 0)), testing::ExitedWithCode(0), "") << "K x 7 x 0 activations";
}

TEST(DispatchErrorsDeathTest, AggregateLayersRefusesEmptyLayerMaps) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(exit_with_error_kind([] { aggregate_layers({at::rand({3, 7, 7}), at::rand({3, 0, 14})}, 64, 48); }),
              testing::ExitedWithCode(0), "")
      << "a 3 x 0 x 14 layer: expected c10::Error (exit 0); 1 = no error, 2 = another exception, signal = crash";
}

}  // namespace

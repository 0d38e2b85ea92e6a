// Tests of the CPU map kernels (kernels/cpu/*.cpp) against float64 ATen
// references (SPEC sections 1, 2 and 4). STYLE.md: TEST_P over named shapes,
// fresh random inputs every test, outputs poisoned before the kernel runs and
// every element checked, guard zones around every output, relative-norm
// comparison with float64. Activations and gradients may be float32, float16
// or bfloat16: the half cases round float32 randoms to the input type and
// compute the float64 reference from the same rounded values.
//
// Every failure prints the seed; XCAM_TEST_SEED=<n> replays a run.
#include <torch/script.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "xcam/kernels/cam_math.h"
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

constexpr double kRelTol = 1e-5;       // ||x - ref|| / ||ref|| per sample
constexpr double kAbsTolUnit = 1e-4;   // max |x - ref| on maps in [0, 1]
constexpr double kRefEps = 1e-7;       // SPEC 1.5
constexpr int64_t kMaxElements = 30'000'000;  // B*K*h*w cap: the suite stays well under 60 s

// ---------------------------------------------------------------------------
// Threads: ATen's first parallel op on a thread calls omp_set_num_threads with
// its own intra-op default (1 on a 2-vCPU VM where cpuinfo counts one core), so
// after the first reference computation the kernels would run single-threaded
// and the multi-chunk path would go untested. Run every kernel with at least
// two threads; the count OpenMP had before ATen ran is kept if larger.
// ---------------------------------------------------------------------------

const int kStartupThreads = omp_get_max_threads();  // static init: before any ATen op
int kernel_threads() { return std::max(2, kStartupThreads); }

class KernelThreads : public testing::Environment {
 public:
  void SetUp() override {
    (void)at::get_num_threads();             // ATen's lazy thread init, now
    (void)at::ones({1 << 20}).sum().item<float>();
    omp_set_num_threads(kernel_threads());  // ATen's ops follow it (OpenMP backend)
  }
};
testing::Environment* const kKernelThreadsEnv = testing::AddGlobalTestEnvironment(new KernelThreads);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// An output buffer poisoned before the kernel runs, with poisoned guard zones
// on both sides to catch writes out of bounds.
template <typename T>
class Guarded {
 public:
  static constexpr int64_t kGuard = 64;
  Guarded(int64_t n, T poison) : n_(n), buf_(static_cast<size_t>(n + 2 * kGuard), poison), poison_(poison) {}
  T* data() { return buf_.data() + kGuard; }
  const T* data() const { return buf_.data() + kGuard; }
  int64_t size() const { return n_; }
  T operator[](int64_t i) const { return data()[i]; }
  bool guards_intact() const {
    for (int64_t i = 0; i < kGuard; ++i) {
      if (!same_bits(buf_[i], poison_) || !same_bits(buf_[kGuard + n_ + i], poison_)) return false;
    }
    return true;
  }
  // A copy as a tensor of `shape` (float32 or uint8).
  Tensor tensor(at::IntArrayRef shape) const {
    const auto dtype = std::is_same_v<T, float> ? at::kFloat : at::kByte;
    return at::from_blob(const_cast<T*>(data()), shape, at::TensorOptions().dtype(dtype)).clone();
  }

 private:
  static bool same_bits(T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; }
  int64_t n_;
  std::vector<T> buf_;
  T poison_;
};

const float* fptr(const Tensor& t) { return t.data_ptr<float>(); }

// got (float32) against ref (float64), same shape, dim 0 = samples. Every
// element must have been written (outputs start as NaN) and be finite; each
// sample must match by relative norm; maps in [0, 1] also by max abs error
// and range. Samples where `skip` is true are not compared.
void expect_near_ref(const Tensor& got, const Tensor& ref, bool unit_range, const std::string& what,
                     const std::vector<bool>& skip = {}) {
  ASSERT_EQ(got.sizes(), ref.sizes()) << what;
  const Tensor g = got.to(at::kDouble);
  const int64_t unwritten = (~at::isfinite(g)).sum().item<int64_t>();
  EXPECT_EQ(unwritten, 0) << what << ": " << unwritten << " of " << g.numel()
                          << " elements are NaN/Inf (never written, or not finite)";
  if (unwritten != 0) return;
  for (int64_t b = 0; b < g.size(0); ++b) {
    if (!skip.empty() && skip[static_cast<size_t>(b)]) continue;
    const Tensor d = g[b] - ref[b];
    const double diff = d.norm().item<double>(), norm = ref[b].norm().item<double>();
    EXPECT_LE(diff, kRelTol * norm) << what << ", sample " << b << ": relative error "
                                    << (norm > 0 ? diff / norm : diff) << " (||ref|| = " << norm << ")";
    if (unit_range) {
      const double max_abs = d.abs().max().item<double>();
      EXPECT_LT(max_abs, kAbsTolUnit) << what << ", sample " << b << ": max abs error";
      EXPECT_GE(g[b].min().item<double>(), 0.0) << what << ", sample " << b;
      EXPECT_LE(g[b].max().item<double>(), 1.0) << what << ", sample " << b;
    }
  }
}

// Per-sample (x - min) / (max - min + 1e-7) in float64 over all dims but the first.
Tensor minmax_ref(const Tensor& x) {
  const auto flat = x.reshape({x.size(0), -1});
  const auto lo = std::get<0>(flat.min(1, true)), hi = std::get<0>(flat.max(1, true));
  return ((flat - lo) / (hi - lo + kRefEps)).view(x.sizes());
}

// Samples whose map is constant (max == min) in float64.
std::vector<uint8_t> constant_status_ref(const Tensor& x) {
  const auto flat = x.reshape({x.size(0), -1});
  const auto range = (std::get<0>(flat.max(1)) - std::get<0>(flat.min(1))).contiguous();
  std::vector<uint8_t> st(static_cast<size_t>(x.size(0)));
  for (int64_t b = 0; b < x.size(0); ++b) st[b] = range[b].item<double>() == 0.0 ? kCamConstant : kCamOk;
  return st;
}

// Bilinear resize of B x h x w float64 maps.
Tensor resize_ref(const Tensor& x, int64_t H, int64_t W, bool align_corners) {
  return at::upsample_bilinear2d(x.unsqueeze(1), at::IntArrayRef{H, W}, align_corners).squeeze(1);
}

void expect_status(const Guarded<uint8_t>& got, const std::vector<uint8_t>& want, const std::string& what) {
  EXPECT_TRUE(got.guards_intact()) << what << ": status written out of bounds";
  for (size_t b = 0; b < want.size(); ++b)
    EXPECT_EQ(int{got[static_cast<int64_t>(b)]}, int{want[b]}) << what << ", sample " << b
                                                               << " (0 ok, 1 constant, 2 non-finite)";
}

// Sets the OpenMP thread count for a scope.
class OmpThreads {
 public:
  explicit OmpThreads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~OmpThreads() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

template <typename T>
bool same_bits(const Guarded<T>& a, const Guarded<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(T) * a.size()) == 0;
}

// ---------------------------------------------------------------------------
// Grad-CAM
// ---------------------------------------------------------------------------

std::vector<CamCase> gradcam_cases() {
  std::vector<CamCase> cases;
  for (int64_t B : {1, 3, 16})
    for (int64_t K : {1, 7, 64, 512, 2048})
      for (const auto& g : kCamGrids)
        if (B * K * g[0] * g[1] <= kMaxElements) cases.push_back({B, K, g[0], g[1], g[2], g[3]});
  return cases;
}

struct CamResult {
  Guarded<float> lowres, out;
  Guarded<uint8_t> status;
};

CamResult run_gradcam(const Tensor& A, const Tensor& g, int64_t H, int64_t W, bool with_lowres = true) {
  const CamShape s{A.size(0), A.size(1), A.size(2), A.size(3)};
  CamResult r{Guarded<float>(s.batch * s.height * s.width, kNaN), Guarded<float>(s.batch * H * W, kNaN),
              Guarded<uint8_t>(s.batch, 0xEE)};
  gradcam_cpu(fptr(A), fptr(g), s, H, W, with_lowres ? r.lowres.data() : nullptr, r.out.data(), r.status.data());
  return r;
}

struct CamRef {
  Tensor cam, lowres, out;  // cam: relu(sum_k w_k A_k) before normalisation
  std::vector<uint8_t> status;
};

// SPEC 1-2 in float64: w_k = mean_s g_k; cam = relu(sum_k w_k A_k); per-sample
// min-max; bilinear (half-pixel) resize.
CamRef gradcam_ref(const Tensor& A32, const Tensor& g32, int64_t H, int64_t W) {
  const int64_t B = A32.size(0), K = A32.size(1), h = A32.size(2), w = A32.size(3);
  const Tensor A = A32.to(at::kDouble), g = g32.to(at::kDouble);
  const Tensor wk = g.mean({2, 3});                                                  // B x K
  const Tensor cam = at::bmm(wk.view({B, 1, K}), A.view({B, K, h * w})).view({B, h, w}).relu();
  CamRef r;
  r.cam = cam;
  r.lowres = minmax_ref(cam);
  r.out = resize_ref(r.lowres, H, W, /*align_corners=*/false);
  r.status = constant_status_ref(cam);
  return r;
}

class GradCamShapes : public testing::TestWithParam<CamCase> {};

TEST_P(GradCamShapes, MatchesFloat64Reference) {
  const CamCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  // Zero-mean activations and gradients: the relu clips part of most maps
  // (mostly-positive activations often give all-negative, i.e. constant, maps).
  const Tensor A = rng.randn({c.B, c.K, c.h, c.w});
  const Tensor g = rng.randn({c.B, c.K, c.h, c.w});

  const CamResult r = run_gradcam(A, g, c.H, c.W);
  const CamRef ref = gradcam_ref(A, g, c.H, c.W);

  EXPECT_TRUE(r.lowres.guards_intact()) << "lowres written out of bounds";
  EXPECT_TRUE(r.out.guards_intact()) << "out written out of bounds";
  expect_status(r.status, ref.status, "status");
  expect_near_ref(r.lowres.tensor({c.B, c.h, c.w}), ref.lowres, true, "lowres");
  expect_near_ref(r.out.tensor({c.B, c.H, c.W}), ref.out, true, "out");
}

INSTANTIATE_TEST_SUITE_P(Kernels, GradCamShapes, testing::ValuesIn(gradcam_cases()), param_name<CamCase>);

TEST(GradCam, LowresIsOptional) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({3, 64, 14, 14}), g = rng.randn({3, 64, 14, 14});
  const CamResult with = run_gradcam(A, g, 100, 130, true);
  const CamResult without = run_gradcam(A, g, 100, 130, false);
  EXPECT_TRUE(without.out.guards_intact());
  EXPECT_TRUE(same_bits(with.out, without.out)) << "out differs when lowres is null";
  EXPECT_TRUE(same_bits(with.status, without.status));
  for (int64_t i = 0; i < without.lowres.size(); ++i)
    ASSERT_TRUE(std::isnan(without.lowres[i])) << "lowres == nullptr, yet the buffer was written";
}

// Small maps: the 1e-7 of the normalisation is then a visible fraction of the
// range, so this pins eps = 1e-7 and w_k = MEAN (not sum) of the gradients,
// which a min-max normalised map is otherwise blind to.
TEST(GradCam, SmallRangeMapsKeepTheSpecEpsilon) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({3, 64, 7, 7});
  const Tensor g = rng.randn({3, 64, 7, 7}) * 2e-5f;  // cam range ~1e-5
  const CamResult r = run_gradcam(A, g, 50, 37);
  const CamRef ref = gradcam_ref(A, g, 50, 37);
  const double range = (ref.cam.amax({1, 2}) - ref.cam.amin({1, 2})).min().item<double>();
  ASSERT_LT(range, 1e-4) << "the test needs maps whose range is comparable to eps";
  expect_status(r.status, ref.status, "status");
  expect_near_ref(r.lowres.tensor({3, 7, 7}), ref.lowres, true, "lowres");
  expect_near_ref(r.out.tensor({3, 50, 37}), ref.out, true, "out");
}

// --- degenerate inputs: the affected sample comes out all zeros with its
// status bit; the other samples of the batch are unaffected and correct.

constexpr int64_t kDegB = 3, kDegK = 64, kDegH = 7, kDegW = 7, kDegOutH = 224, kDegOutW = 224;

// Grad-CAM of A, g at kDegOutH x kDegOutW: `bad_sample` comes out all zeros
// with `bad_status` (`kind` names it in messages); the other samples, if any,
// match the float64 reference.
void expect_zeroed_sample(const Tensor& A, const Tensor& g, int64_t bad_sample, uint8_t bad_status,
                          const std::string& kind) {
  const int64_t B = A.size(0), h = A.size(2), w = A.size(3);
  const CamResult r = run_gradcam(A, g, kDegOutH, kDegOutW);
  std::vector<uint8_t> want(static_cast<size_t>(B), kCamOk);
  want[bad_sample] = bad_status;
  expect_status(r.status, want, "status");
  EXPECT_TRUE(r.lowres.guards_intact());
  EXPECT_TRUE(r.out.guards_intact());

  const Tensor low = r.lowres.tensor({B, h, w}), out = r.out.tensor({B, kDegOutH, kDegOutW});
  // The bad sample: exact zeros (also: no NaN).
  EXPECT_EQ(at::count_nonzero(low[bad_sample]).item<int64_t>(), 0) << "lowres of the " << kind << " sample";
  EXPECT_EQ(at::count_nonzero(out[bad_sample]).item<int64_t>(), 0) << "out of the " << kind << " sample";
  // The others: correct.
  if (B > 1) {
    const CamRef ref = gradcam_ref(A, g, kDegOutH, kDegOutW);
    std::vector<bool> skip(static_cast<size_t>(B), false);
    skip[bad_sample] = true;
    expect_near_ref(low, ref.lowres, true, "lowres", skip);
    expect_near_ref(out, ref.out, true, "out", skip);
  }
}

void expect_degenerate(const Tensor& A, const Tensor& g, int64_t bad_sample, uint8_t bad_status) {
  expect_zeroed_sample(A, g, bad_sample, bad_status, "degenerate");
}

TEST(GradCamDegenerate, ZeroGradientsGiveZeroMap) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({kDegB, kDegK, kDegH, kDegW});
  Tensor g = rng.randn({kDegB, kDegK, kDegH, kDegW});
  g[1].zero_();
  expect_degenerate(A, g, 1, kCamConstant);
}

TEST(GradCamDegenerate, ConstantGradientsAndFlatActivationsGiveZeroMap) {
  // g constant everywhere and each A_k spatially constant: sum_k w_k A_k is
  // the same at every position (positive here, so relu keeps it).
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor A = rng.randn({kDegB, kDegK, kDegH, kDegW});
  Tensor g = rng.randn({kDegB, kDegK, kDegH, kDegW});
  A[2].copy_((rng.rand({kDegK, 1, 1}) + 0.1f).expand({kDegK, kDegH, kDegW}));
  g[2].fill_(0.25f);
  expect_degenerate(A, g, 2, kCamConstant);
}

TEST(GradCamDegenerate, AllNegativeWeightedSumGivesZeroMap) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor A = rng.randn({kDegB, kDegK, kDegH, kDegW});
  Tensor g = rng.randn({kDegB, kDegK, kDegH, kDegW});
  A[0].copy_(rng.rand({kDegK, kDegH, kDegW}) + 0.1f);     // positive activations
  g[0].copy_(-(rng.rand({kDegK, kDegH, kDegW}) + 0.1f));  // every w_k < 0
  expect_degenerate(A, g, 0, kCamConstant);
}

TEST(GradCamDegenerate, BatchOfOneConstant) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.rand({1, 512, 7, 7}) + 0.1f;
  const Tensor g = -(rng.rand({1, 512, 7, 7}) + 0.1f);
  const CamResult r = run_gradcam(A, g, 224, 224);
  expect_status(r.status, {kCamConstant}, "status");
  EXPECT_EQ(at::count_nonzero(r.out.tensor({224 * 224})).item<int64_t>(), 0);
  EXPECT_EQ(at::count_nonzero(r.lowres.tensor({49})).item<int64_t>(), 0);
}

struct PlantCase {
  bool in_gradients;  // else in the activations
  float value;        // NaN, +Inf or -Inf
  int64_t B, sample;
  bool last_channel;  // plant in channel K-1 (the last channel chunk) rather than 0
  bool zero_weight;   // the planted channel has all-zero gradients (w_k = 0)
};
std::ostream& operator<<(std::ostream& os, const PlantCase& p) {
  os << (std::isnan(p.value) ? "NaN" : (p.value > 0 ? "PosInf" : "NegInf")) << "_in_"
     << (p.in_gradients ? "g" : "A") << "_B" << p.B << "_sample" << p.sample << "_channel"
     << (p.last_channel ? "Last" : "First");
  if (p.zero_weight) os << "_zero_weight";
  return os;
}

std::vector<PlantCase> plant_cases() {
  std::vector<PlantCase> cases;
  for (bool in_g : {false, true})
    for (float v : {kNaN, kInf, -kInf})
      for (bool last : {false, true}) {
        cases.push_back({in_g, v, 3, 1, last, false});
        cases.push_back({in_g, v, 1, 0, last, false});
      }
  // Inf * 0 in the weighted sum: an activation Inf in a channel whose weight is 0.
  cases.push_back({false, kInf, 3, 2, true, true});
  return cases;
}

class GradCamNonFinite : public testing::TestWithParam<PlantCase> {};

TEST_P(GradCamNonFinite, FlagsOnlyThatSampleAndZeroesIt) {
  const PlantCase p = GetParam();
  constexpr int64_t K = 64, h = 7, w = 7;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor A = rng.randn({p.B, K, h, w});
  Tensor g = rng.randn({p.B, K, h, w});
  const int64_t k = p.last_channel ? K - 1 : 0;
  if (p.zero_weight) g[p.sample][k].zero_();
  const int64_t pos = rng.index(h * w);
  Tensor& t = p.in_gradients ? g : A;
  t[p.sample][k].view({-1})[pos] = p.value;

  expect_zeroed_sample(A, g, p.sample, kCamNonFinite, "non-finite");
}

INSTANTIATE_TEST_SUITE_P(Kernels, GradCamNonFinite, testing::ValuesIn(plant_cases()), param_name<PlantCase>);

// ---------------------------------------------------------------------------
// minmax_normalize_cpu
// ---------------------------------------------------------------------------

std::vector<NormCase> norm_cases() {
  std::vector<NormCase> cases;
  for (int64_t B : {1, 3, 16})
    for (const auto& hw : std::vector<std::array<int64_t, 2>>{{1, 1}, {7, 7}, {16, 8}, {24, 36}, {56, 56}, {224, 224}})
      cases.push_back({B, hw[0], hw[1]});
  return cases;
}

// A copy of the float32 tensor x in a guarded buffer.
Guarded<float> guarded_copy(const Tensor& x) {
  Guarded<float> buf(x.numel(), kNaN);
  std::memcpy(buf.data(), fptr(x), sizeof(float) * static_cast<size_t>(x.numel()));
  return buf;
}

class MinMaxNormalizeShapes : public testing::TestWithParam<NormCase> {};

TEST_P(MinMaxNormalizeShapes, MatchesFloat64Reference) {
  const NormCase c = GetParam();
  const int64_t n = c.h * c.w;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor x = rng.randn({c.B, c.h, c.w}) * 3.f + 1.f;
  Guarded<float> buf = guarded_copy(x);
  Guarded<uint8_t> status(c.B, 0xEE);
  minmax_normalize_cpu(buf.data(), c.B, n, status.data());

  EXPECT_TRUE(buf.guards_intact());
  expect_status(status, constant_status_ref(x.to(at::kDouble)), "status");
  expect_near_ref(buf.tensor({c.B, c.h, c.w}), minmax_ref(x.to(at::kDouble)), true, "normalised");

  // status may be null; the values are the same.
  Guarded<float> again = guarded_copy(x);
  minmax_normalize_cpu(again.data(), c.B, n, nullptr);
  EXPECT_TRUE(same_bits(buf, again)) << "result differs with status == nullptr";
}

INSTANTIATE_TEST_SUITE_P(Kernels, MinMaxNormalizeShapes, testing::ValuesIn(norm_cases()), param_name<NormCase>);

// Range ~1e-5: eps = 1e-7 shifts the maximum by ~1%, so a wrong eps shows.
TEST(MinMaxNormalize, SmallRangeKeepsTheSpecEpsilon) {
  constexpr int64_t B = 4, n = 1000;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor x = rng.randn({B, n}) * 2e-6f;
  Guarded<float> buf = guarded_copy(x);
  minmax_normalize_cpu(buf.data(), B, n, nullptr);
  expect_near_ref(buf.tensor({B, n}), minmax_ref(x.to(at::kDouble)), true, "normalised");
}

TEST(MinMaxNormalize, DegenerateRowsAreZeroedAndFlaggedPerSample) {
  constexpr int64_t B = 7, n = 50;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor x = rng.randn({B, n});
  x[1].fill_(3.5f);                            // constant
  x[2].view({-1})[rng.index(n)] = kNaN;        // NaN
  x[3].view({-1})[rng.index(n)] = kInf;        // +Inf
  x[4].view({-1})[rng.index(n)] = -kInf;       // -Inf
  x[5].zero_();                                // constant zero (e.g. all-negative cam after relu)
  Guarded<float> buf = guarded_copy(x);
  Guarded<uint8_t> status(B, 0xEE);
  minmax_normalize_cpu(buf.data(), B, n, status.data());

  expect_status(status, {kCamOk, kCamConstant, kCamNonFinite, kCamNonFinite, kCamNonFinite, kCamConstant, kCamOk},
                "status");
  const Tensor got = buf.tensor({B, n});
  for (int64_t b : {1, 2, 3, 4, 5})
    EXPECT_EQ(at::count_nonzero(got[b]).item<int64_t>(), 0) << "sample " << b << " must be all zeros";
  EXPECT_EQ((~at::isfinite(got)).sum().item<int64_t>(), 0) << "NaN/Inf in the output";
  std::vector<bool> skip = {false, true, true, true, true, true, false};
  expect_near_ref(got, minmax_ref(x.to(at::kDouble)), true, "normalised", skip);
}

// ---------------------------------------------------------------------------
// resize_bilinear_cpu
// ---------------------------------------------------------------------------

std::vector<ResizeCase> resize_cases() {
  const std::vector<std::array<int64_t, 4>> sizes = {
      {1, 1, 224, 224},  {7, 7, 224, 224},  {14, 14, 224, 224}, {16, 8, 50, 37},
      {24, 36, 100, 130}, {56, 56, 20, 30}, {7, 7, 1, 1},       {5, 9, 5, 9},   // identity
      {1, 9, 4, 20},     {14, 14, 7, 3}};
  std::vector<ResizeCase> cases;
  for (int64_t B : {1, 3, 16})
    for (const auto& s : sizes)
      for (bool ac : {false, true}) cases.push_back({B, s[0], s[1], s[2], s[3], ac});
  return cases;
}

class ResizeBilinearShapes : public testing::TestWithParam<ResizeCase> {};

TEST_P(ResizeBilinearShapes, MatchesFloat64Reference) {
  const ResizeCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor x = rng.randn({c.B, c.h, c.w}) + 0.5f;
  Guarded<float> out(c.B * c.H * c.W, kNaN);
  resize_bilinear_cpu(fptr(x), c.B, c.h, c.w, out.data(), c.H, c.W, c.align_corners);
  EXPECT_TRUE(out.guards_intact());
  expect_near_ref(out.tensor({c.B, c.H, c.W}), resize_ref(x.to(at::kDouble), c.H, c.W, c.align_corners), false,
                  "resized");
}

INSTANTIATE_TEST_SUITE_P(Kernels, ResizeBilinearShapes, testing::ValuesIn(resize_cases()), param_name<ResizeCase>);

// ---------------------------------------------------------------------------
// aggregate_layers_cpu
// ---------------------------------------------------------------------------

std::vector<AggCase> agg_cases() {
  const std::vector<AggCase> base = {
      {0, {{7, 7}, {14, 14}}, 224, 224},
      {0, {{7, 7}, {14, 14}, {28, 28}}, 224, 224},
      {0, {{24, 36}, {12, 18}, {6, 9}}, 100, 130},
      {0, {{56, 56}, {28, 28}}, 20, 30},
      {0, {{16, 8}, {1, 1}}, 50, 37},
  };
  std::vector<AggCase> cases;
  for (int64_t B : {1, 3, 16})
    for (AggCase c : base) {
      c.B = B;
      cases.push_back(c);
    }
  return cases;
}

// Normalised B x h x w maps, as the per-layer Grad-CAM produces them.
Tensor normalized_maps(Rng& rng, int64_t B, int64_t h, int64_t w) {
  return minmax_ref(rng.randn({B, h, w}).to(at::kDouble)).to(at::kFloat).contiguous();
}

struct AggResult {
  Guarded<float> out;
  Guarded<uint8_t> status;
};

// aggregate_layers_cpu of B x h_l x w_l float32 maps (contiguous) to H x W.
AggResult run_aggregate(const std::vector<Tensor>& maps, int64_t B, int64_t H, int64_t W) {
  std::vector<const float*> ptrs;
  std::vector<int64_t> hs, ws;
  for (const Tensor& m : maps) {
    ptrs.push_back(fptr(m));
    hs.push_back(m.size(1));
    ws.push_back(m.size(2));
  }
  AggResult r{Guarded<float>(B * H * W, kNaN), Guarded<uint8_t>(B, 0xEE)};
  aggregate_layers_cpu(ptrs.data(), hs.data(), ws.data(), static_cast<int64_t>(maps.size()), B, H, W, r.out.data(),
                       r.status.data());
  return r;
}

class AggregateLayersShapes : public testing::TestWithParam<AggCase> {};

TEST_P(AggregateLayersShapes, MatchesFloat64Reference) {
  const AggCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  std::vector<Tensor> maps;
  for (const auto& g : c.grids) maps.push_back(normalized_maps(rng, c.B, g[0], g[1]));
  const auto [out, status] = run_aggregate(maps, c.B, c.H, c.W);

  // SPEC 1.7: resize each normalised map, stack, relu, mean, min-max.
  std::vector<Tensor> resized;
  for (const auto& m : maps) resized.push_back(resize_ref(m.to(at::kDouble), c.H, c.W, false));
  const Tensor mean = at::stack(resized).relu().mean(0);
  EXPECT_TRUE(out.guards_intact());
  expect_status(status, constant_status_ref(mean), "status");
  expect_near_ref(out.tensor({c.B, c.H, c.W}), minmax_ref(mean), true, "aggregated");
}

INSTANTIATE_TEST_SUITE_P(Kernels, AggregateLayersShapes, testing::ValuesIn(agg_cases()), param_name<AggCase>);

// The relu of the formula is a no-op on normalised maps; pin it with maps that
// have negative values (the header's formula holds for any input).
TEST(AggregateLayers, RelusEachResizedLayer) {
  constexpr int64_t B = 3, H = 100, W = 130;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor a = rng.randn({B, 7, 7}), b = rng.randn({B, 24, 36});
  const auto [out, status] = run_aggregate({a, b}, B, H, W);
  const Tensor mean = at::stack({resize_ref(a.to(at::kDouble), H, W, false), resize_ref(b.to(at::kDouble), H, W, false)})
                          .relu()
                          .mean(0);
  EXPECT_TRUE(out.guards_intact());
  expect_status(status, constant_status_ref(mean), "status");
  expect_near_ref(out.tensor({B, H, W}), minmax_ref(mean), true, "aggregated");
}

TEST(AggregateLayers, ConstantLayersGiveZeroMap) {
  constexpr int64_t B = 3, H = 64, W = 48;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor a = normalized_maps(rng, B, 7, 7);
  Tensor b = normalized_maps(rng, B, 14, 14);
  a[1].zero_();  // both layers of sample 1 were constant maps (zeros after normalisation)
  b[1].zero_();
  const auto [out, status] = run_aggregate({a, b}, B, H, W);
  expect_status(status, {kCamOk, kCamConstant, kCamOk}, "status");
  const Tensor got = out.tensor({B, H, W});
  EXPECT_EQ(at::count_nonzero(got[1]).item<int64_t>(), 0);
  EXPECT_EQ((~at::isfinite(got)).sum().item<int64_t>(), 0);
}

// SPEC 1.8: NaN is reported per sample, never silently dropped. A NaN in one
// layer's map must flag that sample kCamNonFinite (and zero it), as
// minmax_normalize_cpu does, not be turned into 0 by the relu.
TEST(AggregateLayers, NaNInALayerMapIsFlaggedNotMasked) {
  constexpr int64_t B = 3, H = 64, W = 48;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor a = normalized_maps(rng, B, 7, 7);
  Tensor b = normalized_maps(rng, B, 14, 14);
  b[2].view({-1})[rng.index(14 * 14)] = kNaN;
  const auto [out, status] = run_aggregate({a, b}, B, H, W);
  expect_status(status, {kCamOk, kCamOk, kCamNonFinite}, "status");
  const Tensor got = out.tensor({B, H, W});
  EXPECT_EQ(at::count_nonzero(got[2]).item<int64_t>(), 0);
  EXPECT_EQ((~at::isfinite(got)).sum().item<int64_t>(), 0);
}

// ---------------------------------------------------------------------------
// colormap_overlay_cpu
// ---------------------------------------------------------------------------

std::vector<OverlayCase> overlay_cases() {
  std::vector<OverlayCase> cases;
  for (const auto& hw : std::vector<std::array<int64_t, 2>>{{1, 1}, {7, 5}, {224, 224}, {301, 517}})
    for (float a : {0.f, 0.5f, 0.3f}) cases.push_back({hw[0], hw[1], a});
  return cases;
}

class ColormapOverlayShapes : public testing::TestWithParam<OverlayCase> {};

TEST_P(ColormapOverlayShapes, MatchesIndependentComputation) {
  const OverlayCase c = GetParam();
  const int64_t n = c.h * c.w;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor map = rng.rand({n});
  // Exact endpoints, and out-of-range values (clamped by colormap_index).
  map[0] = 1.f;
  if (n > 1) map[n - 1] = 0.f;
  if (n > 3) {
    map[1] = -0.25f;
    map[2] = 1.75f;
  }
  const Tensor lut_t = rng.bytes({256 * 3}), image_t = rng.bytes({n * 3});
  const float* m = fptr(map);
  const uint8_t* lut = lut_t.data_ptr<uint8_t>();
  const uint8_t* image = image_t.data_ptr<uint8_t>();

  // Twice, with opposite poisons: every byte must be written.
  Guarded<uint8_t> heat0(n * 3, 0x00), out0(n * 3, 0x00), heat1(n * 3, 0xFF), out1(n * 3, 0xFF);
  colormap_overlay_cpu(m, image, c.h, c.w, lut, c.image_weight, heat0.data(), out0.data());
  colormap_overlay_cpu(m, image, c.h, c.w, lut, c.image_weight, heat1.data(), out1.data());
  EXPECT_TRUE(heat0.guards_intact() && out0.guards_intact() && heat1.guards_intact() && out1.guards_intact())
      << "written out of bounds";
  ASSERT_TRUE(same_bits(heat0, heat1)) << "heat_rgb: some bytes are never written";
  ASSERT_TRUE(same_bits(out0, out1)) << "out: some bytes are never written";

  // heat_rgb may be null; out is the same.
  Guarded<uint8_t> out2(n * 3, 0x5A);
  colormap_overlay_cpu(m, image, c.h, c.w, lut, c.image_weight, nullptr, out2.data());
  EXPECT_TRUE(same_bits(out0, out2)) << "out differs when heat_rgb is null";

  // Independent computation in float64: idx = trunc(255 m) clamped to
  // [0, 255]; out = round((1 - a) lut[idx] + a image), halves rounded up.
  // 255 m is exact in float64; the kernel's float product may round up to
  // the next integer when 255 m lies just below it, so there idx + 1 is
  // accepted too. The blend is exact in float for a = 0 and 0.5 (exact .5
  // ties must round up); for other a the float blend carries ~1e-5 error,
  // so within 1e-4 of a .5 the neighbouring integer is accepted too.
  const double a = c.image_weight;
  int64_t bad_heat = 0, bad_out = 0, index_ties = 0, blend_ties = 0;
  for (int64_t p = 0; p < n; ++p) {
    const double s = std::clamp(255.0 * static_cast<double>(m[p]), 0.0, 255.0);
    const int64_t idx = static_cast<int64_t>(s);
    std::vector<int64_t> idxs = {idx};
    if (s != std::ceil(s) && std::ceil(s) - s < 1e-4) {
      idxs.push_back(idx + 1);
      ++index_ties;
    }
    for (int ch = 0; ch < 3; ++ch) {
      const int got_heat = heat0[3 * p + ch], got_out = out0[3 * p + ch];
      bool heat_ok = false, out_ok = false;
      for (int64_t i : idxs) {
        const int heat = lut[3 * i + ch];
        if (heat != got_heat) continue;
        heat_ok = true;
        const double v = (1.0 - a) * heat + a * static_cast<double>(image[3 * p + ch]);
        const double lo = std::floor(v), frac = v - lo;
        if (got_out == std::min(255.0, std::floor(v + 0.5))) {
          out_ok = true;
        } else if (frac != 0.5 && std::abs(frac - 0.5) < 1e-4 && (got_out == lo || got_out == lo + 1)) {
          out_ok = true;
          ++blend_ties;
        }
      }
      if (!heat_ok && bad_heat++ < 5)
        ADD_FAILURE() << "heat_rgb at pixel " << p << " ch " << ch << ": got " << got_heat << ", want lut["
                      << idx << "] = " << int{lut[3 * idx + ch]} << " (map " << m[p] << ")";
      if (heat_ok && !out_ok && bad_out++ < 5)
        ADD_FAILURE() << "out at pixel " << p << " ch " << ch << ": got " << got_out << " (heat " << got_heat
                      << ", image " << int{image[3 * p + ch]} << ", a " << a << ")";
    }
  }
  EXPECT_EQ(bad_heat, 0);
  EXPECT_EQ(bad_out, 0);
  // Index near-ties must stay rare, or the tolerance above would hide an error.
  EXPECT_LE(index_ties, std::max<int64_t>(3, n / 100));
  if (a == 0.0 || a == 0.5) {
    EXPECT_EQ(blend_ties, 0) << "the blend is exact in float for a = " << a;
  }
  if (c.image_weight == 0.f) {
    // a = 0: the overlay is the heatmap itself, exactly.
    EXPECT_TRUE(same_bits(out0, heat0));
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, ColormapOverlayShapes, testing::ValuesIn(overlay_cases()),
                         param_name<OverlayCase>);

// A NaN map value (from a caller that skipped the normaliser) must still index
// inside the 256-entry LUT: static_cast<int>(NaN) is undefined behaviour and
// on x86 yields INT_MIN, a read 6 GB before the LUT.
TEST(ColormapIndex, NonFiniteValuesStayInsideTheLut) {
  volatile float nan = kNaN, pinf = kInf, ninf = -kInf;  // volatile: no constant folding
  const int i_nan = colormap_index(nan);
  EXPECT_GE(i_nan, 0);
  EXPECT_LE(i_nan, 255);
  EXPECT_EQ(colormap_index(pinf), 255);
  EXPECT_EQ(colormap_index(ninf), 0);
  EXPECT_EQ(colormap_index(1.f), 255);
  EXPECT_EQ(colormap_index(0.f), 0);
  EXPECT_EQ(colormap_index(-0.f), 0);
}

// The same through the kernel itself, in a child process (a wild read
// segfaults); the threadsafe style re-executes the binary, so no OpenMP pool
// is forked.
// Runs in the child: exits 0 if the overlay of a map with NaN is the blend of a
// LUT entry with the image.
[[noreturn]] void overlay_nan_map_child() {
  const float map[4] = {kNaN, 0.5f, kNaN, 1.f};
  std::vector<uint8_t> lut(256 * 3, 7), image(4 * 3, 9), out(4 * 3, 0);
  colormap_overlay_cpu(map, image.data(), 2, 2, lut.data(), 0.5f, nullptr, out.data());
  std::exit(out[0] == 8 ? 0 : 1);  // round(0.5 * 7 + 0.5 * 9)
}

TEST(ColormapOverlayDeathTest, NaNMapDoesNotReadOutsideTheLut) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(overlay_nan_map_child(), testing::ExitedWithCode(0), "");
}

TEST(ThreadCount, KernelsRunMultiThreadedAfterATenOps) {
  Rng rng;
  (void)rng.randn({1 << 20}).sum().item<float>();
  EXPECT_EQ(omp_get_max_threads(), kernel_threads());
}

// ---------------------------------------------------------------------------
// Thread-count independence: 1 and 2 OpenMP threads give the same result.
// ---------------------------------------------------------------------------

TEST(ThreadCount, GradCamSameWithOneAndTwoThreads) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  for (int64_t B : {1, 3, 16}) {
    SCOPED_TRACE("B = " + std::to_string(B));
    const Tensor A = rng.randn({B, 512, 14, 14}), g = rng.randn({B, 512, 14, 14});
    auto run = [&](int threads) {
      OmpThreads scope(threads);
      EXPECT_EQ(omp_get_max_threads(), threads);
      return run_gradcam(A, g, 100, 130);
    };
    const CamResult one = run(1), two = run(2);
    EXPECT_TRUE(same_bits(one.status, two.status));
    // The channel chunks depend on the thread count when B < threads (a batch
    // of one is split over the threads), so the float sums differ in the last
    // bits (up to ~1e-6 after normalisation): same tolerance as against float64.
    expect_near_ref(two.lowres.tensor({B, 14, 14}), one.lowres.tensor({B, 14, 14}).to(at::kDouble), true,
                    "lowres, 2 threads vs 1");
    expect_near_ref(two.out.tensor({B, 100, 130}), one.out.tensor({B, 100, 130}).to(at::kDouble), true,
                    "out, 2 threads vs 1");
    if (B >= 2) {
      // One chunk per sample with 1 or 2 threads: bitwise identical.
      EXPECT_TRUE(same_bits(one.lowres, two.lowres));
      EXPECT_TRUE(same_bits(one.out, two.out));
    }
  }
}

TEST(ThreadCount, NormalizeResizeAggregateOverlayBitwiseSame) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  constexpr int64_t B = 5, h = 24, w = 36, H = 100, W = 130;
  const Tensor x = rng.randn({B, h, w});
  const Tensor m2 = normalized_maps(rng, B, 12, 18);
  const Tensor map = rng.rand({H * W}), lut = rng.bytes({768}), image = rng.bytes({H * W * 3});
  struct Outs {
    Guarded<float> norm{B * h * w, kNaN}, resized{B * H * W, kNaN}, agg{B * H * W, kNaN};
    Guarded<uint8_t> norm_st{B, 0xEE}, agg_st{B, 0xEE}, overlay{H * W * 3, 0};
  };
  auto run = [&](int threads) {
    OmpThreads scope(threads);
    Outs o;
    std::memcpy(o.norm.data(), fptr(x), sizeof(float) * B * h * w);
    minmax_normalize_cpu(o.norm.data(), B, h * w, o.norm_st.data());
    resize_bilinear_cpu(fptr(x), B, h, w, o.resized.data(), H, W, false);
    const float* ptrs[] = {o.norm.data(), fptr(m2)};
    const int64_t hs[] = {h, 12}, ws[] = {w, 18};
    aggregate_layers_cpu(ptrs, hs, ws, 2, B, H, W, o.agg.data(), o.agg_st.data());
    colormap_overlay_cpu(fptr(map), image.data_ptr<uint8_t>(), H, W, lut.data_ptr<uint8_t>(), 0.3f, nullptr,
                         o.overlay.data());
    return o;
  };
  const Outs one = run(1), two = run(2);
  EXPECT_TRUE(same_bits(one.norm, two.norm));
  EXPECT_TRUE(same_bits(one.norm_st, two.norm_st));
  EXPECT_TRUE(same_bits(one.resized, two.resized));
  EXPECT_TRUE(same_bits(one.agg, two.agg));
  EXPECT_TRUE(same_bits(one.agg_st, two.agg_st));
  EXPECT_TRUE(same_bits(one.overlay, two.overlay));
}

// ===========================================================================
// Input types (f32, f16, bf16) and the ops that came with them: channel
// weights, weighted sum, element-wise maps, normalize + resize, Score-CAM masks.
// ===========================================================================

constexpr double kHalfRelTol = 5e-3;           // f16 / bf16 inputs (and max abs error on unit maps)
constexpr int64_t kOpMaxElements = 2'000'000;  // B*K*h*w cap of the float32 cases of the new ops
constexpr int64_t kHalfMaxElements = 500'000;  // ... of the f16 / bf16 cases (the suite stays short)

// float32 randoms rounded to the kernel's input type (contiguous). References
// convert these rounded values to float64, so a half case measures the
// kernel's float32 accumulation, not the rounding of its inputs.
Tensor as_input(const Tensor& x, DType d) { return x.to(scalar_type_of(d)).contiguous(); }

CamShape shape_of(const Tensor& t) { return {t.size(0), t.size(1), t.size(2), t.size(3)}; }

struct Tolerance {
  double rel;       // per sample: ||got - ref|| <= rel * ||ref||
  double abs_unit;  // maps in [0, 1]: max |got - ref|
};
Tolerance tolerance_for(DType d) {
  return d == DType::f32 ? Tolerance{kRelTol, kAbsTolUnit} : Tolerance{kHalfRelTol, kHalfRelTol};
}

// expect_near_ref with a tolerance, and a floor under each sample's ||ref||
// for sums whose terms cancel. A float32 sum of n terms has an absolute error
// of order eps * sum|terms|, so its relative error is unbounded as the sum
// goes to 0: a K = 1 Grad-CAM weight is the mean of up to 3136 gradients of
// either sign, a 1 x 1 HiResCAM map the sum of 2048 signed products. `mag`
// (ref's shape) is the same reduction over |terms|; ||mag|| / sqrt(n_terms),
// the typical size of a sum of n random-sign terms of those magnitudes, is
// the least norm an error is measured against. It is of the order of ||ref||
// for sums that did not cancel, so the check stays a relative-norm check; in
// a run of the suite without it, K = 1 weights over 56 x 56 and 1 x 1
// HiResCAM maps reached 1.5e-5 relative error, all checks 2.6e-6 with it.
void expect_close(const Tensor& got, const Tensor& ref, const std::string& what, Tolerance tol, bool unit_range,
                  const Tensor& mag = {}, int64_t n_terms = 1, const std::vector<bool>& skip = {}) {
  ASSERT_EQ(got.sizes(), ref.sizes()) << what;
  const Tensor g = got.to(at::kDouble);
  const int64_t unwritten = (~at::isfinite(g)).sum().item<int64_t>();
  EXPECT_EQ(unwritten, 0) << what << ": " << unwritten << " of " << g.numel()
                          << " elements are NaN/Inf (never written, or not finite)";
  if (unwritten != 0) return;
  const double mag_scale = 1.0 / std::sqrt(static_cast<double>(n_terms));
  for (int64_t b = 0; b < g.size(0); ++b) {
    if (!skip.empty() && skip[static_cast<size_t>(b)]) continue;
    const Tensor d = g[b] - ref[b];
    const double diff = d.norm().item<double>(), norm = ref[b].norm().item<double>();
    const double floor = mag.defined() ? mag[b].norm().item<double>() * mag_scale : 0.0;
    const double scale = std::max(norm, floor);
    EXPECT_LE(diff, tol.rel * scale) << what << ", sample " << b << ": relative error "
                                     << (scale > 0 ? diff / scale : diff) << " (||ref|| = " << norm
                                     << ", cancellation floor " << floor << ")";
    if (unit_range) {
      EXPECT_LT(d.abs().max().item<double>(), tol.abs_unit) << what << ", sample " << b << ": max abs error";
      EXPECT_GE(g[b].min().item<double>(), 0.0) << what << ", sample " << b;
      EXPECT_LE(g[b].max().item<double>(), 1.0) << what << ", sample " << b;
    }
  }
}

// Shapes of the new ops: the Grad-CAM grid of B, K and h x w, for every input
// type, capped in size (the float64 references dominate the run time).
struct OpCase {
  int64_t B, K, h, w;
  DType dtype;
};
std::ostream& operator<<(std::ostream& os, const OpCase& c) {
  return os << dtype_name(c.dtype) << "_B" << c.B << "_K" << c.K << "_" << c.h << "x" << c.w;
}

int64_t max_elements(DType d) { return d == DType::f32 ? kOpMaxElements : kHalfMaxElements; }

std::vector<OpCase> op_cases() {
  std::vector<OpCase> cases;
  for (DType d : kDTypes)
    for (int64_t B : {1, 3, 16})
      for (int64_t K : {1, 7, 64, 512, 2048})
        for (const auto& g : kCamGrids)
          if (B * K * g[0] * g[1] <= max_elements(d)) cases.push_back({B, K, g[0], g[1], d});
  return cases;
}

template <typename M>
struct MethodCase {
  M method;
  OpCase op;
};
template <typename M>
std::ostream& operator<<(std::ostream& os, const MethodCase<M>& c) {
  return os << method_name(c.method) << "_" << c.op;
}
template <typename M, size_t N>
std::vector<MethodCase<M>> method_cases(const std::array<M, N>& methods) {
  std::vector<MethodCase<M>> cases;
  for (M m : methods)
    for (const OpCase& c : op_cases()) cases.push_back({m, c});
  return cases;
}

// A float64 reference, and the same reduction over |terms| (see expect_close).
struct SumRef {
  Tensor value, mag;
  int64_t terms;
};

// SPEC section 2, channel weights, B x K.
SumRef weights_ref(const Tensor& A_in, const Tensor& g_in, WeightMethod m) {
  const Tensor A = A_in.to(at::kDouble), g = g_in.to(at::kDouble);
  const int64_t hw = A.size(2) * A.size(3);
  switch (m) {
    case WeightMethod::gradcam: return {g.mean({2, 3}), g.abs().mean({2, 3}), hw};
    case WeightMethod::gradcampp: {
      const Tensor sum_a = A.sum({2, 3}, /*keepdim=*/true);
      const Tensor g2 = g * g, g3 = g2 * g;
      const Tensor alpha = at::where(g != 0, g2 / (2 * g2 + sum_a * g3 + 1e-6), at::zeros_like(g));
      const Tensor t = g.relu() * alpha;
      return {t.sum({2, 3}), t.abs().sum({2, 3}), hw};
    }
    case WeightMethod::xgradcam: {
      const Tensor sum_a = A.sum({2, 3}), ga = g * A;
      return {ga.sum({2, 3}) / (sum_a + 1e-7), ga.abs().sum({2, 3}) / (sum_a.abs() + 1e-7), hw};
    }
  }
  return {};
}

// relu(sum_k w_k A_k), B x h x w.
SumRef weighted_sum_ref(const Tensor& A_in, const Tensor& w_in) {
  const int64_t B = A_in.size(0), K = A_in.size(1), h = A_in.size(2), w = A_in.size(3);
  const Tensor A = A_in.to(at::kDouble).reshape({B, K, h * w}), wk = w_in.to(at::kDouble).reshape({B, 1, K});
  return {at::bmm(wk, A).view({B, h, w}).relu(), at::bmm(wk.abs(), A.abs()).view({B, h, w}), K};
}

// relu(sum_k term(g, A)), B x h x w.
SumRef elementwise_ref(const Tensor& A_in, const Tensor& g_in, ElementwiseMethod m) {
  const Tensor A = A_in.to(at::kDouble), g = g_in.to(at::kDouble);
  Tensor t;
  switch (m) {
    case ElementwiseMethod::layercam: t = g.relu() * A; break;
    case ElementwiseMethod::hirescam: t = g * A; break;
    case ElementwiseMethod::gradcam_elementwise: t = (g * A).relu(); break;
  }
  return {t.sum(1).relu(), t.abs().sum(1), A.size(1)};
}

Guarded<float> run_weights(const Tensor& A, const Tensor& g, WeightMethod m, bool null_activations = false) {
  const CamShape s = shape_of(g);
  Guarded<float> w(s.batch * s.channels, kNaN);
  channel_weights_cpu(null_activations ? nullptr : A.data_ptr(), g.data_ptr(), dtype_of(g), s, m, w.data());
  return w;
}

// weights: B x K float32, contiguous.
Guarded<float> run_weighted_sum(const Tensor& A, const Tensor& weights) {
  const CamShape s = shape_of(A);
  Guarded<float> cam(s.batch * s.height * s.width, kNaN);
  weighted_sum_relu_cpu(A.data_ptr(), dtype_of(A), s, fptr(weights), cam.data());
  return cam;
}

Guarded<float> run_elementwise(const Tensor& A, const Tensor& g, ElementwiseMethod m) {
  const CamShape s = shape_of(A);
  Guarded<float> cam(s.batch * s.height * s.width, kNaN);
  elementwise_cam_cpu(A.data_ptr(), g.data_ptr(), dtype_of(A), s, m, cam.data());
  return cam;
}

// gradcam_cpu on tensors of any input type.
CamResult run_gradcam_typed(const Tensor& A, const Tensor& g, int64_t H, int64_t W) {
  const CamShape s = shape_of(A);
  CamResult r{Guarded<float>(s.batch * s.height * s.width, kNaN), Guarded<float>(s.batch * H * W, kNaN),
              Guarded<uint8_t>(s.batch, 0xEE)};
  gradcam_cpu(A.data_ptr(), g.data_ptr(), dtype_of(A), s, H, W, r.lowres.data(), r.out.data(), r.status.data());
  return r;
}

// normalize_resize_cpu of a copy of `cam` (B x h x w floats).
struct NormResizeResult {
  Guarded<float> lowres, out;
  Guarded<uint8_t> status;
};
NormResizeResult run_normalize_resize(const float* cam, int64_t B, int64_t h, int64_t w, int64_t H, int64_t W,
                                      bool with_status = true) {
  NormResizeResult r{Guarded<float>(B * h * w, kNaN), Guarded<float>(B * H * W, kNaN), Guarded<uint8_t>(B, 0xEE)};
  std::memcpy(r.lowres.data(), cam, sizeof(float) * static_cast<size_t>(B * h * w));
  normalize_resize_cpu(r.lowres.data(), B, h, w, r.out.data(), H, W, with_status ? r.status.data() : nullptr);
  return r;
}

// scorecam_masks_cpu of channels [k0, k1) of K x h x w activations and a
// C x H x W float32 input.
Guarded<float> run_scorecam(const Tensor& A, int64_t k0, int64_t k1, const Tensor& input) {
  const int64_t C = input.size(0), H = input.size(1), W = input.size(2);
  Guarded<float> out((k1 - k0) * C * H * W, kNaN);
  scorecam_masks_cpu(A.data_ptr(), dtype_of(A), A.size(0), A.size(1), A.size(2), k0, k1, fptr(input), C, H, W,
                     out.data());
  return out;
}

// ---------------------------------------------------------------------------
// f16 / bf16 loading
// ---------------------------------------------------------------------------

bool same_float(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0 || (std::isnan(a) && std::isnan(b)); }

// to_float of every f16 and bf16 bit pattern (zeros, subnormals, Inf, NaN)
// is ATen's conversion of the same bits.
TEST(HalfConversion, EveryBitPatternMatchesATen) {
  int64_t bad_f16 = 0, bad_bf16 = 0;
  for (uint32_t u = 0; u < 65536; ++u) {
    const auto bits = static_cast<uint16_t>(u);
    const float want16 = static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
    const float got16 = to_float(f16_t{bits});
    if (!same_float(want16, got16) && bad_f16++ < 5)
      ADD_FAILURE() << "f16 0x" << std::hex << u << std::dec << ": got " << got16 << ", ATen " << want16;
    const float want_bf = static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
    const float got_bf = to_float(bf16_t{bits});
    if (!same_float(want_bf, got_bf) && bad_bf16++ < 5)
      ADD_FAILURE() << "bf16 0x" << std::hex << u << std::dec << ": got " << got_bf << ", ATen " << want_bf;
  }
  EXPECT_EQ(bad_f16, 0);
  EXPECT_EQ(bad_bf16, 0);
}

// ---------------------------------------------------------------------------
// gradcam_cpu with f16 / bf16 inputs
// ---------------------------------------------------------------------------

struct CamDTypeCase {
  CamCase cam;
  DType dtype;
};
std::ostream& operator<<(std::ostream& os, const CamDTypeCase& c) { return os << dtype_name(c.dtype) << "_" << c.cam; }

std::vector<CamDTypeCase> gradcam_half_cases() {
  std::vector<CamDTypeCase> cases;
  for (DType d : {DType::f16, DType::bf16})
    for (const CamCase& c : gradcam_cases())
      if (c.B * c.K * c.h * c.w <= kHalfMaxElements) cases.push_back({c, d});
  return cases;
}

class GradCamHalfShapes : public testing::TestWithParam<CamDTypeCase> {};

TEST_P(GradCamHalfShapes, MatchesFloat64Reference) {
  const CamCase c = GetParam().cam;
  const DType d = GetParam().dtype;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = as_input(rng.randn({c.B, c.K, c.h, c.w}), d);
  const Tensor g = as_input(rng.randn({c.B, c.K, c.h, c.w}), d);
  const CamResult r = run_gradcam_typed(A, g, c.H, c.W);
  const CamRef ref = gradcam_ref(A, g, c.H, c.W);  // float64 of the rounded values
  EXPECT_TRUE(r.lowres.guards_intact()) << "lowres written out of bounds";
  EXPECT_TRUE(r.out.guards_intact()) << "out written out of bounds";
  expect_status(r.status, ref.status, "status");
  expect_close(r.lowres.tensor({c.B, c.h, c.w}), ref.lowres, "lowres", tolerance_for(d), true);
  expect_close(r.out.tensor({c.B, c.H, c.W}), ref.out, "out", tolerance_for(d), true);
}

INSTANTIATE_TEST_SUITE_P(Kernels, GradCamHalfShapes, testing::ValuesIn(gradcam_half_cases()),
                         param_name<CamDTypeCase>);

// ---------------------------------------------------------------------------
// channel_weights_cpu
// ---------------------------------------------------------------------------

class ChannelWeightsShapes : public testing::TestWithParam<MethodCase<WeightMethod>> {};

TEST_P(ChannelWeightsShapes, MatchesFloat64Reference) {
  const WeightMethod m = GetParam().method;
  const OpCase c = GetParam().op;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  // Post-ReLU activations (>= 0), as CNN taps are, which keeps the Grad-CAM++
  // and XGradCAM denominators well-conditioned; signed gradients.
  const Tensor A = as_input(rng.randn({c.B, c.K, c.h, c.w}).abs(), c.dtype);
  const Tensor g = as_input(rng.randn({c.B, c.K, c.h, c.w}), c.dtype);
  // Grad-CAM weights do not need the activations: pass null (pool.h).
  const Guarded<float> w = run_weights(A, g, m, /*null_activations=*/m == WeightMethod::gradcam);
  EXPECT_TRUE(w.guards_intact()) << "weights written out of bounds";
  const SumRef ref = weights_ref(A, g, m);
  expect_close(w.tensor({c.B, c.K}), ref.value, "weights", tolerance_for(c.dtype), false, ref.mag, ref.terms);
}

INSTANTIATE_TEST_SUITE_P(Kernels, ChannelWeightsShapes, testing::ValuesIn(method_cases(kWeightMethods)),
                         param_name<MethodCase<WeightMethod>>);

TEST(ChannelWeights, GradCamIgnoresActivations) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({3, 70, 7, 7}), g = rng.randn({3, 70, 7, 7});
  EXPECT_TRUE(
      same_bits(run_weights(A, g, WeightMethod::gradcam, false), run_weights(A, g, WeightMethod::gradcam, true)));
}

// a = 0 where g == 0 (also -0), channels and samples with all-zero gradients.
TEST(ChannelWeights, GradCamPlusPlusZeroGradients) {
  constexpr int64_t B = 3, K = 70, h = 7, w = 7;
  for (DType d : kDTypes) {
    SCOPED_TRACE(dtype_name(d));
    Rng rng;
    SCOPED_TRACE(rng.trace());
    Tensor g32 = rng.randn({B, K, h, w});
    g32.masked_fill_(rng.rand({B, K, h, w}) < 0.3f, 0.f);   // scattered exact zeros
    g32.masked_fill_(rng.rand({B, K, h, w}) < 0.1f, -0.f);  // and negative zeros
    g32[0][3].zero_();                                      // channels with zero gradients,
    g32[0][K - 1].zero_();                                  // in both channel chunks
    g32[2].zero_();                                         // a sample with zero gradients
    const Tensor A = as_input(rng.randn({B, K, h, w}).abs(), d), g = as_input(g32, d);
    const Guarded<float> wts = run_weights(A, g, WeightMethod::gradcampp);
    EXPECT_TRUE(wts.guards_intact());
    const SumRef ref = weights_ref(A, g, WeightMethod::gradcampp);
    const Tensor got = wts.tensor({B, K});
    expect_close(got, ref.value, "weights", tolerance_for(d), false, ref.mag, ref.terms);
    EXPECT_EQ(got[0][3].item<float>(), 0.f);
    EXPECT_EQ(got[0][K - 1].item<float>(), 0.f);
    EXPECT_EQ(at::count_nonzero(got[2]).item<int64_t>(), 0) << "all-zero gradients must give zero weights";
  }
}

// Small gradients: 2 g^2 ~ 1e-6, so the 1e-6 of the denominator changes the
// weights by ~30%; pins eps = 1e-6.
TEST(ChannelWeights, GradCamPlusPlusSmallGradientsKeepTheSpecEpsilon) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({3, 64, 7, 7}).abs(), g = rng.randn({3, 64, 7, 7}) * 1e-3f;
  const Guarded<float> wts = run_weights(A, g, WeightMethod::gradcampp);
  const SumRef ref = weights_ref(A, g, WeightMethod::gradcampp);
  expect_close(wts.tensor({3, 64}), ref.value, "weights", tolerance_for(DType::f32), false, ref.mag, ref.terms);
}

// sum_s A == 0: channels of zeros (w_k = 0 / 1e-7 = 0) and channels of +-0.5
// with an exactly zero sum in any summation order (w_k = sum_s(g A) / 1e-7).
TEST(ChannelWeights, XGradCamZeroActivationSums) {
  constexpr int64_t B = 2, K = 70, h = 8, w = 8, hw = h * w;
  for (DType d : kDTypes) {
    SCOPED_TRACE(dtype_name(d));
    Rng rng;
    SCOPED_TRACE(rng.trace());
    Tensor A32 = rng.randn({B, K, h, w}).abs();
    const Tensor halves = (at::arange(hw) % 2).to(at::kFloat) - 0.5f;  // -0.5, 0.5, ...
    const Tensor perms = rng.rand({K, hw}).argsort(/*dim=*/1, /*descending=*/false);  // a permutation per channel
    A32[0].copy_(halves.expand({K, hw}).gather(1, perms).view({K, h, w}));
    for (int64_t k : {0L, 5L, 63L, 64L, K - 1}) A32[1][k].zero_();
    const Tensor A = as_input(A32, d), g = as_input(rng.randn({B, K, h, w}), d);
    const Guarded<float> wts = run_weights(A, g, WeightMethod::xgradcam);
    EXPECT_TRUE(wts.guards_intact());
    const SumRef ref = weights_ref(A, g, WeightMethod::xgradcam);
    const Tensor got = wts.tensor({B, K});
    expect_close(got, ref.value, "weights", tolerance_for(d), false, ref.mag, ref.terms);
    for (int64_t k : {0L, 5L, 63L, 64L, K - 1}) EXPECT_EQ(got[1][k].item<float>(), 0.f) << "channel " << k;
    EXPECT_GT(got[0].abs().max().item<float>(), 1e5f) << "a zero-sum channel's weight is sum(gA) / 1e-7";
  }
}

// sum_s A ~ 1e-6: the 1e-7 of the denominator changes the weights by ~10%;
// pins eps = 1e-7 (float32 only: f16 has no such small normal values).
TEST(ChannelWeights, XGradCamSmallActivationSumsKeepTheSpecEpsilon) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.rand({3, 64, 7, 7}) * 4e-8f, g = rng.randn({3, 64, 7, 7});
  const Guarded<float> wts = run_weights(A, g, WeightMethod::xgradcam);
  const SumRef ref = weights_ref(A, g, WeightMethod::xgradcam);
  expect_close(wts.tensor({3, 64}), ref.value, "weights", tolerance_for(DType::f32), false, ref.mag, ref.terms);
  const Tensor no_eps = (g.to(at::kDouble) * A.to(at::kDouble)).sum({2, 3}) / A.to(at::kDouble).sum({2, 3});
  ASSERT_GT((no_eps - ref.value).norm().item<double>(), 1e-2 * ref.value.norm().item<double>())
      << "the test needs sums comparable to eps";
}

// ---------------------------------------------------------------------------
// weighted_sum_relu_cpu
// ---------------------------------------------------------------------------

class WeightedSumShapes : public testing::TestWithParam<OpCase> {};

TEST_P(WeightedSumShapes, MatchesFloat64Reference) {
  const OpCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  // Signed activations and weights: the relu clips part of the map.
  const Tensor A = as_input(rng.randn({c.B, c.K, c.h, c.w}), c.dtype);
  const Tensor wk = rng.randn({c.B, c.K});
  const Guarded<float> cam = run_weighted_sum(A, wk);
  EXPECT_TRUE(cam.guards_intact()) << "cam written out of bounds";
  const SumRef ref = weighted_sum_ref(A, wk);
  expect_close(cam.tensor({c.B, c.h, c.w}), ref.value, "cam", tolerance_for(c.dtype), false, ref.mag, ref.terms);
}

INSTANTIATE_TEST_SUITE_P(Kernels, WeightedSumShapes, testing::ValuesIn(op_cases()), param_name<OpCase>);

// ---------------------------------------------------------------------------
// elementwise_cam_cpu
// ---------------------------------------------------------------------------

class ElementwiseShapes : public testing::TestWithParam<MethodCase<ElementwiseMethod>> {};

TEST_P(ElementwiseShapes, MatchesFloat64Reference) {
  const ElementwiseMethod m = GetParam().method;
  const OpCase c = GetParam().op;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = as_input(rng.randn({c.B, c.K, c.h, c.w}), c.dtype);
  const Tensor g = as_input(rng.randn({c.B, c.K, c.h, c.w}), c.dtype);
  const Guarded<float> cam = run_elementwise(A, g, m);
  EXPECT_TRUE(cam.guards_intact()) << "cam written out of bounds";
  const SumRef ref = elementwise_ref(A, g, m);
  expect_close(cam.tensor({c.B, c.h, c.w}), ref.value, "cam", tolerance_for(c.dtype), false, ref.mag, ref.terms);
}

INSTANTIATE_TEST_SUITE_P(Kernels, ElementwiseShapes, testing::ValuesIn(method_cases(kElementwiseMethods)),
                         param_name<MethodCase<ElementwiseMethod>>);

// ---------------------------------------------------------------------------
// normalize_resize_cpu
// ---------------------------------------------------------------------------

struct NormResizeCase {
  int64_t B, h, w, H, W;
};
std::ostream& operator<<(std::ostream& os, const NormResizeCase& c) {
  return os << "B" << c.B << "_" << c.h << "x" << c.w << "_to_" << c.H << "x" << c.W;
}

std::vector<NormResizeCase> norm_resize_cases() {
  std::vector<NormResizeCase> cases;
  for (int64_t B : {1, 3, 16})
    for (const auto& g : kCamGrids) cases.push_back({B, g[0], g[1], g[2], g[3]});
  cases.push_back({3, 56, 56, 224, 224});
  return cases;
}

class NormalizeResizeShapes : public testing::TestWithParam<NormResizeCase> {};

TEST_P(NormalizeResizeShapes, MatchesFloat64Reference) {
  const NormResizeCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor x = (rng.randn({c.B, c.h, c.w}) * 2.f + 0.5f).relu();  // a CAM: zero where clipped
  const NormResizeResult r = run_normalize_resize(fptr(x), c.B, c.h, c.w, c.H, c.W);
  EXPECT_TRUE(r.lowres.guards_intact() && r.out.guards_intact()) << "written out of bounds";
  const Tensor xd = x.to(at::kDouble), low_ref = minmax_ref(xd);
  expect_status(r.status, constant_status_ref(xd), "status");
  expect_near_ref(r.lowres.tensor({c.B, c.h, c.w}), low_ref, true, "lowres");
  expect_near_ref(r.out.tensor({c.B, c.H, c.W}), resize_ref(low_ref, c.H, c.W, false), true, "out");
  const NormResizeResult again = run_normalize_resize(fptr(x), c.B, c.h, c.w, c.H, c.W, /*with_status=*/false);
  EXPECT_TRUE(same_bits(r.lowres, again.lowres) && same_bits(r.out, again.out))
      << "result differs with status == nullptr";
}

INSTANTIATE_TEST_SUITE_P(Kernels, NormalizeResizeShapes, testing::ValuesIn(norm_resize_cases()),
                         param_name<NormResizeCase>);

// ---------------------------------------------------------------------------
// The map producers as the pipeline chains them (weights -> weighted sum, or
// an element-wise map; then normalize_resize): degenerate inputs.
// ---------------------------------------------------------------------------

enum class Producer : uint8_t { gradcam, gradcampp, xgradcam, layercam, hirescam, gradcam_elementwise };
constexpr std::array<Producer, 6> kProducers = {Producer::gradcam,  Producer::gradcampp, Producer::xgradcam,
                                                Producer::layercam, Producer::hirescam,  Producer::gradcam_elementwise};

const char* producer_name(Producer p) {
  switch (p) {
    case Producer::gradcam: return "gradcam";
    case Producer::gradcampp: return "gradcampp";
    case Producer::xgradcam: return "xgradcam";
    case Producer::layercam: return "layercam";
    case Producer::hirescam: return "hirescam";
    case Producer::gradcam_elementwise: return "gradcam_elementwise";
  }
  return "unknown";
}

// The B x h x w map before normalisation.
Guarded<float> run_producer(Producer p, const Tensor& A, const Tensor& g) {
  WeightMethod wm = WeightMethod::gradcam;
  switch (p) {
    case Producer::gradcam: wm = WeightMethod::gradcam; break;
    case Producer::gradcampp: wm = WeightMethod::gradcampp; break;
    case Producer::xgradcam: wm = WeightMethod::xgradcam; break;
    case Producer::layercam: return run_elementwise(A, g, ElementwiseMethod::layercam);
    case Producer::hirescam: return run_elementwise(A, g, ElementwiseMethod::hirescam);
    case Producer::gradcam_elementwise: return run_elementwise(A, g, ElementwiseMethod::gradcam_elementwise);
  }
  const CamShape s = shape_of(A);
  const Guarded<float> w = run_weights(A, g, wm);
  Guarded<float> cam(s.batch * s.height * s.width, kNaN);
  weighted_sum_relu_cpu(A.data_ptr(), dtype_of(A), s, w.data(), cam.data());
  return cam;
}

// SPEC 1.8: a constant map (all-zero gradients, an all-negative sum clipped
// by the relu, spatially flat inputs) comes out all zeros, never NaN.
TEST(MapOpsDegenerate, ConstantAndAllNegativeMapsBecomeZerosNotNaN) {
  constexpr int64_t B = 4, K = 70, h = 7, w = 9, H = 50, W = 37;
  for (DType d : kDTypes)
    for (Producer p : kProducers) {
      SCOPED_TRACE(std::string(producer_name(p)) + " " + dtype_name(d));
      Rng rng;
      SCOPED_TRACE(rng.trace());
      Tensor A = rng.rand({B, K, h, w}) + 0.1f;  // post-ReLU activations, > 0
      Tensor g = rng.randn({B, K, h, w});
      g[1].copy_(-(rng.rand({K, h, w}) + 0.1f));  // every gradient < 0: every term / weight <= 0
      A[2].copy_((rng.rand({K, 1, 1}) + 0.1f).expand({K, h, w}));  // spatially flat per channel
      g[2].copy_(rng.randn({K, 1, 1}).expand({K, h, w}));
      g[3].zero_();  // zero gradients
      const Tensor Ad = as_input(A, d), gd = as_input(g, d);
      const Guarded<float> cam = run_producer(p, Ad, gd);
      EXPECT_TRUE(cam.guards_intact());
      const Tensor cam_t = cam.tensor({B, h, w});
      EXPECT_EQ((~at::isfinite(cam_t)).sum().item<int64_t>(), 0) << "map not written, or not finite";
      EXPECT_EQ(at::count_nonzero(cam_t[1]).item<int64_t>(), 0) << "all-negative map after the relu";
      EXPECT_EQ(at::count_nonzero(cam_t[3]).item<int64_t>(), 0) << "zero gradients";

      const NormResizeResult r = run_normalize_resize(cam.data(), B, h, w, H, W);
      EXPECT_TRUE(r.status.guards_intact());
      EXPECT_NE(int{r.status[0]}, int{kCamNonFinite});
      for (int64_t b = 1; b < B; ++b) EXPECT_EQ(int{r.status[b]}, int{kCamConstant}) << "sample " << b;
      const Tensor low = r.lowres.tensor({B, h, w}), out = r.out.tensor({B, H, W});
      EXPECT_EQ((~at::isfinite(low)).sum().item<int64_t>() + (~at::isfinite(out)).sum().item<int64_t>(), 0);
      for (int64_t b = 1; b < B; ++b) {
        EXPECT_EQ(at::count_nonzero(low[b]).item<int64_t>(), 0) << "lowres, sample " << b;
        EXPECT_EQ(at::count_nonzero(out[b]).item<int64_t>(), 0) << "out, sample " << b;
      }
    }
}

// SPEC 1.8: NaN/Inf in A or g is reported per sample, never silently dropped.
// One value is planted in sample 1; its map must carry a non-finite value (the
// relus of weighted_sum_relu / elementwise_cam keep it) so that the
// normaliser flags the sample kCamNonFinite and zeroes it; the other samples
// come out exactly as without the planted value. `partner_positive` sets the
// sign of what the planted value is multiplied by (the channel's gradients
// for a value in A, the activation for a value in g; activations are > 0),
// so that both signs of the product are covered.
struct NonFiniteCase {
  Producer producer;
  float value;
  bool in_g;
  bool partner_positive;
};
std::ostream& operator<<(std::ostream& os, const NonFiniteCase& c) {
  return os << producer_name(c.producer) << "_"
            << (std::isnan(c.value) ? "NaN" : (c.value > 0 ? "PosInf" : "NegInf")) << "_in_"
            << (c.in_g ? "g" : "A") << "_times_" << (c.partner_positive ? "pos" : "neg");
}

std::vector<NonFiniteCase> nonfinite_cases() {
  std::vector<NonFiniteCase> cases;
  for (Producer p : kProducers)
    for (float v : {kNaN, kInf, -kInf})
      for (bool in_g : {false, true})
        for (bool pos : {true, false}) cases.push_back({p, v, in_g, pos});
  return cases;
}

class MapOpsNonFinite : public testing::TestWithParam<NonFiniteCase> {};

TEST_P(MapOpsNonFinite, FlaggedNotMasked) {
  const NonFiniteCase p = GetParam();
  constexpr int64_t B = 3, K = 70, h = 7, w = 7, H = 30, W = 20, s = 1, k = 66;  // k: second channel chunk
  Rng rng;
  SCOPED_TRACE(rng.trace());
  Tensor A = rng.rand({B, K, h, w}) + 0.1f;
  Tensor g = rng.randn({B, K, h, w});
  const int64_t pos = rng.index(h * w);
  const float sign = p.partner_positive ? 1.f : -1.f;
  Tensor Ap = A, gp = g;
  if (p.in_g) {
    A[s][k].view({-1})[pos].mul_(sign);
    gp = g.clone();
    gp[s][k].view({-1})[pos] = p.value;
  } else {
    g[s][k].copy_(g[s][k].abs() * sign);
    Ap = A.clone();
    Ap[s][k].view({-1})[pos] = p.value;
  }
  const Guarded<float> cam = run_producer(p.producer, Ap, gp);
  const Tensor cam_t = cam.tensor({B, h, w});
  EXPECT_GT((~at::isfinite(cam_t[s])).sum().item<int64_t>(), 0)
      << "the map of the sample hides its non-finite input: nothing left for the normaliser to flag";
  const NormResizeResult r = run_normalize_resize(cam.data(), B, h, w, H, W);
  EXPECT_EQ(int{r.status[s]}, int{kCamNonFinite}) << "status of the sample with the non-finite input";
  const Tensor low = r.lowres.tensor({B, h, w}), out = r.out.tensor({B, H, W});
  EXPECT_EQ(at::count_nonzero(low[s]).item<int64_t>(), 0) << "lowres of the non-finite sample";
  EXPECT_EQ(at::count_nonzero(out[s]).item<int64_t>(), 0) << "out of the non-finite sample";
  EXPECT_EQ((~at::isfinite(low)).sum().item<int64_t>() + (~at::isfinite(out)).sum().item<int64_t>(), 0);

  // The other samples: exactly as without the planted value.
  const Guarded<float> clean = run_producer(p.producer, A, g);
  const NormResizeResult rc = run_normalize_resize(clean.data(), B, h, w, H, W);
  const Tensor clean_cam = clean.tensor({B, h, w}), clean_out = rc.out.tensor({B, H, W});
  for (int64_t b = 0; b < B; ++b) {
    if (b == s) continue;
    EXPECT_TRUE(at::equal(cam_t[b], clean_cam[b])) << "map of sample " << b;
    EXPECT_TRUE(at::equal(out[b], clean_out[b])) << "out of sample " << b;
    EXPECT_EQ(int{r.status[b]}, int{rc.status[b]}) << "status of sample " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, MapOpsNonFinite, testing::ValuesIn(nonfinite_cases()), param_name<NonFiniteCase>);

// ---------------------------------------------------------------------------
// scorecam_masks_cpu
// ---------------------------------------------------------------------------

// SPEC 2, Score-CAM: channels [k0, k1) of K x h x w activations upsampled to
// H x W (align_corners=true), min-max per channel with eps 1e-8, times the
// C x H x W input: (k1 - k0) x C x H x W. A constant channel's mask is 0:
// ATen's upsampling of a constant plane is not exactly constant (its weights
// sum to 1 only up to rounding), and (m - min) / 1e-8 would blow that up.
Tensor scorecam_ref(const Tensor& A, int64_t k0, int64_t k1, const Tensor& input) {
  const int64_t n = k1 - k0, H = input.size(1), W = input.size(2);
  const Tensor a = A.slice(0, k0, k1).to(at::kDouble);
  const Tensor up = at::upsample_bilinear2d(a.unsqueeze(1), at::IntArrayRef{H, W}, /*align_corners=*/true);
  const Tensor flat = up.reshape({n, H * W});
  const Tensor lo = std::get<0>(flat.min(1, true)), hi = std::get<0>(flat.max(1, true));
  const Tensor constant = (a.amax({1, 2}) == a.amin({1, 2})).view({n, 1});
  const Tensor masks = at::where(constant, at::zeros_like(flat), (flat - lo) / (hi - lo + 1e-8)).view({n, 1, H, W});
  return input.to(at::kDouble).unsqueeze(0) * masks;
}

struct ScoreCase {
  int64_t K, h, w, k0, k1, C, H, W;
  DType dtype;
};
std::ostream& operator<<(std::ostream& os, const ScoreCase& c) {
  return os << dtype_name(c.dtype) << "_K" << c.K << "_" << c.h << "x" << c.w << "_ch" << c.k0 << "to" << c.k1
            << "_in" << c.C << "x" << c.H << "x" << c.W;
}

std::vector<ScoreCase> scorecam_cases() {
  const std::vector<std::array<int64_t, 8>> base = {
      {1, 7, 7, 0, 1, 3, 224, 224},          // one channel in all
      {7, 14, 14, 0, 7, 3, 100, 130},        // every channel, non-square input
      {64, 7, 7, 0, 32, 3, 224, 224},        // the default chunk of 32
      {64, 7, 7, 32, 64, 3, 224, 224},       // the second chunk
      {512, 14, 14, 480, 512, 3, 224, 224},  // the last chunk
      {2048, 7, 7, 1000, 1001, 3, 224, 224}, // a single channel
      {2048, 7, 7, 2047, 2048, 3, 224, 224}, // the last channel alone
      {512, 16, 8, 5, 37, 3, 100, 130},      // non-square activations and input
      {64, 24, 36, 10, 20, 1, 50, 37},       // one input channel, odd sizes
      {7, 56, 56, 0, 7, 3, 20, 30},          // downscale
      {7, 1, 1, 0, 7, 3, 64, 48},            // 1 x 1 activations: constant channels, zero masks
      {3, 7, 7, 0, 3, 3, 1, 1},              // 1 x 1 input
      {16, 2, 3, 3, 9, 2, 5, 4},             // tiny, odd
  };
  std::vector<ScoreCase> cases;
  for (DType d : kDTypes)
    for (const auto& b : base) cases.push_back({b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], d});
  return cases;
}

class ScoreCamMasksShapes : public testing::TestWithParam<ScoreCase> {};

TEST_P(ScoreCamMasksShapes, MatchesFloat64Reference) {
  const ScoreCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = as_input(rng.randn({c.K, c.h, c.w}), c.dtype);
  const Tensor input = rng.randn({c.C, c.H, c.W});
  const Guarded<float> out = run_scorecam(A, c.k0, c.k1, input);
  EXPECT_TRUE(out.guards_intact()) << "masked inputs written out of bounds";
  expect_close(out.tensor({c.k1 - c.k0, c.C, c.H, c.W}), scorecam_ref(A, c.k0, c.k1, input), "masked inputs",
               tolerance_for(c.dtype), false);
}

INSTANTIATE_TEST_SUITE_P(Kernels, ScoreCamMasksShapes, testing::ValuesIn(scorecam_cases()), param_name<ScoreCase>);

// A constant channel (max == min): mask (v - min) / (0 + 1e-8) = 0 everywhere,
// so its masked input is all zeros, never NaN.
TEST(ScoreCamMasks, ConstantChannelGivesZeroMaskNotNaN) {
  constexpr int64_t K = 8, h = 7, w = 9, C = 3, H = 64, W = 48;
  for (DType d : kDTypes) {
    SCOPED_TRACE(dtype_name(d));
    Rng rng;
    SCOPED_TRACE(rng.trace());
    Tensor A32 = rng.randn({K, h, w});
    A32[2].fill_(2.5f);
    A32[5].zero_();
    A32[6].fill_(-1.25f);
    const Tensor A = as_input(A32, d), input = rng.rand({C, H, W}) + 0.1f;
    const Guarded<float> out = run_scorecam(A, 0, K, input);
    const Tensor got = out.tensor({K, C, H, W});
    EXPECT_EQ((~at::isfinite(got)).sum().item<int64_t>(), 0);
    for (int64_t k : {2, 5, 6}) EXPECT_EQ(at::count_nonzero(got[k]).item<int64_t>(), 0) << "channel " << k;
    expect_close(got, scorecam_ref(A, 0, K, input), "masked inputs", tolerance_for(d), false);
  }
}

// Range ~5e-8: the 1e-8 of the mask normalisation is then ~20% of it.
TEST(ScoreCamMasks, SmallRangeKeepsTheMaskEpsilon) {
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({6, 7, 7}) * 1e-8f + 3e-8f, input = rng.randn({3, 40, 30});
  const Guarded<float> out = run_scorecam(A, 0, 6, input);
  expect_close(out.tensor({6, 3, 40, 30}), scorecam_ref(A, 0, 6, input), "masked inputs", tolerance_for(DType::f32),
               false);
}

// A chunk [k0, k1) is exactly the slice of the full [0, K) result.
TEST(ScoreCamMasks, ChunksAreSlicesOfTheFullRange) {
  constexpr int64_t K = 70, C = 3, H = 50, W = 37, plane = C * H * W;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor A = rng.randn({K, 14, 14}), input = rng.randn({C, H, W});
  const Guarded<float> full = run_scorecam(A, 0, K, input);
  for (const auto& r : std::vector<std::array<int64_t, 2>>{{0, 32}, {32, 64}, {64, 70}, {17, 18}, {69, 70}}) {
    const Guarded<float> part = run_scorecam(A, r[0], r[1], input);
    EXPECT_TRUE(part.guards_intact());
    EXPECT_EQ(std::memcmp(part.data(), full.data() + r[0] * plane, sizeof(float) * (r[1] - r[0]) * plane), 0)
        << "channels [" << r[0] << ", " << r[1] << ")";
  }
}

// ---------------------------------------------------------------------------
// Thread-count independence of the new ops and of the half-input Grad-CAM:
// fixed channel chunks, so 1 and 2 threads give bitwise-identical results,
// also for a batch of one.
// ---------------------------------------------------------------------------

TEST(ThreadCount, NewOpsBitwiseSameWithOneAndTwoThreads) {
  constexpr int64_t K = 200, h = 14, w = 14, H = 100, W = 130;  // 4 channel chunks, the last partial
  for (DType d : {DType::f32, DType::f16, DType::bf16})
    for (int64_t B : {1, 3}) {
      SCOPED_TRACE(std::string(dtype_name(d)) + " B = " + std::to_string(B));
      Rng rng;
      SCOPED_TRACE(rng.trace());
      const Tensor A = as_input(rng.randn({B, K, h, w}).abs(), d), g = as_input(rng.randn({B, K, h, w}), d);
      const Tensor wk = rng.randn({B, K}), cam = rng.randn({B, h, w}).relu(), input = rng.randn({3, H, W});
      using Outs = std::vector<std::pair<std::string, Guarded<float>>>;
      auto run = [&](int threads) {
        OmpThreads scope(threads);
        EXPECT_EQ(omp_get_max_threads(), threads);
        Outs o;
        for (WeightMethod m : kWeightMethods)
          o.emplace_back(std::string("weights ") + method_name(m), run_weights(A, g, m));
        o.emplace_back("weighted_sum_relu", run_weighted_sum(A, wk));
        for (ElementwiseMethod m : kElementwiseMethods) o.emplace_back(method_name(m), run_elementwise(A, g, m));
        CamResult gc = run_gradcam_typed(A, g, H, W);
        o.emplace_back("gradcam lowres", std::move(gc.lowres));
        o.emplace_back("gradcam out", std::move(gc.out));
        NormResizeResult nr = run_normalize_resize(fptr(cam), B, h, w, H, W);
        o.emplace_back("normalize_resize lowres", std::move(nr.lowres));
        o.emplace_back("normalize_resize out", std::move(nr.out));
        o.emplace_back("scorecam_masks", run_scorecam(A.select(0, B - 1), 0, 40, input));
        return o;
      };
      const Outs one = run(1), two = run(2);
      ASSERT_EQ(one.size(), two.size());
      for (size_t i = 0; i < one.size(); ++i)
        EXPECT_TRUE(same_bits(one[i].second, two[i].second)) << one[i].first << ": 1 and 2 threads differ";
    }
}

}  // namespace

// Tests of the CPU map kernels (kernels/cpu/*.cpp) against float64 ATen
// references (SPEC sections 1, 2 and 4). STYLE.md: TEST_P over named shapes,
// fresh random inputs every test, outputs poisoned before the kernel runs and
// every element checked, guard zones around every output, relative-norm
// comparison with float64.
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
#include "xcam/kernels/gradcam.h"
#include "xcam/kernels/normalize_resize.h"
#include "xcam/kernels/overlay.h"

namespace {

using namespace xcam::kernels;
using at::Tensor;

constexpr double kRelTol = 1e-5;       // ||x - ref|| / ||ref|| per sample
constexpr double kAbsTolUnit = 1e-4;   // max |x - ref| on maps in [0, 1]
constexpr double kRefEps = 1e-7;       // SPEC 1.5
constexpr int64_t kMaxElements = 30'000'000;  // B*K*h*w cap: the suite stays well under 60 s
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

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

// A fresh seed per test, reported on failure.
class Rng {
 public:
  Rng() : seed_(pick_seed()), gen_(at::detail::createCPUGenerator(seed_)) {}
  std::string trace() const { return "seed " + std::to_string(seed_) + " (replay: XCAM_TEST_SEED=" +
                                     std::to_string(seed_) + ")"; }
  Tensor randn(at::IntArrayRef s) { return at::randn(s, gen_, at::kFloat); }
  Tensor rand(at::IntArrayRef s) { return at::rand(s, gen_, at::kFloat); }
  Tensor bytes(at::IntArrayRef s) { return at::randint(256, s, gen_, at::kByte); }
  int64_t index(int64_t n) { return at::randint(n, {1}, gen_, at::kLong).item<int64_t>(); }

 private:
  static uint64_t pick_seed() {
    if (const char* s = std::getenv("XCAM_TEST_SEED")) return std::strtoull(s, nullptr, 10);
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  uint64_t seed_;
  at::Generator gen_;
};

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

struct CamCase {
  int64_t B, K, h, w, H, W;
};
std::ostream& operator<<(std::ostream& os, const CamCase& c) {
  return os << "B" << c.B << "_K" << c.K << "_" << c.h << "x" << c.w << "_to_" << c.H << "x" << c.W;
}
template <typename P>
std::string param_name(const testing::TestParamInfo<P>& info) {
  std::ostringstream os;
  os << info.param;
  std::string s = os.str();
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_') ch = '_';
  return s;
}

// Low-resolution grids with the output size each is resized to: 1x1,
// integer upscales (7, 14 -> 224), non-integer ones, a non-square grid, and a
// downscale (56x56 -> 20x30).
constexpr std::array<std::array<int64_t, 4>, 6> kCamGrids = {{
    {1, 1, 224, 224},
    {7, 7, 224, 224},
    {14, 14, 224, 224},
    {16, 8, 50, 37},
    {24, 36, 100, 130},
    {56, 56, 20, 30},
}};

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

void expect_degenerate(const Tensor& A, const Tensor& g, int64_t bad_sample, uint8_t bad_status) {
  const int64_t B = A.size(0), h = A.size(2), w = A.size(3);
  const CamResult r = run_gradcam(A, g, kDegOutH, kDegOutW);
  const CamRef ref = gradcam_ref(A, g, kDegOutH, kDegOutW);
  std::vector<uint8_t> want(static_cast<size_t>(B), kCamOk);
  want[bad_sample] = bad_status;
  expect_status(r.status, want, "status");
  EXPECT_TRUE(r.lowres.guards_intact());
  EXPECT_TRUE(r.out.guards_intact());

  const Tensor low = r.lowres.tensor({B, h, w}), out = r.out.tensor({B, kDegOutH, kDegOutW});
  // The bad sample: exact zeros (also: no NaN).
  EXPECT_EQ(at::count_nonzero(low[bad_sample]).item<int64_t>(), 0) << "lowres of the degenerate sample";
  EXPECT_EQ(at::count_nonzero(out[bad_sample]).item<int64_t>(), 0) << "out of the degenerate sample";
  // The others: correct.
  std::vector<bool> skip(static_cast<size_t>(B), false);
  skip[bad_sample] = true;
  expect_near_ref(low, ref.lowres, true, "lowres", skip);
  expect_near_ref(out, ref.out, true, "out", skip);
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

  const CamResult r = run_gradcam(A, g, kDegOutH, kDegOutW);
  std::vector<uint8_t> want(static_cast<size_t>(p.B), kCamOk);
  want[p.sample] = kCamNonFinite;
  expect_status(r.status, want, "status");
  EXPECT_TRUE(r.lowres.guards_intact());
  EXPECT_TRUE(r.out.guards_intact());
  const Tensor low = r.lowres.tensor({p.B, h, w}), out = r.out.tensor({p.B, kDegOutH, kDegOutW});
  EXPECT_EQ(at::count_nonzero(low[p.sample]).item<int64_t>(), 0) << "lowres of the non-finite sample";
  EXPECT_EQ(at::count_nonzero(out[p.sample]).item<int64_t>(), 0) << "out of the non-finite sample";
  if (p.B > 1) {
    const CamRef ref = gradcam_ref(A, g, kDegOutH, kDegOutW);
    std::vector<bool> skip(static_cast<size_t>(p.B), false);
    skip[p.sample] = true;
    expect_near_ref(low, ref.lowres, true, "lowres", skip);
    expect_near_ref(out, ref.out, true, "out", skip);
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, GradCamNonFinite, testing::ValuesIn(plant_cases()), param_name<PlantCase>);

// ---------------------------------------------------------------------------
// minmax_normalize_cpu
// ---------------------------------------------------------------------------

struct NormCase {
  int64_t B, h, w;
};
std::ostream& operator<<(std::ostream& os, const NormCase& c) {
  return os << "B" << c.B << "_" << c.h << "x" << c.w;
}

std::vector<NormCase> norm_cases() {
  std::vector<NormCase> cases;
  for (int64_t B : {1, 3, 16})
    for (const auto& hw : std::vector<std::array<int64_t, 2>>{{1, 1}, {7, 7}, {16, 8}, {24, 36}, {56, 56}, {224, 224}})
      cases.push_back({B, hw[0], hw[1]});
  return cases;
}

class MinMaxNormalizeShapes : public testing::TestWithParam<NormCase> {};

TEST_P(MinMaxNormalizeShapes, MatchesFloat64Reference) {
  const NormCase c = GetParam();
  const int64_t n = c.h * c.w;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Tensor x = rng.randn({c.B, c.h, c.w}) * 3.f + 1.f;
  Guarded<float> buf(c.B * n, kNaN);
  std::memcpy(buf.data(), fptr(x), sizeof(float) * c.B * n);
  Guarded<uint8_t> status(c.B, 0xEE);
  minmax_normalize_cpu(buf.data(), c.B, n, status.data());

  EXPECT_TRUE(buf.guards_intact());
  expect_status(status, constant_status_ref(x.to(at::kDouble)), "status");
  expect_near_ref(buf.tensor({c.B, c.h, c.w}), minmax_ref(x.to(at::kDouble)), true, "normalised");

  // status may be null; the values are the same.
  Guarded<float> again(c.B * n, kNaN);
  std::memcpy(again.data(), fptr(x), sizeof(float) * c.B * n);
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
  Guarded<float> buf(B * n, kNaN);
  std::memcpy(buf.data(), fptr(x), sizeof(float) * B * n);
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
  Guarded<float> buf(B * n, kNaN);
  std::memcpy(buf.data(), fptr(x), sizeof(float) * B * n);
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

struct ResizeCase {
  int64_t B, h, w, H, W;
  bool align_corners;
};
std::ostream& operator<<(std::ostream& os, const ResizeCase& c) {
  return os << "B" << c.B << "_" << c.h << "x" << c.w << "_to_" << c.H << "x" << c.W
            << (c.align_corners ? "_align_corners" : "_half_pixel");
}

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

struct AggCase {
  int64_t B;
  std::vector<std::array<int64_t, 2>> grids;
  int64_t H, W;
};
std::ostream& operator<<(std::ostream& os, const AggCase& c) {
  os << "B" << c.B;
  for (const auto& g : c.grids) os << "_" << g[0] << "x" << g[1];
  return os << "_to_" << c.H << "x" << c.W;
}

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

class AggregateLayersShapes : public testing::TestWithParam<AggCase> {};

TEST_P(AggregateLayersShapes, MatchesFloat64Reference) {
  const AggCase c = GetParam();
  const int64_t L = static_cast<int64_t>(c.grids.size());
  Rng rng;
  SCOPED_TRACE(rng.trace());
  // Normalised per-layer maps, as the per-layer Grad-CAM produces them.
  std::vector<Tensor> maps;
  std::vector<const float*> ptrs;
  std::vector<int64_t> hs, ws;
  for (const auto& g : c.grids) {
    maps.push_back(minmax_ref(rng.randn({c.B, g[0], g[1]}).to(at::kDouble)).to(at::kFloat).contiguous());
    ptrs.push_back(fptr(maps.back()));
    hs.push_back(g[0]);
    ws.push_back(g[1]);
  }
  Guarded<float> out(c.B * c.H * c.W, kNaN);
  Guarded<uint8_t> status(c.B, 0xEE);
  aggregate_layers_cpu(ptrs.data(), hs.data(), ws.data(), L, c.B, c.H, c.W, out.data(), status.data());

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
  const float* ptrs[] = {fptr(a), fptr(b)};
  const int64_t hs[] = {7, 24}, ws[] = {7, 36};
  Guarded<float> out(B * H * W, kNaN);
  Guarded<uint8_t> status(B, 0xEE);
  aggregate_layers_cpu(ptrs, hs, ws, 2, B, H, W, out.data(), status.data());
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
  Tensor a = minmax_ref(rng.randn({B, 7, 7}).to(at::kDouble)).to(at::kFloat).contiguous();
  Tensor b = minmax_ref(rng.randn({B, 14, 14}).to(at::kDouble)).to(at::kFloat).contiguous();
  a[1].zero_();  // both layers of sample 1 were constant maps (zeros after normalisation)
  b[1].zero_();
  const float* ptrs[] = {fptr(a), fptr(b)};
  const int64_t hs[] = {7, 14}, ws[] = {7, 14};
  Guarded<float> out(B * H * W, kNaN);
  Guarded<uint8_t> status(B, 0xEE);
  aggregate_layers_cpu(ptrs, hs, ws, 2, B, H, W, out.data(), status.data());
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
  Tensor a = minmax_ref(rng.randn({B, 7, 7}).to(at::kDouble)).to(at::kFloat).contiguous();
  Tensor b = minmax_ref(rng.randn({B, 14, 14}).to(at::kDouble)).to(at::kFloat).contiguous();
  b[2].view({-1})[rng.index(14 * 14)] = kNaN;
  const float* ptrs[] = {fptr(a), fptr(b)};
  const int64_t hs[] = {7, 14}, ws[] = {7, 14};
  Guarded<float> out(B * H * W, kNaN);
  Guarded<uint8_t> status(B, 0xEE);
  aggregate_layers_cpu(ptrs, hs, ws, 2, B, H, W, out.data(), status.data());
  expect_status(status, {kCamOk, kCamOk, kCamNonFinite}, "status");
  const Tensor got = out.tensor({B, H, W});
  EXPECT_EQ(at::count_nonzero(got[2]).item<int64_t>(), 0);
  EXPECT_EQ((~at::isfinite(got)).sum().item<int64_t>(), 0);
}

// ---------------------------------------------------------------------------
// colormap_overlay_cpu
// ---------------------------------------------------------------------------

struct OverlayCase {
  int64_t h, w;
  float image_weight;
};
std::ostream& operator<<(std::ostream& os, const OverlayCase& c) {
  return os << c.h << "x" << c.w << "_a" << static_cast<int>(std::lround(c.image_weight * 100)) << "pct";
}

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
  const Tensor m2 = minmax_ref(rng.randn({B, 12, 18}).to(at::kDouble)).to(at::kFloat).contiguous();
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

}  // namespace

// Tests of the CUDA twins (kernels/cuda/*.cu) against their CPU twins
// (kernels/cpu/*.cpp) on the same random inputs: the CPU twins are tested
// against float64 ATen references in test_kernels.cpp, so the CPU twin is the
// oracle here and this binary needs neither LibTorch nor xcam_core.
//
// STYLE.md: TEST_P over named shapes (1, odd sizes, sizes that are not
// multiples of the block size, large), f32/f16/bf16 inputs, fresh random
// inputs every test, device outputs poisoned before the kernel runs with
// poisoned guard zones on both sides, every element checked, per-sample
// relative norm. Every test skips without a CUDA device.
//
// Every failure prints the seed; XCAM_TEST_SEED=<n> replays a run.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "xcam/kernels/elementwise.h"
#include "xcam/kernels/gradcam.h"
#include "xcam/kernels/normalize_resize.h"
#include "xcam/kernels/overlay.h"
#include "xcam/kernels/pool.h"
#include "xcam/kernels/scorecam.h"
#include "xcam/kernels/types.h"
#include "xcam/kernels/weighted_sum.h"
#include "kernel_test_util.h"

namespace {

using namespace xcam::kernels;
using namespace xcam::kernels::test_util;

constexpr double kRelTol = 1e-5;             // ||cuda - cpu|| / ||cpu|| per sample
constexpr int64_t kMaxElements = 8'000'000;  // B*K*h*w cap per case (the CPU twin is the oracle)

// cudaGetDeviceCount succeeds and finds a device. Called inside tests only:
// gtest_discover_tests runs the binary without a GPU to list the tests.
bool cuda_available() {
  static const bool available = [] {
    int n = 0;
    const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
    (void)cudaGetLastError();  // clear the error of a machine without a driver
    return ok;
  }();
  return available;
}

void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
#define CUDA_OK(expr) cuda_ok((expr), #expr)

// ---------------------------------------------------------------------------
// Random inputs in the three element types
// ---------------------------------------------------------------------------

class Rng {
 public:
  Rng() : seed_(pick_test_seed()), gen_(seed_) {}
  std::string trace() const { return seed_trace(seed_); }
  std::vector<float> normal(int64_t n, float scale = 1.f, float shift = 0.f) {
    std::normal_distribution<float> d(shift, scale);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = d(gen_);
    return v;
  }
  std::vector<float> uniform(int64_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = d(gen_);
    return v;
  }
  std::vector<uint8_t> bytes(int64_t n) {
    std::uniform_int_distribution<int> d(0, 255);
    std::vector<uint8_t> v(static_cast<size_t>(n));
    for (uint8_t& x : v) x = static_cast<uint8_t>(d(gen_));
    return v;
  }
  int64_t index(int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(gen_); }

 private:
  uint64_t seed_;
  std::mt19937_64 gen_;
};

// float -> half / bfloat16 bits, truncating: both twins decode the same
// bits, so the rounding of the test's inputs does not matter; Inf and NaN
// stay Inf and NaN.
uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  return static_cast<uint16_t>(u >> 16);
}
uint16_t to_f16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  if (std::isnan(f)) return 0x7e00;
  const int exp = static_cast<int>((u >> 23) & 0xffu) - 127 + 15;
  if (exp >= 31) return sign | 0x7c00;  // Inf (and overflow)
  if (exp <= 0) return sign;            // flush tiny values to zero
  return static_cast<uint16_t>(sign | (exp << 10) | ((u >> 13) & 0x3ffu));
}

// Host values encoded in `dtype`, ready for either twin.
class Encoded {
 public:
  Encoded(const std::vector<float>& v, DType dtype) : dtype_(dtype), n_(static_cast<int64_t>(v.size())) {
    const size_t elem = dtype == DType::f32 ? 4 : 2;
    bytes_.resize(v.size() * elem);
    for (size_t i = 0; i < v.size(); ++i) {
      if (dtype == DType::f32) {
        std::memcpy(bytes_.data() + 4 * i, &v[i], 4);
      } else {
        const uint16_t b = dtype == DType::f16 ? to_f16_bits(v[i]) : to_bf16_bits(v[i]);
        std::memcpy(bytes_.data() + 2 * i, &b, 2);
      }
    }
  }
  const void* data() const { return bytes_.data(); }
  size_t size_bytes() const { return bytes_.size(); }
  int64_t size() const { return n_; }
  DType dtype() const { return dtype_; }

 private:
  DType dtype_;
  int64_t n_;
  std::vector<unsigned char> bytes_;
};

// ---------------------------------------------------------------------------
// Device memory
// ---------------------------------------------------------------------------

// n elements of device memory between two guard zones; the whole allocation
// is filled with `poison` bytes before the kernel runs.
template <typename T>
class DeviceBuffer {
 public:
  static constexpr int64_t kGuard = 64;
  explicit DeviceBuffer(int64_t n, unsigned char poison = 0xFF) : n_(n), poison_(poison) {
    CUDA_OK(cudaMalloc(&base_, bytes_total()));
    CUDA_OK(cudaMemset(base_, poison_, bytes_total()));
  }
  ~DeviceBuffer() { (void)cudaFree(base_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() { return reinterpret_cast<T*>(static_cast<unsigned char*>(base_) + kGuard * sizeof(T)); }
  const T* data() const { return const_cast<DeviceBuffer*>(this)->data(); }
  int64_t size() const { return n_; }

  void upload(const void* host, size_t bytes) {
    ASSERT_LE(bytes, sizeof(T) * static_cast<size_t>(n_));
    CUDA_OK(cudaMemcpy(data(), host, bytes, cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> v(static_cast<size_t>(n_));
    CUDA_OK(cudaMemcpy(v.data(), data(), sizeof(T) * v.size(), cudaMemcpyDeviceToHost));
    return v;
  }
  bool guards_intact() const {
    std::vector<unsigned char> all(bytes_total());
    CUDA_OK(cudaMemcpy(all.data(), base_, all.size(), cudaMemcpyDeviceToHost));
    const size_t guard = kGuard * sizeof(T);
    for (size_t i = 0; i < guard; ++i)
      if (all[i] != poison_ || all[all.size() - 1 - i] != poison_) return false;
    return true;
  }

 private:
  size_t bytes_total() const { return sizeof(T) * static_cast<size_t>(n_ + 2 * kGuard); }
  int64_t n_;
  unsigned char poison_;
  void* base_ = nullptr;
};

template <typename T>
std::unique_ptr<DeviceBuffer<T>> to_device(const std::vector<T>& v) {
  auto d = std::make_unique<DeviceBuffer<T>>(static_cast<int64_t>(v.size()));
  d->upload(v.data(), sizeof(T) * v.size());
  return d;
}
std::unique_ptr<DeviceBuffer<unsigned char>> to_device(const Encoded& e) {
  auto d = std::make_unique<DeviceBuffer<unsigned char>>(static_cast<int64_t>(e.size_bytes()));
  d->upload(e.data(), e.size_bytes());
  return d;
}

// A stream and an allocator that counts what the kernels take, so that every
// test also checks that temporaries come from the caller and go back.
class Context {
 public:
  explicit Context(bool with_allocator = true) {
    CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    ctx_.stream = stream_;
    if (with_allocator) {
      ctx_.allocator.allocate = &Context::allocate;
      ctx_.allocator.release = &Context::release;
      ctx_.allocator.context = this;
    }
  }
  ~Context() { (void)cudaStreamDestroy(stream_); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const CudaContext& get() const { return ctx_; }
  void sync() const { CUDA_OK(cudaStreamSynchronize(stream_)); }
  int allocations() const { return allocations_; }
  int outstanding() const { return allocations_ - releases_; }

 private:
  static void* allocate(size_t bytes, void* self) {
    auto* c = static_cast<Context*>(self);
    void* p = nullptr;
    // Stream-ordered on the op's stream, as LibTorch's caching allocator is.
    if (cudaMallocAsync(&p, bytes, c->stream_) != cudaSuccess) return nullptr;
    ++c->allocations_;
    return p;
  }
  static void release(void* p, void* self) {
    auto* c = static_cast<Context*>(self);
    (void)cudaFreeAsync(p, c->stream_);
    ++c->releases_;
  }
  cudaStream_t stream_ = nullptr;
  CudaContext ctx_;
  int allocations_ = 0, releases_ = 0;
};

// ---------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------

// got (CUDA) against want (CPU twin): `samples` rows of equal length. Every
// element must have been written (device outputs start as NaN) and be finite,
// and each row must match by relative norm.
void expect_near(const std::vector<float>& got, const std::vector<float>& want, int64_t samples,
                 const std::string& what, const std::vector<bool>& skip = {}) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t unwritten = 0;
  for (float v : got) unwritten += std::isfinite(v) ? 0 : 1;
  EXPECT_EQ(unwritten, 0) << what << ": " << unwritten << " of " << got.size()
                          << " elements are NaN/Inf (never written, or not finite)";
  if (unwritten != 0 || samples == 0) return;
  const size_t row = got.size() / static_cast<size_t>(samples);
  for (int64_t b = 0; b < samples; ++b) {
    if (!skip.empty() && skip[static_cast<size_t>(b)]) continue;
    double diff = 0, norm = 0, max_abs = 0;
    for (size_t i = b * row; i < (b + 1) * row; ++i) {
      const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
      diff += d * d;
      norm += static_cast<double>(want[i]) * want[i];
      max_abs = std::max(max_abs, std::abs(d));
    }
    diff = std::sqrt(diff);
    norm = std::sqrt(norm);
    EXPECT_LE(diff, kRelTol * norm) << what << ", sample " << b << ": relative error "
                                    << (norm > 0 ? diff / norm : diff) << " (||cpu|| = " << norm << ", max abs error "
                                    << max_abs << ")";
  }
}

void expect_status(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t b = 0; b < want.size(); ++b)
    EXPECT_EQ(int{got[b]}, int{want[b]}) << what << ", sample " << b << " (0 ok, 1 constant, 2 non-finite)";
}

int64_t count_nonzero(const std::vector<float>& v, int64_t begin, int64_t end) {
  int64_t n = 0;
  for (int64_t i = begin; i < end; ++i) n += v[static_cast<size_t>(i)] != 0.f;
  return n;
}

// `cuda(out, ctx)` writes n floats into a poisoned, guarded device buffer on a
// fresh Context, `cpu(want)` the same n floats on the host: the guards must be
// intact, (with check_temporaries) every temporary released, and each of the
// `samples` rows must match by relative norm.
template <typename Cuda, typename Cpu>
void expect_twins_match(int64_t n, int64_t samples, const std::string& what, Cuda&& cuda, Cpu&& cpu,
                        bool check_temporaries = true) {
  Context ctx;
  DeviceBuffer<float> out(n);
  cuda(out.data(), ctx.get());
  ctx.sync();
  EXPECT_TRUE(out.guards_intact());
  if (check_temporaries) {
    EXPECT_EQ(ctx.outstanding(), 0);
  }
  std::vector<float> want(static_cast<size_t>(n));
  cpu(want.data());
  expect_near(out.download(), want, samples, what);
}

// ---------------------------------------------------------------------------
// Grad-CAM (fused)
// ---------------------------------------------------------------------------

std::vector<CamCase> cam_cases() {
  std::vector<CamCase> cases;
  for (int64_t B : {1, 3, 16})
    for (int64_t K : {1, 7, 64, 65, 512, 2048})  // 65: one full channel chunk and one of 1
      for (const auto& g : kCamGrids)
        if (B * K * g[0] * g[1] <= kMaxElements) cases.push_back({B, K, g[0], g[1], g[2], g[3]});
  return cases;
}

struct CamOutputs {
  std::vector<float> lowres, out;
  std::vector<uint8_t> status;
};

CamOutputs run_gradcam_cpu(const Encoded& A, const Encoded& g, CamShape s, int64_t H, int64_t W) {
  CamOutputs r{std::vector<float>(static_cast<size_t>(s.batch * s.height * s.width)),
               std::vector<float>(static_cast<size_t>(s.batch * H * W)), std::vector<uint8_t>(s.batch)};
  gradcam_cpu(A.data(), g.data(), A.dtype(), s, H, W, r.lowres.data(), r.out.data(), r.status.data());
  return r;
}

CamOutputs run_gradcam_cuda(const Encoded& A, const Encoded& g, CamShape s, int64_t H, int64_t W, Context& ctx) {
  const auto dA = to_device(A), dg = to_device(g);
  DeviceBuffer<float> lowres(s.batch * s.height * s.width), out(s.batch * H * W);
  DeviceBuffer<uint8_t> status(s.batch, 0xEE);
  gradcam_cuda(dA->data(), dg->data(), A.dtype(), s, H, W, lowres.data(), out.data(), status.data(), ctx.get());
  ctx.sync();
  EXPECT_TRUE(lowres.guards_intact()) << "lowres written out of bounds";
  EXPECT_TRUE(out.guards_intact()) << "out written out of bounds";
  EXPECT_TRUE(status.guards_intact()) << "status written out of bounds";
  return {lowres.download(), out.download(), status.download()};
}

class GradCamCuda : public testing::TestWithParam<CamCase> {};

// Each element type in turn (a case per type would triple the processes
// ctest starts, each paying for a CUDA context).
TEST_P(GradCamCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const CamCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const CamShape s{c.B, c.K, c.h, c.w};
  const int64_t n = c.B * c.K * c.h * c.w;
  for (DType dt : kDTypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Encoded A(rng.normal(n), dt), g(rng.normal(n), dt);
    Context ctx;
    const CamOutputs got = run_gradcam_cuda(A, g, s, c.H, c.W, ctx);
    const CamOutputs want = run_gradcam_cpu(A, g, s, c.H, c.W);
    expect_status(got.status, want.status, "status");
    expect_near(got.lowres, want.lowres, c.B, "lowres");
    expect_near(got.out, want.out, c.B, "out");
    EXPECT_GT(ctx.allocations(), 0) << "temporaries must come from the caller's allocator";
    EXPECT_EQ(ctx.outstanding(), 0) << "temporaries not released";
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, GradCamCuda, testing::ValuesIn(cam_cases()), param_name<CamCase>);

// NaN/Inf in one sample's activations or gradients: that sample is flagged
// and zeroed, the others are unaffected, as on the CPU.
struct PlantCase {
  bool in_gradients;
  float value;
  int64_t K;
  bool zero_weight;  // the planted channel has all-zero gradients (Inf * 0)
};
std::ostream& operator<<(std::ostream& os, const PlantCase& p) {
  os << (std::isnan(p.value) ? "NaN" : (p.value > 0 ? "PosInf" : "NegInf")) << "_in_" << (p.in_gradients ? "g" : "A")
     << "_K" << p.K;
  if (p.zero_weight) os << "_zero_weight";
  return os;
}
std::vector<PlantCase> plant_cases() {
  std::vector<PlantCase> cases;
  for (bool in_g : {false, true})
    for (float v : {kNaN, kInf, -kInf})
      for (int64_t K : {7, 200}) cases.push_back({in_g, v, K, false});
  cases.push_back({false, kInf, 64, true});
  cases.push_back({false, -kInf, 200, true});
  return cases;
}

class GradCamCudaNonFinite : public testing::TestWithParam<PlantCase> {};

TEST_P(GradCamCudaNonFinite, FlagsOnlyThatSample) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const PlantCase p = GetParam();
  constexpr int64_t B = 3, h = 7, w = 7, H = 64, W = 48, bad = 1;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const CamShape s{B, p.K, h, w};
  std::vector<float> a = rng.normal(B * p.K * h * w), g = rng.normal(B * p.K * h * w);
  const int64_t k = rng.index(p.K), plane = (bad * p.K + k) * h * w;
  if (p.zero_weight) std::fill(g.begin() + plane, g.begin() + plane + h * w, 0.f);
  (p.in_gradients ? g : a)[static_cast<size_t>(plane + rng.index(h * w))] = p.value;
  for (DType dt : kDTypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Encoded A(a, dt), G(g, dt);
    Context ctx;
    const CamOutputs got = run_gradcam_cuda(A, G, s, H, W, ctx);
    const CamOutputs want = run_gradcam_cpu(A, G, s, H, W);
    expect_status(got.status, {kCamOk, kCamNonFinite, kCamOk}, "status");
    expect_status(want.status, {kCamOk, kCamNonFinite, kCamOk}, "status of the CPU twin");
    EXPECT_EQ(count_nonzero(got.lowres, bad * h * w, (bad + 1) * h * w), 0) << "lowres of the flagged sample";
    EXPECT_EQ(count_nonzero(got.out, bad * H * W, (bad + 1) * H * W), 0) << "out of the flagged sample";
    expect_near(got.lowres, want.lowres, B, "lowres");
    expect_near(got.out, want.out, B, "out");
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, GradCamCudaNonFinite, testing::ValuesIn(plant_cases()), param_name<PlantCase>);

TEST(GradCamCudaDegenerate, ConstantMapsAreFlaggedAndZero) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t B = 3, K = 64, h = 7, w = 7, H = 224, W = 224;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  std::vector<float> a = rng.normal(B * K * h * w), g = rng.normal(B * K * h * w);
  std::fill(g.begin(), g.begin() + K * h * w, 0.f);          // sample 0: zero gradients
  for (int64_t i = 2 * K * h * w; i < 3 * K * h * w; ++i) {  // sample 2: every w_k < 0, A > 0
    a[static_cast<size_t>(i)] = std::abs(a[static_cast<size_t>(i)]) + 0.1f;
    g[static_cast<size_t>(i)] = -std::abs(g[static_cast<size_t>(i)]) - 0.1f;
  }
  const Encoded A(a, DType::f32), G(g, DType::f32);
  Context ctx;
  const CamOutputs got = run_gradcam_cuda(A, G, {B, K, h, w}, H, W, ctx);
  expect_status(got.status, {kCamConstant, kCamOk, kCamConstant}, "status");
  for (int64_t b : {0, 2}) {
    EXPECT_EQ(count_nonzero(got.lowres, b * h * w, (b + 1) * h * w), 0) << "sample " << b;
    EXPECT_EQ(count_nonzero(got.out, b * H * W, (b + 1) * H * W), 0) << "sample " << b;
  }
  expect_near(got.out, run_gradcam_cpu(A, G, {B, K, h, w}, H, W).out, B, "out");
}

TEST(GradCamCuda, RequiresLowres) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  Context ctx;
  DeviceBuffer<float> A(64), g(64), out(64);
  DeviceBuffer<uint8_t> status(1);
  EXPECT_THROW(
      gradcam_cuda(A.data(), g.data(), DType::f32, {1, 1, 8, 8}, 8, 8, nullptr, out.data(), status.data(), ctx.get()),
      std::invalid_argument);
}

// The fallback without a caller allocator (cudaMallocAsync on the stream), on
// the legacy default stream; bitwise the same result as with one.
TEST(GradCamCuda, DefaultStreamAndNoAllocator) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t B = 3, K = 300, h = 14, w = 14, H = 100, W = 130;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Encoded A(rng.normal(B * K * h * w), DType::f32), G(rng.normal(B * K * h * w), DType::f32);
  Context with;
  const CamOutputs a = run_gradcam_cuda(A, G, {B, K, h, w}, H, W, with);
  const auto dA = to_device(A), dg = to_device(G);
  DeviceBuffer<float> lowres(B * h * w), out(B * H * W);
  DeviceBuffer<uint8_t> status(B, 0xEE);
  const CudaContext bare;  // null stream, no allocator
  gradcam_cuda(dA->data(), dg->data(), DType::f32, {B, K, h, w}, H, W, lowres.data(), out.data(), status.data(), bare);
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(a.lowres, lowres.download());
  EXPECT_EQ(a.out, out.download());
  EXPECT_EQ(a.status, status.download());
}

// ---------------------------------------------------------------------------
// Channel weights, weighted sum, element-wise maps
// ---------------------------------------------------------------------------

struct ChannelCase {
  int64_t B, K, h, w;
};
std::ostream& operator<<(std::ostream& os, const ChannelCase& c) {
  return os << "B" << c.B << "_K" << c.K << "_" << c.h << "x" << c.w;
}
std::vector<ChannelCase> channel_cases() {
  std::vector<ChannelCase> cases;
  const std::vector<std::array<int64_t, 2>> grids = {{1, 1}, {7, 7}, {16, 8}, {24, 36}, {56, 56}};
  for (int64_t B : {1, 3, 16})
    for (int64_t K : {1, 7, 64, 65, 512, 2048})
      for (const auto& g : grids)
        if (B * K * g[0] * g[1] <= kMaxElements) cases.push_back({B, K, g[0], g[1]});
  return cases;
}

class ChannelWeightsCuda : public testing::TestWithParam<ChannelCase> {};

TEST_P(ChannelWeightsCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const ChannelCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const CamShape s{c.B, c.K, c.h, c.w};
  const int64_t n = c.B * c.K * c.h * c.w;
  // Non-negative activations (post-ReLU feature maps): with sum_s A < 0 the
  // Grad-CAM++ and XGradCAM weights have poles, where any two summation
  // orders disagree by more than rounding.
  std::vector<float> a = rng.normal(n);
  for (float& x : a) x = std::abs(x);
  const std::vector<float> g = rng.normal(n);
  for (DType dt : kDTypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Encoded A(a, dt), G(g, dt);
    const auto dA = to_device(A), dg = to_device(G);
    for (WeightMethod m : {WeightMethod::gradcam, WeightMethod::gradcampp, WeightMethod::xgradcam}) {
      SCOPED_TRACE(method_name(m));
      expect_twins_match(
          c.B * c.K, c.B, "weights",
          [&](float* out, const CudaContext& ctx) {
            channel_weights_cuda(dA->data(), dg->data(), dt, s, m, out, ctx);
          },
          [&](float* want) { channel_weights_cpu(A.data(), G.data(), dt, s, m, want); });
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, ChannelWeightsCuda, testing::ValuesIn(channel_cases()), param_name<ChannelCase>);

class WeightedSumCuda : public testing::TestWithParam<ChannelCase> {};

TEST_P(WeightedSumCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const ChannelCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const CamShape s{c.B, c.K, c.h, c.w};
  const std::vector<float> a = rng.normal(c.B * c.K * c.h * c.w), weights = rng.normal(c.B * c.K);
  const auto dw = to_device(weights);
  for (DType dt : kDTypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Encoded A(a, dt);
    const auto dA = to_device(A);
    expect_twins_match(
        c.B * c.h * c.w, c.B, "cam",
        [&](float* cam, const CudaContext& ctx) { weighted_sum_relu_cuda(dA->data(), dt, s, dw->data(), cam, ctx); },
        [&](float* want) { weighted_sum_relu_cpu(A.data(), dt, s, weights.data(), want); });
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, WeightedSumCuda, testing::ValuesIn(channel_cases()), param_name<ChannelCase>);

class ElementwiseCamCuda : public testing::TestWithParam<ChannelCase> {};

TEST_P(ElementwiseCamCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const ChannelCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const CamShape s{c.B, c.K, c.h, c.w};
  const int64_t n = c.B * c.K * c.h * c.w;
  const std::vector<float> a = rng.normal(n), g = rng.normal(n);
  for (DType dt : kDTypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Encoded A(a, dt), G(g, dt);
    const auto dA = to_device(A), dg = to_device(G);
    for (ElementwiseMethod m :
         {ElementwiseMethod::layercam, ElementwiseMethod::hirescam, ElementwiseMethod::gradcam_elementwise}) {
      SCOPED_TRACE("method " + std::to_string(static_cast<int>(m)));
      expect_twins_match(
          c.B * c.h * c.w, c.B, "cam",
          [&](float* cam, const CudaContext& ctx) { elementwise_cam_cuda(dA->data(), dg->data(), dt, s, m, cam, ctx); },
          [&](float* want) { elementwise_cam_cpu(A.data(), G.data(), dt, s, m, want); });
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, ElementwiseCamCuda, testing::ValuesIn(channel_cases()), param_name<ChannelCase>);

// ---------------------------------------------------------------------------
// Min-max normalisation, resize, normalise + resize
// ---------------------------------------------------------------------------

std::vector<NormCase> norm_cases() {
  std::vector<NormCase> cases;
  for (int64_t B : {1, 3, 16})
    for (const auto& hw :
         std::vector<std::array<int64_t, 2>>{{1, 1}, {7, 7}, {16, 8}, {24, 36}, {56, 56}, {224, 224}, {1000, 1000}})
      if (B * hw[0] * hw[1] <= kMaxElements) cases.push_back({B, hw[0], hw[1]});
  return cases;
}

class MinMaxNormalizeCuda : public testing::TestWithParam<NormCase> {};

TEST_P(MinMaxNormalizeCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const NormCase c = GetParam();
  const int64_t n = c.h * c.w;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const std::vector<float> x = rng.normal(c.B * n, 3.f, 1.f);
  Context ctx;
  const auto dx = to_device(x);
  DeviceBuffer<uint8_t> status(c.B, 0xEE);
  minmax_normalize_cuda(dx->data(), c.B, n, status.data(), ctx.get());
  ctx.sync();
  std::vector<float> want = x;
  std::vector<uint8_t> want_status(static_cast<size_t>(c.B));
  minmax_normalize_cpu(want.data(), c.B, n, want_status.data());
  EXPECT_TRUE(dx->guards_intact() && status.guards_intact());
  expect_status(status.download(), want_status, "status");
  expect_near(dx->download(), want, c.B, "normalised");

  // status may be null.
  const auto again = to_device(x);
  minmax_normalize_cuda(again->data(), c.B, n, nullptr, ctx.get());
  ctx.sync();
  EXPECT_EQ(again->download(), dx->download()) << "result differs with status == nullptr";
}

INSTANTIATE_TEST_SUITE_P(Kernels, MinMaxNormalizeCuda, testing::ValuesIn(norm_cases()), param_name<NormCase>);

TEST(MinMaxNormalizeCuda, DegenerateRowsAreZeroedAndFlaggedPerSample) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t B = 7, n = 5000;  // more than one element per thread
  Rng rng;
  SCOPED_TRACE(rng.trace());
  std::vector<float> x = rng.normal(B * n);
  std::fill(x.begin() + 1 * n, x.begin() + 2 * n, 3.5f);  // constant
  x[static_cast<size_t>(2 * n + rng.index(n))] = kNaN;
  x[static_cast<size_t>(3 * n + rng.index(n))] = kInf;
  x[static_cast<size_t>(4 * n + rng.index(n))] = -kInf;
  std::fill(x.begin() + 5 * n, x.begin() + 6 * n, 0.f);  // constant zero
  Context ctx;
  const auto dx = to_device(x);
  DeviceBuffer<uint8_t> status(B, 0xEE);
  minmax_normalize_cuda(dx->data(), B, n, status.data(), ctx.get());
  ctx.sync();
  expect_status(status.download(),
                {kCamOk, kCamConstant, kCamNonFinite, kCamNonFinite, kCamNonFinite, kCamConstant, kCamOk}, "status");
  const std::vector<float> got = dx->download();
  for (int64_t b : {1, 2, 3, 4, 5}) EXPECT_EQ(count_nonzero(got, b * n, (b + 1) * n), 0) << "sample " << b;
  std::vector<float> want = x;
  minmax_normalize_cpu(want.data(), B, n, nullptr);
  expect_near(got, want, B, "normalised");
}

std::vector<ResizeCase> resize_cases() {
  const std::vector<std::array<int64_t, 4>> sizes = {
      {1, 1, 224, 224}, {7, 7, 224, 224}, {14, 14, 224, 224}, {16, 8, 50, 37}, {24, 36, 100, 130},  {56, 56, 20, 30},
      {7, 7, 1, 1},     {5, 9, 5, 9},     {1, 9, 4, 20},      {14, 14, 7, 3},  {28, 28, 1080, 1920}};
  std::vector<ResizeCase> cases;
  for (int64_t B : {1, 3, 16})
    for (const auto& s : sizes)
      for (bool ac : {false, true})
        if (B * s[2] * s[3] <= kMaxElements) cases.push_back({B, s[0], s[1], s[2], s[3], ac});
  return cases;
}

class ResizeBilinearCuda : public testing::TestWithParam<ResizeCase> {};

TEST_P(ResizeBilinearCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const ResizeCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const std::vector<float> x = rng.normal(c.B * c.h * c.w, 1.f, 0.5f);
  const auto dx = to_device(x);
  expect_twins_match(
      c.B * c.H * c.W, c.B, "resized",
      [&](float* out, const CudaContext& ctx) {
        resize_bilinear_cuda(dx->data(), c.B, c.h, c.w, out, c.H, c.W, c.align_corners, ctx);
      },
      [&](float* want) { resize_bilinear_cpu(x.data(), c.B, c.h, c.w, want, c.H, c.W, c.align_corners); },
      /*check_temporaries=*/false);
}

INSTANTIATE_TEST_SUITE_P(Kernels, ResizeBilinearCuda, testing::ValuesIn(resize_cases()), param_name<ResizeCase>);

class NormalizeResizeCuda : public testing::TestWithParam<ResizeCase> {};

TEST_P(NormalizeResizeCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const ResizeCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  std::vector<float> x = rng.normal(c.B * c.h * c.w);
  if (c.B > 1) std::fill(x.begin(), x.begin() + c.h * c.w, 2.f);  // sample 0 constant
  Context ctx;
  const auto dx = to_device(x);
  DeviceBuffer<float> out(c.B * c.H * c.W);
  DeviceBuffer<uint8_t> status(c.B, 0xEE);
  normalize_resize_cuda(dx->data(), c.B, c.h, c.w, out.data(), c.H, c.W, status.data(), ctx.get());
  ctx.sync();
  EXPECT_TRUE(out.guards_intact() && dx->guards_intact() && status.guards_intact());
  std::vector<float> want_low = x, want(static_cast<size_t>(c.B * c.H * c.W));
  std::vector<uint8_t> want_status(static_cast<size_t>(c.B));
  normalize_resize_cpu(want_low.data(), c.B, c.h, c.w, want.data(), c.H, c.W, want_status.data());
  expect_status(status.download(), want_status, "status");
  expect_near(dx->download(), want_low, c.B, "lowres");
  expect_near(out.download(), want, c.B, "out");
}

std::vector<ResizeCase> normalize_resize_cases() {
  std::vector<ResizeCase> cases;
  for (const ResizeCase& c : resize_cases())
    if (!c.align_corners) cases.push_back(c);
  return cases;
}
INSTANTIATE_TEST_SUITE_P(Kernels, NormalizeResizeCuda, testing::ValuesIn(normalize_resize_cases()),
                         param_name<ResizeCase>);

// ---------------------------------------------------------------------------
// Layer aggregation
// ---------------------------------------------------------------------------

std::vector<AggCase> agg_cases() {
  std::vector<std::array<int64_t, 2>> many;  // more layers than one launch takes (8)
  for (int64_t i = 1; i <= 11; ++i) many.push_back({i + 2, 2 * i + 1});
  const std::vector<AggCase> base = {
      {0, {{7, 7}, {14, 14}}, 224, 224},
      {0, {{7, 7}, {14, 14}, {28, 28}}, 224, 224},
      {0, {{24, 36}, {12, 18}, {6, 9}}, 100, 130},
      {0, {{56, 56}, {28, 28}}, 20, 30},
      {0, {{16, 8}, {1, 1}}, 50, 37},
      {0, {{7, 7}}, 64, 48},
      {0, many, 100, 130},
  };
  std::vector<AggCase> cases;
  for (int64_t B : {1, 3, 16})
    for (AggCase c : base) {
      c.B = B;
      cases.push_back(c);
    }
  return cases;
}

struct AggResult {
  std::vector<float> out;
  std::vector<uint8_t> status;
};

// Runs both twins on the same layer maps; returns {cuda, cpu}.
std::pair<AggResult, AggResult> run_aggregate(const std::vector<std::vector<float>>& maps,
                                              const std::vector<int64_t>& hs, const std::vector<int64_t>& ws, int64_t B,
                                              int64_t H, int64_t W) {
  const int64_t L = static_cast<int64_t>(maps.size());
  std::vector<std::unique_ptr<DeviceBuffer<float>>> dev;
  std::vector<const float*> dptrs, hptrs;
  for (const auto& m : maps) {
    dev.push_back(to_device(m));
    dptrs.push_back(dev.back()->data());
    hptrs.push_back(m.data());
  }
  Context ctx;
  DeviceBuffer<float> out(B * H * W);
  DeviceBuffer<uint8_t> status(B, 0xEE);
  aggregate_layers_cuda(dptrs.data(), hs.data(), ws.data(), L, B, H, W, out.data(), status.data(), ctx.get());
  ctx.sync();
  EXPECT_TRUE(out.guards_intact() && status.guards_intact());
  AggResult cpu{std::vector<float>(static_cast<size_t>(B * H * W)), std::vector<uint8_t>(static_cast<size_t>(B))};
  aggregate_layers_cpu(hptrs.data(), hs.data(), ws.data(), L, B, H, W, cpu.out.data(), cpu.status.data());
  return {{out.download(), status.download()}, cpu};
}

class AggregateLayersCuda : public testing::TestWithParam<AggCase> {};

TEST_P(AggregateLayersCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const AggCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  // Normalised-looking maps in [0, 1], and one layer with negative values
  // (the relu of the formula must act).
  std::vector<std::vector<float>> maps;
  std::vector<int64_t> hs, ws;
  for (size_t l = 0; l < c.grids.size(); ++l) {
    const int64_t n = c.B * c.grids[l][0] * c.grids[l][1];
    maps.push_back(l == 0 && c.grids.size() > 1 ? rng.normal(n) : rng.uniform(n, 0.f, 1.f));
    hs.push_back(c.grids[l][0]);
    ws.push_back(c.grids[l][1]);
  }
  const auto [got, want] = run_aggregate(maps, hs, ws, c.B, c.H, c.W);
  expect_status(got.status, want.status, "status");
  expect_near(got.out, want.out, c.B, "aggregated");
}

INSTANTIATE_TEST_SUITE_P(Kernels, AggregateLayersCuda, testing::ValuesIn(agg_cases()), param_name<AggCase>);

TEST(AggregateLayersCuda, NaNInALayerMapIsFlaggedNotMasked) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t B = 3, H = 64, W = 48;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  std::vector<std::vector<float>> maps = {rng.uniform(B * 49, 0.f, 1.f), rng.uniform(B * 196, 0.f, 1.f)};
  maps[1][static_cast<size_t>(2 * 196 + rng.index(196))] = kNaN;
  std::fill(maps[0].begin() + 49, maps[0].begin() + 98, 0.f);  // sample 1: constant in both layers
  std::fill(maps[1].begin() + 196, maps[1].begin() + 392, 0.f);
  const auto [got, want] = run_aggregate(maps, {7, 14}, {7, 14}, B, H, W);
  expect_status(got.status, {kCamOk, kCamConstant, kCamNonFinite}, "status");
  expect_status(want.status, {kCamOk, kCamConstant, kCamNonFinite}, "status of the CPU twin");
  EXPECT_EQ(count_nonzero(got.out, H * W, 3 * H * W), 0);
  expect_near(got.out, want.out, B, "aggregated");
}

// ---------------------------------------------------------------------------
// Score-CAM masks
// ---------------------------------------------------------------------------

struct MaskCase {
  int64_t K, h, w, k0, k1, C, H, W;
  DType dtype;
};
std::ostream& operator<<(std::ostream& os, const MaskCase& c) {
  return os << "K" << c.K << "_" << c.h << "x" << c.w << "_k" << c.k0 << "to" << c.k1 << "_C" << c.C << "_" << c.H
            << "x" << c.W << "_" << dtype_name(c.dtype);
}
std::vector<MaskCase> mask_cases() {
  const std::vector<std::array<int64_t, 8>> base = {
      {64, 7, 7, 0, 32, 3, 224, 224}, {512, 14, 14, 480, 512, 3, 224, 224}, {7, 1, 1, 0, 7, 3, 50, 37},
      {16, 16, 8, 5, 16, 1, 50, 37},  {3, 24, 36, 1, 2, 3, 100, 130},       {64, 56, 56, 10, 17, 3, 20, 30},
      {9, 7, 7, 0, 9, 4, 1, 1}};
  std::vector<MaskCase> cases;
  for (DType dt : kDTypes)
    for (const auto& b : base) cases.push_back({b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], dt});
  return cases;
}

class ScoreCamMasksCuda : public testing::TestWithParam<MaskCase> {};

TEST_P(ScoreCamMasksCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const MaskCase c = GetParam();
  Rng rng;
  SCOPED_TRACE(rng.trace());
  const Encoded A(rng.normal(c.K * c.h * c.w), c.dtype);
  const std::vector<float> input = rng.normal(c.C * c.H * c.W);
  const int64_t masks = c.k1 - c.k0, n = masks * c.C * c.H * c.W;
  const auto dA = to_device(A);
  const auto din = to_device(input);
  expect_twins_match(
      n, masks, "masked inputs",
      [&](float* out, const CudaContext& ctx) {
        scorecam_masks_cuda(dA->data(), c.dtype, c.K, c.h, c.w, c.k0, c.k1, din->data(), c.C, c.H, c.W, out, ctx);
      },
      [&](float* want) {
        scorecam_masks_cpu(A.data(), c.dtype, c.K, c.h, c.w, c.k0, c.k1, input.data(), c.C, c.H, c.W, want);
      });
}

INSTANTIATE_TEST_SUITE_P(Kernels, ScoreCamMasksCuda, testing::ValuesIn(mask_cases()), param_name<MaskCase>);

// ---------------------------------------------------------------------------
// Colormap overlay
// ---------------------------------------------------------------------------

std::vector<OverlayCase> overlay_cases() {
  std::vector<OverlayCase> cases;
  for (const auto& hw : std::vector<std::array<int64_t, 2>>{{1, 1}, {7, 5}, {224, 224}, {301, 517}, {1080, 1920}})
    for (float a : {0.f, 0.5f, 0.3f}) cases.push_back({hw[0], hw[1], a});
  return cases;
}

class ColormapOverlayCuda : public testing::TestWithParam<OverlayCase> {};

TEST_P(ColormapOverlayCuda, MatchesCpuTwin) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const OverlayCase c = GetParam();
  const int64_t n = c.h * c.w;
  Rng rng;
  SCOPED_TRACE(rng.trace());
  std::vector<float> map = rng.uniform(n, 0.f, 1.f);
  map[0] = 1.f;
  if (n > 3) {
    map[1] = -0.25f;  // out of range: clamped
    map[2] = 1.75f;
    map[3] = kNaN;  // must still index inside the LUT
  }
  const std::vector<uint8_t> lut = rng.bytes(256 * 3), image = rng.bytes(n * 3);
  const auto dmap = to_device(map);
  const auto dlut = to_device(lut), dimage = to_device(image);
  Context ctx;
  DeviceBuffer<uint8_t> heat(n * 3, 0x00), out(n * 3, 0x00), out2(n * 3, 0x5A);
  colormap_overlay_cuda(dmap->data(), dimage->data(), c.h, c.w, dlut->data(), c.image_weight, heat.data(), out.data(),
                        ctx.get());
  colormap_overlay_cuda(dmap->data(), dimage->data(), c.h, c.w, dlut->data(), c.image_weight, nullptr, out2.data(),
                        ctx.get());
  ctx.sync();
  EXPECT_TRUE(heat.guards_intact() && out.guards_intact() && out2.guards_intact()) << "written out of bounds";
  std::vector<uint8_t> want_heat(static_cast<size_t>(n * 3)), want(static_cast<size_t>(n * 3));
  colormap_overlay_cpu(map.data(), image.data(), c.h, c.w, lut.data(), c.image_weight, want_heat.data(), want.data());
  const std::vector<uint8_t> got_heat = heat.download(), got = out.download();
  EXPECT_EQ(got_heat, want_heat) << "heat_rgb: the LUT index is one float product, the same on both twins";
  EXPECT_EQ(out2.download(), got) << "out differs when heat_rgb is null";
  // The blend may be contracted to an FMA on the GPU: a value within an ulp
  // of .5 may round the other way. Exact for a = 0 and 0.5.
  int64_t off_by_one = 0, worse = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const int d = std::abs(int{got[i]} - int{want[i]});
    off_by_one += d == 1;
    worse += d > 1;
  }
  EXPECT_EQ(worse, 0);
  if (c.image_weight == 0.f || c.image_weight == 0.5f) {
    EXPECT_EQ(off_by_one, 0);
  } else {
    EXPECT_LE(off_by_one, std::max<int64_t>(3, n / 1000));
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, ColormapOverlayCuda, testing::ValuesIn(overlay_cases()), param_name<OverlayCase>);

}  // namespace

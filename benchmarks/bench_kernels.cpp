// CPU map kernels: the fused Grad-CAM kernel against the ATen float32 op chain
// that computes the same map, and against std::memcpy of the same bytes in the
// same binary, so that throughput reads as a fraction of what the machine can
// move. See benchmarks/README.md.
//
// All benchmarks run on the same thread count, OpenMP's default at startup
// (OMP_NUM_THREADS, else the number of processors), for the kernels and ATen
// alike, and report wall time (UseRealTime), since the work runs on several
// threads. (ATen's first parallel op otherwise resets the OpenMP count to its
// own intra-op default, which can be lower: see README.md.)
#include <torch/script.h>

#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "xcam/kernels/gradcam.h"
#include "xcam/kernels/overlay.h"

namespace {

using xcam::kernels::CamShape;

constexpr int64_t kOutH = 224, kOutW = 224;

// Set in main() before ATen runs anything.
int g_threads = 1;
void use_bench_threads() {
  at::set_num_threads(g_threads);  // OpenMP backend: also omp_set_num_threads
  omp_set_num_threads(g_threads);
}

// Deterministic pseudo-random fill in [lo, hi), parallel (inputs of up to
// 400 MB are filled once per benchmark instance, outside the timed loop).
void fill_uniform(float* p, int64_t n, uint64_t seed, float lo, float hi) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    uint64_t x = (static_cast<uint64_t>(i) + seed * 0x632BE59BD9B4E019ull) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    p[i] = lo + (hi - lo) * static_cast<float>(x >> 40) * (1.f / 16777216.f);
  }
}

struct CamInputs {
  int64_t B, K, h, w;
  std::vector<float> activations, gradients;
  int64_t in_elems() const { return B * K * h * w; }
  int64_t out_elems() const { return B * kOutH * kOutW; }
  // Bytes the map computation must move at least: read A and g, write the map.
  int64_t bytes() const { return static_cast<int64_t>(sizeof(float)) * (2 * in_elems() + out_elems()); }
};

CamInputs make_inputs(const benchmark::State& state) {
  use_bench_threads();
  CamInputs in{state.range(0), state.range(1), state.range(2), state.range(2), {}, {}};
  in.activations.resize(static_cast<size_t>(in.in_elems()));
  in.gradients.resize(static_cast<size_t>(in.in_elems()));
  fill_uniform(in.activations.data(), in.in_elems(), 1, 0.f, 2.f);
  fill_uniform(in.gradients.data(), in.in_elems(), 2, -1.f, 1.f);
  return in;
}

void set_counters(benchmark::State& state, int64_t bytes_per_iter, int64_t elements_per_iter) {
  state.SetBytesProcessed(state.iterations() * bytes_per_iter);
  state.counters["elements"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(elements_per_iter),
                         benchmark::Counter::kIsRate);
  state.counters["threads"] = omp_get_max_threads();
}

// xcam::kernels::gradcam_cpu: one pass over A and g, B x 224 x 224 out.
void BM_GradCamFused(benchmark::State& state) {
  CamInputs in = make_inputs(state);
  const CamShape shape{in.B, in.K, in.h, in.w};
  std::vector<float> lowres(static_cast<size_t>(in.B * in.h * in.w)), out(static_cast<size_t>(in.out_elems()));
  std::vector<uint8_t> status(static_cast<size_t>(in.B));
  for (auto _ : state) {
    xcam::kernels::gradcam_cpu(in.activations.data(), in.gradients.data(), shape, kOutH, kOutW, lowres.data(),
                               out.data(), status.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, in.bytes(), in.in_elems());
}

// The same map as an ATen float32 op chain (what a straightforward LibTorch
// implementation does): it materialises w * A (B x K x h x w) and several
// B x h x w temporaries.
void BM_GradCamAtenChain(benchmark::State& state) {
  c10::InferenceMode guard;
  CamInputs in = make_inputs(state);  // sets ATen's and OpenMP's thread counts
  const std::vector<int64_t> sizes = {in.B, in.K, in.h, in.w};
  const at::Tensor A = at::from_blob(in.activations.data(), sizes, at::kFloat);
  const at::Tensor g = at::from_blob(in.gradients.data(), sizes, at::kFloat);
  for (auto _ : state) {
    const at::Tensor w = g.mean({2, 3}, /*keepdim=*/true);
    const at::Tensor cam = (w * A).sum(1, /*keepdim=*/true).relu();
    const at::Tensor lo = cam.amin({2, 3}, true), hi = cam.amax({2, 3}, true);
    const at::Tensor norm = (cam - lo) / (hi - lo + 1e-7);
    const at::Tensor out = at::upsample_bilinear2d(norm, at::IntArrayRef{kOutH, kOutW}, /*align_corners=*/false);
    benchmark::DoNotOptimize(out.data_ptr<float>());
    benchmark::ClobberMemory();
  }
  set_counters(state, in.bytes(), in.in_elems());
}

// std::memcpy of the bytes of A + g + the output, split over the OpenMP
// threads. Bytes processed = read + written = 2 x that size, so the fused
// kernel's bytes/s divided by this one's is the fraction of copy bandwidth it
// reaches.
void BM_Memcpy(benchmark::State& state) {
  use_bench_threads();
  const int64_t B = state.range(0), K = state.range(1), hw = state.range(2) * state.range(2);
  const int64_t size = static_cast<int64_t>(sizeof(float)) * (2 * B * K * hw + B * kOutH * kOutW);
  std::vector<char> src(static_cast<size_t>(size), 1), dst(static_cast<size_t>(size), 0);
  for (auto _ : state) {
#pragma omp parallel
    {
      const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
      const int64_t begin = size * t / n, end = size * (t + 1) / n;
      std::memcpy(dst.data() + begin, src.data() + begin, static_cast<size_t>(end - begin));
    }
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2 * size, size / static_cast<int64_t>(sizeof(float)));
}

// Colormap lookup + alpha blend of an H x W map with an RGB image.
void BM_Overlay(benchmark::State& state) {
  use_bench_threads();
  const int64_t side = state.range(0), n = side * side;
  std::vector<float> map(static_cast<size_t>(n));
  fill_uniform(map.data(), n, 3, 0.f, 1.f);
  std::vector<uint8_t> image(static_cast<size_t>(3 * n)), lut(256 * 3), out(static_cast<size_t>(3 * n));
  for (size_t i = 0; i < image.size(); ++i) image[i] = static_cast<uint8_t>(i * 37u + 11u);
  for (size_t i = 0; i < lut.size(); ++i) lut[i] = static_cast<uint8_t>(i * 101u);
  for (auto _ : state) {
    xcam::kernels::colormap_overlay_cpu(map.data(), image.data(), side, side, lut.data(), 0.5f, nullptr, out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // Read map (float) + image (RGB), write out (RGB); the 768-byte LUT stays in cache.
  set_counters(state, n * static_cast<int64_t>(sizeof(float) + 3 + 3), n);
}

void cam_grid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "K", "hw"})->ArgsProduct({{1, 16}, {512, 2048}, {7, 14, 56}})->UseRealTime()->Unit(
      benchmark::kMicrosecond);
}

BENCHMARK(BM_GradCamFused)->Apply(cam_grid);
BENCHMARK(BM_GradCamAtenChain)->Apply(cam_grid);
BENCHMARK(BM_Memcpy)->Apply(cam_grid);
BENCHMARK(BM_Overlay)->ArgNames({"side"})->Arg(224)->Arg(1024)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  g_threads = omp_get_max_threads();  // before any ATen op can change it
  use_bench_threads();
  benchmark::AddCustomContext("threads", std::to_string(g_threads));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

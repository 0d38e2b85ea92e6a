// CUDA map kernels (kernels/cuda): the fused Grad-CAM and the colormap
// overlay, against a device-to-device cudaMemcpyAsync of the same bytes in the
// same binary, so that throughput reads as a fraction of the GPU's memory
// bandwidth. See benchmarks/README.md.
//
// Manual time from CUDA events around each iteration on one stream; inputs,
// outputs and the kernels' temporaries are allocated before the timed loop
// (the temporaries by a caching allocator warmed up by one untimed call).
// Without a CUDA device every benchmark reports "no CUDA device".
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "xcam/kernels/gradcam.h"
#include "xcam/kernels/overlay.h"
#include "xcam/kernels/types.h"

namespace {

using xcam::kernels::CamShape;
using xcam::kernels::CudaContext;
using xcam::kernels::DType;

constexpr int64_t kOutH = 224, kOutW = 224;

bool cuda_available() {
  static const bool available = [] {
    int n = 0;
    const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
    (void)cudaGetLastError();
    return ok;
  }();
  return available;
}

void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
#define CUDA_OK(expr) cuda_ok((expr), #expr)

// Device memory for one benchmark instance.
class DeviceMemory {
 public:
  explicit DeviceMemory(size_t bytes) { CUDA_OK(cudaMalloc(&p_, bytes > 0 ? bytes : 1)); }
  ~DeviceMemory() { (void)cudaFree(p_); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

// A stream, start/stop events, and a caching allocator for the kernels'
// temporaries: blocks are kept and handed out again (stream-ordered reuse on
// the one stream is safe), so after one warm-up call the timed loop allocates
// nothing.
class Bench {
 public:
  Bench() {
    CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_OK(cudaEventCreate(&start_));
    CUDA_OK(cudaEventCreate(&stop_));
    ctx_.stream = stream_;
    ctx_.allocator.allocate = &Bench::allocate;
    ctx_.allocator.release = &Bench::release;
    ctx_.allocator.context = this;
  }
  ~Bench() {
    for (Block& b : blocks_) (void)cudaFree(b.ptr);
    (void)cudaEventDestroy(start_);
    (void)cudaEventDestroy(stop_);
    (void)cudaStreamDestroy(stream_);
  }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  const CudaContext& ctx() const { return ctx_; }
  cudaStream_t stream() const { return stream_; }

  // Runs f once untimed, then times it per iteration with CUDA events.
  template <typename F>
  void run(benchmark::State& state, F&& f) {
    f();
    CUDA_OK(cudaStreamSynchronize(stream_));
    for (auto _ : state) {
      CUDA_OK(cudaEventRecord(start_, stream_));
      f();
      CUDA_OK(cudaEventRecord(stop_, stream_));
      CUDA_OK(cudaEventSynchronize(stop_));
      float ms = 0.f;
      CUDA_OK(cudaEventElapsedTime(&ms, start_, stop_));
      state.SetIterationTime(static_cast<double>(ms) * 1e-3);
    }
  }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
    bool used;
  };
  static void* allocate(size_t bytes, void* self) {
    auto* b = static_cast<Bench*>(self);
    for (Block& blk : b->blocks_) {
      if (!blk.used && blk.bytes >= bytes) {
        blk.used = true;
        return blk.ptr;
      }
    }
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) return nullptr;
    b->blocks_.push_back({p, bytes, true});
    return p;
  }
  static void release(void* p, void* self) {
    for (Block& blk : static_cast<Bench*>(self)->blocks_)
      if (blk.ptr == p) blk.used = false;
  }

  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  CudaContext ctx_;
  std::vector<Block> blocks_;
};

// Deterministic pseudo-random values in [lo, hi).
std::vector<float> uniform(int64_t n, uint64_t seed, float lo, float hi) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    uint64_t x = (static_cast<uint64_t>(i) + seed * 0x632BE59BD9B4E019ull) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    v[static_cast<size_t>(i)] = lo + (hi - lo) * static_cast<float>(x >> 40) * (1.f / 16777216.f);
  }
  return v;
}

// Host values in `dtype` (bf16: the top half of the float; f16 is not
// benchmarked separately: same bytes and the same loads as bf16).
std::vector<unsigned char> encode(const std::vector<float>& v, DType dtype) {
  std::vector<unsigned char> out(v.size() * (dtype == DType::f32 ? 4 : 2));
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &v[i], 4);
    if (dtype == DType::f32) {
      std::memcpy(out.data() + 4 * i, &u, 4);
    } else {
      const auto b = static_cast<uint16_t>(u >> 16);
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
  }
  return out;
}

void set_counters(benchmark::State& state, int64_t bytes_per_iter, int64_t elements_per_iter) {
  state.SetBytesProcessed(state.iterations() * bytes_per_iter);
  state.counters["elements"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * static_cast<double>(elements_per_iter), benchmark::Counter::kIsRate);
}

// xcam::kernels::gradcam_cuda: weights, weighted sum, relu, min-max, resize
// of B x K x hw x hw activations and gradients to B x 224 x 224.
template <DType kType>
void BM_GradCamCuda(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t B = state.range(0), K = state.range(1), h = state.range(2), w = state.range(2);
  const int64_t in = B * K * h * w, out_elems = B * kOutH * kOutW;
  const int64_t elem = kType == DType::f32 ? 4 : 2;
  const auto a = encode(uniform(in, 1, 0.f, 2.f), kType), g = encode(uniform(in, 2, -1.f, 1.f), kType);
  Bench bench;
  DeviceMemory dA(a.size()), dg(g.size()), lowres(sizeof(float) * B * h * w), out(sizeof(float) * out_elems), status(B);
  CUDA_OK(cudaMemcpy(dA.get(), a.data(), a.size(), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dg.get(), g.data(), g.size(), cudaMemcpyHostToDevice));
  const CamShape shape{B, K, h, w};
  bench.run(state, [&] {
    xcam::kernels::gradcam_cuda(dA.get(), dg.get(), kType, shape, kOutH, kOutW, lowres.get<float>(), out.get<float>(),
                                status.get<uint8_t>(), bench.ctx());
  });
  // Read A and g once, write the map.
  set_counters(state, 2 * in * elem + out_elems * static_cast<int64_t>(sizeof(float)), in);
}

// cudaMemcpyAsync (device to device) of the bytes of float32 A + g + the
// output map. Bytes processed = read + written = 2 x that size, so the
// kernel's bytes/s divided by this one's is the fraction of copy bandwidth.
void BM_MemcpyCuda(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t B = state.range(0), K = state.range(1), hw = state.range(2) * state.range(2);
  const int64_t size = static_cast<int64_t>(sizeof(float)) * (2 * B * K * hw + B * kOutH * kOutW);
  Bench bench;
  DeviceMemory src(static_cast<size_t>(size)), dst(static_cast<size_t>(size));
  CUDA_OK(cudaMemset(src.get(), 1, static_cast<size_t>(size)));
  bench.run(state, [&] {
    CUDA_OK(cudaMemcpyAsync(dst.get(), src.get(), static_cast<size_t>(size), cudaMemcpyDeviceToDevice, bench.stream()));
  });
  set_counters(state, 2 * size, size / static_cast<int64_t>(sizeof(float)));
}

// xcam::kernels::colormap_overlay_cuda of a side x side map and RGB image.
void BM_OverlayCuda(benchmark::State& state) {
  if (!cuda_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int64_t side = state.range(0), n = side * side;
  const std::vector<float> map = uniform(n, 3, 0.f, 1.f);
  std::vector<uint8_t> image(static_cast<size_t>(3 * n)), lut(256 * 3);
  for (size_t i = 0; i < image.size(); ++i) image[i] = static_cast<uint8_t>(i * 37u + 11u);
  for (size_t i = 0; i < lut.size(); ++i) lut[i] = static_cast<uint8_t>(i * 101u);
  Bench bench;
  DeviceMemory dmap(sizeof(float) * n), dimage(image.size()), dlut(lut.size()), dout(image.size());
  CUDA_OK(cudaMemcpy(dmap.get(), map.data(), sizeof(float) * n, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dimage.get(), image.data(), image.size(), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dlut.get(), lut.data(), lut.size(), cudaMemcpyHostToDevice));
  bench.run(state, [&] {
    xcam::kernels::colormap_overlay_cuda(dmap.get<float>(), dimage.get<uint8_t>(), side, side, dlut.get<uint8_t>(),
                                         0.5f, nullptr, dout.get<uint8_t>(), bench.ctx());
  });
  // Read map (float) + image (RGB), write out (RGB); the LUT is in shared memory.
  set_counters(state, n * static_cast<int64_t>(sizeof(float) + 3 + 3), n);
}

void cam_grid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "K", "hw"})
      ->ArgsProduct({{1, 16}, {512, 2048}, {7, 14, 56}})
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

BENCHMARK_TEMPLATE(BM_GradCamCuda, DType::f32)->Apply(cam_grid);
BENCHMARK_TEMPLATE(BM_GradCamCuda, DType::bf16)->Apply(cam_grid);
BENCHMARK(BM_MemcpyCuda)->Apply(cam_grid);
BENCHMARK(BM_OverlayCuda)
    ->ArgNames({"side"})
    ->Arg(224)
    ->Arg(1024)
    ->Arg(4096)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  cudaDeviceProp prop{};
  if (cuda_available() && cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    benchmark::AddCustomContext("cuda_device", prop.name);
    benchmark::AddCustomContext("cuda_memory_bus_bits", std::to_string(prop.memoryBusWidth));
  } else {
    benchmark::AddCustomContext("cuda_device", "none");
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

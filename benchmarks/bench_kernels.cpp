// CPU map kernels: each fused kernel (Grad-CAM, channel weights, weighted sum,
// element-wise maps, normalize + resize, layer aggregation, Score-CAM masks)
// against the ATen float32 op chain that computes the same thing, and against
// std::memcpy of the same bytes in the same binary, so that throughput reads
// as a fraction of what the machine can move. See benchmarks/README.md.
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

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "xcam/kernels/elementwise.h"
#include "xcam/kernels/gradcam.h"
#include "xcam/kernels/normalize_resize.h"
#include "xcam/kernels/overlay.h"
#include "xcam/kernels/pool.h"
#include "xcam/kernels/scorecam.h"
#include "xcam/kernels/weighted_sum.h"
#include "xcam/render.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

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
  // A and g as B x K x h x w tensors over the vectors above (no copy).
  at::Tensor activations_tensor() { return at::from_blob(activations.data(), {B, K, h, w}, at::kFloat); }
  at::Tensor gradients_tensor() { return at::from_blob(gradients.data(), {B, K, h, w}, at::kFloat); }
};

// B, K, hw from the benchmark arguments first, first + 1, first + 2.
CamInputs make_inputs(const benchmark::State& state, int first = 0) {
  use_bench_threads();
  CamInputs in{state.range(first), state.range(first + 1), state.range(first + 2), state.range(first + 2), {}, {}};
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
  const at::Tensor A = in.activations_tensor(), g = in.gradients_tensor();
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
void run_memcpy(benchmark::State& state, int64_t size) {
  use_bench_threads();
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

void BM_Memcpy(benchmark::State& state) {
  const int64_t B = state.range(0), K = state.range(1), hw = state.range(2) * state.range(2);
  run_memcpy(state, static_cast<int64_t>(sizeof(float)) * (2 * B * K * hw + B * kOutH * kOutW));
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

// PNG encoding of what xcam writes: a heat-map overlay (a smooth map in a
// colormap over an image with edges), H x W. The fast writer (libdeflate)
// against OpenCV's encoder at its default setting (zlib level 1, Sub filter),
// which xcam used before; bytes_per_second is raw RGB bytes encoded, and the
// `bytes` counter the PNG's size.
cv::Mat overlay_like(int h, int w) {
  cv::Mat small(8, 8, CV_32F), map, map8, colored;
  cv::randu(small, 0.f, 1.f);
  cv::resize(small, map, cv::Size(w, h), 0, 0, cv::INTER_CUBIC);
  map.convertTo(map8, CV_8U, 255.0);
  cv::applyColorMap(map8, colored, cv::COLORMAP_JET);
  cv::Mat base(h, w, CV_8UC3, cv::Scalar(240, 240, 240));
  for (int i = 0; i < 6; ++i)
    cv::circle(base, cv::Point((37 * i + 11) % w, (53 * i + 7) % h), 5 + (i * 13) % (std::min(h, w) / 3 + 1),
               cv::Scalar(40 * i, 200 - 30 * i, 90), -1, cv::LINE_AA);
  cv::Mat out;
  cv::addWeighted(base, 0.5, colored, 0.5, 0.0, out);
  return out;
}

void BM_PngFast(benchmark::State& state) {
  const cv::Mat rgb = overlay_like(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  size_t bytes = 0;
  for (auto _ : state) {
    const std::string png = xcam::encode_png_fast(rgb);
    bytes = png.size();
    benchmark::DoNotOptimize(png.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * rgb.rows * rgb.cols * 3);
  state.counters["bytes"] = static_cast<double>(bytes);
}

void BM_PngOpenCv(benchmark::State& state) {
  const cv::Mat rgb = overlay_like(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  size_t bytes = 0;
  std::vector<uint8_t> buf;
  for (auto _ : state) {
    cv::Mat bgr;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);  // as write_png did
    cv::imencode(".png", bgr, buf);
    bytes = buf.size();
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * rgb.rows * rgb.cols * 3);
  state.counters["bytes"] = static_cast<double>(bytes);
}

// ---------------------------------------------------------------------------
// Channel weights (pool.h). Arguments: method (0 gradcam, 1 gradcam++,
// 2 xgradcam), B, K, hw.
// ---------------------------------------------------------------------------

using xcam::kernels::ElementwiseMethod;
using xcam::kernels::WeightMethod;

constexpr int64_t kF = static_cast<int64_t>(sizeof(float));

// Read g (and A, except for Grad-CAM), write B x K weights. `inputs`: 1 or 2.
int64_t weights_bytes(const benchmark::State& state, int64_t inputs) {
  const int64_t in = state.range(1) * state.range(2) * state.range(3) * state.range(3);
  return kF * (inputs * in + state.range(1) * state.range(2));
}
int64_t weights_bytes(const benchmark::State& state) { return weights_bytes(state, state.range(0) == 0 ? 1 : 2); }

void BM_ChannelWeightsFused(benchmark::State& state) {
  const CamInputs in = make_inputs(state, 1);
  const auto method = static_cast<WeightMethod>(state.range(0));
  const CamShape shape{in.B, in.K, in.h, in.w};
  std::vector<float> weights(static_cast<size_t>(in.B * in.K));
  for (auto _ : state) {
    xcam::kernels::channel_weights_cpu(in.activations.data(), in.gradients.data(), xcam::kernels::DType::f32, shape,
                                       method, weights.data());
    benchmark::DoNotOptimize(weights.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, weights_bytes(state), in.in_elems());
}

// The SPEC section 2 formulas as pytorch-grad-cam writes them, in ATen.
void BM_ChannelWeightsAtenChain(benchmark::State& state) {
  c10::InferenceMode guard;
  CamInputs in = make_inputs(state, 1);
  const at::Tensor A = in.activations_tensor(), g = in.gradients_tensor();
  const int64_t method = state.range(0);
  for (auto _ : state) {
    at::Tensor w;
    if (method == 0) {
      w = g.mean({2, 3});
    } else if (method == 1) {
      const at::Tensor g2 = g * g, g3 = g2 * g;
      const at::Tensor sum_a = A.sum({2, 3}, /*keepdim=*/true);
      const at::Tensor alpha = (g2 / (2 * g2 + sum_a * g3 + 1e-6)).masked_fill_(g == 0, 0);
      w = (g.relu() * alpha).sum({2, 3});
    } else {
      w = (g * A).sum({2, 3}) / (A.sum({2, 3}) + 1e-7);
    }
    benchmark::DoNotOptimize(w.data_ptr<float>());
    benchmark::ClobberMemory();
  }
  set_counters(state, weights_bytes(state), in.in_elems());
}

// Arguments inputs (1: g, Grad-CAM; 2: A and g, Grad-CAM++ and XGradCAM), B, K, hw.
void BM_ChannelWeightsMemcpy(benchmark::State& state) { run_memcpy(state, weights_bytes(state, state.range(0))); }

// ---------------------------------------------------------------------------
// relu(sum_k w_k A_k) (weighted_sum.h). Arguments: B, K, hw.
// ---------------------------------------------------------------------------

// Read A and the weights, write the B x h x w map.
int64_t weighted_sum_bytes(const benchmark::State& state) {
  const int64_t B = state.range(0), K = state.range(1), hw = state.range(2) * state.range(2);
  return kF * (B * K * hw + B * K + B * hw);
}

std::vector<float> make_weights(int64_t n) {
  std::vector<float> w(static_cast<size_t>(n));
  fill_uniform(w.data(), n, 4, -1.f, 1.f);
  return w;
}

void BM_WeightedSumFused(benchmark::State& state) {
  const CamInputs in = make_inputs(state);
  const CamShape shape{in.B, in.K, in.h, in.w};
  const std::vector<float> weights = make_weights(in.B * in.K);
  std::vector<float> cam(static_cast<size_t>(in.B * in.h * in.w));
  for (auto _ : state) {
    xcam::kernels::weighted_sum_relu_cpu(in.activations.data(), xcam::kernels::DType::f32, shape, weights.data(),
                                         cam.data());
    benchmark::DoNotOptimize(cam.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, weighted_sum_bytes(state), in.in_elems());
}

// pytorch-grad-cam: (weights[:, :, None, None] * activations).sum(1), relu.
void BM_WeightedSumAtenChain(benchmark::State& state) {
  c10::InferenceMode guard;
  CamInputs in = make_inputs(state);
  std::vector<float> weights = make_weights(in.B * in.K);
  const at::Tensor A = in.activations_tensor();
  const at::Tensor w = at::from_blob(weights.data(), {in.B, in.K, 1, 1}, at::kFloat);
  for (auto _ : state) {
    const at::Tensor cam = (w * A).sum(1).relu();
    benchmark::DoNotOptimize(cam.data_ptr<float>());
    benchmark::ClobberMemory();
  }
  set_counters(state, weighted_sum_bytes(state), in.in_elems());
}

void BM_WeightedSumMemcpy(benchmark::State& state) { run_memcpy(state, weighted_sum_bytes(state)); }

// ---------------------------------------------------------------------------
// Element-wise maps (elementwise.h). Arguments: method (0 layercam,
// 1 hirescam, 2 gradcam-elementwise), B, K, hw.
// ---------------------------------------------------------------------------

// Read A and g, write the B x h x w map (the same for every method).
int64_t elementwise_bytes(const benchmark::State& state, int first = 0) {
  const int64_t B = state.range(first), K = state.range(first + 1);
  const int64_t hw = state.range(first + 2) * state.range(first + 2);
  return kF * (2 * B * K * hw + B * hw);
}

void BM_ElementwiseFused(benchmark::State& state) {
  const CamInputs in = make_inputs(state, 1);
  const auto method = static_cast<ElementwiseMethod>(state.range(0));
  const CamShape shape{in.B, in.K, in.h, in.w};
  std::vector<float> cam(static_cast<size_t>(in.B * in.h * in.w));
  for (auto _ : state) {
    xcam::kernels::elementwise_cam_cpu(in.activations.data(), in.gradients.data(), xcam::kernels::DType::f32, shape,
                                       method, cam.data());
    benchmark::DoNotOptimize(cam.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, elementwise_bytes(state, 1), in.in_elems());
}

void BM_ElementwiseAtenChain(benchmark::State& state) {
  c10::InferenceMode guard;
  CamInputs in = make_inputs(state, 1);
  const at::Tensor A = in.activations_tensor(), g = in.gradients_tensor();
  const int64_t method = state.range(0);
  for (auto _ : state) {
    at::Tensor cam;
    if (method == 0) {
      cam = (g.relu() * A).sum(1).relu();
    } else if (method == 1) {
      cam = (g * A).sum(1).relu();
    } else {
      cam = (g * A).relu().sum(1).relu();
    }
    benchmark::DoNotOptimize(cam.data_ptr<float>());
    benchmark::ClobberMemory();
  }
  set_counters(state, elementwise_bytes(state, 1), in.in_elems());
}

// Arguments B, K, hw: the bytes of every method.
void BM_ElementwiseMemcpy(benchmark::State& state) { run_memcpy(state, elementwise_bytes(state)); }

// ---------------------------------------------------------------------------
// normalize_resize_cpu: B x hw x hw maps -> B x 224 x 224. Arguments: B, hw.
// ---------------------------------------------------------------------------

// Read and write the map in place (min-max), write the resized map.
int64_t normalize_resize_bytes(const benchmark::State& state) {
  const int64_t B = state.range(0), hw = state.range(1) * state.range(1);
  return kF * (2 * B * hw + B * kOutH * kOutW);
}

std::vector<float> make_maps(int64_t n, uint64_t seed) {
  std::vector<float> m(static_cast<size_t>(n));
  fill_uniform(m.data(), n, seed, 0.f, 1.f);
  return m;
}

void BM_NormalizeResizeFused(benchmark::State& state) {
  use_bench_threads();
  const int64_t B = state.range(0), hw = state.range(1);
  std::vector<float> cam = make_maps(B * hw * hw, 5), out(static_cast<size_t>(B * kOutH * kOutW));
  std::vector<uint8_t> status(static_cast<size_t>(B));
  for (auto _ : state) {
    // In place: after the first iteration the map is already normalised; the work is the same.
    xcam::kernels::normalize_resize_cpu(cam.data(), B, hw, hw, out.data(), kOutH, kOutW, status.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, normalize_resize_bytes(state), B * kOutH * kOutW);
}

void BM_NormalizeResizeAtenChain(benchmark::State& state) {
  c10::InferenceMode guard;
  use_bench_threads();
  const int64_t B = state.range(0), hw = state.range(1);
  std::vector<float> maps = make_maps(B * hw * hw, 5);
  const at::Tensor cam = at::from_blob(maps.data(), {B, 1, hw, hw}, at::kFloat);
  for (auto _ : state) {
    const at::Tensor lo = cam.amin({2, 3}, true), hi = cam.amax({2, 3}, true);
    const at::Tensor norm = (cam - lo) / (hi - lo + 1e-7);
    const at::Tensor out = at::upsample_bilinear2d(norm, at::IntArrayRef{kOutH, kOutW}, /*align_corners=*/false);
    benchmark::DoNotOptimize(out.data_ptr<float>());
    benchmark::ClobberMemory();
  }
  set_counters(state, normalize_resize_bytes(state), B * kOutH * kOutW);
}

void BM_NormalizeResizeMemcpy(benchmark::State& state) { run_memcpy(state, normalize_resize_bytes(state)); }

// ---------------------------------------------------------------------------
// aggregate_layers_cpu: two layers, B x hw x hw and B x 2hw x 2hw normalised
// maps -> one B x 224 x 224 map (SPEC 1.7). Arguments: B, hw.
// ---------------------------------------------------------------------------

// Read both maps, write the output.
int64_t aggregate_bytes(const benchmark::State& state) {
  const int64_t B = state.range(0), hw = state.range(1);
  return kF * (B * hw * hw + B * 4 * hw * hw + B * kOutH * kOutW);
}

void BM_AggregateFused(benchmark::State& state) {
  use_bench_threads();
  const int64_t B = state.range(0), hw = state.range(1);
  const std::vector<float> m1 = make_maps(B * hw * hw, 6), m2 = make_maps(B * 4 * hw * hw, 7);
  std::vector<float> out(static_cast<size_t>(B * kOutH * kOutW));
  std::vector<uint8_t> status(static_cast<size_t>(B));
  const float* maps[] = {m1.data(), m2.data()};
  const int64_t hs[] = {hw, 2 * hw};
  for (auto _ : state) {
    xcam::kernels::aggregate_layers_cpu(maps, hs, hs, 2, B, kOutH, kOutW, out.data(), status.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, aggregate_bytes(state), B * kOutH * kOutW);
}

// pytorch-grad-cam aggregate_multi_layers: resize each, stack, relu, mean, min-max.
void BM_AggregateAtenChain(benchmark::State& state) {
  c10::InferenceMode guard;
  use_bench_threads();
  const int64_t B = state.range(0), hw = state.range(1);
  std::vector<float> m1 = make_maps(B * hw * hw, 6), m2 = make_maps(B * 4 * hw * hw, 7);
  const at::Tensor l1 = at::from_blob(m1.data(), {B, 1, hw, hw}, at::kFloat);
  const at::Tensor l2 = at::from_blob(m2.data(), {B, 1, 2 * hw, 2 * hw}, at::kFloat);
  for (auto _ : state) {
    const std::vector<int64_t> size = {kOutH, kOutW};
    const at::Tensor up1 = at::upsample_bilinear2d(l1, size, false), up2 = at::upsample_bilinear2d(l2, size, false);
    const at::Tensor mean = at::stack({up1, up2}).relu().mean(0);
    const at::Tensor lo = mean.amin({2, 3}, true), hi = mean.amax({2, 3}, true);
    const at::Tensor out = (mean - lo) / (hi - lo + 1e-7);
    benchmark::DoNotOptimize(out.data_ptr<float>());
    benchmark::ClobberMemory();
  }
  set_counters(state, aggregate_bytes(state), B * kOutH * kOutW);
}

void BM_AggregateMemcpy(benchmark::State& state) { run_memcpy(state, aggregate_bytes(state)); }

// ---------------------------------------------------------------------------
// scorecam_masks_cpu: channels [0, chunk) of K = 2048 x hw x hw activations
// of one sample, times a 3 x 224 x 224 input. Arguments: chunk, hw.
// ---------------------------------------------------------------------------

constexpr int64_t kScoreK = 2048, kInC = 3;

// Read the chunk's activations and the input, write chunk x 3 x 224 x 224.
int64_t scorecam_bytes(const benchmark::State& state) {
  const int64_t n = state.range(0), hw = state.range(1) * state.range(1), HW = kOutH * kOutW;
  return kF * (n * hw + kInC * HW + n * kInC * HW);
}

void BM_ScoreCamMasksFused(benchmark::State& state) {
  use_bench_threads();
  const int64_t n = state.range(0), hw = state.range(1);
  const std::vector<float> acts = make_maps(kScoreK * hw * hw, 8), input = make_maps(kInC * kOutH * kOutW, 9);
  std::vector<float> out(static_cast<size_t>(n * kInC * kOutH * kOutW));
  for (auto _ : state) {
    xcam::kernels::scorecam_masks_cpu(acts.data(), xcam::kernels::DType::f32, kScoreK, hw, hw, 0, n, input.data(), kInC,
                                      kOutH, kOutW, out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, scorecam_bytes(state), n * kInC * kOutH * kOutW);
}

// pytorch-grad-cam ScoreCAM: upsample (align_corners=True), per-channel
// min-max (eps 1e-8), input[None] * masks[:, None].
void BM_ScoreCamMasksAtenChain(benchmark::State& state) {
  c10::InferenceMode guard;
  use_bench_threads();
  const int64_t n = state.range(0), hw = state.range(1);
  std::vector<float> acts = make_maps(kScoreK * hw * hw, 8), in = make_maps(kInC * kOutH * kOutW, 9);
  const at::Tensor A = at::from_blob(acts.data(), {kScoreK, 1, hw, hw}, at::kFloat);
  const at::Tensor input = at::from_blob(in.data(), {1, kInC, kOutH, kOutW}, at::kFloat);
  for (auto _ : state) {
    const at::Tensor up = at::upsample_bilinear2d(A.slice(0, 0, n), at::IntArrayRef{kOutH, kOutW}, true);
    const at::Tensor lo = up.amin({2, 3}, true), hi = up.amax({2, 3}, true);
    const at::Tensor out = input * ((up - lo) / (hi - lo + 1e-8));
    benchmark::DoNotOptimize(out.data_ptr<float>());
    benchmark::ClobberMemory();
  }
  set_counters(state, scorecam_bytes(state), n * kInC * kOutH * kOutW);
}

void BM_ScoreCamMasksMemcpy(benchmark::State& state) { run_memcpy(state, scorecam_bytes(state)); }

// ---------------------------------------------------------------------------
// Grids
// ---------------------------------------------------------------------------

void cam_grid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "K", "hw"})->ArgsProduct({{1, 16}, {512, 2048}, {7, 14, 56}})->UseRealTime()->Unit(
      benchmark::kMicrosecond);
}

BENCHMARK(BM_GradCamFused)->Apply(cam_grid);
BENCHMARK(BM_GradCamAtenChain)->Apply(cam_grid);
BENCHMARK(BM_Memcpy)->Apply(cam_grid);
BENCHMARK(BM_Overlay)->ArgNames({"side"})->Arg(224)->Arg(1024)->UseRealTime()->Unit(benchmark::kMicrosecond);
// An overlay as the demo writes it, and a panel of the demo (one sample).
BENCHMARK(BM_PngFast)->ArgNames({"h", "w"})->Args({128, 128})->Args({316, 520})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PngOpenCv)->ArgNames({"h", "w"})->Args({128, 128})->Args({316, 520})->Unit(benchmark::kMicrosecond);

// B x K x hw x hw reductions: B in {1, 16}, K in {512, 2048}, hw in {7, 56};
// the ops with three methods only at K = 2048 (the run stays near 2 minutes).
constexpr std::initializer_list<int64_t> kBs = {1, 16}, kKs = {512, 2048}, kMethodKs = {2048}, kHws = {7, 56};
void map_grid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "K", "hw"})->ArgsProduct({kBs, kKs, kHws})->UseRealTime()->Unit(benchmark::kMicrosecond);
}
void method_grid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"method", "B", "K", "hw"})->ArgsProduct({{0, 1, 2}, kBs, kMethodKs, kHws})->UseRealTime()->Unit(
      benchmark::kMicrosecond);
}
void method_memcpy_grid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "K", "hw"})->ArgsProduct({kBs, kMethodKs, kHws})->UseRealTime()->Unit(benchmark::kMicrosecond);
}
// Low-resolution maps to 224 x 224: B in {1, 16}, hw in {7, 14, 56}.
void resize_grid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "hw"})->ArgsProduct({{1, 16}, {7, 14, 56}})->UseRealTime()->Unit(benchmark::kMicrosecond);
}
// Two layers, hw x hw and 2hw x 2hw: 7 + 14, 28 + 56.
void aggregate_grid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "hw"})->ArgsProduct({{1, 16}, {7, 28}})->UseRealTime()->Unit(benchmark::kMicrosecond);
}
// Score-CAM: masks for a chunk of 32 channels, activations hw x hw.
void scorecam_grid(benchmark::internal::Benchmark* b) {
  b->ArgNames({"chunk", "hw"})->ArgsProduct({{32}, {7, 14, 56}})->UseRealTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_ChannelWeightsFused)->Apply(method_grid);
BENCHMARK(BM_ChannelWeightsAtenChain)->Apply(method_grid);
BENCHMARK(BM_ChannelWeightsMemcpy)
    ->ArgNames({"inputs", "B", "K", "hw"})
    ->ArgsProduct({{1, 2}, kBs, kMethodKs, kHws})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_WeightedSumFused)->Apply(map_grid);
BENCHMARK(BM_WeightedSumAtenChain)->Apply(map_grid);
BENCHMARK(BM_WeightedSumMemcpy)->Apply(map_grid);
BENCHMARK(BM_ElementwiseFused)->Apply(method_grid);
BENCHMARK(BM_ElementwiseAtenChain)->Apply(method_grid);
BENCHMARK(BM_ElementwiseMemcpy)->Apply(method_memcpy_grid);
BENCHMARK(BM_NormalizeResizeFused)->Apply(resize_grid);
BENCHMARK(BM_NormalizeResizeAtenChain)->Apply(resize_grid);
BENCHMARK(BM_NormalizeResizeMemcpy)->Apply(resize_grid);
BENCHMARK(BM_AggregateFused)->Apply(aggregate_grid);
BENCHMARK(BM_AggregateAtenChain)->Apply(aggregate_grid);
BENCHMARK(BM_AggregateMemcpy)->Apply(aggregate_grid);
BENCHMARK(BM_ScoreCamMasksFused)->Apply(scorecam_grid);
BENCHMARK(BM_ScoreCamMasksAtenChain)->Apply(scorecam_grid);
BENCHMARK(BM_ScoreCamMasksMemcpy)->Apply(scorecam_grid);

}  // namespace

int main(int argc, char** argv) {
  // Default minimum time 0.2 s per benchmark, so that the whole grid runs in
  // about 2 minutes; --benchmark_min_time (or BENCHMARK_MIN_TIME) wins.
  static char default_min_time[] = "--benchmark_min_time=0.2";
  std::vector<char*> args(argv, argv + argc);
  const bool min_time_given =
      std::getenv("BENCHMARK_MIN_TIME") != nullptr ||
      std::any_of(args.begin() + 1, args.end(),
                  [](const char* a) { return std::strncmp(a, "--benchmark_min_time", 20) == 0; });
  if (!min_time_given) args.insert(args.begin() + 1, default_min_time);
  int n = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  g_threads = omp_get_max_threads();  // before any ATen op can change it
  use_bench_threads();
  benchmark::AddCustomContext("threads", std::to_string(g_threads));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

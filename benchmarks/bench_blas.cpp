// What the BLAS behind LibTorch is worth: float32 matrix products of the
// shapes transformer layers run (GFLOP/s), and the forward pass of a small
// ViT (zoo/export_torchvision.py --arch vit_small) with the GFLOP/s of its
// matmuls. The context names the BLAS the process resolved (xcam doctor's
// line). benchmarks/blas_compare.sh runs it on the installed BLAS and on the
// reference one and prints the ratios. See benchmarks/README.md.
#include <torch/script.h>

#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "xcam/runtime_info.h"

namespace {

int g_threads = 1;

std::string models_dir() {
  const char* env = std::getenv("XCAM_ZOO_MODELS");
  return env != nullptr ? env : XCAM_ZOO_MODELS;
}

// C = A B with A M x K and B K x N, float32, as aten::linear / matmul call it.
void BM_Sgemm(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  at::set_num_threads(g_threads);
  const auto a = torch::randn({m, k});
  const auto b = torch::randn({k, n});
  auto c = torch::empty({m, n});
  for (auto _ : state) {
    at::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr<float>());
  }
  state.counters["GFLOP"] =
      benchmark::Counter(2.0 * static_cast<double>(m * k * n) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
// The reference product, then vit_small's QKV, MLP-in and MLP-out
// products at batch 8 (8 x 197 tokens, width 384).
BENCHMARK(BM_Sgemm)
    ->ArgNames({"M", "K", "N"})
    ->Args({512, 768, 768})
    ->Args({1576, 384, 1152})
    ->Args({1576, 384, 1536})
    ->Args({1576, 1536, 384})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// vit_small's forward (traced), no autograd, images of `batch`.
void BM_VitSmallForward(benchmark::State& state) {
  const int64_t batch = state.range(0);
  const std::string dir = models_dir();
  std::ifstream meta(dir + "/vit_small.json");
  if (!meta) {
    state.SkipWithError(("no " + dir + "/vit_small.json; export it: python3 zoo/export_torchvision.py --arch "
                         "vit_small --out " + dir).c_str());
    return;
  }
  const double flops = nlohmann::json::parse(meta)["matmul_flops_per_image"].get<double>();
  at::set_num_threads(g_threads);
  auto model = torch::jit::load(dir + "/vit_small_traced.pt");
  model.eval();
  const std::vector<c10::IValue> inputs{torch::randn({batch, 3, 224, 224})};
  c10::InferenceMode guard;
  model.forward(inputs);  // first call: profiling and allocation
  for (auto _ : state) benchmark::DoNotOptimize(model.forward(inputs).toTensor().data_ptr<float>());
  state.counters["matmul_GFLOP"] =
      benchmark::Counter(flops * static_cast<double>(batch) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["images"] = benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_VitSmallForward)->ArgName("batch")->Arg(1)->Arg(8)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  g_threads = omp_get_max_threads();  // OMP_NUM_THREADS, else the processor count
  at::set_num_threads(g_threads);
  const auto blas = xcam::blas_info();
  benchmark::AddCustomContext("threads", std::to_string(g_threads));
  benchmark::AddCustomContext("blas", xcam::blas_line(blas));
  if (const auto w = xcam::blas_warning(blas)) benchmark::AddCustomContext("warning", *w);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

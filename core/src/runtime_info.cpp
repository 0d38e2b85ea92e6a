// Which BLAS LibTorch calls, found from the loaded libraries.
#include "xcam/runtime_info.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include <climits>
#include <cstdlib>
#include <thread>

#include "onednn_convs.h"

namespace xcam {

namespace {

// A symbol of the library `handle` or its dependencies (all loaded ones when
// null). OpenBLAS's libblas.so.3 forwards to libopenblas.so.0, a dependency.
template <typename Fn>
Fn lookup(void* handle, const char* symbol) {
  return reinterpret_cast<Fn>(dlsym(handle != nullptr ? handle : RTLD_DEFAULT, symbol));
}

std::string resolved_file_of(const void* address) {
  Dl_info dl{};
  if (address == nullptr || dladdr(address, &dl) == 0 || dl.dli_fname == nullptr) return "";
  char buf[PATH_MAX];
  return realpath(dl.dli_fname, buf) != nullptr ? std::string(buf) : std::string(dl.dli_fname);
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n')) s.pop_back();
  return s;
}

}  // namespace

BlasInfo blas_info() {
  BlasInfo info;
  if (at::hasMKL()) {
    // LibTorch builds with MKL link it statically and route their GEMMs to it.
    info.name = "MKL (inside LibTorch)";
    return info;
  }
  // The sgemm_ LibTorch's calls bind to, and the library it comes from: the
  // vendor is asked there, not in the whole process (a process can hold two
  // BLAS, e.g. the reference libblas.so.3 beside OpenBLAS's liblapack.so.3).
  const void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  info.library = resolved_file_of(sgemm);
  Dl_info dl{};
  void* handle = sgemm != nullptr && dladdr(sgemm, &dl) != 0 && dl.dli_fname != nullptr
                     ? dlopen(dl.dli_fname, RTLD_LAZY | RTLD_NOLOAD)
                     : nullptr;
  if (auto config = lookup<char* (*)()>(handle, "openblas_get_config")) {
    info.name = trimmed(config());
    if (info.name.rfind("OpenBLAS", 0) != 0) info.name = "OpenBLAS " + info.name;
    if (auto threads = lookup<int (*)()>(handle, "openblas_get_num_threads")) info.blas_threads = threads();
    if (auto parallel = lookup<int (*)()>(handle, "openblas_get_parallel")) {
      const int p = parallel();
      info.threading = p == 2 ? "OpenMP" : p == 1 ? "pthreads" : "sequential";
    }
  } else if (auto version = lookup<const char* (*)()>(handle, "bli_info_get_version_str")) {
    info.name = std::string("BLIS ") + version();
  } else if (lookup<void*>(handle, "mkl_get_version_string") != nullptr) {
    info.name = "MKL";
  } else if (sgemm == nullptr) {
    info.name = "none found (no sgemm_ in the process; LibTorch uses its own fallback GEMM)";
    info.reference = true;
  } else {
    // Debian's netlib build (libblas3) exports the BLAS symbols and nothing else.
    info.name = "reference BLAS (netlib)";
    info.reference = true;
  }
  if (handle != nullptr) dlclose(handle);
  return info;
}

std::string blas_line(const BlasInfo& info) {
  std::string line = "BLAS: " + info.name;
  if (!info.threading.empty()) {
    line += fmt::format(" ({}", info.threading);
    if (info.blas_threads > 0) line += fmt::format(", {} thread{}", info.blas_threads, info.blas_threads == 1 ? "" : "s");
    line += ")";
  }
  if (!info.library.empty()) line += "  " + info.library;
  return line;
}

std::optional<std::string> blas_warning(const BlasInfo& info) {
  if (!info.reference) return std::nullopt;
  return fmt::format(
      "linear layers and matmuls run on the {}{}: 5 to 50x slower than OpenBLAS (docs/results.md). "
      "Install an optimised one: `sudo apt-get install libopenblas0-openmp` (scripts/setup.sh does)",
      info.name, info.library.empty() ? "" : " at " + info.library);
}

std::string torch_summary() {
  std::string s;
  s += fmt::format("LibTorch: {} (_GLIBCXX_USE_CXX11_ABI={})\n", TORCH_VERSION, _GLIBCXX_USE_CXX11_ABI);
  s += fmt::format("threads: {} intra-op (LibTorch), {} cores\n", at::get_num_threads(),
                   std::max(1u, std::thread::hardware_concurrency()));
  // What libgomp read when it was loaded (docs/results.md, "End to end").
  std::string wait;
  for (const char* var : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"})
    if (const char* v = std::getenv(var)) wait += fmt::format("{}{}={}", wait.empty() ? "" : " ", var, v);
  s += fmt::format("OpenMP wait: {}\n", wait.empty() ? "libgomp's default (idle threads spin after each region)" : wait);
  s += fmt::format("oneDNN for perturbed forwards: {}\n", onednn::available() ? "yes" : "no (built without it)");
  s += fmt::format("CUDA: {}\n", torch::cuda::is_available()
                                     ? fmt::format("{} device(s)", torch::cuda::device_count())
                                     : std::string("no device"));
  return s;
}

}  // namespace xcam

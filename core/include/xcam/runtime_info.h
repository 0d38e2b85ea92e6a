// What LibTorch will run on in this process: its version, its intra-op thread
// count and the BLAS its linear layers, matmuls and LSTMs call. `xcam doctor`
// prints it all; `xcam bench`, `run`, `explain` and `compare` print the
// warning when there is one.
#pragma once

#include <optional>
#include <string>

namespace xcam {

struct BlasInfo {
  std::string name;     // "OpenBLAS 0.3.21 ...", "reference BLAS (netlib)", "MKL (inside LibTorch)", ...
  std::string library;  // the file that provides sgemm_, symlinks resolved; empty when inside LibTorch
  int blas_threads = 0;  // the BLAS's own thread count where it reports one (OpenBLAS), else 0
  std::string threading;  // "OpenMP", "pthreads", "sequential" or "" (unknown)
  bool reference = false;  // the unoptimised netlib implementation
};

// Looks at the loaded libraries (dlsym / dladdr on sgemm_ and the vendors'
// own entry points); never sets or reads OPENBLAS_* variables.
BlasInfo blas_info();

// One line: "BLAS: OpenBLAS 0.3.21 ... (OpenMP, 2 threads) /usr/lib/.../libblas.so.3".
std::string blas_line(const BlasInfo& info);

// The one-line warning for a BLAS that makes linear layers slow, with the
// command that fixes it; nothing when the BLAS is a fast one.
std::optional<std::string> blas_warning(const BlasInfo& info);

// LibTorch's version, ABI, intra-op threads, oneDNN use and CUDA devices,
// one fact a line (the body of `xcam doctor` before the BLAS).
std::string torch_summary();

}  // namespace xcam

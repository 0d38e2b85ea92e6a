// `xcam doctor` and the slow-BLAS warning: the BLAS named is the library
// libblas.so.3 resolves to, and on Debian's reference BLAS (forced with
// LD_LIBRARY_PATH, as a machine without OpenBLAS has it) doctor and every
// computing command warn in one line with the command that fixes it.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "../common.h"

namespace fs = std::filesystem;
using xcam::test::run_command;
using xcam::test::source;
using xcam::test::TempDir;
using xcam::test::xcam_cmd;

namespace {

const std::string kReferenceDir = XCAM_REFERENCE_BLAS_DIR;

std::string on_reference_blas(const std::string& args) {
  return "LD_LIBRARY_PATH=" + kReferenceDir + " " + xcam_cmd() + args;
}

size_t count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string::npos; pos = haystack.find(needle, pos + 1)) ++n;
  return n;
}

// A LibTorch with MKL inside (the PyPI wheel's, the cpu-torch2 preset) calls
// no system BLAS: doctor says so, and no libblas.so.3, not even the reference
// one forced below, earns a warning.
constexpr const char* kMklInside = "BLAS: MKL (inside LibTorch)";
bool mkl_inside() {
  static const bool inside = run_command(xcam_cmd() + "doctor").output.find(kMklInside) != std::string::npos;
  return inside;
}

TEST(Doctor, NamesTheLibraryLibblasResolvesTo) {
  const fs::path link = fs::path(kReferenceDir).parent_path() / "libblas.so.3";
  ASSERT_TRUE(fs::exists(link)) << link << " is missing: scripts/setup.sh installs a BLAS";
  const auto r = run_command(xcam_cmd() + "doctor --threads 2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("threads: 2 intra-op"), std::string::npos) << r.output;
  if (mkl_inside()) {
    EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
    return;
  }
  const std::string resolved = fs::canonical(link).string();
  EXPECT_NE(r.output.find("BLAS: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("  " + resolved + "\n"), std::string::npos) << "expected " << resolved << "\n" << r.output;
  if (resolved.find("openblas") != std::string::npos) {
    // The OpenMP flavour, as scripts/setup.sh installs it: one thread pool with LibTorch.
    EXPECT_NE(r.output.find("BLAS: OpenBLAS"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("(OpenMP, 2 threads)"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
  }
}

TEST(Doctor, ReferenceBlasWarnsWithTheFix) {
  ASSERT_TRUE(fs::exists(kReferenceDir + "/libblas.so.3")) << "Debian's libblas3 (a LibTorch dependency) is missing";
  const auto r = run_command(on_reference_blas("doctor"));
  ASSERT_EQ(r.status, 0) << r.output;
  if (mkl_inside()) {
    EXPECT_NE(r.output.find(kMklInside), std::string::npos) << r.output;
    EXPECT_EQ(count(r.output, "warning: "), 0u) << r.output;
    return;
  }
  EXPECT_NE(r.output.find("BLAS: reference BLAS (netlib)  " + fs::canonical(kReferenceDir + "/libblas.so.3").string()),
            std::string::npos)
      << r.output;
  EXPECT_EQ(count(r.output, "warning: "), 1u) << r.output;
  EXPECT_NE(r.output.find("apt-get install libopenblas0-openmp"), std::string::npos) << r.output;
}

TEST(Doctor, ExplainOnReferenceBlasWarnsOnceAndStillWorks) {
  TempDir tmp("doctor-explain");
  const auto r = run_command(on_reference_blas(
      "explain --plugin-dir " + xcam::test::binary("plugins") + " --model " +
      source("zoo/models/shapes_cnn_traced.pt") + " --labels " + source("zoo/models/shapes_labels.txt") +
      " --layer block4 --size 128 128 --threads 2 --out " + (tmp / "o") + " " + source("zoo/data/shapes/val_000.png")));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(count(r.output, "xcam: warning: linear layers and matmuls run on the reference BLAS"), mkl_inside() ? 0u : 1u)
      << r.output;
  size_t maps = 0;
  for (const auto& e : fs::directory_iterator(tmp / "o")) maps += e.path().extension() == ".npy";
  EXPECT_EQ(maps, 1u) << r.output;
  // The same run on the installed BLAS: a warning only if that one is slow too.
  const auto doctor = run_command(xcam_cmd() + "doctor");
  if (doctor.output.find("warning") == std::string::npos) {
    TempDir tmp2("doctor-explain-fast");
    const auto fast = run_command(xcam_cmd() + "explain --plugin-dir " + xcam::test::binary("plugins") + " --model " +
                                  source("zoo/models/shapes_cnn_traced.pt") + " --layer block4 --size 128 128 --out " +
                                  (tmp2 / "o") + " " + source("zoo/data/shapes/val_000.png"));
    ASSERT_EQ(fast.status, 0) << fast.output;
    EXPECT_EQ(fast.output.find("warning"), std::string::npos) << fast.output;
  }
}

}  // namespace

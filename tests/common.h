// Helpers shared by the test suites: paths, temporary directories, running
// the xcam binary.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

namespace xcam::test {

inline std::string source(const std::string& rel) { return std::string(XCAM_SOURCE_DIR) + "/" + rel; }
inline std::string binary(const std::string& rel) { return std::string(XCAM_BINARY_DIR) + "/" + rel; }
inline std::string data(const std::string& rel) { return std::string(XCAM_TEST_DATA) + "/" + rel; }
inline std::string models(const std::string& rel) { return std::string(XCAM_TEST_MODELS) + "/" + rel; }

// A fresh directory under the build tree, removed at destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    std::random_device rd;
    path_ = std::filesystem::path(XCAM_BINARY_DIR) / "test-tmp" / (tag + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& rel) const { return (path_ / rel).string(); }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int status = -1;
  std::string output;  // stdout and stderr together
};

// Runs a shell command line, capturing stdout and stderr.
inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* pipe = popen((cmd + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(pipe);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

inline std::string xcam_binary() { return binary("core/xcam"); }
// The binary followed by a space, to prefix a command line.
inline std::string xcam_cmd() { return xcam_binary() + " "; }

// An xcam run that failed: non-zero exit and exactly one line, an xcam error
// that names `needle`.
inline void expect_one_line_error(const CommandResult& r, const std::string& needle) {
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("xcam: error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
}

inline bool file_exists(const std::string& p) { return std::filesystem::exists(p); }

}  // namespace xcam::test

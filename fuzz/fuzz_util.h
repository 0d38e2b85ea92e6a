// Shared by the libFuzzer harnesses: the input as a file (the parsers under
// test read files, as xcam does), and the property every refusal keeps.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "xcam/error.h"

namespace xcam::fuzz {

// A file in a private folder under $TMPDIR (or /tmp), rewritten with each input.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    const std::string d = std::string(tmp && *tmp ? tmp : "/tmp") + "/xcam-fuzz-" + std::to_string(::getpid());
    std::filesystem::create_directories(d);  // throws, ending the run, if it cannot
    return d;
  }();
  return dir;
}

inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

// A refusal is one line that names what was wrong (the CLI prints it after
// "xcam: error: "); a message that breaks the line is a defect too.
inline void check_refusal(const Error& e) {
  const std::string msg = e.what();
  if (msg.empty() || msg.find('\n') != std::string::npos) {
    std::fprintf(stderr, "refusal is not one line: [%s]\n", msg.c_str());
    std::abort();
  }
}

}  // namespace xcam::fuzz

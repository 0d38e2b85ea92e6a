// xcam::Error and XCAM_CHECK: every error says what was expected, what was
// found and what to do, and carries the file:line that raised it.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace xcam {

// `s` with its control characters written as escapes (\n, \t, \xNN): text
// from a file, a manifest or a plugin cannot break an error message, which
// is always one line.
inline std::string one_line(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += ch;
    }
  }
  return out;
}

// Default visibility: plugins are built with hidden symbols and their errors
// must still be caught as xcam::Error by the host.
class __attribute__((visibility("default"))) Error : public std::runtime_error {
 public:
  // The message is kept on one line (one_line).
  Error(const std::string& message, const char* file, int line)
      : std::runtime_error(one_line(message)), file_(file), line_(line) {}
  const char* file() const noexcept { return file_; }
  int line() const noexcept { return line_; }

 private:
  const char* file_;
  int line_;
};

// An error of the run's set-up, not of one sample (a model that takes other
// inputs than the plugin gives): the runner stops at the first instead of
// reporting it for every sample. Raised by the host only, never by plugins.
class __attribute__((visibility("default"))) SetupError : public Error {
 public:
  using Error::Error;
};

}  // namespace xcam

#define XCAM_THROW(...) throw ::xcam::Error(::fmt::format(__VA_ARGS__), __FILE__, __LINE__)

#define XCAM_CHECK(cond, ...)  \
  do {                         \
    if (!(cond)) {             \
      XCAM_THROW(__VA_ARGS__); \
    }                          \
  } while (0)

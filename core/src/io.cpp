// .npy reading/writing and atomic file writes.
#include "xcam/io.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "xcam/error.h"

namespace xcam {

namespace fs = std::filesystem;

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);
  XCAM_CHECK(fs::is_directory(dir), "cannot create output directory '{}': {}", dir.string(), ec.message());
  const std::string tmp = (dir / ("." + target.filename().string() + ".tmp" + std::to_string(::getpid()))).string();
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    XCAM_CHECK(out.good(), "cannot write in output directory '{}' (permissions? disk full?)", dir.string());
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    XCAM_CHECK(out.good(), "writing '{}' failed (disk full?)", path);
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp);
    XCAM_THROW("cannot move '{}' into place: {}", path, ec.message());
  }
}

void write_npy(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  std::string dims;
  int64_t n = 1;
  for (auto s : shape) {
    dims += std::to_string(s) + ",";
    n *= s;
  }
  if (shape.size() > 1) dims.pop_back();
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // magic(6) + version(2) + header length(2) + header + '\n', padded to 64 bytes.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string bytes("\x93NUMPY\x01\x00", 8);
  const uint16_t hlen = static_cast<uint16_t>(header.size());
  bytes.push_back(static_cast<char>(hlen & 0xff));
  bytes.push_back(static_cast<char>(hlen >> 8));
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n) * sizeof(float));
  write_file_atomic(path, bytes);
}

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  XCAM_CHECK(in.good(), "cannot open .npy file '{}'", path);
  char magic[8];
  in.read(magic, 8);
  XCAM_CHECK(in.good() && std::memcmp(magic, "\x93NUMPY", 6) == 0, "'{}' is not a .npy file", path);
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(hlen, '\0');
  in.read(header.data(), hlen);
  std::smatch m;
  XCAM_CHECK(std::regex_search(header, m, std::regex("'descr':\\s*'([^']+)'")), "'{}': no dtype in header", path);
  const std::string descr = m[1];
  XCAM_CHECK(header.find("'fortran_order': False") != std::string::npos, "'{}': Fortran order is not supported",
             path);
  XCAM_CHECK(std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)")), "'{}': no shape in header",
             path);
  NpyArray a;
  std::stringstream dims(m[1].str());
  for (std::string d; std::getline(dims, d, ',');)
    if (d.find_first_not_of(' ') != std::string::npos) a.shape.push_back(std::stoll(d));
  const auto n = static_cast<size_t>(a.numel());
  if (descr == "<f4") {
    a.f32.resize(n);
    in.read(reinterpret_cast<char*>(a.f32.data()), static_cast<std::streamsize>(n * 4));
  } else if (descr == "<i8") {
    a.i64.resize(n);
    in.read(reinterpret_cast<char*>(a.i64.data()), static_cast<std::streamsize>(n * 8));
  } else {
    XCAM_THROW("'{}': dtype {} is not supported (float32 or int64)", path, descr);
  }
  XCAM_CHECK(in.good(), "'{}' is truncated", path);
  return a;
}

}  // namespace xcam

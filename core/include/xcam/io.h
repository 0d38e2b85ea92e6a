// Files xcam reads and writes: .npy arrays, atomic writes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace xcam {

// A little-endian float32 or int64 .npy array, C order.
struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> f32;    // when dtype is '<f4'
  std::vector<int64_t> i64;  // when dtype is '<i8'
  int64_t numel() const;
};

NpyArray read_npy(const std::string& path);
// Writes atomically (temporary file, then rename).
void write_npy(const std::string& path, const std::vector<int64_t>& shape, const float* data);

// Writes `bytes` to `path` through a temporary file in the same directory and
// a rename, so a reader never sees half a file and an interrupted run leaves
// either the old file or the new one.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace xcam

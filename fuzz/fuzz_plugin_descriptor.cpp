// libFuzzer: the checks the host makes on a plugin's descriptor
// (check_descriptor): version numbers, size, LibTorch version, C++ ABI, name
// against the file name, entry points. The input fills a descriptor: 16
// bytes of numbers and flags, then NUL-separated strings (file name, plugin
// name, version, LibTorch version, summary). Accepted, or refused with one
// xcam::Error line.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "xcam/plugin_abi.h"
#include "xcam/plugin_loader.h"

namespace {
xcam::ArchPlugin* create(const XcamHost*, const char*) { return nullptr; }
void destroy(xcam::ArchPlugin*) {}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 16) return 0;
  uint32_t nums[4];
  std::memcpy(nums, data, sizeof nums);
  std::vector<std::string> parts(5);
  size_t k = 0;
  for (size_t i = 16; i < size && k < parts.size(); ++i) {
    if (data[i] == 0) ++k;
    else parts[k] += static_cast<char>(data[i]);
  }
  const uint32_t flags = nums[3];
  XcamPluginDescriptor d{};
  d.abi_major = nums[0] % 4;  // mostly the interesting values 0..3
  d.abi_minor = nums[1] % 8;
  d.struct_size = (flags & 1) ? sizeof(XcamPluginDescriptor) : nums[2] % 256;
  d.name = (flags & 2) ? nullptr : parts[1].c_str();
  d.version = (flags & 4) ? nullptr : parts[2].c_str();
  d.torch_version = (flags & 8) ? nullptr : parts[3].c_str();
  d.cxx11_abi = (flags & 16) ? XCAM_CXX11_ABI : static_cast<int32_t>(nums[2]);
  d.summary = (flags & 32) ? nullptr : parts[4].c_str();
  d.create = (flags & 64) ? nullptr : &create;
  d.destroy = (flags & 128) ? nullptr : &destroy;
  std::string base;  // a file name: no '/', no control characters
  for (const char ch : parts[0])
    if (ch != '/' && static_cast<unsigned char>(ch) >= 0x20) base += ch;
  const std::string file = "/plugins/" + base;
  try {
    xcam::check_descriptor((flags & 256) ? nullptr : &d, file);
  } catch (const xcam::Error& e) {
    xcam::fuzz::check_refusal(e);
  }
  return 0;
}

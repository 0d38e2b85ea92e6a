// A plugin built several times with deliberate defects (see CMakeLists.txt):
// the host must refuse each one cleanly and say why.
#include <torch/version.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "xcam/plugin.h"

#ifndef FAKE_NAME
#define FAKE_NAME "fake"
#endif
#ifndef FAKE_MAJOR
#define FAKE_MAJOR XCAM_PLUGIN_ABI_MAJOR
#endif
#ifndef FAKE_MINOR
#define FAKE_MINOR XCAM_PLUGIN_ABI_MINOR
#endif
#ifndef FAKE_TORCH
#define FAKE_TORCH TORCH_VERSION
#endif
#ifndef FAKE_CXX11_ABI
#define FAKE_CXX11_ABI XCAM_CXX11_ABI
#endif

namespace {

class FakePlugin final : public xcam::ArchPlugin {
 public:
  FakePlugin(const XcamHost*, const char*) {}
  xcam::Preprocess preprocess() const override {
    xcam::Preprocess p;
    p.height = 77;
    return p;
  }
  std::vector<std::string> default_layers(const torch::jit::Module&) const override { return {"x"}; }
  void prepare(torch::jit::Module&, xcam::Batch& b) const override { b.inputs = {b.images}; }
  void resolve_targets(const c10::IValue&, const xcam::TargetRequest&, xcam::Batch&) const override {}
  at::Tensor score(const c10::IValue&, const xcam::Batch&, size_t, std::vector<double>*) const override {
    return {};
  }
};

xcam::ArchPlugin* create(const XcamHost* h, const char* o) { return new FakePlugin(h, o); }
void destroy(xcam::ArchPlugin* p) { delete p; }

const XcamPluginDescriptor kDescriptor = {FAKE_MAJOR, FAKE_MINOR,     sizeof(XcamPluginDescriptor),
                                          FAKE_NAME,  "0.0.1",        FAKE_TORCH,
                                          FAKE_CXX11_ABI, "test double", &create,
                                          &destroy};

// Defects in the library's constructors, which run inside dlopen: the probe
// (plugin_loader.cpp) must turn each into a refusal.
#if defined(FAKE_ABORT_AT_LOAD)
const int kCrash = (std::abort(), 0);
#elif defined(FAKE_HANG_AT_LOAD)
const int kHang = (std::this_thread::sleep_for(std::chrono::hours(1)), 0);
#elif defined(FAKE_EXIT_AT_LOAD)
const int kExit = (std::exit(3), 0);
#endif

}  // namespace

#ifndef FAKE_NO_ENTRY
extern "C" __attribute__((visibility("default"))) const XcamPluginDescriptor* XCAM_PLUGIN_ENTRY(void) {
  return &kDescriptor;
}
#else
extern "C" __attribute__((visibility("default"))) const XcamPluginDescriptor* some_other_symbol(void) {
  return &kDescriptor;
}
#endif

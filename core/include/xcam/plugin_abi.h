// The binary contract between the xcam host and an architecture plugin.
//
// A plugin is a shared library libxcam_plugin_<name>.so that exports exactly
// one symbol, XCAM_PLUGIN_ENTRY, returning a pointer to a static descriptor.
// The descriptor starts with {abi_major, abi_minor, struct_size}; fields are
// only ever appended, never reordered or removed. The host refuses a plugin
// whose major differs from its own, whose minor is newer than its own, whose
// LibTorch version or _GLIBCXX_USE_CXX11_ABI differs, or whose name differs
// from the file name, and says which and why.
#pragma once

#include <cstdint>

#define XCAM_PLUGIN_ABI_MAJOR 2
#define XCAM_PLUGIN_ABI_MINOR 4
#define XCAM_PLUGIN_ENTRY xcam_plugin_entry
#define XCAM_PLUGIN_ENTRY_NAME "xcam_plugin_entry"

#if defined(_GLIBCXX_USE_CXX11_ABI)
#define XCAM_CXX11_ABI _GLIBCXX_USE_CXX11_ABI
#else
#define XCAM_CXX11_ABI -1
#endif

namespace xcam {
class ArchPlugin;
}

extern "C" {

// Services the host lends a plugin. Plugins keep no global state: they log
// through this and hold the pointer only for the lifetime of the object the
// host created with it.
struct XcamHost {
  uint32_t struct_size;
  uint32_t abi_minor;  // the host's minor: features above it are not there
  // level: 0 debug, 1 info, 2 warning, 3 error. `msg` is UTF-8, not retained.
  void (*log)(const XcamHost* host, int level, const char* msg);
  void* context;  // host-private
};

struct XcamPluginDescriptor {
  uint32_t abi_major;
  uint32_t abi_minor;
  uint32_t struct_size;  // sizeof(XcamPluginDescriptor) the plugin was built with
  const char* name;      // must equal <name> in libxcam_plugin_<name>.so
  const char* version;   // the plugin's own version, free form
  const char* torch_version;  // TORCH_VERSION it was compiled against
  int32_t cxx11_abi;          // _GLIBCXX_USE_CXX11_ABI it was compiled with
  const char* summary;        // one line for `xcam plugins`
  // Creates a plugin object. `options_json` is a JSON object (never null) of
  // plugin options from the CLI or YAML. Ownership: the caller owns the
  // returned object and frees it with `destroy` from the same descriptor, not
  // with delete. Returns null and logs through `host` on failure.
  xcam::ArchPlugin* (*create)(const XcamHost* host, const char* options_json);
  void (*destroy)(xcam::ArchPlugin* plugin);
};

typedef const XcamPluginDescriptor* (*XcamPluginEntryFn)(void);

}  // extern "C"

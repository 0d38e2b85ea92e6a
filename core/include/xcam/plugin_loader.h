// Finding, opening and checking architecture plugins (plugin_abi.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "xcam/plugin_abi.h"

namespace xcam {

// An open plugin library. Objects it creates hold a shared_ptr to it, so the
// library stays loaded until the last of them is destroyed.
class PluginLibrary {
 public:
  ~PluginLibrary();
  PluginLibrary(const PluginLibrary&) = delete;
  PluginLibrary& operator=(const PluginLibrary&) = delete;

  const XcamPluginDescriptor& descriptor() const { return *desc_; }
  const std::string& file() const { return file_; }
  const std::string& name() const { return name_; }

  // Opens and checks `file`; throws xcam::Error saying why it is refused.
  // The library is first probed in a child process (probe_plugin), so one
  // whose constructors crash or hang is refused instead of taking the
  // caller down.
  static std::shared_ptr<PluginLibrary> open(const std::string& file);

  // Opens and checks `file` in this process, without the probe.
  static std::shared_ptr<PluginLibrary> open_here(const std::string& file);

 private:
  PluginLibrary() = default;
  void* handle_ = nullptr;
  const XcamPluginDescriptor* desc_ = nullptr;
  std::string file_, name_;
};

// The checks of plugin_abi.h on a descriptor that `file` returned: ABI
// version, size, LibTorch version, C++ ABI, name against the file name,
// create and destroy set. Throws xcam::Error saying why it is refused.
void check_descriptor(const XcamPluginDescriptor* d, const std::string& file);

// The verdict on one library, opened and checked in a child process.
struct PluginProbe {
  bool loaded = false;
  std::string message;  // why it was refused: one line naming the file
  std::string version, summary;
};
PluginProbe probe_plugin(const std::string& file);

// What `xcam plugins` reports for one candidate file.
struct PluginReport {
  std::string file;
  std::string name;  // from the file name
  bool loaded = false;
  std::string reason;  // why it was refused, or the plugin's summary
  std::string version;
};

// Where plugins are looked for, first match wins: directories given
// explicitly (--plugin-dir, YAML `plugin_dirs`), then XCAM_PLUGIN_PATH
// (colon-separated), then the build tree's plugins/ next to the executable,
// then <prefix>/lib/xcam/plugins of the executable and, in a program that
// links the installed libxcam.so, of the library.
std::vector<std::string> plugin_search_path(const std::vector<std::string>& explicit_dirs);

// Every libxcam_plugin_*.so on the search path, each probed (opened and
// checked in a child process); nothing is loaded into this one.
std::vector<PluginReport> scan_plugins(const std::vector<std::string>& search_path);

// A plugin by name ("cnn") or by path to its .so; throws xcam::Error listing
// the directories searched, or why the plugin was refused.
std::shared_ptr<PluginLibrary> find_plugin(const std::string& name_or_path,
                                           const std::vector<std::string>& search_path);

// The host services handed to plugins: logging into xcam's logger.
const XcamHost* plugin_host();

}  // namespace xcam

// Plugin discovery and the checks of plugin_abi.h. Free of LibTorch headers
// but torch/version.h, so it compiles fast.
#include "xcam/plugin_loader.h"

#include <dlfcn.h>
#include <torch/version.h>
#include <unistd.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>

#include "xcam/error.h"

namespace xcam {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "libxcam_plugin_";
constexpr const char* kSuffix = ".so";

std::string name_from_file(const std::string& file) {
  std::string stem = fs::path(file).filename().string();
  if (stem.rfind(kPrefix, 0) == 0) stem = stem.substr(std::string(kPrefix).size());
  const auto dot = stem.find(kSuffix);
  if (dot != std::string::npos) stem = stem.substr(0, dot);
  return stem;
}

// Plugin messages go to stderr, prefixed like every xcam message; debug
// messages only with XCAM_DEBUG set.
void host_log(const XcamHost*, int level, const char* msg) {
  if (level <= 0 && std::getenv("XCAM_DEBUG") == nullptr) return;
  static const char* const names[] = {"debug", "info", "warning", "error"};
  std::fprintf(stderr, "xcam: %s: %s\n", names[std::min(std::max(level, 0), 3)], msg ? msg : "");
}

const XcamHost kHost{sizeof(XcamHost), XCAM_PLUGIN_ABI_MINOR, &host_log, nullptr};

std::string executable_dir() {
  std::error_code ec;
  const auto exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : exe.parent_path().string();
}

}  // namespace

const XcamHost* plugin_host() { return &kHost; }

PluginLibrary::~PluginLibrary() {
  if (handle_ != nullptr) dlclose(handle_);
}

std::shared_ptr<PluginLibrary> PluginLibrary::open(const std::string& file) {
  std::shared_ptr<PluginLibrary> lib(new PluginLibrary);
  lib->file_ = file;
  lib->name_ = name_from_file(file);
  dlerror();
  lib->handle_ = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib->handle_ == nullptr) {
    const char* why = dlerror();
    XCAM_THROW("plugin '{}' could not be loaded: {}; rebuild it, or remove the file from the plugin path", file,
               why ? why : "unknown dlopen error");
  }
  auto entry = reinterpret_cast<XcamPluginEntryFn>(dlsym(lib->handle_, XCAM_PLUGIN_ENTRY_NAME));
  XCAM_CHECK(entry != nullptr,
             "plugin '{}' does not export the symbol '{}'; an xcam plugin defines it with "
             "XCAM_DEFINE_PLUGIN (plugins/README.md)",
             file, XCAM_PLUGIN_ENTRY_NAME);
  const XcamPluginDescriptor* d = entry();
  XCAM_CHECK(d != nullptr, "plugin '{}': {}() returned no descriptor", file, XCAM_PLUGIN_ENTRY_NAME);
  XCAM_CHECK(d->abi_major != 1,
             "plugin '{}' refused: it was built for plugin ABI 1.{}, and this xcam speaks ABI {}.{}: prepare() now "
             "sees whole samples and targets carry a payload (plugins/README.md, \"From ABI 1\"); rebuild the "
             "plugin against this xcam's plugin.h",
             file, d->abi_minor, XCAM_PLUGIN_ABI_MAJOR, XCAM_PLUGIN_ABI_MINOR);
  XCAM_CHECK(d->abi_major == XCAM_PLUGIN_ABI_MAJOR,
             "plugin '{}' refused: incompatible ABI major version (plugin: {}, host: {}); rebuild the plugin "
             "against this xcam",
             file, d->abi_major, XCAM_PLUGIN_ABI_MAJOR);
  XCAM_CHECK(d->abi_minor <= XCAM_PLUGIN_ABI_MINOR,
             "plugin '{}' refused: it needs ABI {}.{} but this xcam provides {}.{}; update xcam or rebuild the "
             "plugin against this one",
             file, d->abi_major, d->abi_minor, XCAM_PLUGIN_ABI_MAJOR, XCAM_PLUGIN_ABI_MINOR);
  XCAM_CHECK(d->struct_size >= offsetof(XcamPluginDescriptor, destroy) + sizeof(d->destroy),
             "plugin '{}' refused: its descriptor is {} bytes, smaller than ABI {}.{} defines; rebuild it", file,
             d->struct_size, d->abi_major, d->abi_minor);
  const std::string torch_version = d->torch_version ? d->torch_version : "(none)";
  XCAM_CHECK(torch_version == TORCH_VERSION,
             "plugin '{}' refused: built against LibTorch {}, this xcam uses LibTorch {}; rebuild the plugin "
             "with the same LibTorch",
             file, torch_version, TORCH_VERSION);
  XCAM_CHECK(d->cxx11_abi == XCAM_CXX11_ABI,
             "plugin '{}' refused: built with _GLIBCXX_USE_CXX11_ABI={}, this xcam with {}; rebuild the plugin "
             "with the host's setting",
             file, d->cxx11_abi, XCAM_CXX11_ABI);
  const std::string declared = d->name ? d->name : "";
  XCAM_CHECK(declared == lib->name_,
             "plugin '{}' refused: its descriptor names it '{}' but the file name says '{}'; rename the file "
             "to {}{}{}",
             file, declared, lib->name_, kPrefix, declared, kSuffix);
  XCAM_CHECK(d->create != nullptr && d->destroy != nullptr, "plugin '{}' refused: create or destroy is null",
             file);
  lib->desc_ = d;
  return lib;
}

std::vector<std::string> plugin_search_path(const std::vector<std::string>& explicit_dirs) {
  std::vector<std::string> path = explicit_dirs;
  if (const char* env = std::getenv("XCAM_PLUGIN_PATH")) {
    std::stringstream ss(env);
    for (std::string dir; std::getline(ss, dir, ':');)
      if (!dir.empty()) path.push_back(dir);
  }
  const std::string exe = executable_dir();
  if (!exe.empty()) {
    // build tree: build/core/xcam -> build/plugins/<arch>/, tests in build/tests/...
    for (const char* rel : {"../plugins", "../../plugins", "../lib/xcam/plugins"}) path.push_back(exe + "/" + rel);
  }
  return path;
}

namespace {
// Candidate files on the search path, deduplicated by plugin name, first wins.
std::vector<std::string> candidates(const std::vector<std::string>& search_path) {
  std::vector<std::string> files;
  std::set<std::string> seen;
  for (const auto& dir : search_path) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<std::string> here;
    for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it.depth() > 1) it.disable_recursion_pending();
      const std::string fname = it->path().filename().string();
      if (fname.rfind(kPrefix, 0) == 0 && fname.size() > 3 && fname.compare(fname.size() - 3, 3, kSuffix) == 0)
        here.push_back(fs::weakly_canonical(it->path()).string());
    }
    std::sort(here.begin(), here.end());
    for (const auto& f : here)
      if (seen.insert(name_from_file(f)).second) files.push_back(f);
  }
  return files;
}
}  // namespace

std::vector<PluginReport> scan_plugins(const std::vector<std::string>& search_path) {
  std::vector<PluginReport> out;
  for (const auto& file : candidates(search_path)) {
    PluginReport r;
    r.file = file;
    r.name = name_from_file(file);
    try {
      auto lib = PluginLibrary::open(file);
      r.loaded = true;
      r.version = lib->descriptor().version ? lib->descriptor().version : "";
      r.reason = lib->descriptor().summary ? lib->descriptor().summary : "";
    } catch (const Error& e) {
      r.reason = e.what();
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::shared_ptr<PluginLibrary> find_plugin(const std::string& name_or_path,
                                           const std::vector<std::string>& search_path) {
  if (name_or_path.find('/') != std::string::npos || fs::path(name_or_path).extension() == ".so") {
    XCAM_CHECK(fs::exists(name_or_path), "plugin file '{}' does not exist", name_or_path);
    return PluginLibrary::open(name_or_path);
  }
  for (const auto& file : candidates(search_path))
    if (name_from_file(file) == name_or_path) return PluginLibrary::open(file);
  std::vector<std::string> dirs;
  for (const auto& d : search_path)
    if (fs::is_directory(d)) dirs.push_back(fs::weakly_canonical(d).string());
  XCAM_THROW("plugin '{}' not found (looked for {}{}{} in: {}); set XCAM_PLUGIN_PATH or pass --plugin-dir, "
             "and `xcam plugins` lists what is found",
             name_or_path, kPrefix, name_or_path, kSuffix, dirs.empty() ? "no existing directory" : fmt::format("{}", fmt::join(dirs, ", ")));
}

}  // namespace xcam

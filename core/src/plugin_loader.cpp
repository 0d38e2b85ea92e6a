// Plugin discovery and the checks of plugin_abi.h. Free of LibTorch headers
// but torch/version.h, so it compiles fast.
#include "xcam/plugin_loader.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/version.h>
#include <unistd.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// The folder of the file this code was loaded from: libxcam.so's for a
// program that links the installed library, else the executable's.
std::string library_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<const void*>(&library_dir), &info) == 0 || info.dli_fname == nullptr) return {};
  std::error_code ec;
  const auto file = fs::canonical(info.dli_fname, ec);
  return ec ? std::string() : file.parent_path().string();
}

}  // namespace

const XcamHost* plugin_host() { return &kHost; }

PluginLibrary::~PluginLibrary() {
  if (handle_ != nullptr) dlclose(handle_);
}

void check_descriptor(const XcamPluginDescriptor* d, const std::string& file) {
  const std::string name = name_from_file(file);
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
  const std::string torch_version = d->torch_version ? one_line(d->torch_version) : "(none)";
  XCAM_CHECK(torch_version == TORCH_VERSION,
             "plugin '{}' refused: built against LibTorch {}, this xcam uses LibTorch {}; rebuild the plugin "
             "with the same LibTorch",
             file, torch_version, TORCH_VERSION);
  XCAM_CHECK(d->cxx11_abi == XCAM_CXX11_ABI,
             "plugin '{}' refused: built with _GLIBCXX_USE_CXX11_ABI={}, this xcam with {}; rebuild the plugin "
             "with the host's setting",
             file, d->cxx11_abi, XCAM_CXX11_ABI);
  const std::string declared = d->name ? one_line(d->name) : "";
  XCAM_CHECK(declared == name,
             "plugin '{}' refused: its descriptor names it '{}' but the file name says '{}'; rename the file "
             "to {}{}{}",
             file, declared, name, kPrefix, declared, kSuffix);
  XCAM_CHECK(d->create != nullptr && d->destroy != nullptr, "plugin '{}' refused: create or destroy is null",
             file);
}

std::shared_ptr<PluginLibrary> PluginLibrary::open(const std::string& file) {
  const PluginProbe probe = probe_plugin(file);
  if (!probe.loaded) throw Error(probe.message, __FILE__, __LINE__);
  return open_here(file);
}

std::shared_ptr<PluginLibrary> PluginLibrary::open_here(const std::string& file) {
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
  check_descriptor(d, file);
  lib->desc_ = d;
  return lib;
}

namespace {

// How long a probe may take before it is stopped: XCAM_PLUGIN_PROBE_TIMEOUT
// seconds, 30 by default (a plugin that loads LibTorch's CUDA libraries from
// a cold disk takes several).
double probe_timeout_s() {
  if (const char* env = std::getenv("XCAM_PLUGIN_PROBE_TIMEOUT")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && *end == '\0' && v > 0) return v;
  }
  return 30.0;
}

// The child's side: open and check the library, write the verdict, leave
// without running any exit handler of the parent's (or the plugin's).
[[noreturn]] void probe_child(const std::string& file, int fd) {
  std::string out;
  try {
    auto lib = PluginLibrary::open_here(file);
    const auto& d = lib->descriptor();
    out = std::string("L") + (d.version ? d.version : "") + '\x1f' + (d.summary ? d.summary : "");
  } catch (const std::exception& e) {
    out = std::string("R") + e.what();
  }
  for (size_t done = 0; done < out.size();) {
    const ssize_t n = ::write(fd, out.data() + done, out.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::_exit(0);
}

// Reads the child's verdict until it closes the pipe or the deadline passes.
bool read_verdict(int fd, double timeout_s, std::string* out) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return false;
    if (r < 0) return true;  // nothing more can be read: judge by how the child ended
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;  // EOF: the child is done (or died)
    out->append(buf, static_cast<size_t>(n));
  }
}

}  // namespace

PluginProbe probe_plugin(const std::string& file) {
  PluginProbe p;
  int fds[2];
  XCAM_CHECK(::pipe2(fds, O_CLOEXEC) == 0, "cannot probe plugin '{}': pipe2() failed ({})", file, std::strerror(errno));
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    XCAM_THROW("cannot probe plugin '{}': fork() failed ({})", file, std::strerror(errno));
  }
  if (pid == 0) {
    ::close(fds[0]);
    probe_child(file, fds[1]);
  }
  ::close(fds[1]);
  const double timeout_s = probe_timeout_s();
  std::string verdict;
  const bool finished = read_verdict(fds[0], timeout_s, &verdict);
  ::close(fds[0]);
  if (!finished) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!finished) {
    p.message = fmt::format("plugin '{}' refused: loading it did not finish within {:g} s (a constructor that "
                            "waits or loops); fix or remove it from the plugin path (XCAM_PLUGIN_PROBE_TIMEOUT "
                            "sets the limit)",
                            file, timeout_s);
  } else if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    p.message = fmt::format("plugin '{}' refused: loading it crashed the process that tried (signal {}, {}); its "
                            "constructor or a library it needs fails. Rebuild it, or remove it from the plugin path",
                            file, sig, strsignal(sig));
  } else if (verdict.empty() || (verdict[0] != 'L' && verdict[0] != 'R')) {
    p.message = fmt::format("plugin '{}' refused: loading it ended the process that tried (exit status {}) before "
                            "it could be checked; its constructor exits. Rebuild it, or remove it from the plugin "
                            "path",
                            file, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  } else if (verdict[0] == 'R') {
    p.message = verdict.substr(1);
  } else {
    const auto sep = verdict.find('\x1f');
    p.loaded = true;
    p.version = verdict.substr(1, sep - 1);
    p.summary = sep == std::string::npos ? "" : verdict.substr(sep + 1);
  }
  return p;
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
  // An installed libxcam.so (<prefix>/lib/libxcam.so, or a multiarch lib/<triplet>/) finds <prefix>/lib/xcam/plugins.
  const std::string lib = library_dir();
  if (!lib.empty() && lib != exe)
    for (const char* rel : {"xcam/plugins", "../xcam/plugins"}) path.push_back(lib + "/" + rel);
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
    const PluginProbe probe = probe_plugin(file);  // in a child: a crashing library is one refusal
    r.loaded = probe.loaded;
    r.version = probe.version;
    r.reason = probe.loaded ? probe.summary : probe.message;
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

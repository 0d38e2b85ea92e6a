// The plugin loader against real shared libraries built with one defect each.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <utility>
#include <vector>

#include "../common.h"
#include "xcam/error.h"
#include "xcam/plugin.h"
#include "xcam/plugin_loader.h"

namespace {

std::string fake(const std::string& c, const std::string& file = "libxcam_plugin_fake.so") {
  return std::string(XCAM_FAKE_PLUGIN_DIR) + "/" + c + "/" + file;
}

std::string refusal(const std::string& file) {
  try {
    xcam::PluginLibrary::open(file);
  } catch (const xcam::Error& e) {
    return e.what();
  }
  return "";
}

TEST(PluginLoader, GoodPluginLoadsAndCreatesObjects) {
  auto lib = xcam::PluginLibrary::open(fake("good"));
  EXPECT_EQ(lib->name(), "fake");
  const auto& d = lib->descriptor();
  xcam::ArchPlugin* p = d.create(xcam::plugin_host(), "{}");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->preprocess().height, 77);  // the plugin's code really runs
  d.destroy(p);
}

struct Refusal {
  std::string dir, file, needle;
  friend std::ostream& operator<<(std::ostream& os, const Refusal& r) { return os << r.dir; }
};

class Refused : public ::testing::TestWithParam<Refusal> {};

TEST_P(Refused, WithTheReason) {
  const auto& r = GetParam();
  const auto msg = refusal(fake(r.dir, r.file));
  EXPECT_NE(msg.find(r.needle), std::string::npos) << "message was: " << msg;
  EXPECT_NE(msg.find(fake(r.dir, r.file)), std::string::npos) << "message names the file: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Defects, Refused,
    ::testing::Values(
        Refusal{"major", "libxcam_plugin_fake.so", "incompatible ABI major version (plugin: 99, host: 2)"},
        Refusal{"abi1", "libxcam_plugin_fake.so", "it was built for plugin ABI 1.0, and this xcam speaks ABI 2.4"},
        Refusal{"minor", "libxcam_plugin_fake.so", "update xcam"},
        Refusal{"torch", "libxcam_plugin_fake.so", "built against LibTorch 0.0.1"},
        Refusal{"cxxabi", "libxcam_plugin_fake.so", "_GLIBCXX_USE_CXX11_ABI=7"},
        Refusal{"nosym", "libxcam_plugin_fake.so", "does not export the symbol 'xcam_plugin_entry'"},
        Refusal{"name", "libxcam_plugin_renamed.so", "its descriptor names it 'fake' but the file name says 'renamed'"}),
    [](const auto& info) { return info.param.dir; });

TEST(PluginLoader, FileThatIsNotALibrary) {
  xcam::test::TempDir tmp("notlib");
  const auto file = tmp / "libxcam_plugin_garbage.so";
  std::ofstream(file) << "#!/bin/sh\necho not an ELF file\n";
  const auto msg = refusal(file);
  EXPECT_NE(msg.find("could not be loaded"), std::string::npos) << msg;
  // A scan reports it as refused and goes on to the next candidate.
  std::filesystem::copy(fake("good"), tmp / "libxcam_plugin_fake.so");
  const auto reports = xcam::scan_plugins({tmp.str()});
  ASSERT_EQ(reports.size(), 2u);
  int loaded = 0;
  for (const auto& r : reports) {
    loaded += r.loaded;
    if (r.name == "garbage") {
      EXPECT_FALSE(r.loaded);
    }
  }
  EXPECT_EQ(loaded, 1);
}

// A library whose constructors crash, exit or hang is probed in a child
// process: it becomes one refusal naming it, the caller lives on.
TEST(PluginLoader, CrashingLibraryIsRefusedNotFatal) {
  for (const auto& [name, needle] : std::vector<std::pair<std::string, std::string>>{
           {"abort", "loading it crashed the process that tried (signal 6, Aborted)"},
           {"exit", "loading it ended the process that tried (exit status 3)"}}) {
    const auto file = fake(name, "libxcam_plugin_" + name + ".so");
    const auto msg = refusal(file);
    EXPECT_NE(msg.find("plugin '" + file + "' refused: " + needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  }
  ::setenv("XCAM_PLUGIN_PROBE_TIMEOUT", "1.5", 1);
  const auto msg = refusal(fake("hang", "libxcam_plugin_hang.so"));
  ::unsetenv("XCAM_PLUGIN_PROBE_TIMEOUT");
  EXPECT_NE(msg.find("loading it did not finish within 1.5 s"), std::string::npos) << msg;
}

// `xcam plugins` lists the crashing library as refused and the good ones as
// loaded (before, the listing died with it, rc 134 and no output); a run
// with it is one line.
TEST(PluginLoader, ListingAndRunSurviveACrashingLibrary) {
  const auto dir = [](const std::string& c) { return std::filesystem::path(fake(c)).parent_path().string(); };
  const auto r = xcam::test::run_command(xcam::test::xcam_cmd() + "plugins --plugin-dir " + dir("abort") +
                                         " --plugin-dir " + dir("good"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("abort      REFUSED  plugin '" + fake("abort", "libxcam_plugin_abort.so") +
                          "' refused: loading it crashed"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("fake       loaded   0.0.1  test double"), std::string::npos) << r.output;
  xcam::test::TempDir tmp("crashing-plugin");
  xcam::test::expect_one_line_error(
      xcam::test::run_command(xcam::test::xcam_cmd() + "explain --plugin-dir " + dir("abort") + " --plugin abort" +
                              " --model " + xcam::test::source("zoo/models/shapes_cnn_traced.pt") + " --out " +
                              (tmp / "o") + " " + xcam::test::source("zoo/data/shapes/val_000.png")),
      "plugin '" + fake("abort", "libxcam_plugin_abort.so") + "' refused: loading it crashed");
}

TEST(PluginLoader, FirstDirectoryWinsAndItsRefusalIsReported) {
  const auto dir = [](const std::string& c) { return std::filesystem::path(fake(c)).parent_path().string(); };
  EXPECT_EQ(xcam::find_plugin("fake", {dir("good"), dir("major")})->descriptor().abi_major,
            static_cast<uint32_t>(XCAM_PLUGIN_ABI_MAJOR));
  try {
    xcam::find_plugin("fake", {dir("major"), dir("good")});
    FAIL() << "a refused plugin earlier on the path must not be skipped silently";
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("incompatible ABI major"), std::string::npos) << e.what();
  }
}

TEST(PluginLoader, RealCnnPluginIsFoundByName) {
  auto lib = xcam::find_plugin("cnn", {xcam::test::binary("plugins")});
  EXPECT_EQ(std::string(lib->descriptor().name), "cnn");
  try {
    xcam::find_plugin("transformer", {xcam::test::binary("plugins")});
    FAIL();
  } catch (const xcam::Error& e) {
    EXPECT_NE(std::string(e.what()).find("plugin 'transformer' not found"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("XCAM_PLUGIN_PATH"), std::string::npos) << e.what();
  }
}

}  // namespace

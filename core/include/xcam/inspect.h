// Model inspection for `xcam layers` (no LibTorch types).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace xcam {

struct LayerInfo {
  std::string path;   // dotted module path, tappable as written
  std::string type;   // module class name
  std::string shape;  // output shape for the sample input, or why it cannot be tapped
  int calls = 0;      // how many times forward runs it (path@i taps the i-th)
  bool tappable = false;
};

// How the listings feed the model: one random image 1 x 3 x height x width,
// as the model's only input, or through a plugin's prepare() (the plugin's
// own size when height is 0), which builds whatever inputs its models take.
struct ProbeInput {
  int64_t height = 224, width = 224;
  std::string plugin;  // empty: no plugin
  std::vector<std::string> plugin_dirs;
  std::string plugin_options = "{}";
  std::string text;        // with a plugin: the probe sample's text (a prompt, a sentence)
  bool text_only = false;  // with a plugin: the probe sample has text and no image (a text encoder)
};

// Every submodule of the TorchScript model with its output shape for the
// probe input; a module that returns a tuple is followed by a row per
// element (`path[k]`). Throws xcam::Error, in one line, for a model that
// cannot be fed (several inputs and no plugin, or it fails on the input).
std::vector<LayerInfo> list_layers(const std::string& model_path, const ProbeInput& in);

// The aten ops (and function calls) of one module's own forward, in order,
// tappable as `module/op` (`module/op#j` when the op runs more than once),
// with their output shapes for the probe input; ops inside an if or a loop
// are listed as not tappable.
std::vector<LayerInfo> list_ops(const std::string& model_path, const std::string& module_path, const ProbeInput& in);

}  // namespace xcam

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

// Every submodule of the TorchScript model with its output shape for one
// random input of 1 x 3 x height x width; a module that returns a tuple is
// followed by a row per element (`path[k]`). Throws xcam::Error, in one
// line, for a model that takes more than one input or fails on that image.
std::vector<LayerInfo> list_layers(const std::string& model_path, int64_t height, int64_t width);

// The aten ops of one module's own forward, in order, tappable as
// `module/op` (`module/op#j` when the op runs more than once), with their
// output shapes for the same input; ops inside an if or a loop are listed as
// not tappable.
std::vector<LayerInfo> list_ops(const std::string& model_path, const std::string& module_path, int64_t height,
                                int64_t width);

}  // namespace xcam

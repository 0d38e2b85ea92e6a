// TorchScript models with layer taps: any submodule's output, by dotted path,
// comes out of the forward as an extra output, with autograd recording only
// downstream of the earliest tap (SPEC section 1, step 3).
#pragma once

#include <torch/script.h>

#include <memory>
#include <string>
#include <vector>

#include "xcam/strings.h"

namespace xcam {

// Where a tap reads a value (docs/yaml.md, "Tap syntax"):
//   layer4, layer4.1.conv2       the module's output (the last call)
//   enc@1                        the output of its 2nd call (0-based)
//   attn[1]                      element 1 of the tuple the module returns
//   blocks.3.attn:in, :in1       the module's 1st (2nd) argument
//   blocks.3.attn/softmax        the value of the one aten::softmax op in the
//   blocks.3.attn/softmax#1      module's own forward (the 2nd: #1)
// The call index goes right after the path: enc@1[0], attn@0/softmax.
struct TapPoint {
  enum class Part { output, element, input, op };
  std::string path;
  int call = -1;  // -1: the last call
  Part part = Part::output;
  int index = 0;        // the tuple element or argument
  std::string op;       // the op's name without namespace ("softmax"), for Part::op
  int occurrence = -1;  // which of the module's ops of that name; -1: the only one
  std::string text;
};
TapPoint parse_tap(const std::string& text);

class Model {
 public:
  // Loads a TorchScript file, sets eval mode and freezes every parameter.
  // Throws xcam::Error for a missing file or one that is not TorchScript.
  static Model load(const std::string& path, const std::string& device = "cpu");

  torch::jit::Module& module() { return *module_; }
  const torch::jit::Module& module() const { return *module_; }
  const std::string& path() const { return path_; }
  const c10::Device& device() const { return device_; }
  // Every submodule path, in definition order ("" excluded).
  std::vector<std::string> module_paths() const;

 private:
  std::shared_ptr<torch::jit::Module> module_;
  std::string path_;
  c10::Device device_{c10::kCPU};
};

// A rewritten copy of the model's forward graph that also returns the tapped
// values. The model's own methods are left untouched.
class TappedForward {
 public:
  // Throws xcam::Error for an unknown path (with the closest names and the
  // `xcam layers` hint), a call index that does not exist, or a tap inside
  // control flow.
  TappedForward(Model& model, const std::vector<std::string>& taps);
  ~TappedForward();
  TappedForward(TappedForward&&) noexcept;

  struct Result {
    c10::IValue output;
    std::vector<at::Tensor> taps;  // one per requested tap, in request order
  };
  // Runs the model with grad mode on. Each tap that no earlier tap leads to
  // is a fresh leaf that requires grad (on one chain: the earliest; parallel
  // branches: one each); later taps and the output are differentiable w.r.t.
  // them.
  // With record_grad=false nothing is recorded (forward-only timing, listing).
  Result run(const std::vector<c10::IValue>& inputs, bool record_grad = true);

  // The model's output with tap `tap` (request index) replaced by `value`:
  // everything the model computes after that point runs on `value` (same
  // shape as the tapped tensor, any batch size matching `inputs`); what only
  // led up to the tap is not computed. Ablation-CAM's forwards (no
  // autograd: `value` may be modified in place by the model's own in-place
  // ops), and with record_grad every target's gradient from one backward
  // (`value` a leaf that requires grad, one copy of the tap per target).
  c10::IValue run_replacing(const std::vector<c10::IValue>& inputs, size_t tap, const at::Tensor& value,
                            bool record_grad = false);
  // Builds run_replacing's graph for `tap` now (it is built on first use).
  void warm_replacing(size_t tap);

  const std::vector<TapPoint>& taps() const;
  // Per request: whether that tap is an autograd leaf of its own.
  std::vector<bool> leaves() const;
  std::string graph_text() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace xcam

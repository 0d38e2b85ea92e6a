// The CAM methods of SPEC section 2 on one layer's activations and
// gradients (private to the runtime).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace xcam::methods {

struct Method {
  std::string name;
  bool gradients;  // needs dy/dA
  bool forwards;   // needs extra model forwards (Score-CAM, Ablation-CAM)
};

// Every method this build implements, in the order `xcam --help` lists them.
const std::vector<Method>& all();
const Method& find(const std::string& name);  // throws xcam::Error listing the names

// The method's map before normalisation, ReLU applied: B x h x w float32.
// `A` and `g` are B x K x h x w (g may be undefined for gradient-free
// methods). Score-CAM and Ablation-CAM are not here: they need the model
// (explain.cpp).
// `eigen_smooth` (pgc's option of the same name): instead of summing the
// per-channel terms over channels, take their first principal component
// (eigen_projection): of w_k A_k for the channel-weight methods, of
// relu(g) A (layercam), g A (hirescam), relu(g A) (gradcam-elementwise).
// EigenCAM and EigenGradCAM are projections already and ignore it, as pgc does.
at::Tensor raw_map(const Method& m, const at::Tensor& A, const at::Tensor& g, bool eigen_smooth = false);

// First principal component of each sample's activations seen as hw points
// of K channels, centred per channel; sign fixed so that the value of
// largest magnitude is positive (xcam's choice, SPEC section 2). B x h x w.
at::Tensor eigen_projection(const at::Tensor& A);

}  // namespace xcam::methods

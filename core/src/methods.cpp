// CAM methods on top of the fused kernels (SPEC section 2).
#include "methods.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "xcam/error.h"
#include "xcam/kernels/dispatch.h"

namespace xcam::methods {

const std::vector<Method>& all() {
  static const std::vector<Method> methods{
      {"gradcam", true, false},        {"gradcam++", true, false},           {"xgradcam", true, false},
      {"layercam", true, false},       {"hirescam", true, false},            {"gradcam-elementwise", true, false},
      {"eigencam", false, false},      {"eigengradcam", true, false},        {"scorecam", false, true},
  };
  return methods;
}

const Method& find(const std::string& name) {
  for (const auto& m : all())
    if (m.name == name) return m;
  std::vector<std::string> names;
  for (const auto& m : all()) names.push_back(m.name);
  XCAM_THROW("method '{}' is not available; choose one of: {}", name, fmt::join(names, ", "));
}

at::Tensor eigen_projection(const at::Tensor& A) {
  const int64_t B = A.size(0), K = A.size(1), h = A.size(2), w = A.size(3);
  // hw x K per sample, centred per channel; NaN/Inf are left in so that the
  // normaliser reports them.
  auto X = A.to(at::kFloat).reshape({B, K, h * w}).transpose(1, 2);
  X = X - X.mean(1, true);
  const auto svd = at::linalg_svd(X, /*full_matrices=*/false);
  const auto v1 = std::get<2>(svd).select(1, 0);  // B x K: first right singular vector
  auto proj = at::bmm(X, v1.unsqueeze(2)).squeeze(2);  // B x hw
  const auto idx = proj.abs().argmax(1, true);
  const auto sign = at::where(proj.gather(1, idx) < 0, -1.f, 1.f);
  return (proj * sign).view({B, h, w}).relu();
}

at::Tensor raw_map(const Method& m, const at::Tensor& A, const at::Tensor& g) {
  using kernels::ElementwiseMethod;
  using kernels::WeightMethod;
  const auto& n = m.name;
  if (n == "gradcam" || n == "gradcam++" || n == "xgradcam") {
    const auto wm = n == "gradcam" ? WeightMethod::gradcam
                    : n == "gradcam++" ? WeightMethod::gradcampp
                                       : WeightMethod::xgradcam;
    return kernels::weighted_sum_relu(A, kernels::channel_weights(A, g, wm));
  }
  if (n == "layercam") return kernels::elementwise_cam(A, g, ElementwiseMethod::layercam);
  if (n == "hirescam") return kernels::elementwise_cam(A, g, ElementwiseMethod::hirescam);
  if (n == "gradcam-elementwise") return kernels::elementwise_cam(A, g, ElementwiseMethod::gradcam_elementwise);
  if (n == "eigencam") return eigen_projection(A);
  if (n == "eigengradcam") return eigen_projection(A.to(at::kFloat) * g.to(at::kFloat));
  XCAM_THROW("method '{}' has no single-layer map (internal error)", n);
}

}  // namespace xcam::methods

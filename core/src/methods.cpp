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
      {"ablationcam", false, true},
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
  const int64_t B = A.size(0), K = A.size(1), h = A.size(2), w = A.size(3), hw = h * w;
  // hw x K per sample, centred per channel; NaN/Inf are left in so that the
  // normaliser reports them. The first principal component's scores X v1
  // come from the smaller Gram matrix, in float64: with X = U S V^T,
  // X X^T = U S^2 U^T gives X v1 = s1 u1, and X^T X = V S^2 V^T gives v1.
  auto X = A.to(at::kDouble).reshape({B, K, hw}).transpose(1, 2);
  X = X - X.mean(1, true);
  at::Tensor proj;
  if (hw <= K) {
    const auto eig = at::linalg_eigh(at::bmm(X, X.transpose(1, 2)));  // ascending eigenvalues
    const auto s1 = std::get<0>(eig).select(1, hw - 1).clamp_min(0).sqrt();
    proj = std::get<1>(eig).select(2, hw - 1) * s1.unsqueeze(1);
  } else {
    const auto eig = at::linalg_eigh(at::bmm(X.transpose(1, 2), X));
    proj = at::bmm(X, std::get<1>(eig).select(2, K - 1).unsqueeze(2)).squeeze(2);
  }
  const auto idx = proj.abs().argmax(1, true);
  const auto sign = at::where(proj.gather(1, idx) < 0, -1.0, 1.0);
  return (proj * sign).to(at::kFloat).view({B, h, w}).relu();
}

at::Tensor raw_map(const Method& m, const at::Tensor& A, const at::Tensor& g, bool eigen_smooth) {
  using kernels::ElementwiseMethod;
  using kernels::WeightMethod;
  const auto& n = m.name;
  if (n == "gradcam" || n == "gradcam++" || n == "xgradcam") {
    const auto wm = n == "gradcam" ? WeightMethod::gradcam
                    : n == "gradcam++" ? WeightMethod::gradcampp
                                       : WeightMethod::xgradcam;
    const auto w = kernels::channel_weights(A, g, wm);
    if (eigen_smooth) return eigen_projection(A.to(at::kFloat) * w.to(at::kFloat).unsqueeze(-1).unsqueeze(-1));
    return kernels::weighted_sum_relu(A, w);
  }
  if (eigen_smooth && (n == "layercam" || n == "hirescam" || n == "gradcam-elementwise")) {
    // the element-wise products pgc projects (layer_cam.py, hirescam.py, grad_cam_elementwise.py)
    const auto a = A.to(at::kFloat), gf = g.to(at::kFloat);
    if (n == "layercam") return eigen_projection(gf.relu() * a);
    if (n == "hirescam") return eigen_projection(gf * a);
    if (n == "gradcam-elementwise") return eigen_projection((gf * a).relu());
  }
  if (n == "layercam") return kernels::elementwise_cam(A, g, ElementwiseMethod::layercam);
  if (n == "hirescam") return kernels::elementwise_cam(A, g, ElementwiseMethod::hirescam);
  if (n == "gradcam-elementwise") return kernels::elementwise_cam(A, g, ElementwiseMethod::gradcam_elementwise);
  if (n == "eigencam") return eigen_projection(A);
  if (n == "eigengradcam") return eigen_projection(A.to(at::kFloat) * g.to(at::kFloat));
  XCAM_THROW("method '{}' has no single-layer map (internal error)", n);
}

}  // namespace xcam::methods

// The map methods (SPEC sections 2 and 6), one registry entry each; the CAM
// family on top of the fused kernels.
#include "methods.h"

#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "xcam/error.h"
#include "xcam/kernels/dispatch.h"

namespace xcam::methods {

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

namespace {

using kernels::ElementwiseMethod;
using kernels::WeightMethod;

// Channel weights w_k, then sum_k w_k A_k (or the principal component of w_k A_k).
template <WeightMethod M>
at::Tensor weighted(const at::Tensor& A, const at::Tensor& g, bool eigen_smooth) {
  const auto w = kernels::channel_weights(A, g, M);
  if (eigen_smooth) return eigen_projection(A.to(at::kFloat) * w.to(at::kFloat).unsqueeze(-1).unsqueeze(-1));
  return kernels::weighted_sum_relu(A, w);
}

// An element-wise term summed over channels; with eigen_smooth the principal
// component of that term, as pgc projects it (layer_cam.py, hirescam.py,
// grad_cam_elementwise.py).
template <ElementwiseMethod M>
at::Tensor elementwise(const at::Tensor& A, const at::Tensor& g, bool eigen_smooth) {
  if (!eigen_smooth) return kernels::elementwise_cam(A, g, M);
  const auto a = A.to(at::kFloat), gf = g.to(at::kFloat);
  if (M == ElementwiseMethod::layercam) return eigen_projection(gf.relu() * a);
  if (M == ElementwiseMethod::hirescam) return eigen_projection(gf * a);
  return eigen_projection((gf * a).relu());
}

at::Tensor eigencam(const at::Tensor& A, const at::Tensor&, bool) { return eigen_projection(A); }

at::Tensor eigengradcam(const at::Tensor& A, const at::Tensor& g, bool) {
  return eigen_projection(A.to(at::kFloat) * g.to(at::kFloat));
}

at::Tensor identity_like(const at::Tensor& fused) {
  const int64_t N = fused.size(-1);
  return at::eye(N, fused.options()).expand_as(fused);
}

// Row o.query of B x N x N, or with o.query < 0 the mean of the rows (what
// each token receives, on average: encoders without a CLS token).
at::Tensor query_row(const at::Tensor& r, const AttentionOptions& o) {
  return (o.query >= 0 ? r.select(1, o.query) : r.mean(1)).to(at::kFloat);
}

// The query token's row of the fused attention.
at::Tensor attention_row(const std::vector<at::Tensor>& attention, const std::vector<at::Tensor>&,
                         const AttentionOptions& o) {
  return query_row(fuse_heads(attention.at(0), o.head_fusion), o);
}

// Abnar & Zuidema: per block, heads fused, the lowest `discard_ratio` of the
// entries set to 0 (never the query token's row or column), 0.5 A + 0.5 I
// with rows renormalised; R = A_L ... A_1; the query token's row of R.
at::Tensor rollout(const std::vector<at::Tensor>& attention, const std::vector<at::Tensor>&,
                   const AttentionOptions& o) {
  at::Tensor R;
  for (const auto& a : attention) {
    auto f = fuse_heads(a, o.head_fusion);
    const int64_t B = f.size(0), N = f.size(-1);
    if (o.discard_ratio > 0) {
      auto rank = f.clone();
      if (o.query >= 0) {
        rank.select(1, o.query).fill_(INFINITY);
        rank.select(2, o.query).fill_(INFINITY);
      }
      const int64_t k = std::min<int64_t>(static_cast<int64_t>(static_cast<double>(N * N) * o.discard_ratio),
                                          N * N - (2 * N - 1));
      if (k > 0) {
        const auto lowest = std::get<1>(rank.view({B, N * N}).topk(k, 1, /*largest=*/false));
        f = f.reshape({B, N * N}).scatter(1, lowest, 0.0).view({B, N, N});
      }
    }
    f = 0.5 * f + 0.5 * identity_like(f);
    f = f / f.sum(-1, true);
    R = R.defined() ? at::bmm(f, R) : f;
  }
  return query_row(R, o);
}

// Chefer et al. 2021 (generic): R = I; per block R += mean_heads(relu(dA * A)) R;
// the query token's row of R.
at::Tensor relevancy(const std::vector<at::Tensor>& attention, const std::vector<at::Tensor>& grads,
                     const AttentionOptions& o) {
  at::Tensor R;
  for (size_t l = 0; l < attention.size(); ++l) {
    const auto cam = (grads.at(l).to(at::kDouble) * attention[l].to(at::kDouble)).clamp_min(0).mean(1);
    if (!R.defined()) R = identity_like(cam).clone();
    R = R + at::bmm(cam, R);
  }
  return query_row(R, o);
}

}  // namespace

const std::vector<Method>& all() {
  // One entry per method: name, kind, gradients, forwards, its function.
  static const std::vector<Method> methods{
      {"gradcam", Kind::channel, true, false, &weighted<WeightMethod::gradcam>},
      {"gradcam++", Kind::channel, true, false, &weighted<WeightMethod::gradcampp>},
      {"xgradcam", Kind::channel, true, false, &weighted<WeightMethod::xgradcam>},
      {"layercam", Kind::channel, true, false, &elementwise<ElementwiseMethod::layercam>},
      {"hirescam", Kind::channel, true, false, &elementwise<ElementwiseMethod::hirescam>},
      {"gradcam-elementwise", Kind::channel, true, false, &elementwise<ElementwiseMethod::gradcam_elementwise>},
      {"eigencam", Kind::channel, false, false, &eigencam},
      {"eigengradcam", Kind::channel, true, false, &eigengradcam},
      {"scorecam", Kind::perturbation, false, true},
      {"ablationcam", Kind::perturbation, false, true},
      {"attention", Kind::attention, false, false, nullptr, &attention_row},
      {"rollout", Kind::cross_layer, false, false, nullptr, &rollout},
      {"relevancy", Kind::cross_layer, true, false, nullptr, &relevancy},
  };
  return methods;
}

at::Tensor raw_map(const Method& m, const at::Tensor& A, const at::Tensor& g, bool eigen_smooth) {
  XCAM_CHECK(m.layer_map != nullptr, "method '{}' has no single-layer map (internal error)", m.name);
  return m.layer_map(A, g, eigen_smooth);
}

at::Tensor as_attention(const at::Tensor& tapped, int64_t batch, const std::string& layer, bool cross) {
  const auto s = tapped.sizes();
  const bool square = tapped.dim() >= 3 && s[tapped.dim() - 1] == s[tapped.dim() - 2];
  if (square && tapped.dim() == 4 && s[0] == batch) return tapped;
  if (cross && tapped.dim() == 4 && s[0] == batch && s[2] < s[3]) return tapped;  // Q queries over N keys
  if (square && tapped.dim() == 3 && s[0] % batch == 0) return tapped.view({batch, s[0] / batch, s[1], s[2]});
  XCAM_THROW("layer '{}' gives a tensor of shape {} for a batch of {}; attention methods read attention "
             "probabilities B x heads x N x N ({}): tap the softmax inside the attention module (`xcam layers MODEL "
             "--ops PATH` lists its ops)",
             layer, c10::str(s), batch,
             cross ? "the attention method also B x heads x Q x N, Q query tokens attending to N others"
                   : "rollout and relevancy: every token attending to every token");
}

at::Tensor fuse_heads(const at::Tensor& attention, const std::string& fusion) {
  const auto a = attention.to(at::kDouble);
  if (fusion == "mean") return a.mean(1);
  if (fusion == "max") return std::get<0>(a.max(1));
  if (fusion == "min") return std::get<0>(a.min(1));
  XCAM_THROW("head fusion '{}' is not one of mean, max, min", fusion);
}

}  // namespace xcam::methods

// One sample's attention at the Explainer's taps, with where each token lies
// on the model input: what `xcam attention` reads of vision models
// (docs/attention.md, "Images").
#include <fmt/format.h>
#include <torch/script.h>

#include <cmath>
#include <limits>

#include "explain_impl.h"

namespace xcam {

namespace {

// Where the tokens of layer l lie: the plugin's layout (positions of the
// grid's cells, row-major), else the patch grid after the prefix tokens.
void place_tokens(const AttentionOptions& o, const std::vector<at::Tensor>& layout, int64_t grid_h, int64_t grid_w,
                  int64_t H, int64_t W, AttentionCapture::Layer& out) {
  const int64_t N = out.tokens;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  out.centre.assign(static_cast<size_t>(N), {nan, nan});
  std::vector<int64_t> positions;
  if (!layout.empty()) {
    const auto index = layout[0].to(at::kCPU).contiguous();
    positions.assign(index.data_ptr<int64_t>(), index.data_ptr<int64_t>() + index.numel());
    out.grid_h = grid_h;
    out.grid_w = grid_w;
  } else {
    XCAM_CHECK(o.patch_h > 0 && o.patch_w > 0,
               "layer '{}' has {} tokens, and nothing says where they lie on the {} x {} input: give the model's "
               "patch size (--patch P, and --prefix-tokens K for other than 1 token before the grid) or a plugin "
               "that lays its tokens out",
               out.name, N, H, W);
    out.grid_h = H / o.patch_h;
    out.grid_w = W / o.patch_w;
    XCAM_CHECK(N - o.prefix == out.grid_h * out.grid_w,
               "layer '{}' has {} tokens; {} prefix token(s) and a {} x {} grid ({} x {} input, patch {} x {}) make "
               "{}; set --prefix-tokens and --patch to the model's",
               out.name, N, o.prefix, out.grid_h, out.grid_w, H, W, o.patch_h, o.patch_w,
               o.prefix + out.grid_h * out.grid_w);
    for (int64_t q = o.prefix; q < N; ++q) positions.push_back(q);
  }
  out.cell_h = static_cast<double>(H) / static_cast<double>(out.grid_h);
  out.cell_w = static_cast<double>(W) / static_cast<double>(out.grid_w);
  for (size_t k = 0; k < positions.size(); ++k) {
    const auto r = static_cast<double>(static_cast<int64_t>(k) / out.grid_w),
               c = static_cast<double>(static_cast<int64_t>(k) % out.grid_w);
    out.centre.at(static_cast<size_t>(positions[k])) = {(r + 0.5) * out.cell_h, (c + 0.5) * out.cell_w};
  }
}

}  // namespace

AttentionCapture Explainer::attention_of(const SampleInput& sample) {
  return host_errors([&] { return impl_->attention_of(sample); });
}

AttentionCapture Explainer::Impl::attention_of(const SampleInput& sample) {
  auto& m = *this;
  XCAM_CHECK(!sample.image.empty(), "sample '{}' has no image; the attention of texts is read with --text",
             sample.id);
  const std::vector<SampleInput> samples{sample};
  const auto group = m.groups_of(samples).at(0);
  const at::Tensor images = m.group_images(samples, group);
  const int64_t H = images.size(2), W = images.size(3);
  StageTimes times;
  m.resolve_targets = false;
  struct Restore {
    bool& flag;
    ~Restore() { flag = true; }
  } restore{m.resolve_targets};
  const auto pass = m.forward_pass(m.view_set(H, W), images, {sample.id}, {sample.requests}, &times, &samples, false);
  const auto rows = static_cast<int64_t>(pass.batch.ids.size() * (1 + pass.stacked.size()));
  AttentionCapture out;
  out.height = H;
  out.width = W;
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const auto& tap = pass.fwd.taps[l];
    XCAM_CHECK(!(tap.dim() == 4 && tap.size(2) != tap.size(3)),
               "layer '{}' is a cross-attention ({} query token(s) over {} keys, shape {}); head statistics read "
               "self-attention (every token attending to every token): tap a self-attention's softmax",
               m.layers[l], tap.size(2), tap.size(3), c10::str(tap.sizes()));
    const auto a = methods::as_attention(tap.detach(), rows, m.layers[l], false)[0]
                       .to(at::kCPU, at::kFloat)
                       .contiguous();  // heads x N x N of the sample's first row
    AttentionCapture::Layer layer;
    layer.name = m.layers[l];
    layer.heads = a.size(0);
    layer.tokens = a.size(1);
    layer.attention.assign(a.data_ptr<float>(), a.data_ptr<float>() + a.numel());
    const auto& laid = pass.layouts.at(l);
    place_tokens(m.opt.attention, laid.index, laid.grid_h, laid.grid_w, H, W, layer);
    out.layers.push_back(std::move(layer));
  }
  return out;
}

}  // namespace xcam

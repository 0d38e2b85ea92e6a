// The perturbation paths: Score-CAM and Ablation-CAM weights, and the
// faithfulness metrics of SPEC section 5, each on batches that the plugin's
// perturbation_batch() and prepare() build for the perturbed sample.
#include <fmt/format.h>
#include <torch/script.h>

#include <algorithm>
#include <cmath>

#include "xcam/image.h"
#include "xcam/kernels/dispatch.h"
#include "explain_impl.h"
#include "onednn_convs.h"

namespace xcam {

at::Tensor Explainer::Impl::scorecam(const at::Tensor& a, const Batch& batch, size_t rank) {
  torch::NoGradGuard no_grad;
  const int64_t B = a.size(0), K = a.size(1);
  auto scores = torch::empty({B, K}, a.options().dtype(torch::kFloat32));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k0 = 0; k0 < K; k0 += opt.score_chunk) {
      const int64_t k1 = std::min(K, k0 + opt.score_chunk);
      Batch masked = repeat_sample(batch, b, rank, kernels::scorecam_masks(a[b], k0, k1, batch.images[b]));
      const auto out = inference_model().forward(masked.inputs);
      scores[b].slice(0, k0, k1).copy_(plugin->score(out, masked, 0, nullptr));
    }
  }
  const auto w = scores.softmax(1);
  if (opt.eigen_smooth) return methods::eigen_projection(a.to(torch::kFloat32) * w.unsqueeze(-1).unsqueeze(-1));
  return kernels::weighted_sum_relu(a, w);
}

torch::jit::Module& Explainer::Impl::inference_model() {
  if (!fast) {
    fast = model.module();
    if (opt.optimize) {
      try {
        auto frozen = torch::jit::freeze(model.module());
        if (opt.device == "cpu" && onednn::available()) {
          const auto st = onednn::rewrite_convolutions(frozen.get_method("forward").graph(), opt.winograd);
          plugin_host()->log(plugin_host(), 0,
                             fmt::format("perturbed forwards of '{}': {} convolution(s) on oneDNN, {} Winograd, {} "
                                         "with ReLU, {} with the residual addition, {} chained in blocked layout",
                                         opt.model, st.convolutions, st.winograd, st.fused_relu, st.fused_add,
                                         st.blocked)
                                 .c_str());
        }
        fast = torch::jit::optimize_for_inference(frozen);
      } catch (const std::exception& e) {
        std::string why = e.what();
        const std::string msg = fmt::format("model '{}' cannot be frozen for the perturbed forwards ({}); using it "
                                            "as it is (slower, same results)",
                                            opt.model, why.substr(0, why.find('\n')));
        plugin_host()->log(plugin_host(), 2, msg.c_str());
      }
    }
  }
  return *fast;
}

Batch Explainer::Impl::single_target(const at::Tensor& images, const Target& target, const std::string& id,
                                     const Sample& like) {
  Batch out;
  const auto n = static_cast<size_t>(images.size(0));
  out.images = images;
  out.labels = labels;
  out.targets.assign(n, {target});
  out.ids.assign(n, id);
  for (size_t i = 0; i < n; ++i) {
    Sample s = like;
    s.id = id;
    s.images["image"] = images[static_cast<int64_t>(i)];
    out.samples.push_back(std::move(s));
  }
  plugin->prepare(model.module(), out);
  return out;
}

Batch Explainer::Impl::repeat_sample(const Batch& batch, int64_t b, size_t rank, const at::Tensor& images) {
  Batch out = plugin->perturbation_batch(batch, b, rank, images);
  XCAM_CHECK(out.images.defined() && out.images.size(0) == images.size(0) &&
                 static_cast<int64_t>(out.targets.size()) == images.size(0),
             "plugin '{}': perturbation_batch() must return the {} perturbed images, each with one target",
             opt.plugin, images.size(0));
  plugin->prepare(model.module(), out);
  return out;
}

std::vector<double> Explainer::Impl::probabilities(const at::Tensor& images, const Target& target,
                                                   const std::string& id, const Sample& like) {
  Batch part = single_target(images, target, id, like);
  const auto out = inference_model().forward(part.inputs);
  std::vector<double> p;
  plugin->score(out, part, 0, &p);
  XCAM_CHECK(static_cast<int64_t>(p.size()) == images.size(0),
             "plugin '{}' gives no readable score (probability) for its targets, which the faithfulness metrics "
             "need; use a plugin that fills the scores of ArchPlugin::score",
             opt.plugin);
  return p;
}

std::vector<Faithfulness> Explainer::faithfulness(const std::vector<cv::Mat>& images,
                                                  const std::vector<std::string>& ids,
                                                  const std::vector<MapResult>& maps,
                                                  const FaithfulnessOptions& options) {
  std::vector<float> nchw;
  nchw.reserve(images.size() * 3 * impl_->pre.height * impl_->pre.width);
  for (const auto& im : images) preprocess_into(im, impl_->pre, nchw);
  return faithfulness(nchw, static_cast<int64_t>(images.size()), ids, maps, options);
}

std::vector<Faithfulness> Explainer::faithfulness(const std::vector<float>& nchw, int64_t batch,
                                                  const std::vector<std::string>& ids,
                                                  const std::vector<MapResult>& maps,
                                                  const FaithfulnessOptions& o) {
  const auto& p = impl_->pre;
  XCAM_CHECK(static_cast<int64_t>(nchw.size()) == batch * 3 * p.height * p.width,
             "preprocessed batch has {} floats, expected {} x 3 x {} x {}", nchw.size(), batch, p.height, p.width);
  const auto images = torch::from_blob(const_cast<float*>(nchw.data()), {batch, 3, p.height, p.width},
                                       torch::kFloat32)
                          .to(impl_->model.device(), false, true);
  return host_errors([&] { return impl_->faithfulness(images, ids, maps, o, nullptr); });
}

std::vector<Faithfulness> Explainer::faithfulness(const std::vector<SampleInput>& samples,
                                                  const std::vector<MapResult>& maps,
                                                  const FaithfulnessOptions& o) {
  auto& m = *impl_;
  std::vector<Faithfulness> out(maps.size());
  host_errors([&] {
    // Samples of one geometry together, as explain() batched them.
    for (const auto& g : m.groups_of(samples)) {
      if (g.height == 0) continue;  // text samples: perturbing images says nothing of their maps
      std::vector<SampleInput> part;
      std::vector<std::string> ids;
      for (size_t i : g.index) {
        part.push_back(samples[i]);
        ids.push_back(samples[i].id);
      }
      std::vector<MapResult> mine;
      std::vector<size_t> where;
      for (size_t k = 0; k < maps.size(); ++k)
        if (std::find(ids.begin(), ids.end(), maps[k].image_id) != ids.end()) {
          mine.push_back(maps[k]);
          where.push_back(k);
        }
      const auto f = m.faithfulness(m.group_images(samples, g), ids, mine, o, &part);
      for (size_t k = 0; k < f.size(); ++k) out[where[k]] = f[k];
    }
  });
  return out;
}

std::vector<Faithfulness> Explainer::Impl::faithfulness(const at::Tensor& images, const std::vector<std::string>& ids,
                                                        const std::vector<MapResult>& maps,
                                                        const FaithfulnessOptions& o,
                                                        const std::vector<SampleInput>* inputs) {
  auto& m = *this;
  const int64_t batch = images.size(0), H = images.size(2), W = images.size(3), HW = H * W;
  XCAM_CHECK(static_cast<int64_t>(ids.size()) == batch, "{} ids for a batch of {}", ids.size(), batch);
  XCAM_CHECK(o.chunk > 0, "faithfulness chunk must be positive, got {}", o.chunk);
  XCAM_CHECK(o.steps >= 0, "faithfulness steps must be positive (or 0 for the default), got {}", o.steps);
  torch::NoGradGuard no_grad;
  const auto dev = m.model.device();

  // Insertion's start: an 11 x 11 Gaussian (sigma 5) blur of each channel,
  // zero padded (0 is the mean colour in the normalised space).
  const auto g1 = (torch::arange(11, torch::kFloat64) - 5).pow(2).div(-2.0 * 25.0).exp();
  const auto g2 = torch::outer(g1, g1);
  const auto kernel = (g2 / g2.sum()).to(torch::kFloat32).to(dev).expand({3, 1, 11, 11}).contiguous();
  const auto blurred = torch::conv2d(images, kernel, {}, 1, 5, 1, 3);

  const int64_t n = o.steps > 0 ? o.steps : std::max<int64_t>(1, std::llround(std::sqrt(double(HW))));
  const int64_t step = (HW + n - 1) / n;
  // Each sample's other images, text and metadata, preprocessed once.
  std::vector<Sample> likes(static_cast<size_t>(batch));
  if (inputs != nullptr)
    for (int64_t b = 0; b < batch; ++b) likes[b] = sample_of(inputs->at(b));
  std::vector<Faithfulness> out;
  out.reserve(maps.size());
  for (const auto& mr : maps) {
    const auto it = std::find(ids.begin(), ids.end(), mr.image_id);
    XCAM_CHECK(it != ids.end(), "faithfulness: map for '{}' but no image with that id in the batch", mr.image_id);
    XCAM_CHECK(static_cast<int64_t>(mr.map.size()) == HW,
               "faithfulness: map for '{}' has {} values, expected {} x {} (the model's input size)", mr.image_id,
               mr.map.size(), H, W);
    const int64_t b = it - ids.begin();
    if (mr.on != "image") {  // a map on another image: perturbing this one says nothing of it
      out.emplace_back();
      continue;
    }
    const Sample& like = likes[b];
    const auto x = images[b];
    const auto sal = torch::from_blob(const_cast<float*>(mr.map.data()), {HW}, torch::kFloat32).to(dev, false, true);
    // rank[p]: position of pixel p in descending map order, ties in pixel order
    const auto order = std::get<1>(sal.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    const auto rank = torch::empty_like(order).scatter_(0, order, torch::arange(HW, order.options())).view({1, 1, H, W});

    // The perturbed inputs, in order: x, x * map, deletion states 0..n,
    // insertion states 0..n; state s has its first min(s * step, HW) pixels
    // (in map order) deleted / inserted.
    const int64_t total = 2 * n + 4;
    auto states = [&](int64_t s0, int64_t s1) {
      const auto th = (torch::arange(s0, s1, rank.options()) * step).view({-1, 1, 1, 1});
      return rank < th;  // (s1 - s0) x 1 x H x W
    };
    auto build = [&](int64_t j0, int64_t j1) {
      std::vector<at::Tensor> parts;
      if (j0 <= 0 && 0 < j1) parts.push_back(x.unsqueeze(0));
      if (j0 <= 1 && 1 < j1) parts.push_back((x * sal.view({1, H, W})).unsqueeze(0));
      const int64_t d0 = std::max(j0, int64_t{2}), d1 = std::min(j1, n + 3);
      if (d0 < d1)
        parts.push_back(x.unsqueeze(0).expand({d1 - d0, 3, H, W}).masked_fill(states(d0 - 2, d1 - 2), 0.0));
      const int64_t i0 = std::max(j0, n + 3), i1 = std::min(j1, total);
      if (i0 < i1) parts.push_back(torch::where(states(i0 - n - 3, i1 - n - 3), x.unsqueeze(0), blurred[b].unsqueeze(0)));
      return torch::cat(parts, 0);
    };
    // The map's whole target, payload included; maps made elsewhere may
    // give only the class index and label.
    Target t = mr.target;
    if (t.index < 0 && t.label.empty()) {
      t.index = mr.target_index;
      t.label = mr.target_label;
    }
    std::vector<double> probs;
    probs.reserve(static_cast<size_t>(total));
    for (int64_t j0 = 0; j0 < total; j0 += o.chunk) {
      const auto part = m.probabilities(build(j0, std::min(total, j0 + o.chunk)), t, mr.image_id, like);
      probs.insert(probs.end(), part.begin(), part.end());
    }

    Faithfulness f;
    f.base = probs[0];
    f.masked = probs[1];
    f.drop = f.base > 0 ? 100.0 * std::max(0.0, f.base - f.masked) / f.base : 0.0;
    f.increase = f.base < f.masked;
    auto auc = [&](size_t first, std::vector<double>* keep) {
      double sum = 0;
      for (int64_t s = 0; s <= n; ++s) sum += probs[first + s];
      if (keep) keep->assign(probs.begin() + first, probs.begin() + first + n + 1);
      return (sum - probs[first] / 2 - probs[first + n] / 2) / static_cast<double>(n);
    };
    f.deletion = auc(2, o.curves ? &f.deletion_curve : nullptr);
    f.insertion = auc(static_cast<size_t>(n + 3), o.curves ? &f.insertion_curve : nullptr);
    out.push_back(std::move(f));
  }
  return out;
}

at::Tensor Explainer::Impl::ablationcam(size_t l, const at::Tensor& tap, const at::Tensor& a, const Batch& batch,
                                        size_t rank, const at::Tensor& y) {
  torch::NoGradGuard no_grad;
  const int64_t B = a.size(0), K = a.size(1);
  // Channels of the tapped tensor: dim 1 of B x K x ..., or the last dim of
  // B x N x C tokens (which the plugin's to_grid turns into K = C channels).
  const int64_t cdim = tap.dim() == 3 ? 2 : 1;
  XCAM_CHECK(tap.dim() >= 2 && tap.size(cdim) == K,
             "ablationcam: layer '{}' gives a tensor of shape {} whose channels do not match the {} channels of "
             "its grid; tap a layer whose output is B x K x h x w or B x N x C",
             layers[l], c10::str(tap.sizes()), K);
  auto scores = torch::empty({B, K}, y.options().dtype(torch::kFloat32));
  for (int64_t b = 0; b < B; ++b) {
    const auto sample = tap[b].unsqueeze(0);
    // SPEC section 2: 0 when the sample's minimum is 0 (post-ReLU layers),
    // otherwise the minimum minus 1e7. Decided on the device, no host sync.
    const auto lo = sample.min();
    const auto value = at::where(lo == 0, at::zeros_like(lo), lo - 1e7);
    for (int64_t k0 = 0; k0 < K; k0 += opt.score_chunk) {
      const int64_t n = std::min(K, k0 + opt.score_chunk) - k0;
      std::vector<int64_t> reps(static_cast<size_t>(tap.dim()), 1);
      reps[0] = n;
      auto ablated = sample.repeat(reps);
      // copy i has channel k0 + i ablated: a one-hot n x K mask, broadcast
      std::vector<int64_t> mshape(static_cast<size_t>(tap.dim()), 1);
      mshape[0] = n;
      mshape[static_cast<size_t>(cdim)] = K;
      const auto mask = at::arange(K, tap.options().dtype(torch::kLong))
                            .unsqueeze(0)
                            .eq(at::arange(k0, k0 + n, tap.options().dtype(torch::kLong)).unsqueeze(1))
                            .view(mshape);
      ablated.masked_fill_(mask, value.to(ablated.dtype()));
      // the input as the model takes it; what only led up to the tap is not run
      const auto images = batch.images[b].unsqueeze(0).expand({n, -1, -1, -1});
      Batch part = repeat_sample(batch, b, rank, images);
      const auto out = tapped->run_replacing(part.inputs, l, ablated);
      scores[b].slice(0, k0, k0 + n).copy_(plugin->score(out, part, 0, nullptr));
    }
  }
  const auto y0 = y.to(torch::kFloat32).unsqueeze(1);
  const auto w = (y0 - scores) / y0;
  if (opt.eigen_smooth) return methods::eigen_projection(a.to(torch::kFloat32) * w.unsqueeze(-1).unsqueeze(-1));
  return kernels::weighted_sum_relu(a, w);
}

}  // namespace xcam

// The map methods, one registry entry each (private to the runtime). A method
// is of one kind, which says what it reads and who runs it:
//   channel       per layer, from the activations A and gradients g
//                 (B x K x h x w: the plugin's token layout or to_grid): the CAM family
//                 of SPEC section 2; its map function is here.
//   perturbation  per layer, with extra forwards of the model (Score-CAM,
//                 Ablation-CAM): the Explainer runs them (perturb.cpp).
//   attention     per layer, the tapped value is the map: attention
//                 probabilities B x heads x N x N (or cross-attention
//                 B x heads x Q x N), heads fused, the row of one query
//                 token (SPEC section 6).
//   cross_layer   every tapped layer at once, in tap order: attention
//                 rollout and gradient-weighted relevancy (SPEC section 6).
// Attention and cross-layer methods give a score per token (B x N); the
// runtime lays them out by the plugin's token layout (ABI 2.2) or, without
// one, drops the prefix tokens and lays the rest on the patch grid.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "xcam/explainer.h"

namespace xcam::methods {

enum class Kind { channel, perturbation, attention, cross_layer };

struct Method {
  std::string name;
  Kind kind;
  bool gradients;  // needs dy/d(tap)
  bool forwards;   // needs extra model forwards
  // channel: the map before normalisation, ReLU applied, B x h x w float32.
  // `eigen_smooth` (pgc's option of the same name): instead of summing the
  // per-channel terms over channels, take their first principal component.
  at::Tensor (*layer_map)(const at::Tensor& A, const at::Tensor& g, bool eigen_smooth) = nullptr;
  // attention (one layer) and cross_layer (all, in tap order): B x N token
  // scores from attention probabilities B x heads x N x N (and their
  // gradients, same shapes, when `gradients`).
  at::Tensor (*token_map)(const std::vector<at::Tensor>& attention, const std::vector<at::Tensor>& grads,
                          const AttentionOptions& options) = nullptr;
};

// Every method this build implements, in the order `xcam --help` lists them.
const std::vector<Method>& all();
const Method& find(const std::string& name);  // throws xcam::Error listing the names

// The channel method's map (Score-CAM and Ablation-CAM are not channel
// methods: they need the model).
at::Tensor raw_map(const Method& m, const at::Tensor& A, const at::Tensor& g, bool eigen_smooth = false);

// First principal component of each sample's activations seen as hw points
// of K channels, centred per channel; sign fixed so that the value of
// largest magnitude is positive (xcam's choice, SPEC section 2). B x h x w.
at::Tensor eigen_projection(const at::Tensor& A);

// A tapped value as attention probabilities B x heads x N x N: 4-d as it
// is, (B * heads) x N x N (nn.MultiheadAttention's inner softmax) viewed so;
// with `cross`, also cross-attention B x heads x Q x N (Q < N query tokens,
// such as a learned prompt, attending to N tokens), for the one-layer
// `attention` method. Throws xcam::Error naming the layer and the shape
// otherwise.
at::Tensor as_attention(const at::Tensor& tapped, int64_t batch, const std::string& layer, bool cross = false);

// Heads fused (mean | max | min): B x N x N, float64.
at::Tensor fuse_heads(const at::Tensor& attention, const std::string& fusion);

}  // namespace xcam::methods

// The at::Tensor face of the kernels: argument checks, then the CPU kernel for
// CPU tensors or its CUDA twin, on the current stream, for CUDA tensors.
// Activations and gradients may be float32, float16 or bfloat16; every output
// map is float32. Non-contiguous inputs are made contiguous (one copy).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "xcam/kernels/elementwise.h"
#include "xcam/kernels/pool.h"

namespace xcam::kernels {

struct MapOutput {
  at::Tensor map;     // B x H x W float32, in [0, 1]
  at::Tensor lowres;  // B x h x w float32, normalised, before resize
  at::Tensor status;  // B uint8 CamStatus (on the CPU)
};

// Fused Grad-CAM of B x K x h x w activations and gradients to B x H x W.
MapOutput gradcam(const at::Tensor& activations, const at::Tensor& gradients, int64_t out_h, int64_t out_w);

// B x K channel weights (float32).
at::Tensor channel_weights(const at::Tensor& activations, const at::Tensor& gradients, WeightMethod method);

// relu(sum_k w_k A_k): B x h x w (float32).
at::Tensor weighted_sum_relu(const at::Tensor& activations, const at::Tensor& weights);

// Element-wise maps (layercam, hirescam, gradcam-elementwise): B x h x w.
at::Tensor elementwise_cam(const at::Tensor& activations, const at::Tensor& gradients, ElementwiseMethod method);

// Per-sample min-max of B x ... float32 maps (a new tensor); per-sample
// CamStatus into `status` (B uint8, on the CPU) if it is not null.
at::Tensor minmax_normalize(const at::Tensor& maps, at::Tensor* status = nullptr);

// Per-sample min-max then resize of a B x h x w float32 map.
MapOutput normalize_resize(const at::Tensor& cam, int64_t out_h, int64_t out_w);

// Bilinear resize of B x h x w float32 planes (align_corners for Score-CAM).
at::Tensor resize_bilinear(const at::Tensor& maps, int64_t out_h, int64_t out_w, bool align_corners);

// Several layers' normalised maps (each B x h_l x w_l) to one B x H x W map.
MapOutput aggregate_layers(const std::vector<at::Tensor>& lowres, int64_t out_h, int64_t out_w);

// Score-CAM masked inputs for channels [k0, k1) of one sample's K x h x w
// activations and its C x H x W input: (k1 - k0) x C x H x W float32.
at::Tensor scorecam_masks(const at::Tensor& activations, int64_t k0, int64_t k1, const at::Tensor& input);

// H x W float32 map, H x W x 3 uint8 RGB image, 256 x 3 uint8 LUT -> the
// H x W x 3 overlay (and the colormapped heat, if `heat` is not null).
at::Tensor colormap_overlay(const at::Tensor& map, const at::Tensor& image, const at::Tensor& lut, float image_weight,
                            at::Tensor* heat = nullptr);

// True when this build has the CUDA twins.
bool cuda_kernels_built();

}  // namespace xcam::kernels

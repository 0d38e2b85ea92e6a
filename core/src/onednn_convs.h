// The convolutions of the perturbed forwards (Score-CAM's masked inputs, the
// faithfulness metrics' steps) on oneDNN, called directly: a pass over a
// frozen graph that replaces each 2-D convolution with constant float weights
// by the operator xcam::conv2d_onednn, which
//
//   - runs 3x3, stride-1, undilated, ungrouped convolutions with at least 32
//     input and output channels on oneDNN's Winograd F(4x4, 3x3) algorithm
//     (about 4x fewer multiplications than direct convolution; 1.9-2.6x
//     faster than oneDNN's direct kernels on resnet18's 3x3 layers at 32
//     images a batch, AVX-512, 2 threads) and the others on its direct
//     algorithm;
//   - folds a following ReLU, and a following residual addition (+ ReLU),
//     into the convolution as oneDNN post-ops;
//   - hands its output to the next such convolution in oneDNN's blocked
//     layout (N x C/16 x H x W x 16, carried as a 5-D float tensor), so that a
//     chain of convolutions is not reordered to and from NCHW at every step.
//     A value leaves the chain in NCHW wherever any other operator reads it.
//
// Winograd's results differ from direct convolution by ~2e-6 of the output's
// magnitude. The operator falls back to oneDNN's direct algorithm where
// Winograd has no implementation for the shape or CPU (channels not a
// multiple of 16, no AVX-512), and to at::conv2d for non-CPU or non-float
// inputs.
#pragma once

#include <memory>

namespace torch::jit {
struct Graph;
}

namespace xcam::onednn {

// Whether this build calls oneDNN (XCAM_WITH_ONEDNN).
bool available();

struct RewriteStats {
  int convolutions = 0;  // replaced by xcam::conv2d_onednn
  int winograd = 0;      // of which on the Winograd algorithm
  int fused_relu = 0;    // ReLUs folded into a convolution
  int fused_add = 0;     // residual additions folded into a convolution
  int blocked = 0;       // convolutions whose output stays in the blocked layout
};

// Rewrites the convolutions of the frozen, inlined `graph` in place (no-op
// when !available()). Convolutions with non-constant weights, transposed or
// non-2-D ones are left as they are.
RewriteStats rewrite_convolutions(const std::shared_ptr<torch::jit::Graph>& graph, bool winograd);

// The operator keeps, per weight, kernels and transformed weights (Winograd's
// are 4x the weight: ~150 MB for resnet18) for as long as the weight lives.
// Frees those of weights that nothing else holds any more (their graph was
// destroyed); also done whenever a new kernel is planned.
void release_unused();

// What the operator keeps now: kernels planned, and bytes of transformed weights.
struct CacheStats {
  size_t plans = 0, weight_bytes = 0;
};
CacheStats cache_stats();

}  // namespace xcam::onednn

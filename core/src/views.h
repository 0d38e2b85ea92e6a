// Views (private to the runtime): a view turns the model-size input into a
// transformed copy, and the copy's map back onto the input. A view set is
// explained in one batched forward (view v of sample b at v * B + b), its
// targets resolved on the reference view, and its maps combined per input
// pixel: the sum of what each view puts there over how many views cover it.
//   identity       the input as it is
//   augmentations  aug_smooth: pgc's six test-time augmentations (flip x
//                  0.9 / 1 / 1.1 of the normalised input); plain mean, not
//                  renormalised (pgc's forward_augmentation_smoothing)
//   crops          a rows x cols grid of overlapping crops, each resized to
//                  the model size, their maps resized back and pasted onto
//                  the input, overlaps averaged, then min-max normalised;
//                  the whole input is the reference view (targets, scores)
//                  and adds no map of its own
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace xcam::views {

struct View {
  bool flip = false;
  double factor = 1.0;
  int64_t x0 = 0, y0 = 0, width = 0, height = 0;  // crop of the input, pixels; width 0: all of it
  bool adds_map = true;                           // false: seen only for its targets and scores
};

struct ViewSet {
  std::vector<View> views;
  size_t reference = 0;     // the view whose targets, scores and low-resolution maps are reported
  bool renormalise = false;  // min-max normalise the combined map
};

ViewSet identity();
ViewSet augmentations();
// rows x cols crops of an H x W input, neighbours overlapping by `overlap`
// (a fraction of the crop size, in [0, 1)).
ViewSet crops(int64_t rows, int64_t cols, double overlap, int64_t H, int64_t W);

// The views of `images` (B x 3 x H x W), concatenated: V * B x 3 x H x W.
at::Tensor apply(const ViewSet& set, const at::Tensor& images);

// The maps of every view (V * B x H x W, each in [0, 1]) combined onto the
// input: B x H x W.
at::Tensor combine(const ViewSet& set, const at::Tensor& maps, int64_t B);

}  // namespace xcam::views

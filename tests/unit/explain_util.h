// Helpers shared by the Explainer parity tests (test_gradcam, test_methods,
// test_smoothing): options for the cnn plugin, golden files, requests.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../common.h"
#include "xcam/explainer.h"
#include "xcam/io.h"

namespace xcam::test {

// The cnn plugin from the build tree on `model`, one layer, a square input.
inline ExplainerOptions cnn_options(const std::string& model, const std::string& layer, int64_t size,
                                    const std::string& method = "gradcam") {
  ExplainerOptions o;
  o.model = model;
  o.plugin = "cnn";
  o.plugin_dirs = {binary("plugins")};
  o.layers = {layer};
  o.height = o.width = size;
  o.method = method;
  return o;
}

inline NpyArray golden(const std::string& name) { return read_npy(data("golden/" + name + ".npy")); }

// max_i |a[i] - ref[offset + i]|
inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& ref, size_t offset) {
  double err = 0;
  for (size_t i = 0; i < a.size(); ++i) err = std::max(err, std::abs(double(a[i]) - ref[offset + i]));
  return err;
}

// Sample ids "s0", "s1", ...
inline std::vector<std::string> sample_ids(int64_t B) {
  std::vector<std::string> ids;
  for (int64_t b = 0; b < B; ++b) ids.push_back("s" + std::to_string(b));
  return ids;
}

// The maps of the B = input.shape[0] samples of `input`, sample b for the
// class targets.i64[b].
inline std::vector<MapResult> explain_targets(Explainer& ex, const NpyArray& input, const NpyArray& targets) {
  const int64_t B = input.shape[0];
  std::vector<std::vector<std::string>> req;
  for (int64_t b = 0; b < B; ++b) req.push_back({std::to_string(targets.i64[b])});
  return ex.explain_preprocessed(input.f32, B, sample_ids(B), req);
}

}  // namespace xcam::test

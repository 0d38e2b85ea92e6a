// The vlm plugin (plugins/vlm/README.md): decoder-only vision-language
// models exported by zoo/vlm_model.py as one traced file that serves every
// image grid (Qwen2-VL):
//   forward(input_ids [1, T], pixel_values [P, 3*tp*p*p], position_ids [3, 1, T],
//           vision_rotary [P, hd/2], cu_seqlens [2]) -> logits [1, T, V]
// and Qwen2.5-VL, with window_index [P/4] and cu_window_seqlens [W + 1] after.
// Batch 1, one image. The answer is generated greedily (or given), then one
// teacher-forced pass over prompt + answer is explained: the score is the sum
// of the answer tokens' log-probabilities.
//
// vlm_inputs.cpp: the model's inputs (the reference functions of
// zoo/vlm_model.py, step by step). vlm_plugin.cpp: the hooks. vlm_task.cpp:
// the count task (strategies of crops, counting errors, coverage).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <torch/script.h>

namespace xcam {
class Tokenizer;
class TaskHost;
}

namespace xcam::vlm {

// What the preprocessing needs; read from the traced model's attributes.
struct Geometry {
  int64_t patch = 14, merge = 2, temporal = 2;
  int64_t min_pixels = 56 * 56, max_pixels = 28 * 28 * 1280;
  int64_t vision_head_dim = 80;
  double vision_theta = 10000.0;
  int64_t image_token = -1, eos = -1;
  int64_t window_size = 0, max_windows = 0;  // Qwen2.5-VL's window attention; 0: Qwen2-VL
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f}, std{0.26862954f, 0.26130258f, 0.27577711f};
};

// The size (h, w) Qwen-VL resizes a height x width image to: each side to the
// nearest multiple of patch * merge (ties to even: std::nearbyint), then
// scaled down (floor) over max_pixels or up (ceil) under min_pixels. Throws
// for a side shorter than the factor or an aspect ratio over 200.
std::array<int64_t, 2> resized_size(int64_t height, int64_t width, const Geometry& g);

// pixel_values [gh*gw, 3*tp*p*p] of a normalised 3 x h x w image: the image
// repeated tp times as frames; rows in (bh, bw, mh, mw) order, each row's
// values in (c, frame, y, x) order.
at::Tensor image_to_patches(const at::Tensor& image, const Geometry& g);

// The ChatML prompt's ids: a user turn [image (n pads), question] with the
// generation prompt, encoded without extra special tokens.
std::vector<int64_t> prompt_ids(const Tokenizer& tok, int64_t image_tokens, const std::string& question);

// Qwen2-VL's 3-axis rotary position ids of a sequence with one image of
// grid gh x gw (patches): 3 rows of T, row-major (t, h, w axes).
std::vector<int64_t> rope_position_ids(const std::vector<int64_t>& ids, int64_t gh, int64_t gw, const Geometry& g);

// The vision rotary angles [gh*gw, hd/2] float32, in patch order.
at::Tensor vision_rotary(int64_t gh, int64_t gw, const Geometry& g);

// [0, gh*gw] int64.
at::Tensor cu_seqlens(int64_t gh, int64_t gw);

// Qwen2.5-VL's window inputs for a grid of gh x gw patches: window_index
// [gh*gw/merge^2] (the merged tokens window by window, windows and the
// tokens in them in raster order) and cu_window_seqlens [max_windows + 1]
// (0, then each window's end in patches, padded with the last). Throws for
// an image with more than max_windows windows.
std::array<at::Tensor, 2> window_inputs(int64_t gh, int64_t gw, const Geometry& g);

// Rows in window order (groups of equal size, group k being merged token
// window_index[k]: Qwen2.5-VL's vision blocks and merger) put back in
// raster order.
at::Tensor from_window_order(const at::Tensor& rows, const at::Tensor& window_index);

// For each cell of the gh x gw patch grid, row-major, the row of a vision
// block's token sequence that holds it (patch order: the merged tokens'
// merge x merge blocks; Qwen2.5-VL: those blocks in window order): how a
// vision attention's P x P rows are laid out on the image.
std::vector<int64_t> vision_token_rows(int64_t gh, int64_t gw, const Geometry& g);

// A vision block's output [gh*gw, C] (patch order) as 1 x C x gh x gw.
at::Tensor patches_to_grid(const at::Tensor& tokens, int64_t gh, int64_t gw, int64_t merge);

// vlm_task.cpp: the task `count` (the YAML task block as JSON) over the
// run's samples; `answer_given`: the plugin option answer is set (refused).
void run_count_task(TaskHost& host, const std::string& task_json, bool answer_given);

}  // namespace xcam::vlm

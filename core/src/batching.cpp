// Samples into batches: each image at its input size (the plugin's own for
// it, ABI 2.2 input_size, or the preprocessing size), samples of one geometry
// and batch_key() batched together; and crops at their own size, cut from
// the original image, explained as images of their own and pasted back.
#include <fmt/format.h>
#include <opencv2/imgproc.hpp>
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>

#include "xcam/image.h"
#include "explain_impl.h"

namespace xcam {

std::vector<MapResult> Explainer::Impl::explain_groups(const std::vector<SampleInput>& samples, StageTimes* times) {
  std::vector<MapResult> out;
  for (const auto& g : groups_of(samples)) {
    std::vector<SampleInput> part;
    std::vector<std::string> ids;
    std::vector<std::vector<std::string>> requests;
    for (size_t i : g.index) {
      part.push_back(samples[i]);
      ids.push_back(samples[i].id);
      requests.push_back(samples[i].requests);
    }
    auto maps = run(group_images(samples, g), ids, requests, times, &part);
    out.insert(out.end(), std::make_move_iterator(maps.begin()), std::make_move_iterator(maps.end()));
  }
  return out;
}

namespace {

// The requests that give the targets of `maps` (one sample's, on "image")
// again, in rank order: their labels (a class name, or its index where the
// classes have no names; a word), else their index.
std::vector<std::string> requests_for(std::vector<const MapResult*> maps) {
  std::sort(maps.begin(), maps.end(), [](auto* a, auto* b) { return a->rank < b->rank; });
  std::vector<std::string> out;
  for (const auto* m : maps) out.push_back(m->target_label.empty() ? std::to_string(m->target_index) : m->target_label);
  return out;
}

// Adds `map` (h x w) resized onto the region `v` of an image of rows x cols
// pixels, mapped to the H x W grid of `sum`; counts the covered cells.
void paste(const MapResult& map, const views::View& v, int rows, int cols, cv::Mat& sum, cv::Mat& count) {
  const double sy = double(sum.rows) / rows, sx = double(sum.cols) / cols;
  const int y0 = int(std::lround(v.y0 * sy)), x0 = int(std::lround(v.x0 * sx));
  const int y1 = std::max(y0 + 1, int(std::lround((v.y0 + v.height) * sy)));
  const int x1 = std::max(x0 + 1, int(std::lround((v.x0 + v.width) * sx)));
  cv::Mat piece;
  cv::resize(cv::Mat(int(map.height), int(map.width), CV_32F, const_cast<float*>(map.map.data())), piece,
             cv::Size(x1 - x0, y1 - y0), 0, 0, cv::INTER_LINEAR);
  const cv::Rect roi(x0, y0, x1 - x0, y1 - y0);
  sum(roi) += piece;
  count(roi) += 1.0;
}

}  // namespace

std::vector<MapResult> Explainer::Impl::own_size_crops(const std::vector<SampleInput>& samples, StageTimes* times) {
  const auto& c = opt.crops;
  std::vector<MapResult> whole = explain_groups(samples, times);
  // Each sample's crops, cut from its image, asked for the whole image's targets.
  std::vector<SampleInput> crops;
  std::vector<std::pair<size_t, views::View>> from;  // per crop: its sample, its region in that image's pixels
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& s = samples[i];
    XCAM_CHECK(!s.image.empty(), "sample '{}' is text only; crops cut images", s.id);
    std::vector<const MapResult*> mine;
    for (const auto& m : whole)
      if (m.image_id == s.id && m.on == "image") mine.push_back(&m);
    const auto requests = requests_for(mine);
    for (const auto& v : views::crops(c.rows, c.cols, c.overlap, s.image.rows, s.image.cols).views) {
      if (!v.adds_map) continue;
      SampleInput crop = s;
      crop.id = fmt::format("{}#crop{}", s.id, from.size());
      crop.image = s.image(cv::Rect(int(v.x0), int(v.y0), int(v.width), int(v.height))).clone();
      crop.requests = requests;
      crops.push_back(std::move(crop));
      from.emplace_back(i, v);
    }
  }
  const auto crop_maps = explain_groups(crops, times);
  const auto t = Clock::now();
  std::map<std::string, size_t> crop_index;
  for (size_t k = 0; k < crops.size(); ++k) crop_index[crops[k].id] = k;
  for (auto& m : whole) {
    if (m.on != "image") continue;
    cv::Mat sum = cv::Mat::zeros(int(m.height), int(m.width), CV_32F), count = sum.clone();
    for (const auto& cm : crop_maps) {
      const auto& [i, v] = from[crop_index.at(cm.image_id)];
      if (cm.rank != m.rank || cm.on != "image" || samples[i].id != m.image_id) continue;
      paste(cm, v, samples[i].image.rows, samples[i].image.cols, sum, count);
      for (const auto& w : cm.warnings) m.warnings.push_back("crop " + cm.image_id + ": " + w);
    }
    cv::Mat avg;
    cv::divide(sum, cv::max(count, 1.0), avg);
    double lo = 0, hi = 0;
    cv::minMaxLoc(avg, &lo, &hi);
    avg = hi > lo ? cv::Mat((avg - lo) / (hi - lo)) : cv::Mat::zeros(avg.size(), CV_32F);
    m.map.assign(avg.ptr<float>(), avg.ptr<float>() + avg.total());
  }
  times->cam_ms += ms_since(t);
  return whole;
}

std::array<int64_t, 2> Explainer::Impl::size_of(const std::string& name, const cv::Mat& image) const {
  if (image.empty()) return {0, 0};
  if (plugin_minor >= 2 && opt.height <= 0 && opt.width <= 0) {
    const auto s = plugin->input_size(name, image.rows, image.cols);
    if (s[0] > 0 || s[1] > 0) {
      XCAM_CHECK(s[0] > 0 && s[1] > 0, "plugin '{}' sized image '{}' ({} x {}) as {} x {}", opt.plugin, name,
                 image.rows, image.cols, s[0], s[1]);
      return s;
    }
  }
  return {pre.height, pre.width};
}

std::vector<Explainer::Impl::Group> Explainer::Impl::groups_of(const std::vector<SampleInput>& samples) const {
  std::vector<Group> groups;
  std::map<std::string, size_t> by_key;
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto& in = samples[i];
    XCAM_CHECK(!in.image.empty() || !in.text.empty(),
               "sample '{}' has neither an image nor text; give it an \"image\" or a \"text\"", in.id);
    const auto main = size_of("image", in.image);
    std::string key = fmt::format("{}x{}", main[0], main[1]);
    for (const auto& [name, mat] : in.images) {
      const auto s = size_of(name, mat);
      key += fmt::format(" {}:{}x{}", name, s[0], s[1]);
    }
    if (plugin_minor >= 2) key += "|" + plugin->batch_key(Sample{in.id, {}, in.text, in.requests, in.meta});
    const auto [it, fresh] = by_key.emplace(key, groups.size());
    if (fresh) groups.push_back(Group{{}, main[0], main[1]});
    groups[it->second].index.push_back(i);
  }
  return groups;
}

at::Tensor Explainer::Impl::group_images(const std::vector<SampleInput>& samples, const Group& g) const {
  if (g.height == 0) return {};
  Preprocess p = pre;
  p.height = g.height;
  p.width = g.width;
  const auto n = static_cast<int64_t>(g.index.size());
  auto x = torch::empty({n, 3, p.height, p.width}, torch::kFloat32);
  float* dst = x.data_ptr<float>();
  const int64_t each = 3 * p.height * p.width;
  // One image per task of the intra-op pool: a batch's decoding is done, its
  // resizing and normalising are the work left before the forward.
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) preprocess_to(samples[g.index[static_cast<size_t>(k)]].image, p, dst + k * each);
  });
  return x.to(model.device());
}


Sample Explainer::Impl::sample_of(const SampleInput& in) const {
  Sample s;
  s.id = in.id;
  for (const auto& [name, mat] : in.images) {
    Preprocess p = pre;
    const auto size = size_of(name, mat);
    p.height = size[0];
    p.width = size[1];
    std::vector<float> x;
    preprocess_into(mat, p, x);
    s.images[name] = torch::from_blob(x.data(), {3, p.height, p.width}, torch::kFloat32).to(model.device(), false, true);
  }
  s.text = in.text;
  s.requests = in.requests;
  s.meta = in.meta;
  return s;
}

}  // namespace xcam

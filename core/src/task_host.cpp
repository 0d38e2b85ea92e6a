// The host side of a plugin's dataset-level task (ArchPlugin::run_task): the
// TaskHost the plugin drives, made of the Explainer (forwards, maps) and the
// run that lends its samples and outputs (TaskRun).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <ATen/Parallel.h>
#include <torch/script.h>

#include "explain_impl.h"

namespace xcam {

class ExplainerTaskHost final : public TaskHost {
 public:
  ExplainerTaskHost(Explainer& ex, Explainer::Impl& m, TaskRun& run) : ex_(ex), m_(m), run_(run) {}

  // Samples of one geometry as a batch that prepare() takes: every image
  // preprocessed at its input size; `what` names them in the error.
  static Batch unprepared_batch(Explainer::Impl& m, const std::vector<SampleInput>& in, const std::string& what) {
    const auto groups = m.groups_of(in);
    XCAM_CHECK(groups.size() == 1,
               "{} do not share one input geometry (image sizes, the plugin's batch_key); forward them in separate "
               "calls",
               what);
    Batch b;
    b.labels = m.labels;
    b.images = m.group_images(in, groups[0]);
    for (size_t k = 0; k < in.size(); ++k) {
      Sample s = m.sample_of(in[k]);
      s.id = in[k].id;
      if (b.images.defined()) s.images["image"] = b.images[static_cast<int64_t>(k)];
      if (s.requests.empty()) s.requests = m.opt.targets;
      b.ids.push_back(s.id);
      b.samples.push_back(std::move(s));
    }
    return b;
  }

  size_t size() const override { return run_.size(); }
  const std::string& id(size_t i) const override { return run_.id(i); }
  const std::string& output_dir() const override { return run_.output_dir(); }

  Sample sample(size_t i) override {
    Batch b = prepared({i});
    return b.samples.at(0);
  }

  c10::IValue forward(const std::vector<size_t>& which, Batch* batch) override {
    torch::NoGradGuard no_grad;
    Batch b = prepared(which);
    m_.plugin->prepare(m_.model.module(), b);
    m_.plugin->decode(m_.model.module(), b);
    auto out = m_.model.module().forward(b.inputs);
    if (batch) *batch = std::move(b);
    return out;
  }

  std::vector<MapResult> explain(const std::vector<size_t>& which,
                                 const std::vector<std::vector<std::string>>& requests) override {
    std::vector<SampleInput> in;
    for (size_t k = 0; k < which.size(); ++k) {
      in.push_back(run_.load(which[k]));
      if (k < requests.size() && !requests[k].empty()) in.back().requests = requests[k];
    }
    return ex_.explain(in);
  }

  void write_maps(const std::vector<MapResult>& maps) override { run_.write_maps(maps); }
  void write_panel(const std::string& name, const std::string& title, const std::vector<MapResult>& maps) override {
    run_.write_panel(name, title, maps);
  }
  void write_json(const std::string& name, const std::string& json) override { run_.write_json(name, json); }
  void add_metric(const std::string& name, double value) override { run_.add_metric(name, value); }
  std::vector<size_t> add_inputs(const std::string& inputs) override { return run_.add_inputs(inputs); }
  size_t pair(size_t i, const std::string& name, size_t j, const std::string& id) override {
    XCAM_CHECK(i < run_.size() && j < run_.size(), "task: pair({}, {}) in a run of {} samples", i, j, run_.size());
    XCAM_CHECK(!name.empty() && name != "image", "task: pair() names the other image '{}'; 'image' is the sample's own",
               name);
    return run_.pair(i, name, j, id);
  }
  std::array<int64_t, 2> image_size(size_t i) override {
    XCAM_CHECK(i < run_.size(), "task: image_size({}) in a run of {} samples", i, run_.size());
    return run_.image_size(i);
  }
  size_t crop(size_t i, const std::array<int64_t, 4>& box, const std::string& id) override {
    XCAM_CHECK(i < run_.size(), "task: crop({}) in a run of {} samples", i, run_.size());
    return run_.crop(i, box, id);
  }

 private:
  // Samples `which` as prepare() takes them (not yet prepared): one
  // geometry, every image preprocessed at its input size.
  Batch prepared(const std::vector<size_t>& which) {
    XCAM_CHECK(!which.empty(), "task: a forward of no samples");
    for (size_t i : which) XCAM_CHECK(i < run_.size(), "task: sample {} of a run of {}", i, run_.size());
    // Decoded on the intra-op pool, between forwards (a gallery's images are
    // a batch's only work besides its forward).
    std::vector<SampleInput> in(which.size());
    at::parallel_for(0, static_cast<int64_t>(which.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) in[static_cast<size_t>(k)] = run_.load(which[static_cast<size_t>(k)]);
    });
    return unprepared_batch(m_, in, fmt::format("task: samples {}", fmt::join(which, ", ")));
  }

  Explainer& ex_;
  Explainer::Impl& m_;
  TaskRun& run_;
};

void Explainer::forward_only(const std::vector<SampleInput>& samples, StageTimes* times) {
  auto& m = *impl_;
  XCAM_CHECK(!samples.empty(), "forward_only: no samples");
  const auto t = std::chrono::steady_clock::now();
  torch::NoGradGuard no_grad;
  Batch b = ExplainerTaskHost::unprepared_batch(m, samples, fmt::format("samples '{}'", samples.front().id));
  host_errors([&] {
    m.plugin->prepare(m.model.module(), b);
    m.check_arity(b.inputs);
    m.plugin->decode(m.model.module(), b);
  });
  (void)m.model.module().forward(b.inputs);
  if (times)
    times->forward_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

void Explainer::run_task(const std::string& task_json, TaskRun& run) {
  auto& m = *impl_;
  XCAM_CHECK(m.plugin_minor >= 2,
             "plugin '{}' is built for ABI 2.{} and has no dataset tasks (ABI 2.2); remove the `task:` block or "
             "rebuild the plugin",
             m.opt.plugin, m.plugin_minor);
  ExplainerTaskHost host(*this, m, run);
  host_errors([&] { m.plugin->run_task(host, task_json); });
}

}  // namespace xcam

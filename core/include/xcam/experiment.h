// YAML experiments: configuration, the runner, and the per-batch output
// writer the CLI's `explain` shares (docs/yaml.md is the reference).
#pragma once

#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "xcam/explainer.h"
#include "xcam/metrics.h"

namespace xcam {

struct OutputOptions {
  std::string dir;
  bool save_map = true;      // <stem>_<target>.npy, float32, image resolution, [0, 1]
  bool save_overlay = true;  // <stem>_<target>.png
  bool save_panel = false;   // <stem>_<target>_panel.png
  std::string colormap = "jet";
  float alpha = 0.5f;        // image weight of the overlay
};

struct ExperimentConfig {
  std::string file;  // the YAML file; relative paths in it are relative to its directory
  std::string name;
  ExplainerOptions explainer;               // model, plugin, preprocessing, device (layers/method set per run)
  std::vector<std::vector<std::string>> layer_sets;  // each set is explained together (aggregated)
  std::vector<std::string> methods;
  std::vector<std::string> targets;         // requests; "annotated": every boxed class of the image
  std::vector<std::string> images;          // resolved image paths
  std::string boxes;                        // optional ground-truth boxes (JSON)
  int batch_size = 8;
  int threads = 0;
  OutputOptions outputs;
};

// Parses and validates a YAML experiment. Errors name the file, line and key;
// unknown keys are refused with the closest known one.
ExperimentConfig load_experiment(const std::string& path);

// Expands a glob, a directory, or a .txt list file (one path a line,
// relative to the list) into sorted image paths. Throws xcam::Error for an
// unreadable directory or a pattern that matches nothing.
std::vector<std::string> expand_inputs(const std::vector<std::string>& patterns, const std::string& base_dir);

// One image's explanation outputs and numbers, as stored in results.
struct ItemRecord {
  std::string image, method, layers, target, status = "ok";
  int64_t target_index = -1;
  size_t rank = 0;
  double score = 0, forward_ms = 0, backward_ms = 0, cam_ms = 0;
  std::optional<bool> pointing_hit;
  std::optional<bool> centre_hit;
  std::optional<double> energy;
  std::vector<std::string> outputs, warnings;
};

struct RunOptions {
  bool force = false;     // redo finished items
  bool progress = true;   // progress line on a terminal
};

struct RunSummary {
  int done = 0, skipped = 0, failed = 0;
  std::vector<std::string> failures;  // one line each: input and reason
  // per "method layers": pointing game of the maps and of the centre baseline
  std::map<std::string, std::pair<PointingGame, PointingGame>> pointing;
};

// Runs every method x layer set over the inputs; writes outputs, per-item
// records (resume), results.json/.csv, and returns the summary. Bad inputs
// are reported and skipped; finished outputs are never lost.
RunSummary run_experiment(const ExperimentConfig& cfg, const RunOptions& opt);

// Explains `images` (paths) with `ex` in batches and writes outputs to
// out.dir: shared by `xcam explain` and the runner. Appends records; failures
// are reported in `summary` and skipped.
void explain_and_write(Explainer& ex, const std::vector<std::string>& images, int batch_size,
                       const std::vector<std::string>& targets,
                       const std::map<std::string, std::vector<Box>>* boxes, const OutputOptions& out,
                       std::vector<ItemRecord>& records, RunSummary& summary, const RunOptions& opt,
                       const std::string& progress_label = "");

// Prints the summary (counts, pointing game with the centre baseline,
// failures) to stdout.
void print_summary(const RunSummary& s);

}  // namespace xcam

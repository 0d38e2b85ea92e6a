// YAML experiments: configuration, the runner, and the per-batch output
// writer the CLI's `explain` shares (docs/yaml.md is the reference).
#pragma once

#include <array>
#include <map>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "xcam/attention_run.h"
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
  int png_level = -1;        // PNG compression: -1 fast (default), 0..9 zlib level (write_png)
  // When set, every map is also scored with the faithfulness metrics
  // (deletion, insertion, average drop, increase in confidence).
  std::optional<FaithfulnessOptions> faithfulness;
};

// Method comparison (the experiment's `compare` key, `xcam compare`): the
// faithfulness metrics for every map, a table of each method and layer set
// sorted by `sort_by` (compare_metrics() names the keys), and per image and
// target a grid of overlays, layer sets x methods.
struct CompareOptions {
  std::string sort_by = "insertion";
  FaithfulnessOptions faithfulness;  // steps (0: the default), chunk
  bool grid = true;
};

// One input of a run: an image from a glob, a directory or a list, or a
// line of a JSON Lines manifest (docs/yaml.md, "Manifest") with more.
struct SampleSpec {
  std::string image;                          // path of the image maps are drawn on; empty: a text sample
  std::string id;                             // empty: from the file name, unique per run
  std::map<std::string, std::string> images;  // other named images ("reference"): name -> path
  std::string text;                           // a prompt
  std::vector<std::string> targets;           // empty: the run's targets
  std::map<std::string, std::string> meta;    // the line's other keys
};

// The samples of a JSON Lines manifest, paths relative to its folder. Throws
// xcam::Error naming the file, the line and what is wrong.
std::vector<SampleSpec> read_manifest(const std::string& path);

// The samples' ids, which their output names start with: a manifest's own,
// else the image's stem, or, for stems several inputs share, the stem after
// as many parent folders as tell them apart; "text<k>" for the k-th sample
// when it is text only; a later id that meets an earlier one gets "-2", ...
std::vector<std::string> sample_ids(const std::vector<SampleSpec>& samples);

// Plain image paths as samples.
std::vector<SampleSpec> samples_of(const std::vector<std::string>& images);

struct ExperimentConfig {
  std::string file;  // the YAML file; relative paths in it are relative to its directory
  std::string name;
  ExplainerOptions explainer;               // model, plugin, preprocessing, device (layers/method set per run)
  std::vector<std::vector<std::string>> layer_sets;  // each set is explained together (aggregated)
  std::vector<std::string> methods;
  std::vector<std::string> targets;         // requests; "annotated": every boxed class of the image
  std::vector<std::string> images;          // resolved image paths (each sample's image)
  std::vector<SampleSpec> samples;          // with inputs.manifest: the samples (else made from images)
  std::string boxes;                        // optional ground-truth boxes (JSON)
  int batch_size = 8;
  int threads = 0;
  int io_threads = 2;  // RunOptions::io_threads
  OutputOptions outputs;
  std::optional<CompareOptions> compare;    // set: the run is a method comparison
  // YAML `task:` as a JSON object (empty: none): the plugin's dataset-level
  // task runs over the inputs instead of explaining each (ABI 2.2 plugins).
  std::string task;
  // `task: {name: attention, ...}`: the host's attention analysis of the
  // inputs' texts (docs/attention.md) instead of explaining them; its model
  // and out_dir are the experiment's.
  std::optional<AttentionRun> attention;
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
  std::string image;  // the input's file name
  // The input's id, which its output names start with: the file's stem, or,
  // where several inputs of a run share a stem, the stem after as many of
  // its parent folders as tell them apart ("a_x", "b_x").
  std::string id;
  std::string on = "image";  // the sample's named image the map is drawn on
  std::string method, layers, target, status = "ok";
  int64_t target_index = -1;
  size_t rank = 0;
  double score = 0, forward_ms = 0, backward_ms = 0, cam_ms = 0;
  std::optional<bool> pointing_hit;
  std::optional<bool> centre_hit;
  std::optional<double> energy;
  // Faithfulness (with OutputOptions::faithfulness): deletion and insertion
  // AUC, the average-drop term 100 * max(0, Y - O) / Y and the
  // increase-in-confidence term Y < O of this map.
  std::optional<double> deletion, insertion, drop;
  std::optional<bool> increase;
  std::vector<std::string> outputs, warnings;
  std::map<std::string, std::string> meta;  // the plugin's facts about the sample (caption, answer, ...)
  // A map over text (on == "text"): its tokens and their values, written as
  // "tokens": [{"token": ..., "value": ...}].
  std::vector<std::string> words;
  std::vector<float> word_values;
};

struct RunOptions {
  bool force = false;     // redo finished items
  bool progress = true;   // progress line on a terminal
  // Explain the first batch once, untimed, before the timed calls, so the
  // times do not include one-off set-up (on for comparisons).
  bool warmup = false;
  // Threads that read the next batch's images and write finished items
  // (overlays, panels, maps, records) while a batch computes; 0: all on the
  // calling thread, one step after the other. Outputs and records are the
  // same either way, in the same order.
  int io_threads = 2;
};

struct RunSummary {
  int done = 0, skipped = 0, failed = 0;
  std::vector<std::string> failures;  // one line each: input and reason
  // per "method layers": pointing game of the maps and of the centre baseline
  std::map<std::string, std::pair<PointingGame, PointingGame>> pointing;
  // run_experiment: the records of every map, finished now or before, with
  // outputs relative to the experiment's output directory.
  std::vector<ItemRecord> records;
  std::map<std::string, double> metrics;  // a plugin task's dataset-level numbers
  size_t maps = 0;       // maps written by this run (not resumed)
  double seconds = 0;    // wall time of the explain-and-write loops
  double maps_per_second() const { return seconds > 0 ? double(maps) / seconds : 0; }
};

// Runs every method x layer set over the inputs; writes outputs, per-item
// records (resume), results.json/.csv, and returns the summary. Bad inputs
// are reported and skipped; finished outputs are never lost.
RunSummary run_experiment(const ExperimentConfig& cfg, const RunOptions& opt);

// Explains `samples` with `ex` in batches and writes outputs to
// out.dir: shared by `xcam explain` and the runner. Appends records; failures
// are reported in `summary` and skipped.
void explain_and_write(Explainer& ex, const std::vector<SampleSpec>& samples, int batch_size,
                       const std::vector<std::string>& targets,
                       const std::map<std::string, std::vector<Box>>* boxes, const OutputOptions& out,
                       std::vector<ItemRecord>& records, RunSummary& summary, const RunOptions& opt,
                       const std::string& progress_label = "");

// Runs the plugin's dataset task (`task_json`, ExperimentConfig::task) over
// `samples`: the maps it writes go to out.dir as explain_and_write writes
// them (records appended), its panels and JSON files too, and task.json
// holds the task and its metrics (also in summary.metrics). A task is
// dataset-level: a re-run runs it again.
void run_task_and_write(Explainer& ex, const std::string& task_json, const std::vector<SampleSpec>& samples,
                        const std::vector<std::string>& targets, const OutputOptions& out,
                        std::vector<ItemRecord>& records, RunSummary& summary, const std::string& base_dir = ".");

// summary.json in `dir`: the counts, the maps this run wrote, its seconds
// and maps per second, and the thread counts it ran with.
void write_summary(const std::string& dir, const RunSummary& s, int threads, int io_threads);

// results.json and results.csv in `dir`: one row per record (map).
void write_results(const std::string& dir, const std::vector<ItemRecord>& records);
// The records of `dir`'s results.json. Throws xcam::Error naming a missing
// or unreadable file.
std::vector<ItemRecord> read_results(const std::string& dir);
// Counts record `r` in the summary's pointing game (maps with a pointing
// result only).
void add_pointing(RunSummary& s, const ItemRecord& r);

// Sharded runs (docs/scaling.md). The run's batches (batch_size samples in
// list order, as a whole run makes them) are dealt out in `count` runs of
// consecutive batches, as even as whole batches allow: shard `index` (0 <=
// index < count) explains the same batches as the whole run, so its maps
// are the whole run's bit for bit, under the ids the whole run gives the
// samples. It writes to <outputs.dir>/shards/<index>-of-<count>/ and
// resumes there on its own.
struct Shard {
  int index = 0, count = 1;
};
// The positions [first, last) of shard `shard` among `samples` samples in
// batches of `batch`.
std::pair<size_t, size_t> shard_range(size_t samples, size_t batch, const Shard& shard);
// Parses "I/N". Throws xcam::Error for anything else or I outside [0, N).
Shard parse_shard(const std::string& text);
std::string shard_dir(const ExperimentConfig& cfg, const Shard& shard);
// Runs one shard of `cfg` (plain runs only: a task, a comparison or an
// attention analysis is refused: their figures need every sample at once).
RunSummary run_shard(const ExperimentConfig& cfg, const Shard& shard, const RunOptions& opt);
// Joins the `count` shards of `cfg` into what one run writes: their outputs
// moved into outputs.dir (same relative paths, per-item records included,
// so a whole run there resumes them), results.json/.csv with every record
// in the whole run's order, summary.json summed, the pointing game over
// every map; shards.json with each shard's counts and speed. Throws
// xcam::Error naming a shard that is missing or has not finished.
RunSummary merge_shards(const ExperimentConfig& cfg, int count);

// Slurm job scripts for a sharded run (`xcam slurm`, docs/scaling.md): an
// array job of `count` tasks, task I running `xcam run CONFIG --shard
// I/count`, and a merge job to be submitted with --dependency=afterok on it.
struct SlurmOptions {
  std::string xcam;          // the xcam executable (absolute)
  std::string config;        // the experiment YAML (absolute)
  std::string workdir;       // where the jobs run (the config's relative paths)
  std::string partition, time, mem;  // #SBATCH --partition, --time, --mem; empty: the cluster's defaults
  int cpus = 2;              // #SBATCH --cpus-per-task (and the shard's intra-op threads come from the YAML)
};
struct SlurmScripts {
  std::string dir;           // <outputs.dir>/slurm: the scripts and the jobs' logs
  std::string shards, merge; // the two sbatch scripts' text
};
SlurmScripts slurm_scripts(const ExperimentConfig& cfg, int count, const SlurmOptions& opt);

// Prints the summary (counts, pointing game with the centre baseline unless
// `pointing` is false, failures) to stdout.
void print_summary(const RunSummary& s, bool pointing = true);

// The method as results and output directories name it: smoothing options
// and crop views are part of it ("gradcam+aug+eigen", "gradcam+crops2x2o0.25").
std::string method_label(const ExplainerOptions& o);

// A label as output file and directory names use it: letters, digits, '-'
// and '.' kept, anything else '_'.
std::string safe_name(const std::string& s);

}  // namespace xcam

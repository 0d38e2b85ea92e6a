// The xcam command-line tool: explain, run, compare, layers, plugins, bench, doctor.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>

#include "xcam/attention_run.h"
#include "xcam/compare.h"
#include "xcam/error.h"
#include "xcam/experiment.h"
#include "xcam/explainer.h"
#include "xcam/image.h"
#include "xcam/inspect.h"
#include "xcam/io.h"
#include "xcam/plugin_loader.h"
#include "xcam/render.h"
#include "xcam/runtime_info.h"
#include "xcam/tokenizer.h"
#include "xcam/version.h"

namespace fs = std::filesystem;

namespace {

struct Common {
  std::string plugin = "cnn";
  std::vector<std::string> plugin_dirs;
  std::string plugin_options = "{}";
  int threads = 0;
};

// A repeatable option that takes one value each time, so that the inputs
// after `--layer block4` stay inputs.
void one_each(CLI::Option* opt) { opt->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->expected(1)->allow_extra_args(false); }

void add_common(CLI::App* cmd, Common& c) {
  cmd->add_option("--plugin", c.plugin, "Architecture plugin: a name (cnn) or a path to its .so")->capture_default_str();
  cmd->add_option("--plugin-dir", c.plugin_dirs, "Directory searched for plugins before XCAM_PLUGIN_PATH");
  cmd->add_option("--plugin-options", c.plugin_options, "Plugin options as a JSON object")->capture_default_str();
  cmd->add_option("--threads", c.threads, "Intra-op threads (0: all cores)")->capture_default_str();
}

// The model and preprocessing flags `explain` and `compare` share.
struct ModelFlags {
  Common common;
  xcam::ExplainerOptions eo;
  std::vector<int64_t> size;
  std::vector<float> mean, stdv;
  std::vector<int64_t> patch, crops;

  void add(CLI::App* cmd, bool model_required) {
    auto* m = cmd->add_option("--model", eo.model, "TorchScript model file");
    if (model_required) m->required();
    add_common(cmd, common);
    cmd->add_option("--labels", eo.labels_file, "Class names, one a line");
    cmd->add_option("--size", size, "Input height and width")->expected(2)->allow_extra_args(false);
    cmd->add_option("--mean", mean, "Normalisation mean (R G B)")->expected(3)->allow_extra_args(false);
    cmd->add_option("--std", stdv, "Normalisation std (R G B)")->expected(3)->allow_extra_args(false);
    cmd->add_option("--device", eo.device, "cpu or cuda")->capture_default_str();
    cmd->add_flag("--aug-smooth", eo.aug_smooth, "Average the maps of 6 test-time augmentations (flip x 0.9/1/1.1)");
    cmd->add_option("--perturb-chunk", eo.score_chunk,
                    "Score-CAM / Ablation-CAM: perturbed inputs per forward")->capture_default_str();
    cmd->add_flag("!--no-batch-targets", eo.batch_targets,
                  "Several targets per sample: one backward per target, not one for all of them");
    cmd->add_flag("--eigen-smooth", eo.eigen_smooth,
                  "First principal component of the weighted activations, not their sum");
    cmd->add_option("--crops", crops, "Also explain ROWS x COLS overlapping crops and put their maps back onto "
                                      "the image (averaged)")
        ->expected(2)->allow_extra_args(false);
    cmd->add_option("--crop-overlap", eo.crops.overlap, "Overlap of neighbouring crops, a fraction of a crop")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 0.999999));
    cmd->add_flag("--crop-own-size", eo.crops.own_size,
                  "Cut the crops from the original image, each sized as an image of its own (by the plugin)");
    auto& a = eo.attention;
    cmd->add_option("--patch", patch, "Attention methods: the model's patch size, P or PH PW (tokens lie on the "
                                      "H/PH x W/PW grid)")
        ->expected(1, 2);
    cmd->add_option("--prefix-tokens", a.prefix, "Attention methods: tokens before the patch grid (CLS, ...)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--query-token", a.query,
                    "Attention methods: the token whose attention row is the map; -1: the mean of every row (what "
                    "each token receives, for encoders without a CLS token)")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{-1}, std::numeric_limits<int64_t>::max()));
    cmd->add_option("--head-fusion", a.head_fusion, "Attention methods: heads fused by mean, max or min")
        ->capture_default_str()
        ->check(CLI::IsMember({"mean", "max", "min"}));
    cmd->add_option("--discard-ratio", a.discard_ratio, "Rollout: fraction of the lowest attention entries dropped")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 0.999999));
  }

  xcam::ExplainerOptions options() const {
    xcam::ExplainerOptions o = eo;
    o.plugin = common.plugin;
    o.plugin_dirs = common.plugin_dirs;
    o.plugin_options = common.plugin_options;
    if (!size.empty()) {
      XCAM_CHECK(size[0] > 0 && size[1] > 0, "--size needs a positive HEIGHT WIDTH, got {} {}", size[0], size[1]);
      o.height = size[0];
      o.width = size[1];
    }
    if (!mean.empty()) o.mean = std::array<float, 3>{mean[0], mean[1], mean[2]};
    if (!stdv.empty()) o.std = std::array<float, 3>{stdv[0], stdv[1], stdv[2]};
    if (!crops.empty()) {
      XCAM_CHECK(crops[0] >= 1 && crops[1] >= 1, "--crops needs ROWS COLS of at least 1 1, got {} {}", crops[0],
                 crops[1]);
      o.crops.rows = crops[0];
      o.crops.cols = crops[1];
    }
    if (!patch.empty()) {
      XCAM_CHECK(patch.front() > 0 && patch.back() > 0, "--patch must be positive, got {}", fmt::join(patch, " "));
      o.attention.patch_h = patch.front();
      o.attention.patch_w = patch.back();
    }
    return o;
  }
};

// A LibTorch message in one line: its last "...Error: ..." line (a
// TorchScript traceback ends with the reason), or its first line; whole with
// XCAM_DEBUG set.
std::string brief(const std::string& what) {
  if (std::getenv("XCAM_DEBUG") != nullptr || what.find('\n') == std::string::npos) return what;
  std::string first, reason;
  std::istringstream in(what);
  for (std::string line; std::getline(in, line);) {
    if (first.empty() && !line.empty()) first = line;
    if (line.find("Error: ") != std::string::npos) reason = line;
  }
  const auto start = reason.find_first_not_of(' ');
  return (reason.empty() ? first : reason.substr(start)) + " (the whole message with XCAM_DEBUG=1)";
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, sep);)
    if (!t.empty()) out.push_back(t);
  return out;
}

// The comparison table after a run's summary.
void print_comparison(const xcam::RunSummary& summary, const std::string& sort_by, const std::string& dir) {
  std::cout << "\n" << xcam::format_comparison(xcam::compare_rows(summary.records, sort_by), sort_by);
  std::cout << fmt::format("table: {}/compare.csv, {}/compare.json\n", dir, dir);
}

// One line on stderr when LibTorch's matmuls would run on a slow BLAS.
void warn_if_slow_blas() {
  if (const auto w = xcam::blas_warning(xcam::blas_info())) std::cerr << "xcam: warning: " << *w << "\n";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

// Each subcommand: its options (add, before parsing) and what it does (run).
struct ExplainCommand {
  CLI::App* cmd = nullptr;
  ModelFlags fe;
  std::vector<std::string> images;
  xcam::OutputOptions out;
  std::string boxes_file;
  int batch = 8;
  bool panel = false;
  std::string target = "top1";
  std::string manifest;
  std::string task;
  int io_threads = 2;

  void add(CLI::App& app) {
    cmd = app.add_subcommand("explain", "Explain images with one model, method and target")
                        ->footer("Outputs, per image and target, in --out DIR:\n"
                                 "  <image stem>_<target>.npy  float32 map at image resolution, in [0, 1]\n"
                                 "  <image stem>_<target>.png  overlay (colormap blended with the image)\n"
                                 "  <image stem>_<target>_panel.png  with --panel: image | heatmap | overlay\n"
                                 "  results.json, results.csv  one row per map: score, timings, metrics (merged\n"
                                 "                             with the rows of earlier runs in DIR)\n"
                                 "<target> is the class name (from --labels) or the class index; _r<rank> is\n"
                                 "added where two targets share one, and parent folders to the stem where two\n"
                                 "inputs share one. A re-run resumes only inputs explained with the same\n"
                                 "model, layers, method, targets, size and outputs (docs/yaml.md).");
    fe.add(cmd, true);
    one_each(cmd->add_option("--layer", fe.eo.layers,
                                 "Layer to tap (a tap: layer4, enc@1, attn[1], attn:in, attn/softmax; docs/yaml.md); "
                                 "repeat to aggregate"));
    cmd->add_option("--method", fe.eo.method, "Method: " + fmt::format("{}", fmt::join(xcam::available_methods(), ", ")))->capture_default_str();
    cmd->add_option("--target", target, "top1 | topK | class index | class name (comma-separated for several)")->capture_default_str();
    cmd->add_option("--batch", batch, "Images per forward")->capture_default_str();
    cmd->add_option("--out", out.dir, "Output directory")->required();
    cmd->add_option("--colormap", out.colormap, "jet, viridis, turbo, inferno or gray")->capture_default_str();
    cmd->add_option("--alpha", out.alpha, "Image weight of the overlay")->capture_default_str();
    cmd->add_flag("--panel", panel, "Also write titled panels");
    cmd->add_option("--io-threads", io_threads,
                    "Threads that read images ahead and write outputs while the next batch computes (0: none)")
        ->capture_default_str();
    cmd->add_option("--boxes", boxes_file, "Ground-truth boxes (JSON) for the pointing game");
    cmd->add_option("--manifest", manifest,
                        "Samples as JSON Lines: image (or text alone), and optionally id, images (other named "
                        "images), text, targets, any other key as metadata (docs/yaml.md)");
    cmd->add_option("--task", task,
                    "Run the plugin's dataset task over the inputs instead, as a JSON object with its name "
                    "(the YAML `task:` block; docs/yaml.md, \"Tasks\")");
    cmd->add_option("images", images, "Image files");
  }

  int run() {
    xcam::set_threads(fe.common.threads);
    auto eo = fe.options();
    eo.targets = split(target, ',');
    out.save_panel = panel;
    std::map<std::string, std::vector<xcam::Box>> boxes;
    if (!boxes_file.empty()) boxes = xcam::read_boxes(boxes_file);
    xcam::Explainer ex(eo);
    std::vector<xcam::ItemRecord> records;
    xcam::RunSummary summary;
    XCAM_CHECK(manifest.empty() || images.empty(), "explain takes images or --manifest, not both");
    XCAM_CHECK(!manifest.empty() || !images.empty(), "explain needs images (files) or --manifest FILE.jsonl");
    const auto samples = manifest.empty() ? xcam::samples_of(images) : xcam::read_manifest(manifest);
    xcam::RunOptions run_opt;
    run_opt.io_threads = io_threads;
    if (!task.empty()) {
      nlohmann::json t;
      try {
        t = nlohmann::json::parse(task);
      } catch (const std::exception& e) {
        XCAM_THROW("--task is not JSON ({}); give an object such as '{{\"name\": \"evaluate\", ...}}'", e.what());
      }
      XCAM_CHECK(t.is_object() && t.contains("name") && t["name"].is_string(),
                 "--task must be a JSON object with the task's \"name\", got {}", task);
      XCAM_CHECK(boxes_file.empty(), "--boxes scores maps with the pointing game; a task scores its own");
      xcam::run_task_and_write(ex, t.dump(), samples, eo.targets, out, records, summary);
      xcam::write_results(out.dir, records);
      xcam::write_summary(out.dir, summary, fe.common.threads, io_threads);
      xcam::print_summary(summary);
      return summary.failed > 0 ? 1 : 0;
    }
    xcam::explain_and_write(ex, samples, std::max(1, batch), eo.targets, boxes_file.empty() ? nullptr : &boxes, out,
                            records, summary, run_opt, "explain");
    xcam::write_results(out.dir, records);
    xcam::write_summary(out.dir, summary, fe.common.threads, io_threads);
    xcam::print_summary(summary);
    return summary.failed > 0 ? 1 : 0;
  }
};

struct RunCommand {
  CLI::App* cmd = nullptr;
  std::string config, shard;
  int io_threads = 2;
  xcam::RunOptions run_opt;

  void add(CLI::App& app) {
    cmd = app.add_subcommand("run", "Run a YAML experiment (resumes; --force redoes)");
    cmd->add_option("config", config, "Experiment YAML")->required();
    cmd->add_flag("--force", run_opt.force, "Redo items that are already finished");
    cmd->add_option("--io-threads", io_threads,
                    "Threads that read images ahead and write outputs while the next batch computes (0: none; "
                    "default: the YAML's io_threads, else 2)");
    cmd->add_option("--shard", shard,
                    "Run shard I of N (I/N, 0 <= I < N): the I-th of N runs of whole batches of the samples, in "
                    "OUTPUTS/shards/I-of-N/, resumable on its own; `xcam merge` joins the shards (docs/scaling.md)");
  }

  int run() {
    auto cfg = xcam::load_experiment(config);
    if (cmd->count("--io-threads") > 0) cfg.io_threads = io_threads;
    const auto part = shard.empty() ? xcam::Shard{} : xcam::parse_shard(shard);
    std::cout << fmt::format("experiment '{}': {} samples, methods {}, {} layer set(s), outputs in {}\n", cfg.name,
                             cfg.samples.empty() ? cfg.images.size() : cfg.samples.size(), fmt::join(cfg.methods, ", "), cfg.layer_sets.size(),
                             shard.empty() ? cfg.outputs.dir : xcam::shard_dir(cfg, part));
    const auto summary = shard.empty() ? xcam::run_experiment(cfg, run_opt) : xcam::run_shard(cfg, part, run_opt);
    xcam::print_summary(summary, !cfg.compare);
    if (cfg.compare) print_comparison(summary, cfg.compare->sort_by, cfg.outputs.dir);
    return summary.failed > 0 ? 1 : 0;
  }
};

// `xcam merge`: a sharded run's shards joined into what one run writes.
struct MergeCommand {
  CLI::App* cmd = nullptr;
  std::string config;
  int shards = 0;

  void add(CLI::App& app) {
    cmd = app.add_subcommand("merge", "Join the shards of a sharded run (xcam run CONFIG --shard I/N) into one run's "
                                      "outputs, records and summary");
    cmd->add_option("config", config, "Experiment YAML")->required();
    cmd->add_option("--shards", shards, "N, the number of shards it was split into")->required();
  }

  int run() {
    const auto cfg = xcam::load_experiment(config);
    const auto summary = xcam::merge_shards(cfg, shards);
    std::cout << fmt::format("merged {} shards of experiment '{}' into {}: {} records\n", shards, cfg.name,
                             cfg.outputs.dir, summary.records.size());
    xcam::print_summary(summary, true);
    return summary.failed > 0 ? 1 : 0;
  }
};

// `xcam slurm`: a sharded run as a Slurm array job and a dependent merge job.
struct SlurmCommand {
  CLI::App* cmd = nullptr;
  std::string config;
  int shards = 0;
  bool dry_run = false;
  xcam::SlurmOptions so;

  void add(CLI::App& app) {
    cmd = app.add_subcommand("slurm", "Submit a sharded run to Slurm: an array job of N shards (xcam run --shard "
                                      "I/N) and the merge job after it (docs/scaling.md)");
    cmd->add_option("config", config, "Experiment YAML")->required();
    cmd->add_option("--shards", shards, "N, the number of shards (array tasks)")->required()->check(CLI::PositiveNumber);
    cmd->add_flag("--dry-run", dry_run, "Write and print the job scripts and the sbatch commands; submit nothing");
    cmd->add_option("--partition", so.partition, "#SBATCH --partition");
    cmd->add_option("--time", so.time, "#SBATCH --time (a shard's limit)");
    cmd->add_option("--mem", so.mem, "#SBATCH --mem (per shard)");
    cmd->add_option("--cpus-per-task", so.cpus, "#SBATCH --cpus-per-task")->capture_default_str()->check(
        CLI::PositiveNumber);
  }

  // `command`'s standard output; throws with its output when it fails.
  static std::string run_capture(const std::string& command) {
    std::string out;
    FILE* p = ::popen((command + " 2>&1").c_str(), "r");
    XCAM_CHECK(p != nullptr, "cannot run '{}'", command);
    char buf[512];
    while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
    const int status = ::pclose(p);
    XCAM_CHECK(status == 0, "'{}' failed: {}", command, out.empty() ? "(no output)" : out);
    return out;
  }

  int run() {
    const auto cfg = xcam::load_experiment(config);
    so.xcam = fs::canonical("/proc/self/exe").string();
    so.config = fs::absolute(config).string();
    so.workdir = fs::current_path().string();
    const auto scripts = xcam::slurm_scripts(cfg, shards, so);
    fs::create_directories(scripts.dir);
    const auto shards_file = (fs::path(scripts.dir) / "shards.sbatch").string();
    const auto merge_file = (fs::path(scripts.dir) / "merge.sbatch").string();
    xcam::write_file_atomic(shards_file, scripts.shards);
    xcam::write_file_atomic(merge_file, scripts.merge);
    if (dry_run) {
      std::cout << "# " << shards_file << "\n" << scripts.shards << "\n# " << merge_file << "\n" << scripts.merge
                << "\n# submit:\njob=$(sbatch --parsable " << shards_file << ")\n"
                << "sbatch --dependency=afterok:${job%%;*} " << merge_file << "\n";
      return 0;
    }
    const auto id = [](std::string s) { return s.substr(0, s.find_first_of(";\n")); };
    const auto job = id(run_capture("sbatch --parsable '" + shards_file + "'"));
    const auto merge_job = id(run_capture("sbatch --parsable --dependency=afterok:" + job + " '" + merge_file + "'"));
    std::cout << fmt::format("submitted the {} shards of '{}' as array job {} and the merge as job {}; logs and "
                             "scripts in {}\n",
                             shards, cfg.name, job, merge_job, scripts.dir);
    return 0;
  }
};

struct CompareCommand {
  CLI::App* cmd = nullptr;
  ModelFlags fc;
  std::vector<std::string> cmp_args, cmp_layers;
  std::string cmp_methods = fmt::format("{}", fmt::join(xcam::cam_methods(), ","));
  std::string cmp_target = "top1", cmp_boxes, cmp_sort;
  xcam::OutputOptions cmp_out;
  xcam::CompareOptions cmp_opt;
  int cmp_batch = 8;
  bool cmp_no_grid = false;
  xcam::RunOptions cmp_run;

  void add(CLI::App& app) {
    cmd =
        app.add_subcommand("compare", "Compare methods x layer sets: a table of their metrics, a grid per image")
            ->footer("Two forms:\n"
                     "  xcam compare CONFIG.yaml [--sort METRIC] [--force]\n"
                     "      the experiment as a comparison (its `compare` key, or the defaults)\n"
                     "  xcam compare --model M [--methods a,b] [--layer L]... [--boxes B] --out DIR IMAGES...\n"
                     "      --layer is repeatable, one layer set each; 'a+b' aggregates layers a and b\n"
                     "Outputs in the output directory, besides those of `xcam run`:\n"
                     "  compare.csv, compare.json  one row per method and layer set: maps, pointing game (and\n"
                     "                             its centre baseline), energy, deletion and insertion AUC,\n"
                     "                             average drop, increase in confidence, ms per map\n"
                     "  grid/<image stem>_<target>.png  the image and each method's overlay per layer set\n"
                     "METRIC: pointing, energy, insertion, increase (higher is better), deletion, drop, ms\n"
                     "(lower is better); rows are sorted better first.");
    cmd->add_option("inputs", cmp_args, "An experiment YAML; with --model, the images (files, globs, directories)")
        ->required();
    cmd->add_option("--sort", cmp_sort, "Metric the table is sorted by (default: the YAML's, else insertion)");
    cmd->add_flag("--force", cmp_run.force, "Redo items that are already finished");
    // The flag form's options (refused with a YAML file, which has its own).
    fc.add(cmd, false);
    cmd->add_option("--methods", cmp_methods, "Methods, comma-separated")->capture_default_str();
    one_each(cmd->add_option("--layer", cmp_layers, "A layer set (repeat for several; 'a+b' aggregates a and b)"));
    cmd->add_option("--target", cmp_target, "top1 | topK | class index | class name | annotated (comma-separated)")
        ->capture_default_str();
    cmd->add_option("--batch", cmp_batch, "Images per forward")->capture_default_str();
    cmd->add_option("--out", cmp_out.dir, "Output directory");
    cmd->add_option("--colormap", cmp_out.colormap, "jet, viridis, turbo, inferno or gray")->capture_default_str();
    cmd->add_option("--alpha", cmp_out.alpha, "Image weight of the overlay")->capture_default_str();
    cmd->add_option("--boxes", cmp_boxes, "Ground-truth boxes (JSON) for the pointing game");
    cmd->add_option("--steps", cmp_opt.faithfulness.steps, "Deletion / insertion steps (0: round(sqrt(H * W)))")
        ->capture_default_str();
    cmd->add_option("--chunk", cmp_opt.faithfulness.chunk, "Perturbed inputs per forward")->capture_default_str();
    cmd->add_flag("--no-grid", cmp_no_grid, "No per-image grids");
  }

  int run() {
    if (!cmp_sort.empty()) xcam::check_compare_metric(cmp_sort);
    xcam::ExperimentConfig cfg;
    const bool yaml_form = fc.eo.model.empty();
    if (yaml_form) {
      XCAM_CHECK(cmp_args.size() == 1,
                 "compare takes one experiment YAML, or --model with images; got {} arguments and no --model",
                 cmp_args.size());
      for (const auto* opt : cmd->get_options()) {
        const std::string name = opt->get_name();
        XCAM_CHECK(opt->count() == 0 || name == "inputs" || name == "--sort" || name == "--force" ||
                       name == "--help",
                   "{} applies to the flag form (with --model); with an experiment YAML, set it in the file",
                   opt->get_name(false, true));
      }
      cfg = xcam::load_experiment(cmp_args[0]);
      XCAM_CHECK(cfg.task.empty(), "'{}' runs a plugin task (key 'task'); compare its methods without the task",
                 cmp_args[0]);
      if (!cfg.compare) cfg.compare.emplace();
      if (cfg.compare->grid && !cfg.outputs.save_map && !cfg.outputs.save_overlay) cfg.compare->grid = false;
    } else {
      XCAM_CHECK(!cmp_out.dir.empty(), "compare --model needs --out DIR (where the maps and the table go)");
      cfg.name = "compare";
      cfg.explainer = fc.options();
      cfg.methods = split(cmp_methods, ',');
      XCAM_CHECK(!cfg.methods.empty(), "--methods is empty; give methods, comma-separated (default: {})",
                 fmt::join(xcam::cam_methods(), ","));
      const auto& known = xcam::available_methods();
      for (const auto& m : cfg.methods)
        XCAM_CHECK(std::find(known.begin(), known.end(), m) != known.end(),
                   "method '{}' is not available; choose from: {}", m, fmt::join(known, ", "));
      for (const auto& l : cmp_layers) cfg.layer_sets.push_back(split(l, '+'));
      if (cfg.layer_sets.empty()) cfg.layer_sets.push_back({});
      cfg.targets = split(cmp_target, ',');
      XCAM_CHECK(!cfg.targets.empty(), "--target is empty; give top1, topK, a class index or name");
      XCAM_CHECK(std::find(cfg.targets.begin(), cfg.targets.end(), "annotated") == cfg.targets.end() ||
                     !cmp_boxes.empty(),
                 "--target annotated needs --boxes (the ground-truth boxes file)");
      cfg.images = xcam::expand_inputs(cmp_args, "");
      cfg.boxes = cmp_boxes;
      cfg.batch_size = std::max(1, cmp_batch);
      cfg.threads = fc.common.threads;
      xcam::parse_colormap(cmp_out.colormap);
      XCAM_CHECK(cmp_out.alpha >= 0 && cmp_out.alpha <= 1,
                 "the overlay's image weight (alpha) must be in [0, 1], got {}", cmp_out.alpha);
      cfg.outputs = cmp_out;
      cmp_opt.grid = !cmp_no_grid;
      XCAM_CHECK(cmp_opt.faithfulness.steps >= 0, "--steps must be at least 0 (0: round(sqrt(H * W))), got {}",
                 cmp_opt.faithfulness.steps);
      XCAM_CHECK(cmp_opt.faithfulness.chunk >= 1, "--chunk must be at least 1, got {}", cmp_opt.faithfulness.chunk);
      cfg.compare = cmp_opt;
    }
    if (!cmp_sort.empty()) cfg.compare->sort_by = cmp_sort;
    const auto& sort_by = cfg.compare->sort_by;
    XCAM_CHECK((sort_by != "pointing" && sort_by != "energy") || !cfg.boxes.empty(),
               "sorting by {} needs ground-truth boxes ({}); sort by one of deletion, insertion, drop, increase, ms",
               sort_by, yaml_form ? "inputs.boxes in the experiment" : "--boxes");
    std::cout << fmt::format("comparing {} method(s) x {} layer set(s) on {} images, outputs in {}\n",
                             cfg.methods.size(), cfg.layer_sets.size(), cfg.images.size(), cfg.outputs.dir);
    const auto summary = xcam::run_experiment(cfg, cmp_run);
    xcam::print_summary(summary, false);
    print_comparison(summary, sort_by, cfg.outputs.dir);
    return summary.failed > 0 ? 1 : 0;
  }
};

struct LayersCommand {
  CLI::App* cmd = nullptr;
  std::string layers_model;
  std::vector<int64_t> layers_size{224, 224};
  std::string layers_ops, layers_text;
  bool layers_text_only = false;
  Common layers_common;

  void add(CLI::App& app) {
    cmd = app.add_subcommand("layers", "List every tappable layer with its output shape");
    cmd->add_option("model", layers_model, "TorchScript model file")->required();
    cmd->add_option("--size", layers_size, "Sample input height and width")->expected(2)->allow_extra_args(false)->capture_default_str();
    cmd->add_option("--plugin", layers_common.plugin,
                       "Feed the model through this plugin's prepare() (models with other inputs than one image)");
    cmd->add_option("--plugin-dir", layers_common.plugin_dirs, "Directory searched for plugins");
    cmd->add_option("--plugin-options", layers_common.plugin_options, "Plugin options as a JSON object");
    cmd->add_option("--text", layers_text, "With --plugin: the probe sample's text (a prompt, a sentence)");
    cmd->add_flag("--text-only", layers_text_only, "With --plugin: the probe sample is text alone, no image");
    cmd->add_option("--ops", layers_ops,
                       "List the ops inside this module's forward instead (tappable as MODULE/OP, MODULE/OP#J)");
    cmd->footer("Tap syntax (--layer, layers:): PATH, PATH@CALL, PATH[ELEMENT] (tuple outputs), PATH:in / :inK\n"
                   "(module arguments), PATH/OP or PATH/OP#J (an op inside the module's forward); see docs/yaml.md.");
  }

  int run() {
    xcam::ProbeInput probe;
    probe.height = layers_size[0];
    probe.width = layers_size[1];
    if (cmd->count("--plugin") > 0) {
      probe.plugin = layers_common.plugin;
      probe.plugin_dirs = layers_common.plugin_dirs;
      probe.plugin_options = layers_common.plugin_options;
      if (cmd->count("--size") == 0) probe.height = probe.width = 0;  // the plugin's size
      probe.text = layers_text;
      probe.text_only = layers_text_only;
    }
    XCAM_CHECK(probe.plugin.empty() ? layers_text.empty() && !layers_text_only : !layers_text_only || !layers_text.empty(),
               "--text and --text-only feed the model through a plugin: give --plugin, and --text with --text-only");
    const auto list = layers_ops.empty() ? xcam::list_layers(layers_model, probe)
                                         : xcam::list_ops(layers_model, layers_ops, probe);
    size_t w = 4, tw = 4;
    for (const auto& l : list) {
      w = std::max(w, l.path.size());
      tw = std::max(tw, l.type.size());
    }
    const std::string fed = probe.plugin.empty()
                                ? fmt::format("output (1 x 3 x {} x {})", probe.height, probe.width)
                                : "output (input from plugin " + probe.plugin +
                                      (probe.text_only ? ", text only" : "") + ")";
    std::cout << fmt::format("{:<{}}  {:<{}}  {:>5}  {}\n", "path", w, "type", tw, "calls", fed);
    for (const auto& l : list)
      std::cout << fmt::format("{:<{}}  {:<{}}  {:>5}  {}\n", l.path, w, l.type, tw, l.calls, l.shape);
    return 0;
  }
};

struct PluginsCommand {
  CLI::App* cmd = nullptr;
  std::vector<std::string> scan_dirs;

  void add(CLI::App& app) {
    cmd = app.add_subcommand("plugins", "List the plugins found, loaded or refused, and why");
    cmd->add_option("--plugin-dir", scan_dirs, "Extra directory to search");
  }

  int run() {
    const auto path = xcam::plugin_search_path(scan_dirs);
    const auto found = xcam::scan_plugins(path);
    std::cout << "search path:\n";
    for (const auto& d : path)
      std::cout << "  " << d << (fs::is_directory(d) ? "" : "  (missing)") << "\n";
    if (found.empty()) std::cout << "no plugin found\n";
    for (const auto& p : found)
      std::cout << fmt::format("{:<10} {:<8} {}\n  {}\n", p.name, p.loaded ? "loaded" : "REFUSED",
                               p.loaded ? p.version + "  " + p.reason : p.reason, p.file);
    return 0;
  }
};

struct BenchCommand {
  CLI::App* cmd = nullptr;
  Common cb;
  xcam::ExplainerOptions bo;
  std::vector<int64_t> bsize{224, 224};
  int bbatch = 1, repeats = 10, warmup = 2;
  bool as_json = false;
  bool no_optimize = false;
  bool no_winograd = false;
  bool pair = false;
  bool each = false;
  bool decoded = false;
  std::string bimage, btext, btarget = "top1";
  std::string e2e_config;
  int io_threads = 2;

  void add(CLI::App& app) {
    cmd = app.add_subcommand("bench", "Time forward-only vs explanation (medians over repeats)");
    cmd->add_option("--model", bo.model, "TorchScript model file (required without --e2e)");
    cmd->add_option("--e2e", e2e_config,
                    "End to end: run this experiment YAML with its outputs and with outputs off, --repeats times "
                    "each (forced, warmed up), and print maps/s of both and their ratio");
    cmd->add_option("--io-threads", io_threads, "--e2e: writer threads (default: the YAML's io_threads)");
    add_common(cmd, cb);
    one_each(cmd->add_option("--layer", bo.layers, "Layer to tap (repeat for several)"));
    cmd->add_option("--method", bo.method, "Method")->capture_default_str();
    cmd->add_flag("--aug-smooth", bo.aug_smooth, "Average the maps of 6 test-time augmentations (flip x 0.9/1/1.1)");
    cmd->add_flag("--eigen-smooth", bo.eigen_smooth, "First principal component of the weighted activations, not their sum");
    cmd->add_option("--perturb-chunk", bo.score_chunk, "Score-CAM / Ablation-CAM: perturbed inputs per forward")
        ->capture_default_str();
    cmd->add_flag("!--no-batch-targets", bo.batch_targets,
                  "Several targets per sample: one backward per target, not one for all of them");
    cmd->add_flag("--no-optimize", no_optimize,
                    "Score-CAM's masked forwards on the model as loaded, not a frozen inference-optimised copy");
    cmd->add_flag("--no-winograd", no_winograd,
                    "In that copy, keep 3x3 convolutions on LibTorch's direct algorithm (no oneDNN Winograd)");
    cmd->add_option("--batch", bbatch, "Batch size")->capture_default_str();
    cmd->add_option("--size", bsize, "Input height and width")->expected(2)->allow_extra_args(false)->capture_default_str();
    cmd->add_option("--repeats", repeats, "Timed repeats")->capture_default_str();
    cmd->add_option("--warmup", warmup, "Untimed warm-up runs")->capture_default_str();
    cmd->add_flag("--json", as_json, "Print one JSON object on the last line");
    cmd->add_flag("--pair", pair,
                  "Each sample has a \"reference\" image (a re-ID pair): time its maps against one forward of the "
                  "queries plus one of the references");
    cmd->add_flag("--each", each,
                  "Targets one at a time (a captioner's words): time the maps of all the sample's targets from one "
                  "pass against one pass for its first target alone, and against a pass (forward and backward) per "
                  "target");
    cmd->add_flag("--decoded", decoded,
                  "One sample as explain takes it (--image, --text): its maps against the plugin's decoding (a VLM's "
                  "answer generated) plus one plain forward of the decoded input (the answer teacher-forced)");
    cmd->add_option("--target", btarget, "--each: top1 | topK | class index | class name (comma-separated)")
        ->capture_default_str();
    cmd->add_option("--image", bimage,
                    "--each, --decoded: the sample's image (default: random pixels at the input size)");
    cmd->add_option("--text", btext,
                    "--each, --decoded: the sample's text (a captioner's caption to explain as given, a VLM's "
                    "question)");
  }

  // --each: one sample; its targets (the run's, e.g. every word of a
  // caption) explained together as the options say (batch_targets), the
  // first alone, and each alone, those two with a pass that keeps its graph
  // and one backward. A target is asked for alone by its payload's
  // "request" (plugins that set it) or its index.
  // The sample of --each and --decoded: --image (or random pixels at the
  // input size) and --text.
  xcam::SampleInput bench_sample(const xcam::Explainer& ex, const std::string& id) const {
    const auto& pre = ex.preprocess();
    xcam::SampleInput s;
    s.id = id;
    s.text = btext;
    if (bimage.empty()) {
      cv::RNG rng(0);
      s.image.create(pre.height, pre.width, CV_8UC3);
      rng.fill(s.image, cv::RNG::UNIFORM, 0, 256);
    } else {
      s.image = xcam::load_rgb(bimage);
    }
    return s;
  }

  // --decoded: one sample's maps (the plugin decodes first: a VLM generates
  // its answer) against the plugin's decoding plus one plain forward of the
  // decoded input (the answer teacher-forced), both from the image file.
  int run_decoded(xcam::Explainer& ex) {
    const xcam::SampleInput s = bench_sample(ex, "decoded");
    std::vector<double> base, full, ratio, fwd, bwd, cam;
    xcam::StageTimes stages;
    size_t maps = 0;
    for (int i = 0; i < warmup + repeats; ++i) {
      xcam::StageTimes t0;
      ex.forward_only({s}, &t0);
      const auto start = std::chrono::steady_clock::now();
      maps = ex.explain({s}, &stages).size();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (i < warmup) continue;
      base.push_back(t0.forward_ms);
      full.push_back(ms);
      ratio.push_back(ms / t0.forward_ms);
      fwd.push_back(stages.forward_ms);
      bwd.push_back(stages.backward_ms);
      cam.push_back(stages.cam_ms);
    }
    if (!as_json) {
      std::cout << fmt::format("model {}  layer {}  method {}  maps {}  threads {}  repeats {}\n", bo.model,
                               fmt::join(ex.layers(), "+"), bo.method, maps, cb.threads, repeats);
      std::cout << xcam::blas_line(xcam::blas_info()) << "\n";
      std::cout << fmt::format("decoding + one plain forward    {:9.2f} ms\n", median(base));
      std::cout << fmt::format("explanation (decoding included) {:9.2f} ms   ratio {:.3f}\n", median(full),
                               median(ratio));
      std::cout << fmt::format("  decoding + tapped forward {:.2f}, gradients {:.2f}, map kernels {:.2f} ms\n",
                               median(fwd), median(bwd), median(cam));
    }
    std::cout << fmt::format("{{\"baseline_ms\": {:.4f}, \"explain_ms\": {:.4f}, \"ratio\": {:.4f}, "
                             "\"maps\": {}, \"threads\": {}}}\n",
                             median(base), median(full), median(ratio), maps, cb.threads);
    return 0;
  }

  int run_each(xcam::Explainer& ex) {
    const auto& pre = ex.preprocess();
    const xcam::SampleInput s = bench_sample(ex, "each");
    std::vector<std::string> requests;
    for (const auto& m : ex.explain({s})) {
      const auto it = m.target.payload.find("request");
      requests.push_back(it != m.target.payload.end() ? it->second : std::to_string(m.target_index));
    }
    XCAM_CHECK(requests.size() >= 2, "bench --each: the sample has {} target(s); give targets that make several (a "
               "caption's words, --target top5)", requests.size());
    // One target, and one target at a time, the plain way: a pass that keeps
    // its graph, one backward (an explainer that never takes gradients from
    // copies of the taps).
    xcam::ExplainerOptions plain_opt = bo;
    plain_opt.batch_targets = false;
    xcam::Explainer plain(plain_opt);
    xcam::StageTimes stages;
    auto timed = [&](xcam::Explainer& by, const std::vector<std::string>& req) {
      xcam::SampleInput one = s;
      one.requests = req;
      const auto start = std::chrono::steady_clock::now();
      by.explain({one}, &stages);
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    };
    std::vector<double> one_ms, all_ms, each_ms, r_all, r_each;  // ratios of each repeat's own timings
    std::vector<double> stage_one[3], stage_all[3];               // forward, backward, map kernels
    for (int i = 0; i < warmup + repeats; ++i) {
      const double o = timed(plain, {requests[0]});
      const xcam::StageTimes so = stages;
      const double a = timed(ex, {});
      if (i >= warmup)
        for (int k = 0; k < 3; ++k) {
          stage_one[k].push_back(k == 0 ? so.forward_ms : k == 1 ? so.backward_ms : so.cam_ms);
          stage_all[k].push_back(k == 0 ? stages.forward_ms : k == 1 ? stages.backward_ms : stages.cam_ms);
        }
      double e = 0;
      for (const auto& r : requests) e += timed(plain, {r});
      if (i < warmup) continue;
      one_ms.push_back(o);
      all_ms.push_back(a);
      each_ms.push_back(e);
      r_all.push_back(a / o);
      r_each.push_back(e / o);
    }
    const size_t K = requests.size();
    if (!as_json) {
      std::cout << fmt::format("model {}  layer {}  method {}  targets {}  input {}x{}  threads {}  repeats {}{}\n",
                               bo.model, fmt::join(ex.layers(), "+"), bo.method, K, pre.height, pre.width, cb.threads,
                               repeats, btext.empty() ? "" : "  text given");
      std::cout << fmt::format("first target alone (one forward, one backward) {:9.2f} ms\n", median(one_ms));
      std::cout << fmt::format("all {:2} targets from one pass                  {:9.2f} ms   ratio {:.3f}\n", K,
                               median(all_ms), median(r_all));
      std::cout << fmt::format("a forward and a backward per target           {:9.2f} ms   ratio {:.3f}\n",
                               median(each_ms), median(r_each));
      std::cout << fmt::format("  first alone: forward {:.2f}, gradients {:.2f}, map kernels {:.2f} ms; all: forward "
                               "{:.2f}, gradients {:.2f}, map kernels {:.2f} ms\n",
                               median(stage_one[0]), median(stage_one[1]), median(stage_one[2]), median(stage_all[0]),
                               median(stage_all[1]), median(stage_all[2]));
    }
    std::cout << fmt::format("{{\"targets\": {}, \"one_ms\": {:.4f}, \"all_ms\": {:.4f}, \"each_ms\": {:.4f}, "
                             "\"ratio_all\": {:.4f}, \"ratio_each\": {:.4f}, \"threads\": {}}}\n",
                             K, median(one_ms), median(all_ms), median(each_ms), median(r_all), median(r_each),
                             cb.threads);
    return 0;
  }

  // --pair: B random query images, each with a random reference, at the
  // input size; the baseline is a plain forward of the queries and one of
  // the references, the explanation takes the whole samples (preprocessing
  // included).
  int run_pair(xcam::Explainer& ex) {
    const auto& pre = ex.preprocess();
    cv::RNG rng(0);
    std::vector<xcam::SampleInput> samples;
    std::vector<float> q, r;
    for (int i = 0; i < bbatch; ++i) {
      xcam::SampleInput s;
      s.id = "pair" + std::to_string(i);
      s.image.create(pre.height, pre.width, CV_8UC3);
      rng.fill(s.image, cv::RNG::UNIFORM, 0, 256);
      cv::Mat ref(pre.height, pre.width, CV_8UC3);
      rng.fill(ref, cv::RNG::UNIFORM, 0, 256);
      xcam::preprocess_into(s.image, pre, q);
      xcam::preprocess_into(ref, pre, r);
      s.images["reference"] = ref;
      samples.push_back(std::move(s));
    }
    std::vector<double> base, total, ratios, f, b, c;  // the ratio: of each repeat's pair of timings
    size_t maps = 0;
    for (int i = 0; i < warmup + repeats; ++i) {
      xcam::StageTimes tq, tr, t;
      ex.forward_only(q, bbatch, &tq);
      ex.forward_only(r, bbatch, &tr);
      const auto start = std::chrono::steady_clock::now();
      maps = ex.explain(samples, &t).size();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (i < warmup) continue;
      base.push_back(tq.forward_ms + tr.forward_ms);
      total.push_back(ms);
      ratios.push_back(ms / base.back());
      f.push_back(t.forward_ms);
      b.push_back(t.backward_ms);
      c.push_back(t.cam_ms);
    }
    const double mb = median(base), mt = median(total), ratio = median(ratios);
    if (!as_json) {
      std::cout << fmt::format("model {}  layer {}  method {}  pairs {}  input {}x{}  threads {}  repeats {}\n",
                               bo.model, fmt::join(ex.layers(), "+"), bo.method, bbatch, pre.height, pre.width,
                               cb.threads, repeats);
      std::cout << fmt::format("forward of the queries + of the references {:9.2f} ms\n", mb);
      std::cout << fmt::format("similarity maps ({} maps, one pass)    {:9.2f} ms   ratio {:.3f}\n", maps, mt,
                               ratio);
      std::cout << fmt::format("  tapped forward  {:9.2f} ms\n  gradients       {:9.2f} ms\n  map kernels     {:9.2f} ms\n",
                               median(f), median(b), median(c));
    }
    std::cout << fmt::format("{{\"two_forwards_ms\": {:.4f}, \"explain_ms\": {:.4f}, \"ratio\": {:.4f}, \"maps\": {}, "
                             "\"pairs\": {}, \"threads\": {}}}\n",
                             mb, mt, ratio, maps, bbatch, cb.threads);
    return 0;
  }

  // Maps/s of one run of `cfg` (forced, warmed up), in a folder of its own
  // under the experiment's output folder.
  double e2e_rate(xcam::ExperimentConfig cfg, const std::string& sub, size_t* maps) const {
    cfg.outputs.dir = (std::filesystem::path(cfg.outputs.dir) / "bench-e2e" / sub).string();
    xcam::RunOptions ro;
    ro.force = true;
    ro.progress = false;
    ro.warmup = true;
    const auto s = xcam::run_experiment(cfg, ro);
    XCAM_CHECK(s.failed == 0, "bench --e2e: {} sample(s) failed in '{}'; fix the experiment first", s.failed,
               cfg.file);
    *maps = s.maps;
    return s.maps_per_second();
  }

  // A task that reports how long its embedding forwards took (metrics
  // embedding_ms, embedded_images, embedding_batch: the reid plugin's
  // evaluate and search) against plain batched forwards of as many random
  // inputs at the same batch size, each run on a freshly loaded model as
  // the task's (the TorchScript executor's first, profiling runs are part of
  // both); runs alternate. Two ratios: the median of each pair's, and the
  // best run of each side against the other's. Each run is printed: on a
  // shared machine whose speed swings within seconds, single pairs spread
  // widely, and a bound like 0.95x needs tens of repeats (docs/results.md).
  int run_task_e2e(xcam::ExperimentConfig cfg) {
    xcam::set_threads(cfg.threads);
    auto eo = cfg.explainer;
    eo.layers = cfg.layer_sets.at(0);
    eo.method = cfg.methods.at(0);
    cfg.outputs.dir = (std::filesystem::path(cfg.outputs.dir) / "bench-e2e" / "task").string();
    xcam::RunOptions ro;
    ro.force = true;
    ro.progress = false;
    std::vector<double> task_rate, plain_rate, ratios;
    int64_t n = 0, batch = 0;
    for (int i = 0; i < repeats; ++i) {
      const auto s = xcam::run_experiment(cfg, ro);
      XCAM_CHECK(s.metrics.count("embedding_ms") && s.metrics.count("embedded_images") &&
                     s.metrics.count("embedding_batch"),
                 "bench --e2e: the task of '{}' reports no embedding times (metrics embedding_ms, embedded_images, "
                 "embedding_batch); it times tasks that embed a dataset, such as the reid plugin's evaluate",
                 cfg.file);
      n = static_cast<int64_t>(s.metrics.at("embedded_images"));
      batch = static_cast<int64_t>(s.metrics.at("embedding_batch"));
      xcam::Explainer ex(eo);
      const auto& p = ex.preprocess();
      double plain_ms = 0;
      std::mt19937 rng(0);
      std::normal_distribution<float> nd;
      for (int64_t done = 0; done < n; done += batch) {
        const int64_t b = std::min(batch, n - done);
        std::vector<float> x(static_cast<size_t>(b * 3 * p.height * p.width));
        for (auto& v : x) v = nd(rng);
        xcam::StageTimes t;
        ex.forward_only(x, b, &t);
        plain_ms += t.forward_ms;
      }
      task_rate.push_back(1000.0 * n / s.metrics.at("embedding_ms"));
      plain_rate.push_back(1000.0 * n / plain_ms);
      ratios.push_back(task_rate.back() / plain_rate.back());
      std::cerr << fmt::format("run {}: plain {:.1f} images/s, task {:.1f} images/s, ratio {:.3f}\n", i + 1,
                               plain_rate.back(), task_rate.back(), ratios.back());
    }
    std::cout << fmt::format("task {} of experiment {}: {} images embedded in batches of {}, threads {}, medians of {}\n",
                             nlohmann::json::parse(cfg.task).value("name", ""), cfg.name, n, batch, cfg.threads,
                             repeats);
    const double best_plain = *std::max_element(plain_rate.begin(), plain_rate.end());
    const double best_task = *std::max_element(task_rate.begin(), task_rate.end());
    std::cout << fmt::format("                             median images/s   best images/s\n");
    std::cout << fmt::format("plain batched forward        {:15.1f} {:15.1f}\n", median(plain_rate), best_plain);
    std::cout << fmt::format("the task's embeddings        {:15.1f} {:15.1f}\n", median(task_rate), best_task);
    std::cout << fmt::format("ratio: median of the runs' {:.3f}, best against best {:.3f}\n", median(ratios),
                             best_task / best_plain);
    std::cout << fmt::format("{{\"images\": {}, \"plain_images_per_s\": {:.3f}, \"task_images_per_s\": {:.3f}, "
                             "\"ratio\": {:.4f}, \"best_plain_images_per_s\": {:.3f}, \"best_task_images_per_s\": "
                             "{:.3f}, \"best_ratio\": {:.4f}, \"threads\": {}}}\n",
                             n, median(plain_rate), median(task_rate), median(ratios), best_plain, best_task,
                             best_task / best_plain, cfg.threads);
    return 0;
  }

  int run_e2e() {
    XCAM_CHECK(repeats >= 1, "bench --e2e needs --repeats >= 1, got {}", repeats);
    auto cfg = xcam::load_experiment(e2e_config);
    XCAM_CHECK(!cfg.compare, "bench --e2e times plain experiments and tasks; '{}' is a comparison", e2e_config);
    if (cmd->count("--threads") > 0) cfg.threads = cb.threads;
    if (cmd->count("--io-threads") > 0) cfg.io_threads = io_threads;
    if (!cfg.task.empty()) return run_task_e2e(cfg);
    auto off = cfg;
    off.outputs.save_map = off.outputs.save_overlay = off.outputs.save_panel = false;
    // Runs with outputs off and on alternate, and the ratio is the median of
    // each pair's: a machine whose speed drifts (a shared one) moves both
    // runs of a pair alike.
    size_t maps = 0;
    std::vector<double> offs, ons, ratios;
    for (int i = 0; i < repeats; ++i) {
      offs.push_back(e2e_rate(off, "outputs-off", &maps));
      ons.push_back(e2e_rate(cfg, "outputs-on", &maps));
      ratios.push_back(ons.back() / offs.back());
    }
    const double rate_off = median(offs), rate_on = median(ons), ratio = median(ratios);
    std::vector<std::string> saved;
    if (cfg.outputs.save_map) saved.push_back("map");
    if (cfg.outputs.save_overlay) saved.push_back("overlay");
    if (cfg.outputs.save_panel) saved.push_back("panel");
    std::cout << fmt::format("experiment {}: {} maps a run, threads {}, io_threads {}, medians of {} (the ratio: of "
                             "each pair of runs)\n",
                             cfg.name, maps, cfg.threads, cfg.io_threads, repeats);
    std::cout << fmt::format("explanation only (outputs off) {:9.1f} maps/s\n", rate_off);
    std::cout << fmt::format("end to end ({:<14}) {:9.1f} maps/s   ratio {:.3f}\n", fmt::format("{}", fmt::join(saved, ", ")), rate_on,
                             ratio);
    std::cout << fmt::format("{{\"maps\": {}, \"explain_maps_per_s\": {:.3f}, \"e2e_maps_per_s\": {:.3f}, "
                             "\"ratio\": {:.4f}, \"threads\": {}, \"io_threads\": {}}}\n",
                             maps, rate_off, rate_on, ratio, cfg.threads, cfg.io_threads);
    return 0;
  }

  int run() {
    if (!e2e_config.empty()) return run_e2e();
    XCAM_CHECK(repeats >= 1 && warmup >= 0 && bbatch >= 1 && bsize[0] > 0 && bsize[1] > 0,
               "bench needs --repeats >= 1, --warmup >= 0, --batch >= 1 and a positive --size; got {}, {}, {}, {} {}",
               repeats, warmup, bbatch, bsize[0], bsize[1]);
    XCAM_CHECK(!bo.model.empty(), "bench needs --model FILE (or --e2e CONFIG)");
    xcam::set_threads(cb.threads);
    bo.optimize = !no_optimize;
    bo.winograd = !no_winograd;
    bo.plugin = cb.plugin;
    bo.plugin_dirs = cb.plugin_dirs;
    bo.plugin_options = cb.plugin_options;
    bo.height = bsize[0];
    bo.width = bsize[1];
    bo.targets = split(btarget, ',');
    xcam::Explainer ex(bo);
    if (pair) return run_pair(ex);
    if (each) return run_each(ex);
    if (decoded) return run_decoded(ex);
    std::mt19937 rng(0);
    std::normal_distribution<float> nd;
    std::vector<float> x(static_cast<size_t>(bbatch) * 3 * bsize[0] * bsize[1]);
    for (auto& v : x) v = nd(rng);
    std::vector<std::string> ids;
    for (int i = 0; i < bbatch; ++i) ids.push_back("bench" + std::to_string(i));
    std::vector<double> fwd, total, f, b, c;
    for (int i = 0; i < warmup + repeats; ++i) {
      xcam::StageTimes t0, t1;
      ex.forward_only(x, bbatch, &t0);
      const auto start = std::chrono::steady_clock::now();
      ex.explain_preprocessed(x, bbatch, ids, {}, &t1);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (i < warmup) continue;
      fwd.push_back(t0.forward_ms);
      total.push_back(ms);
      f.push_back(t1.forward_ms);
      b.push_back(t1.backward_ms);
      c.push_back(t1.cam_ms);
    }
    const double mf = median(fwd), mt = median(total);
    if (!as_json) {
      std::cout << fmt::format("model {}  layer {}  method {}  batch {}  input {}x{}  threads {}  repeats {}\n",
                               bo.model, fmt::join(ex.layers(), "+"), bo.method, bbatch, bsize[0], bsize[1],
                               cb.threads, repeats);
      std::cout << xcam::blas_line(xcam::blas_info()) << "\n";
      std::cout << fmt::format("forward only      {:9.2f} ms\n", mf);
      std::cout << fmt::format("explanation       {:9.2f} ms   ratio {:.3f}\n", mt, mt / mf);
      std::cout << fmt::format("  tapped forward  {:9.2f} ms\n  gradients       {:9.2f} ms\n  map kernels     {:9.2f} ms\n",
                               median(f), median(b), median(c));
    }
    std::cout << fmt::format("{{\"forward_ms\": {:.4f}, \"explain_ms\": {:.4f}, \"ratio\": {:.4f}, "
                             "\"tapped_forward_ms\": {:.4f}, \"backward_ms\": {:.4f}, \"cam_ms\": {:.4f}, "
                             "\"batch\": {}, \"threads\": {}}}\n",
                             mf, mt, mt / mf, median(f), median(b), median(c), bbatch, cb.threads);
    return 0;
  }
};

struct DoctorCommand {
  CLI::App* cmd = nullptr;
  int doctor_threads = 0;

  void add(CLI::App& app) {
    cmd = app.add_subcommand("doctor", "What LibTorch runs on here: version, threads, BLAS, oneDNN, CUDA");
    cmd->add_option("--threads", doctor_threads, "Intra-op threads, as the other commands take it (0: all cores)")
        ->capture_default_str();
  }

  int run() {
    xcam::set_threads(doctor_threads);
    const auto info = xcam::blas_info();
    std::cout << xcam::torch_summary() << xcam::blas_line(info) << "\n";
    if (const auto w = xcam::blas_warning(info)) std::cout << "warning: " << *w << "\n";
    return 0;
  }
};

// `xcam attention`: per-head statistics and pattern labels of the attention a
// model returns for texts, or that taps inside its attention modules read for
// images; averaged over the texts or images (docs/attention.md).
struct AttentionCommand {
  CLI::App* cmd = nullptr;
  xcam::AttentionRun a;
  int threads = 0;
  std::vector<int64_t> size, patch;
  std::vector<std::string> images;
  std::string prompt;

  void add(CLI::App& app) {
    cmd = app.add_subcommand("attention", "Per-head attention statistics and pattern labels (CSV, JSON, heat map) "
                                         "of texts or images");
    cmd->add_option("--model", a.model, "TorchScript model returning its attentions (output_attentions=True)")
        ->required();
    cmd->add_option("--tokenizer", a.tokenizer, "The model's Hugging Face tokenizer.json");
    one_each(cmd->add_option("--text", a.texts, "A text to run (repeat for several; statistics are averaged)"));
    one_each(cmd->add_option("--image", images,
                             "Or an image (repeat for several): a vision model's attention, read at the --layer taps"));
    cmd->add_option("--prompt", prompt, "Images: the text each image is given with (a VLM's question)");
    one_each(cmd->add_option("--layer", a.explainer.layers,
                             "Images: a tap of the softmax inside an attention module (blocks.*.attn/softmax; '*' "
                             "stands for one path component; repeat for several)"));
    cmd->add_option("--plugin", a.explainer.plugin, "Images: architecture plugin (name or .so path)")
        ->capture_default_str();
    cmd->add_option("--plugin-dir", a.explainer.plugin_dirs, "Directory searched for plugins before XCAM_PLUGIN_PATH");
    cmd->add_option("--plugin-options", a.explainer.plugin_options, "Images: plugin options as a JSON object")
        ->capture_default_str();
    cmd->add_option("--size", size, "Images: input height and width (default: the plugin's)")
        ->expected(2)
        ->allow_extra_args(false);
    cmd->add_option("--patch", patch, "Images: the patch size, P or PH PW (tokens after the prefix lie on the "
                                      "H/PH x W/PW grid), for plugins that do not lay tokens out")
        ->expected(1, 2);
    cmd->add_option("--prefix-tokens", a.explainer.attention.prefix, "Images: tokens before the patch grid (CLS, ...)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--out", a.out_dir, "Output directory (attention_stats.csv, .json, attention_STAT.png)")
        ->required();
    cmd->add_option("--window", a.window, "w of the local share: keys with |i - j| <= w")->capture_default_str();
    cmd->add_option("--stat", a.stat, "The statistic of the heat map")->capture_default_str();
    cmd->add_option("--structured", a.rules.structured,
                    "Label rule 1: a structured share (previous, next, self, CLS, separator) above this names the head")
        ->capture_default_str();
    cmd->add_option("--local", a.rules.local, "Label rule 2: local when the local share is above this")
        ->capture_default_str();
    cmd->add_option("--broad", a.rules.broad, "Label rule 3: broad when the normalised entropy is above this")
        ->capture_default_str();
    cmd->add_flag("--html", a.html,
                  "Also an interactive page per text (attention_<k>.html: head view and model view, data embedded)");
    cmd->add_flag("--views", a.views,
                  "Also images per text: every head of each layer (attention_<k>_layer<L>.png) and each head across "
                  "the layers (attention_<k>_head<H>.png)");
    one_each(cmd->add_option("--flow", a.flows,
                             "Also the flow from this token index in every layer, per text (attention_<k>_flow<I>.png; "
                             "repeat for several)"));
    cmd->add_option("--threads", threads, "Intra-op threads (0: all cores)")->capture_default_str();
  }

  int run() {
    xcam::set_threads(threads);
    if (!size.empty()) {
      XCAM_CHECK(size[0] > 0 && size[1] > 0, "--size needs a positive HEIGHT WIDTH, got {} {}", size[0], size[1]);
      a.explainer.height = size[0];
      a.explainer.width = size[1];
    }
    if (!patch.empty()) {
      XCAM_CHECK(patch.front() > 0 && patch.back() > 0, "--patch must be positive, got {}", fmt::join(patch, " "));
      a.explainer.attention.patch_h = patch.front();
      a.explainer.attention.patch_w = patch.back();
    }
    for (const auto& path : images) a.images.push_back({path, prompt, {}});
    std::cout << xcam::run_attention(a);
    return 0;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"xcam: class-activation maps for TorchScript models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("xcam ") + xcam::version());
  ExplainCommand explain;
  RunCommand run;
  CompareCommand compare;
  LayersCommand layers;
  PluginsCommand plugins;
  BenchCommand bench;
  DoctorCommand doctor;
  AttentionCommand attention;
  MergeCommand merge;
  SlurmCommand slurm;
  explain.add(app);
  run.add(app);
  compare.add(app);
  layers.add(app);
  plugins.add(app);
  bench.add(app);
  doctor.add(app);
  attention.add(app);
  merge.add(app);
  slurm.add(app);

  CLI11_PARSE(app, argc, argv);
  if (*explain.cmd || *run.cmd || *compare.cmd || *bench.cmd) warn_if_slow_blas();

  try {
    if (*explain.cmd) return explain.run();
    if (*run.cmd) return run.run();
    if (*compare.cmd) return compare.run();
    if (*layers.cmd) return layers.run();
    if (*plugins.cmd) return plugins.run();
    if (*doctor.cmd) return doctor.run();
    if (*bench.cmd) return bench.run();
    if (*attention.cmd) return attention.run();
    if (*merge.cmd) return merge.run();
    if (*slurm.cmd) return slurm.run();
  } catch (const xcam::Error& e) {
    std::cerr << "xcam: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "xcam: error: " << brief(e.what()) << "\n";
    return 1;
  }
  return 0;
}

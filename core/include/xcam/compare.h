// Method comparison: one row per method and layer set with its localisation
// and faithfulness metrics and its time per map, sorted by a chosen metric;
// the table as text, CSV and JSON; and per image and target a grid of
// overlays (docs/yaml.md, `compare`).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "xcam/experiment.h"

namespace xcam {

// The sort keys, which are also the metric columns of the table:
// pointing, energy, deletion, insertion, drop, increase, ms.
const std::vector<std::string>& compare_metrics();
// Whether a larger value of the metric is better (pointing, energy,
// insertion, increase) or a smaller one (deletion, drop, ms).
bool higher_is_better(const std::string& metric);
// Throws xcam::Error naming `metric`, the closest key and every key when
// `metric` is not one of compare_metrics().
void check_compare_metric(const std::string& metric);

struct CompareRow {
  std::string method, layers;
  int maps = 0;
  std::optional<double> pointing;  // pointing game: mean over classes of hits / (hits + misses)
  std::optional<double> centre;    // the same for the centre-point baseline
  std::optional<double> energy;    // mean energy pointing game
  std::optional<double> deletion;  // mean deletion AUC
  std::optional<double> insertion; // mean insertion AUC
  std::optional<double> drop;      // average drop, percent
  std::optional<double> increase;  // increase in confidence, percent
  double ms = 0;                   // explanation time per map: forward + gradients + map, no metric forwards
  std::optional<double> value(const std::string& metric) const;
};

// One row per (method, layers) of `records`, in order of first appearance,
// then stably sorted by `sort_by`, better first; rows without a value for
// it come last.
std::vector<CompareRow> compare_rows(const std::vector<ItemRecord>& records, const std::string& sort_by);

// The table as aligned text: a line naming the sort key and its direction,
// the column names, and under each metric whether higher or lower is better.
std::string format_comparison(const std::vector<CompareRow>& rows, const std::string& sort_by);

// Writes <dir>/compare.csv and <dir>/compare.json (the rows in order, and
// the sort key). Missing values are empty CSV fields and JSON nulls.
void write_comparison(const std::string& dir, const std::vector<CompareRow>& rows, const std::string& sort_by);

// Writes <dir>/grid/<image stem>_<target>.png for every image and target of
// `records` (outputs relative to `dir`): a title with the image, the target
// and its score; the image, then one overlay per method (columns, in order of
// first appearance), one row per layer set. Tiles come from each record's
// overlay PNG, or its .npy map rendered with `out`'s colormap and alpha.
// `samples` are the run's (records name their sample by id); a grid per
// sample, named image its maps are drawn on, and target, named as the maps
// are (grid/<id>_<target>.png, grid/<id>_<name>_<target>.png); maps over
// text get none. Returns the paths written.
std::vector<std::string> write_grids(const std::string& dir, const std::vector<ItemRecord>& records,
                                     const std::vector<SampleSpec>& samples, const OutputOptions& out);

}  // namespace xcam

// Localisation metrics (SPEC section 5).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace xcam {

struct Box {
  std::string label;
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // pixels; x1, y1 exclusive
};

// Ground truth per image file name. Reads
//   {"images": {"a.png": [{"label": "cat", "box": [x0, y0, x1, y1]}, ...]}}
// (or the same mapping at the top level). Throws xcam::Error naming the file
// and the entry that is malformed.
std::map<std::string, std::vector<Box>> read_boxes(const std::string& path);

// Pointing-game tolerance in pixels: 15 at 224 px, scaled down with the
// shorter side of smaller images.
double pointing_tolerance(int64_t height, int64_t width);

struct PointingResult {
  bool hit = false;
  int64_t peak_x = 0, peak_y = 0;  // argmax of the map (first in row-major order)
  double energy = 0;               // energy pointing game: map mass inside the boxes
};

// `map` is height x width at image resolution; `boxes` are the boxes of the
// target class in that image (a class may appear more than once).
PointingResult pointing_game(const float* map, int64_t height, int64_t width, const std::vector<Box>& boxes);

// Hit if the image centre lies within tolerance of a box: the baseline.
bool centre_point_hit(int64_t height, int64_t width, const std::vector<Box>& boxes);

// Score = mean over classes of hits / (hits + misses).
class PointingGame {
 public:
  void add(const std::string& cls, bool hit);
  double score() const;
  const std::map<std::string, std::pair<int, int>>& per_class() const { return counts_; }  // hits, misses
  int total() const;

 private:
  std::map<std::string, std::pair<int, int>> counts_;
};

// Re-identification retrieval scores (SPEC section 5, the Market-1501
// protocol): fractions in [0, 1].
struct RetrievalScores {
  double mAP = 0;               // mean over valid queries of average precision
  double mINP = 0;              // mean over valid queries of matches / rank of the last match
  std::vector<double> cmc;      // cmc[k]: share of valid queries with a match within the first k + 1
  size_t valid_queries = 0;     // queries with at least one match left after the exclusions
  size_t skipped_queries = 0;   // queries with none (not counted in the means)
  // Rank-k (k from 1; past the cut, the last entry)
  double rank(size_t k) const { return cmc.empty() ? 0.0 : cmc[std::min(std::max<size_t>(k, 1), cmc.size()) - 1]; }
};

// `dist` is queries x gallery, row-major (smaller is closer). For each query
// the gallery is sorted by distance (stable: ties keep gallery order); the
// entries of the query's identity on the query's camera and the junk (pid -1)
// are dropped; distractors (pid 0) stay and count as wrong. A query with no
// match left is skipped. CMC is cut at `max_rank` (or the gallery size); a
// query whose kept list is shorter counts as found at every rank past its
// first match. Throws xcam::Error on sizes that disagree or on no valid query.
RetrievalScores retrieval_scores(const std::vector<double>& dist, const std::vector<int64_t>& query_pids,
                                 const std::vector<int64_t>& query_cams, const std::vector<int64_t>& gallery_pids,
                                 const std::vector<int64_t>& gallery_cams, size_t max_rank = 50);

}  // namespace xcam

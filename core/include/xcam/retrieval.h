// Re-identification retrieval scores (SPEC section 5): header-only, so that
// the host and the re-ID plugin's evaluation share one implementation.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#include "xcam/error.h"

namespace xcam {

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
inline RetrievalScores retrieval_scores(const std::vector<double>& dist, const std::vector<int64_t>& query_pids,
                                 const std::vector<int64_t>& query_cams, const std::vector<int64_t>& gallery_pids,
                                 const std::vector<int64_t>& gallery_cams, size_t max_rank = 50) {
  const size_t nq = query_pids.size(), ng = gallery_pids.size();
  XCAM_CHECK(query_cams.size() == nq && gallery_cams.size() == ng,
             "re-ID evaluation: {} query ids and {} cameras, {} gallery ids and {} cameras; give one camera per image",
             nq, query_cams.size(), ng, gallery_cams.size());
  XCAM_CHECK(dist.size() == nq * ng, "re-ID evaluation: the distance matrix has {} entries, not {} queries x {} gallery",
             dist.size(), nq, ng);
  XCAM_CHECK(max_rank >= 1, "re-ID evaluation: max_rank must be >= 1");
  const size_t cut = std::min(max_rank, ng);
  RetrievalScores out;
  out.cmc.assign(cut, 0.0);
  std::vector<size_t> order(ng);
  std::vector<uint8_t> match;
  for (size_t q = 0; q < nq; ++q) {
    const double* row = dist.data() + q * ng;
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [row](size_t a, size_t b) { return row[a] < row[b]; });
    match.clear();
    for (const size_t j : order) {
      const bool same_view = gallery_pids[j] == query_pids[q] && gallery_cams[j] == query_cams[q];
      if (same_view || gallery_pids[j] == -1) continue;
      match.push_back(gallery_pids[j] == query_pids[q] ? 1 : 0);
    }
    size_t found = 0, first = 0, last = 0;
    double precision_sum = 0;
    for (size_t k = 0; k < match.size(); ++k) {
      if (!match[k]) continue;
      if (found == 0) first = k;
      ++found;
      last = k;
      precision_sum += static_cast<double>(found) / static_cast<double>(k + 1);
    }
    if (found == 0) {
      ++out.skipped_queries;
      continue;
    }
    ++out.valid_queries;
    out.mAP += precision_sum / static_cast<double>(found);
    out.mINP += static_cast<double>(found) / static_cast<double>(last + 1);
    for (size_t k = first; k < cut; ++k) out.cmc[k] += 1.0;
  }
  XCAM_CHECK(out.valid_queries > 0,
             "re-ID evaluation: none of the {} queries has a match in the gallery on another camera; check the "
             "identities and cameras of the query and gallery images",
             nq);
  const double n = static_cast<double>(out.valid_queries);
  out.mAP /= n;
  out.mINP /= n;
  for (auto& c : out.cmc) c /= n;
  return out;
}

}  // namespace xcam

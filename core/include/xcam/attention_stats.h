// Per-head attention statistics and pattern labels (issue 14; docs/attention.md).
//
// Plain C++ on float arrays, no LibTorch: one layer's post-softmax attention
// [heads, T, T], row i = query i, column j = key j, as the model returns it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace xcam {

// What the statistics need to know about the T positions of one sequence.
// Each vector is empty (none / all valid) or has T entries.
struct TokenFacts {
  std::vector<bool> cls;    // [CLS] positions; none flagged: the first valid position is the "first token"
  std::vector<bool> sep;    // separator positions ([SEP])
  std::vector<bool> valid;  // false: padding, excluded as query row and as key column
  int64_t window = 2;       // w of the local share
  // Image tokens: each position's patch centre (y, x) in model-input pixels,
  // NaN for a position off the image (CLS and other prefix tokens, text);
  // empty for text. Then mean_distance is in pixels, and it and local_share
  // are taken over the query rows on the image and the keys on the image:
  // local = within w cells in both directions (|dy| <= w cell_h, |dx| <= w
  // cell_w, cell_* a grid cell's size in pixels).
  std::vector<std::array<double, 2>> centre;
  double cell_h = 0, cell_w = 0;
};

// The statistics of one head. V = the valid positions, n = |V|, p = the
// head's attention, every sum over keys j in V and every mean over query rows
// i in V (unless said otherwise); p is used as given (not renormalised over V).
struct HeadStats {
  double entropy = 0;             // mean_i -sum_j p_ij ln p_ij   (nats; 0 ln 0 = 0)
  double entropy_norm = 0;        // mean_i of that row's entropy / ln n (0 when n = 1); 1 = uniform over V
  double mean_distance = 0;       // mean_i sum_j p_ij |i - j|    (in token positions; images: pixels, TokenFacts)
  double cls_share = 0;           // mean_i sum_{j in CLS} p_ij   (CLS: TokenFacts::cls, else the first valid position)
  double sep_share = 0;           // mean_i sum_{j in SEP} p_ij
  double diagonal_share = 0;      // mean_i p_ii
  double previous_share = 0;      // mean over rows i with i-1 in V of p_{i,i-1}  (0 when there is none)
  double next_share = 0;          // mean over rows i with i+1 in V of p_{i,i+1}  (0 when there is none)
  double local_share = 0;         // mean_i sum_{|i-j| <= w} p_ij (the diagonal included)
  double causal_share = 0;        // mean_i sum_{j <= i} p_ij
};

// The statistics' names, in HeadStats' order, as the CSV and JSON columns.
const std::vector<std::string>& head_stat_names();
// The statistics as a vector in head_stat_names()' order, and back.
std::vector<double> head_stat_values(const HeadStats& s);
HeadStats head_stats_from_values(const std::vector<double>& v);

// One layer: `attn` holds heads * T * T floats ([h][i][j], C order). Returns
// one HeadStats per head. Throws xcam::Error for a size that is not
// heads * T * T, facts of the wrong length, or no valid position.
std::vector<HeadStats> layer_head_stats(const float* attn, int64_t heads, int64_t T, const TokenFacts& facts);

// The element-wise mean of several HeadStats (one per text).
HeadStats mean_head_stats(const std::vector<HeadStats>& per_text);

// Pattern labels, decided in this order (docs/attention.md, "Labels"):
//  1. the largest of the structured shares {previous-token: previous_share,
//     next-token: next_share, self: diagonal_share, CLS (first-token when the
//     sequence has no [CLS]): cls_share, separator: sep_share} if it exceeds
//     `structured`;
//  2. local if local_share > `local`;
//  3. broad if entropy_norm > `broad`;
//  4. otherwise global: concentrated (entropy_norm <= broad), neither local nor
//     on one structural position: a few content-chosen, distant keys.
struct LabelRules {
  double structured = 0.5;
  double local = 0.5;
  double broad = 0.8;
};
std::string head_label(const HeadStats& s, const LabelRules& rules = {}, bool has_cls = true);

// A model's table: rows[layer][head].
struct AttentionTable {
  std::vector<std::vector<HeadStats>> rows;
  std::vector<std::vector<std::string>> labels;
  LabelRules rules;
  int64_t window = 2;
  int64_t texts = 0;
  std::string distance = "tokens";  // mean_distance's unit: tokens, or pixels (of the model input) for images
  std::string samples = "texts";    // what `texts` counts: texts or images
  std::vector<std::string> layer_names;  // the taps read, per row (images); empty: the model's layers in order
};
// Labels every row of `table` by its rules (has_cls as head_label).
void label_table(AttentionTable& table, bool has_cls = true);

// The table as CSV (a header line: layer,head,<head_stat_names()>,label) and
// as JSON ({"window", "texts", "rules", "heads": [{layer, head, <stats>, label}]}).
std::string attention_table_csv(const AttentionTable& table);
std::string attention_table_json(const AttentionTable& table);
// A fixed-width text table for the terminal.
std::string attention_table_text(const AttentionTable& table);
// A heat map of one statistic (a head_stat_names() entry) over layers (rows)
// x heads (columns), each cell coloured by its value (scaled to [0, 1] by
// the table's largest value for mean_distance and entropy, as is for shares
// and entropy_norm) and labelled with the value and the head's label; written
// as a PNG. Throws xcam::Error for an unknown statistic.
void write_attention_heatmap(const std::string& path, const AttentionTable& table, const std::string& stat);

}  // namespace xcam

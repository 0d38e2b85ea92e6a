// Per-head attention statistics, pattern labels and their table (docs/attention.md).
#include "xcam/attention_stats.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "xcam/error.h"
#include "xcam/render.h"

namespace xcam {

namespace {

// A fact vector's value at position k (empty: `fallback`).
bool fact(const std::vector<bool>& v, int64_t k, bool fallback) {
  return v.empty() ? fallback : v[static_cast<size_t>(k)];
}

}  // namespace

const std::vector<std::string>& head_stat_names() {
  static const std::vector<std::string> names = {
      "entropy",        "entropy_norm",   "mean_distance", "cls_share",   "sep_share",
      "diagonal_share", "previous_share", "next_share",    "local_share", "causal_share"};
  return names;
}

std::vector<double> head_stat_values(const HeadStats& s) {
  return {s.entropy,        s.entropy_norm,   s.mean_distance, s.cls_share,   s.sep_share,
          s.diagonal_share, s.previous_share, s.next_share,    s.local_share, s.causal_share};
}

HeadStats head_stats_from_values(const std::vector<double>& v) {
  XCAM_CHECK(v.size() == head_stat_names().size(), "expected {} head statistics, got {}", head_stat_names().size(),
             v.size());
  HeadStats s;
  s.entropy = v[0];
  s.entropy_norm = v[1];
  s.mean_distance = v[2];
  s.cls_share = v[3];
  s.sep_share = v[4];
  s.diagonal_share = v[5];
  s.previous_share = v[6];
  s.next_share = v[7];
  s.local_share = v[8];
  s.causal_share = v[9];
  return s;
}

std::vector<HeadStats> layer_head_stats(const float* attn, int64_t heads, int64_t T, const TokenFacts& facts) {
  XCAM_CHECK(attn != nullptr && heads > 0 && T > 0, "attention statistics need heads > 0 and T > 0, got {} x {}",
             heads, T);
  const auto n_t = static_cast<size_t>(T);
  for (const auto* v : {&facts.cls, &facts.sep, &facts.valid})
    XCAM_CHECK(v->empty() || v->size() == n_t, "token facts hold {} positions for a sequence of {}", v->size(), T);
  XCAM_CHECK(facts.window >= 0, "the local window must be >= 0, got {}", facts.window);
  const bool pixels = !facts.centre.empty();
  XCAM_CHECK(!pixels || (facts.centre.size() == n_t && facts.cell_h > 0 && facts.cell_w > 0),
             "token facts hold {} patch centres (cell {} x {}) for a sequence of {}", facts.centre.size(),
             facts.cell_h, facts.cell_w, T);

  std::vector<int64_t> pos;  // the valid positions
  for (int64_t k = 0; k < T; ++k)
    if (fact(facts.valid, k, true)) pos.push_back(k);
  XCAM_CHECK(!pos.empty(), "attention statistics: every one of the {} positions is padding", T);
  const bool any_cls = std::any_of(pos.begin(), pos.end(), [&](int64_t k) { return fact(facts.cls, k, false); });
  std::vector<bool> is_cls(n_t, false), is_sep(n_t, false), valid(n_t, false);
  for (const int64_t k : pos) {
    valid[static_cast<size_t>(k)] = true;
    is_cls[static_cast<size_t>(k)] = any_cls ? fact(facts.cls, k, false) : k == pos.front();
    is_sep[static_cast<size_t>(k)] = fact(facts.sep, k, false);
  }
  const double n = static_cast<double>(pos.size());
  const double log_n = std::log(n);
  // Images: distance and locality between patch centres, over the positions on the image.
  auto on_image = [&](int64_t k) { return pixels && std::isfinite(facts.centre[static_cast<size_t>(k)][0]); };
  std::vector<int64_t> image_pos;
  for (const int64_t k : pos)
    if (on_image(k)) image_pos.push_back(k);
  XCAM_CHECK(!pixels || !image_pos.empty(), "attention statistics: none of the {} positions lies on the image", T);
  const double n_image = static_cast<double>(image_pos.size());
  const double reach_h = static_cast<double>(facts.window) * facts.cell_h + 1e-9,
               reach_w = static_cast<double>(facts.window) * facts.cell_w + 1e-9;

  std::vector<HeadStats> out(static_cast<size_t>(heads));
  for (int64_t h = 0; h < heads; ++h) {
    HeadStats& s = out[static_cast<size_t>(h)];
    int64_t prev_rows = 0, next_rows = 0;
    for (const int64_t i : pos) {
      const float* row = attn + (h * T + i) * T;
      double ent = 0, dist = 0, cls = 0, sep = 0, local = 0, causal = 0;
      for (const int64_t j : pos) {
        const double p = row[j];
        if (p > 0) ent -= p * std::log(p);
        if (is_cls[static_cast<size_t>(j)]) cls += p;
        if (is_sep[static_cast<size_t>(j)]) sep += p;
        if (j <= i) causal += p;
        if (pixels) continue;
        const int64_t d = std::abs(i - j);
        dist += p * static_cast<double>(d);
        if (d <= facts.window) local += p;
      }
      if (pixels && on_image(i)) {
        const auto& ci = facts.centre[static_cast<size_t>(i)];
        for (const int64_t j : image_pos) {
          const double p = row[j];
          const auto& cj = facts.centre[static_cast<size_t>(j)];
          const double dy = std::abs(ci[0] - cj[0]), dx = std::abs(ci[1] - cj[1]);
          dist += p * std::hypot(dy, dx);
          if (dy <= reach_h && dx <= reach_w) local += p;
        }
      }
      s.entropy += ent;
      s.entropy_norm += pos.size() > 1 ? ent / log_n : 0.0;
      s.mean_distance += dist;
      s.cls_share += cls;
      s.sep_share += sep;
      s.diagonal_share += row[i];
      s.local_share += local;
      s.causal_share += causal;
      if (i > 0 && valid[static_cast<size_t>(i - 1)]) {
        s.previous_share += row[i - 1];
        ++prev_rows;
      }
      if (i + 1 < T && valid[static_cast<size_t>(i + 1)]) {
        s.next_share += row[i + 1];
        ++next_rows;
      }
    }
    for (double* v : {&s.entropy, &s.entropy_norm, &s.cls_share, &s.sep_share, &s.diagonal_share, &s.causal_share})
      *v /= n;
    for (double* v : {&s.mean_distance, &s.local_share}) *v /= pixels ? n_image : n;
    s.previous_share = prev_rows > 0 ? s.previous_share / static_cast<double>(prev_rows) : 0.0;
    s.next_share = next_rows > 0 ? s.next_share / static_cast<double>(next_rows) : 0.0;
  }
  return out;
}

HeadStats mean_head_stats(const std::vector<HeadStats>& per_text) {
  XCAM_CHECK(!per_text.empty(), "the mean of head statistics needs at least one text");
  std::vector<double> sum(head_stat_names().size(), 0.0);
  for (const auto& s : per_text) {
    const auto v = head_stat_values(s);
    for (size_t k = 0; k < v.size(); ++k) sum[k] += v[k];
  }
  for (double& v : sum) v /= static_cast<double>(per_text.size());
  return head_stats_from_values(sum);
}

std::string head_label(const HeadStats& s, const LabelRules& rules, bool has_cls) {
  const std::pair<const char*, double> structured[] = {{"previous-token", s.previous_share},
                                                       {"next-token", s.next_share},
                                                       {"self", s.diagonal_share},
                                                       {has_cls ? "CLS" : "first-token", s.cls_share},
                                                       {"separator", s.sep_share}};
  const auto* best = std::max_element(std::begin(structured), std::end(structured),
                                      [](const auto& a, const auto& b) { return a.second < b.second; });
  if (best->second > rules.structured) return best->first;
  if (s.local_share > rules.local) return "local";
  if (s.entropy_norm > rules.broad) return "broad";
  return "global";
}

void label_table(AttentionTable& table, bool has_cls) {
  table.labels.assign(table.rows.size(), {});
  for (size_t l = 0; l < table.rows.size(); ++l)
    for (const auto& s : table.rows[l]) table.labels[l].push_back(head_label(s, table.rules, has_cls));
}

namespace {

// Every (layer, head) of the table in order, with its stats and label.
template <typename F>
void each_head(const AttentionTable& table, F&& f) {
  XCAM_CHECK(table.labels.size() == table.rows.size(), "the attention table is not labelled (label_table)");
  for (size_t l = 0; l < table.rows.size(); ++l)
    for (size_t h = 0; h < table.rows[l].size(); ++h) f(l, h, table.rows[l][h], table.labels[l].at(h));
}

}  // namespace

std::string attention_table_csv(const AttentionTable& table) {
  std::ostringstream out;
  out << "layer,head";
  for (const auto& name : head_stat_names()) out << ',' << name;
  out << ",label\n";
  each_head(table, [&](size_t l, size_t h, const HeadStats& s, const std::string& label) {
    out << l << ',' << h;
    for (const double v : head_stat_values(s)) out << ',' << fmt::format("{:.9g}", v);
    out << ',' << label << '\n';
  });
  return out.str();
}

std::string attention_table_json(const AttentionTable& table) {
  nlohmann::ordered_json j;  // columns in the table's order
  j["window"] = table.window;
  j[table.samples] = table.texts;
  j["distance"] = table.distance;
  if (!table.layer_names.empty()) j["layers"] = table.layer_names;
  j["rules"] = {{"structured", table.rules.structured}, {"local", table.rules.local}, {"broad", table.rules.broad}};
  j["heads"] = nlohmann::ordered_json::array();
  each_head(table, [&](size_t l, size_t h, const HeadStats& s, const std::string& label) {
    nlohmann::ordered_json row = {{"layer", l}, {"head", h}};
    const auto values = head_stat_values(s);
    for (size_t k = 0; k < values.size(); ++k) row[head_stat_names()[k]] = values[k];
    row["label"] = label;
    j["heads"].push_back(row);
  });
  return j.dump(1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

std::string attention_table_text(const AttentionTable& table) {
  std::string out;
  for (size_t l = 0; l < table.layer_names.size(); ++l) out += fmt::format("layer {}: {}\n", l, table.layer_names[l]);
  if (table.distance != "tokens") out += fmt::format("mean_distance in {}\n", table.distance);
  // Short column names: the statistics without their "_share" suffix.
  out += fmt::format("{:>5} {:>4}", "layer", "head");
  for (auto name : head_stat_names()) {
    const auto cut = name.find("_share");
    if (cut != std::string::npos) name.resize(cut);
    out += fmt::format(" {:>13}", name);
  }
  out += "  label\n";
  each_head(table, [&](size_t l, size_t h, const HeadStats& s, const std::string& label) {
    out += fmt::format("{:>5} {:>4}", l, h);
    for (const double v : head_stat_values(s)) out += fmt::format(" {:>13.4f}", v);
    out += "  " + label + "\n";
  });
  return out;
}

void write_attention_heatmap(const std::string& path, const AttentionTable& table, const std::string& stat) {
  const auto& names = head_stat_names();
  const auto it = std::find(names.begin(), names.end(), stat);
  XCAM_CHECK(it != names.end(), "unknown attention statistic '{}'; expected one of {}", stat,
             fmt::join(names, ", "));
  const auto k = static_cast<size_t>(it - names.begin());
  // Shares and entropy_norm are in [0, 1]; entropy and mean_distance are
  // scaled by the table's largest value.
  double scale = 1.0;
  if (stat == "entropy" || stat == "mean_distance") {
    scale = 0.0;
    each_head(table, [&](size_t, size_t, const HeadStats& s, const std::string&) {
      scale = std::max(scale, head_stat_values(s)[k]);
    });
    if (scale <= 0) scale = 1.0;
  }
  const auto& lut = colormap_lut(Colormap::viridis);
  size_t heads = 0;
  for (const auto& row : table.rows) heads = std::max(heads, row.size());
  std::vector<std::vector<cv::Mat>> tiles(table.rows.size(), std::vector<cv::Mat>(heads));
  each_head(table, [&](size_t l, size_t h, const HeadStats& s, const std::string& label) {
    const double v = head_stat_values(s)[k];
    const int c = std::clamp(static_cast<int>(std::lround(v / scale * 255.0)), 0, 255);
    const auto at = static_cast<size_t>(c) * 3;
    cv::Mat tile(96, 128, CV_8UC3, cv::Scalar(lut[at], lut[at + 1], lut[at + 2]));
    const cv::Scalar ink = c > 160 ? cv::Scalar(0, 0, 0) : cv::Scalar(255, 255, 255);
    cv::putText(tile, fmt::format("{:.3f}", v), cv::Point(8, 40), cv::FONT_HERSHEY_SIMPLEX, 0.6, ink, 1, cv::LINE_AA);
    cv::putText(tile, label, cv::Point(8, 72), cv::FONT_HERSHEY_SIMPLEX, 0.45, ink, 1, cv::LINE_AA);
    tiles[l][h] = tile;
  });
  std::vector<std::string> headers, row_labels;
  for (size_t h = 0; h < heads; ++h) headers.push_back(fmt::format("head {}", h));
  for (size_t l = 0; l < table.rows.size(); ++l) row_labels.push_back(fmt::format("layer {}", l));
  write_png(path, render_grid(fmt::format("{} per head (label below the value)", stat), headers, row_labels, tiles, 96));
}

}  // namespace xcam

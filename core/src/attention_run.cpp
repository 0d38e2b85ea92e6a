// One attention analysis (xcam/attention_run.h): what `xcam attention` and the
// YAML task `attention` run.
#include "xcam/attention_run.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>

#include "xcam/attention_html.h"
#include "xcam/attention_outputs.h"
#include "xcam/attention_views.h"
#include "xcam/error.h"
#include "xcam/io.h"
#include "xcam/render.h"
#include "xcam/tokenizer.h"

namespace fs = std::filesystem;

namespace xcam {

std::string run_attention(const AttentionRun& r) {
  XCAM_CHECK(!r.tokenizer.empty(),
             "`xcam attention` needs the model's tokenizer: give --tokenizer tokenizer.json (the zoo BERT's is "
             "zoo/models/tokenizers/bert/tokenizer.json)");
  XCAM_CHECK(fs::is_regular_file(r.tokenizer),
             "tokenizer '{}' does not exist; give --tokenizer the model's Hugging Face tokenizer.json",
             r.tokenizer);
  XCAM_CHECK(!r.texts.empty(), "the attention analysis of '{}' has no text; give one or more", r.model);
  for (const double v : {r.rules.structured, r.rules.local, r.rules.broad})
    XCAM_CHECK(v >= 0 && v <= 1, "attention label rules (structured {}, local {}, broad {}) must be shares in [0, 1]",
               r.rules.structured, r.rules.local, r.rules.broad);
  XCAM_CHECK(std::find(head_stat_names().begin(), head_stat_names().end(), r.stat) != head_stat_names().end(),
             "--stat '{}' is not a head statistic; expected one of {}", r.stat, fmt::join(head_stat_names(), ", "));
  const auto tok = Tokenizer::from_file(r.tokenizer);
  const auto net = AttentionModel::load(r.model);
  std::vector<std::vector<std::vector<HeadStats>>> per_text;  // [text][layer][head]
  std::vector<AttentionPage> pages;
  bool has_cls = false;
  for (const auto& text : r.texts) {
    const auto enc = tok.encode(text, true);
    TokenFacts facts;
    facts.window = r.window;
    for (size_t k = 0; k < enc.ids.size(); ++k) {
      const auto& t = enc.tokens[k];
      facts.cls.push_back(enc.special[k] && (t == "[CLS]" || t == "<s>"));
      facts.sep.push_back(enc.special[k] && (t == "[SEP]" || t == "</s>"));
      has_cls = has_cls || facts.cls.back();
    }
    const auto att = net.run(enc.ids, std::vector<int64_t>(enc.ids.size(), 1));
    XCAM_CHECK(per_text.empty() || per_text.front().size() == att.layers.size(),
               "model '{}' returned {} attention layers for one text and {} for another", r.model,
               per_text.empty() ? 0 : per_text.front().size(), att.layers.size());
    per_text.emplace_back();
    for (const auto& layer : att.layers)
      per_text.back().push_back(layer_head_stats(layer.data(), att.heads, att.tokens, facts));
    if (r.html || r.views || !r.flows.empty()) {
      AttentionPage page;
      page.title = fmt::format("{}: text {} of {}", fs::path(r.model).filename().string(), pages.size() + 1,
                               r.texts.size());
      page.tokens = enc.tokens;
      page.special = enc.special;
      page.heads = att.heads;
      page.layers = att.layers;
      pages.push_back(std::move(page));
    }
  }
  AttentionTable table;
  table.window = r.window;
  table.rules = r.rules;
  table.texts = static_cast<int64_t>(r.texts.size());
  for (size_t l = 0; l < per_text.front().size(); ++l) {
    table.rows.emplace_back();
    for (size_t h = 0; h < per_text.front()[l].size(); ++h) {
      std::vector<HeadStats> each;
      for (const auto& t : per_text) each.push_back(t[l][h]);
      table.rows.back().push_back(mean_head_stats(each));
    }
  }
  label_table(table, has_cls);
  fs::create_directories(r.out_dir);
  write_file_atomic((fs::path(r.out_dir) / "attention_stats.csv").string(), attention_table_csv(table));
  write_file_atomic((fs::path(r.out_dir) / "attention_stats.json").string(), attention_table_json(table));
  const auto png = fs::path(r.out_dir) / ("attention_" + r.stat + ".png");
  write_attention_heatmap(png.string(), table, r.stat);
  size_t images = 0;
  for (size_t k = 0; k < pages.size(); ++k) {
    auto& page = pages[k];
    page.labels = table.labels;
    auto file = [&](const std::string& name) { return (fs::path(r.out_dir) / name).string(); };
    if (r.html) write_file_atomic(file(fmt::format("attention_{}.html", k + 1)), attention_html(page));
    if (r.views) {
      for (int64_t l = 0; l < static_cast<int64_t>(page.layers.size()); ++l, ++images)
        write_png(file(fmt::format("attention_{}_layer{}.png", k + 1, l)), render_layer_heads(page, l));
      for (int64_t h = 0; h < page.heads; ++h, ++images)
        write_png(file(fmt::format("attention_{}_head{}.png", k + 1, h)), render_head_layers(page, h));
    }
    for (const int64_t t : r.flows) {
      XCAM_CHECK(t >= 0 && t < static_cast<int64_t>(page.tokens.size()),
                 "--flow {}: text {} has tokens 0 to {} ({})", t, k + 1, page.tokens.size() - 1,
                 fmt::join(page.tokens, " "));
      write_png(file(fmt::format("attention_{}_flow{}.png", k + 1, t)), render_flow(page, t));
      ++images;
    }
  }
  return attention_table_text(table) +
         fmt::format("wrote {}, attention_stats.json, {}{}{}\n", (fs::path(r.out_dir) / "attention_stats.csv").string(),
                     png.filename().string(),
                     r.html ? fmt::format(", attention_1.html to attention_{}.html", pages.size()) : "",
                     images ? fmt::format(", {} view images", images) : "");
}

}  // namespace xcam

// One attention analysis (xcam/attention_run.h): what `xcam attention` and the
// YAML task `attention` run.
#include "xcam/attention_run.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "xcam/attention_html.h"
#include "xcam/attention_outputs.h"
#include "xcam/attention_views.h"
#include "xcam/error.h"
#include "xcam/image.h"
#include "xcam/io.h"
#include "xcam/render.h"
#include "xcam/tokenizer.h"

namespace fs = std::filesystem;

namespace xcam {

namespace {

// One text's or image's attention: its statistics [layer][head], and its
// page when pages or views are asked for.
struct Sequence {
  std::vector<std::vector<HeadStats>> stats;
  AttentionPage page;
};

std::vector<Sequence> text_sequences(const AttentionRun& r, bool pages, bool& has_cls) {
  XCAM_CHECK(!r.tokenizer.empty(),
             "`xcam attention` needs the model's tokenizer: give --tokenizer tokenizer.json (the zoo BERT's is "
             "zoo/models/tokenizers/bert/tokenizer.json)");
  XCAM_CHECK(fs::is_regular_file(r.tokenizer),
             "tokenizer '{}' does not exist; give --tokenizer the model's Hugging Face tokenizer.json",
             r.tokenizer);
  const auto tok = Tokenizer::from_file(r.tokenizer);
  const auto net = AttentionModel::load(r.model);
  std::vector<Sequence> out;
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
    XCAM_CHECK(out.empty() || out.front().stats.size() == att.layers.size(),
               "model '{}' returned {} attention layers for one text and {} for another", r.model,
               out.empty() ? 0 : out.front().stats.size(), att.layers.size());
    Sequence seq;
    for (const auto& layer : att.layers) seq.stats.push_back(layer_head_stats(layer.data(), att.heads, att.tokens, facts));
    if (pages) {
      seq.page.title = fmt::format("{}: text {} of {}", fs::path(r.model).filename().string(), out.size() + 1,
                                   r.texts.size());
      seq.page.tokens = enc.tokens;
      seq.page.special = enc.special;
      seq.page.heads = att.heads;
      seq.page.layers = att.layers;
    }
    out.push_back(std::move(seq));
  }
  return out;
}

// A vision model's token as text: its cell "row,col" on the grid, or "#k"
// off the image (CLS and other prefix tokens, text).
std::string token_name(const AttentionCapture::Layer& layer, size_t k) {
  const auto& c = layer.centre[k];
  if (!std::isfinite(c[0])) return fmt::format("#{}", k);
  return fmt::format("{},{}", static_cast<int64_t>(c[0] / layer.cell_h), static_cast<int64_t>(c[1] / layer.cell_w));
}

// `prefix`: the most tokens any layer has before its first one on the image.
std::vector<Sequence> image_sequences(const AttentionRun& r, bool pages, int64_t& prefix,
                                      std::vector<std::string>& layer_names) {
  ExplainerOptions eo = r.explainer;
  eo.model = r.model;
  eo.method = "attention";
  XCAM_CHECK(!eo.layers.empty(),
             "`xcam attention` on images reads the attention at taps inside the attention modules: give --layer, "
             "e.g. 'blocks.*.attn/softmax' ('*' stands for one path component; `xcam layers MODEL --ops PATH` lists "
             "a module's ops)");
  Explainer ex(eo);
  layer_names = ex.layers();
  std::vector<Sequence> out;
  for (const auto& image : r.images) {
    const auto& path = image.path;
    SampleInput sample;
    sample.id = fs::path(path).stem().string();
    sample.image = load_rgb(path);
    sample.text = image.text;
    sample.meta = image.meta;
    const auto cap = ex.attention_of(sample);
    Sequence seq;
    for (const auto& layer : cap.layers) {
      TokenFacts facts;
      facts.window = r.window;
      facts.centre = layer.centre;
      facts.cell_h = layer.cell_h;
      facts.cell_w = layer.cell_w;
      // The tokens before the first one on the image are its prefix (CLS,
      // distillation, register tokens): cls_share is their share.
      bool before = true;
      for (const auto& c : layer.centre) {
        before = before && !std::isfinite(c[0]);
        facts.cls.push_back(before);
      }
      prefix = std::max<int64_t>(prefix, std::count(facts.cls.begin(), facts.cls.end(), true));
      seq.stats.push_back(layer_head_stats(layer.attention.data(), layer.heads, layer.tokens, facts));
    }
    if (pages) {
      const auto& first = cap.layers.front();
      for (const auto& layer : cap.layers)
        XCAM_CHECK(layer.heads == first.heads && layer.tokens == first.tokens,
                   "the pages and views draw every layer over one sequence; layer '{}' has {} heads over {} tokens "
                   "and layer '{}' {} over {}: ask for them without --html, --views and --flow, or tap layers of "
                   "one kind",
                   first.name, first.heads, first.tokens, layer.name, layer.heads, layer.tokens);
      seq.page.title = fmt::format("{}: {} ({} x {} input)", fs::path(r.model).filename().string(), path,
                                   cap.height, cap.width);
      for (size_t k = 0; k < first.centre.size(); ++k) {
        seq.page.tokens.push_back(token_name(first, k));
        seq.page.special.push_back(!std::isfinite(first.centre[k][0]));
      }
      seq.page.heads = first.heads;
      for (const auto& layer : cap.layers) seq.page.layers.push_back(layer.attention);
    }
    out.push_back(std::move(seq));
  }
  return out;
}

}  // namespace

std::string run_attention(const AttentionRun& r) {
  const bool images = !r.images.empty();
  XCAM_CHECK(images != !r.texts.empty(), "the attention analysis of '{}' takes texts or images, {}", r.model,
             images ? "not both" : "and has neither; give one or more");
  for (const double v : {r.rules.structured, r.rules.local, r.rules.broad})
    XCAM_CHECK(v >= 0 && v <= 1, "attention label rules (structured {}, local {}, broad {}) must be shares in [0, 1]",
               r.rules.structured, r.rules.local, r.rules.broad);
  XCAM_CHECK(std::find(head_stat_names().begin(), head_stat_names().end(), r.stat) != head_stat_names().end(),
             "--stat '{}' is not a head statistic; expected one of {}", r.stat, fmt::join(head_stat_names(), ", "));
  const bool pages = r.html || r.views || !r.flows.empty();
  bool has_cls = false;
  int64_t prefix = 0;
  AttentionTable table;
  const auto seqs =
      images ? image_sequences(r, pages, prefix, table.layer_names) : text_sequences(r, pages, has_cls);
  table.window = r.window;
  table.rules = r.rules;
  table.texts = static_cast<int64_t>(seqs.size());
  table.samples = images ? "images" : "texts";
  table.distance = images ? "pixels" : "tokens";
  for (size_t l = 0; l < seqs.front().stats.size(); ++l) {
    table.rows.emplace_back();
    for (size_t h = 0; h < seqs.front().stats[l].size(); ++h) {
      std::vector<HeadStats> each;
      for (const auto& t : seqs) each.push_back(t.stats[l][h]);
      table.rows.back().push_back(mean_head_stats(each));
    }
  }
  label_table(table, has_cls || prefix > 0);
  // Images: the tokens before the grid are one CLS token, or a longer
  // prefix (register tokens, a VLM's system prompt before the image).
  for (auto& row : table.labels)
    for (auto& label : row)
      if (prefix > 1 && label == "CLS") label = "prefix";
  fs::create_directories(r.out_dir);
  write_file_atomic((fs::path(r.out_dir) / "attention_stats.csv").string(), attention_table_csv(table));
  write_file_atomic((fs::path(r.out_dir) / "attention_stats.json").string(), attention_table_json(table));
  const auto png = fs::path(r.out_dir) / ("attention_" + r.stat + ".png");
  write_attention_heatmap(png.string(), table, r.stat);
  size_t images_written = 0, pages_written = 0;
  for (size_t k = 0; pages && k < seqs.size(); ++k) {
    auto page = seqs[k].page;
    page.labels = table.labels;
    auto file = [&](const std::string& name) { return (fs::path(r.out_dir) / name).string(); };
    if (r.html) {
      write_file_atomic(file(fmt::format("attention_{}.html", k + 1)), attention_html(page));
      ++pages_written;
    }
    if (r.views) {
      for (int64_t l = 0; l < static_cast<int64_t>(page.layers.size()); ++l, ++images_written)
        write_png(file(fmt::format("attention_{}_layer{}.png", k + 1, l)), render_layer_heads(page, l));
      for (int64_t h = 0; h < page.heads; ++h, ++images_written)
        write_png(file(fmt::format("attention_{}_head{}.png", k + 1, h)), render_head_layers(page, h));
    }
    for (const int64_t t : r.flows) {
      XCAM_CHECK(t >= 0 && t < static_cast<int64_t>(page.tokens.size()),
                 "--flow {}: {} {} has tokens 0 to {} ({})", t, images ? "image" : "text", k + 1,
                 page.tokens.size() - 1, fmt::join(page.tokens, " "));
      write_png(file(fmt::format("attention_{}_flow{}.png", k + 1, t)), render_flow(page, t));
      ++images_written;
    }
  }
  return attention_table_text(table) +
         fmt::format("wrote {}, attention_stats.json, {}{}{}\n", (fs::path(r.out_dir) / "attention_stats.csv").string(),
                     png.filename().string(),
                     pages_written ? fmt::format(", attention_1.html to attention_{}.html", pages_written) : "",
                     images_written ? fmt::format(", {} view images", images_written) : "");
}

}  // namespace xcam

// xcam::Tokenizer against the `tokenizers` library: ids, offsets, pairs,
// chat prompts and decodings of >= 10,000 strings per zoo tokenizer
// (references from zoo/tokenizer_fixtures.py), hand-checked offsets, and the
// errors users see for files xcam cannot read.
#include "xcam/tokenizer.h"

#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "../common.h"
#include "xcam/error.h"

namespace {

using nlohmann::json;
using xcam::Tokenizer;

std::string zoo_tokenizer(const std::string& name) {
  return xcam::test::source("zoo/models/tokenizers/" + name + "/tokenizer.json");
}

// The zoo's tokenizers (10,500 strings each), and the fixture's own ones
// (5,000 each) for the parts of tokenizer.json the zoo's do not use.
bool in_zoo(const std::string& name) { return name == "qwen2" || name == "bert" || name == "wordlevel"; }
Tokenizer load(const std::string& name) {
  return Tokenizer::from_file(in_zoo(name) ? zoo_tokenizer(name) : xcam::test::models("tokenizer/" + name + ".json"));
}
size_t min_strings(const std::string& name) { return in_zoo(name) ? 10000 : 5000; }

std::vector<json> fixture_lines(const std::string& name) {
  const std::string path = xcam::test::models("tokenizer/" + name + ".jsonl");
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path << " is missing; ctest's zoo_tokenizer_fixtures makes it";
  std::vector<json> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(json::parse(line));
  return lines;
}

// The string with everything outside printable ASCII escaped, for failure messages.
std::string escaped(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += ch;
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  return out;
}

std::string ids_str(const std::vector<int64_t>& ids) { return fmt::format("[{}]", fmt::join(ids, ", ")); }

// Checks every fixture line of `name` that has `key`: `diff` returns "" where
// xcam agrees with the library, else what differs. Fails the test with the
// count and the first few differences; returns how many lines it checked.
size_t expect_all_equal(const std::string& name, const char* key, const char* what,
                        const std::function<std::string(const json&)>& diff) {
  size_t checked = 0, count = 0;
  std::string first;
  for (const auto& line : fixture_lines(name)) {
    if (!line.contains(key)) continue;
    ++checked;
    const std::string d = diff(line);
    if (!d.empty() && ++count <= 8) first += "\n  " + d;
  }
  EXPECT_EQ(count, 0u) << count << " of " << checked << " " << what << " differ:" << first;
  return checked;
}

std::string offsets_str(const std::vector<std::pair<size_t, size_t>>& offsets) {
  std::string out;
  for (const auto& [b, e] : offsets) out += fmt::format("({},{})", b, e);
  return out;
}

class TokenizerLibrary : public testing::TestWithParam<std::string> {};

// Every corpus line has "offsets"; pair, chat and decode lines do not.
TEST_P(TokenizerLibrary, IdsEqualTheLibrarysOnTheCorpus) {
  const Tokenizer tok = load(GetParam());
  const size_t checked = expect_all_equal(GetParam(), "offsets", "strings", [&](const json& line) {
    const std::string text = line["text"].get<std::string>();
    const auto want = line["ids"].get<std::vector<int64_t>>(), got = tok.ids(text);
    return got == want ? "" : fmt::format("\"{}\": library {}, xcam {}", escaped(text), ids_str(want), ids_str(got));
  });
  EXPECT_GE(checked, min_strings(GetParam()));
}

TEST_P(TokenizerLibrary, OffsetsEqualTheLibrarysOnTheCorpus) {
  const Tokenizer tok = load(GetParam());
  const size_t checked = expect_all_equal(GetParam(), "offsets", "strings", [&](const json& line) {
    const std::string text = line["text"].get<std::string>();
    const auto want = line["offsets"].get<std::vector<std::pair<size_t, size_t>>>();
    const auto got = tok.encode(text).offsets;
    return got == want ? ""
                       : fmt::format("\"{}\": library {}, xcam {}", escaped(text), offsets_str(want),
                                     offsets_str(got));
  });
  EXPECT_GE(checked, min_strings(GetParam()));
}

TEST_P(TokenizerLibrary, DecodeEqualsTheLibrarys) {
  const Tokenizer tok = load(GetParam());
  const size_t checked = expect_all_equal(GetParam(), "decode", "decodings", [&](const json& line) {
    const auto ids = line["decode"].get<std::vector<int64_t>>();
    const std::string want = line["text"].get<std::string>();
    const std::string got = tok.decode(ids, line["skip_special"].get<bool>());
    return got == want ? "" : fmt::format("{}: library \"{}\", xcam \"{}\"", ids_str(ids), escaped(want),
                                          escaped(got));
  });
  EXPECT_GE(checked, 2000u);
}

INSTANTIATE_TEST_SUITE_P(Zoo, TokenizerLibrary, testing::Values("qwen2", "bert", "wordlevel"),
                         [](const testing::TestParamInfo<std::string>& p) { return p.param; });
INSTANTIATE_TEST_SUITE_P(Options, TokenizerLibrary,
                         testing::Values("bytelevel_options", "wordpiece_options", "metaspace_options",
                                         "split_options"),
                         [](const testing::TestParamInfo<std::string>& p) { return p.param; });

class TokenizerPairs : public testing::TestWithParam<std::string> {};

TEST_P(TokenizerPairs, PairsEqualTheLibrarys) {
  const Tokenizer tok = load(GetParam());
  const size_t checked = expect_all_equal(GetParam(), "pair", "pairs", [&](const json& line) {
    const std::string a = line["text"].get<std::string>(), b = line["pair"].get<std::string>();
    const auto want = line["ids"].get<std::vector<int64_t>>(), got = tok.encode_pair(a, b).ids;
    return got == want ? "" : fmt::format("(\"{}\", \"{}\"): library {}, xcam {}", escaped(a), escaped(b),
                                          ids_str(want), ids_str(got));
  });
  EXPECT_GE(checked, 500u);
}

// BertProcessing, RobertaProcessing and TemplateProcessing's pair forms.
INSTANTIATE_TEST_SUITE_P(Post, TokenizerPairs, testing::Values("bert", "wordpiece_options", "bytelevel_options"),
                         [](const testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(Tokenizer, BertPairHasSegmentTypeIds) {
  const Tokenizer tok = Tokenizer::from_file(zoo_tokenizer("bert"));
  const auto e = tok.encode_pair("red circle", "blue");
  // [CLS] red circle [SEP] blue [SEP]
  ASSERT_EQ(e.ids.size(), 6u);
  EXPECT_EQ(e.type_ids, (std::vector<uint32_t>{0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(e.special, (std::vector<bool>{true, false, false, true, false, true}));
  EXPECT_EQ(e.tokens.front(), "[CLS]");
  EXPECT_EQ(e.tokens.back(), "[SEP]");
}

TEST(Tokenizer, ChatPromptsEqualTheTemplateAndTheLibrarysIds) {
  const Tokenizer tok = Tokenizer::from_file(zoo_tokenizer("qwen2"));
  const size_t checked = expect_all_equal("qwen2", "chat", "chats", [&](const json& line) {
    std::vector<xcam::ChatMessage> messages;
    for (const auto& msg : line["chat"]) {
      xcam::ChatMessage cm{msg["role"].get<std::string>(), {}};
      for (const auto& part : msg["content"]) {
        cm.content.push_back(part["type"] == "image" ? xcam::ChatPart::of_image(part["tokens"].get<int64_t>())
                                                     : xcam::ChatPart::of_text(part["text"].get<std::string>()));
      }
      messages.push_back(std::move(cm));
    }
    const std::string want = line["prompt"].get<std::string>();
    const std::string got = tok.chat_prompt(messages, line["add_generation_prompt"].get<bool>());
    if (got != want) return fmt::format("template \"{}\", xcam \"{}\"", escaped(want), escaped(got));
    if (tok.ids(got) != line["ids"].get<std::vector<int64_t>>()) return fmt::format("ids of \"{}\"", escaped(got));
    return std::string();
  });
  EXPECT_GE(checked, 300u);
}

TEST(Tokenizer, ZooTokenizersLoadWithTheirSpecialTokens) {
  const Tokenizer qwen = Tokenizer::from_file(zoo_tokenizer("qwen2"));
  // Qwen2-VL's added tokens follow the vocabulary, in Qwen2-VL's order.
  const int64_t base = *qwen.token_to_id("<|endoftext|>");
  const char* names[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                         "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                         "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"};
  for (int64_t k = 0; k < 14; ++k) {
    EXPECT_EQ(qwen.token_to_id(names[k]), base + k) << names[k];
    EXPECT_TRUE(qwen.is_special(base + k));
  }
  EXPECT_EQ(qwen.vocab_size(), base + 14);
  EXPECT_EQ(qwen.eos_id(), qwen.token_to_id("<|im_end|>"));
  EXPECT_EQ(qwen.pad_id(), qwen.token_to_id("<|endoftext|>"));
  EXPECT_FALSE(qwen.bos_id().has_value());
  EXPECT_NE(qwen.chat_template().find("<|im_start|>"), std::string::npos);

  // Special tokens in the middle of text, with and without spaces, are their ids.
  const int64_t pad = *qwen.token_to_id("<|image_pad|>"), start = *qwen.token_to_id("<|vision_start|>");
  const auto e = qwen.encode("how many<|vision_start|><|image_pad|><|image_pad|> circles <|image_pad|>?");
  EXPECT_EQ(std::count(e.ids.begin(), e.ids.end(), pad), 3);
  EXPECT_EQ(std::count(e.ids.begin(), e.ids.end(), start), 1);
  EXPECT_EQ(qwen.id_to_token(pad), "<|image_pad|>");
  EXPECT_THROW(qwen.id_to_token(qwen.vocab_size()), xcam::Error);
  // Not a special token: the same characters, split.
  const auto partial = qwen.ids("<|image_pad");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), pad), 0);

  const Tokenizer bert = Tokenizer::from_file(zoo_tokenizer("bert"));
  const auto b = bert.encode("count [MASK] circles");
  EXPECT_EQ(b.ids.front(), *bert.token_to_id("[CLS]"));
  EXPECT_EQ(b.ids.back(), *bert.token_to_id("[SEP]"));
  EXPECT_EQ(b.ids[2], *bert.token_to_id("[MASK]"));
  EXPECT_EQ(bert.decode(b.ids), "count circles");
  EXPECT_EQ(bert.decode(b.ids, false), "[CLS] count [MASK] circles [SEP]");
  // without the template: no [CLS] / [SEP]
  EXPECT_EQ(bert.ids("count", false).size(), 1u);
}

// One tokenizer shared by threads (the BPE word cache is shared): the same
// ids as one thread gets.
TEST(Tokenizer, EncodesFromSeveralThreadsAtOnce) {
  const Tokenizer tok = Tokenizer::from_file(zoo_tokenizer("qwen2"));
  std::vector<std::string> texts;
  for (const auto& line : fixture_lines("qwen2"))
    if (line.contains("offsets")) texts.push_back(line["text"].get<std::string>());
  ASSERT_GE(texts.size(), 10000u);
  std::vector<std::vector<int64_t>> want;
  for (const auto& t : texts) want.push_back(tok.ids(t));
  const Tokenizer fresh = Tokenizer::from_file(zoo_tokenizer("qwen2"));  // a cold cache
  std::vector<size_t> wrong(4, 0);
  std::vector<std::thread> threads;
  for (size_t k = 0; k < wrong.size(); ++k) {
    threads.emplace_back([&, k] {
      for (size_t i = k; i < texts.size() * 2; i += 3) {  // overlapping strides: the same words at once
        const size_t at = i % texts.size();
        wrong[k] += fresh.ids(texts[at]) != want[at];
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong, std::vector<size_t>(4, 0));
}

TEST(Tokenizer, OffsetsPointIntoTheInput) {
  const Tokenizer qwen = Tokenizer::from_file(zoo_tokenizer("qwen2"));
  // "é" is two bytes, the emoji four: byte-level tokens covering part of a
  // character carry the whole character's range.
  const std::string text = "Café 🙂<|im_end|> 12";
  const auto e = qwen.encode(text);
  ASSERT_EQ(e.ids.size(), e.offsets.size());
  for (size_t i = 0; i < e.ids.size(); ++i) {
    const auto [b, en] = e.offsets[i];
    ASSERT_LE(b, en);
    ASSERT_LE(en, text.size());
  }
  const auto im_end = std::find(e.ids.begin(), e.ids.end(), *qwen.token_to_id("<|im_end|>")) - e.ids.begin();
  EXPECT_EQ(e.offsets[static_cast<size_t>(im_end)], (std::pair<size_t, size_t>{10, 20}));
  // " 12": Qwen2's pattern takes digits one by one, and the space alone
  EXPECT_EQ(e.offsets[e.offsets.size() - 3], (std::pair<size_t, size_t>{20, 21}));
  EXPECT_EQ(e.offsets[e.offsets.size() - 2], (std::pair<size_t, size_t>{21, 22}));
  EXPECT_EQ(e.offsets.back(), (std::pair<size_t, size_t>{22, 23}));

  const Tokenizer bert = Tokenizer::from_file(zoo_tokenizer("bert"));
  // lowercased and accent-stripped, the offsets are still the input's
  const auto b = bert.encode("  RÉD (circle)");
  ASSERT_EQ(b.tokens.size(), 6u);  // [CLS] red ( circle ) [SEP]
  EXPECT_EQ(b.tokens[1], "red");
  EXPECT_EQ(b.offsets[0], (std::pair<size_t, size_t>{0, 0}));
  EXPECT_EQ(b.offsets[1], (std::pair<size_t, size_t>{2, 6}));
  EXPECT_EQ(b.offsets[2], (std::pair<size_t, size_t>{7, 8}));
  EXPECT_EQ(b.offsets[3], (std::pair<size_t, size_t>{8, 14}));
  EXPECT_EQ(b.offsets[4], (std::pair<size_t, size_t>{14, 15}));
}

// A minimal tokenizer.json with the given model, for the error cases.
std::string tiny_json(const std::string& model) {
  return R"({"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
             "post_processor": null, "decoder": null, "model": )" + model + "}";
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const xcam::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Tokenizer, ErrorsNameTheFileAndWhatToDo) {
  const std::string missing = error_of([] { Tokenizer::from_file("/nonexistent/tokenizer.json"); });
  EXPECT_NE(missing.find("'/nonexistent/tokenizer.json' cannot be read"), std::string::npos) << missing;

  const std::string malformed = error_of([] { Tokenizer::from_json("{\"model\": {", "broken.json"); });
  EXPECT_NE(malformed.find("'broken.json' is not valid JSON"), std::string::npos) << malformed;

  const std::string unigram = error_of(
      [] { Tokenizer::from_json(tiny_json(R"({"type": "Unigram", "unk_id": 0, "vocab": [["a", 0.0]]})"), "u.json"); });
  EXPECT_NE(unigram.find("tokenizer.json 'u.json': model type 'Unigram' is not supported; xcam reads BPE, WordPiece "
                         "and WordLevel"),
            std::string::npos)
      << unigram;

  const std::string normalizer = error_of([] {
    Tokenizer::from_json(R"({"model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"},
                             "normalizer": {"type": "Precompiled", "precompiled_charsmap": ""}})", "p.json");
  });
  EXPECT_NE(normalizer.find("normalizer 'Precompiled' is not supported"), std::string::npos) << normalizer;

  const std::string merge = error_of([] {
    Tokenizer::from_json(tiny_json(R"({"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]})"), "m.json");
  });
  EXPECT_NE(merge.find("'ab' is not in the vocabulary"), std::string::npos) << merge;

  const Tokenizer wl = Tokenizer::from_file(zoo_tokenizer("wordlevel"));
  const std::string utf8 = error_of([&] { wl.encode("ok \xff\xfe"); });
  EXPECT_NE(utf8.find("not valid UTF-8 (byte 3 of 5)"), std::string::npos) << utf8;

  const std::string chat = error_of([&] { wl.chat_prompt({{"user", {xcam::ChatPart::of_text("hi")}}}, true); });
  EXPECT_NE(chat.find("has no '<|im_start|>' token"), std::string::npos) << chat;
}

TEST(Tokenizer, BpeMergesInBothFormatsAndByteFallback) {
  // "a b" strings and ["a", "b"] lists give the same merges; ranks decide.
  const std::string vocab = R"({"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5, "<0x64>": 6, "[UNK]": 7})";
  for (const std::string& merges : {std::string(R"(["b c", "a b", "a bc"])"),
                                   std::string(R"([["b", "c"], ["a", "b"], ["a", "bc"]])")}) {
    const Tokenizer t = Tokenizer::from_json(
        tiny_json(R"({"type": "BPE", "byte_fallback": true, "unk_token": "[UNK]", "vocab": )" + vocab +
                  R"(, "merges": )" + merges + "}"),
        "bpe.json");
    EXPECT_EQ(t.ids("abc"), (std::vector<int64_t>{5}));   // b c first, then a bc
    EXPECT_EQ(t.ids("abd"), (std::vector<int64_t>{3, 6}));  // d: byte fallback <0x64>
    EXPECT_EQ(t.ids("abe"), (std::vector<int64_t>{3, 7}));  // e: no byte token, unknown
  }
}

}  // namespace

// xcam::Tokenizer: reads a Hugging Face tokenizer.json and encodes text to the
// same ids as the `tokenizers` library (byte-level BPE as in GPT-2 / Qwen2,
// WordPiece as in BERT, WordLevel), with its added and special tokens, its
// post-processor (the [CLS] ... [SEP] template) and its decoder; and builds
// ChatML prompts (Qwen2-VL's chat template) for decoder-only VLMs.
//
// No LibTorch here: ids are plain int64 vectors, ready for torch::tensor.
// What is supported and how it is tested: docs/tokenizer.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace xcam {

// One part of a chat message: text, or an image that stands for
// `image_tokens` <|image_pad|> tokens between <|vision_start|> and
// <|vision_end|> (the count the vision encoder yields for that image).
struct ChatPart {
  enum class Kind { text, image };
  Kind kind = Kind::text;
  std::string text;
  int64_t image_tokens = 1;

  static ChatPart of_text(std::string t) { return {Kind::text, std::move(t), 0}; }
  static ChatPart of_image(int64_t tokens) { return {Kind::image, {}, tokens}; }
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::vector<ChatPart> content;
};

class Tokenizer {
 public:
  struct Encoding {
    std::vector<int64_t> ids;
    std::vector<std::string> tokens;  // the vocabulary's strings (byte-level: Ġ for a space)
    // Byte offsets [begin, end) into the encoded text (the first text for a
    // pair's first part, the second's for its second part); (0, 0) for the
    // tokens the post-processor adds.
    std::vector<std::pair<size_t, size_t>> offsets;
    std::vector<bool> special;     // special added tokens, in the text or from the post-processor
    std::vector<uint32_t> type_ids;  // 0, or the template's type id (1 for BERT's second segment)
  };

  // Reads `tokenizer_json`, and tokenizer_config.json beside it when there is
  // one (its chat_template and its bos / eos / pad token names). Throws
  // xcam::Error naming the file and the part it cannot read.
  static Tokenizer from_file(const std::string& tokenizer_json);
  // The same from the text of a tokenizer.json; `name` names it in errors.
  static Tokenizer from_json(const std::string& json_text, const std::string& name);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // `text` must be valid UTF-8. add_special_tokens applies the
  // post-processor (BERT's [CLS] ... [SEP]); special tokens written in the
  // text become their ids either way.
  Encoding encode(std::string_view text, bool add_special_tokens = true) const;
  // A pair (BERT's sentence A / sentence B) through the post-processor's pair template.
  Encoding encode_pair(std::string_view first, std::string_view second,
                       bool add_special_tokens = true) const;
  std::vector<int64_t> ids(std::string_view text, bool add_special_tokens = true) const;

  // Ids back to text through the decoder; unknown ids are skipped, as the
  // library does. Invalid UTF-8 from byte-level pieces becomes U+FFFD.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;

  std::optional<int64_t> token_to_id(std::string_view token) const;
  // The token's string; throws for an id outside the vocabulary.
  std::string id_to_token(int64_t id) const;
  // The model's vocabulary and the added tokens: one past the largest id.
  int64_t vocab_size() const;
  bool is_special(int64_t id) const;

  // The ChatML prompt of `messages` as Qwen2-VL's chat template renders it
  // (a default system turn when the first message is not one), every image
  // widened to its <|image_pad|> count; add_generation_prompt ends it with
  // the assistant's opening. Needs a tokenizer that has <|im_start|> and
  // <|im_end|> (and the vision tokens when a message holds an image).
  std::string chat_prompt(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // tokenizer_config.json's chat_template ("" when there was none).
  const std::string& chat_template() const;
  // tokenizer_config.json's eos_token / bos_token / pad_token, when set.
  std::optional<int64_t> eos_id() const;
  std::optional<int64_t> bos_id() const;
  std::optional<int64_t> pad_id() const;

  const std::string& name() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace xcam

// xcam::Tokenizer: a Hugging Face tokenizer.json run in C++ with the
// `tokenizers` library's semantics (its Rust source is the reference for
// every step below: added-token extraction, normalizers, pre-tokenizers,
// models, post-processors, decoders). Unicode: ICU (categories, normalization,
// case mapping, and the pre-tokenizers' regexes).
//
// A text goes through:
//   1. added tokens with normalized = false are cut out of the raw text;
//   2. the rest is normalized, and added tokens with normalized = true are cut
//      out of the normalized pieces;
//   3. the pre-tokenizer splits the remaining pieces into words;
//   4. the model turns each word into tokens (BPE with a per-word cache);
//   5. the post-processor adds the template's special tokens.
// Every piece keeps, per byte, the range of the input it came from, so a
// token's offsets point into the caller's text.
#include "xcam/tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "xcam/error.h"

namespace xcam {

namespace {

using nlohmann::json;
using Range = std::pair<size_t, size_t>;

// ---------------------------------------------------------------- UTF-8

size_t utf8_len(unsigned char lead) { return lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2; }

// The code point at s[i] (s is valid UTF-8); i moves past it.
char32_t next_cp(std::string_view s, size_t& i) {
  const auto lead = static_cast<unsigned char>(s[i]);
  const size_t n = utf8_len(lead);
  if (n == 1) {
    ++i;
    return lead;
  }
  char32_t cp = lead & (0x3Fu >> (n - 1));
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3Fu);
  i += n;
  return cp;
}

void put_cp(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the well-formed UTF-8 sequence at s[i] (1 to 4), or how many
// bytes form its longest ill-formed prefix, negated (-1 to -3): Unicode's
// "maximal subpart", the unit that one U+FFFD replaces.
int utf8_step(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  int need = 0;
  unsigned lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c == 0xE0) {
    need = 2, lo = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    need = 2;
  } else if (c == 0xED) {
    need = 2, hi = 0x9F;
  } else if (c == 0xF0) {
    need = 3, lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    need = 3;
  } else if (c == 0xF4) {
    need = 3, hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k <= need; ++k) {
    if (i + static_cast<size_t>(k) >= s.size()) return -k;
    const auto d = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
    if (d < (k == 1 ? lo : 0x80u) || d > (k == 1 ? hi : 0xBFu)) return -k;
  }
  return need + 1;
}

// Byte index of the first ill-formed sequence, or npos.
size_t invalid_utf8_at(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const int n = utf8_step(s, i);
    if (n < 0) return i;
    i += static_cast<size_t>(n);
  }
  return std::string_view::npos;
}

// Bytes to text the way Rust's String::from_utf8_lossy does.
std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const int n = utf8_step(s, i);
    if (n > 0) {
      out.append(s.substr(i, static_cast<size_t>(n)));
      i += static_cast<size_t>(n);
    } else {
      out += "\xEF\xBF\xBD";
      i += static_cast<size_t>(-n);
    }
  }
  return out;
}

// ------------------------------------------------------ Unicode properties

bool is_white_space(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}

// The library's BERT normalizer, BERT pre-tokenizer and Punctuation take
// categories from the unicode_categories crate, whose tables are Unicode 8.0:
// a character assigned later has no category there.
int8_t category_unicode8(char32_t c) {
  UVersionInfo age;
  u_charAge(static_cast<UChar32>(c), age);
  if (age[0] > 8 || (age[0] == 8 && age[1] > 0)) return U_UNASSIGNED;
  return u_charType(static_cast<UChar32>(c));
}

bool bert_is_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  const int8_t t = category_unicode8(c);
  return t == U_CONTROL_CHAR || t == U_FORMAT_CHAR || t == U_PRIVATE_USE_CHAR || t == U_SURROGATE;
}

bool bert_is_punctuation(char32_t c) {
  if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
                       (c >= 0x7B && c <= 0x7E);
  const int8_t t = category_unicode8(c);
  return t == U_CONNECTOR_PUNCTUATION || t == U_DASH_PUNCTUATION || t == U_START_PUNCTUATION ||
         t == U_END_PUNCTUATION || t == U_INITIAL_PUNCTUATION || t == U_FINAL_PUNCTUATION ||
         t == U_OTHER_PUNCTUATION;
}

bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// Rust regex's \w: Alphabetic, marks, decimal digits, connector punctuation, ZWNJ / ZWJ.
bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  const auto u = static_cast<UChar32>(c);
  return u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) ||
         c == 0x200C || c == 0x200D;
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0;
}

// Rust's char::to_lowercase (full mapping, no context), appended to `out`.
template <class F>
void lowercase_each(char32_t c, F&& emit) {
  if (c < 0x80) {
    emit((c >= 'A' && c <= 'Z') ? c + 32 : c);
    return;
  }
  UChar src[2];
  int32_t len = 0;
  U16_APPEND_UNSAFE(src, len, static_cast<UChar32>(c));
  UChar dst[16];
  UErrorCode st = U_ZERO_ERROR;
  const int32_t n = u_strToLower(dst, 16, src, len, "", &st);
  if (U_FAILURE(st)) {
    emit(c);
    return;
  }
  for (int32_t k = 0; k < n;) {
    UChar32 cp;
    U16_NEXT(dst, k, n, cp);
    emit(static_cast<char32_t>(cp));
  }
}

// ------------------------------------------------- aligned normalized text

// A piece of the input after normalization: its UTF-8 text and, per byte,
// the byte range of the input it came from.
struct NStr {
  std::string text;
  std::vector<Range> align;
  size_t origin = 0;  // where an empty piece sits in the input
};

struct CharR {
  char32_t c;
  Range r;
};

NStr nstr_from(std::string_view s) {
  NStr n;
  n.text.assign(s);
  n.align.resize(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_len(static_cast<unsigned char>(s[i]));
    for (size_t k = 0; k < len; ++k) n.align[i + k] = {i, i + len};
    i += len;
  }
  return n;
}

NStr slice(const NStr& s, size_t b, size_t e) {
  NStr out;
  out.text = s.text.substr(b, e - b);
  out.align.assign(s.align.begin() + static_cast<std::ptrdiff_t>(b), s.align.begin() + static_cast<std::ptrdiff_t>(e));
  out.origin = b < s.align.size() ? s.align[b].first : s.align.empty() ? s.origin : s.align.back().second;
  return out;
}

std::vector<CharR> chars_of(const NStr& s) {
  std::vector<CharR> out;
  out.reserve(s.text.size());
  for (size_t i = 0; i < s.text.size();) {
    const size_t b = i;
    const char32_t c = next_cp(s.text, i);
    out.push_back({c, {s.align[b].first, s.align[i - 1].second}});
  }
  return out;
}

void assign_chars(NStr& s, const std::vector<CharR>& cs) {
  std::string text;
  std::vector<Range> align;
  text.reserve(cs.size());
  align.reserve(cs.size());
  for (const auto& ch : cs) {
    const size_t before = text.size();
    put_cp(text, ch.c);
    align.insert(align.end(), text.size() - before, ch.r);
  }
  if (!s.align.empty()) s.origin = s.align.front().first;
  s.text = std::move(text);
  s.align = std::move(align);
}

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x80; });
}

// The library's Unicode normalization (the unicode-normalization-alignments
// crate) knows Unicode 9.0: a later character neither decomposes, composes
// nor reorders there (combining class 0).
bool known_to_unicode9(char32_t c) {
  if (c < 0x300) return true;
  UVersionInfo age;
  u_charAge(static_cast<UChar32>(c), age);
  return age[0] < 9 || (age[0] == 9 && age[1] == 0);
}

uint8_t combining_class9(char32_t c) {
  return known_to_unicode9(c) ? u_getCombiningClass(static_cast<UChar32>(c)) : 0;
}

// NFD / NFKD (`decompose` is ICU's instance of that form), then canonical
// composition for NFC / NFKC, on the Unicode 9.0 repertoire. Alignment as
// the library's: every output character takes up `weight` input characters
// in order (1 for a character as such, 0 for the 2nd, 3rd... piece of a
// decomposition, the sum for a composition) and maps to the first of them;
// one that takes none maps to the last input character taken so far.
void unicode_normalize(NStr& s, const icu::Normalizer2& decompose, bool compose) {
  if (is_ascii(s.text)) return;
  struct Weighted {
    char32_t c;
    int weight;
  };
  const auto in = chars_of(s);
  std::vector<Weighted> d;
  d.reserve(in.size() + 8);
  icu::UnicodeString dec;
  for (const auto& ch : in) {
    if (!known_to_unicode9(ch.c) || !decompose.getDecomposition(static_cast<UChar32>(ch.c), dec)) {
      d.push_back({ch.c, 1});
      continue;
    }
    for (int32_t k = 0; k < dec.length();) {
      const UChar32 cp = dec.char32At(k);
      d.push_back({static_cast<char32_t>(cp), k == 0 ? 1 : 0});
      k += U16_LENGTH(cp);
    }
  }
  // canonical ordering: runs of non-starters sorted by combining class
  for (size_t i = 0; i < d.size();) {
    if (combining_class9(d[i].c) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && combining_class9(d[j].c) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i), d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](const Weighted& a, const Weighted& b) {
                       return combining_class9(a.c) < combining_class9(b.c);
                     });
    i = j;
  }
  std::vector<Weighted> out;
  if (compose) {
    UErrorCode st = U_ZERO_ERROR;
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(st);
    XCAM_CHECK(U_SUCCESS(st), "ICU has no NFC normalizer ({}); is libicu's data installed?", u_errorName(st));
    out.reserve(d.size());
    size_t starter = std::string::npos;
    uint8_t last_cc = 0;
    for (const auto& ch : d) {
      const uint8_t cc = combining_class9(ch.c);
      if (starter != std::string::npos && known_to_unicode9(ch.c)) {
        const bool adjacent = starter + 1 == out.size();
        if (adjacent || (last_cc != 0 && last_cc < cc)) {
          const UChar32 c = nfc->composePair(static_cast<UChar32>(out[starter].c), static_cast<UChar32>(ch.c));
          if (c >= 0 && known_to_unicode9(static_cast<char32_t>(c))) {
            out[starter].c = static_cast<char32_t>(c);
            out[starter].weight += ch.weight;
            continue;
          }
        }
      }
      if (cc == 0) starter = out.size();
      last_cc = cc;
      out.push_back(ch);
    }
  } else {
    out.swap(d);
  }
  std::vector<CharR> aligned;
  aligned.reserve(out.size());
  size_t pos = 0;
  for (const auto& ch : out) {
    Range r{0, 0};
    if (ch.weight > 0 && pos < in.size()) {
      r = in[pos].r;
      pos += static_cast<size_t>(ch.weight);
    } else if (pos > 0) {
      r = in[pos - 1].r;
    }
    aligned.push_back({ch.c, r});
  }
  assign_chars(s, aligned);
}

const icu::Normalizer2& icu_normalizer(const std::string& form) {
  UErrorCode st = U_ZERO_ERROR;
  const icu::Normalizer2* n = form == "NFC"    ? icu::Normalizer2::getNFCInstance(st)
                              : form == "NFD"  ? icu::Normalizer2::getNFDInstance(st)
                              : form == "NFKC" ? icu::Normalizer2::getNFKCInstance(st)
                                               : icu::Normalizer2::getNFKDInstance(st);
  XCAM_CHECK(U_SUCCESS(st) && n != nullptr, "ICU has no {} normalizer ({}); is libicu's data installed?", form,
             u_errorName(st));
  return *n;
}

// ------------------------------------------------------------------ regex

// Matches of a pattern as (byte range, is_match), covering the whole text.
using Matches = std::vector<std::pair<Range, bool>>;

// Oniguruma's (and Rust regex's) \s is Unicode White_Space; ICU's lacks
// U+000B and U+0085, so \s and \S are spelled as the property for ICU.
std::string icu_pattern(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 16);
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      if (n == 's') {
        out += "\\p{White_Space}";
      } else if (n == 'S') {
        out += "\\P{White_Space}";
      } else {
        out += p[i];
        out += n;
      }
      ++i;
    } else {
      out += p[i];
    }
  }
  return out;
}

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    UParseError pe{};
    UErrorCode st = U_ZERO_ERROR;
    pattern_.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(icu_pattern(pattern)), 0, pe, st));
    XCAM_CHECK(U_SUCCESS(st) && pattern_, "{}: regex '{}' does not compile with ICU ({} at offset {}); xcam runs the "
               "patterns of tokenizer.json with ICU regular expressions, use that syntax", where, pattern,
               u_errorName(st), pe.offset);
  }

  Matches find(std::string_view text) const {
    if (text.empty()) return {{{0, 0}, false}};
    std::vector<UChar> u16;
    std::vector<size_t> at;  // byte offset of each UTF-16 unit, and the end
    u16.reserve(text.size());
    at.reserve(text.size() + 1);
    for (size_t i = 0; i < text.size();) {
      const size_t b = i;
      const auto c = static_cast<UChar32>(next_cp(text, i));
      if (c < 0x10000) {
        u16.push_back(static_cast<UChar>(c));
        at.push_back(b);
      } else {
        u16.push_back(U16_LEAD(c));
        u16.push_back(U16_TRAIL(c));
        at.push_back(b);
        at.push_back(b);
      }
    }
    at.push_back(text.size());
    const icu::UnicodeString input(false, u16.data(), static_cast<int32_t>(u16.size()));
    UErrorCode st = U_ZERO_ERROR;
    std::unique_ptr<icu::RegexMatcher> m(pattern_->matcher(input, st));
    XCAM_CHECK(U_SUCCESS(st), "regex matcher: {}", u_errorName(st));
    Matches out;
    size_t prev = 0;
    while (m->find(st) && U_SUCCESS(st)) {
      const size_t b = at[static_cast<size_t>(m->start(st))], e = at[static_cast<size_t>(m->end(st))];
      if (prev != b) out.push_back({{prev, b}, false});
      out.push_back({{b, e}, true});
      prev = e;
    }
    XCAM_CHECK(U_SUCCESS(st), "regex search failed: {}", u_errorName(st));
    if (prev != text.size()) out.push_back({{prev, text.size()}, false});
    return out;
  }

 private:
  std::unique_ptr<icu::RegexPattern> pattern_;
};

Matches find_literal(std::string_view text, const std::string& lit) {
  if (text.empty()) return {{{0, 0}, false}};
  Matches out;
  size_t prev = 0;
  if (!lit.empty()) {
    for (size_t at = text.find(lit); at != std::string_view::npos; at = text.find(lit, at + lit.size())) {
      if (prev != at) out.push_back({{prev, at}, false});
      out.push_back({{at, at + lit.size()}, true});
      prev = at + lit.size();
    }
  }
  if (prev != text.size()) out.push_back({{prev, text.size()}, false});
  return out;
}

template <class Pred>
Matches find_chars(std::string_view text, Pred&& pred) {
  if (text.empty()) return {{{0, 0}, false}};
  Matches out;
  size_t last = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t b = i;
    const char32_t c = next_cp(text, i);
    if (pred(c)) {
      if (last < b) out.push_back({{last, b}, false});
      out.push_back({{b, i}, true});
      last = i;
    }
  }
  if (text.size() > last) out.push_back({{last, text.size()}, false});
  return out;
}

enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

Behavior parse_behavior(const std::string& s, const std::string& where) {
  if (s == "Removed") return Behavior::removed;
  if (s == "Isolated") return Behavior::isolated;
  if (s == "MergedWithPrevious") return Behavior::merged_with_previous;
  if (s == "MergedWithNext") return Behavior::merged_with_next;
  if (s == "Contiguous") return Behavior::contiguous;
  XCAM_THROW("{}: split behavior '{}' is unknown; expected Removed, Isolated, MergedWithPrevious, MergedWithNext "
             "or Contiguous", where, s);
}

// The pieces of `s` that the matches and the behavior leave (empty ones included).
std::vector<NStr> split_nstr(const NStr& s, Matches m, Behavior behavior, bool invert = false) {
  if (invert)
    for (auto& x : m) x.second = !x.second;
  std::vector<std::pair<Range, bool>> keep;  // (range, remove)
  keep.reserve(m.size());
  switch (behavior) {
    case Behavior::isolated:
      for (const auto& x : m) keep.push_back({x.first, false});
      break;
    case Behavior::removed:
      keep = m;
      break;
    case Behavior::contiguous:  // runs of matches, and runs of the rest, each one piece
    case Behavior::merged_with_previous: {
      bool prev = false;
      for (const auto& [r, hit] : m) {
        const bool merge = behavior == Behavior::contiguous ? hit == prev : hit && !prev;
        if (merge && !keep.empty()) {
          keep.back().first.second = r.second;
        } else {
          keep.push_back({r, false});
        }
        prev = hit;
      }
      break;
    }
    case Behavior::merged_with_next: {
      bool prev = false;
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        if (it->second && !prev && !keep.empty()) {
          keep.back().first.first = it->first.first;
        } else {
          keep.push_back({it->first, false});
        }
        prev = it->second;
      }
      std::reverse(keep.begin(), keep.end());
      break;
    }
  }
  std::vector<NStr> out;
  out.reserve(keep.size());
  for (const auto& [r, remove] : keep)
    if (!remove) out.push_back(slice(s, r.first, r.second));
  return out;
}

// --------------------------------------------------------------- pieces

struct Tok {
  int64_t id;
  std::string value;
  Range offs;  // bytes of the piece's normalized text
};

struct Piece {
  NStr s;
  bool done = false;  // an added token: neither normalized, split nor tokenized further
  std::vector<Tok> toks;
};

using SplitFn = std::function<std::vector<NStr>(NStr&)>;

// Applies `fn` to every piece not yet tokenized; drops empty results.
void split_pieces(std::vector<Piece>& ps, const SplitFn& fn) {
  std::vector<Piece> out;
  out.reserve(ps.size() * 2);
  for (auto& p : ps) {
    if (p.done) {
      out.push_back(std::move(p));
      continue;
    }
    for (auto& n : fn(p.s))
      if (!n.text.empty()) out.push_back(Piece{std::move(n), false, {}});
  }
  ps.swap(out);
}

using NormalizeFn = std::function<void(NStr&)>;
using PreTokenizeFn = std::function<void(std::vector<Piece>&)>;
using DecodeFn = std::function<void(std::vector<std::string>&)>;

// ------------------------------------------------------------ JSON helpers

const json& member(const json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  XCAM_CHECK(it != j.end(), "{}: '{}' is missing; a tokenizer.json written by the `tokenizers` library has it", where,
             key);
  return *it;
}

template <class T>
T get_or(const json& j, const char* key, T fallback) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}

std::string type_of(const json& j, const std::string& where) {
  XCAM_CHECK(j.is_object(), "{}: expected an object, found {}", where, j.type_name());
  return member(j, "type", where).get<std::string>();
}

// A component's "type" and its name in errors ("<where> (<type>)").
struct Component {
  std::string type, at;
};

Component component(const json& j, const std::string& where) {
  std::string type = type_of(j, where);
  return {type, where + " (" + type + ")"};
}

// A "Sequence" of steps of one kind (normalizers, pre-tokenizers...), run in
// order; `make` builds each step from its JSON.
template <class Fn, class Make>
Fn make_sequence(const json& j, const char* key, const std::string& at, Make&& make) {
  std::vector<Fn> steps;
  for (const auto& item : member(j, key, at))
    if (auto f = make(item, at)) steps.push_back(std::move(f));
  return [steps](auto&&... args) {
    for (const auto& f : steps) f(args...);
  };
}

// A Split / Replace pattern: {"String": s} or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::shared_ptr<Regex> regex;

  Matches find(std::string_view text) const { return regex ? regex->find(text) : find_literal(text, literal); }
};

Pattern parse_pattern(const json& j, const std::string& where) {
  Pattern p;
  if (j.contains("Regex")) {
    p.regex = std::make_shared<Regex>(j.at("Regex").get<std::string>(), where);
  } else {
    p.literal = member(j, "String", where).get<std::string>();
  }
  return p;
}

// ------------------------------------------------------------ normalizers

NormalizeFn make_normalizer(const json& j, const std::string& where);

void bert_normalize(NStr& s, bool clean_text, bool chinese, bool strip_accents, bool lowercase) {
  auto cs = chars_of(s);
  std::vector<CharR> out;
  out.reserve(cs.size() + 8);
  if (clean_text) {
    for (const auto& ch : cs) {
      if (ch.c == 0 || ch.c == 0xFFFD || bert_is_control(ch.c)) continue;
      out.push_back({is_white_space(ch.c) ? U' ' : ch.c, ch.r});
    }
    cs.swap(out);
    out.clear();
  }
  if (chinese) {
    for (const auto& ch : cs) {
      if (is_chinese_char(ch.c)) {
        out.push_back({U' ', ch.r});
        out.push_back(ch);
        out.push_back({U' ', ch.r});
      } else {
        out.push_back(ch);
      }
    }
    cs.swap(out);
    out.clear();
  }
  assign_chars(s, cs);
  if (strip_accents) {
    unicode_normalize(s, icu_normalizer("NFD"), false);
    cs = chars_of(s);
    for (const auto& ch : cs)
      if (category_unicode8(ch.c) != U_NON_SPACING_MARK) out.push_back(ch);
    cs.swap(out);
    out.clear();
  }
  if (lowercase) {
    for (const auto& ch : cs) lowercase_each(ch.c, [&](char32_t c) { out.push_back({c, ch.r}); });
    cs.swap(out);
  }
  assign_chars(s, cs);
}

// Replaces every match of `pattern` with `content`; as in the library, the
// new characters map where the match's last byte does.
void replace_matches(NStr& s, const Pattern& pattern, const std::string& content) {
  const Matches m = pattern.find(s.text);
  std::vector<CharR> out;
  for (const auto& [r, hit] : m) {
    if (!hit) {
      if (r.first == r.second) continue;
      const auto cs = chars_of(slice(s, r.first, r.second));
      out.insert(out.end(), cs.begin(), cs.end());
      continue;
    }
    const Range at = r.second > 0 ? s.align[r.second - 1] : Range{0, 0};
    for (size_t i = 0; i < content.size();) out.push_back({next_cp(content, i), at});
  }
  assign_chars(s, out);
}

NormalizeFn make_normalizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const Component c = component(j, where);
  const std::string &type = c.type, &at = c.at;
  if (type == "Sequence") return make_sequence<NormalizeFn>(j, "normalizers", at, make_normalizer);
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    const bool compat = type[2] == 'K', compose = type.back() == 'C';
    const icu::Normalizer2* d = &icu_normalizer(compat ? "NFKD" : "NFD");
    return [d, compose](NStr& s) { unicode_normalize(s, *d, compose); };
  }
  if (type == "Lowercase") {
    return [](NStr& s) {
      std::vector<CharR> out;
      for (const auto& ch : chars_of(s)) lowercase_each(ch.c, [&](char32_t c) { out.push_back({c, ch.r}); });
      assign_chars(s, out);
    };
  }
  if (type == "StripAccents") {
    return [](NStr& s) {
      std::vector<CharR> out;
      for (const auto& ch : chars_of(s))
        if (!known_to_unicode9(ch.c) || !(U_GET_GC_MASK(static_cast<UChar32>(ch.c)) & U_GC_M_MASK)) out.push_back(ch);
      assign_chars(s, out);
    };
  }
  if (type == "BertNormalizer") {
    const bool clean = get_or(j, "clean_text", true), chinese = get_or(j, "handle_chinese_chars", true),
               lower = get_or(j, "lowercase", true);
    const bool strip = get_or(j, "strip_accents", lower);
    return [=](NStr& s) { bert_normalize(s, clean, chinese, strip, lower); };
  }
  if (type == "Replace") {
    const Pattern p = parse_pattern(member(j, "pattern", at), at);
    const std::string content = member(j, "content", at).get<std::string>();
    return [p, content](NStr& s) { replace_matches(s, p, content); };
  }
  if (type == "Prepend") {
    const std::string pre = member(j, "prepend", at).get<std::string>();
    return [pre](NStr& s) {
      if (s.text.empty()) return;
      auto cs = chars_of(s);
      std::vector<CharR> out;
      for (size_t i = 0; i < pre.size();) out.push_back({next_cp(pre, i), cs.front().r});
      out.insert(out.end(), cs.begin(), cs.end());
      assign_chars(s, out);
    };
  }
  if (type == "Strip") {
    const bool left = get_or(j, "strip_left", true), right = get_or(j, "strip_right", true);
    return [left, right](NStr& s) {
      auto cs = chars_of(s);
      size_t b = 0, e = cs.size();
      if (left)
        while (b < e && is_white_space(cs[b].c)) ++b;
      if (right)
        while (e > b && is_white_space(cs[e - 1].c)) --e;
      assign_chars(s, std::vector<CharR>(cs.begin() + static_cast<std::ptrdiff_t>(b),
                                         cs.begin() + static_cast<std::ptrdiff_t>(e)));
    };
  }
  XCAM_THROW("{}: normalizer '{}' is not supported; xcam reads NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, "
             "BertNormalizer, Replace, Prepend, Strip and Sequence", where, type);
}

// --------------------------------------------------------- pre-tokenizers

// GPT-2's pattern, ByteLevel's when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Byte b's character in byte-level BPE's alphabet (printable bytes stand for
// themselves, the others are moved to U+0100 on).
const std::array<char32_t, 256>& byte_chars() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[static_cast<size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

// Each byte of the text becomes its byte-level character; all the bytes of
// one input character keep that character's range.
void byte_level_map(NStr& s) {
  const auto& table = byte_chars();
  std::string text;
  std::vector<Range> align;
  text.reserve(s.text.size() * 2);
  align.reserve(s.text.size() * 2);
  for (size_t i = 0; i < s.text.size(); ++i) {
    const size_t before = text.size();
    put_cp(text, table[static_cast<unsigned char>(s.text[i])]);
    align.insert(align.end(), text.size() - before, s.align[i]);
  }
  s.text = std::move(text);
  s.align = std::move(align);
}

void prepend_space(NStr& s) {
  const Range r = s.align.front();
  s.text.insert(s.text.begin(), ' ');
  s.align.insert(s.align.begin(), r);
}

PreTokenizeFn make_pre_tokenizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const Component c = component(j, where);
  const std::string &type = c.type, &at = c.at;
  if (type == "Sequence") return make_sequence<PreTokenizeFn>(j, "pretokenizers", at, make_pre_tokenizer);
  if (type == "ByteLevel") {
    const bool prefix = get_or(j, "add_prefix_space", true), use_regex = get_or(j, "use_regex", true);
    auto re = use_regex ? std::make_shared<Regex>(kGpt2Pattern, at) : nullptr;
    return [prefix, re](std::vector<Piece>& ps) {
      split_pieces(ps, [&](NStr& s) -> std::vector<NStr> {
        if (prefix && s.text.front() != ' ') prepend_space(s);
        if (re) return split_nstr(s, re->find(s.text), Behavior::isolated);
        return {std::move(s)};
      });
      for (auto& p : ps)
        if (!p.done) byte_level_map(p.s);
    };
  }
  if (type == "Split") {
    const Pattern p = parse_pattern(member(j, "pattern", at), at);
    const Behavior b = parse_behavior(member(j, "behavior", at).get<std::string>(), at);
    const bool invert = get_or(j, "invert", false);
    return [p, b, invert](std::vector<Piece>& ps) {
      split_pieces(ps, [&](NStr& s) { return split_nstr(s, p.find(s.text), b, invert); });
    };
  }
  if (type == "BertPreTokenizer") {
    return [](std::vector<Piece>& ps) {
      split_pieces(ps, [](NStr& s) { return split_nstr(s, find_chars(s.text, is_white_space), Behavior::removed); });
      split_pieces(ps,
                   [](NStr& s) { return split_nstr(s, find_chars(s.text, bert_is_punctuation), Behavior::isolated); });
    };
  }
  if (type == "Punctuation") {
    const Behavior b = parse_behavior(get_or<std::string>(j, "behavior", "Isolated"), at);
    return [b](std::vector<Piece>& ps) {
      split_pieces(ps, [b](NStr& s) { return split_nstr(s, find_chars(s.text, bert_is_punctuation), b); });
    };
  }
  if (type == "Whitespace") {
    auto re = std::make_shared<Regex>(R"(\w+|[^\w\s]+)", at);
    return [re](std::vector<Piece>& ps) {
      split_pieces(ps, [&](NStr& s) { return split_nstr(s, re->find(s.text), Behavior::removed, true); });
    };
  }
  if (type == "WhitespaceSplit") {
    return [](std::vector<Piece>& ps) {
      split_pieces(ps, [](NStr& s) { return split_nstr(s, find_chars(s.text, is_white_space), Behavior::removed); });
    };
  }
  if (type == "CharDelimiterSplit") {
    const std::string d = member(j, "delimiter", at).get<std::string>();
    size_t i = 0;
    const char32_t delim = d.empty() ? 0 : next_cp(d, i);
    return [delim](std::vector<Piece>& ps) {
      split_pieces(ps, [delim](NStr& s) {
        return split_nstr(s, find_chars(s.text, [delim](char32_t c) { return c == delim; }), Behavior::removed);
      });
    };
  }
  if (type == "Digits") {
    const Behavior b = get_or(j, "individual_digits", false) ? Behavior::isolated : Behavior::contiguous;
    return [b](std::vector<Piece>& ps) {
      split_pieces(ps, [b](NStr& s) { return split_nstr(s, find_chars(s.text, is_numeric), b); });
    };
  }
  if (type == "Metaspace") {
    const std::string rep = get_or<std::string>(j, "replacement", "\xE2\x96\x81");
    std::string scheme = get_or<std::string>(j, "prepend_scheme", "");
    if (scheme.empty()) scheme = get_or(j, "add_prefix_space", true) ? "always" : "never";
    const bool split = get_or(j, "split", true);
    size_t i = 0;
    const char32_t rep_c = next_cp(rep, i);
    const Pattern space{" ", nullptr};
    return [=](std::vector<Piece>& ps) {
      split_pieces(ps, [&](NStr& s) -> std::vector<NStr> {
        replace_matches(s, space, rep);
        const bool starts = s.text.compare(0, rep.size(), rep) == 0;
        if (!starts && (scheme == "always" || (scheme == "first" && s.origin == 0))) {
          const Range r = s.align.front();
          s.text.insert(0, rep);
          s.align.insert(s.align.begin(), rep.size(), r);
        }
        if (!split) return {std::move(s)};
        return split_nstr(s, find_chars(s.text, [rep_c](char32_t c) { return c == rep_c; }),
                          Behavior::merged_with_next);
      });
    };
  }
  XCAM_THROW("{}: pre-tokenizer '{}' is not supported; xcam reads ByteLevel, Split, BertPreTokenizer, Whitespace, "
             "WhitespaceSplit, Punctuation, Digits, CharDelimiterSplit, Metaspace and Sequence", where, type);
}

// ------------------------------------------------------------------ models

class Model {
 public:
  virtual ~Model() = default;
  // Appends the tokens of one word (offsets in the word's bytes).
  virtual void tokenize(const std::string& word, std::vector<Tok>& out) const = 0;

  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<int64_t, std::string> vocab_r;

 protected:
  int64_t id_of(const std::string& token, const char* what) const {
    const auto it = vocab.find(token);
    XCAM_CHECK(it != vocab.end(), "the {} '{}' is not in the vocabulary; the tokenizer.json is inconsistent", what,
               token);
    return it->second;
  }
};

void read_vocab(Model& m, const json& v, const std::string& where) {
  XCAM_CHECK(v.is_object(), "{}: 'vocab' must map tokens to ids, found {}", where, v.type_name());
  m.vocab.reserve(v.size());
  for (const auto& [tok, id] : v.items()) {
    m.vocab[tok] = id.get<int64_t>();
    m.vocab_r[id.get<int64_t>()] = tok;
  }
}

class Bpe final : public Model {
 public:
  Bpe(const json& j, const std::string& where) {
    XCAM_CHECK(j.value("dropout", json()).is_null() || j.at("dropout").get<double>() == 0.0,
               "{}: BPE dropout is set; xcam encodes deterministically, save the tokenizer with dropout null", where);
    read_vocab(*this, member(j, "vocab", where), where);
    unk_ = get_or<std::string>(j, "unk_token", "");
    prefix_ = get_or<std::string>(j, "continuing_subword_prefix", "");
    suffix_ = get_or<std::string>(j, "end_of_word_suffix", "");
    fuse_unk_ = get_or(j, "fuse_unk", false);
    byte_fallback_ = get_or(j, "byte_fallback", false);
    ignore_merges_ = get_or(j, "ignore_merges", false);
    const json& merges = member(j, "merges", where);
    merges_.reserve(merges.size());
    uint32_t rank = 0;
    for (const auto& m : merges) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        XCAM_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
                   "{}: merge {} '{}' is not two tokens separated by one space", where, rank, s);
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        XCAM_CHECK(m.is_array() && m.size() == 2, "{}: merge {} is neither \"a b\" nor [\"a\", \"b\"]", where, rank);
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      }
      const int64_t ia = id_of(a, "merge's token"), ib = id_of(b, "merge's token");
      XCAM_CHECK(b.size() >= prefix_.size(), "{}: merge {} '{} {}' is shorter than the subword prefix", where, rank, a,
                 b);
      const int64_t merged = id_of(a + b.substr(prefix_.size()), "merge's result");
      merges_[key(ia, ib)] = {rank++, merged};
    }
    for (int byte = 0; byte < 256; ++byte) {
      const auto it = vocab.find(fmt::format("<0x{:02X}>", byte));
      byte_ids_[static_cast<size_t>(byte)] = it == vocab.end() ? -1 : it->second;
    }
  }

  void tokenize(const std::string& word, std::vector<Tok>& out) const override {
    if (word.empty()) return;
    if (ignore_merges_) {
      const auto it = vocab.find(word);
      if (it != vocab.end()) {
        out.push_back({it->second, word, {0, word.size()}});
        return;
      }
    }
    std::vector<std::pair<int64_t, uint32_t>> pieces;  // (id, bytes of the word)
    bool cached = false;
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      const auto it = cache_.find(word);
      if (it != cache_.end()) {
        pieces = it->second;
        cached = true;
      }
    }
    if (!cached) {
      pieces = merge_word(word);
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() < kCacheCapacity && word.size() < 256) cache_.emplace(word, pieces);
    }
    size_t at = 0;
    for (const auto& [id, len] : pieces) {
      out.push_back({id, vocab_r.at(id), {at, at + len}});
      at += len;
    }
  }

 private:
  static constexpr size_t kCacheCapacity = 10000;
  static uint64_t key(int64_t a, int64_t b) {
    return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(static_cast<uint32_t>(b));
  }

  struct Symbol {
    int64_t id;
    int prev, next;
    uint32_t len;
  };

  std::vector<std::pair<int64_t, uint32_t>> merge_word(const std::string& w) const {
    std::vector<Symbol> sym;
    sym.reserve(w.size());
    auto add = [&](int64_t id, size_t len) {
      const int n = static_cast<int>(sym.size());
      sym.push_back({id, n - 1, n + 1, static_cast<uint32_t>(len)});
    };
    int64_t unk_id = -1;
    size_t unk_len = 0;
    auto flush_unk = [&] {
      if (unk_id >= 0) add(unk_id, unk_len);
      unk_id = -1;
    };
    std::string s;
    for (size_t i = 0; i < w.size();) {
      const size_t b = i;
      i += utf8_len(static_cast<unsigned char>(w[i]));
      s.clear();
      if (b > 0) s += prefix_;
      s.append(w, b, i - b);
      if (i == w.size()) s += suffix_;
      const auto it = vocab.find(s);
      if (it != vocab.end()) {
        flush_unk();
        add(it->second, i - b);
        continue;
      }
      if (byte_fallback_) {
        const bool all = std::all_of(s.begin(), s.end(),
                                     [&](char ch) { return byte_ids_[static_cast<unsigned char>(ch)] >= 0; });
        if (all) {
          for (const char ch : s) add(byte_ids_[static_cast<unsigned char>(ch)], 1);
          continue;
        }
      }
      if (!unk_.empty()) {
        if (unk_id >= 0 && fuse_unk_) {
          unk_len += i - b;
        } else {
          flush_unk();
          unk_id = id_of(unk_, "unk_token");
          unk_len = i - b;
        }
      }
    }
    flush_unk();
    if (!sym.empty()) sym.back().next = -1;

    struct Merge {
      uint32_t rank;
      int pos;
      int64_t new_id;
      bool operator>(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Merge, std::vector<Merge>, std::greater<Merge>> queue;
    auto push_pair = [&](int pos) {
      const int next = sym[static_cast<size_t>(pos)].next;
      if (next < 0) return;
      const auto it = merges_.find(key(sym[static_cast<size_t>(pos)].id, sym[static_cast<size_t>(next)].id));
      if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
    };
    for (int p = 0; p + 1 < static_cast<int>(sym.size()); ++p) push_pair(p);
    while (!queue.empty()) {
      const Merge top = queue.top();
      queue.pop();
      Symbol& cur = sym[static_cast<size_t>(top.pos)];
      if (cur.len == 0 || cur.next < 0) continue;
      const Symbol right = sym[static_cast<size_t>(cur.next)];
      const auto it = merges_.find(key(cur.id, right.id));
      if (it == merges_.end() || it->second.second != top.new_id) continue;  // stale entry
      sym[static_cast<size_t>(cur.next)].len = 0;
      cur.id = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      if (right.next >= 0) sym[static_cast<size_t>(right.next)].prev = top.pos;
      if (cur.prev >= 0) push_pair(cur.prev);
      push_pair(top.pos);
    }
    std::vector<std::pair<int64_t, uint32_t>> out;
    for (const auto& x : sym)
      if (x.len != 0) out.push_back({x.id, x.len});
    return out;
  }

  std::unordered_map<uint64_t, std::pair<uint32_t, int64_t>> merges_;  // (a, b) -> (rank, merged id)
  std::array<int64_t, 256> byte_ids_{};
  std::string unk_, prefix_, suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::pair<int64_t, uint32_t>>> cache_;
};

class WordPiece final : public Model {
 public:
  WordPiece(const json& j, const std::string& where) {
    read_vocab(*this, member(j, "vocab", where), where);
    unk_ = get_or<std::string>(j, "unk_token", "[UNK]");
    prefix_ = get_or<std::string>(j, "continuing_subword_prefix", "##");
    max_chars_ = get_or<size_t>(j, "max_input_chars_per_word", 100);
    XCAM_CHECK(vocab.count(unk_), "{}: the WordPiece unk_token '{}' is not in the vocabulary", where, unk_);
  }

  void tokenize(const std::string& word, std::vector<Tok>& out) const override {
    size_t nchars = 0;
    for (const char ch : word) nchars += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
    const size_t first = out.size();
    bool bad = nchars > max_chars_;
    std::string sub;
    for (size_t start = 0; !bad && start < word.size();) {
      size_t end = word.size();
      bool found = false;
      while (start < end) {
        sub.clear();
        if (start > 0) sub += prefix_;
        sub.append(word, start, end - start);
        const auto it = vocab.find(sub);
        if (it != vocab.end()) {
          out.push_back({it->second, sub, {start, end}});
          found = true;
          break;
        }
        do --end;  // back by one character
        while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
      }
      if (!found) bad = true;
      start = end;
    }
    if (bad) {
      out.resize(first);
      out.push_back({vocab.at(unk_), unk_, {0, word.size()}});
    }
  }

 private:
  std::string unk_, prefix_;
  size_t max_chars_ = 100;
};

class WordLevel final : public Model {
 public:
  WordLevel(const json& j, const std::string& where) {
    read_vocab(*this, member(j, "vocab", where), where);
    unk_ = get_or<std::string>(j, "unk_token", "<unk>");
  }

  void tokenize(const std::string& word, std::vector<Tok>& out) const override {
    const auto it = vocab.find(word);
    if (it != vocab.end()) {
      out.push_back({it->second, word, {0, word.size()}});
      return;
    }
    const auto unk = vocab.find(unk_);
    XCAM_CHECK(unk != vocab.end(), "'{}' is not in the WordLevel vocabulary and neither is its unk_token '{}'",
               one_line(word), unk_);
    out.push_back({unk->second, unk_, {0, word.size()}});
  }

 private:
  std::string unk_;
};

std::unique_ptr<Model> make_model(const json& j, const std::string& where) {
  XCAM_CHECK(j.is_object(), "{}: 'model' must be an object", where);
  std::string type = get_or<std::string>(j, "type", "");
  if (type.empty()) {  // files from before the "type" field: the library tells them by their fields
    if (j.contains("merges")) {
      type = "BPE";
    } else if (j.contains("max_input_chars_per_word") || j.contains("continuing_subword_prefix")) {
      type = "WordPiece";
    } else if (j.contains("vocab") && j["vocab"].is_array()) {
      type = "Unigram";
    } else {
      type = "WordLevel";
    }
  }
  const std::string at = where + " model (" + type + ")";
  if (type == "BPE") return std::make_unique<Bpe>(j, at);
  if (type == "WordPiece") return std::make_unique<WordPiece>(j, at);
  if (type == "WordLevel") return std::make_unique<WordLevel>(j, at);
  XCAM_THROW("{}: model type '{}' is not supported; xcam reads BPE, WordPiece and WordLevel", where, type);
}

// -------------------------------------------------------- post-processors

using Encoding = Tokenizer::Encoding;

void append(Encoding& to, const Encoding& from) {
  to.ids.insert(to.ids.end(), from.ids.begin(), from.ids.end());
  to.tokens.insert(to.tokens.end(), from.tokens.begin(), from.tokens.end());
  to.offsets.insert(to.offsets.end(), from.offsets.begin(), from.offsets.end());
  to.special.insert(to.special.end(), from.special.begin(), from.special.end());
  to.type_ids.insert(to.type_ids.end(), from.type_ids.begin(), from.type_ids.end());
}

void append_special(Encoding& to, int64_t id, const std::string& token, uint32_t type_id) {
  to.ids.push_back(id);
  to.tokens.push_back(token);
  to.offsets.push_back({0, 0});
  to.special.push_back(true);
  to.type_ids.push_back(type_id);
}

Encoding with_type(Encoding e, uint32_t type_id) {
  std::fill(e.type_ids.begin(), e.type_ids.end(), type_id);
  return e;
}

// ByteLevel's trim_offsets: offsets lose the spaces their token starts or
// ends with. Counted in characters of `text`, as the library's Python
// binding (whose offsets are in characters when this runs) does.
void trim_offsets(Encoding& e, std::string_view text, bool add_prefix_space) {
  const char32_t space = byte_chars()[' '];
  std::vector<size_t> char_at;  // byte offset of each character of text, and the end
  for (size_t i = 0; i < text.size(); i += utf8_len(static_cast<unsigned char>(text[i]))) char_at.push_back(i);
  char_at.push_back(text.size());
  auto to_char = [&](size_t byte) {
    return static_cast<size_t>(std::lower_bound(char_at.begin(), char_at.end(), byte) - char_at.begin());
  };
  for (size_t i = 0; i < e.ids.size(); ++i) {
    if (e.special[i] && e.offsets[i] == Range{0, 0}) continue;  // added by a post-processor
    const std::string& t = e.tokens[i];
    std::vector<char32_t> cs;
    for (size_t k = 0; k < t.size();) cs.push_back(next_cp(t, k));
    auto is_sp = [&](char32_t c) { return c == space || is_white_space(c); };
    size_t lead = 0, trail = 0;
    while (lead < cs.size() && is_sp(cs[lead])) ++lead;
    while (trail < cs.size() && is_sp(cs[cs.size() - 1 - trail])) ++trail;
    if (lead == 0 && trail == 0) continue;
    size_t b = to_char(e.offsets[i].first), en = to_char(e.offsets[i].second);
    if (lead > 0) {
      if ((i == 0 || b == 0) && add_prefix_space && lead == 1) lead = 0;
      b = std::min(b + lead, en);
    }
    if (trail > 0 && en >= trail) en = std::max(en - trail, b);
    e.offsets[i] = {char_at[std::min(b, char_at.size() - 1)], char_at[std::min(en, char_at.size() - 1)]};
  }
}

// Post-processing on the encodings of a single text or a pair.
// `texts` are the encoded texts, one per encoding.
using PostFn = std::function<void(std::vector<Encoding>&, const std::vector<std::string_view>& texts,
                                  bool add_special)>;

PostFn make_post_processor(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const Component c = component(j, where);
  const std::string &type = c.type, &at = c.at;
  if (type == "Sequence") return make_sequence<PostFn>(j, "processors", at, make_post_processor);
  if (type == "ByteLevel") {
    const bool trim = get_or(j, "trim_offsets", true), prefix = get_or(j, "add_prefix_space", true);
    return [trim, prefix](std::vector<Encoding>& es, const std::vector<std::string_view>& texts, bool) {
      if (trim)
        for (size_t i = 0; i < es.size() && i < texts.size(); ++i) trim_offsets(es[i], texts[i], prefix);
    };
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    const json& sep = member(j, "sep", at);
    const json& cls = member(j, "cls", at);
    const std::string sep_t = sep.at(0).get<std::string>(), cls_t = cls.at(0).get<std::string>();
    const int64_t sep_id = sep.at(1).get<int64_t>(), cls_id = cls.at(1).get<int64_t>();
    const bool roberta = type == "RobertaProcessing";
    const bool trim = roberta && get_or(j, "trim_offsets", true), prefix = get_or(j, "add_prefix_space", true);
    return [=](std::vector<Encoding>& es, const std::vector<std::string_view>& texts, bool add) {
      if (trim)
        for (size_t i = 0; i < es.size() && i < texts.size(); ++i) trim_offsets(es[i], texts[i], prefix);
      if (!add) return;
      Encoding out;
      append_special(out, cls_id, cls_t, 0);
      append(out, with_type(es[0], 0));
      append_special(out, sep_id, sep_t, 0);
      if (es.size() > 1) {
        const uint32_t second = roberta ? 0 : 1;
        if (roberta) append_special(out, sep_id, sep_t, 0);
        append(out, with_type(es[1], second));
        append_special(out, sep_id, sep_t, second);
      }
      es = {std::move(out)};
    };
  }
  if (type == "TemplateProcessing") {
    struct Item {
      bool sequence;
      int which;  // 0: $A, 1: $B
      std::string special;
      uint32_t type_id;
    };
    auto parse = [&](const json& t) {
      std::vector<Item> items;
      for (const auto& it : t) {
        if (it.contains("Sequence")) {
          const std::string id = it.at("Sequence").at("id").get<std::string>();
          items.push_back({true, id == "B" ? 1 : 0, "", it.at("Sequence").at("type_id").get<uint32_t>()});
        } else {
          const json& s = member(it, "SpecialToken", at);
          items.push_back({false, 0, s.at("id").get<std::string>(), s.at("type_id").get<uint32_t>()});
        }
      }
      return items;
    };
    const auto single = parse(member(j, "single", at)), pair = parse(member(j, "pair", at));
    std::unordered_map<std::string, std::pair<std::vector<int64_t>, std::vector<std::string>>> specials;
    for (const auto& item : member(j, "special_tokens", at).items()) {
      auto& [ids, toks] = specials[item.key()];
      ids = item.value().at("ids").get<std::vector<int64_t>>();
      toks = item.value().at("tokens").get<std::vector<std::string>>();
      XCAM_CHECK(ids.size() == toks.size(), "{}: special token '{}' has {} ids but {} tokens", at, item.key(),
                 ids.size(), toks.size());
    }
    for (const auto* items : {&single, &pair})
      for (const auto& it : *items)
        XCAM_CHECK(it.sequence || specials.count(it.special), "{}: the template names '{}', which is not in its "
                   "special_tokens", at, it.special);
    return [=](std::vector<Encoding>& es, const std::vector<std::string_view>&, bool add) {
      if (!add) return;
      Encoding out;
      for (const auto& it : es.size() > 1 ? pair : single) {
        if (it.sequence) {
          const auto which = static_cast<size_t>(it.which);
          if (which < es.size()) append(out, with_type(es[which], it.type_id));
          continue;
        }
        const auto& [ids, toks] = specials.at(it.special);
        for (size_t k = 0; k < ids.size(); ++k) append_special(out, ids[k], toks[k], it.type_id);
      }
      es = {std::move(out)};
    };
  }
  XCAM_THROW("{}: post-processor '{}' is not supported; xcam reads TemplateProcessing, BertProcessing, "
             "RobertaProcessing, ByteLevel and Sequence", where, type);
}

// --------------------------------------------------------------- decoders

std::string wordpiece_cleanup(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},   {" ?", "?"},     {" !", "!"},          {" ,", ","},   {" ' ", "'"},  {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) {
    const std::string f(from), t(to);
    std::string out;
    size_t at = 0;
    for (size_t p = s.find(f); p != std::string::npos; p = s.find(f, at)) {
      out.append(s, at, p - at);
      out += t;
      at = p + f.size();
    }
    out.append(s, at, std::string::npos);
    s = std::move(out);
  }
  return s;
}

DecodeFn make_decoder(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  const Component c = component(j, where);
  const std::string &type = c.type, &at = c.at;
  if (type == "Sequence") return make_sequence<DecodeFn>(j, "decoders", at, make_decoder);
  if (type == "ByteLevel") {
    return [](std::vector<std::string>& toks) {
      static const std::unordered_map<char32_t, unsigned char> to_byte = [] {
        std::unordered_map<char32_t, unsigned char> m;
        for (int b = 0; b < 256; ++b) m[byte_chars()[static_cast<size_t>(b)]] = static_cast<unsigned char>(b);
        return m;
      }();
      std::string bytes;
      for (const auto& t : toks) {
        std::string mine;
        bool ok = true;
        for (size_t i = 0; i < t.size() && ok;) {
          const auto it = to_byte.find(next_cp(t, i));
          if (it == to_byte.end()) {
            ok = false;
          } else {
            mine += static_cast<char>(it->second);
          }
        }
        bytes += ok ? mine : t;
      }
      toks = {utf8_lossy(bytes)};
    };
  }
  if (type == "WordPiece") {
    const std::string prefix = get_or<std::string>(j, "prefix", "##");
    const bool cleanup = get_or(j, "cleanup", true);
    return [prefix, cleanup](std::vector<std::string>& toks) {
      for (size_t i = 0; i < toks.size(); ++i) {
        if (i != 0) {
          if (toks[i].compare(0, prefix.size(), prefix) == 0) {
            toks[i].erase(0, prefix.size());
          } else {
            toks[i].insert(0, " ");
          }
        }
        if (cleanup) toks[i] = wordpiece_cleanup(std::move(toks[i]));
      }
    };
  }
  if (type == "Metaspace") {
    const std::string rep = get_or<std::string>(j, "replacement", "\xE2\x96\x81");
    std::string scheme = get_or<std::string>(j, "prepend_scheme", "");
    if (scheme.empty()) scheme = get_or(j, "add_prefix_space", true) ? "always" : "never";
    return [rep, scheme](std::vector<std::string>& toks) {
      for (size_t i = 0; i < toks.size(); ++i) {
        std::string out;
        const std::string& t = toks[i];
        for (size_t k = 0; k < t.size();) {
          if (t.compare(k, rep.size(), rep) == 0) {
            if (!(i == 0 && scheme != "never")) out += ' ';
            k += rep.size();
          } else {
            out += t[k++];
          }
        }
        toks[i] = std::move(out);
      }
    };
  }
  if (type == "BPEDecoder") {
    const std::string suffix = get_or<std::string>(j, "suffix", "</w>");
    return [suffix](std::vector<std::string>& toks) {
      for (size_t i = 0; i < toks.size(); ++i) {
        const std::string rep = i + 1 == toks.size() ? "" : " ";
        std::string out;
        const std::string& t = toks[i];
        for (size_t k = 0; k < t.size();) {
          if (!suffix.empty() && t.compare(k, suffix.size(), suffix) == 0) {
            out += rep;
            k += suffix.size();
          } else {
            out += t[k++];
          }
        }
        toks[i] = std::move(out);
      }
    };
  }
  XCAM_THROW("{}: decoder '{}' is not supported; xcam reads ByteLevel, WordPiece, Metaspace, BPEDecoder and Sequence",
             where, type);
}

// ---------------------------------------------------------- added tokens

struct AddedToken {
  int64_t id;
  std::string content;
  bool single_word, lstrip, rstrip, normalized, special;
  std::string pattern;  // what is searched: the content, normalized when `normalized`
};

// Added tokens searched leftmost-longest, like the library's Aho-Corasick.
struct AddedSet {
  std::array<std::vector<size_t>, 256> by_first;  // token indices, longest pattern first
  bool empty = true;
};

}  // namespace

// ------------------------------------------------------------------- Impl

struct Tokenizer::Impl {
  std::string name;
  NormalizeFn normalizer;
  PreTokenizeFn pre_tokenizer;
  std::unique_ptr<Model> model;
  PostFn post_processor;
  DecodeFn decoder;
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int64_t> added_by_content;
  std::unordered_map<int64_t, size_t> added_by_id;
  std::unordered_set<std::string> special_contents;
  AddedSet raw_set, normalized_set;
  std::string chat_template;
  std::optional<int64_t> bos, eos, pad;

  void build_sets() {
    std::vector<size_t> order(added.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return added[a].pattern.size() > added[b].pattern.size(); });
    for (const size_t i : order) {
      if (added[i].pattern.empty()) continue;
      AddedSet& set = added[i].normalized ? normalized_set : raw_set;
      set.by_first[static_cast<unsigned char>(added[i].pattern[0])].push_back(i);
      set.empty = false;
    }
  }

  // The library's find_matches: (token index or npos, byte range) covering `s`.
  std::vector<std::pair<size_t, Range>> find_added(const std::string& s, const AddedSet& set) const {
    static constexpr size_t none = std::string::npos;
    if (set.empty || s.empty()) return {{none, {0, s.size()}}};
    std::vector<std::pair<size_t, Range>> splits;
    size_t start_offset = 0;
    for (size_t i = 0; i < s.size();) {
      size_t hit = none;
      for (const size_t k : set.by_first[static_cast<unsigned char>(s[i])]) {
        if (s.compare(i, added[k].pattern.size(), added[k].pattern) == 0) {
          hit = k;
          break;
        }
      }
      if (hit == none) {
        ++i;
        continue;
      }
      const AddedToken& t = added[hit];
      size_t start = i, stop = i + t.pattern.size();
      i = stop;
      if (t.single_word) {
        bool before_ok = start == 0, after_ok = stop == s.size();
        if (!before_ok) {  // the text before does not end with a word character
          size_t b = start - 1;
          while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
          size_t k = b;
          before_ok = !is_word_char(next_cp(s, k));
        }
        if (!after_ok) {
          size_t k = stop;
          after_ok = !is_word_char(next_cp(s, k));
        }
        if (!before_ok || !after_ok) continue;
      }
      if (t.lstrip) {
        size_t b = start;
        while (b > 0) {
          size_t p = b - 1;
          while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
          size_t k = p;
          if (!is_white_space(next_cp(s, k))) break;
          b = p;
        }
        start = std::max(b, start_offset);
      }
      if (t.rstrip) {
        while (stop < s.size()) {
          size_t k = stop;
          if (!is_white_space(next_cp(s, k))) break;
          stop = k;
        }
      }
      if (start_offset < start) splits.push_back({none, {start_offset, start}});
      splits.push_back({hit, {start, stop}});
      start_offset = stop;
    }
    if (start_offset != s.size()) splits.push_back({none, {start_offset, s.size()}});
    return splits;
  }

  void split_added(std::vector<Piece>& ps, const AddedSet& set, bool normalize_first) const {
    std::vector<Piece> out;
    out.reserve(ps.size() + 4);
    for (auto& p : ps) {
      if (p.done) {
        out.push_back(std::move(p));
        continue;
      }
      if (normalize_first && normalizer) normalizer(p.s);
      for (const auto& [k, r] : find_added(p.s.text, set)) {
        if (r.first == r.second) continue;
        Piece q{slice(p.s, r.first, r.second), false, {}};
        if (k != std::string::npos) {
          q.done = true;
          q.toks.push_back({added[k].id, q.s.text, {0, q.s.text.size()}});
        }
        out.push_back(std::move(q));
      }
    }
    ps.swap(out);
  }

  Encoding encode_one(std::string_view text) const {
    const size_t bad = invalid_utf8_at(text);
    XCAM_CHECK(bad == std::string_view::npos, "tokenizer '{}': the text is not valid UTF-8 (byte {} of {}); "
               "convert it to UTF-8 first", name, bad, text.size());
    std::vector<Piece> ps;
    ps.push_back(Piece{nstr_from(text), false, {}});
    split_added(ps, raw_set, false);
    split_added(ps, normalized_set, true);
    if (pre_tokenizer) pre_tokenizer(ps);
    Encoding e;
    for (auto& p : ps) {
      if (!p.done) {
        if (p.s.text.empty()) continue;
        model->tokenize(p.s.text, p.toks);
      }
      for (auto& t : p.toks) {
        const bool is_special = added_by_id.count(t.id) && p.done && added[added_by_id.at(t.id)].special;
        e.ids.push_back(t.id);
        e.offsets.push_back(t.offs.second > t.offs.first
                                ? Range{p.s.align[t.offs.first].first, p.s.align[t.offs.second - 1].second}
                                : Range{p.s.origin, p.s.origin});
        e.tokens.push_back(std::move(t.value));
        e.special.push_back(is_special);
        e.type_ids.push_back(0);
      }
    }
    return e;
  }

  Encoding encode(std::vector<std::string_view> texts, bool add_special) const {
    std::vector<Encoding> es;
    for (const auto& t : texts) es.push_back(encode_one(t));
    if (post_processor) post_processor(es, texts, add_special);
    if (es.size() == 1) return std::move(es[0]);
    Encoding out;
    for (size_t i = 0; i < es.size(); ++i) append(out, with_type(std::move(es[i]), static_cast<uint32_t>(i)));
    return out;
  }

  const std::string* token_of(int64_t id) const {
    const auto a = added_by_id.find(id);
    if (a != added_by_id.end()) return &added[a->second].content;
    const auto m = model->vocab_r.find(id);
    return m == model->vocab_r.end() ? nullptr : &m->second;
  }

  std::optional<int64_t> id_of(std::string_view token) const {
    const std::string t(token);
    const auto a = added_by_content.find(t);
    if (a != added_by_content.end()) return a->second;
    const auto m = model->vocab.find(t);
    if (m != model->vocab.end()) return m->second;
    return std::nullopt;
  }
};

namespace {

std::string read_text(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  XCAM_CHECK(in.good(), "{} '{}' cannot be read (missing? permissions?); pass the path of a Hugging Face "
             "tokenizer.json (zoo/models/tokenizers/ has examples)", what, path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const std::string& name) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    XCAM_THROW("tokenizer.json '{}' is not valid JSON ({}); write it with the `tokenizers` library's "
               "Tokenizer.save", name, e.what());
  }
}

// A token name in tokenizer_config.json: "name", {"content": "name"} or null.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  const auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& name) {
  const json j = parse_json(json_text, name);
  const std::string where = "tokenizer.json '" + name + "'";
  XCAM_CHECK(j.is_object(), "{}: expected a JSON object at the top, found {}", where, j.type_name());
  auto impl = std::make_unique<Impl>();
  impl->name = name;
  try {
    impl->model = make_model(member(j, "model", where), where);
    impl->normalizer = make_normalizer(j.value("normalizer", json()), where + " normalizer");
    impl->pre_tokenizer = make_pre_tokenizer(j.value("pre_tokenizer", json()), where + " pre_tokenizer");
    impl->post_processor = make_post_processor(j.value("post_processor", json()), where + " post_processor");
    impl->decoder = make_decoder(j.value("decoder", json()), where + " decoder");
    for (const auto& a : j.value("added_tokens", json::array())) {
      AddedToken t{member(a, "id", where).get<int64_t>(),
                   member(a, "content", where).get<std::string>(),
                   get_or(a, "single_word", false),
                   get_or(a, "lstrip", false),
                   get_or(a, "rstrip", false),
                   get_or(a, "normalized", !get_or(a, "special", false)),
                   get_or(a, "special", false),
                   {}};
      t.pattern = t.content;
      if (t.normalized && impl->normalizer) {
        NStr n = nstr_from(t.content);
        impl->normalizer(n);
        t.pattern = n.text;
      }
      impl->added_by_content[t.content] = t.id;
      impl->added_by_id[t.id] = impl->added.size();
      if (t.special) impl->special_contents.insert(t.content);
      impl->added.push_back(std::move(t));
    }
  } catch (const json::exception& e) {
    XCAM_THROW("{}: unexpected structure ({}); write it with the `tokenizers` library's Tokenizer.save", where,
               e.what());
  }
  impl->build_sets();
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json) {
  Tokenizer t = from_json(read_text(tokenizer_json, "tokenizer file"), tokenizer_json);
  const auto cfg_path = std::filesystem::path(tokenizer_json).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(cfg_path, ec)) return t;
  json cfg;
  try {
    cfg = json::parse(read_text(cfg_path.string(), "tokenizer config"));
  } catch (const json::parse_error& e) {
    XCAM_THROW("tokenizer_config.json '{}' is not valid JSON ({}); fix or remove it", cfg_path.string(), e.what());
  }
  XCAM_CHECK(cfg.is_object(), "tokenizer_config.json '{}': expected a JSON object, found {}", cfg_path.string(),
             cfg.type_name());
  if (cfg.contains("chat_template")) {
    const json& ct = cfg["chat_template"];
    if (ct.is_string()) {
      t.impl_->chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {  // [{"name": ..., "template": ...}]: the one named default, else the first
      for (const auto& c : ct) {
        if (!c.is_object() || !c.contains("template") || !c["template"].is_string()) continue;
        if (t.impl_->chat_template.empty() || c.value("name", json()) == "default")
          t.impl_->chat_template = c["template"].get<std::string>();
      }
    }
  }
  auto lookup = [&](const char* key) -> std::optional<int64_t> {
    const auto name = config_token(cfg, key);
    if (!name) return std::nullopt;
    const auto id = t.token_to_id(*name);
    XCAM_CHECK(id.has_value(), "tokenizer_config.json '{}': {} '{}' is not a token of {}", cfg_path.string(), key,
               *name, tokenizer_json);
    return id;
  };
  t.impl_->bos = lookup("bos_token");
  t.impl_->eos = lookup("eos_token");
  t.impl_->pad = lookup("pad_token");
  return t;
}

Tokenizer::Encoding Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return impl_->encode({text}, add_special_tokens);
}

Tokenizer::Encoding Tokenizer::encode_pair(std::string_view first, std::string_view second,
                                           bool add_special_tokens) const {
  return impl_->encode({first, second}, add_special_tokens);
}

std::vector<int64_t> Tokenizer::ids(std::string_view text, bool add_special_tokens) const {
  return encode(text, add_special_tokens).ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (const int64_t id : ids) {
    const std::string* t = impl_->token_of(id);
    if (t == nullptr) continue;
    if (skip_special_tokens && impl_->special_contents.count(*t)) continue;
    toks.push_back(*t);
  }
  if (!impl_->decoder) {
    std::string out;
    for (size_t i = 0; i < toks.size(); ++i) out += (i ? " " : "") + toks[i];
    return out;
  }
  impl_->decoder(toks);
  std::string out;
  for (const auto& t : toks) out += t;
  return out;
}

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const { return impl_->id_of(token); }

std::string Tokenizer::id_to_token(int64_t id) const {
  const std::string* t = impl_->token_of(id);
  XCAM_CHECK(t != nullptr, "tokenizer '{}': id {} is not in the vocabulary (size {})", impl_->name, id, vocab_size());
  return *t;
}

int64_t Tokenizer::vocab_size() const {
  int64_t top = -1;
  for (const auto& [id, tok] : impl_->model->vocab_r) top = std::max(top, id);
  for (const auto& a : impl_->added) top = std::max(top, a.id);
  return top + 1;
}

bool Tokenizer::is_special(int64_t id) const {
  const auto a = impl_->added_by_id.find(id);
  return a != impl_->added_by_id.end() && impl_->added[a->second].special;
}

std::string Tokenizer::chat_prompt(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  for (const char* needed : {"<|im_start|>", "<|im_end|>"})
    XCAM_CHECK(impl_->added_by_content.count(needed), "tokenizer '{}' has no '{}' token: chat_prompt writes ChatML "
               "(Qwen2-VL's chat template), which needs it", impl_->name, needed);
  XCAM_CHECK(impl_->chat_template.empty() || impl_->chat_template.find("<|im_start|>") != std::string::npos,
             "tokenizer '{}': its tokenizer_config.json's chat template is not ChatML; chat_prompt writes "
             "Qwen2-VL's ChatML only, so build this model's prompt yourself", impl_->name);
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (i == 0 && m.role != "system") out += "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";
    out += "<|im_start|>" + m.role + "\n";
    for (const ChatPart& p : m.content) {
      if (p.kind == ChatPart::Kind::text) {
        out += p.text;
        continue;
      }
      XCAM_CHECK(impl_->added_by_content.count("<|image_pad|>"), "tokenizer '{}' has no '<|image_pad|>' token, so "
                 "a message cannot hold an image; use Qwen2-VL's tokenizer", impl_->name);
      XCAM_CHECK(p.image_tokens >= 1, "an image in a chat message stands for {} tokens; it needs at least 1",
                 p.image_tokens);
      out += "<|vision_start|>";
      for (int64_t k = 0; k < p.image_tokens; ++k) out += "<|image_pad|>";
      out += "<|vision_end|>";
    }
    out += "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }
std::optional<int64_t> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<int64_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int64_t> Tokenizer::pad_id() const { return impl_->pad; }
const std::string& Tokenizer::name() const { return impl_->name; }

}  // namespace xcam

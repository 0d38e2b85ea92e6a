// Small string helpers shared by the CLI, the YAML reader and the taps.
#include "xcam/strings.h"

#include <algorithm>

#include "xcam/error.h"

namespace xcam {

std::vector<std::string> closest_names(const std::string& wanted, const std::vector<std::string>& candidates,
                                       size_t max_results) {
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diag = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diag = up;
      }
    }
    return row[b.size()];
  };
  std::vector<std::pair<size_t, std::string>> scored;
  for (const auto& c : candidates) scored.emplace_back(distance(wanted, c), c);
  std::stable_sort(scored.begin(), scored.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<std::string> out;
  for (const auto& [d, name] : scored) {
    if (out.size() == max_results) break;
    if (d <= std::max<size_t>(3, wanted.size() / 2)) out.push_back(name);
  }
  return out;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return q + "\"";
}

size_t invalid_utf8_at(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  auto cont = [&](size_t k, unsigned char lo = 0x80, unsigned char hi = 0xBF) {
    return k < n && p[k] >= lo && p[k] <= hi;
  };
  while (i < n) {
    const unsigned char c = p[i];
    size_t len = 0;
    if (c < 0x80) {
      len = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = cont(i + 1) ? 2 : 0;
    } else if (c >= 0xE0 && c <= 0xEF) {  // no overlong forms, no surrogates
      const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
      len = cont(i + 1, lo, hi) && cont(i + 2) ? 3 : 0;
    } else if (c >= 0xF0 && c <= 0xF4) {  // up to U+10FFFF
      const unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
      len = cont(i + 1, lo, hi) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    }
    if (len == 0) return i;
    i += len;
  }
  return std::string::npos;
}

}  // namespace xcam

namespace xcam {

namespace {

std::vector<std::string> components(const std::string& path) {
  std::vector<std::string> out;
  size_t from = 0;
  while (true) {
    const size_t dot = path.find('.', from);
    out.push_back(path.substr(from, dot - from));
    if (dot == std::string::npos) return out;
    from = dot + 1;
  }
}

}  // namespace

std::vector<std::string> expand_tap_patterns(const std::vector<std::string>& taps,
                                             const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (const auto& tap : taps) {
    const size_t end = tap.find_first_of("@[:/");
    const std::string path = tap.substr(0, end), rest = end == std::string::npos ? "" : tap.substr(end);
    if (path.find('*') == std::string::npos) {
      out.push_back(tap);
      continue;
    }
    const auto want = components(path);
    size_t found = 0;
    for (const auto& candidate : paths) {
      const auto have = components(candidate);
      bool fits = have.size() == want.size();
      for (size_t k = 0; fits && k < want.size(); ++k) fits = want[k] == "*" || want[k] == have[k];
      if (!fits) continue;
      out.push_back(candidate + rest);
      ++found;
    }
    XCAM_CHECK(found > 0, "layer pattern '{}' fits no module path ('*' stands for one whole component, as in "
               "blocks.*.attn/softmax); `xcam layers MODEL` lists the paths", tap);
  }
  return out;
}

}  // namespace xcam

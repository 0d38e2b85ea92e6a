// Small string helpers (no LibTorch).
#pragma once

#include <string>
#include <vector>

namespace xcam {

// The closest names to `wanted` among `candidates` (edit distance), best
// first; only reasonably close ones.
std::vector<std::string> closest_names(const std::string& wanted, const std::vector<std::string>& candidates,
                                       size_t max_results = 3);

// `s` as one CSV field: quoted (with doubled quotes) when it holds a comma,
// a quote or a newline.
std::string csv_field(const std::string& s);

// The offset of the first byte of `s` that is not well-formed UTF-8
// (overlong forms and surrogates included), or std::string::npos.
size_t invalid_utf8_at(const std::string& s);

// Taps with '*' in their module path (`blocks.*.attn/softmax`: a '*' stands
// for one whole path component) replaced by every module path in `paths`
// that fits, in `paths`' order, the rest of the tap (`/softmax`, `[1]`, `@0`,
// `:in`) kept; other taps as they are. Throws xcam::Error for a pattern that
// fits no path.
std::vector<std::string> expand_tap_patterns(const std::vector<std::string>& taps,
                                             const std::vector<std::string>& paths);

}  // namespace xcam

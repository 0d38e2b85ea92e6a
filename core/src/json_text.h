// JSON as the files xcam writes hold it.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace xcam {

// `j` as text, indented by `indent`. JSON holds UTF-8 only: a string with
// other bytes (a file name: any bytes are legal in Linux names) is written
// with U+FFFD in their place, never lost with its record.
inline std::string json_text(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace xcam

// What one map explains (no LibTorch types: the runtime's results carry it
// whole, and plugins build it).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace xcam {

// One resolved target of one sample. The fields below `label` are what the
// host reads; `payload` is the plugin's own, carried unchanged through every
// path that explains the target again (Score-CAM's masked copies, Ablation-
// CAM, the faithfulness metrics), and grows without an ABI change.
struct Target {
  std::string kind = "class";   // class | similarity | token | answer (plugin-defined)
  int64_t index = -1;           // class index or token id
  int64_t step = -1;            // sequence position, for token targets
  std::vector<int64_t> tokens;  // the answer's tokens, for answer targets
  std::string label;            // readable name: file names, titles
  std::string explains;         // what it explains, for the records: a class, a word, an answer, a reference id
  std::map<std::string, std::string> payload;  // plugin-defined
  bool padding = false;         // set by the runtime: a copy that fills a short list, not reported
};

}  // namespace xcam

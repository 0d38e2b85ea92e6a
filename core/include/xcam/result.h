// One map the runtime made (no LibTorch or OpenCV types: the Explainer's
// callers and the plugins' dataset tasks both hold it). Plugins built for
// ABI >= 2.2 see it through TaskHost, in vectors: its layout is frozen
// within ABI major 2 (a new field is a major change).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "xcam/target.h"

namespace xcam {

struct MapResult {
  std::string image_id;
  std::string on = "image";    // the sample's named image the map is drawn on (ArchPlugin::image_of)
  size_t rank = 0;             // position among this sample's targets
  std::string target_label;    // class name (or index when no labels are known)
  int64_t target_index = -1;
  double score = 0;            // the plugin's readable score (e.g. softmax probability)
  // The map's size: the image's model input size (per sample when the plugin
  // sizes each image itself, ArchPlugin::input_size); 1 x T for a text sample.
  int64_t height = 0, width = 0;
  std::vector<float> map;      // height x width, in [0, 1]
  std::vector<std::string> warnings;  // constant map, NaN/Inf, ...
  Target target;               // the whole target (kind, payload, ...), as the plugin resolved it
  std::map<std::string, std::string> meta;  // the plugin's facts about the sample (ABI 2.1 plugins)
  // Text samples: the token of each map value (ArchPlugin::token_layout's
  // words), drawn as a heat strip; empty for maps on images.
  std::vector<std::string> words;
};

}  // namespace xcam

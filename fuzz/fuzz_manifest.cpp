// libFuzzer: the JSON Lines sample manifest (read_manifest) and the sample
// ids derived from it. Accepted, or refused with one xcam::Error line.
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "xcam/experiment.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string file = xcam::fuzz::write_input("samples.jsonl", data, size);
  try {
    const auto samples = xcam::read_manifest(file);
    const auto ids = xcam::sample_ids(samples);
    if (ids.size() != samples.size()) __builtin_trap();
  } catch (const xcam::Error& e) {
    xcam::fuzz::check_refusal(e);
  }
  return 0;
}

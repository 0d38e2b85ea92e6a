// libFuzzer: the YAML experiment loader (load_experiment) on arbitrary text.
// It must accept the input or refuse it with one xcam::Error line; nothing
// else (a crash, a YAML exception escaping, a sanitizer report) may happen.
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "xcam/experiment.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string file = xcam::fuzz::write_input("experiment.yaml", data, size);
  try {
    const auto cfg = xcam::load_experiment(file);
    (void)cfg;
  } catch (const xcam::Error& e) {
    xcam::fuzz::check_refusal(e);
  }
  return 0;
}

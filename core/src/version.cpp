// The library's version (xcam/version.h).
#include "xcam/version.h"

namespace xcam {

const char* version() { return XCAM_VERSION; }

}  // namespace xcam

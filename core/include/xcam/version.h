// xcam's version, as the project and its installed package say it.
#pragma once

namespace xcam {

// "MAJOR.MINOR.PATCH" (CMake's PROJECT_VERSION).
const char* version();

}  // namespace xcam

# Finds the OpenCV modules xcam uses (core, imgproc, imgcodecs) without the full
# OpenCV CMake package, which Debian ships only with libopencv-dev.
find_path(OpenCVLite_INCLUDE_DIR opencv2/core.hpp PATH_SUFFIXES opencv4)
foreach(_m core imgproc imgcodecs)
  find_library(OpenCVLite_${_m}_LIBRARY opencv_${_m})
  list(APPEND _ocv_vars OpenCVLite_${_m}_LIBRARY)
endforeach()
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OpenCVLite REQUIRED_VARS OpenCVLite_INCLUDE_DIR ${_ocv_vars})
if(OpenCVLite_FOUND AND NOT TARGET xcam::opencv)
  add_library(xcam::opencv INTERFACE IMPORTED)
  set_target_properties(xcam::opencv PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${OpenCVLite_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES "${OpenCVLite_imgcodecs_LIBRARY};${OpenCVLite_imgproc_LIBRARY};${OpenCVLite_core_LIBRARY}")
endif()

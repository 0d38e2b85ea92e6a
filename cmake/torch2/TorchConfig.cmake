# Torch package for the CPU part of a PyPI torch wheel (LibTorch 2.x), as
# scripts/torch2_wheel.sh unpacks it: XCAM_TORCH2_ROOT/include and
# XCAM_TORCH2_ROOT/lib/{libtorch_cpu.so,libc10.so}. The wheel's own
# TorchConfig.cmake goes through Caffe2's CUDA detection and links
# libtorch.so, which forwards to libtorch_cuda.so; a CPU build needs neither.
# Defines what find_package(Torch) defines: the imported target `torch`,
# TORCH_LIBRARIES, TORCH_INCLUDE_DIRS, TORCH_CXX_FLAGS, TORCH_LIBRARY.
# Used by the cpu-torch2 preset (Torch_DIR=cmake/torch2).
if(NOT XCAM_TORCH2_ROOT)
  message(FATAL_ERROR "cmake/torch2: set XCAM_TORCH2_ROOT to the folder scripts/torch2_wheel.sh prints")
endif()
set(_root "${XCAM_TORCH2_ROOT}")
foreach(_f include/torch/script.h lib/libtorch_cpu.so lib/libc10.so)
  if(NOT EXISTS "${_root}/${_f}")
    message(FATAL_ERROR "cmake/torch2: ${_root}/${_f} is missing; run scripts/torch2_wheel.sh")
  endif()
endforeach()

set(Torch_VERSION "")
foreach(_part MAJOR MINOR PATCH)
  file(STRINGS "${_root}/include/torch/headeronly/version.h" _v REGEX "#define TORCH_VERSION_${_part} ")
  string(REGEX MATCH "[0-9]+$" _v "${_v}")
  list(APPEND Torch_VERSION "${_v}")
endforeach()
string(REPLACE ";" "." Torch_VERSION "${Torch_VERSION}")

set(TORCH_INCLUDE_DIRS "${_root}/include" "${_root}/include/torch/csrc/api/include")
set(TORCH_LIBRARY "${_root}/lib/libtorch_cpu.so")
# The wheels are built with the C++11 ABI since 2.7, as Debian's libraries are.
set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=1")

if(NOT TARGET torch)
  add_library(c10 SHARED IMPORTED)
  set_target_properties(c10 PROPERTIES IMPORTED_LOCATION "${_root}/lib/libc10.so"
                                       IMPORTED_NO_SONAME OFF)
  add_library(torch SHARED IMPORTED)
  set_target_properties(torch PROPERTIES
    IMPORTED_LOCATION "${TORCH_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${TORCH_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES c10
    INTERFACE_COMPILE_OPTIONS "${TORCH_CXX_FLAGS}")
  # LibTorch 2.x headers need C++20.
  target_compile_features(torch INTERFACE cxx_std_20)
endif()
set(TORCH_LIBRARIES torch)
set(TORCH_FOUND TRUE)
set(Torch_FOUND TRUE)
message(STATUS "xcam: LibTorch ${Torch_VERSION} (CPU libraries of the torch wheel) in ${_root}")

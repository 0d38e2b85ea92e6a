# What `cmake --install` lays out (docs/install.md): the CLI, libxcam.so, the
# public headers, the plugins where the CLI looks for them
# (<prefix>/lib/xcam/plugins), a CMake package (find_package(xcam): the
# exported target xcam::xcam, a version file, LibTorch found through its own
# config) and pkg-config's xcam.pc; and the Debian package (cpack -G DEB).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(XCAM_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/xcam)
# LibTorch outside the system's library paths (a wheel's torch/lib) is found
# at run time through the RPATH of what links it.
set_target_properties(xcam xcam_shared PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)

install(TARGETS xcam RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS xcam_shared EXPORT xcamTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/core/include/xcam DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
foreach(arch cnn reid captioner vlm)
  set_target_properties(xcam_plugin_${arch} PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
  install(TARGETS xcam_plugin_${arch} LIBRARY DESTINATION lib/xcam/plugins)  # where the CLI looks
endforeach()

install(EXPORT xcamTargets NAMESPACE xcam:: DESTINATION ${XCAM_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/install/xcamConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/xcamConfig.cmake INSTALL_DESTINATION ${XCAM_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/xcamConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/xcamConfig.cmake ${PROJECT_BINARY_DIR}/xcamConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/FindOpenCVLite.cmake
        DESTINATION ${XCAM_CMAKE_DIR})

# pkg-config: the include and library flags of xcam and of what its headers
# include (OpenCV's core, fmt, LibTorch's headers and libraries).
set(_pc_cflags "-I${OpenCVLite_INCLUDE_DIR}")
foreach(_dir ${TORCH_INCLUDE_DIRS})
  if(NOT _dir STREQUAL "/usr/include")
    string(APPEND _pc_cflags " -I${_dir}")
  endif()
endforeach()
string(APPEND _pc_cflags " ${TORCH_CXX_FLAGS}")
get_filename_component(_torch_libdir "${TORCH_LIBRARY}" DIRECTORY)
set(XCAM_PC_CFLAGS "${_pc_cflags}")
set(XCAM_PC_LIBS "-L${_torch_libdir} -Wl,-rpath,${_torch_libdir} -ltorch -ltorch_cpu -lc10 ${OpenCVLite_core_LIBRARY}")
# The .pc file finds its prefix from where it lies (relocatable, as the package's /usr).
file(RELATIVE_PATH XCAM_PC_UP "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
string(REGEX REPLACE "/$" "" XCAM_PC_UP "${XCAM_PC_UP}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/install/xcam.pc.in ${PROJECT_BINARY_DIR}/xcam.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/xcam.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# The Debian package: everything above, its run-time dependencies computed
# from the binaries by dpkg-shlibdeps; what building against the headers
# needs is suggested.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME xcam)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "xcam developers <xcam@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Class-activation maps and attention analysis for LibTorch models")
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "libtorch-dev, libopencv-core-dev, libfmt-dev, pkg-config, cmake")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
include(CPack)

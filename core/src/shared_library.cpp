// libxcam.so's own translation unit. The library is xcam's static libraries
// linked whole (core/CMakeLists.txt); nothing is defined here.

# Any version request is answered by the unpacked wheel (cmake/torch2/TorchConfig.cmake).
set(PACKAGE_VERSION_COMPATIBLE TRUE)

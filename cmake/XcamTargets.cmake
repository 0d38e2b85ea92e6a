# Helpers shared by xcam's targets.

# Warnings for our own code (not for third-party headers).
function(xcam_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
endfunction()

# Precompiled LibTorch header for a target whose sources include torch.
function(xcam_torch_pch target)
  if(XCAM_USE_PCH)
    target_precompile_headers(${target} PRIVATE <torch/script.h>)
  endif()
endfunction()

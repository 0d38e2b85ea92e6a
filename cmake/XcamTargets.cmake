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

# One LibTorch PCH shared by every target of `group` (same compile flags, and
# definitions that LibTorch's headers do not see): the first target of the
# group builds it, the others reuse it.
function(xcam_shared_torch_pch target group)
  get_property(owner GLOBAL PROPERTY XCAM_PCH_OWNER_${group})
  if(XCAM_USE_PCH AND owner)
    target_precompile_headers(${target} REUSE_FROM ${owner})
  else()
    xcam_torch_pch(${target})
    set_property(GLOBAL PROPERTY XCAM_PCH_OWNER_${group} ${target})
  endif()
endfunction()

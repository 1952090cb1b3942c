# SPDX-License-Identifier: Apache-2.0
# Warnings, sanitizers and -march for reparam's own tests, benches and examples. Linked PRIVATE;
# never part of reparam::reparam, whose users choose their own flags.
add_library(reparam_dev_flags INTERFACE)
target_compile_options(reparam_dev_flags INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Wold-style-cast
  -Wnon-virtual-dtor -Wdouble-promotion -Wcast-align -Wnull-dereference)
# GCC 12.2 (Debian bookworm) flags its own AVX-512 intrinsics (_mm512_undefined_*) as
# uninitialized once Eigen's GEMM kernels are inlined under -march=native (GCC PR 105593).
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(reparam_dev_flags INTERFACE -Wno-uninitialized -Wno-maybe-uninitialized)
endif()
if(REPARAM_WARNINGS_AS_ERRORS)
  target_compile_options(reparam_dev_flags INTERFACE -Werror)
endif()
if(REPARAM_NATIVE)
  target_compile_options(reparam_dev_flags INTERFACE -march=native)
endif()
if(REPARAM_SANITIZE)
  string(REPLACE ";" "," reparam_sanitizers "${REPARAM_SANITIZE}")
  target_compile_options(reparam_dev_flags INTERFACE
    -fsanitize=${reparam_sanitizers} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(reparam_dev_flags INTERFACE -fsanitize=${reparam_sanitizers})
endif()

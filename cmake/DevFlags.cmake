# SPDX-License-Identifier: Apache-2.0
# Warnings, sanitizers and -march for reparam's own tests, benches and examples. Linked PRIVATE;
# never part of reparam::reparam, whose users choose their own flags.
add_library(reparam_dev_flags INTERFACE)
target_compile_options(reparam_dev_flags INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Wold-style-cast
  -Wnon-virtual-dtor -Wdouble-promotion -Wcast-align -Wnull-dereference)
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

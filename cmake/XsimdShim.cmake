# SPDX-License-Identifier: Apache-2.0
# Debian's xsimd 8.1 exports a target whose link interface names `xtl`, which nothing provides, so
# linking fails with "cannot find -lxtl". reparam uses no part of xtl: define an empty target.
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()

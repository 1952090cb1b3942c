// SPDX-License-Identifier: Apache-2.0
// ISA selection. Kernels take `class Arch` as a template parameter; only public entry points
// default it to reparam::default_arch, which the caller's compile flags fix (-mavx2, -march=native,
// ...).
#ifndef REPARAM_KERNELS_ARCH_HPP
#define REPARAM_KERNELS_ARCH_HPP

#include <xsimd/xsimd.hpp>

namespace reparam {

/// The best ISA enabled by the compile flags of the including translation unit.
using default_arch = xsimd::default_arch;

/// x86 ISAs reparam has kernels for, best first, for xsimd::dispatch in multi-ISA engines.
using x86_arch_list = xsimd::arch_list<xsimd::avx512bw, xsimd::fma3<xsimd::avx2>, xsimd::sse2>;

}  // namespace reparam

#endif  // REPARAM_KERNELS_ARCH_HPP

// SPDX-License-Identifier: Apache-2.0
// ISA selection. Kernels take `class Arch` as a template parameter; only public entry points
// default it to reparam::default_arch, which the caller's compile flags fix (-mavx2, -march=native,
// ...).
#ifndef REPARAM_KERNELS_ARCH_HPP
#define REPARAM_KERNELS_ARCH_HPP

#include <type_traits>

#include <xsimd/xsimd.hpp>

/// 1 when the translation unit is compiled for AVX-512 VBMI and VNNI (e.g. -march=icelake-server,
/// -march=sapphirerapids, -march=znver4 or -march=native on such a CPU).
#if defined(__AVX512BW__) && defined(__AVX512VBMI__) && defined(__AVX512VNNI__)
#define REPARAM_WITH_AVX512VBMI_VNNI 1
#else
#define REPARAM_WITH_AVX512VBMI_VNNI 0
#endif

namespace reparam {

/// The best ISA enabled by the compile flags of the including translation unit.
using default_arch = xsimd::default_arch;

/// AVX-512BW plus VBMI (vpermb: a 64-entry byte lookup) and VNNI (vpdpbusd: four byte products
/// summed into int32), an arch tag xsimd 8.1 lacks. Its vector types are xsimd::avx512bw's (see
/// simd_arch_t); only the kernels that use the two extensions take it.
struct avx512vbmi_vnni : xsimd::avx512bw {
  static constexpr bool supported() noexcept { return REPARAM_WITH_AVX512VBMI_VNNI != 0; }
  static constexpr bool available() noexcept { return true; }
  static constexpr unsigned version() noexcept { return xsimd::generic::version(3, 4, 1); }
  static constexpr const char* name() noexcept { return "avx512vbmi_vnni"; }
};

/// The xsimd arch whose batch types an arch tag uses (itself, except for reparam's own tags).
template <class Arch>
using simd_arch_t =
    std::conditional_t<std::is_same_v<Arch, avx512vbmi_vnni>, xsimd::avx512bw, Arch>;

/// The best ISA the shift-add kernels can use under the compile flags of the including TU:
/// default_arch, or avx512vbmi_vnni when those extensions are enabled too.
using kernel_arch = std::conditional_t<avx512vbmi_vnni::supported() && xsimd::avx512bw::supported(),
                                       avx512vbmi_vnni, default_arch>;

/// x86 ISAs reparam has kernels for, best first, for xsimd::dispatch in multi-ISA engines.
using x86_arch_list = xsimd::arch_list<xsimd::avx512bw, xsimd::fma3<xsimd::avx2>, xsimd::sse2>;

}  // namespace reparam

#endif  // REPARAM_KERNELS_ARCH_HPP

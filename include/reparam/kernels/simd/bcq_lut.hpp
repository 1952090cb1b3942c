// SPDX-License-Identifier: Apache-2.0
// Path selection for the LUT product on packed binary-coded weights. A path is compiled into a
// translation unit when its compile flags enable the ISA (the `Arch` ceiling, reparam::kernel_arch
// by default) and is usable when the running CPU has it too; best_lut_path picks the best usable
// one, and bcq_lut_rows runs any usable path. Every path is bit-identical to the scalar reference
// of its mode, so the choice changes speed only.
#ifndef REPARAM_KERNELS_SIMD_BCQ_LUT_HPP
#define REPARAM_KERNELS_SIMD_BCQ_LUT_HPP

#include <cstdint>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include <reparam/config.hpp>
#include <reparam/core/index.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/bcq_lut_layout.hpp>
#include <reparam/kernels/bcq_lut_tables.hpp>
#include <reparam/kernels/simd/bcq_lut_avx2.hpp>
#include <reparam/kernels/simd/bcq_lut_avx512.hpp>
#include <reparam/kernels/simd/bcq_lut_generic.hpp>

namespace reparam::kernels {

/// Kernel paths of the LUT product, worst to best.
///  - generic:          portable C++ (any CPU)
///  - avx2:             AVX2 + FMA: vpshufb on int8 tables, vpermps on float tables
///  - avx512bw:         the same on 512-bit registers
///  - avx512vbmi_vnni:  vpermb over four k-groups' tables + vpdpbusd (fast mode); lossless as
///                      avx512bw
enum class lut_path : std::uint8_t { generic = 0, avx2 = 1, avx512bw = 2, avx512vbmi_vnni = 3 };

inline constexpr lut_path all_lut_paths[] = {lut_path::generic, lut_path::avx2, lut_path::avx512bw,
                                             lut_path::avx512vbmi_vnni};

constexpr const char* lut_path_name(lut_path path) noexcept {
  switch (path) {
    case lut_path::generic:
      return "generic";
    case lut_path::avx2:
      return "avx2";
    case lut_path::avx512bw:
      return "avx512bw";
    case lut_path::avx512vbmi_vnni:
      return "avx512vbmi_vnni";
  }
  return "unknown";
}

/// Whether `path` is compiled into instantiations for the ISA ceiling `Arch`.
template <class Arch = kernel_arch>
constexpr bool is_lut_path_compiled(lut_path path) noexcept {
  switch (path) {
    case lut_path::generic:
      return true;
    case lut_path::avx2:
      // xsimd's AVX-512 tags do not derive from the AVX2 ones, but every AVX-512 CPU and build
      // has AVX2 and FMA.
      return REPARAM_HAS_LUT_AVX2 != 0 && (std::is_base_of_v<xsimd::fma3<xsimd::avx2>, Arch> ||
                                           std::is_base_of_v<xsimd::avx512f, Arch>);
    case lut_path::avx512bw:
      return REPARAM_HAS_LUT_AVX512BW != 0 && std::is_base_of_v<xsimd::avx512bw, Arch>;
    case lut_path::avx512vbmi_vnni:
      return REPARAM_HAS_LUT_AVX512VBMI != 0 && std::is_same_v<Arch, avx512vbmi_vnni>;
  }
  return false;
}

/// Whether the running CPU has the ISA of `path` (cpuid; the result is cached).
inline bool is_lut_path_supported_by_cpu(lut_path path) noexcept {
  switch (path) {
    case lut_path::generic:
      return true;
    case lut_path::avx2:
      return xsimd::available_architectures().fma3_avx2 != 0;
    case lut_path::avx512bw:
      return xsimd::available_architectures().avx512bw != 0;
    case lut_path::avx512vbmi_vnni: {
#if defined(__GNUC__) || defined(__clang__)
      static const bool has_extensions =
          __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
      return xsimd::available_architectures().avx512bw != 0 && has_extensions;
#else
      return false;
#endif
    }
  }
  return false;
}

/// Whether `path` can run here: compiled for `Arch` and supported by the CPU.
template <class Arch = kernel_arch>
bool is_lut_path_usable(lut_path path) noexcept {
  return is_lut_path_compiled<Arch>(path) && is_lut_path_supported_by_cpu(path);
}

/// The best usable path.
template <class Arch = kernel_arch>
lut_path best_lut_path() noexcept {
  lut_path best = lut_path::generic;
  for (const lut_path path : all_lut_paths) {
    if (is_lut_path_usable<Arch>(path)) {
      best = path;
    }
  }
  return best;
}

/// Runs `path` (which must be usable: is_lut_path_usable<Arch>(path)) on rows [row_begin,
/// row_end) of every token of `tables`; see simd::bcq_lut_rows_generic for the contract.
template <class Arch = kernel_arch>
void bcq_lut_rows(lut_path path, const bcq_lut_operand& w, const bcq_lut_tables& tables,
                  float* REPARAM_RESTRICT y, index y_row_stride, index row_begin,
                  index row_end) noexcept {
  switch (path) {
    case lut_path::avx512vbmi_vnni:
      if constexpr (is_lut_path_compiled<Arch>(lut_path::avx512vbmi_vnni)) {
#if REPARAM_HAS_LUT_AVX512VBMI
        simd::bcq_lut_rows_avx512vbmi(avx512vbmi_vnni{}, w, tables, y, y_row_stride, row_begin,
                                      row_end);
        return;
#endif
      }
      break;
    case lut_path::avx512bw:
      if constexpr (is_lut_path_compiled<Arch>(lut_path::avx512bw)) {
#if REPARAM_HAS_LUT_AVX512BW
        simd::bcq_lut_rows_avx512bw(xsimd::avx512bw{}, w, tables, y, y_row_stride, row_begin,
                                    row_end);
        return;
#endif
      }
      break;
    case lut_path::avx2:
      if constexpr (is_lut_path_compiled<Arch>(lut_path::avx2)) {
#if REPARAM_HAS_LUT_AVX2
        simd::bcq_lut_rows_avx2(xsimd::fma3<xsimd::avx2>{}, w, tables, y, y_row_stride, row_begin,
                                row_end);
        return;
#endif
      }
      break;
    case lut_path::generic:
      break;
  }
  simd::bcq_lut_rows_generic(Arch{}, w, tables, y, y_row_stride, row_begin, row_end);
}

/// Builds the tables with the vector width of `Arch` (same entries on every path).
template <class Arch = kernel_arch>
void build_lut_tables_for(lut_mode mode, const float* REPARAM_RESTRICT x, index batch,
                          index x_row_stride, index cols, index group_size,
                          float* REPARAM_RESTRICT float_entries,
                          std::int8_t* REPARAM_RESTRICT int8_entries,
                          float* REPARAM_RESTRICT group_scale, float* REPARAM_RESTRICT group_sum,
                          float* REPARAM_RESTRICT scratch) noexcept {
  build_lut_tables(simd_arch_t<Arch>{}, mode, x, batch, x_row_stride, cols, group_size,
                   float_entries, int8_entries, group_scale, group_sum, scratch);
}

}  // namespace reparam::kernels

#endif  // REPARAM_KERNELS_SIMD_BCQ_LUT_HPP

// SPDX-License-Identifier: Apache-2.0
// Builds the per-token lookup tables of the LUT kernels (layout in kernels/bcq_lut_layout.hpp):
// 16 signed sums per k-group of four activations, as float (lossless) or as int8 with one scale
// per group (fast), plus each group's plain activation sum. The entries are computed with the
// exact float additions of kernels::reference::lut_entry, vectorized over the 16 entries of a
// k-group (the sign patterns are constant masks XORed onto broadcast activations), so every path
// sees the same tables bit for bit.
#ifndef REPARAM_KERNELS_BCQ_LUT_TABLES_HPP
#define REPARAM_KERNELS_BCQ_LUT_TABLES_HPP

#include <cstdint>
#include <cstring>

#include <xsimd/xsimd.hpp>

#include <reparam/config.hpp>
#include <reparam/core/index.hpp>
#include <reparam/kernels/bcq_lut_layout.hpp>
#include <reparam/kernels/reference/bcq_multiply.hpp>

namespace reparam::kernels {

/// Floats of scratch build_lut_tables needs (fast mode: one group's float entries).
constexpr index lut_tables_scratch_floats(index group_size) noexcept {
  return lut_quads_per_group(group_size) * lut_quad_entries;
}

namespace detail {

/// sign_masks[u][e]: the float sign bit when bit u of e is clear (s_u = -1), else 0.
struct lut_sign_masks {
  alignas(64) std::uint32_t bits[4][16];
};

constexpr lut_sign_masks make_lut_sign_masks() noexcept {
  lut_sign_masks m{};
  for (unsigned u = 0; u < 4; ++u) {
    for (unsigned e = 0; e < 16; ++e) {
      m.bits[u][e] = ((e >> u) & 1u) != 0 ? 0u : 0x80000000u;
    }
  }
  return m;
}

inline constexpr lut_sign_masks lut_signs = make_lut_sign_masks();

/// The 16 entries of one k-group (`count` activations at x, the rest taken as +0) into out[16].
/// The entries for a count < 4 differ from lut_entry(x, count, e) only where a padding sign bit
/// is set (never looked up: packed padding bits are 0, and adding s * 0 = -0 is exact).
template <class Arch>
inline void lut_kgroup_entries(const float* x, int count, float* REPARAM_RESTRICT out) noexcept {
  using batch = xsimd::batch<float, Arch>;
  using ubatch = xsimd::batch<std::uint32_t, Arch>;
  constexpr auto lanes = static_cast<index>(batch::size);
  static_assert(lut_entries % lanes == 0, "a k-group's 16 entries fill whole batches");
  const float x0 = x[0];
  const float x1 = count > 1 ? x[1] : 0.0f;
  const float x2 = count > 2 ? x[2] : 0.0f;
  const float x3 = count > 3 ? x[3] : 0.0f;
  const auto signed_term = [](float v, unsigned u, index e0) {
    const ubatch mask = ubatch::load_aligned(&lut_signs.bits[u][e0]);
    return xsimd::bitwise_cast<batch>(xsimd::bitwise_cast<ubatch>(batch(v)) ^ mask);
  };
  for (index e0 = 0; e0 < lut_entries; e0 += lanes) {
    batch t = signed_term(x0, 0, e0);
    t = t + signed_term(x1, 1, e0);
    t = t + signed_term(x2, 2, e0);
    t = t + signed_term(x3, 3, e0);
    t.store_unaligned(out + e0);
  }
}

/// Largest |entry| over `count` floats and whether all are finite.
template <class Arch>
inline void lut_max_abs(const float* entries, index count, float& max_abs,
                        bool& is_finite) noexcept {
  using batch = xsimd::batch<float, Arch>;
  constexpr auto lanes = static_cast<index>(batch::size);
  batch m(0.0f);
  batch nonfinite(0.0f);  // accumulates (t - t): 0 for finite t, NaN otherwise
  for (index i = 0; i < count; i += lanes) {
    const batch t = batch::load_unaligned(entries + i);
    m = xsimd::max(m, xsimd::abs(t));
    nonfinite = nonfinite + (t - t);
  }
  alignas(64) float lanes_max[batch::size];
  m.store_aligned(lanes_max);
  max_abs = 0.0f;
  for (const float v : lanes_max) {
    max_abs = v > max_abs ? v : max_abs;
  }
  is_finite = xsimd::hadd(nonfinite) == 0.0f;
}

/// codes[i] = quantizer.code(entries[i]) for `count` entries (a multiple of 16), vectorized:
/// the product and the round-half-even conversion (cvtps2dq under the default rounding mode, as
/// std::nearbyint) are the same operations as the scalar code's, so the codes agree bit for bit.
template <class Arch>
inline void lut_quantize(const float* entries, index count,
                         const reference::lut_quantizer& quantizer,
                         std::int8_t* REPARAM_RESTRICT codes) noexcept {
  if (!quantizer.is_finite) {
    std::memset(codes, 0, static_cast<std::size_t>(count));
    return;
  }
  using batch = xsimd::batch<float, Arch>;
  using ibatch = xsimd::batch<std::int32_t, Arch>;
  constexpr auto lanes = static_cast<index>(batch::size);
  const batch inverse(quantizer.inverse);
  const ibatch high(127);
  const ibatch low(-127);
  alignas(64) std::int32_t wide[lut_entries];
  for (index i = 0; i < count; i += lut_entries) {
    for (index j = 0; j < lut_entries; j += lanes) {
      const ibatch q = xsimd::nearbyint_as_int(batch::load_unaligned(entries + i + j) * inverse);
      xsimd::min(xsimd::max(q, low), high).store_aligned(wide + j);
    }
    for (index j = 0; j < lut_entries; ++j) {
      codes[i + j] = static_cast<std::int8_t>(wide[j]);
    }
  }
}

}  // namespace detail

/// Tables of `batch` tokens: x is batch rows of `cols` floats, x_row_stride apart; cols is
/// groups * group_size. Lossless writes float_entries; fast writes int8_entries and group_scale
/// (using `scratch`, lut_tables_scratch_floats(group_size) floats). Both write group_sum. Output
/// arrays are [batch][groups][quads][4][16] entries and [batch][groups] per-group values.
/// Preconditions (unchecked): sizes as stated, no overlap. No allocation, noexcept.
template <class Arch>
void build_lut_tables(Arch, lut_mode mode, const float* REPARAM_RESTRICT x, index batch,
                      index x_row_stride, index cols, index group_size,
                      float* REPARAM_RESTRICT float_entries,
                      std::int8_t* REPARAM_RESTRICT int8_entries,
                      float* REPARAM_RESTRICT group_scale, float* REPARAM_RESTRICT group_sum,
                      float* REPARAM_RESTRICT scratch) noexcept {
  const index groups = cols / group_size;
  const index quads = lut_quads_per_group(group_size);
  const index group_entries = quads * lut_quad_entries;
  const index kgroups = (group_size + 3) / 4;
  for (index b = 0; b < batch; ++b) {
    const float* xb = x + b * x_row_stride;
    for (index g = 0; g < groups; ++g) {
      const float* xg = xb + g * group_size;
      group_sum[b * groups + g] = reference::lut_group_sum(xg, group_size);
      const index offset = (b * groups + g) * group_entries;
      float* entries = mode == lut_mode::lossless ? float_entries + offset : scratch;
      for (index k = 0; k < kgroups; ++k) {
        detail::lut_kgroup_entries<Arch>(xg + 4 * k, reference::lut_kgroup_count(group_size, k),
                                         entries + k * lut_entries);
      }
      // Whole padding k-groups of the last quad: every entry is a sum of four zeros.
      for (index k = kgroups; k < quads * 4; ++k) {
        const float zeros[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        detail::lut_kgroup_entries<Arch>(zeros, 4, entries + k * lut_entries);
      }
      if (mode == lut_mode::fast) {
        float max_abs = 0.0f;
        bool is_finite = true;
        detail::lut_max_abs<Arch>(entries, group_entries, max_abs, is_finite);
        const reference::lut_quantizer quantizer =
            reference::lut_quantizer::from_max(max_abs, is_finite);
        group_scale[b * groups + g] = quantizer.scale;
        detail::lut_quantize<Arch>(entries, group_entries, quantizer, int8_entries + offset);
      }
    }
  }
}

}  // namespace reparam::kernels

#endif  // REPARAM_KERNELS_BCQ_LUT_TABLES_HPP

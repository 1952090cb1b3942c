// SPDX-License-Identifier: Apache-2.0
// The portable path of the LUT product on packed binary-coded weights: plain C++ over the layout
// of kernels/bcq_lut_layout.hpp, one row at a time. It runs on any CPU (the fallback where
// AVX2 is missing) and is the readable model of what the SIMD paths vectorize: for every
// (tile, token, group) it looks up each row's 4-bit sign indices in the token's tables and adds
// them in k-group order, then applies the scales once per (row, group, plane).
#ifndef REPARAM_KERNELS_SIMD_BCQ_LUT_GENERIC_HPP
#define REPARAM_KERNELS_SIMD_BCQ_LUT_GENERIC_HPP

#include <cmath>
#include <cstdint>

#include <reparam/config.hpp>
#include <reparam/core/half.hpp>
#include <reparam/core/index.hpp>
#include <reparam/kernels/bcq_lut_layout.hpp>

namespace reparam::kernels::simd {

/// Y[b, r] for rows r in [row_begin, row_end) and every token b of `tables` (y rows
/// y_row_stride floats apart): equal bit for bit to kernels::reference::bcq_multiply_rows
/// (lossless tables) or bcq_multiply_rows_fast (fast tables) on the unpacked weights. Only the
/// rows in the range are written. Safe to call concurrently on disjoint row ranges. No
/// allocation, noexcept. `Arch` is unused (the path is scalar) but kept for the uniform kernel
/// signature.
template <class Arch>
void bcq_lut_rows_generic(Arch, const bcq_lut_operand& w, const bcq_lut_tables& tables,
                          float* REPARAM_RESTRICT y, index y_row_stride, index row_begin,
                          index row_end) noexcept {
  const index quads = w.quads_per_group;
  const bool is_fast = tables.mode == lut_mode::fast;
  const index tile_end = (row_end + lut_tile_rows - 1) / lut_tile_rows;
  for (index tile = row_begin / lut_tile_rows; tile < tile_end; ++tile) {
    for (index b = 0; b < tables.batch; ++b) {
      float acc[lut_tile_rows] = {};
      for (index g = 0; g < w.groups; ++g) {
        const std::uint8_t* record = w.record(tile, g);
        float converted[9 * lut_tile_rows];
        const float* sc = w.has_half_scales ? converted : w.scales(record, 0);
        if (w.has_half_scales) {
          f16_to_float_n(w.half_scales(record), converted, w.scale_count());
        }
        float plane_sum[lut_tile_rows] = {};  // fast mode: sum_p alpha_p * I_p
        for (int p = 0; p < w.bits; ++p) {
          float partial[lut_tile_rows] = {};
          std::int32_t counts[lut_tile_rows] = {};
          for (index q = 0; q < quads; ++q) {
            for (int h = 0; h < 2; ++h) {
              const std::uint8_t* block = bcq_lut_operand::block(record, q, p, h, w.bits);
              for (index i = 0; i < 16; ++i) {
                const index low_row = h * lut_half_rows + i;
                const index high_row = low_row + 16;
                for (index s = 0; s < 4; ++s) {
                  const unsigned byte = block[4 * i + s];
                  if (is_fast) {
                    const std::int8_t* table = tables.int8_quad(b, g, q, quads) + s * lut_entries;
                    counts[low_row] += table[byte & 15u];
                    counts[high_row] += table[byte >> 4];
                  } else {
                    const float* table = tables.float_quad(b, g, q, quads) + s * lut_entries;
                    partial[low_row] = partial[low_row] + table[byte & 15u];
                    partial[high_row] = partial[high_row] + table[byte >> 4];
                  }
                }
              }
            }
          }
          const float* alpha = sc + p * lut_tile_rows;
          for (index i = 0; i < lut_tile_rows; ++i) {
            if (is_fast) {
              plane_sum[i] = std::fma(alpha[i], static_cast<float>(counts[i]), plane_sum[i]);
            } else {
              acc[i] = std::fma(alpha[i], partial[i], acc[i]);
            }
          }
        }
        if (is_fast) {
          const float sigma = tables.group_scale[b * tables.groups + g];
          for (index i = 0; i < lut_tile_rows; ++i) {
            acc[i] = std::fma(sigma, plane_sum[i], acc[i]);
          }
        }
        if (w.has_offsets) {
          const float* offsets = sc + w.bits * lut_tile_rows;
          const float sum = tables.group_sum[b * tables.groups + g];
          for (index i = 0; i < lut_tile_rows; ++i) {
            acc[i] = std::fma(offsets[i], sum, acc[i]);
          }
        }
      }
      float* yb = y + b * y_row_stride;
      for (index i = 0; i < lut_tile_rows; ++i) {
        const index r = tile * lut_tile_rows + i;
        if (r >= row_begin && r < row_end) {
          yb[r] = acc[i];
        }
      }
    }
  }
}

}  // namespace reparam::kernels::simd

#endif  // REPARAM_KERNELS_SIMD_BCQ_LUT_GENERIC_HPP

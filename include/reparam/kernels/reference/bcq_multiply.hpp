// SPDX-License-Identifier: Apache-2.0
// Scalar reference product of binary-coded weights with a batch of activations, Y = X W^T, read
// straight from the packed sign planes (ShiftAddLLM, You et al. 2024, eq. 1; LUT-GEMM's BCQ
// GEMV). It is the specification, the fallback and the test oracle of the fast shift-add kernels:
// its summation order, written out below, is part of the contract and the lossless SIMD kernels
// reproduce it bit for bit. Used by reparam::shiftadd::multiply.
#ifndef REPARAM_KERNELS_REFERENCE_BCQ_MULTIPLY_HPP
#define REPARAM_KERNELS_REFERENCE_BCQ_MULTIPLY_HPP

#include <cmath>
#include <cstdint>

#include <reparam/config.hpp>
#include <reparam/core/index.hpp>

namespace reparam::kernels::reference {

/// Raw description of a binary-coded matrix W [rows, cols] (the layout of
/// reparam::shiftadd::binary_coded_matrix, which documents it with an ASCII table):
///
///   planes   uint32 [bits, rows, words_per_row]   bit c%32 of word c/32 set iff s_p[r, c] = +1
///   scales   float  [scale_major, groups, bits]   alpha
///   offsets  float  [scale_major, groups]         nullptr when the matrix has no offsets
///
/// scale_major is rows (is_column_wise false: group g of row r is the columns
/// [g*group_size, (g+1)*group_size)) or cols (is_column_wise true: group g of column c is the rows
/// [g*group_size, (g+1)*group_size)).
struct bcq_operand {
  const std::uint32_t* planes = nullptr;
  const float* scales = nullptr;
  const float* offsets = nullptr;
  index rows = 0;
  index cols = 0;
  index words_per_row = 0;
  index group_size = 0;
  index groups = 0;
  int bits = 0;
  bool is_column_wise = false;
};

/// Y[b, r] = sum_c W[r, c] X[b, c] for rows r in [row_begin, row_end) and batch rows b in
/// [0, batch): X is `batch` rows of w.cols floats, `x_row_stride` floats apart; Y is `batch` rows,
/// `y_row_stride` floats apart, of which columns [row_begin, row_end) are written (and nothing
/// else is touched).
///
/// Summation order (the contract the SIMD kernels reproduce bit for bit). All arithmetic is
/// float; "fma" is std::fma (one rounding), "+" and "-" are single float operations, and every
/// sum starts from +0.0f and runs in the order given:
///
///   row-wise scales (is_column_wise false), for each (b, r):
///     acc = 0
///     for g = 0 .. groups-1:                       (columns C_g = [g*G, (g+1)*G))
///       for p = 0 .. bits-1:
///         partial = 0;  for c in C_g ascending: partial = partial + (s_p[r,c] ? X[b,c] : -X[b,c])
///         acc = fma(alpha[r, g, p], partial, acc)
///       if offsets:
///         sum = 0;  for c in C_g ascending: sum = sum + X[b,c]
///         acc = fma(offset[r, g], sum, acc)
///     Y[b, r] = acc
///
///   column-wise scales (is_column_wise true), for each (b, r), with g = r / G:
///     acc = 0
///     for c = 0 .. cols-1:
///       v = 0;  for p = 0 .. bits-1: v = v + (s_p[r,c] ? alpha[c, g, p] : -alpha[c, g, p])
///       if offsets: v = v + offset[c, g]
///       acc = fma(v, X[b,c], acc)
///     Y[b, r] = acc
///
/// (v is exactly binary_coded_matrix::value(r, c), so the column-wise product equals a dense
/// product of reconstruct(W) accumulated column by column with fma.) Negation is exact, so
/// -X[b,c] never rounds. The result does not depend on the compiler's -ffp-contract setting:
/// the only products are the explicit fmas.
///
/// Non-finite activations propagate: every X[b, c] enters every Y[b, r] with a nonzero or
/// zero factor, so a NaN anywhere in row b of X makes all of row b of Y NaN, and an infinity
/// gives +-inf or NaN (inf - inf, or 0 * inf when a scale or weight is zero).
///
/// Preconditions (unchecked; the public entry points validate): the operand is consistent,
/// 0 <= row_begin <= row_end <= rows, X and Y do not overlap. Safe to call concurrently on
/// disjoint row ranges of the same Y. No allocation, noexcept.
/// Cost: batch * (row_end - row_begin) * cols * (bits + has_offsets) float additions.
inline void bcq_multiply_rows(const bcq_operand& w, const float* REPARAM_RESTRICT x, index batch,
                              index x_row_stride, float* REPARAM_RESTRICT y, index y_row_stride,
                              index row_begin, index row_end) noexcept {
  const index group_size = w.group_size;
  for (index b = 0; b < batch; ++b) {
    const float* xb = x + b * x_row_stride;
    float* yb = y + b * y_row_stride;
    for (index r = row_begin; r < row_end; ++r) {
      float acc = 0.0f;
      if (!w.is_column_wise) {
        const float* alpha = w.scales + r * w.groups * w.bits;
        for (index g = 0; g < w.groups; ++g) {
          const index first = g * group_size;
          const index last = first + group_size;
          for (int p = 0; p < w.bits; ++p) {
            const std::uint32_t* words = w.planes + (p * w.rows + r) * w.words_per_row;
            float partial = 0.0f;
            for (index c = first; c < last; ++c) {
              const bool is_positive = ((words[c >> 5] >> (c & 31)) & 1u) != 0;
              partial = partial + (is_positive ? xb[c] : -xb[c]);
            }
            acc = std::fma(alpha[g * w.bits + p], partial, acc);
          }
          if (w.offsets != nullptr) {
            float sum = 0.0f;
            for (index c = first; c < last; ++c) {
              sum = sum + xb[c];
            }
            acc = std::fma(w.offsets[r * w.groups + g], sum, acc);
          }
        }
      } else {
        const index g = r / group_size;
        for (index c = 0; c < w.cols; ++c) {
          const float* alpha = w.scales + (c * w.groups + g) * w.bits;
          float v = 0.0f;
          for (int p = 0; p < w.bits; ++p) {
            const std::uint32_t word = w.planes[(p * w.rows + r) * w.words_per_row + (c >> 5)];
            v = v + (((word >> (c & 31)) & 1u) != 0 ? alpha[p] : -alpha[p]);
          }
          if (w.offsets != nullptr) {
            v = v + w.offsets[c * w.groups + g];
          }
          acc = std::fma(v, xb[c], acc);
        }
      }
      yb[r] = acc;
    }
  }
}

}  // namespace reparam::kernels::reference

#endif  // REPARAM_KERNELS_REFERENCE_BCQ_MULTIPLY_HPP

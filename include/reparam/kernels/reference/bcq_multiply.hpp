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
#include <limits>

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

/// Entry `e` of the lookup table of one k-group: the signed sum of its `count` (1..4)
/// activations, ((s0 x0 + s1 x1) + s2 x2) + s3 x3 truncated to `count` terms, with s_u = +1 if bit
/// u of e is set and -1 otherwise (kernels/bcq_lut_layout.hpp). Every path builds its tables with
/// exactly these float additions, so the entries agree bit for bit.
inline float lut_entry(const float* x, int count, unsigned e) noexcept {
  float t = (e & 1u) != 0 ? x[0] : -x[0];
  for (int u = 1; u < count; ++u) {
    t = t + (((e >> u) & 1u) != 0 ? x[u] : -x[u]);
  }
  return t;
}

/// Columns of k-group `k` of a group of `group_size` columns (4, or fewer for the last one).
constexpr int lut_kgroup_count(index group_size, index k) noexcept {
  const index left = group_size - 4 * k;
  return left >= 4 ? 4 : static_cast<int>(left);
}

/// The int8 table quantizer of one (token, group) in the fast mode: sigma = m / 127 with m the
/// largest |entry| of the group's tables; entries map to clamp(nearbyint(T * (127 / m)), -127,
/// 127). A group whose entries are not all finite (a NaN or Inf activation, or an overflowing
/// sum) gets sigma = NaN and all-zero codes, so every output of that token is NaN; an all-zero
/// group gets sigma = 0 and zero codes.
struct lut_quantizer {
  float scale = 0.0f;    // sigma
  float inverse = 0.0f;  // 127 / m
  bool is_finite = true;

  static lut_quantizer from_max(float max_abs, bool is_finite) noexcept {
    lut_quantizer q;
    q.is_finite = is_finite;
    if (!is_finite) {
      q.scale = std::numeric_limits<float>::quiet_NaN();
    } else if (max_abs > 0.0f) {
      q.scale = max_abs / 127.0f;
      q.inverse = 127.0f / max_abs;
    }
    return q;
  }
  std::int8_t code(float entry) const noexcept {
    if (!is_finite) {
      return 0;
    }
    const float r = std::nearbyint(entry * inverse);
    return static_cast<std::int8_t>(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
  }
};

/// The fast-mode quantizer of the group of `group_size` activations at `x` (all 16 entries of
/// every k-group examined).
inline lut_quantizer lut_group_quantizer(const float* x, index group_size) noexcept {
  float max_abs = 0.0f;
  bool is_finite = true;
  for (index k = 0; 4 * k < group_size; ++k) {
    const int count = lut_kgroup_count(group_size, k);
    for (unsigned e = 0; e < 16; ++e) {
      const float t = lut_entry(x + 4 * k, count, e);
      is_finite = is_finite && std::isfinite(t);
      max_abs = std::fabs(t) > max_abs ? std::fabs(t) : max_abs;
    }
  }
  return lut_quantizer::from_max(max_abs, is_finite);
}

/// The sum of a group's activations in table order: per k-group ((x0 + x1) + x2) + x3, the
/// k-group sums added in order from +0.
inline float lut_group_sum(const float* x, index group_size) noexcept {
  float sum = 0.0f;
  for (index k = 0; 4 * k < group_size; ++k) {
    sum = sum + lut_entry(x + 4 * k, lut_kgroup_count(group_size, k), 15u);
  }
  return sum;
}

/// The 4-bit index of (plane p, row r) at the `count` columns starting at `col`.
inline unsigned lut_index(const bcq_operand& w, int plane, index row, index col,
                          int count) noexcept {
  const std::uint32_t* words = w.planes + (plane * w.rows + row) * w.words_per_row;
  unsigned e = 0;
  for (int u = 0; u < count; ++u) {
    const index c = col + u;
    e |= ((words[c >> 5] >> (c & 31)) & 1u) << u;
  }
  return e;
}

/// Y[b, r] = sum_c W[r, c] X[b, c] for rows r in [row_begin, row_end) and batch rows b in
/// [0, batch): X is `batch` rows of w.cols floats, `x_row_stride` floats apart; Y is `batch` rows,
/// `y_row_stride` floats apart, of which columns [row_begin, row_end) are written (and nothing
/// else is touched).
///
/// Summation order (the contract the lossless lookup-table kernels reproduce bit for bit). All
/// arithmetic is float; "fma" is std::fma (one rounding), "+" is one float addition, and every
/// sum starts from +0.0f and runs in the order given:
///
///   row-wise scales (is_column_wise false), for each (b, r):
///     acc = 0
///     for g = 0 .. groups-1:                  (columns C_g = [g*G, (g+1)*G), k-groups of 4)
///       for p = 0 .. bits-1:
///         partial = 0
///         for each k-group k of C_g in order: partial = partial + lut_entry(X[b, k], s_p[r, k])
///         acc = fma(alpha[r, g, p], partial, acc)
///       if offsets: acc = fma(offset[r, g], lut_group_sum(X[b, C_g]), acc)
///     Y[b, r] = acc
///
///   where lut_entry is the signed sum ((s0 x0 + s1 x1) + s2 x2) + s3 x3 of the k-group's (up to)
///   four columns, i.e. the table entry the kernels look up.
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
          for (int p = 0; p < w.bits; ++p) {
            float partial = 0.0f;
            for (index k = 0; 4 * k < group_size; ++k) {
              const int count = lut_kgroup_count(group_size, k);
              const index col = first + 4 * k;
              partial = partial + lut_entry(xb + col, count, lut_index(w, p, r, col, count));
            }
            acc = std::fma(alpha[g * w.bits + p], partial, acc);
          }
          if (w.offsets != nullptr) {
            acc = std::fma(w.offsets[r * w.groups + g], lut_group_sum(xb + first, group_size), acc);
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

/// The fast (int8-table) product of row-wise binary-coded weights, the specification of the
/// kernels' lut_mode::fast. Same arguments and guarantees as bcq_multiply_rows; w must have
/// row-wise scales (is_column_wise false). For each (b, r):
///
///   acc = 0
///   for g = 0 .. groups-1:
///     quantizer Q = lut_group_quantizer(X[b, C_g])       (sigma_g and the int8 codes)
///     s = 0
///     for p = 0 .. bits-1:
///       I = sum over the k-groups k of C_g of Q.code(lut_entry(X[b, k], s_p[r, k]))  (exact int)
///       s = fma(alpha[r, g, p], float(I), s)
///     acc = fma(sigma_g, s, acc)
///     if offsets: acc = fma(offset[r, g], lut_group_sum(X[b, C_g]), acc)
///   Y[b, r] = acc
///
/// The only approximation against bcq_multiply_rows is the rounding of each table entry to a
/// multiple of sigma_g (|error| <= sigma_g / 2 per lookup). A NaN or Inf activation in a group
/// makes all of that token's outputs NaN (never +-Inf). Cost: as bcq_multiply_rows plus 16 entries
/// per k-group for each (b, r, g) (it recomputes the tables; it is an oracle, not a fast path).
inline void bcq_multiply_rows_fast(const bcq_operand& w, const float* REPARAM_RESTRICT x,
                                   index batch, index x_row_stride, float* REPARAM_RESTRICT y,
                                   index y_row_stride, index row_begin, index row_end) noexcept {
  const index group_size = w.group_size;
  for (index b = 0; b < batch; ++b) {
    const float* xb = x + b * x_row_stride;
    float* yb = y + b * y_row_stride;
    for (index r = row_begin; r < row_end; ++r) {
      const float* alpha = w.scales + r * w.groups * w.bits;
      float acc = 0.0f;
      for (index g = 0; g < w.groups; ++g) {
        const index first = g * group_size;
        const lut_quantizer quantizer = lut_group_quantizer(xb + first, group_size);
        float s = 0.0f;
        for (int p = 0; p < w.bits; ++p) {
          std::int32_t sum = 0;
          for (index k = 0; 4 * k < group_size; ++k) {
            const int count = lut_kgroup_count(group_size, k);
            const index col = first + 4 * k;
            sum += quantizer.code(lut_entry(xb + col, count, lut_index(w, p, r, col, count)));
          }
          s = std::fma(alpha[g * w.bits + p], static_cast<float>(sum), s);
        }
        acc = std::fma(quantizer.scale, s, acc);
        if (w.offsets != nullptr) {
          acc = std::fma(w.offsets[r * w.groups + g], lut_group_sum(xb + first, group_size), acc);
        }
      }
      yb[r] = acc;
    }
  }
}

}  // namespace reparam::kernels::reference

#endif  // REPARAM_KERNELS_REFERENCE_BCQ_MULTIPLY_HPP

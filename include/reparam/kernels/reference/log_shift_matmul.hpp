// SPDX-License-Identifier: Apache-2.0
// Scalar reference of the shift-form product of log-quantized probabilities with integer values,
// P_hat V_hat (RepQ-ViT, Li et al. ICCV 2023, sec. 4.3: log-sqrt2 attention reparameterized into
// log2 + shift): integer sums of V rows per quantization level ("buckets", adds only), then one
// combine per output in double. It is the specification, the fallback and the test oracle of
// kernels/simd/log_shift_matmul.hpp; the order of the double operations written below is part of
// the contract and the SIMD paths reproduce it bit for bit. Used by scale::multiply_shift_form.
#ifndef REPARAM_KERNELS_REFERENCE_LOG_SHIFT_MATMUL_HPP
#define REPARAM_KERNELS_REFERENCE_LOG_SHIFT_MATMUL_HPP

#include <cmath>
#include <cstdint>

#include <reparam/config.hpp>
#include <reparam/core/index.hpp>

namespace reparam::kernels {

/// Raw description of one shift-form product out = P_hat V_hat:
///
///   codes   uint8 [rows, inner], row i at codes + i * code_row_stride: level q < levels, or a
///           zero code (any value >= levels; it contributes nothing)
///   v       int16 [inner, cols], row j at v + j * v_row_stride: centred integer values v - z_v
///
/// Level q stands for 2^-shift(q) (log2: shift q) or 2^-ceil(q/2) * sqrt2^(q odd) (sqrt2 levels:
/// shift ceil(q/2)); `scale` is the product of the two quantizer scales, double(p_scale) *
/// double(v_scale) (exact: two floats multiply exactly in double).
struct log_shift_operand {
  const std::uint8_t* codes = nullptr;
  index code_row_stride = 0;
  const std::int16_t* v = nullptr;
  index v_row_stride = 0;
  index inner = 0;  ///< <= log_shift_max_inner
  index cols = 0;
  int levels = 0;  ///< 1 .. 255
  bool is_sqrt2 = false;
  double scale = 1.0;
};

/// Largest inner dimension whose bucket sums are exact in int32: a sum of at most 65536 values
/// in [-32768, 32767] lies in [-2^31, 2^31 - 65536].
inline constexpr index log_shift_max_inner = 65536;

/// sqrt(2) rounded to double (0x1.6a09e667f3bcdp+0), the factor of the odd levels.
inline constexpr double log_shift_sqrt2 = 1.41421356237309504880;

/// The right shift of level q: ceil(q / 2) for sqrt2 levels, q for log2 levels.
constexpr int log_shift_of(int level, bool is_sqrt2) noexcept {
  return is_sqrt2 ? (level + 1) / 2 : level;
}

/// Whether level q carries the sqrt2 factor (odd sqrt2 level).
constexpr bool log_shift_is_odd(int level, bool is_sqrt2) noexcept {
  return is_sqrt2 && (level & 1) != 0;
}

namespace reference {

/// Bucket stage of output row `row`: buckets[q * cols + c] = sum of v[j, c] over the keys j whose
/// code codes[row, j] equals q, for every level q in [0, levels) (empty levels are 0). Exact
/// int32 additions (inner <= log_shift_max_inner), so the order does not matter. `buckets` holds
/// levels * cols int32 and is fully overwritten. No allocation, noexcept.
inline void log_shift_buckets(const log_shift_operand& op, index row,
                              std::int32_t* REPARAM_RESTRICT buckets) noexcept {
  const index cols = op.cols;
  for (index e = 0; e < index{op.levels} * cols; ++e) {
    buckets[e] = 0;
  }
  const std::uint8_t* code = op.codes + row * op.code_row_stride;
  for (index j = 0; j < op.inner; ++j) {
    const int level = code[j];
    if (level >= op.levels) {
      continue;  // zero code
    }
    const std::int16_t* vj = op.v + j * op.v_row_stride;
    std::int32_t* bucket = buckets + level * cols;
    for (index c = 0; c < cols; ++c) {
      bucket[c] += vj[c];
    }
  }
}

/// Combine stage: out[c] for c in [0, cols) from the buckets of one row. The specification (all
/// arithmetic in double; "+" and "*" are single IEEE operations, round to nearest even; fma is
/// std::fma, one rounding):
///
///   s_even = +0.0, s_odd = +0.0
///   for q = 0 .. levels-1 (ascending):
///     t = double(buckets[q, c]) * 2^-shift(q)        exact: |bucket| < 2^31, shift <= 254
///     if q is an odd sqrt2 level: s_odd = s_odd + t  else: s_even = s_even + t
///   out[c] = float(scale * fma(sqrt2, s_odd, s_even))   (the float conversion rounds once more)
///
/// log2 levels all go to s_even (s_odd stays +0 and the fma returns s_even). Because every
/// product by 2^-shift is exact, a compiler contracting `s + b * 2^-shift` into an fma changes
/// nothing, and the one remaining product-plus-sum is an explicit fma: the result does not depend
/// on -ffp-contract. No allocation, noexcept.
inline void log_shift_combine(const log_shift_operand& op,
                              const std::int32_t* REPARAM_RESTRICT buckets,
                              float* REPARAM_RESTRICT out) noexcept {
  const index cols = op.cols;
  for (index c = 0; c < cols; ++c) {
    double s_even = 0.0;
    double s_odd = 0.0;
    for (int q = 0; q < op.levels; ++q) {
      const double t =
          std::ldexp(static_cast<double>(buckets[q * cols + c]), -log_shift_of(q, op.is_sqrt2));
      if (log_shift_is_odd(q, op.is_sqrt2)) {
        s_odd = s_odd + t;
      } else {
        s_even = s_even + t;
      }
    }
    out[c] = static_cast<float>(op.scale * std::fma(log_shift_sqrt2, s_odd, s_even));
  }
}

/// out[i, c] for rows i in [row_begin, row_end): log_shift_buckets then log_shift_combine per row;
/// row i of out starts at out + i * out_row_stride. `workspace` holds levels * cols int32 (see
/// scale::log_shift_workspace_size). Preconditions (unchecked; scale::multiply_shift_form_rows
/// validates): a consistent operand, 0 <= row_begin <= row_end <= rows, out does not overlap the
/// inputs or the workspace. Safe to call concurrently on disjoint row ranges with distinct
/// workspaces. No allocation, noexcept. Cost: inner * cols int32 additions (fewer: zero codes are
/// skipped) plus levels * cols double additions per row.
inline void log_shift_matmul_rows(const log_shift_operand& op, float* REPARAM_RESTRICT out,
                                  index out_row_stride, index row_begin, index row_end,
                                  std::int32_t* REPARAM_RESTRICT workspace) noexcept {
  for (index i = row_begin; i < row_end; ++i) {
    log_shift_buckets(op, i, workspace);
    log_shift_combine(op, workspace, out + i * out_row_stride);
  }
}

}  // namespace reference
}  // namespace reparam::kernels

#endif  // REPARAM_KERNELS_REFERENCE_LOG_SHIFT_MATMUL_HPP

// SPDX-License-Identifier: Apache-2.0
// Binary-coding quantization (BCQ) of weights: the per-group fitter w ~= sum_p alpha_p s_p
// (greedy init plus alternating least-squares rounds, optional APoT scales) used by the weight-only
// quantizer here and, per column group, by the GPTQ loop of shiftadd/gptq.hpp.
//
// Source: You et al., "ShiftAddLLM", NeurIPS 2024: eq. 1 (BCQ and its greedy init), Alg. 1 (the
// alternating refinement) and eq. 2 (additive power-of-two scales); see
// docs/research/shiftadd.md sections 2.2, 2.3 and 7.1.
#ifndef REPARAM_SHIFTADD_BCQ_HPP
#define REPARAM_SHIFTADD_BCQ_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/core/workspace.hpp>
#include <reparam/shiftadd/detail/bcq_checks.hpp>
#include <reparam/shiftadd/detail/bcq_fit.hpp>
#include <reparam/shiftadd/formats.hpp>

namespace reparam::shiftadd {

/// Options of the BCQ fitter.
///  - bits:       planes q, 1..max_bits.
///  - rounds:     alternating refinement rounds after the greedy init (>= 0; the paper's scripts
///                use 50, "20 works too"); the fit stops earlier once the codes no longer change.
///  - apot_terms: 0 for float scales; K in 1..8 rounds every scale to a sum of K signed powers of
///                two (paper eq. 2; the paper's code uses K = 3) in every round of two extra
///                alternating phases (see fit_bcq_group).
struct bcq_params {
  int bits = 3;
  int rounds = 20;
  int apot_terms = 0;
};

/// Largest number of APoT terms per scale.
inline constexpr int max_apot_terms = 8;

/// APoT rounding (paper eq. 2): term k = POT(r_k) = sign(r_k) 2^round(log2 |r_k|) with
/// r_0 = alpha and r_{k+1} = r_k - term k. Writes `terms` terms to `out` and returns their sum.
///
/// Every residual r_k - term k is exact in float (Sterbenz: term k is within a factor sqrt 2 of
/// r_k), so the returned float is exactly the sum of the terms and equals alpha - r_terms.
/// round(log2 |r|) is decided exactly from the binary mantissa (log-domain ties cannot occur).
/// Once a residual is 0, or its power would fall below 2^-128 (int8 exponents), the remaining terms
/// have sign 0 (value 0); alpha 0 gives all terms sign 0. Powers above 2^127 are clamped to 2^127
/// (unreachable for |alpha| < 2^126). No allocation.
inline float round_apot(float alpha, int terms, apot_term* out) noexcept {
  return detail::apot_round(alpha, terms, out);
}

/// The level of a code: sum_p (bit p of code ? +alphas[p] : -alphas[p]), summed in float in plane
/// order 0..bits-1 (the order of binary_coded_matrix::value()). No allocation.
inline float bcq_level(const float* alphas, int bits, std::uint8_t code) noexcept {
  return detail::bcq_level_sum(alphas, bits, code);
}

/// For each of `count` values read at values[k * stride], writes to codes[k] the code of the
/// nearest level bcq_level(alphas, bits, code) (ties between two levels go to the lower level;
/// among codes with equal levels the smallest code). The alphas are used as given (any sign and
/// order). The decision is exact: each value is compared with the smallest float above each exact
/// midpoint between neighbouring levels.
/// Preconditions: bits in 1..max_bits, finite inputs. No allocation (a 2^bits level table on the
/// stack); O(2^bits + count * min(2^bits, 16 + bits)). Thread safe.
inline void assign_bcq_codes(const float* values, index count, index stride, const float* alphas,
                             int bits, std::uint8_t* codes) noexcept {
  detail::assign_bcq_codes_any(values, count, stride, alphas, bits, codes);
}

/// Fits one group of `count` values read at values[k * stride] (paper Alg. 1):
///  1. greedy residual init: r = w; for each plane p: s_p = sign(r) (sign(0) = +1),
///     alpha_p = mean |r|, r -= alpha_p s_p;
///  2. state 0: those alphas sorted descending with optimally re-assigned codes (never worse
///     than the greedy codes);
///  3. up to `rounds` rounds of: least-squares alphas for the current codes from the q x q normal
///     equations (S^T S) a = S^T w in double (Cholesky; a ridge of 1e-8 * count when S^T S is
///     singular, e.g. two identical planes); alpha = |a| sorted descending (a sign flip or a
///     permutation of planes leaves the level set unchanged, and the codes are re-assigned
///     anyway); optimal code assignment (as assign_bcq_codes). Stops at a fixed point (codes
///     unchanged) or at error 0.
///  4. only if apot_terms > 0: the same loop twice more with every alpha APoT-rounded
///     (round_apot) before the assignment: once started from the best state of 3 (so the
///     result is never worse than APoT-rounding the float fit), once from the greedy alphas (the
///     paper's schedule, which alone stalls at small K: 1.66x the float-scale error at 4 bits,
///     K = 2, against 1.07x from the float fit; at 3 bits, K = 1 it is the better start).
/// The best state (lowest squared error, in double) is returned: of steps 2-3 for float scales,
/// of the two APoT phases otherwise. So a ridge or float rounding never makes the result worse
/// than state 0, and its codes are always nearest-level codes for its alphas. Writes `bits` alphas
/// (>= 0, descending), codes[k] (bit p set <=> s_p = +1) and, if params.apot_terms > 0 and terms !=
/// nullptr, bits * apot_terms terms (plane-major) whose exact sum equals each alpha. An all-zero
/// group gives alphas 0; a constant group is reproduced exactly (float scales). Deterministic.
/// Preconditions (callers validate): count >= 1, bits in 1..max_bits, rounds >= 0, apot_terms in
/// 0..8, finite values with |v| <= 2^100. No allocation (stack: about 2 KB at 3 bits, 10 KB at
/// 8 bits), noexcept. Thread safe.
/// O(count * bits^2 + rounds * (count * 2^min(bits, 4) + 2^bits * bits^2)), tripled with APoT.
inline void fit_bcq_group(const float* values, index count, index stride, const bcq_params& params,
                          float* alphas, std::uint8_t* codes, apot_term* terms) noexcept {
  detail::fit_bcq_group_stats(values, count, stride, params.bits, params.rounds, params.apot_terms,
                              alphas, codes, terms);
}

namespace detail {

/// Sets the sign bits of codes[0..count) at (row, first_col + k): whole 32-bit words are
/// assembled in a register (branch-free) and OR-ed in once. The planes must be zero there.
inline void pack_codes_along_row(binary_coded_matrix& out, index row, index first_col,
                                 const std::uint8_t* codes, index count) noexcept {
  for (int plane = 0; plane < out.bits(); ++plane) {
    std::uint32_t* words = out.plane_row(plane, row);
    index k = 0;
    while (k < count) {
      const index col = first_col + k;
      const auto shift = static_cast<unsigned>(col & 31);
      const index take = std::min<index>(32 - static_cast<index>(shift), count - k);
      std::uint32_t word = 0;
      for (index i = 0; i < take; ++i) {
        word |= ((static_cast<std::uint32_t>(codes[k + i]) >> plane) & 1u)
                << (shift + static_cast<unsigned>(i));
      }
      words[col >> 5] |= word;
      k += take;
    }
  }
}

/// Sets the sign bits of codes[0..count) at (first_row + k, col), branch-free.
inline void pack_codes_along_column(binary_coded_matrix& out, index col, index first_row,
                                    const std::uint8_t* codes, index count) noexcept {
  const auto shift = static_cast<unsigned>(col & 31);
  for (int plane = 0; plane < out.bits(); ++plane) {
    for (index k = 0; k < count; ++k) {
      out.plane_row(plane, first_row + k)[col >> 5] |=
          ((static_cast<std::uint32_t>(codes[k]) >> plane) & 1u) << shift;
    }
  }
}

/// Entry-point checks of bcq_params.
inline void check_bcq_params(const char* function, const bcq_params& params) {
  reparam::detail::check(params.bits >= 1 && params.bits <= max_bits, function, "bits ",
                         params.bits, " is outside [1, ", max_bits, "]");
  reparam::detail::check(params.rounds >= 0, function, "rounds ", params.rounds, " is negative");
  reparam::detail::check(params.apot_terms >= 0 && params.apot_terms <= max_apot_terms, function,
                         "apot_terms ", params.apot_terms, " is outside [0, ", max_apot_terms, "]");
}

}  // namespace detail

/// Weight-only BCQ of a whole matrix W [rows, cols]: every group is fitted independently on the
/// weights themselves (fit_bcq_group with `params`).
///  - scale_axis::rows:    group g of row r = columns [g G, (g+1) G).
///  - scale_axis::columns: group g of column c = rows [g G, (g+1) G).
/// group_size 0 means the whole row (rows) or column (columns). double weights are rounded to
/// float first.
/// Throws reparam::error for empty weights, bits outside 1..8, negative rounds, apot_terms outside
/// 0..8, group_size negative or not dividing the grouped dimension, and any non-finite weight or
/// |w| > 2^100 (named by (row, col)).
/// Allocates the result and one scratch buffer of group_size floats and bytes.
/// O(rows * cols * (bits^2 + rounds * bits)).
template <class Derived>
binary_coded_matrix quantize_bcq(const Eigen::MatrixBase<Derived>& weights,
                                 const bcq_params& params, index group_size,
                                 scale_axis axis = scale_axis::rows) {
  reparam::detail::static_check_input<Derived>();
  using scalar = typename Derived::Scalar;
  constexpr const char* function = "shiftadd::quantize_bcq";
  detail::check_bcq_params(function, params);
  reparam::detail::check(axis == scale_axis::rows || axis == scale_axis::columns, function, "axis ",
                         static_cast<int>(axis), " is not a scale_axis");
  reparam::detail::check(weights.rows() >= 1 && weights.cols() >= 1, function, "weights shape ",
                         weights.rows(), "x", weights.cols(), " is empty");
  const bool is_rows = axis == scale_axis::rows;
  const index grouped = is_rows ? weights.cols() : weights.rows();
  reparam::detail::check(group_size >= 0, function, "group_size ", group_size, " is negative");
  const index size = group_size == 0 ? grouped : group_size;
  reparam::detail::check(grouped % size == 0, function, "group_size ", size, " does not divide ",
                         is_rows ? "cols " : "rows ", grouped);
  detail::check_weights(function, weights);

  bcq_shape shape;
  shape.rows = weights.rows();
  shape.cols = weights.cols();
  shape.bits = params.bits;
  shape.group_size = size;
  shape.axis = axis;
  shape.apot_terms = params.apot_terms;
  binary_coded_matrix out(shape);

  const scalar* data = weights.derived().data();
  const index row_stride = weights.derived().rowStride();
  const index col_stride = weights.derived().colStride();
  // Rows of float weights are read in place; columns (strided) and double weights are gathered
  // into float scratch once per group, so the rounds run over contiguous memory.
  const bool is_direct = std::is_same_v<scalar, float> && is_rows;
  workspace_buffer buffer(workspace_bytes<float>(is_direct ? 0 : size) +
                          workspace_bytes<std::uint8_t>(size));
  workspace scratch = buffer.view();
  float* gathered = is_direct ? nullptr : scratch.take<float>(size);
  auto* codes = scratch.take<std::uint8_t>(size);

  const index majors = out.scale_major();
  const index groups = out.groups();
  const index major_stride = is_rows ? row_stride : col_stride;
  const index group_stride = is_rows ? col_stride : row_stride;
  for (index major = 0; major < majors; ++major) {
    for (index group = 0; group < groups; ++group) {
      const scalar* first = data + major * major_stride + group * size * group_stride;
      const float* values = nullptr;
      index stride = 1;
      if constexpr (std::is_same_v<scalar, float>) {
        if (is_direct) {
          values = first;
          stride = group_stride;
        }
      }
      if (values == nullptr) {
        for (index k = 0; k < size; ++k) {
          gathered[k] = static_cast<float>(first[k * group_stride]);
        }
        values = gathered;
      }
      apot_term* terms = params.apot_terms > 0 ? out.apot_of(major, group, 0) : nullptr;
      fit_bcq_group(values, size, stride, params, out.scales_of(major, group), codes, terms);
      if (is_rows) {
        detail::pack_codes_along_row(out, major, group * size, codes, size);
      } else {
        detail::pack_codes_along_column(out, major, group * size, codes, size);
      }
    }
  }
  return out;
}

}  // namespace reparam::shiftadd

#endif  // REPARAM_SHIFTADD_BCQ_HPP

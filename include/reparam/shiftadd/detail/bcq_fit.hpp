// SPDX-License-Identifier: Apache-2.0
// Internals of the BCQ group fitter (shiftadd/bcq.hpp): the sorted level table and nearest-level
// search, the greedy init, the q x q least-squares solve and the alternating loop. Not API.
#ifndef REPARAM_SHIFTADD_DETAIL_BCQ_FIT_HPP
#define REPARAM_SHIFTADD_DETAIL_BCQ_FIT_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include <reparam/config.hpp>
#include <reparam/core/index.hpp>
#include <reparam/shiftadd/formats.hpp>

namespace reparam::shiftadd::detail {

/// sum_p (bit p of code ? +alphas[p] : -alphas[p]) in float, plane order (as
/// binary_coded_matrix::value()).
inline float bcq_level_sum(const float* alphas, int bits, unsigned code) noexcept {
  float sum = 0.0f;
  for (int p = 0; p < bits; ++p) {
    sum += ((code >> p) & 1u) != 0 ? alphas[p] : -alphas[p];
  }
  return sum;
}

/// APoT rounding, see shiftadd::round_apot.
inline float apot_round(float alpha, int terms, apot_term* out) noexcept {
  float residual = alpha;
  float sum = 0.0f;
  bool is_done = false;
  for (int k = 0; k < terms; ++k) {
    apot_term term{};
    if (!is_done && residual != 0.0f) {
      int exponent = 0;
      // |r| = m 2^e with m in [0.5, 1): round(log2 |r|) = e if m >= sqrt(1/2), else e - 1. A
      // float mantissa never equals sqrt(1/2), so the comparison decides the rounding exactly.
      const float mantissa = std::frexp(std::fabs(residual), &exponent);
      int power = static_cast<double>(mantissa) >= 0.70710678118654752440 ? exponent : exponent - 1;
      power = power > 127 ? 127 : power;
      if (power < -128) {
        is_done = true;
      } else {
        const float value = std::ldexp(residual > 0.0f ? 1.0f : -1.0f, power);
        term.sign = static_cast<std::int8_t>(residual > 0.0f ? 1 : -1);
        term.exponent = static_cast<std::int8_t>(power);
        residual -= value;  // exact (Sterbenz: value is within a factor sqrt 2 of residual)
        sum += value;       // exact: every partial sum equals alpha - residual
      }
    }
    out[k] = term;
  }
  return sum;
}

/// Bits as an array bound.
template <int Bits>
inline constexpr std::size_t planes_v = static_cast<std::size_t>(Bits);

/// The 2^Bits levels of a group, sorted ascending, with decision thresholds. Equal levels are
/// merged into the entry of their smallest code and the tail is padded with copies of the largest
/// level, so the table always has 2^Bits entries.
///
/// threshold[j] is the smallest float strictly above the exact midpoint of level[j] and
/// level[j+1] (+inf past the last distinct level). For a float v, "v is nearer to level[j+1]"
/// is exactly v >= threshold[j], so the nearest index (ties to the lower level) is the number of
/// thresholds <= v: float compares only, decided exactly.
template <int Bits>
struct bcq_level_table {
  static constexpr int size = 1 << Bits;
  float level[std::size_t{1} << Bits];
  float threshold[std::size_t{1} << Bits];
  std::uint8_t code[std::size_t{1} << Bits];
};

/// True iff the float v lies strictly above the midpoint of the floats a and b, decided exactly:
/// with sum = a + b in double and error its rounding error (TwoSum), the midpoint is
/// (sum + error) / 2 and the test is 2 v - sum > error. When 2 v is within a factor 2 of sum the
/// subtraction is exact (Sterbenz); otherwise |2 v - sum| dwarfs |error| and rounding cannot flip
/// the comparison.
inline bool above_midpoint(float v, double sum, double error) noexcept {
  return 2.0 * static_cast<double>(v) - sum > error;
}

/// The neighbouring floats of a finite x (no libm call; -0 and +0 are treated alike).
inline float next_float_up(float x) noexcept {
  if (x == 0.0f) {
    return std::numeric_limits<float>::denorm_min();
  }
  std::uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof bits);
  bits = x > 0.0f ? bits + 1u : bits - 1u;
  std::memcpy(&x, &bits, sizeof bits);
  return x;
}

inline float next_float_down(float x) noexcept { return -next_float_up(-x); }

template <int Bits>
void build_level_table(const float* alphas, bcq_level_table<Bits>& table) noexcept {
  constexpr int size = bcq_level_table<Bits>::size;
  // The levels sorted plane by plane: if the levels of planes 0..p-1 are sorted, subtracting
  // alpha_p and adding alpha_p keep each half sorted (float rounding is monotone), so one merge
  // per plane sorts them: O(2^Bits) in total. Each level is the float sum in plane order, exactly
  // as bcq_level_sum computes it.
  float levels[2][std::size_t{1} << Bits];
  std::uint8_t codes[2][std::size_t{1} << Bits];
  levels[0][0] = 0.0f;
  codes[0][0] = 0;
  int from = 0;
  for (int p = 0, n = 1; p < Bits; ++p, n *= 2) {
    const float alpha = alphas[p];
    const float* level = levels[from];
    const std::uint8_t* code = codes[from];
    float* out_level = levels[1 - from];
    std::uint8_t* out_code = codes[1 - from];
    const auto bit = static_cast<std::uint8_t>(1u << p);
    int i = 0;  // next of the "-alpha" half
    int j = 0;  // next of the "+alpha" half
    for (int o = 0; o < 2 * n; ++o) {
      const float minus = i < n ? level[i] + -alpha : 0.0f;
      const float plus = j < n ? level[j] + alpha : 0.0f;
      if (j >= n || (i < n && !(plus < minus))) {
        out_level[o] = minus;
        out_code[o] = code[i];
        ++i;
      } else {
        out_level[o] = plus;
        out_code[o] = static_cast<std::uint8_t>(code[j] | bit);
        ++j;
      }
    }
    from = 1 - from;
  }
  // Merge equal levels into one entry carrying their smallest code.
  int unique = 0;
  for (int i = 0; i < size; ++i) {
    const float value = levels[from][i];
    const std::uint8_t code = codes[from][i];
    if (unique == 0 || value != table.level[unique - 1]) {
      table.level[unique] = value;
      table.code[unique] = code;
      ++unique;
    } else {
      table.code[unique - 1] = std::min(table.code[unique - 1], code);
    }
  }
  for (int i = unique; i < size; ++i) {
    table.level[i] = table.level[unique - 1];
    table.code[i] = table.code[unique - 1];
  }
  constexpr float infinity = std::numeric_limits<float>::infinity();
  for (int j = 0; j < size; ++j) {
    if (j + 1 >= unique) {
      table.threshold[j] = infinity;
      continue;
    }
    const auto a = static_cast<double>(table.level[j]);
    const auto b = static_cast<double>(table.level[j + 1]);
    const double sum = a + b;
    const double b_part = sum - a;
    const double error = (a - (sum - b_part)) + (b - b_part);
    // Start from the float nearest the midpoint and step to the smallest float above it (at
    // most a step or two; the midpoint lies strictly between a and b, so this ends in (a, b]).
    auto t = static_cast<float>(0.5 * sum);
    while (above_midpoint(t, sum, error)) {
      t = next_float_down(t);
    }
    while (!above_midpoint(t, sum, error)) {
      t = next_float_up(t);
    }
    table.threshold[j] = t;
  }
}

/// Index of the level nearest to `value` (ties to the lower level) = the number of thresholds
/// <= value. Up to 16 levels: a branch-free count over all thresholds; above: Bits halving steps.
template <int Bits>
int nearest_level(const bcq_level_table<Bits>& table, float value) noexcept {
  constexpr int size = bcq_level_table<Bits>::size;
  if constexpr (Bits <= 4) {
    int i = 0;
    for (int j = 0; j + 1 < size; ++j) {
      i += value >= table.threshold[j] ? 1 : 0;
    }
    return i;
  } else {
    int i = 0;
    for (int step = size / 2; step > 0; step /= 2) {
      i += value >= table.threshold[i + step - 1] ? step : 0;
    }
    return i;
  }
}

/// Calls body(k, values[k * stride]) for k in [0, count), with a unit-stride copy of the loop
/// so the common contiguous case compiles to plain loads.
template <class Body>
void for_each_value(const float* values, index count, index stride, Body&& body) noexcept {
  if (stride == 1) {
    for (index k = 0; k < count; ++k) {
      body(k, values[k]);
    }
  } else {
    for (index k = 0; k < count; ++k) {
      body(k, values[k * stride]);
    }
  }
}

/// nearest[k] = nearest_level(table, values[(first + k) * stride]) for k < n (n <= 64). Up to
/// 16 levels the threshold count is a fixed-length compare-and-add per value, which the compiler
/// vectorizes across values.
template <int Bits, class Stride>
void nearest_levels(const float* REPARAM_RESTRICT values, index first, index n, Stride stride,
                    const bcq_level_table<Bits>& table,
                    std::int32_t* REPARAM_RESTRICT nearest) noexcept {
  if constexpr (Bits <= 4) {
    for (index k = 0; k < n; ++k) {
      const float value = values[(first + k) * stride];
      std::int32_t i = 0;
      for (int j = 0; j + 1 < bcq_level_table<Bits>::size; ++j) {
        i += value >= table.threshold[j] ? 1 : 0;
      }
      nearest[k] = i;
    }
  } else {
    for (index k = 0; k < n; ++k) {
      nearest[k] = nearest_level(table, values[(first + k) * stride]);
    }
  }
}

/// Values are processed in chunks of this many: first their nearest indices (vectorized), then
/// the per-value bookkeeping.
inline constexpr index assign_chunk = 64;

/// codes[k] = nearest code of values[k * stride].
template <int Bits, class Stride>
void assign_codes_strided(const float* values, index count, Stride stride,
                          const bcq_level_table<Bits>& table,
                          std::uint8_t* REPARAM_RESTRICT codes) noexcept {
  std::int32_t nearest[assign_chunk];
  for (index first = 0; first < count; first += assign_chunk) {
    const index n = std::min(assign_chunk, count - first);
    nearest_levels(values, first, n, stride, table, nearest);
    for (index k = 0; k < n; ++k) {
      codes[first + k] = table.code[nearest[k]];
    }
  }
}

template <int Bits>
void assign_codes(const float* values, index count, index stride,
                  const bcq_level_table<Bits>& table, std::uint8_t* codes) noexcept {
  if (stride == 1) {
    assign_codes_strided(values, count, std::integral_constant<index, 1>{}, table, codes);
  } else {
    assign_codes_strided(values, count, stride, table, codes);
  }
}

/// Per table entry: how many values chose it and their sum (for S^T S and S^T w).
template <int Bits>
struct bcq_histogram {
  std::int32_t count[bcq_level_table<Bits>::size];
  double sum[bcq_level_table<Bits>::size];
};

/// Nearest-code assignment that also fills the histogram and counts the codes that differ from
/// the previous content of codes (only if compare is true). Returns the squared error in double,
/// accumulated in eight partial sums (k mod 8; a fixed order, so deterministic) that vectorize.
template <int Bits, class Stride>
double assign_and_measure_strided(const float* REPARAM_RESTRICT values, index count, Stride stride,
                                  const bcq_level_table<Bits>& table,
                                  std::uint8_t* REPARAM_RESTRICT codes,
                                  bcq_histogram<Bits>& histogram, bool compare,
                                  bool& is_changed) noexcept {
  constexpr int size = bcq_level_table<Bits>::size;
  std::fill(histogram.count, histogram.count + size, 0);
  std::fill(histogram.sum, histogram.sum + size, 0.0);
  unsigned changes = 0;
  double partial[8] = {};
  std::int32_t nearest[assign_chunk];
  double square[assign_chunk];
  for (index first = 0; first < count; first += assign_chunk) {
    const index n = std::min(assign_chunk, count - first);
    nearest_levels(values, first, n, stride, table, nearest);
    for (index k = 0; k < n; ++k) {
      const double diff = static_cast<double>(values[(first + k) * stride]) -
                          static_cast<double>(table.level[nearest[k]]);
      square[k] = diff * diff;
    }
    for (index k = n; k < assign_chunk; ++k) {
      square[k] = 0.0;
    }
    for (index block = 0; block < assign_chunk; block += 8) {
      for (int lane = 0; lane < 8; ++lane) {
        partial[lane] += square[block + lane];
      }
    }
    for (index k = 0; k < n; ++k) {
      const std::int32_t i = nearest[k];
      const std::uint8_t code = table.code[i];
      changes |= compare && codes[first + k] != code ? 1u : 0u;
      codes[first + k] = code;
      histogram.count[i] += 1;
      histogram.sum[i] += static_cast<double>(values[(first + k) * stride]);
    }
  }
  is_changed = changes != 0;
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
         ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

template <int Bits>
double assign_and_measure(const float* values, index count, index stride,
                          const bcq_level_table<Bits>& table, std::uint8_t* codes,
                          bcq_histogram<Bits>& histogram, bool compare, bool& is_changed) noexcept {
  if (stride == 1) {
    return assign_and_measure_strided(values, count, std::integral_constant<index, 1>{}, table,
                                      codes, histogram, compare, is_changed);
  }
  return assign_and_measure_strided(values, count, stride, table, codes, histogram, compare,
                                    is_changed);
}

/// Solves (G + ridge I) x = rhs by Cholesky (G symmetric Bits x Bits, lower triangle used).
/// Returns false when a pivot is <= tolerance.
template <int Bits>
bool cholesky_solve(const double (&gram)[planes_v<Bits>][planes_v<Bits>],
                    const double (&rhs)[planes_v<Bits>], double ridge, double tolerance,
                    double* x) noexcept {
  double l[planes_v<Bits>][planes_v<Bits>];
  for (int j = 0; j < Bits; ++j) {
    double pivot = gram[j][j] + ridge;
    for (int k = 0; k < j; ++k) {
      pivot -= l[j][k] * l[j][k];
    }
    if (!(pivot > tolerance)) {
      return false;
    }
    l[j][j] = std::sqrt(pivot);
    for (int i = j + 1; i < Bits; ++i) {
      double value = gram[i][j];
      for (int k = 0; k < j; ++k) {
        value -= l[i][k] * l[j][k];
      }
      l[i][j] = value / l[j][j];
    }
  }
  double y[planes_v<Bits>];
  for (int i = 0; i < Bits; ++i) {
    double value = rhs[i];
    for (int k = 0; k < i; ++k) {
      value -= l[i][k] * y[k];
    }
    y[i] = value / l[i][i];
  }
  for (int i = Bits - 1; i >= 0; --i) {
    double value = y[i];
    for (int k = i + 1; k < Bits; ++k) {
      value -= l[k][i] * x[k];
    }
    x[i] = value / l[i][i];
  }
  return true;
}

/// Least-squares alphas for the codes recorded in the histogram: (S^T S) a = S^T w, with
/// (S^T S)_pq = sum_c n_c s_p(c) s_q(c) and (S^T w)_p = sum_c (sum of w with code c) s_p(c).
/// A pivot below 1e-10 * count means S^T S is singular (e.g. two planes with equal or opposite
/// signs everywhere): then a ridge of 1e-8 * count is added. Returns false if even that fails.
template <int Bits>
bool least_squares_alphas(const bcq_level_table<Bits>& table, const bcq_histogram<Bits>& histogram,
                          index count, double* alphas) noexcept {
  double gram[planes_v<Bits>][planes_v<Bits>] = {};
  double rhs[planes_v<Bits>] = {};
  for (int i = 0; i < bcq_level_table<Bits>::size; ++i) {
    if (histogram.count[i] == 0) {
      continue;
    }
    const auto n = static_cast<double>(histogram.count[i]);
    const double sum = histogram.sum[i];
    const unsigned code = table.code[i];
    double sign[planes_v<Bits>];
    for (int p = 0; p < Bits; ++p) {
      sign[p] = ((code >> p) & 1u) != 0 ? 1.0 : -1.0;
    }
    for (int p = 0; p < Bits; ++p) {
      rhs[p] += sign[p] * sum;
      for (int q = 0; q <= p; ++q) {
        gram[p][q] += sign[p] * sign[q] * n;
      }
    }
  }
  const auto total = static_cast<double>(count);
  if (cholesky_solve<Bits>(gram, rhs, 0.0, 1e-10 * total, alphas)) {
    return true;
  }
  return cholesky_solve<Bits>(gram, rhs, 1e-8 * total, 0.0, alphas);
}

/// |alpha|, optional APoT rounding, then planes sorted by alpha descending (stable), carrying
/// their APoT terms along.
inline void normalize_alphas(float* alphas, int bits, int apot_terms, apot_term* terms) noexcept {
  for (int p = 0; p < bits; ++p) {
    alphas[p] = std::fabs(alphas[p]);
    if (apot_terms > 0) {
      alphas[p] =
          apot_round(alphas[p], apot_terms, terms + static_cast<std::ptrdiff_t>(p) * apot_terms);
    }
  }
  for (int p = 1; p < bits; ++p) {
    for (int j = p; j > 0 && alphas[j] > alphas[j - 1]; --j) {
      std::swap(alphas[j], alphas[j - 1]);
      for (int t = 0; t < apot_terms; ++t) {
        std::swap(terms[j * apot_terms + t], terms[(j - 1) * apot_terms + t]);
      }
    }
  }
}

/// One greedy pass for plane P over values[k * stride]: residual r = w - sum_{j<P} alpha_j s_j
/// (in float, plane order), sets bit P of codes[k] to r >= 0 and returns sum |r| in double.
/// Chunks of 64: the residuals first (a fixed-length loop that vectorizes), then the sum in eight
/// double partial sums (k mod 8; a fixed order, so deterministic).
template <int Bits, int P, class Stride>
double greedy_pass(const float* REPARAM_RESTRICT values, index count, Stride stride,
                   const float (&alpha)[8], std::uint8_t* REPARAM_RESTRICT codes) noexcept {
  constexpr index chunk = 64;
  float magnitude[chunk];
  double partial[8] = {};
  for (index first = 0; first < count; first += chunk) {
    const index n = std::min(chunk, count - first);
    const float* chunk_values = values + first * stride;
    std::uint8_t* chunk_codes = codes + first;
    for (index k = 0; k < n; ++k) {
      float residual = chunk_values[k * stride];
      const unsigned code = P == 0 ? 0u : chunk_codes[k];
      for (int j = 0; j < P; ++j) {
        residual -= ((code >> j) & 1u) != 0 ? alpha[j] : -alpha[j];
      }
      chunk_codes[k] = static_cast<std::uint8_t>(code | ((residual >= 0.0f ? 1u : 0u) << P));
      magnitude[k] = std::fabs(residual);
    }
    for (index k = n; k < chunk; ++k) {
      magnitude[k] = 0.0f;
    }
    for (index block = 0; block < chunk; block += 8) {
      for (int lane = 0; lane < 8; ++lane) {
        partial[lane] += static_cast<double>(magnitude[block + lane]);
      }
    }
  }
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
         ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

template <int Bits, class Stride, int... P>
void greedy_passes(const float* values, index count, Stride stride, float (&alpha)[8],
                   std::uint8_t* codes, std::integer_sequence<int, P...> /*planes*/) noexcept {
  const auto n = static_cast<double>(count);
  // The comma fold runs the passes in plane order.
  ((alpha[P] = static_cast<float>(greedy_pass<Bits, P>(values, count, stride, alpha, codes) / n)),
   ...);
}

/// Greedy residual init (paper eq. 1): r = w; per plane s = sign(r) (sign(0) = +1),
/// alpha = mean |r| (in double), r -= alpha s (in float). The residual is recomputed from the
/// codes written so far, so no scratch is needed: O(count * Bits^2 / 2).
template <int Bits>
void greedy_init(const float* values, index count, index stride, float* alphas,
                 std::uint8_t* codes) noexcept {
  float alpha[8] = {};
  if (stride == 1) {
    greedy_passes<Bits>(values, count, std::integral_constant<index, 1>{}, alpha, codes,
                        std::make_integer_sequence<int, Bits>{});
  } else {
    greedy_passes<Bits>(values, count, stride, alpha, codes,
                        std::make_integer_sequence<int, Bits>{});
  }
  std::copy(alpha, alpha + Bits, alphas);
}

/// What a group fit did (for tests and benchmarks).
struct bcq_fit_stats {
  double error = 0.0;         // squared error of the returned state, in double
  int rounds = 0;             // alternating rounds run (both phases with APoT)
  bool is_converged = false;  // stopped because the codes no longer changed (or error 0)
};

/// The state of one group fit: the alphas (and APoT terms) of the best state seen, its error,
/// and whether the codes buffer currently holds that state's codes.
struct bcq_best_state {
  float alphas[8] = {};
  apot_term terms[64] = {};
  double error = 0.0;
  bool is_in_codes = false;
};

/// One alternating phase: starts from `start` (|.|, APoT-rounded if apot_terms > 0, sorted),
/// assigns codes, then runs up to `rounds` rounds of {least squares, |.|, APoT, sort, assign},
/// stopping at a fixed point. Returns the best state of the phase; on return the codes hold the
/// last assigned state and the histogram its counts.
template <int Bits>
bcq_best_state alternate(const float* values, index count, index stride, const float* start,
                         int rounds, int apot_terms, std::uint8_t* codes,
                         bcq_level_table<Bits>& table, bcq_histogram<Bits>& histogram,
                         bcq_fit_stats& stats) noexcept {
  float current[8] = {};
  apot_term current_terms[64] = {};
  std::copy(start, start + Bits, current);
  normalize_alphas(current, Bits, apot_terms, current_terms);
  build_level_table(current, table);
  bool is_changed = true;
  double error =
      assign_and_measure(values, count, stride, table, codes, histogram, false, is_changed);
  bcq_best_state best;
  std::copy(current, current + 8, best.alphas);
  std::copy(current_terms, current_terms + 64, best.terms);
  best.error = error;
  best.is_in_codes = true;
  for (int round = 0; round < rounds && best.error > 0.0; ++round) {
    double solution[8];
    if (!least_squares_alphas(table, histogram, count, solution)) {
      break;
    }
    // Least-squares scales beyond 2^110 (only possible for a nearly singular S^T S, since the
    // weights are <= 2^100) would risk float overflow in the level sums: stop instead.
    bool is_bounded = true;
    for (int p = 0; p < Bits; ++p) {
      is_bounded = is_bounded && std::fabs(solution[p]) <= 0x1p110;
      current[p] = static_cast<float>(solution[p]);
    }
    if (!is_bounded) {
      break;
    }
    normalize_alphas(current, Bits, apot_terms, current_terms);
    build_level_table(current, table);
    error = assign_and_measure(values, count, stride, table, codes, histogram, true, is_changed);
    ++stats.rounds;
    best.is_in_codes = error < best.error;
    if (best.is_in_codes) {
      best.error = error;
      std::copy(current, current + 8, best.alphas);
      std::copy(current_terms, current_terms + 64, best.terms);
    }
    if (!is_changed) {
      // A fixed point: the same codes give the same least-squares alphas again.
      stats.is_converged = true;
      break;
    }
  }
  stats.is_converged = stats.is_converged || best.error == 0.0;
  return best;
}

/// The group fitter for a fixed plane count; see shiftadd::fit_bcq_group.
template <int Bits>
bcq_fit_stats fit_bcq_group_bits(const float* values, index count, index stride, int rounds,
                                 int apot_terms, float* alphas, std::uint8_t* codes,
                                 apot_term* terms) noexcept {
  bcq_fit_stats stats;
  float greedy[8] = {};
  greedy_init<Bits>(values, count, stride, greedy, codes);
  bcq_level_table<Bits> table;
  bcq_histogram<Bits> histogram;
  bcq_best_state best =
      alternate(values, count, stride, greedy, rounds, 0, codes, table, histogram, stats);
  if (apot_terms > 0) {
    // Two APoT phases: from the best float-scale state (so the result is never worse than
    // APoT-rounding the float fit) and from greedy (the paper's schedule); the better one wins.
    stats.is_converged = false;
    const bcq_best_state from_float = alternate(values, count, stride, best.alphas, rounds,
                                                apot_terms, codes, table, histogram, stats);
    const bool is_converged = stats.is_converged;
    stats.is_converged = false;
    const bcq_best_state from_greedy = alternate(values, count, stride, greedy, rounds, apot_terms,
                                                 codes, table, histogram, stats);
    if (from_greedy.error < from_float.error) {
      best = from_greedy;  // its codes may be in the buffer
    } else {
      best = from_float;
      best.is_in_codes = false;
      stats.is_converged = is_converged;
    }
  }
  if (!best.is_in_codes) {
    build_level_table(best.alphas, table);
    assign_codes(values, count, stride, table, codes);
  }
  std::copy(best.alphas, best.alphas + Bits, alphas);
  if (apot_terms > 0 && terms != nullptr) {
    std::copy(best.terms, best.terms + static_cast<std::ptrdiff_t>(Bits) * apot_terms, terms);
  }
  stats.error = best.error;
  return stats;
}

/// Calls f(std::integral_constant<int, bits>{}) for bits in 1..8.
template <class F>
decltype(auto) dispatch_bits(int bits, F&& f) {
  switch (bits) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 5:
      return f(std::integral_constant<int, 5>{});
    case 6:
      return f(std::integral_constant<int, 6>{});
    case 7:
      return f(std::integral_constant<int, 7>{});
    default:
      return f(std::integral_constant<int, 8>{});
  }
}

/// The group fitter; see shiftadd::fit_bcq_group. count <= 0 gives alphas 0.
inline bcq_fit_stats fit_bcq_group_stats(const float* values, index count, index stride, int bits,
                                         int rounds, int apot_terms, float* alphas,
                                         std::uint8_t* codes, apot_term* terms) noexcept {
  if (count <= 0) {
    std::fill(alphas, alphas + bits, 0.0f);
    if (apot_terms > 0 && terms != nullptr) {
      std::fill(terms, terms + static_cast<std::ptrdiff_t>(bits) * apot_terms, apot_term{});
    }
    return {};
  }
  return dispatch_bits(bits, [&](auto constant) {
    return fit_bcq_group_bits<decltype(constant)::value>(values, count, stride, rounds, apot_terms,
                                                         alphas, codes, terms);
  });
}

/// See shiftadd::assign_bcq_codes.
inline void assign_bcq_codes_any(const float* values, index count, index stride,
                                 const float* alphas, int bits, std::uint8_t* codes) noexcept {
  dispatch_bits(bits, [&](auto constant) {
    bcq_level_table<decltype(constant)::value> table;
    build_level_table(alphas, table);
    assign_codes(values, count, stride, table, codes);
  });
}

}  // namespace reparam::shiftadd::detail

#endif  // REPARAM_SHIFTADD_DETAIL_BCQ_FIT_HPP

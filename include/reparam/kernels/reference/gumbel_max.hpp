// SPDX-License-Identifier: Apache-2.0
// Scalar reference samplers of reparam::gumbel: Gumbel-max and Gumbel-top-k over one row of
// logits or of unnormalized probabilities, with the exact noise of kernels/reference/
// gumbel_noise.hpp. They define the result (the double expressions written here and the order
// of classes on ties) and are the test oracle of kernels/simd/gumbel_max.hpp, which returns the
// same indices and values bit for bit.
#ifndef REPARAM_KERNELS_REFERENCE_GUMBEL_MAX_HPP
#define REPARAM_KERNELS_REFERENCE_GUMBEL_MAX_HPP

#include <cmath>
#include <cstdint>
#include <limits>

#include <reparam/core/index.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>

namespace reparam::kernels {

/// The perturbed value of a class with logit `logit` whose noise uniform is v (v = P(G > g), see
/// gumbel_noise_uniform): double(logit) / tau + g(v). Every sampler compares exactly these doubles
/// (a division by tau, not a multiplication by 1 / tau).
template <class T>
double perturbed_logit_of_uniform(T logit, double tau, double v) noexcept {
  return static_cast<double>(logit) / tau + gumbel_from_survival(v);
}

/// The perturbed value of a class with unnormalized probability `probability` whose noise uniform
/// is v: double(p) / E(v), E = -log1p(-v) the Exp(1) variate of the same uniform as g
/// (g = -log E), so the classes are ordered as by log p + g.
template <class T>
double perturbed_probability_of_uniform(T probability, double v) noexcept {
  return static_cast<double>(probability) / -std::log1p(-v);
}

/// perturbed_logit_of_uniform with the noise of (key, row, col).
template <class T>
double gumbel_perturbed_logit(T logit, double tau, gumbel_noise_key key, std::uint64_t row,
                              std::uint64_t col) noexcept {
  return perturbed_logit_of_uniform(logit, tau, gumbel_noise_uniform(key, row, col));
}

/// perturbed_probability_of_uniform with the noise of (key, row, col).
template <class T>
double gumbel_perturbed_probability(T probability, gumbel_noise_key key, std::uint64_t row,
                                    std::uint64_t col) noexcept {
  return perturbed_probability_of_uniform(probability, gumbel_noise_uniform(key, row, col));
}

/// A position in the order of a top-k: classes are ranked by perturbed value, decreasing, then
/// by index, increasing. A top-k pass given `after` only considers the classes ranked after
/// (value, col), i.e. value < this->value, or value == this->value and col > this->col, which
/// lets a caller collect a long ranking in several passes with a short buffer.
struct gumbel_rank {
  double value = 0.0;
  index col = 0;
};

/// Whether (value, col) ranks strictly before `other`.
constexpr bool gumbel_ranks_before(double value, index col, gumbel_rank other) noexcept {
  return value > other.value || (value == other.value && col < other.col);
}

namespace reference {

namespace detail {

/// Inserts (value, col) into the ranking indices/values of `count` entries (capacity k), which it
/// keeps sorted by gumbel_ranks_before; returns the new count. The last entry drops out when the
/// ranking is full and the new class ranks before it.
inline index insert_ranked(double value, index col, index k, index count, index* indices,
                           double* values) noexcept {
  if (count == k && !gumbel_ranks_before(value, col, {values[k - 1], indices[k - 1]})) {
    return count;
  }
  index pos = count < k ? count++ : k - 1;
  while (pos > 0 && gumbel_ranks_before(value, col, {values[pos - 1], indices[pos - 1]})) {
    indices[pos] = indices[pos - 1];
    values[pos] = values[pos - 1];
    --pos;
  }
  indices[pos] = col;
  values[pos] = value;
  return count;
}

/// The ranking of a row: the first k classes (in the order of gumbel_ranks_before) among those
/// that are not masked and rank after `after` (if given). `value_of(col)` is the perturbed value.
template <class IsMasked, class ValueOf>
index rank_row(index cols, index k, index* indices, double* values, const gumbel_rank* after,
               IsMasked is_masked, ValueOf value_of) noexcept {
  index count = 0;
  for (index c = 0; c < cols; ++c) {
    if (is_masked(c)) {
      continue;
    }
    const double value = value_of(c);
    if (after != nullptr && !gumbel_ranks_before(after->value, after->col, {value, c})) {
      continue;
    }
    count = insert_ranked(value, c, k, count, indices, values);
  }
  return count;
}

}  // namespace detail

/// Gumbel-max over one row: argmax_c double(logits[c]) / tau + g(key, row, c) over the classes
/// with logits[c] != -inf, the lowest index on ties; -1 if every logit is -inf. Preconditions:
/// no NaN or +inf logit, tau > 0, cols <= 2^33. O(cols) noise evaluations; no allocation.
template <class T>
index gumbel_max_row(const T* logits, index cols, double tau, gumbel_noise_key key,
                     std::uint64_t row) noexcept {
  index best = -1;
  double best_value = 0.0;
  for (index c = 0; c < cols; ++c) {
    if (logits[c] == -std::numeric_limits<T>::infinity()) {
      continue;
    }
    const double value =
        gumbel_perturbed_logit(logits[c], tau, key, row, static_cast<std::uint64_t>(c));
    if (best < 0 || value > best_value) {
      best = c;
      best_value = value;
    }
  }
  return best;
}

/// Categorical sample of one row of unnormalized probabilities: argmax_c double(probs[c]) /
/// E(key, row, c) over the classes with probs[c] > 0, the lowest index on ties; -1 if none is
/// positive. Preconditions: probabilities finite and >= 0, cols <= 2^33. No allocation.
template <class T>
index sample_from_probs_row(const T* probs, index cols, gumbel_noise_key key,
                            std::uint64_t row) noexcept {
  index best = -1;
  double best_value = 0.0;
  for (index c = 0; c < cols; ++c) {
    if (!(probs[c] > T(0))) {
      continue;
    }
    const double value =
        gumbel_perturbed_probability(probs[c], key, row, static_cast<std::uint64_t>(c));
    if (best < 0 || value > best_value) {
      best = c;
      best_value = value;
    }
  }
  return best;
}

/// Gumbel-top-k over one row: the k classes with the largest perturbed values
/// gumbel_perturbed_logit (-inf logits excluded), in decreasing order, the lower index first on
/// ties, written to indices[0, k) and their values to values[0, k) (both required). With `after`,
/// only the classes ranked after it are considered. Returns how many were found (< k when fewer
/// classes qualify; the rest of the outputs is then unspecified). O(cols * k) at worst (sorted
/// insertion); no allocation.
template <class T>
index gumbel_top_k_row(const T* logits, index cols, double tau, gumbel_noise_key key,
                       std::uint64_t row, index k, index* indices, double* values,
                       const gumbel_rank* after = nullptr) noexcept {
  return detail::rank_row(
      cols, k, indices, values, after,
      [logits](index c) { return logits[c] == -std::numeric_limits<T>::infinity(); },
      [&](index c) {
        return gumbel_perturbed_logit(logits[c], tau, key, row, static_cast<std::uint64_t>(c));
      });
}

/// Top-k without replacement of one row of unnormalized probabilities: the k largest
/// gumbel_perturbed_probability values among the positive probabilities, as gumbel_top_k_row.
template <class T>
index top_k_from_probs_row(const T* probs, index cols, gumbel_noise_key key, std::uint64_t row,
                           index k, index* indices, double* values,
                           const gumbel_rank* after = nullptr) noexcept {
  return detail::rank_row(
      cols, k, indices, values, after, [probs](index c) { return !(probs[c] > T(0)); },
      [&](index c) {
        return gumbel_perturbed_probability(probs[c], key, row, static_cast<std::uint64_t>(c));
      });
}

}  // namespace reference
}  // namespace reparam::kernels

#endif  // REPARAM_KERNELS_REFERENCE_GUMBEL_MAX_HPP

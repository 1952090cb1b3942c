// SPDX-License-Identifier: Apache-2.0
// Scalar definition of reparam's Gumbel noise: which Philox words feed element (row, col) of a
// draw, how they become an open-interval uniform, and how that becomes a Gumbel(0, 1) value with
// both tails resolved. It is the specification, the fallback and the test oracle of
// kernels/simd/gumbel_noise.hpp, and the exact value every sampler in reparam::gumbel uses.
#ifndef REPARAM_KERNELS_REFERENCE_GUMBEL_NOISE_HPP
#define REPARAM_KERNELS_REFERENCE_GUMBEL_NOISE_HPP

#include <cmath>
#include <cstdint>

#include <reparam/core/index.hpp>
#include <reparam/core/random.hpp>

namespace reparam::kernels {

/// Identifies one draw of noise over a [rows, cols] grid: the Philox key is `seed`, and `step`
/// (a decode step, an epoch, a call counter) selects an independent draw for the same seed.
struct gumbel_noise_key {
  std::uint64_t seed = 0;
  std::uint32_t step = 0;
};

/// Largest column count the counter layout addresses: two columns per 32-bit block counter.
inline constexpr index gumbel_noise_max_cols = index{1} << 33;

/// The Philox block holding columns 2b and 2b + 1 of `row`: philox_engine(seed, row).block(
/// step * 2^32 + b), i.e. counter {b, step, row_lo, row_hi}, key {seed_lo, seed_hi}. Column 2b
/// uses words 0 (high) and 1 (low), column 2b + 1 words 2 and 3. The value at (row, col) is a
/// pure function of (seed, step, row, col): it does not depend on the matrix shape, on the other
/// rows or on how the rows are split across threads.
constexpr philox4x32_counter gumbel_noise_block(gumbel_noise_key key, std::uint64_t row,
                                                std::uint32_t block) noexcept {
  return philox4x32_10(
      {block, key.step, static_cast<std::uint32_t>(row), static_cast<std::uint32_t>(row >> 32)},
      {static_cast<std::uint32_t>(key.seed), static_cast<std::uint32_t>(key.seed >> 32)});
}

/// The open-interval uniform of (row, col): uniform_open01_double of its two words, i.e. one of
/// the 2^52 midpoints (j + 0.5) 2^-52, never 0 or 1.
constexpr double gumbel_noise_uniform(gumbel_noise_key key, std::uint64_t row,
                                      std::uint64_t col) noexcept {
  const philox4x32_counter words =
      gumbel_noise_block(key, row, static_cast<std::uint32_t>(col >> 1));
  const unsigned lane = static_cast<unsigned>(col & 1u) * 2u;
  return uniform_open01_double(words[lane], words[lane + 1]);
}

/// Gumbel(0, 1) from its survival probability v = P(G > g) in (0, 1):
///   g = -log(E),  E = -log1p(-v) ~ Exp(1).
/// Small v (the upper tail, the one that decides rare samples) keeps full relative precision
/// through log1p; with v on the 2^-52 midpoint grid g lies in [-3.6, 36.7], finite, never NaN.
inline double gumbel_from_survival(double v) noexcept { return -std::log(-std::log1p(-v)); }

/// The reference Gumbel(0, 1) value at (row, col) of draw `key`.
inline double gumbel_noise_value(gumbel_noise_key key, std::uint64_t row,
                                 std::uint64_t col) noexcept {
  return gumbel_from_survival(gumbel_noise_uniform(key, row, col));
}

/// Exp(1) value E = -log1p(-v) at (row, col): the same draw as gumbel_noise_value (g = -log E),
/// used by the samplers that work on probabilities (argmax p / E).
inline double exponential_noise_value(gumbel_noise_key key, std::uint64_t row,
                                      std::uint64_t col) noexcept {
  return -std::log1p(-gumbel_noise_uniform(key, row, col));
}

/// Reference fill: out[r * row_stride + c] = T(gumbel_noise_value(key, first_row + r, c)) for
/// r < rows, c < cols. T is float or double; the value is computed in double and rounded once.
template <class T>
void gumbel_noise_fill_reference(gumbel_noise_key key, std::uint64_t first_row, index rows,
                                 index cols, T* out, index row_stride) noexcept {
  for (index r = 0; r < rows; ++r) {
    T* row = out + r * row_stride;
    for (index c = 0; c < cols; ++c) {
      row[c] = static_cast<T>(gumbel_noise_value(key, first_row + static_cast<std::uint64_t>(r),
                                                 static_cast<std::uint64_t>(c)));
    }
  }
}

}  // namespace reparam::kernels

#endif  // REPARAM_KERNELS_REFERENCE_GUMBEL_NOISE_HPP

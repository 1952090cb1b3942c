// SPDX-License-Identifier: Apache-2.0
// Seeded random test data. The seed comes from Catch's --rng-seed (recorded in the output with
// CAPTURE by the callers), so any failure reproduces with the printed seed.
#ifndef REPARAM_TESTS_SUPPORT_RANDOM_HPP
#define REPARAM_TESTS_SUPPORT_RANDOM_HPP

#include <cstdint>

#include <catch2/catch.hpp>

#include <reparam/core/random.hpp>
#include <reparam/core/views.hpp>

namespace reparam::test {

/// The run's seed (Catch's --rng-seed), mixed with a per-call-site salt.
inline std::uint64_t test_seed(std::uint64_t salt = 0) {
  return (std::uint64_t{Catch::rngSeed()} << 32) ^ salt;
}

/// A rows x cols matrix with entries uniform in (lo, hi); deterministic for (seed, stream).
template <class Scalar = float>
matrix<Scalar> random_matrix(index rows, index cols, std::uint64_t seed, Scalar lo = Scalar(-1),
                             Scalar hi = Scalar(1)) {
  matrix<Scalar> out(rows, cols);
  for (index r = 0; r < rows; ++r) {
    philox_engine engine(seed, static_cast<std::uint64_t>(r));
    for (index c = 0; c < cols; ++c) {
      const double u = uniform_open01_double(engine(), engine());
      out(r, c) = static_cast<Scalar>(static_cast<double>(lo) +
                                      u * (static_cast<double>(hi) - static_cast<double>(lo)));
    }
  }
  return out;
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_RANDOM_HPP

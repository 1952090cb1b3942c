// SPDX-License-Identifier: Apache-2.0
// second_moment: the accumulated H = sum x x^T against a brute-force double triple loop, its mean
// and symmetry, batching independence, merge, and the argument checks.
#include <cmath>
#include <limits>

#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/second_moment.hpp>

#include "support/compare.hpp"
#include "support/random.hpp"

namespace {

using reparam::index;
using reparam::matrix;

// The oracle: sum_t x_t[i] * x_t[j] accumulated in double, one term at a time.
template <class Scalar>
matrix<double> brute_force_sum(const matrix<Scalar>& x) {
  matrix<double> h = matrix<double>::Zero(x.cols(), x.cols());
  for (index t = 0; t < x.rows(); ++t) {
    for (index i = 0; i < x.cols(); ++i) {
      for (index j = 0; j < x.cols(); ++j) {
        h(i, j) += static_cast<double>(x(t, i)) * static_cast<double>(x(t, j));
      }
    }
  }
  return h;
}

// Blocked summation reorders the double additions; each term is exact (float products fit in
// double) and there are at most a few hundred per entry of magnitude <= 1, so the difference is
// a few hundred ulps of the entry at most.
constexpr double sum_tolerance = 1e-12;

}  // namespace

TEST_CASE("second_moment sum equals the brute-force double sum of outer products",
          "[core][second_moment]") {
  const auto seed = reparam::test::test_seed(0x5ec0);
  CAPTURE(seed);
  // 600 samples cross two block boundaries of add() (block_rows = 256).
  const matrix<float> x = reparam::test::random_matrix<float>(600, 13, seed);
  reparam::second_moment h(13);
  h.add(x);
  const matrix<double> expected = brute_force_sum(x);
  const auto stats = reparam::test::compare(h.sum().data(), expected.data(), expected.size(),
                                            sum_tolerance, 1e-13);
  INFO(stats);
  REQUIRE(stats.ok());
  REQUIRE(h.samples() == 600);
  REQUIRE(h.dim() == 13);
}

TEST_CASE("second_moment sum is exactly symmetric and its mean divides by the sample count",
          "[core][second_moment]") {
  const auto seed = reparam::test::test_seed(0x5ec1);
  CAPTURE(seed);
  const matrix<double> x = reparam::test::random_matrix<double>(37, 9, seed, -3.0, 2.0);
  reparam::second_moment h(9);
  h.add(x);
  reparam::index asymmetric = 0;
  for (reparam::index i = 0; i < 9; ++i) {
    for (reparam::index j = 0; j < 9; ++j) {
      asymmetric += h.sum()(i, j) == h.sum()(j, i) ? 0 : 1;
    }
  }
  REQUIRE(asymmetric == 0);
  const matrix<double> mean = h.mean();
  const matrix<double> expected = brute_force_sum(x) / 37.0;
  const auto stats =
      reparam::test::compare(mean.data(), expected.data(), expected.size(), sum_tolerance, 1e-13);
  INFO(stats);
  REQUIRE(stats.ok());
}

TEST_CASE("second_moment gives the same sum in one batch as in many batches and merged",
          "[core][second_moment]") {
  const auto seed = reparam::test::test_seed(0x5ec2);
  CAPTURE(seed);
  const matrix<float> x = reparam::test::random_matrix<float>(300, 6, seed);
  reparam::second_moment whole(6);
  whole.add(x);
  reparam::second_moment pieces(6);
  pieces.add(x.topRows(1));        // a single sample
  pieces.add(x.middleRows(1, 0));  // no samples: a no-op
  pieces.add(x.middleRows(1, 150));
  reparam::second_moment other(6);
  other.add(x.bottomRows(149));
  pieces.merge(other);
  REQUIRE(pieces.samples() == 300);
  const auto stats = reparam::test::compare(pieces.sum().data(), whole.sum().data(),
                                            whole.sum().size(), sum_tolerance, 1e-13);
  INFO(stats);
  REQUIRE(stats.ok());
  pieces.clear();
  REQUIRE(pieces.samples() == 0);
  REQUIRE(pieces.sum().isZero(0.0));
}

TEST_CASE("second_moment rejects bad dims, mismatched inputs and non-finite values",
          "[core][second_moment]") {
  REQUIRE_THROWS_WITH(reparam::second_moment(0), Catch::Contains("dim 0 must be >= 1"));
  reparam::second_moment h(4);
  REQUIRE_THROWS_WITH(h.mean(), Catch::Contains("no samples"));
  const matrix<float> wrong = matrix<float>::Ones(3, 5);
  REQUIRE_THROWS_WITH(h.add(wrong), Catch::Contains("x has 5 cols") && Catch::Contains("dim 4"));
  matrix<float> bad = matrix<float>::Ones(3, 4);
  bad(2, 1) = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(h.add(bad), Catch::Contains("non-finite") && Catch::Contains("row 2, col 1"));
  bad(2, 1) = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_AS(h.add(bad), reparam::error);
  // A failed add leaves the accumulator untouched.
  REQUIRE(h.samples() == 0);
  REQUIRE(h.sum().isZero(0.0));
  REQUIRE_THROWS_WITH(h.merge(reparam::second_moment(3)), Catch::Contains("dim 3"));
}

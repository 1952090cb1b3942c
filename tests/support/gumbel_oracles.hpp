// SPDX-License-Identifier: Apache-2.0
// The vocabulary and the oracle pieces shared by the gumbel family's tests: softmax of a row in
// double, the shift and normalizer of softmax(x / tau) and softmax / log-softmax of a row in long
// double (masked classes at -inf), central differences in long double, rows of a matrix as
// std::vectors, a matrix that repeats one row, and the refusal check. Everything here is written
// out by hand: nothing calls reparam::gumbel, so the oracles stay independent of the code under
// test.
#ifndef REPARAM_TESTS_SUPPORT_GUMBEL_ORACLES_HPP
#define REPARAM_TESTS_SUPPORT_GUMBEL_ORACLES_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>

namespace reparam::test {

// The vocabulary the gumbel tests name unqualified (after `using namespace reparam::test`).
// `index` is not among them: a using-directive would make it ambiguous with the C library's
// ::index, so the tests declare `using reparam::index;` themselves.
using Catch::Matchers::Contains;
using reparam::all_rows;
using reparam::matrix;
using reparam::matrix_ref;
using reparam::row_range;
using reparam::vector;

/// The extended precision of the oracles.
using real = long double;
constexpr double inf = std::numeric_limits<double>::infinity();

/// i as a std::vector subscript.
inline std::size_t at(index i) { return static_cast<std::size_t>(i); }

/// softmax(l / tau) in double with the max shifted out; -inf gives 0.
inline std::vector<double> softmax(const std::vector<double>& logits, double tau = 1.0) {
  const double top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    p[i] = logits[i] == -inf ? 0.0 : std::exp((logits[i] - top) / tau);
    sum += p[i];
  }
  for (double& x : p) {
    x /= sum;
  }
  return p;
}

/// The shift and normalizer of softmax(x / tau) in long double: best = max x, and sum = the sum
/// of exp((x - best) / tau) over the unmasked entries (masked entries are -inf and add 0).
struct softmax_normalizer {
  real best = -std::numeric_limits<real>::infinity();
  real sum = 0;
};

inline softmax_normalizer normalizer_of(const std::vector<real>& x, real tau) {
  softmax_normalizer n;
  for (const real xc : x) {
    n.best = std::max(n.best, xc);
  }
  for (const real xc : x) {
    n.sum += std::isinf(xc) ? real(0) : std::exp((xc - n.best) / tau);
  }
  return n;
}

/// softmax(x / tau) in long double: exp((x - best) / tau) / sum, 0 at masked entries.
inline std::vector<real> softmax_row(const std::vector<real>& x, real tau) {
  const softmax_normalizer n = normalizer_of(x, tau);
  std::vector<real> y;
  for (const real xc : x) {
    y.push_back(std::isinf(xc) ? real(0) : std::exp((xc - n.best) / tau) / n.sum);
  }
  return y;
}

/// log softmax(x / tau) in long double: (x - best) / tau - log(sum), -inf at masked entries.
inline std::vector<real> log_softmax_row(const std::vector<real>& x, real tau) {
  const softmax_normalizer n = normalizer_of(x, tau);
  std::vector<real> z;
  for (const real xc : x) {
    z.push_back(std::isinf(xc) ? xc : (xc - n.best) / tau - std::log(n.sum));
  }
  return z;
}

/// Central difference (f(x + h e_c) - f(x - h e_c)) / (2 h) of f(std::vector<real>) at x.
template <class F>
real central_difference(const F& f, const std::vector<real>& x, std::size_t c, real h) {
  std::vector<real> up = x;
  std::vector<real> down = x;
  up[c] += h;
  down[c] -= h;
  return (f(up) - f(down)) / (2 * h);
}

/// Central difference (f(t + h) - f(t - h)) / (2 h) of f(real) at t.
template <class F>
real central_difference(const F& f, real t, real h) {
  return (f(t + h) - f(t - h)) / (2 * h);
}

/// Row r of m as a std::vector<T>.
template <class T, class Matrix>
std::vector<T> row_as(const Matrix& m, index r) {
  std::vector<T> out;
  for (index c = 0; c < m.cols(); ++c) {
    out.push_back(static_cast<T>(m(r, c)));
  }
  return out;
}

/// A [rows, row.size()] matrix whose every row is `row`.
inline matrix<double> repeated_rows(const std::vector<double>& row, index rows) {
  matrix<double> out(rows, static_cast<index>(row.size()));
  for (index r = 0; r < rows; ++r) {
    for (index c = 0; c < out.cols(); ++c) {
      out(r, c) = row[at(c)];
    }
  }
  return out;
}

/// call() throws reparam::error with a message that names `function` and contains `detail`.
template <class F>
void require_refusal(const F& call, const char* function, const char* detail) {
  REQUIRE_THROWS_AS(call(), reparam::error);
  REQUIRE_THROWS_WITH(call(), Contains(function) && Contains(detail));
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_GUMBEL_ORACLES_HPP

// SPDX-License-Identifier: Apache-2.0
// gumbel/softmax.hpp samples and VJPs against independent oracles: softmax((l + g) / tau) written
// out in long double from gumbel_noise() values, the first maximum of l + g, exact ties, the mean
// of the soft sample against quadrature of the logistic law of g1 - g2 and against a separate
// std::mt19937_64 Gumbel sampler, its tau -> 0 and tau -> inf limits, central finite differences
// of the sample in long double, no allocation, and every documented refusal.
#define EIGEN_RUNTIME_NO_MALLOC  // lets the no-allocation test forbid Eigen's mallocs

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/gumbel/softmax.hpp>

#include "support/compare.hpp"
#include "support/count_allocations.hpp"
#include "support/gumbel_oracles.hpp"
#include "support/random.hpp"

namespace {

using reparam::index;
using namespace reparam::gumbel;  // NOLINT(google-build-using-namespace): test file
using namespace reparam::test;    // NOLINT(google-build-using-namespace): the shared oracles

/// The sample of one row written out from the definition: x = l + g with g = gumbel_noise()
/// (the exact scalar noise), hot = first maximum, y = softmax(x / tau), z = log softmax(x / tau).
struct oracle_row {
  std::vector<real> x;
  index hot = -1;
  std::vector<real> y;
  std::vector<real> z;
};

template <class T>
oracle_row oracle_sample(const matrix<T>& logits, index r, double tau, noise_key key) {
  oracle_row o;
  const index cols = logits.cols();
  real best = -std::numeric_limits<real>::infinity();
  for (index c = 0; c < cols; ++c) {
    const real l = static_cast<real>(logits(r, c));
    const real x = std::isinf(l) ? l : l + static_cast<real>(gumbel_noise(key, r, c));
    o.x.push_back(x);
    if (x > best) {
      best = x;
      o.hot = c;
    }
  }
  o.y = softmax_row(o.x, static_cast<real>(tau));
  o.z = log_softmax_row(o.x, static_cast<real>(tau));
  return o;
}

/// Random logits in (-3, 3) with a masked class in every even row (when there are >= 2 classes).
template <class T>
matrix<T> test_logits(index rows, index cols, std::uint64_t seed) {
  matrix<T> logits = reparam::test::random_matrix<T>(rows, cols, seed, T(-3), T(3));
  for (index r = 0; r < rows; r += 2) {
    if (cols >= 2) {
      logits(r, (3 * r + 1) % cols) = -std::numeric_limits<T>::infinity();
    }
  }
  return logits;
}

template <class T>
void check_sample_against_oracle(index cols, const temperature& tau, const vector<double>& taus) {
  const index rows = taus.size();
  const matrix<T> logits =
      test_logits<T>(rows, cols, reparam::test::test_seed(static_cast<std::uint64_t>(cols)));
  const noise_key key{0x5eed1234ULL + static_cast<std::uint64_t>(cols * 2 + 1), 7};
  matrix<double> perturbed(rows, cols);
  matrix<T> soft(rows, cols);
  matrix<T> z(rows, cols);
  index_vector hot(rows);
  index_vector hot_log(rows);
  matrix<double> perturbed_log(rows, cols);
  gumbel_softmax_rows(logits, tau, key, perturbed, matrix_ref<T>(soft), hot, all_rows(rows));
  log_gumbel_softmax_rows(logits, tau, key, perturbed_log, matrix_ref<T>(z), hot_log,
                          all_rows(rows));
  // The fill's noise is within a few ulp of gumbel_noise(): |dg| <= ~1e-14 for g <= 37, which
  // moves y relatively by |dg| / tau <= 1e-13 at tau 0.1. Float outputs add one rounding.
  const bool is_float = std::is_same_v<T, float>;
  const double y_rel = is_float ? 1e-6 : 1e-11;
  const double y_abs = is_float ? 1e-38 : 1e-300;
  for (index r = 0; r < rows; ++r) {
    const oracle_row o = oracle_sample(logits, r, taus[r], key);
    CAPTURE(cols, r, taus[r]);
    CHECK(hot[r] == o.hot);
    CHECK(hot_log[r] == o.hot);
    std::vector<double> x(o.x.begin(), o.x.end());
    std::vector<double> y(o.y.begin(), o.y.end());
    std::vector<double> zo(o.z.begin(), o.z.end());
    const auto px = reparam::test::compare(perturbed.row(r).data(), x.data(), cols, 1e-13, 1e-14);
    CAPTURE(px);
    CHECK(px.ok());
    const auto py = reparam::test::compare(soft.row(r).data(), y.data(), cols, y_abs, y_rel);
    CAPTURE(py);
    CHECK(py.ok());
    const auto pz = reparam::test::compare(z.row(r).data(), zo.data(), cols,
                                           is_float ? 1e-6 : 1e-11, is_float ? 1e-6 : 1e-11);
    CAPTURE(pz);
    CHECK(pz.ok());
    for (index c = 0; c < cols; ++c) {
      CHECK(perturbed_log(r, c) == perturbed(r, c));  // same noise, same sum
    }
  }
}

TEST_CASE("gumbel_softmax_rows equals softmax((l + g) / tau) of the gumbel_noise values",
          "[gumbel][softmax]") {
  vector<double> taus(5);
  taus << 0.1, 1.0, 10.0, 0.37, 3.0;
  for (const index cols : {1, 2, 3, 7, 17, 33, 65, 257}) {
    for (const double t : {0.1, 1.0, 10.0}) {
      check_sample_against_oracle<double>(cols, t, vector<double>::Constant(5, t));
      check_sample_against_oracle<float>(cols, t, vector<double>::Constant(5, t));
    }
    check_sample_against_oracle<double>(cols, temperature::per_row(taus), taus);
    check_sample_against_oracle<float>(cols, temperature::per_row(taus), taus);
  }
}

TEST_CASE("the hot index does not depend on tau and row ranges reproduce the whole call",
          "[gumbel][softmax]") {
  const index rows = 9;
  const index cols = 13;
  const matrix<float> logits = test_logits<float>(rows, cols, reparam::test::test_seed(3));
  const noise_key key{99, 1};
  matrix<double> perturbed(rows, cols);
  matrix<float> soft(rows, cols);
  index_vector hot(rows);
  gumbel_softmax_rows(logits, 0.05, key, perturbed, matrix_ref<float>(soft), hot, all_rows(rows));
  for (const double t : {0.3, 1.0, 30.0}) {
    index_vector other(rows);
    matrix<double> p2(rows, cols);
    matrix<float> s2(rows, cols);
    gumbel_softmax_rows(logits, t, key, p2, matrix_ref<float>(s2), other, all_rows(rows));
    CHECK(other == hot);
    CHECK(p2 == perturbed);
  }
  matrix<double> p3 = matrix<double>::Constant(rows, cols, 7.0);
  matrix<float> s3 = matrix<float>::Constant(rows, cols, 7.0f);
  index_vector h3 = index_vector::Constant(rows, -7);
  gumbel_softmax_rows(logits, 0.05, key, p3, matrix_ref<float>(s3), h3, row_range{2, 5});
  gumbel_softmax_rows(logits, 0.05, key, p3, matrix_ref<float>(s3), h3, row_range{5, 6});
  for (index r = 0; r < rows; ++r) {
    CAPTURE(r);
    if (r >= 2 && r < 6) {
      CHECK(p3.row(r) == perturbed.row(r));
      CHECK(s3.row(r) == soft.row(r));
      CHECK(h3[r] == hot[r]);
    } else {
      CHECK((p3.row(r).array() == 7.0).all());
      CHECK((s3.row(r).array() == 7.0f).all());
      CHECK(h3[r] == -7);
    }
  }
}

TEST_CASE("the straight-through value is a bitwise one-hot of argmax(l + g)", "[gumbel][softmax]") {
  const index rows = 40;
  const index cols = 11;
  const matrix<float> logits = test_logits<float>(rows, cols, reparam::test::test_seed(4));
  const noise_key key{2024, 3};
  const auto hard = gumbel_softmax(logits, 0.5, key, hard_mode::straight_through);
  const auto soft = gumbel_softmax(logits, 0.5, key, hard_mode::soft);
  CHECK(hard.soft == soft.soft);
  CHECK(soft.value == soft.soft);
  CHECK(hard.hot == soft.hot);
  CHECK(hard.perturbed == soft.perturbed);
  const float one = 1.0f;
  const float zero = 0.0f;
  for (index r = 0; r < rows; ++r) {
    CAPTURE(r);
    const oracle_row o = oracle_sample(logits, r, 0.5, key);
    CHECK(hard.hot[r] == o.hot);
    for (index c = 0; c < cols; ++c) {
      const float v = hard.value(r, c);
      // Bitwise: exactly +1.0f at the hot index and +0.0f elsewhere (never 1 - a + a).
      CHECK(std::memcmp(&v, c == o.hot ? &one : &zero, sizeof v) == 0);
    }
  }
}

TEST_CASE("exact ties in l + g go to the lowest index", "[gumbel][softmax]") {
  // g <= 36.7 is below half an ulp of 1e20 (8192), so l + g == 1e20 exactly at both maxima.
  matrix<float> logits(2, 6);
  logits << 0.f, 1e20f, 0.f, 0.f, 1e20f, -std::numeric_limits<float>::infinity(),  //
      1e20f, 0.f, 1e20f, 1e20f, 0.f, 0.f;
  const noise_key key{77, 0};
  matrix<double> perturbed(2, 6);
  matrix<double> soft(2, 6);
  index_vector hot(2);
  gumbel_softmax_rows(logits, 1.0, key, perturbed, matrix_ref<double>(soft), hot, all_rows(2));
  CHECK(hot[0] == 1);
  CHECK(hot[1] == 0);
  CHECK(perturbed(0, 1) == perturbed(0, 4));
  CHECK(soft(0, 1) == 0.5);
  CHECK(soft(0, 4) == 0.5);
  CHECK(soft(1, 0) * 3.0 == Approx(1.0).epsilon(1e-15));
  CHECK(soft(1, 0) == soft(1, 2));
  CHECK(soft(1, 2) == soft(1, 3));
  matrix<float> hard(2, 6);
  one_hot_rows(hot, matrix_ref<float>(hard), all_rows(2));
  matrix<float> expected = matrix<float>::Zero(2, 6);
  expected(0, 1) = 1.f;
  expected(1, 0) = 1.f;
  CHECK(hard == expected);
}

TEST_CASE("masked classes get perturbed -inf, soft 0 and z -inf, never NaN", "[gumbel][softmax]") {
  const double m = -inf;
  matrix<double> logits(3, 5);
  logits << m, m, 2.5, m, m,  //
      m, 0.0, m, 1.0, m,      //
      -700.0, m, 700.0, 1e300, m;
  const noise_key key{5, 5};
  for (const double t : {1e-3, 1.0, 1e3}) {
    matrix<double> perturbed(3, 5);
    matrix<double> soft(3, 5);
    matrix<double> z(3, 5);
    index_vector hot(3);
    gumbel_softmax_rows(logits, t, key, perturbed, matrix_ref<double>(soft), hot, all_rows(3));
    log_gumbel_softmax_rows(logits, t, key, perturbed, matrix_ref<double>(z), hot, all_rows(3));
    CAPTURE(t, soft, z);
    CHECK(!soft.array().isNaN().any());
    CHECK(!z.array().isNaN().any());
    CHECK(!perturbed.array().isNaN().any());
    for (index r = 0; r < 3; ++r) {
      for (index c = 0; c < 5; ++c) {
        if (std::isinf(logits(r, c))) {
          CHECK(perturbed(r, c) == -inf);
          CHECK(soft(r, c) == 0.0);
          CHECK(z(r, c) == -inf);
        }
      }
    }
    CHECK(hot[0] == 2);
    CHECK(soft(0, 2) == 1.0);
    CHECK(z(0, 2) == 0.0);
    CHECK(hot[2] == 3);  // 1e300 dominates
    CHECK(soft(2, 3) == 1.0);
    CHECK(soft.row(1).sum() == Approx(1.0).epsilon(1e-15));
  }
}

/// Sample mean and standard error of column c of a soft sample matrix.
struct mean_and_error {
  double mean = 0.0;
  double error = 0.0;
  double variance = 0.0;
};

template <class Matrix>
mean_and_error column_mean(const Matrix& y, index c) {
  const auto n = static_cast<double>(y.rows());
  double sum = 0.0;
  for (index r = 0; r < y.rows(); ++r) {
    sum += static_cast<double>(y(r, c));
  }
  const double mean = sum / n;
  double sq = 0.0;
  for (index r = 0; r < y.rows(); ++r) {
    const double d = static_cast<double>(y(r, c)) - mean;
    sq += d * d;
  }
  const double variance = sq / (n - 1.0);
  return {mean, std::sqrt(variance / n), variance};
}

/// N independent draws of one logits row: the rows of an [N, K] matrix get independent noise.
matrix<double> draws_of(const std::vector<double>& logits, index n, const temperature& tau,
                        noise_key key) {
  return gumbel_softmax(repeated_rows(logits, n), tau, key).soft;
}

TEST_CASE("the mean of a two-class soft sample matches quadrature of the logistic law",
          "[gumbel][softmax]") {
  // y1 = sigmoid((d + L) / tau) with d = l1 - l2 and L = g1 - g2 ~ Logistic(0, 1), so
  // E[y1] = int sigmoid((d + x) / tau) e^-x / (1 + e^-x)^2 dx (trapezoid on [-40, 40]; the
  // logistic mass outside is 4e-18).
  const index n = 100000;
  std::uint32_t step = 0;
  for (const double t : {0.1, 1.0, 4.0}) {
    for (const double d : {t == 1.0 ? 0.0 : 1.3, -2.0}) {
      const matrix<double> y = draws_of({0.25 + d, 0.25}, n, t, noise_key{31337, step++});
      const mean_and_error mc = column_mean(y, 0);
      real integral = 0;
      const real h = 2e-3L;
      for (int i = -20000; i <= 20000; ++i) {
        const real x = h * i;
        const real pdf = std::exp(-x) / ((1 + std::exp(-x)) * (1 + std::exp(-x)));
        const real s = 1 / (1 + std::exp(-(d + x) / t));
        integral += (i == -20000 || i == 20000 ? real(0.5) : real(1)) * s * pdf;
      }
      const auto expected = static_cast<double>(integral * h);
      CAPTURE(t, d, mc.mean, mc.error, expected);
      CHECK(std::abs(mc.mean - expected) < 5.0 * mc.error);
    }
  }
}

/// An independent Gumbel sampler: 53-bit uniforms from std::mt19937_64 strictly inside (0, 1).
class mt_gumbel {
 public:
  explicit mt_gumbel(std::uint64_t seed) : engine_(seed) {}
  double operator()() {
    const std::uint64_t bits = engine_() >> 11;
    const double u = (static_cast<double>(bits) + 0.5) / 9007199254740992.0;
    return -std::log(-std::log(u));
  }

 private:
  std::mt19937_64 engine_;
};

TEST_CASE("the mean of a four-class soft sample matches a separate mt19937 Gumbel sampler",
          "[gumbel][softmax]") {
  const std::vector<double> l = {0.5, -1.0, 2.0, 0.0};
  const index n = 100000;
  const index m = 100000;
  std::uint32_t step = 0;
  for (const double t : {0.3, 1.0, 3.0}) {
    const matrix<double> y = draws_of(l, n, t, noise_key{4242, step++});
    mt_gumbel gumbel(0xC0FFEE + step);
    matrix<double> ref(m, 4);
    for (index r = 0; r < m; ++r) {
      double x[4];
      double best = -inf;
      for (int c = 0; c < 4; ++c) {
        x[c] = (l[static_cast<std::size_t>(c)] + gumbel()) / t;
        best = std::max(best, x[c]);
      }
      double sum = 0.0;
      for (const double xc : x) {
        sum += std::exp(xc - best);
      }
      for (int c = 0; c < 4; ++c) {
        ref(r, c) = std::exp(x[c] - best) / sum;
      }
    }
    for (index c = 0; c < 4; ++c) {
      const mean_and_error a = column_mean(y, c);
      const mean_and_error b = column_mean(ref, c);
      const double se = std::sqrt(a.error * a.error + b.error * b.error);
      CAPTURE(t, c, a.mean, b.mean, se);
      CHECK(std::abs(a.mean - b.mean) < 5.0 * se);
    }
  }
}

TEST_CASE("as tau -> 0 the mean approaches softmax(l) and as tau grows it approaches uniform",
          "[gumbel][softmax]") {
  const std::vector<double> l = {0.5, -1.0, 2.0, 0.0};
  const index n = 100000;
  double sum = 0.0;
  for (const double x : l) {
    sum += std::exp(x);
  }
  {
    // E[y] - p is O(tau^2) for a smooth law (the sigmoid error is odd around each switch).
    const matrix<double> y = draws_of(l, n, 0.01, noise_key{555, 0});
    for (index c = 0; c < 4; ++c) {
      const mean_and_error a = column_mean(y, c);
      const double p = std::exp(l[static_cast<std::size_t>(c)]) / sum;
      CAPTURE(c, a.mean, a.error, p);
      CHECK(std::abs(a.mean - p) < 5.0 * a.error + 1e-3);
    }
  }
  {
    // y_k = 1/K + (x_k - mean x) / (K tau) + O(1/tau^2) with E[x_k - mean x] = l_k - mean l.
    const double t = 200.0;
    const matrix<double> y = draws_of(l, n, t, noise_key{555, 1});
    const double mean_l = (0.5 - 1.0 + 2.0 + 0.0) / 4.0;
    for (index c = 0; c < 4; ++c) {
      const mean_and_error a = column_mean(y, c);
      const double first_order = 0.25 + (l[static_cast<std::size_t>(c)] - mean_l) / (4.0 * t);
      CAPTURE(c, a.mean, a.error, first_order);
      CHECK(std::abs(a.mean - first_order) < 5.0 * a.error + 2.0 / (t * t));
      CHECK(std::abs(a.mean - 0.25) < 1.625 / (4.0 * t) + 2.0 / (t * t));  // max |l - mean l|
    }
  }
}

/// Finite-difference oracle of the soft and log-space samples as functions of the perturbed
/// logits x (d/dlogits = d/dx: the noise is fixed) and of tau, in long double.
real soft_objective(const std::vector<real>& x, const std::vector<real>& v, real tau) {
  const softmax_normalizer n = normalizer_of(x, tau);
  real f = 0;
  for (std::size_t c = 0; c < x.size(); ++c) {
    if (!std::isinf(x[c])) {
      f += v[c] * std::exp((x[c] - n.best) / tau) / n.sum;
    }
  }
  return f;
}

real log_objective(const std::vector<real>& x, const std::vector<real>& v, real tau) {
  const std::vector<real> z = log_softmax_row(x, tau);
  real f = 0;
  for (std::size_t c = 0; c < x.size(); ++c) {
    if (!std::isinf(x[c])) {
      f += v[c] * z[c];
    }
  }
  return f;
}

template <class Objective>
void check_vjp_against_differences(const Objective& objective, bool is_log) {
  const index rows = 3;
  const index cols = 6;
  vector<double> taus(rows);
  taus << 0.1, 1.0, 10.0;
  matrix<double> logits = reparam::test::random_matrix<double>(rows, cols, 811, -2.0, 2.0);
  logits(1, 4) = -inf;
  const matrix<double> v = reparam::test::random_matrix<double>(rows, cols, 812, -1.0, 1.0);
  matrix<double> v_masked = v;
  if (is_log) {
    v_masked(1, 4) = std::numeric_limits<double>::quiet_NaN();  // ignored in log space
  }
  const temperature tau = temperature::per_row(taus);
  matrix<double> perturbed(rows, cols);
  matrix<double> sample(rows, cols);
  index_vector hot(rows);
  gumbel_softmax_rows(logits, tau, noise_key{8, 8}, perturbed, matrix_ref<double>(sample), hot,
                      all_rows(rows));
  matrix<double> grad(rows, cols);
  vector<double> grad_tau(rows);
  if (is_log) {
    log_gumbel_softmax_vjp_rows(perturbed, tau, v_masked, matrix_ref<double>(grad), grad_tau,
                                all_rows(rows));
  } else {
    gumbel_softmax_vjp_rows(perturbed, tau, v_masked, matrix_ref<double>(grad), grad_tau,
                            all_rows(rows));
    matrix<double> grad_st(rows, cols);
    vector<double> grad_tau_st(rows);
    straight_through_vjp_rows(perturbed, tau, v_masked, matrix_ref<double>(grad_st), grad_tau_st,
                              all_rows(rows));
    CHECK(grad_st == grad);  // the straight-through backward is the soft sample's VJP
    CHECK(grad_tau_st == grad_tau);
  }
  CHECK(grad(1, 4) == 0.0);
  CHECK(!grad.array().isNaN().any());
  for (index r = 0; r < rows; ++r) {
    const std::vector<real> x = row_as<real>(perturbed, r);
    const std::vector<real> vr = row_as<real>(v, r);
    const real t = static_cast<real>(taus[r]);
    for (index c = 0; c < cols; ++c) {
      if (std::isinf(x[at(c)])) {
        continue;
      }
      const real h = 1e-6L * std::max(real(1), std::abs(x[at(c)]));
      const auto fd = static_cast<double>(central_difference(
          [&](const std::vector<real>& y) { return objective(y, vr, t); }, x, at(c), h));
      CAPTURE(is_log, r, c, taus[r], grad(r, c), fd);
      CHECK(std::abs(grad(r, c) - fd) <= 1e-7 + 1e-6 * std::abs(fd));
    }
    const real h = 1e-6L * t;
    const auto fd_tau =
        static_cast<double>(central_difference([&](real s) { return objective(x, vr, s); }, t, h));
    CAPTURE(is_log, r, taus[r], grad_tau[r], fd_tau);
    CHECK(std::abs(grad_tau[r] - fd_tau) <= 1e-7 + 1e-6 * std::abs(fd_tau));
  }
  // A scalar tau shared by every row: dL/dtau is the sum of grad_tau.
  matrix<double> grad_shared(rows, cols);
  vector<double> grad_tau_shared(rows);
  const double shared = 0.7;
  if (is_log) {
    log_gumbel_softmax_vjp_rows(perturbed, shared, v_masked, matrix_ref<double>(grad_shared),
                                grad_tau_shared, all_rows(rows));
  } else {
    gumbel_softmax_vjp_rows(perturbed, shared, v_masked, matrix_ref<double>(grad_shared),
                            grad_tau_shared, all_rows(rows));
  }
  const auto total = [&](real t) {
    real f = 0;
    for (index r = 0; r < rows; ++r) {
      f += objective(row_as<real>(perturbed, r), row_as<real>(v, r), t);
    }
    return f;
  };
  const real h = 1e-6L * shared;
  const auto fd = static_cast<double>(central_difference(total, shared, h));
  CHECK(grad_tau_shared.sum() == Approx(fd).epsilon(1e-6).margin(1e-7));
}

TEST_CASE("the soft VJP matches central differences at tau 0.1, 1 and 10 (logits and tau)",
          "[gumbel][softmax]") {
  check_vjp_against_differences(soft_objective, false);
}

TEST_CASE("the log-space VJP matches central differences at tau 0.1, 1 and 10",
          "[gumbel][softmax]") {
  check_vjp_against_differences(log_objective, true);
}

TEST_CASE("VJPs write float gradients, skip grad_tau when empty and honour row ranges",
          "[gumbel][softmax]") {
  const index rows = 4;
  const index cols = 5;
  const matrix<double> logits = reparam::test::random_matrix<double>(rows, cols, 91, -1.0, 1.0);
  const matrix<double> v = reparam::test::random_matrix<double>(rows, cols, 92, -1.0, 1.0);
  const auto sample = gumbel_softmax(logits, 0.4, noise_key{1, 2});
  matrix<double> grad(rows, cols);
  vector<double> grad_tau(rows);
  gumbel_softmax_vjp_rows(sample.perturbed, 0.4, v, matrix_ref<double>(grad), grad_tau,
                          all_rows(rows));
  matrix<float> grad_f = matrix<float>::Constant(rows, cols, 9.f);
  vector<double> none;
  gumbel_softmax_vjp_rows(sample.perturbed, 0.4, v, matrix_ref<float>(grad_f), none,
                          row_range{1, 3});
  for (index r = 0; r < rows; ++r) {
    for (index c = 0; c < cols; ++c) {
      if (r >= 1 && r < 3) {
        CHECK(grad_f(r, c) == static_cast<float>(grad(r, c)));
      } else {
        CHECK(grad_f(r, c) == 9.f);
      }
    }
  }
}

TEST_CASE("gumbel_softmax_rows refuses bad arguments before writing anything",
          "[gumbel][softmax]") {
  const index rows = 3;
  const index cols = 4;
  matrix<float> good = reparam::test::random_matrix<float>(rows, cols, 5, -1.f, 1.f);
  matrix<double> perturbed = matrix<double>::Constant(rows, cols, 7.0);
  matrix<float> soft = matrix<float>::Constant(rows, cols, 7.f);
  index_vector hot = index_vector::Constant(rows, 7);
  const noise_key key{1, 1};
  const char* fn = "gumbel::gumbel_softmax_rows";
  const auto run = [&](const matrix<float>& logits, const temperature& tau, row_range range) {
    return [&, tau, range] {
      gumbel_softmax_rows(logits, tau, key, perturbed, matrix_ref<float>(soft), hot, range);
    };
  };
  const row_range all = all_rows(rows);
  for (const double t : {0.0, -1.0, std::nan(""), inf}) {
    require_refusal(run(good, t, all), fn, "tau");
  }
  vector<double> short_taus = vector<double>::Constant(2, 1.0);
  require_refusal(run(good, temperature::per_row(short_taus), all), fn, "2 per-row values");
  vector<double> bad_taus = vector<double>::Constant(3, 1.0);
  bad_taus[2] = 0.0;
  require_refusal(run(good, temperature::per_row(bad_taus), all), fn, "tau[2]");
  matrix<float> nan_logits = good;
  nan_logits(1, 2) = std::nanf("");
  require_refusal(run(nan_logits, 1.0, all), fn, "logits(1, 2) is nan");
  matrix<float> pinf_logits = good;
  pinf_logits(2, 0) = std::numeric_limits<float>::infinity();
  require_refusal(run(pinf_logits, 1.0, all), fn, "logits(2, 0) is inf");
  matrix<float> masked = good;
  masked.row(1).setConstant(-std::numeric_limits<float>::infinity());
  require_refusal(run(masked, 1.0, all), fn, "row 1 of logits has 0 finite");
  require_refusal(run(good, 1.0, row_range{1, 4}), fn, "row range [1, 4)");
  matrix<double> wrong_p(rows, cols + 1);
  REQUIRE_THROWS_WITH(
      gumbel_softmax_rows(good, 1.0, key, wrong_p, matrix_ref<float>(soft), hot, all),
      Contains(fn) && Contains("perturbed is [3, 5]"));
  matrix<float> wrong_s(rows + 1, cols);
  REQUIRE_THROWS_WITH(
      gumbel_softmax_rows(good, 1.0, key, perturbed, matrix_ref<float>(wrong_s), hot, all),
      Contains(fn) && Contains("soft is [4, 4]"));
  index_vector wrong_h(rows - 1);
  REQUIRE_THROWS_WITH(
      gumbel_softmax_rows(good, 1.0, key, perturbed, matrix_ref<float>(soft), wrong_h, all),
      Contains(fn) && Contains("hot has 2 entries"));
  REQUIRE_THROWS_WITH(
      log_gumbel_softmax_rows(nan_logits, 1.0, key, perturbed, matrix_ref<float>(soft), hot, all),
      Contains("gumbel::log_gumbel_softmax_rows") && Contains("logits(1, 2)"));
  REQUIRE_THROWS_WITH(gumbel_softmax(nan_logits, 1.0, key),
                      Contains("gumbel::gumbel_softmax:") && Contains("logits(1, 2)"));
  REQUIRE_THROWS_WITH(gumbel_softmax(good, 0.0, key), Contains("gumbel::gumbel_softmax:"));
  // Nothing was written by any failed call.
  CHECK((perturbed.array() == 7.0).all());
  CHECK((soft.array() == 7.f).all());
  CHECK((hot.array() == 7).all());
  index_vector bad_hot(2);
  bad_hot << 1, 4;
  matrix<float> hard = matrix<float>::Constant(2, 4, 7.f);
  REQUIRE_THROWS_WITH(one_hot_rows(bad_hot, matrix_ref<float>(hard), all_rows(2)),
                      Contains("gumbel::one_hot_rows") && Contains("hot[1] 4 is outside [0, 4)"));
  CHECK((hard.array() == 7.f).all());
}

TEST_CASE("the VJPs refuse bad arguments before writing anything", "[gumbel][softmax]") {
  const index rows = 2;
  const index cols = 3;
  matrix<double> perturbed(rows, cols);
  perturbed << 0.5, -inf, 1.0, 2.0, 0.0, -1.0;
  const matrix<double> v = matrix<double>::Ones(rows, cols);
  matrix<double> grad = matrix<double>::Constant(rows, cols, 7.0);
  vector<double> grad_tau = vector<double>::Constant(rows, 7.0);
  const row_range all = all_rows(rows);
  const char* fn = "gumbel::gumbel_softmax_vjp_rows";
  matrix<double> bad_v = v;
  bad_v(0, 1) = std::nan("");  // at a masked class: an error for y, ignored for z
  REQUIRE_THROWS_WITH(
      gumbel_softmax_vjp_rows(perturbed, 1.0, bad_v, matrix_ref<double>(grad), grad_tau, all),
      Contains(fn) && Contains("v(0, 1) is nan"));
  matrix<double> bad_v2 = v;
  bad_v2(1, 2) = inf;
  REQUIRE_THROWS_WITH(
      log_gumbel_softmax_vjp_rows(perturbed, 1.0, bad_v2, matrix_ref<double>(grad), grad_tau, all),
      Contains("gumbel::log_gumbel_softmax_vjp_rows") && Contains("v(1, 2)"));
  REQUIRE_THROWS_WITH(
      straight_through_vjp_rows(perturbed, -2.0, v, matrix_ref<double>(grad), grad_tau, all),
      Contains("gumbel::straight_through_vjp_rows") && Contains("tau -2"));
  matrix<double> bad_p = perturbed;
  bad_p(1, 1) = inf;
  REQUIRE_THROWS_WITH(
      gumbel_softmax_vjp_rows(bad_p, 1.0, v, matrix_ref<double>(grad), grad_tau, all),
      Contains(fn) && Contains("perturbed(1, 1) is inf"));
  bad_p(1, 1) = std::nan("");
  REQUIRE_THROWS_WITH(
      gumbel_softmax_vjp_rows(bad_p, 1.0, v, matrix_ref<double>(grad), grad_tau, all),
      Contains(fn) && Contains("perturbed(1, 1) is nan"));
  matrix<double> all_masked = perturbed;
  all_masked.row(1).setConstant(-inf);
  REQUIRE_THROWS_WITH(
      gumbel_softmax_vjp_rows(all_masked, 1.0, v, matrix_ref<double>(grad), grad_tau, all),
      Contains(fn) && Contains("row 1 of perturbed has 0 finite entries"));
  vector<double> wrong_tau(1);
  REQUIRE_THROWS_WITH(
      gumbel_softmax_vjp_rows(perturbed, 1.0, v, matrix_ref<double>(grad), wrong_tau, all),
      Contains(fn) && Contains("grad_tau has 1 entries"));
  matrix<double> wrong_v(rows, cols + 1);
  REQUIRE_THROWS_WITH(
      gumbel_softmax_vjp_rows(perturbed, 1.0, wrong_v, matrix_ref<double>(grad), grad_tau, all),
      Contains(fn) && Contains("v is [2, 4]"));
  matrix<double> wrong_g(rows + 1, cols);
  REQUIRE_THROWS_WITH(
      gumbel_softmax_vjp_rows(perturbed, 1.0, v, matrix_ref<double>(wrong_g), grad_tau, all),
      Contains(fn) && Contains("grad_logits is [3, 3]"));
  CHECK((grad.array() == 7.0).all());
  CHECK((grad_tau.array() == 7.0).all());
  // The log-space VJP ignores v at masked classes (documented), so bad_v is accepted there.
  log_gumbel_softmax_vjp_rows(perturbed, 1.0, bad_v, matrix_ref<double>(grad), grad_tau, all);
  CHECK(grad(0, 1) == 0.0);
  CHECK(!grad.array().isNaN().any());
}

TEST_CASE("the row forms of the sample and its VJPs do not allocate", "[gumbel][softmax]") {
  const index rows = 6;
  const index cols = 37;
  const matrix<float> logits = test_logits<float>(rows, cols, 17);
  const matrix<double> v = reparam::test::random_matrix<double>(rows, cols, 18, -1.0, 1.0);
  matrix<double> perturbed(rows, cols);
  matrix<float> soft(rows, cols);
  matrix<double> z(rows, cols);
  matrix<double> grad(rows, cols);
  matrix<float> hard(rows, cols);
  vector<double> grad_tau(rows);
  vector<double> taus = vector<double>::Constant(rows, 0.5);
  index_vector hot(rows);
  const long before = reparam::test::allocations();
  Eigen::internal::set_is_malloc_allowed(false);
  gumbel_softmax_rows(logits, temperature::per_row(taus), noise_key{3, 3}, perturbed,
                      matrix_ref<float>(soft), hot, all_rows(rows));
  log_gumbel_softmax_rows(logits, 0.5, noise_key{3, 3}, perturbed, matrix_ref<double>(z), hot,
                          all_rows(rows));
  one_hot_rows(hot, matrix_ref<float>(hard), all_rows(rows));
  gumbel_softmax_vjp_rows(perturbed, 0.5, v, matrix_ref<double>(grad), grad_tau, all_rows(rows));
  straight_through_vjp_rows(perturbed, 0.5, v, matrix_ref<double>(grad), grad_tau, all_rows(rows));
  log_gumbel_softmax_vjp_rows(perturbed, 0.5, v, matrix_ref<double>(grad), grad_tau,
                              all_rows(rows));
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(reparam::test::allocations() == before);
}

}  // namespace

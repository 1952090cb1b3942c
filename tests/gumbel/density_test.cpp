// SPDX-License-Identifier: Apache-2.0
// Concrete / ExpConcrete log-densities of gumbel/softmax.hpp against independent oracles:
// normalization by quadrature (K = 2 on a logit grid, K = 3 on a 2-D grid), Maddison et al.'s
// product form written out in long double for K = 3..6, invariances, masked classes, the low-tau
// float boundary of pytorch#18254, per-row temperatures (pytorch#37162), and chi-square tests that
// the ExpConcrete density is the law of log_gumbel_softmax_rows' samples (K = 2 and K = 3).
#define EIGEN_RUNTIME_NO_MALLOC  // same Eigen configuration as softmax_test.cpp (one binary)

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/softmax.hpp>

#include "support/gumbel_oracles.hpp"
#include "support/random.hpp"
#include "support/statistics.hpp"

namespace {

using reparam::index;
using namespace reparam::gumbel;  // NOLINT(google-build-using-namespace): test file
using namespace reparam::test;    // NOLINT(google-build-using-namespace): the shared oracles

/// log sigmoid(s), accurate in both tails.
double log_sigmoid(double s) {
  return s >= 0 ? -std::log1p(std::exp(-s)) : s - std::log1p(std::exp(s));
}

/// Maddison, Mnih, Teh (2016) eq. (1), as a product in long double over the unmasked classes:
/// p(y) = (K-1)! tau^(K-1) prod_k [alpha_k y_k^(-tau-1) / sum_i alpha_i y_i^(-tau)], alpha = e^l.
real maddison_log_density(const std::vector<real>& logits, const std::vector<real>& y, real tau) {
  std::vector<real> alpha;
  std::vector<real> yy;
  for (std::size_t k = 0; k < logits.size(); ++k) {
    if (!std::isinf(logits[k])) {
      alpha.push_back(std::exp(logits[k]));
      yy.push_back(y[k]);
    }
  }
  const std::size_t classes = alpha.size();
  real denominator = 0;
  for (std::size_t i = 0; i < classes; ++i) {
    denominator += alpha[i] * std::pow(yy[i], -tau);
  }
  real p = 1;
  for (std::size_t k = 1; k < classes; ++k) {
    p *= static_cast<real>(k) * tau;  // (K-1)! tau^(K-1)
  }
  for (std::size_t k = 0; k < classes; ++k) {
    p *= alpha[k] * std::pow(yy[k], -tau - 1) / denominator;
  }
  return std::log(p);
}

/// A point inside the simplex with entries >= ~3e-4: normalized exp of uniforms in (-2, 2).
std::vector<real> simplex_point(index k, std::uint64_t seed) {
  const matrix<double> u = reparam::test::random_matrix<double>(1, k, seed, -2.0, 2.0);
  std::vector<real> y;
  real sum = 0;
  for (index c = 0; c < k; ++c) {
    y.push_back(std::exp(static_cast<real>(u(0, c))));
    sum += y.back();
  }
  for (real& v : y) {
    v /= sum;
  }
  return y;
}

/// Rows of y = sigmoid(+-s) and z = log y for a grid of logit values s (the K = 2 simplex).
void two_class_points(const std::vector<double>& s, matrix<double>& y, matrix<double>& z) {
  const auto n = static_cast<index>(s.size());
  y.resize(n, 2);
  z.resize(n, 2);
  for (index i = 0; i < n; ++i) {
    const double si = s[static_cast<std::size_t>(i)];
    z(i, 0) = log_sigmoid(si);
    z(i, 1) = log_sigmoid(-si);
    y(i, 0) = std::exp(z(i, 0));
    y(i, 1) = std::exp(z(i, 1));
  }
}

/// A [rows, k] matrix whose row r is simplex_point(k, first_seed + r).
matrix<double> simplex_rows(index rows, index k, std::uint64_t first_seed) {
  matrix<double> y(rows, k);
  for (index r = 0; r < rows; ++r) {
    const std::vector<real> p = simplex_point(k, first_seed + static_cast<std::uint64_t>(r));
    for (index c = 0; c < k; ++c) {
      y(r, c) = static_cast<double>(p[at(c)]);
    }
  }
  return y;
}

TEST_CASE("the two-class Concrete density of y1 integrates to 1 on (0, 1)", "[gumbel][density]") {
  // Substitute y1 = sigmoid(s): dy1 = y1 y2 ds, and s = (d + L) / tau with L logistic lives in
  // (d +- 45) / tau. The trapezoid rule on this smooth, fast-decaying integrand is very accurate.
  const index n = 20001;
  for (const double t : {0.1, 0.5, 1.0, 3.0}) {
    for (const std::vector<double>& l :
         {std::vector<double>{0.0, 0.0}, std::vector<double>{1.5, -0.5},
          std::vector<double>{-3.0, 2.0}}) {
      const double d = l[0] - l[1];
      const double lo = (d - 45.0) / t;
      const double hi = (d + 45.0) / t;
      const double h = (hi - lo) / static_cast<double>(n - 1);
      std::vector<double> s;
      for (index i = 0; i < n; ++i) {
        s.push_back(lo + h * static_cast<double>(i));
      }
      matrix<double> y;
      matrix<double> z;
      two_class_points(s, y, z);
      const matrix<double> logits = repeated_rows(l, n);
      const vector<double> log_py = concrete_log_prob(y, logits, t);
      const vector<double> log_pz = exp_concrete_log_prob(z, logits, t);
      real integral_y = 0;
      real integral_z = 0;
      for (index i = 0; i < n; ++i) {
        const real weight = (i == 0 || i == n - 1) ? real(0.5) : real(1);
        integral_y += weight * std::exp(static_cast<real>(log_py[i] + z(i, 0) + z(i, 1)));
        integral_z += weight * std::exp(static_cast<real>(log_pz[i]));
      }
      CAPTURE(t, l[0], l[1], static_cast<double>(integral_y * h));
      CHECK(std::abs(static_cast<double>(integral_y * h) - 1.0) < 1e-6);
      CHECK(std::abs(static_cast<double>(integral_z * h) - 1.0) < 1e-6);
    }
  }
}

TEST_CASE("concrete_log_prob matches Maddison's product form for K = 3 to 6", "[gumbel][density]") {
  for (index k = 3; k <= 6; ++k) {
    for (const double t : {0.2, 0.7, 2.0}) {
      for (std::uint64_t trial = 0; trial < 4; ++trial) {
        const matrix<double> l = reparam::test::random_matrix<double>(
            1, k, 100 * static_cast<std::uint64_t>(k) + trial, -2.0, 2.0);
        const std::vector<real> y =
            simplex_point(k, 7000 + 10 * static_cast<std::uint64_t>(k) + trial);
        matrix<double> ym(1, k);
        matrix<double> zm(1, k);
        std::vector<real> lr;
        for (index c = 0; c < k; ++c) {
          ym(0, c) = static_cast<double>(y[static_cast<std::size_t>(c)]);
          zm(0, c) = std::log(ym(0, c));
          lr.push_back(static_cast<real>(l(0, c)));
        }
        std::vector<real> yd(y.size());
        for (index c = 0; c < k; ++c) {
          yd[static_cast<std::size_t>(c)] = static_cast<real>(ym(0, c));  // the value passed
        }
        const auto expected =
            static_cast<double>(maddison_log_density(lr, yd, static_cast<real>(t)));
        const double got = concrete_log_prob(ym, l, t)[0];
        // log p_Z(z) = log p_Y(y) + sum log y (the Jacobian of y = exp(z)).
        real sum_log_y = 0;
        for (const real v : yd) {
          sum_log_y += std::log(v);
        }
        const double got_z = exp_concrete_log_prob(zm, l, t)[0];
        CAPTURE(k, t, trial, got, expected);
        CHECK(std::abs(got - expected) < 1e-11 * (1.0 + std::abs(expected)));
        CHECK(std::abs(got_z - static_cast<double>(expected + sum_log_y)) <
              1e-11 * (1.0 + std::abs(expected)));
      }
    }
  }
}

TEST_CASE(
    "the log-densities are invariant to l + c and z + c and concrete = exp_concrete(log y) - "
    "sum log y",
    "[gumbel][density]") {
  const index rows = 8;
  const index k = 5;
  const matrix<double> l = reparam::test::random_matrix<double>(rows, k, 61, -3.0, 3.0);
  const matrix<double> y = simplex_rows(rows, k, 900);
  const matrix<double> z = y.array().log().matrix();
  for (const double t : {0.05, 0.5, 5.0}) {
    const vector<double> base = exp_concrete_log_prob(z, l, t);
    const matrix<double> l_shift = (l.array() + 37.25).matrix();
    const matrix<double> z_shift = (z.array() - 11.5).matrix();
    const vector<double> by_l = exp_concrete_log_prob(z, l_shift, t);
    const vector<double> by_z = exp_concrete_log_prob(z_shift, l, t);
    const vector<double> concrete = concrete_log_prob(y, l, t);
    for (index r = 0; r < rows; ++r) {
      CAPTURE(t, r, base[r], by_l[r], by_z[r]);
      const double scale = 1e-12 * (1.0 + std::abs(base[r]) + 40.0 * k);
      CHECK(std::abs(by_l[r] - base[r]) < scale);
      CHECK(std::abs(by_z[r] - base[r]) < scale * (1.0 + t * 12.0));
      const double sum_log_y = z.row(r).sum();
      CHECK(std::abs(concrete[r] - (base[r] - sum_log_y)) < scale);
    }
  }
}

TEST_CASE("at tau 0.05 float samples hit exact 0 but the log-space density stays finite",
          "[gumbel][density]") {
  // pytorch#18254: at low tau y underflows to exactly 0 (its density is then -inf or NaN), while
  // z = log_softmax((l + g) / tau) stays finite and so does the ExpConcrete density.
  const index rows = 2000;
  const index k = 5;
  const double t = 0.05;
  const matrix<float> l = reparam::test::random_matrix<float>(rows, k, 71, -2.f, 2.f);
  const noise_key key{18254, 0};
  const auto soft = gumbel_softmax(l, t, key);
  matrix<double> perturbed(rows, k);
  matrix<float> z(rows, k);
  index_vector hot(rows);
  log_gumbel_softmax_rows(l, t, key, perturbed, matrix_ref<float>(z), hot, all_rows(rows));
  index zeros = 0;
  for (index r = 0; r < rows; ++r) {
    for (index c = 0; c < k; ++c) {
      if (soft.soft(r, c) == 0.f) {
        ++zeros;
      }
    }
  }
  CAPTURE(zeros);
  REQUIRE(zeros > 0);  // the float boundary is really reached
  CHECK(std::isfinite(static_cast<double>(z.minCoeff())));
  const vector<double> log_pz = exp_concrete_log_prob(z, l, t);
  for (index r = 0; r < rows; ++r) {
    // The same formula written out in long double on the float z: (K-1)! tau^(K-1)
    // prod_k e^(l_k - tau z_k) / (sum_i e^(l_i - tau z_i))^K.
    real sum = 0;
    real sum_a = 0;
    for (index c = 0; c < k; ++c) {
      const real a = static_cast<real>(l(r, c)) - static_cast<real>(t) * static_cast<real>(z(r, c));
      sum += std::exp(a);
      sum_a += a;
    }
    const real expected =
        std::log(real(24)) + 4 * std::log(static_cast<real>(t)) + sum_a - 5 * std::log(sum);
    CAPTURE(r, log_pz[r]);
    REQUIRE(std::isfinite(log_pz[r]));
    CHECK(std::abs(log_pz[r] - static_cast<double>(expected)) < 1e-9 * (1.0 + std::abs(log_pz[r])));
  }
  REQUIRE_THROWS_WITH(concrete_log_prob(soft.soft, l, t), Contains("gumbel::concrete_log_prob") &&
                                                              Contains("is 0 at an unmasked") &&
                                                              Contains("exp_concrete_log_prob"));
}

TEST_CASE("a per-row temperature gives one log-density per row (pytorch#37162)",
          "[gumbel][density]") {
  const index rows = 4;
  const index k = 3;
  const matrix<double> l = reparam::test::random_matrix<double>(rows, k, 81, -1.0, 1.0);
  const matrix<double> y = simplex_rows(rows, k, 300);
  vector<double> taus(rows);
  taus << 0.1, 0.5, 1.0, 4.0;
  const vector<double> out = concrete_log_prob(y, l, temperature::per_row(taus));
  REQUIRE(out.size() == rows);
  vector<double> by_rows = vector<double>::Constant(rows, 7.0);
  for (index r = 0; r < rows; ++r) {
    const auto expected = static_cast<double>(
        maddison_log_density(row_as<real>(l, r), row_as<real>(y, r), static_cast<real>(taus[r])));
    CAPTURE(r, out[r], expected);
    CHECK(std::abs(out[r] - expected) < 1e-11 * (1.0 + std::abs(expected)));
    // The row form over one row with that row's tau (a scalar) agrees.
    concrete_log_prob_rows(y, l, taus[r], by_rows, row_range{r, r + 1});
    CHECK(by_rows[r] == Approx(out[r]).epsilon(1e-15));
  }
}

TEST_CASE("masked classes reduce K and K = 1 has log-density 0", "[gumbel][density]") {
  const double m = -inf;
  matrix<double> l(2, 5);
  l << 0.4, m, -1.1, 2.0, m,  //
      m, 1.7, m, m, m;
  matrix<double> y(2, 5);
  y << 0.2, 0.0, 0.5, 0.3, 0.0,  //
      0.0, 1.0, 0.0, 0.0, 0.0;
  matrix<double> z(2, 5);
  for (index r = 0; r < 2; ++r) {
    for (index c = 0; c < 5; ++c) {
      z(r, c) = y(r, c) == 0.0 ? m : std::log(y(r, c));
    }
  }
  for (const double t : {0.3, 2.0}) {
    const vector<double> py = concrete_log_prob(y, l, t);
    const vector<double> pz = exp_concrete_log_prob(z, l, t);
    const auto expected = static_cast<double>(maddison_log_density(
        {0.4L, -1.1L, 2.0L},
        {static_cast<real>(0.2), static_cast<real>(0.5), static_cast<real>(0.3)},
        static_cast<real>(t)));
    CHECK(py[0] == Approx(expected).epsilon(1e-12));
    CHECK(pz[0] == Approx(expected + std::log(0.2) + std::log(0.5) + std::log(0.3)).epsilon(1e-12));
    CHECK(py[1] == 0.0);
    CHECK(pz[1] == 0.0);
  }
}

/// Simpson nodes and weights of [a, b] with `m` (even) subintervals.
void simpson(double a, double b, int m, std::vector<double>& nodes, std::vector<double>& weights) {
  nodes.clear();
  weights.clear();
  const double h = (b - a) / m;
  for (int i = 0; i <= m; ++i) {
    nodes.push_back(a + h * i);
    weights.push_back(h / 3.0 * (i == 0 || i == m ? 1.0 : (i % 2 == 1 ? 4.0 : 2.0)));
  }
}

/// z of n log-space samples of one logits row: the rows of an [n, K] matrix get independent noise.
matrix<double> log_space_draws(const std::vector<double>& l, index n, double t, noise_key key) {
  const matrix<double> logits = repeated_rows(l, n);
  matrix<double> perturbed(n, logits.cols());
  matrix<double> z(n, logits.cols());
  index_vector hot(n);
  log_gumbel_softmax_rows(logits, t, key, perturbed, matrix_ref<double>(z), hot, all_rows(n));
  return z;
}

TEST_CASE("the ExpConcrete density of z1 - z2 is the law of two-class log-space samples",
          "[gumbel][density]") {
  // For K = 2, exp_concrete_log_prob is the density of s = z1 - z2 (the Jacobian of
  // y1 = sigmoid(s) is y1 y2). Histogram 1e5 samples on 20 bins; expected bin masses by Simpson.
  const double t = 0.6;
  const std::vector<double> l = {0.8, -0.3};
  const index n = 100000;
  const matrix<double> z = log_space_draws(l, n, t, noise_key{2, 7});
  const double center = (l[0] - l[1]) / t;
  const double width = 1.8 / t;  // the sd of a logistic / tau, roughly
  std::vector<double> edges = {center - 45.0 / t};
  for (int i = -9; i <= 9; ++i) {
    edges.push_back(center + width * 0.3 * i);
  }
  edges.push_back(center + 45.0 / t);
  const std::size_t bins = edges.size() - 1;
  std::vector<std::int64_t> observed(bins, 0);
  for (index r = 0; r < n; ++r) {
    const double s = z(r, 0) - z(r, 1);
    std::size_t b = 0;
    while (b + 1 < bins && s >= edges[b + 1]) {
      ++b;
    }
    ++observed[b];
  }
  std::vector<double> probabilities;
  double total = 0.0;
  for (std::size_t b = 0; b < bins; ++b) {
    std::vector<double> nodes;
    std::vector<double> weights;
    simpson(edges[b], edges[b + 1], 400, nodes, weights);
    matrix<double> y;
    matrix<double> zz;
    two_class_points(nodes, y, zz);
    const vector<double> log_p =
        exp_concrete_log_prob(zz, repeated_rows(l, static_cast<index>(nodes.size())), t);
    double mass = 0.0;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      mass += weights[i] * std::exp(log_p[static_cast<index>(i)]);
    }
    probabilities.push_back(mass);
    total += mass;
  }
  CHECK(std::abs(total - 1.0) < 1e-8);
  const auto result = reparam::test::chi_square_test(observed, probabilities);
  CAPTURE(result.statistic, result.dof, result.p_value);
  CHECK(result.dof >= 15);
  CHECK(result.p_value > 1e-4);
}

TEST_CASE("the three-class ExpConcrete density normalizes and is the law of log-space samples",
          "[gumbel][density]") {
  // For K = 3 it is the density of v = (z1 - z3, z2 - z3) on R^2 (the Jacobian of the additive
  // logistic map is y1 y2 y3). 7 x 7 bins, 2-D Simpson per bin.
  const double t = 0.7;
  const std::vector<double> l = {0.3, -0.4, 0.5};
  const index n = 100000;
  const matrix<double> z = log_space_draws(l, n, t, noise_key{3, 11});
  std::vector<std::vector<double>> edges(2);
  for (std::size_t d = 0; d < 2; ++d) {
    const double center = (l[d] - l[2]) / t;
    const double width = 1.8 / t;
    edges[d] = {center - 25.0 / t};  // the mass beyond +-25 / tau is about 1e-11
    for (const double e : {-2.0, -1.0, -0.3, 0.3, 1.0, 2.0}) {
      edges[d].push_back(center + width * e);
    }
    edges[d].push_back(center + 25.0 / t);
  }
  const std::size_t bins = 7;
  const auto bin_of = [&](std::size_t d, double v) {
    std::size_t b = 0;
    while (b + 1 < bins && v >= edges[d][b + 1]) {
      ++b;
    }
    return b;
  };
  std::vector<std::int64_t> observed(bins * bins, 0);
  for (index r = 0; r < n; ++r) {
    ++observed[bin_of(0, z(r, 0) - z(r, 2)) * bins + bin_of(1, z(r, 1) - z(r, 2))];
  }
  std::vector<double> probabilities;
  double total = 0.0;
  for (std::size_t i = 0; i < bins; ++i) {
    for (std::size_t j = 0; j < bins; ++j) {
      std::vector<double> n0;
      std::vector<double> w0;
      std::vector<double> n1;
      std::vector<double> w1;
      // The tail bins are ~30 times wider than the inner ones: more Simpson panels there.
      simpson(edges[0][i], edges[0][i + 1], i == 0 || i + 1 == bins ? 160 : 48, n0, w0);
      simpson(edges[1][j], edges[1][j + 1], j == 0 || j + 1 == bins ? 160 : 48, n1, w1);
      const auto points = static_cast<index>(n0.size() * n1.size());
      matrix<double> zz(points, 3);
      index p = 0;
      for (const double v0 : n0) {
        for (const double v1 : n1) {
          const double m = std::max({v0, v1, 0.0});
          const double lse = m + std::log(std::exp(v0 - m) + std::exp(v1 - m) + std::exp(-m));
          zz(p, 0) = v0 - lse;
          zz(p, 1) = v1 - lse;
          zz(p, 2) = -lse;
          ++p;
        }
      }
      const vector<double> log_p = exp_concrete_log_prob(zz, repeated_rows(l, points), t);
      double mass = 0.0;
      p = 0;
      for (const double a : w0) {
        for (const double b : w1) {
          mass += a * b * std::exp(log_p[p]);
          ++p;
        }
      }
      probabilities.push_back(mass);
      total += mass;
    }
  }
  CAPTURE(total);
  CHECK(std::abs(total - 1.0) < 1e-6);
  const auto result = reparam::test::chi_square_test(observed, probabilities);
  CAPTURE(result.statistic, result.dof, result.p_value);
  CHECK(result.dof >= 30);
  CHECK(result.p_value > 1e-4);
}

TEST_CASE("the densities refuse bad arguments before writing anything", "[gumbel][density]") {
  matrix<double> l(2, 3);
  l << 0.1, -inf, 0.3, 1.0, 2.0, 3.0;
  matrix<double> z(2, 3);
  z << -1.0, -inf, -0.5, -1.0, -2.0, -0.2;
  matrix<double> y(2, 3);
  y << 0.4, 0.0, 0.6, 0.2, 0.3, 0.5;
  vector<double> out = vector<double>::Constant(2, 7.0);
  const row_range all = all_rows(2);
  const char* fz = "gumbel::exp_concrete_log_prob_rows";
  const char* fy = "gumbel::concrete_log_prob_rows";
  const auto refuse_z = [&](const matrix<double>& zz, const matrix<double>& ll,
                            const temperature& t, const char* detail) {
    REQUIRE_THROWS_WITH(exp_concrete_log_prob_rows(zz, ll, t, out, all),
                        Contains(fz) && Contains(detail));
  };
  const auto refuse_y = [&](const matrix<double>& yy, const matrix<double>& ll,
                            const temperature& t, const char* detail) {
    REQUIRE_THROWS_WITH(concrete_log_prob_rows(yy, ll, t, out, all),
                        Contains(fy) && Contains(detail));
  };
  for (const double t : {0.0, -0.5, std::nan(""), inf}) {
    refuse_z(z, l, t, "tau");
    refuse_y(y, l, t, "tau");
  }
  matrix<double> bad = z;
  bad(0, 0) = std::nan("");
  refuse_z(bad, l, 1.0, "z(0, 0) is nan");
  bad = z;
  bad(0, 1) = -3.0;
  refuse_z(bad, l, 1.0, "z(0, 1) is -3 but logits(0, 1) is -inf");
  bad = z;
  bad(1, 2) = -inf;
  refuse_z(bad, l, 1.0, "z(1, 2) is -inf; z must be finite");
  bad = z;
  bad(1, 0) = inf;
  refuse_z(bad, l, 1.0, "z(1, 0) is inf");
  matrix<double> bad_l = l;
  bad_l(1, 1) = std::nan("");
  refuse_z(z, bad_l, 1.0, "logits(1, 1) is nan");
  bad_l(1, 1) = inf;
  refuse_y(y, bad_l, 1.0, "logits(1, 1) is inf");
  bad_l = l;
  bad_l.row(0).setConstant(-inf);
  refuse_z(z, bad_l, 1.0, "row 0 of logits has 0 finite");
  bad = y;
  bad(0, 0) = -0.1;
  refuse_y(bad, l, 1.0, "y(0, 0) is -0.1");
  bad = y;
  bad(0, 1) = 0.1;
  refuse_y(bad, l, 1.0, "y(0, 1) is 0.1 but logits(0, 1) is -inf");
  bad = y;
  bad(1, 1) = 0.0;
  refuse_y(bad, l, 1.0, "y(1, 1) is 0 at an unmasked class");
  const matrix<double> wrong(2, 4);
  refuse_z(wrong, l, 1.0, "z is [2, 4] but logits is [2, 3]");
  refuse_y(wrong, l, 1.0, "y is [2, 4]");
  vector<double> short_out(1);
  REQUIRE_THROWS_WITH(exp_concrete_log_prob_rows(z, l, 1.0, short_out, all),
                      Contains(fz) && Contains("out has 1 entries for 2 rows"));
  vector<double> taus(3);
  taus << 1.0, 1.0, 1.0;
  refuse_z(z, l, temperature::per_row(taus), "3 per-row values for 2 rows");
  REQUIRE_THROWS_WITH(exp_concrete_log_prob_rows(z, l, 1.0, out, row_range{0, 3}),
                      Contains(fz) && Contains("row range"));
  CHECK((out.array() == 7.0).all());
  REQUIRE_THROWS_WITH(exp_concrete_log_prob(bad, l, 1.0),
                      Contains("gumbel::exp_concrete_log_prob:"));
  REQUIRE_THROWS_WITH(concrete_log_prob(bad, l, 1.0),
                      Contains("gumbel::concrete_log_prob:") && Contains("y(1, 1)"));
}

TEST_CASE("the density row forms do not allocate", "[gumbel][density]") {
  const matrix<double> l = reparam::test::random_matrix<double>(4, 6, 5, -1.0, 1.0);
  const matrix<double> z =
      (reparam::test::random_matrix<double>(4, 6, 6, 0.1, 1.0)).array().log().matrix();
  const matrix<double> y = z.array().exp().matrix();
  vector<double> out(4);
  Eigen::internal::set_is_malloc_allowed(false);
  exp_concrete_log_prob_rows(z, l, 0.5, out, all_rows(4));
  concrete_log_prob_rows(y, l, 0.5, out, all_rows(4));
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(std::isfinite(out.sum()));
}

}  // namespace

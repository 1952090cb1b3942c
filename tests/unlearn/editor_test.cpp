// SPDX-License-Identifier: Apache-2.0
// unlearn/editor.hpp against independent oracles: the ridge edit against a brute-force lstsq of the
// stacked system [sqrt(s) K; sqrt(lambda) I] (complete orthogonal decomposition) and against the
// stationarity of its objective (gradient in long double), push-through == direct, the
// minimum-norm edit against (V - W0 K) pinv(K) and exact fit, ROME against its closed form and
// W' k* = v*, conditioning sweeps (zero rows, duplicates, n >= d, kappa 1e12) with documented
// outcomes, and every refusal naming function/argument and leaving `out` untouched.
#include <cmath>
#include <cstdint>
#include <limits>

#include <Eigen/Core>
#include <Eigen/LU>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/second_moment.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/editor.hpp>

#include "support/random.hpp"

namespace {

using Catch::Matchers::Contains;
using idx = reparam::index;
using reparam::matrix;
using reparam::vector;
namespace unlearn = reparam::unlearn;

using mat_ld = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;

constexpr double eps = std::numeric_limits<double>::epsilon();

matrix<double> rand_mat(idx rows, idx cols, std::uint64_t salt) {
  return reparam::test::random_matrix<double>(rows, cols, reparam::test::test_seed(salt));
}

/// Brute-force ridge oracle: W'^T = lstsq([sqrt(s) K; sqrt(lambda) I], [sqrt(s) V; sqrt(lambda)
/// W0^T]) by complete orthogonal decomposition (no normal equations).
Eigen::MatrixXd ridge_oracle(const Eigen::MatrixXd& w0, const Eigen::MatrixXd& k,
                             const Eigen::MatrixXd& v, const Eigen::VectorXd& s, double lambda) {
  const idx n = k.rows();
  const idx d = k.cols();
  Eigen::MatrixXd a(n + d, d);
  Eigen::MatrixXd b(n + d, w0.rows());
  for (idx i = 0; i < n; ++i) {
    a.row(i) = std::sqrt(s(i)) * k.row(i);
    b.row(i) = std::sqrt(s(i)) * v.row(i);
  }
  a.bottomRows(d) = std::sqrt(lambda) * Eigen::MatrixXd::Identity(d, d);
  b.bottomRows(d) = std::sqrt(lambda) * w0.transpose();
  const Eigen::CompleteOrthogonalDecomposition<Eigen::MatrixXd> cod(a);
  return cod.solve(b).transpose();
}

/// Frobenius norm of the gradient of sum s ||W c - v||^2 + lambda ||W - W0||^2 (+ p tr(dW C dW^T))
/// at w, in long double, relative to the size of its two terms.
double relative_gradient(const Eigen::MatrixXd& w, const Eigen::MatrixXd& w0,
                         const Eigen::MatrixXd& k, const Eigen::MatrixXd& v,
                         const Eigen::VectorXd& s, double lambda, const Eigen::MatrixXd& prior,
                         double prior_weight) {
  const mat_ld wl = w.cast<long double>();
  const mat_ld dw = (w - w0).cast<long double>();
  mat_ld res = k.cast<long double>() * wl.transpose() - v.cast<long double>();  // [n, d_out]
  for (idx i = 0; i < res.rows(); ++i) {
    res.row(i) *= static_cast<long double>(s(i));
  }
  const mat_ld data_term = res.transpose() * k.cast<long double>();
  mat_ld reg = static_cast<long double>(lambda) * dw;
  if (prior.size() != 0) {
    reg += static_cast<long double>(prior_weight) * dw * prior.cast<long double>();
  }
  const mat_ld g = data_term + reg;
  const long double scale = data_term.norm() + reg.norm() + 1e-300L;
  return static_cast<double>(g.norm() / scale);
}

double rel_diff(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  return (a - b).norm() / std::max(b.norm(), 1e-300);
}

}  // namespace

TEST_CASE("least_squares_edit matches a brute-force stacked lstsq and is stationary",
          "[unlearn][editor]") {
  CAPTURE(Catch::rngSeed());
  const idx d_out = 7;
  for (const idx d : {6, 20}) {
    for (const idx n : {3, 9, 30}) {
      CAPTURE(d, n);
      const matrix<double> w0 = rand_mat(d_out, d, 1);
      const matrix<double> k = rand_mat(n, d, 2);
      const matrix<double> v = rand_mat(n, d_out, 3);
      unlearn::ls_edit_options opt;
      opt.sample_weights = (rand_mat(n, 1, 4).array() + 1.5).matrix();
      matrix<double> out;
      const unlearn::edit_report rep = unlearn::least_squares_edit(w0, k, v, out, opt);
      // default lambda: 1e-2 * tr(K^T S K) / d
      double tr = 0.0;
      for (idx i = 0; i < n; ++i) {
        tr += opt.sample_weights(i) * k.row(i).squaredNorm();
      }
      REQUIRE(rep.lambda_used == Approx(1e-2 * tr / static_cast<double>(d)).epsilon(1e-12));
      REQUIRE(rep.push_through == (2 * n < d));
      REQUIRE(rep.effective_rank == std::min(n, d));
      REQUIRE(rep.condition >= 1.0);
      const Eigen::MatrixXd oracle = ridge_oracle(w0, k, v, opt.sample_weights, rep.lambda_used);
      CHECK(rel_diff(out, oracle) < 1e-11);
      CHECK(relative_gradient(out, w0, k, v, opt.sample_weights, rep.lambda_used, Eigen::MatrixXd(),
                              0.0) < 1e-12);
      CHECK(rep.delta_norm == Approx((oracle - w0).norm()).epsilon(1e-10));
      double res = 0.0;
      for (idx i = 0; i < n; ++i) {
        res += opt.sample_weights(i) *
               (oracle * k.row(i).transpose() - v.row(i).transpose()).squaredNorm();
      }
      CHECK(rep.residual == Approx(std::sqrt(res)).epsilon(1e-9));
    }
  }
}

TEST_CASE("least_squares_edit gives the same matrix in push-through and direct form",
          "[unlearn][editor]") {
  CAPTURE(Catch::rngSeed());
  for (const idx n : {1, 4, 25, 40}) {
    CAPTURE(n);
    const idx d = 24;
    const matrix<double> w0 = rand_mat(5, d, 11);
    const matrix<double> k = rand_mat(n, d, 12);
    const matrix<double> v = rand_mat(n, 5, 13);
    unlearn::ls_edit_options opt;
    opt.lambda = 0.3;
    opt.form = unlearn::ls_form::direct;
    matrix<double> direct;
    matrix<double> push;
    const unlearn::edit_report rd = unlearn::least_squares_edit(w0, k, v, direct, opt);
    opt.form = unlearn::ls_form::push_through;
    const unlearn::edit_report rp = unlearn::least_squares_edit(w0, k, v, push, opt);
    REQUIRE_FALSE(rd.push_through);
    REQUIRE(rp.push_through);
    CHECK(rel_diff(push, direct) < 1e-12);
    CHECK(rp.residual == Approx(rd.residual).epsilon(1e-10));
  }
}

TEST_CASE("least_squares_edit with a MEMIT prior is stationary for the prior-weighted objective",
          "[unlearn][editor]") {
  CAPTURE(Catch::rngSeed());
  const idx d = 10;
  const matrix<double> samples = rand_mat(50, d, 21);
  reparam::second_moment prior(d);
  prior.add(samples);
  const matrix<double> w0 = rand_mat(4, d, 22);
  const matrix<double> k = rand_mat(3, d, 23);
  const matrix<double> v = rand_mat(3, 4, 24);
  unlearn::ls_edit_options opt;
  opt.lambda = 1e-3;
  opt.prior = &prior;
  opt.prior_weight = 2.0;
  matrix<double> out;
  const unlearn::edit_report rep = unlearn::least_squares_edit(w0, k, v, out, opt);
  REQUIRE_FALSE(rep.push_through);  // n < d / 2, but the prior forces the direct form
  const Eigen::MatrixXd c = samples.transpose() * samples / 50.0;
  CHECK(relative_gradient(out, w0, k, v, Eigen::VectorXd::Ones(3), 1e-3, c, 2.0) < 1e-12);
  // Without the prior the answer differs (the prior is not silently ignored).
  opt.prior = nullptr;
  matrix<double> plain;
  unlearn::least_squares_edit(w0, k, v, plain, opt);
  CHECK(rel_diff(plain, out) > 1e-3);
}

TEST_CASE("least_squares_edit conditioning sweep: regularise, or a clear error naming the rank",
          "[unlearn][editor]") {
  CAPTURE(Catch::rngSeed());
  const idx d = 12;
  const matrix<double> w0 = rand_mat(3, d, 31);
  SECTION("duplicates and zero rows with lambda = 0 and n < d: singular, error names the rank") {
    matrix<double> k = rand_mat(5, d, 32);
    k.row(3) = k.row(1);
    k.row(4).setZero();
    const matrix<double> v = rand_mat(5, 3, 33);
    unlearn::ls_edit_options opt;
    opt.lambda = 0.0;
    opt.form = unlearn::ls_form::direct;
    matrix<double> out = matrix<double>::Constant(2, 2, 7.0);
    REQUIRE_THROWS_WITH(unlearn::least_squares_edit(w0, k, v, out, opt),
                        Contains("unlearn::least_squares_edit") && Contains("effective rank 3") &&
                            Contains("min_norm_edit"));
    opt.form = unlearn::ls_form::push_through;
    REQUIRE_THROWS_WITH(unlearn::least_squares_edit(w0, k, v, out, opt),
                        Contains("effective rank 3"));
    CHECK(out == matrix<double>::Constant(2, 2, 7.0));
    // Default relative lambda: regularised, equals the oracle.
    opt = unlearn::ls_edit_options();
    const unlearn::edit_report rep = unlearn::least_squares_edit(w0, k, v, out, opt);
    CHECK(rep.effective_rank == 3);
    CHECK(rel_diff(out, ridge_oracle(w0, k, v, Eigen::VectorXd::Ones(5), rep.lambda_used)) < 1e-11);
  }
  SECTION("n >= d, full rank, lambda = 0: the plain least-squares fit") {
    const matrix<double> k = rand_mat(40, d, 34);
    const matrix<double> v = rand_mat(40, 3, 35);
    unlearn::ls_edit_options opt;
    opt.lambda = 0.0;
    matrix<double> out;
    const unlearn::edit_report rep = unlearn::least_squares_edit(w0, k, v, out, opt);
    CHECK_FALSE(rep.push_through);
    const Eigen::MatrixXd lstsq =
        Eigen::CompleteOrthogonalDecomposition<Eigen::MatrixXd>(k).solve(Eigen::MatrixXd(v));
    CHECK(rel_diff(out, lstsq.transpose()) < 1e-11);
  }
  SECTION("kappa 1e12 keys: default lambda regularises; lambda = 0 refuses") {
    const idx n = 12;
    const Eigen::MatrixXd q1 =
        Eigen::HouseholderQR<Eigen::MatrixXd>(rand_mat(n, n, 36)).householderQ();
    const Eigen::MatrixXd q2 =
        Eigen::HouseholderQR<Eigen::MatrixXd>(rand_mat(d, d, 37)).householderQ();
    Eigen::VectorXd sig(n);
    for (idx i = 0; i < n; ++i) {
      sig(i) = std::pow(10.0, -12.0 * static_cast<double>(i) / static_cast<double>(n - 1));
    }
    const matrix<double> k = q1 * sig.asDiagonal() * q2.transpose();
    const matrix<double> v = rand_mat(n, 3, 38);
    unlearn::ls_edit_options opt;
    matrix<double> out;
    const unlearn::edit_report rep = unlearn::least_squares_edit(w0, k, v, out, opt);
    CHECK(rep.condition < 1e4);
    CHECK(rel_diff(out, ridge_oracle(w0, k, v, Eigen::VectorXd::Ones(n), rep.lambda_used)) < 1e-10);
    opt.lambda = 0.0;
    matrix<double> untouched = w0;
    // K^T K has kappa 1e24: singular in double.
    REQUIRE_THROWS_WITH(unlearn::least_squares_edit(w0, k, v, untouched, opt),
                        Contains("singular") && Contains("effective rank"));
    CHECK(untouched == w0);
  }
}

TEST_CASE("least_squares_edit in float equals the double edit to float rounding",
          "[unlearn][editor]") {
  CAPTURE(Catch::rngSeed());
  const matrix<double> w0 = rand_mat(6, 16, 41);
  const matrix<double> k = rand_mat(5, 16, 42);
  const matrix<double> v = rand_mat(5, 6, 43);
  const matrix<float> w0f = w0.cast<float>();
  matrix<float> outf;
  matrix<double> outd;
  unlearn::least_squares_edit(w0f, k, v, outf);
  const matrix<double> w0r = w0f.cast<double>();  // the same weights, exactly
  unlearn::least_squares_edit(w0r, k, v, outd);
  CHECK(rel_diff(outf.cast<double>(), outd) <
        4.0 * static_cast<double>(std::numeric_limits<float>::epsilon()));
}

TEST_CASE("min_norm_edit equals (V - W0 K) pinv(K) and fits consistent targets exactly",
          "[unlearn][editor]") {
  CAPTURE(Catch::rngSeed());
  const idx d = 15;
  const matrix<double> w0 = rand_mat(4, d, 51);
  for (const idx n : {1, 6, 15}) {
    CAPTURE(n);
    const matrix<double> k = rand_mat(n, d, 52);
    const matrix<double> v = rand_mat(n, 4, 53);  // n <= d: consistent
    matrix<double> out;
    const unlearn::edit_report rep = unlearn::min_norm_edit(w0, k, v, out);
    CHECK(rep.effective_rank == n);
    const Eigen::MatrixXd kt = k.transpose();
    const Eigen::MatrixXd pinv =
        Eigen::CompleteOrthogonalDecomposition<Eigen::MatrixXd>(kt).pseudoInverse();
    const Eigen::MatrixXd oracle = w0 + (v.transpose() - w0 * kt) * pinv;
    CHECK(rel_diff(out, oracle) < 1e-11);
    CHECK((out * kt - Eigen::MatrixXd(v.transpose())).norm() < 1e-11 * (1.0 + v.norm()));
    CHECK(rep.residual < 1e-11 * (1.0 + v.norm()));
    // Minimum norm: the change lies in the row space of the keys.
    const Eigen::MatrixXd delta = out - w0;
    CHECK((delta - delta * pinv.transpose() * k).norm() < 1e-11 * (1.0 + delta.norm()));
  }
}

TEST_CASE("min_norm_edit drops duplicate and zero keys by the rank policy", "[unlearn][editor]") {
  CAPTURE(Catch::rngSeed());
  const idx d = 10;
  const matrix<double> w0 = rand_mat(3, d, 61);
  const matrix<double> base = rand_mat(3, d, 62);
  const matrix<double> wt = rand_mat(3, d, 63);  // consistent targets V = K Wt^T
  matrix<double> k(6, d);
  k << base, base.row(0), matrix<double>::Zero(1, d), base.row(2);
  const matrix<double> v = k * wt.transpose();
  matrix<double> out;
  const unlearn::edit_report rep = unlearn::min_norm_edit(w0, k, v, out);
  CHECK(rep.effective_rank == 3);
  // Oracle: the same edit from the three distinct keys (full row rank: K^+ = K^T (K K^T)^-1).
  const Eigen::MatrixXd bt = base.transpose();
  const Eigen::MatrixXd pinv = (base * bt).inverse() * base;
  const Eigen::MatrixXd oracle =
      w0 + (Eigen::MatrixXd(base * wt.transpose()).transpose() - w0 * bt) * pinv;
  CHECK(rel_diff(out, oracle) < 1e-11);
  // all-zero keys: no direction, W' = W0
  matrix<double> same;
  const unlearn::edit_report zero = unlearn::min_norm_edit(
      w0, matrix<double>(matrix<double>::Zero(2, d)), rand_mat(2, 3, 64), same);
  CHECK(zero.effective_rank == 0);
  CHECK(same == w0);
  // kappa 1e12 keys: kept at the default tolerance, dropped by an explicit 1e-8.
  const Eigen::MatrixXd q =
      Eigen::HouseholderQR<Eigen::MatrixXd>(rand_mat(d, d, 65)).householderQ();
  Eigen::VectorXd sig(4);
  sig << 1.0, 1e-3, 1e-9, 1e-12;
  const matrix<double> kk = sig.asDiagonal() * q.leftCols(4).transpose();
  const matrix<double> vv = rand_mat(4, 3, 66);
  matrix<double> o1;
  matrix<double> o2;
  CHECK(unlearn::min_norm_edit(w0, kk, vv, o1).effective_rank == 4);
  const unlearn::edit_report r2 = unlearn::min_norm_edit(w0, kk, vv, o2, 1e-8);
  CHECK(r2.effective_rank == 2);
  CHECK(r2.condition == Approx(1e3).epsilon(1e-9));
}

TEST_CASE("low_rank_edit truncates to the top-r key directions", "[unlearn][editor]") {
  CAPTURE(Catch::rngSeed());
  const idx d = 9;
  const matrix<double> w0 = rand_mat(3, d, 71);
  const matrix<double> k = rand_mat(5, d, 72);
  const matrix<double> v = rand_mat(5, 3, 73);
  matrix<double> full;
  matrix<double> big;
  unlearn::min_norm_edit(w0, k, v, full);
  unlearn::low_rank_edit(w0, k, v, 7, big);
  CHECK(rel_diff(big, full) < 1e-12);
  // r = 2 oracle from a Jacobi SVD (a different algorithm from the code's BDCSVD path).
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(k),
                                              Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::MatrixXd r = v - k * w0.transpose();
  Eigen::MatrixXd oracle = w0;
  for (idx i = 0; i < 2; ++i) {
    oracle += (r.transpose() * svd.matrixU().col(i)) * svd.matrixV().col(i).transpose() /
              svd.singularValues()(i);
  }
  matrix<double> two;
  const unlearn::edit_report rep = unlearn::low_rank_edit(w0, k, v, 2, two);
  CHECK(rel_diff(two, oracle) < 1e-11);
  CHECK(rep.effective_rank == 5);
}

TEST_CASE("rome_edit matches the closed-form rank-one update and maps k* to v*",
          "[unlearn][editor]") {
  CAPTURE(Catch::rngSeed());
  const idx d = 8;
  const matrix<double> samples = rand_mat(30, d, 81);
  reparam::second_moment moment(d);
  moment.add(samples);
  const matrix<double> w0 = rand_mat(5, d, 82);
  const vector<double> key = rand_mat(d, 1, 83);
  const vector<double> value = rand_mat(5, 1, 84);
  matrix<double> out;
  const unlearn::edit_report rep = unlearn::rome_edit(w0, key, value, moment, out);
  // Oracle in long double with an LU inverse of C = samples^T samples / 30.
  const mat_ld c = samples.cast<long double>().transpose() * samples.cast<long double>() / 30.0L;
  const mat_ld ck = c.fullPivLu().solve(key.cast<long double>());
  const long double denom = (key.cast<long double>().transpose() * ck)(0, 0);
  const mat_ld oracle =
      w0.cast<long double>() +
      (value.cast<long double>() - w0.cast<long double>() * key.cast<long double>()) *
          ck.transpose() / denom;
  CHECK(rel_diff(out, oracle.cast<double>()) < 1e-12);
  CHECK((out * key - value).norm() < 1e-12 * (1.0 + value.norm()));
  CHECK(rep.residual < 1e-12 * (1.0 + value.norm()));
  CHECK(rep.effective_rank == d);
  // Singular C (3 samples in d = 8): refused with the rank; a ridge makes it well posed.
  reparam::second_moment thin(d);
  thin.add(matrix<double>(samples.topRows(3)));
  matrix<double> untouched = w0;
  REQUIRE_THROWS_WITH(
      unlearn::rome_edit(w0, key, value, thin, untouched),
      Contains("unlearn::rome_edit") && Contains("effective rank 3") && Contains("relative_ridge"));
  CHECK(untouched == w0);
  const unlearn::edit_report ridged = unlearn::rome_edit(w0, key, value, thin, out, 1e-3);
  CHECK(ridged.lambda_used > 0.0);
  CHECK((out * key - value).norm() < 1e-9 * (1.0 + value.norm()));
}

TEST_CASE("editors refuse bad input, naming function and argument, and leave out untouched",
          "[unlearn][editor]") {
  const idx d = 6;
  const matrix<double> w0 = matrix<double>::Ones(3, d);
  const matrix<double> k = matrix<double>::Identity(2, d);
  const matrix<double> v = matrix<double>::Ones(2, 3);
  const matrix<double> sentinel = matrix<double>::Constant(1, 1, 42.0);
  matrix<double> out = sentinel;
  matrix<double> nan_k = k;
  nan_k(1, 2) = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(
      unlearn::least_squares_edit(w0, nan_k, v, out),
      Contains("unlearn::least_squares_edit") && Contains("keys") && Contains("row 1, col 2"));
  REQUIRE_THROWS_WITH(unlearn::least_squares_edit(w0, matrix<double>(k.leftCols(5)), v, out),
                      Contains("keys has 5 cols"));
  REQUIRE_THROWS_WITH(unlearn::least_squares_edit(w0, k, matrix<double>(v.topRows(1)), out),
                      Contains("values has 1 rows"));
  REQUIRE_THROWS_WITH(
      unlearn::least_squares_edit(w0, matrix<double>(0, d), matrix<double>(0, 3), out),
      Contains("keys has no rows"));
  unlearn::ls_edit_options opt;
  opt.sample_weights = vector<double>::Ones(2);
  opt.sample_weights(1) = -1.0;
  REQUIRE_THROWS_WITH(unlearn::least_squares_edit(w0, k, v, out, opt),
                      Contains("options.sample_weights(1) = -1"));
  opt = unlearn::ls_edit_options();
  opt.lambda = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_WITH(unlearn::least_squares_edit(w0, k, v, out, opt), Contains("options.lambda"));
  opt = unlearn::ls_edit_options();
  reparam::second_moment prior(d);
  opt.prior = &prior;
  REQUIRE_THROWS_WITH(unlearn::least_squares_edit(w0, k, v, out, opt),
                      Contains("options.prior has no samples"));
  prior.add(matrix<double>(matrix<double>::Identity(d, d)));
  opt.form = unlearn::ls_form::push_through;
  REQUIRE_THROWS_WITH(unlearn::least_squares_edit(w0, k, v, out, opt),
                      Contains("push_through cannot take options.prior"));
  REQUIRE_THROWS_WITH(unlearn::min_norm_edit(w0, k, v, out, 1.0),
                      Contains("unlearn::min_norm_edit") && Contains("relative_tolerance 1"));
  REQUIRE_THROWS_WITH(unlearn::low_rank_edit(w0, k, v, 0, out),
                      Contains("unlearn::low_rank_edit") && Contains("r 0"));
  REQUIRE_THROWS_WITH(unlearn::rome_edit(w0, vector<double>(vector<double>::Zero(d)),
                                         vector<double>::Ones(3), prior, out),
                      Contains("unlearn::rome_edit") && Contains("key is zero"));
  REQUIRE_THROWS_WITH(
      unlearn::rome_edit(w0, vector<double>::Ones(d), vector<double>::Ones(3), prior, out, -1.0),
      Contains("relative_ridge -1"));
  REQUIRE_THROWS_WITH(
      unlearn::rome_edit(w0, vector<double>::Ones(d - 1), vector<double>::Ones(3), prior, out),
      Contains("key has 5 entries"));
  CHECK(out == sentinel);
}

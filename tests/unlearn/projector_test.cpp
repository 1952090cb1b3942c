// SPDX-License-Identifier: Apache-2.0
// unlearn/projector.hpp against independent oracles: projector algebra from the dense matrix in
// double (idempotent, symmetric, rank), apply_rows against x P, folds against the unfolded layer
// (output side: W' x = P (W x); input side: W' x = W (P x)), the INLP intersection against a
// brute-force nullspace (full SVD of the stacked bases) and a hand-worked case where the product
// of projectors is wrong, LEACE's guarantees (equal class means, least-squares probe slope ~0,
// rank <= classes - 1), no allocation, and every refusal leaving its outputs untouched.
#define EIGEN_RUNTIME_NO_MALLOC  // lets the no-allocation test forbid Eigen's mallocs

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/projector.hpp>
#include <reparam/unlearn/subspace.hpp>

#include "support/count_allocations.hpp"
#include "support/random.hpp"

namespace {

using Catch::Matchers::Contains;
using reparam::matrix;
using reparam::row_range;
using reparam::vector;
namespace unlearn = reparam::unlearn;

constexpr double eps = std::numeric_limits<double>::epsilon();

/// k x d with orthonormal rows from Householder QR (independent of the SVD path under test).
matrix<double> planted_basis(reparam::index d, reparam::index k, std::uint64_t seed) {
  const Eigen::MatrixXd g = reparam::test::random_matrix<double>(d, k, seed);
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  const Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(d, k);
  return q.transpose();
}

unlearn::subspace basis_of(const matrix<double>& rows) {
  unlearn::subspace s;
  s.directions = rows;
  return s;
}

/// The oracle I - s Q^T Q, written out entry by entry.
matrix<double> oracle_projector(const matrix<double>& q, double s) {
  const reparam::index d = q.cols();
  matrix<double> p(d, d);
  for (reparam::index i = 0; i < d; ++i) {
    for (reparam::index j = 0; j < d; ++j) {
      double g = 0.0;
      for (reparam::index r = 0; r < q.rows(); ++r) {
        g += q(r, i) * q(r, j);
      }
      p(i, j) = (i == j ? 1.0 : 0.0) - s * g;
    }
  }
  return p;
}

/// Number of singular values above `threshold` (full SVD, for ranks of 0/1-spectrum matrices).
reparam::index numeric_rank(const matrix<double>& m, double threshold) {
  const Eigen::MatrixXd md = m;
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(md);
  reparam::index r = 0;
  for (reparam::index i = 0; i < svd.singularValues().size(); ++i) {
    r += svd.singularValues()(i) > threshold ? 1 : 0;
  }
  return r;
}

double max_abs(const matrix<double>& m) { return m.size() == 0 ? 0.0 : m.cwiseAbs().maxCoeff(); }

}  // namespace

TEST_CASE("orthogonal_eraser dense is an idempotent symmetric projector of rank d - k",
          "[unlearn][projector]") {
  const reparam::index d = 12;
  const reparam::index k = 4;
  const std::uint64_t seed = reparam::test::test_seed(21);
  CAPTURE(seed);
  const matrix<double> q = planted_basis(d, k, seed);
  const unlearn::orthogonal_eraser eraser(basis_of(q));
  CHECK(eraser.dim() == d);
  CHECK(eraser.rank() == k);
  const matrix<double> p = eraser.dense();
  CHECK(max_abs(p - oracle_projector(q, 1.0)) <= 10 * eps);
  CHECK(max_abs(p * p - p) <= 20 * eps);
  CHECK(max_abs(p - p.transpose()) == 0.0);
  CHECK(numeric_rank(p, 0.5) == d - k);
  CHECK(p.trace() == Approx(static_cast<double>(d - k)).epsilon(1e-14));
  CHECK(max_abs(q * p) <= 10 * eps);  // every erased direction maps to 0
  const unlearn::projector_diagnostics diag = eraser.diagnostics();
  CHECK(diag.idempotence <= 1e-14);
  CHECK(diag.symmetry == 0.0);
  CHECK(diag.orthogonality <= 1e-14);
  CHECK(diag.rank_removed == k);
  // Partial strength: not idempotent; the factored diagnostic equals the dense ||P^2 - P||_F.
  for (const double s : {0.5, 2.0}) {
    CAPTURE(s);
    const unlearn::orthogonal_eraser partial(basis_of(q), s);
    const matrix<double> ps = partial.dense();
    CHECK(max_abs(ps - oracle_projector(q, s)) <= 10 * eps);
    const double dense_idem = (ps * ps - ps).norm();
    CHECK(partial.diagnostics().idempotence == Approx(dense_idem).epsilon(1e-12));
    if (s == 2.0) {
      CHECK(max_abs(ps * ps - matrix<double>::Identity(d, d)) <= 20 * eps);  // a reflection
    }
  }
  // Rank 0 is the identity.
  unlearn::subspace empty;
  empty.directions.resize(0, d);
  const unlearn::orthogonal_eraser none(empty);
  CHECK(none.dense() == matrix<double>::Identity(d, d));
  CHECK(none.diagnostics().rank_removed == 0);
}

TEST_CASE("orthogonal_eraser apply_rows equals x P on row ranges, strided blocks and large k",
          "[unlearn][projector]") {
  const std::uint64_t seed = reparam::test::test_seed(22);
  CAPTURE(seed);
  for (const reparam::index d : {1, 7, 33, 300}) {
    for (const reparam::index k : {reparam::index{0}, reparam::index{1},
                                   std::min<reparam::index>(d, 5), reparam::index{260}}) {
      if (k > d) {
        continue;
      }
      CAPTURE(d, k);
      const matrix<double> q = planted_basis(d, k, seed + static_cast<std::uint64_t>(d * 1000 + k));
      const unlearn::orthogonal_eraser eraser(basis_of(q));
      const matrix<double> p = oracle_projector(q, 1.0);
      const matrix<double> x = reparam::test::random_matrix<double>(9, d, seed + 5);
      const matrix<double> expected = x * p;
      matrix<double> got = x;
      eraser.apply_rows(got, row_range{2, 7});
      CHECK(got.topRows(2) == x.topRows(2));
      CHECK(got.bottomRows(2) == x.bottomRows(2));
      CHECK(max_abs(got.middleRows(2, 5) - expected.middleRows(2, 5)) <= 1e-13);
      // The erased rows have no component left in span Q (||Q x|| ~ eps ||x||).
      CHECK(max_abs(got.middleRows(2, 5) * q.transpose()) <= 1e-13);
      // float, in a wider buffer (row stride > d): rounded once from the double result.
      matrix<float> wide = matrix<float>::Constant(9, d + 3, 7.f);
      wide.leftCols(d) = x.cast<float>();
      reparam::matrix_ref<float> view = wide.leftCols(d);
      eraser.apply_rows(view, row_range{0, 9});
      const matrix<double> expected_f = x.cast<float>().cast<double>() * p;
      CHECK(max_abs(wide.leftCols(d).cast<double>() - expected_f) <= 1e-6);
      CHECK(wide.rightCols(3) == matrix<float>::Constant(9, 3, 7.f));
    }
  }
}

TEST_CASE("orthogonal_eraser apply_rows does not allocate", "[unlearn][projector]") {
  const unlearn::orthogonal_eraser eraser(basis_of(planted_basis(16, 3, 5)));
  matrix<float> xf = reparam::test::random_matrix<float>(8, 16, 6);
  matrix<double> xd = reparam::test::random_matrix<double>(8, 16, 7);
  const long before = reparam::test::allocations();
  Eigen::internal::set_is_malloc_allowed(false);
  eraser.apply_rows(xf, row_range{0, 4});
  eraser.apply_rows(xf, row_range{4, 8});
  eraser.apply_rows(xd, row_range{0, 8});
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(reparam::test::allocations() == before);
}

TEST_CASE("orthogonal_eraser refuses bad bases and bad calls and leaves x untouched",
          "[unlearn][projector]") {
  matrix<double> q = planted_basis(6, 2, 9);
  q.row(1) *= 1.001;
  REQUIRE_THROWS_WITH(unlearn::orthogonal_eraser(basis_of(q)),
                      Contains("unlearn::orthogonal_eraser") && Contains("not orthonormal") &&
                          Contains("orthonormal_basis"));
  REQUIRE_THROWS_WITH(unlearn::orthogonal_eraser(basis_of(planted_basis(6, 2, 9)),
                                                 std::numeric_limits<double>::infinity()),
                      Contains("unlearn::orthogonal_eraser") && Contains("strength inf"));
  REQUIRE_THROWS_WITH(unlearn::orthogonal_eraser(unlearn::subspace{}),
                      Contains("unlearn::orthogonal_eraser") && Contains("dim 0"));
  const unlearn::orthogonal_eraser eraser(basis_of(planted_basis(6, 2, 9)));
  matrix<float> x = reparam::test::random_matrix<float>(3, 5, 10);
  const matrix<float> before = x;
  REQUIRE_THROWS_WITH(eraser.apply_rows(x, row_range{0, 3}),
                      Contains("unlearn::orthogonal_eraser::apply_rows") &&
                          Contains("x has 5 columns") && Contains("dim 6"));
  CHECK(x == before);
  matrix<double> y = reparam::test::random_matrix<double>(3, 6, 11);
  const matrix<double> y_before = y;
  REQUIRE_THROWS_WITH(
      eraser.apply_rows(y, row_range{1, 4}),
      Contains("unlearn::orthogonal_eraser::apply_rows") && Contains("row range [1, 4)"));
  CHECK(y == y_before);
}

TEST_CASE("fold_output_side gives W' x = P (W x) and projects the bias; input side W (P x)",
          "[unlearn][projector]") {
  const reparam::index d = 10;
  const reparam::index in = 7;
  const std::uint64_t seed = reparam::test::test_seed(23);
  CAPTURE(seed);
  const matrix<double> q = planted_basis(d, 3, seed);
  const unlearn::orthogonal_eraser eraser(basis_of(q));
  const matrix<double> p = oracle_projector(q, 1.0);
  const matrix<double> w = reparam::test::random_matrix<double>(d, in, seed + 1);
  const vector<double> b = reparam::test::random_matrix<double>(d, 1, seed + 2).col(0);
  const vector<double> x = reparam::test::random_matrix<double>(in, 1, seed + 3).col(0);

  SECTION("output side, double, with bias") {
    matrix<double> wf = w;
    vector<double> bf = b;
    const unlearn::fold_report report = unlearn::fold_output_side(eraser, wf, bf);
    const vector<double> hooked = p * (w * x + b);  // the unfolded layer, then the projection
    const vector<double> folded = wf * x + bf;
    CHECK(max_abs(folded - hooked) <= 1e-13);
    CHECK(max_abs(q * wf) <= 1e-14);  // cannot write into span Q
    CHECK(report.delta_norm == Approx((wf - w).norm()).epsilon(1e-12));
    CHECK(report.relative_delta == Approx((wf - w).norm() / w.norm()).epsilon(1e-12));
    CHECK(report.retained_energy == Approx(wf.squaredNorm() / w.squaredNorm()).epsilon(1e-12));
  }
  SECTION("output side, float, rounded once") {
    matrix<float> wf = w.cast<float>();
    const matrix<double> w_rounded = wf.cast<double>();
    unlearn::fold_output_side(eraser, wf);
    CHECK(max_abs(wf.cast<double>() - p * w_rounded) <= 1e-6);
  }
  SECTION("input side: W' = W P, the layer no longer reads span Q") {
    matrix<double> wt = w.transpose();  // [in, d]: reads the d-dim residual
    const vector<double> h = reparam::test::random_matrix<double>(d, 1, seed + 4).col(0);
    unlearn::fold_input_side(eraser, wt);
    const vector<double> expected = w.transpose() * (p * h);
    CHECK(max_abs(wt * h - expected) <= 1e-13);
    CHECK(max_abs(wt * q.transpose()) <= 1e-14);
  }
  SECTION("embedding rows: E' = E P, and the tied classifier reads x P") {
    matrix<double> e = w.transpose();  // [vocab = in, d]
    unlearn::fold_embedding_rows(eraser, e);
    CHECK(max_abs(e - w.transpose() * p) <= 1e-14);
    const vector<double> h = reparam::test::random_matrix<double>(d, 1, seed + 5).col(0);
    // logits with the folded tied classifier equal the hooked classifier input (P symmetric).
    CHECK(max_abs(e * h - w.transpose() * (p * h)) <= 1e-13);
  }
  SECTION("a zero weight reports no change") {
    matrix<double> zero = matrix<double>::Zero(d, in);
    const unlearn::fold_report report = unlearn::fold_output_side(eraser, zero);
    CHECK(report.delta_norm == 0.0);
    CHECK(report.relative_delta == 0.0);
    CHECK(report.retained_energy == 1.0);
  }
}

TEST_CASE("folds refuse shape mismatches and non-finite weights before changing anything",
          "[unlearn][projector]") {
  const unlearn::orthogonal_eraser eraser(basis_of(planted_basis(5, 2, 31)));
  matrix<double> w = reparam::test::random_matrix<double>(4, 5, 32);
  const matrix<double> w_before = w;
  REQUIRE_THROWS_WITH(unlearn::fold_output_side(eraser, w), Contains("unlearn::fold_output_side") &&
                                                                Contains("weight has 4 rows") &&
                                                                Contains("dim 5"));
  CHECK(w == w_before);
  matrix<double> wo = reparam::test::random_matrix<double>(5, 3, 33);
  const matrix<double> wo_before = wo;
  vector<double> bias = vector<double>::Ones(4);
  REQUIRE_THROWS_WITH(unlearn::fold_output_side(eraser, wo, bias),
                      Contains("unlearn::fold_output_side") && Contains("bias has size 4"));
  CHECK(wo == wo_before);
  CHECK(bias == vector<double>::Ones(4));
  vector<double> nan_bias = vector<double>::Ones(5);
  nan_bias(3) = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(unlearn::fold_output_side(eraser, wo, nan_bias),
                      Contains("unlearn::fold_output_side") && Contains("bias has non-finite"));
  CHECK(wo == wo_before);
  matrix<float> wi = reparam::test::random_matrix<float>(3, 5, 34);
  wi(2, 1) = std::numeric_limits<float>::infinity();
  const matrix<float> wi_before = wi;
  REQUIRE_THROWS_WITH(unlearn::fold_input_side(eraser, wi), Contains("unlearn::fold_input_side") &&
                                                                Contains("weight has non-finite") &&
                                                                Contains("(2, 1)"));
  CHECK(wi == wi_before);
  matrix<float> e = reparam::test::random_matrix<float>(3, 4, 35);
  const matrix<float> e_before = e;
  REQUIRE_THROWS_WITH(
      unlearn::fold_embedding_rows(eraser, e),
      Contains("unlearn::fold_embedding_rows") && Contains("embedding has 4 columns"));
  CHECK(e == e_before);
}

TEST_CASE("intersect_nullspaces equals the brute-force projector onto the intersection",
          "[unlearn][projector]") {
  SECTION("hand-worked: e1 and (e1 + e2)/sqrt2 in R^3 leave span{e3}; the product is wrong") {
    matrix<double> w1(1, 3);
    w1 << 1, 0, 0;
    matrix<double> w2(1, 3);
    w2 << std::sqrt(0.5), std::sqrt(0.5), 0;
    const unlearn::orthogonal_eraser inter =
        unlearn::intersect_nullspaces({basis_of(w1), basis_of(w2)});
    CHECK(inter.rank() == 2);
    matrix<double> expected = matrix<double>::Zero(3, 3);
    expected(2, 2) = 1.0;
    CHECK(max_abs(inter.dense() - expected) <= 10 * eps);
    const matrix<double> product = oracle_projector(w1, 1.0) * oracle_projector(w2, 1.0);
    CHECK(max_abs(product - expected) > 0.4);  // (I - w1w1^T)(I - w2w2^T) != P_intersection
  }
  SECTION("random non-orthogonal classifiers against a full SVD nullspace") {
    const reparam::index d = 12;
    const std::uint64_t seed = reparam::test::test_seed(24);
    CAPTURE(seed);
    std::vector<unlearn::subspace> removed;
    matrix<double> stacked(0, d);
    for (std::uint64_t i = 0; i < 3; ++i) {
      const matrix<double> qi = planted_basis(d, 2, seed + i);
      removed.push_back(basis_of(qi));
      matrix<double> grown(stacked.rows() + 2, d);
      grown << stacked, qi;
      stacked = grown;
    }
    // A duplicate adds nothing.
    removed.push_back(removed.front());
    const unlearn::orthogonal_eraser inter = unlearn::intersect_nullspaces(removed);
    CHECK(inter.rank() == 6);
    const Eigen::MatrixXd sd = stacked;
    const Eigen::JacobiSVD<Eigen::MatrixXd> svd(sd, Eigen::ComputeFullV);
    const Eigen::MatrixXd nullspace = svd.matrixV().rightCols(d - 6);
    const matrix<double> oracle = nullspace * nullspace.transpose();
    CHECK(max_abs(inter.dense() - oracle) <= 1e-13);
    matrix<double> product = matrix<double>::Identity(d, d);
    for (std::size_t i = 0; i < 3; ++i) {
      product = product * oracle_projector(removed[i].directions, 1.0);
    }
    CHECK(max_abs(product - oracle) > 1e-3);
  }
  SECTION("mutually orthogonal classifiers: the product is exact too") {
    const matrix<double> frame = planted_basis(8, 4, 25);
    const unlearn::orthogonal_eraser inter =
        unlearn::intersect_nullspaces({basis_of(frame.topRows(1)), basis_of(frame.bottomRows(3))});
    const matrix<double> product =
        oracle_projector(frame.topRows(1), 1.0) * oracle_projector(frame.bottomRows(3), 1.0);
    CHECK(max_abs(inter.dense() - product) <= 1e-14);
  }
  SECTION("errors") {
    REQUIRE_THROWS_WITH(unlearn::intersect_nullspaces({}),
                        Contains("unlearn::intersect_nullspaces") && Contains("empty"));
    REQUIRE_THROWS_WITH(
        unlearn::intersect_nullspaces(
            {basis_of(planted_basis(4, 1, 1)), basis_of(planted_basis(5, 1, 1))}),
        Contains("unlearn::intersect_nullspaces") && Contains("removed[1] has dim 5"));
  }
}

namespace {

/// Three Gaussian-ish classes in R^6 with different means and a correlated shared covariance.
struct leace_data {
  matrix<double> x;
  std::vector<reparam::index> labels;
};

leace_data make_leace_data(std::uint64_t seed) {
  const reparam::index n = 300;
  const reparam::index d = 6;
  leace_data data;
  const matrix<double> noise = reparam::test::random_matrix<double>(n, d, seed);
  matrix<double> mix = reparam::test::random_matrix<double>(d, d, seed + 1);
  mix += 2.0 * matrix<double>::Identity(d, d);
  matrix<double> means(3, d);
  means << 1, 0, 0, 2, 0, 0, 0, 1, 0, 0, -1, 0, -1, -1, 1, 0, 0, 1;
  data.x = noise * mix;
  for (reparam::index i = 0; i < n; ++i) {
    const reparam::index label = i % 3;
    data.labels.push_back(label);
    data.x.row(i) += means.row(label);
  }
  return data;
}

/// Least-squares probe of target on [1, x], solved on centred data (the intercept is then the
/// target mean): the minimum-norm slope pinv(X_c) (t - mean t) from a complete orthogonal
/// decomposition with pivots below 1e-9 relative treated as zero (erased data is rank deficient
/// by construction; without centring the minimum-norm solution would express the constant
/// through a direction that is constant on the erased data).
vector<double> probe_slope(const matrix<double>& x, const vector<double>& target) {
  Eigen::MatrixXd xc = x;
  xc.rowwise() -= xc.colwise().mean();
  const Eigen::VectorXd tc = target.array() - target.mean();
  Eigen::CompleteOrthogonalDecomposition<Eigen::MatrixXd> cod;
  cod.setThreshold(1e-9);
  cod.compute(xc);
  return cod.solve(tc);
}

/// Residual sum of squares of the probe above, and of the constant predictor (the target mean).
std::pair<double, double> probe_rss(const matrix<double>& x, const vector<double>& target) {
  Eigen::MatrixXd xc = x;
  xc.rowwise() -= xc.colwise().mean();
  const Eigen::VectorXd tc = target.array() - target.mean();
  const Eigen::VectorXd slope = probe_slope(x, target);
  return {(tc - xc * slope).squaredNorm(), tc.squaredNorm()};
}

}  // namespace

TEST_CASE("leace_eraser equalises class means and leaves no linear probe signal",
          "[unlearn][projector]") {
  const std::uint64_t seed = reparam::test::test_seed(26);
  CAPTURE(seed);
  const leace_data data = make_leace_data(seed);
  const reparam::index n = data.x.rows();
  const reparam::index d = data.x.cols();
  const unlearn::leace_eraser eraser = unlearn::leace_eraser::fit(data.x, data.labels, 3);
  CHECK(eraser.dim() == d);
  CHECK(eraser.rank() == 2);  // classes - 1
  matrix<double> erased = data.x;
  eraser.apply_rows(erased, row_range{0, n});

  // Class means equal (to each other and to the overall mean, which is preserved).
  const vector<double> overall = data.x.colwise().mean().transpose();
  double spread_before = 0.0;
  double spread_after = 0.0;
  for (reparam::index c = 0; c < 3; ++c) {
    vector<double> mb = vector<double>::Zero(d);
    vector<double> ma = vector<double>::Zero(d);
    reparam::index count = 0;
    for (reparam::index i = 0; i < n; ++i) {
      if (data.labels[static_cast<std::size_t>(i)] == c) {
        mb += data.x.row(i).transpose();
        ma += erased.row(i).transpose();
        ++count;
      }
    }
    mb /= static_cast<double>(count);
    ma /= static_cast<double>(count);
    spread_before = std::max(spread_before, (mb - overall).cwiseAbs().maxCoeff());
    spread_after = std::max(spread_after, (ma - overall).cwiseAbs().maxCoeff());
  }
  CHECK(spread_before > 0.3);
  CHECK(spread_after <= 1e-12);

  // Least-squares probes for each class indicator: slopes ~0 after, clearly not before.
  for (reparam::index c = 0; c < 3; ++c) {
    CAPTURE(c);
    vector<double> target(n);
    for (reparam::index i = 0; i < n; ++i) {
      target(i) = data.labels[static_cast<std::size_t>(i)] == c ? 1.0 : 0.0;
    }
    CHECK(probe_slope(data.x, target).cwiseAbs().maxCoeff() > 0.05);
    CHECK(probe_slope(erased, target).cwiseAbs().maxCoeff() <= 1e-9);
    const auto before = probe_rss(data.x, target);
    const auto after = probe_rss(erased, target);
    CHECK(before.first < 0.9 * before.second);  // the concept is linearly visible before
    CHECK(after.first == Approx(after.second).epsilon(1e-12));  // no better than the constant
  }

  // The dense form: oblique projector of rank-2 perturbation; r(x) = x P^T + offset^T.
  const matrix<double> p = eraser.dense();
  CHECK(max_abs(p * p - p) <= 1e-12);
  CHECK(numeric_rank(matrix<double>(matrix<double>::Identity(d, d) - p), 1e-9) == 2);
  const vector<double> offset = eraser.offset();
  matrix<double> dense_form = data.x * p.transpose();
  dense_form.rowwise() += offset.transpose();
  CHECK(max_abs(dense_form - erased) <= 1e-12);
  const unlearn::projector_diagnostics diag = eraser.diagnostics();
  CHECK(diag.idempotence <= 1e-10);
  CHECK(diag.orthogonality <= 1e-10);
  CHECK(diag.rank_removed == 2);
  CHECK(diag.symmetry == Approx((p - p.transpose()).norm()).margin(1e-10));
  CHECK(diag.symmetry > 1e-3);  // the correlated covariance makes it oblique

  // float rows, and a constant input (nothing to erase: rank 0).
  matrix<float> xf = data.x.cast<float>();
  eraser.apply_rows(xf, row_range{0, n});
  CHECK(max_abs(xf.cast<double>() - erased) <= 1e-5);
  const unlearn::leace_eraser flat =
      unlearn::leace_eraser::fit(matrix<double>(matrix<double>::Ones(4, 3)), {0, 1, 0, 1}, 2);
  CHECK(flat.rank() == 0);
}

TEST_CASE("leace_eraser refuses bad labels and inputs by name", "[unlearn][projector]") {
  const matrix<double> x = reparam::test::random_matrix<double>(6, 3, 41);
  REQUIRE_THROWS_WITH(unlearn::leace_eraser::fit(x, {0, 1, 2, 0, 1, 3}, 3),
                      Contains("unlearn::leace_eraser::fit") && Contains("labels[5] 3"));
  REQUIRE_THROWS_WITH(unlearn::leace_eraser::fit(x, {0, 1, 0, 0, 1, 0}, 3),
                      Contains("unlearn::leace_eraser::fit") && Contains("class 2 has no sample"));
  REQUIRE_THROWS_WITH(unlearn::leace_eraser::fit(x, {0, 1, 0}, 2),
                      Contains("unlearn::leace_eraser::fit") && Contains("labels has size 3"));
  REQUIRE_THROWS_WITH(unlearn::leace_eraser::fit(matrix<double>(x.topRows(1)), {0}, 2),
                      Contains("unlearn::leace_eraser::fit") && Contains("at least 2"));
  matrix<double> bad = x;
  bad(2, 2) = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(unlearn::leace_eraser::fit(bad, {0, 1, 0, 1, 0, 1}, 2),
                      Contains("unlearn::leace_eraser::fit") && Contains("non-finite"));
  const unlearn::leace_eraser eraser = unlearn::leace_eraser::fit(x, {0, 1, 0, 1, 0, 1}, 2);
  matrix<double> wrong = matrix<double>::Ones(2, 4);
  REQUIRE_THROWS_WITH(eraser.apply_rows(wrong, row_range{0, 2}),
                      Contains("unlearn::leace_eraser::apply_rows") && Contains("x has 4 columns"));
  CHECK(wrong == matrix<double>::Ones(2, 4));
}

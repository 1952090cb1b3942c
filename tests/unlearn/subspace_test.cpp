// SPDX-License-Identifier: Apache-2.0
// unlearn/subspace.hpp against independent oracles: planted subspaces (x = z B + sigma eps)
// recovered with principal angles ~0 (angles checked separately against hand-computed
// geometry), hand-worked energy/top-k selections, the deflated subspace against a planted split,
// the conditioning sweep of the rank policy (zero rows, duplicates, N >= d, kappa up to 1e12,
// all-zero input -> rank 0, not e_1 as MRP's QR gives), and every documented refusal.
#define EIGEN_RUNTIME_NO_MALLOC  // the projector TU forbids Eigen's mallocs; keep the ODR

#include <cmath>
#include <cstdint>
#include <limits>

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/subspace.hpp>

#include "support/random.hpp"

namespace {

using Catch::Matchers::Contains;
using reparam::matrix;
using reparam::vector;
namespace unlearn = reparam::unlearn;

constexpr double eps = std::numeric_limits<double>::epsilon();

/// A k x d matrix with orthonormal rows from Householder QR of a random d x k matrix (an oracle
/// independent of the SVD path under test).
matrix<double> planted_basis(reparam::index d, reparam::index k, std::uint64_t seed) {
  const matrix<double> g = reparam::test::random_matrix<double>(d, k, seed);
  const Eigen::MatrixXd gd = g;
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(gd);
  const Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(d, k);
  return q.transpose();
}

/// max |Q Q^T - I|.
double orthonormality_error(const matrix<double>& q) {
  if (q.rows() == 0) {
    return 0.0;
  }
  return (q * q.transpose() - matrix<double>::Identity(q.rows(), q.rows())).cwiseAbs().maxCoeff();
}

/// Largest distance of a row of `x` from span(q), relative to max row norm of x.
double span_residual(const matrix<double>& x, const matrix<double>& q) {
  const matrix<double> r = x - (x * q.transpose()) * q;
  return r.rowwise().norm().maxCoeff() / x.rowwise().norm().maxCoeff();
}

unlearn::subspace basis_of(const matrix<double>& rows) {
  unlearn::subspace s;
  s.directions = rows;
  return s;
}

}  // namespace

TEST_CASE("principal_angles match hand-computed angles, small ones accurately from the sine form",
          "[unlearn][subspace]") {
  for (const double t : {1e-12, 1e-8, 1e-3, 0.3, 1.2, 1.5707963267948966}) {
    CAPTURE(t);
    matrix<double> a(1, 3);
    a << 1.0, 0.0, 0.0;
    matrix<double> b(1, 3);
    b << std::cos(t), std::sin(t), 0.0;
    const vector<double> angles = unlearn::principal_angles(basis_of(a), basis_of(b));
    REQUIRE(angles.size() == 1);
    // acos near 1 would lose everything below ~1e-8; the sine form keeps relative accuracy.
    CHECK(std::abs(angles(0) - t) <= 1e-14 + 1e-12 * t);
  }
  // 2-D vs 2-D: span{e1, e2} vs span{e1, cos t e2 + sin t e3}: angles {0, t}, increasing.
  const double t = 1e-9;
  matrix<double> a(2, 4);
  a << 1, 0, 0, 0, 0, 1, 0, 0;
  matrix<double> b(2, 4);
  b << 0, std::cos(t), std::sin(t), 0, 1, 0, 0, 0;
  const vector<double> angles = unlearn::principal_angles(basis_of(a), basis_of(b));
  REQUIRE(angles.size() == 2);
  CHECK(std::abs(angles(0)) <= 1e-15);
  CHECK(std::abs(angles(1) - t) <= 1e-20);
  // Different ranks: min(k_a, k_b) angles, symmetric in the arguments.
  matrix<double> c(1, 4);
  c << 0, 0, 0, 1;
  const vector<double> ac = unlearn::principal_angles(basis_of(a), basis_of(c));
  const vector<double> ca = unlearn::principal_angles(basis_of(c), basis_of(a));
  REQUIRE(ac.size() == 1);
  REQUIRE(ca.size() == 1);
  CHECK(std::abs(ac(0) - 1.5707963267948966) <= 1e-15);
  CHECK(ac(0) == ca(0));
  // Rank 0 gives no angle; a dimension mismatch is refused.
  unlearn::subspace empty;
  empty.directions.resize(0, 4);
  CHECK(unlearn::principal_angles(empty, basis_of(a)).size() == 0);
  REQUIRE_THROWS_WITH(
      unlearn::principal_angles(basis_of(a), basis_of(matrix<double>::Zero(1, 3))),
      Contains("unlearn::principal_angles") && Contains("dim 4") && Contains("dim 3"));
}

TEST_CASE("principal_subspace recovers a planted subspace from x = z B + sigma eps",
          "[unlearn][subspace]") {
  const reparam::index d = 24;
  const reparam::index k = 3;
  const reparam::index n = 400;
  const std::uint64_t seed = reparam::test::test_seed(11);
  CAPTURE(seed);
  const matrix<double> planted = planted_basis(d, k, seed);
  const matrix<double> z = 10.0 * reparam::test::random_matrix<double>(n, k, seed + 1);
  const matrix<double> noise = reparam::test::random_matrix<double>(n, d, seed + 2);
  for (const double sigma : {0.0, 1e-3}) {
    CAPTURE(sigma);
    const matrix<double> x = z * planted + sigma * noise;
    unlearn::selection select;
    select.top_k = k;
    const unlearn::subspace got = unlearn::principal_subspace(x, select);
    REQUIRE(got.rank() == k);
    CHECK(got.dim() == d);
    CHECK(orthonormality_error(got.directions) <= 10.0 * k * eps);
    const vector<double> angles = unlearn::principal_angles(got, basis_of(planted));
    REQUIRE(angles.size() == k);
    // sin(angle) ~ sigma / signal (z uniform in (-10, 10): rms ~5.8; noise rms ~0.58 sigma).
    const double bound = sigma == 0.0 ? 1e-12 : 1e-3;
    CHECK(angles.maxCoeff() <= bound);
    CHECK(got.singular_values(0) >= got.singular_values(1));
    CHECK(got.dropped == d - k);
    if (sigma == 0.0) {
      // Noise-free: the rank policy alone finds k (the other singular values are round-off).
      const unlearn::subspace all = unlearn::principal_subspace(x);
      CHECK(all.rank() == k);
      CHECK(all.retained_energy == Approx(1.0));
    }
  }
}

TEST_CASE("principal_subspace selects by top_k and energy as worked by hand",
          "[unlearn][subspace]") {
  // Uncentred rows 3 e1, 2 e2, 1 e3: sigma^2 = 9, 4, 1 (total 14).
  matrix<double> x = matrix<double>::Zero(3, 5);
  x(0, 0) = 3.0;
  x(1, 1) = 2.0;
  x(2, 2) = 1.0;
  unlearn::selection select;
  select.centered = false;
  select.energy = 0.6;  // 9/14 = 0.643 reaches it
  unlearn::subspace s = unlearn::principal_subspace(x, select);
  REQUIRE(s.rank() == 1);
  CHECK(std::abs(std::abs(s.directions(0, 0)) - 1.0) <= 1e-15);
  CHECK(s.retained_energy == Approx(9.0 / 14.0).epsilon(1e-14));
  CHECK(s.singular_values(0) == Approx(3.0).epsilon(1e-14));
  select.energy = 0.9;  // 13/14 = 0.929
  s = unlearn::principal_subspace(x, select);
  CHECK(s.rank() == 2);
  CHECK(s.dropped == 1);
  select.energy = 0.93;  // above 13/14: needs all three
  CHECK(unlearn::principal_subspace(x, select).rank() == 3);
  select.energy = 1.0;
  select.top_k = 2;
  s = unlearn::principal_subspace(x, select);
  CHECK(s.rank() == 2);
  CHECK(s.retained_energy == Approx(13.0 / 14.0).epsilon(1e-14));
  select.top_k = 0;  // allowed: rank 0
  s = unlearn::principal_subspace(x, select);
  CHECK(s.rank() == 0);
  CHECK(s.dim() == 5);
}

TEST_CASE("principal_subspace centres only when asked", "[unlearn][subspace]") {
  // Samples 5 e1 + t_i e2: centred, the only variation is e2; uncentred, e1 dominates.
  matrix<double> x = matrix<double>::Zero(4, 3);
  const double t[4] = {-1.0, 0.5, 1.5, -1.0};
  for (reparam::index i = 0; i < 4; ++i) {
    x(i, 0) = 5.0;
    x(i, 1) = t[i];
  }
  const unlearn::subspace centred = unlearn::principal_subspace(x);
  REQUIRE(centred.rank() == 1);
  CHECK(std::abs(std::abs(centred.directions(0, 1)) - 1.0) <= 1e-14);
  unlearn::selection select;
  select.centered = false;
  select.top_k = 1;
  const unlearn::subspace raw = unlearn::principal_subspace(x, select);
  REQUIRE(raw.rank() == 1);
  CHECK(std::abs(raw.directions(0, 0)) > 0.99);
  // One sample, centred: nothing varies, rank 0 (not an invented direction).
  CHECK(unlearn::principal_subspace(x.topRows(1)).rank() == 0);
}

TEST_CASE("deflated_subspace removes only the directions absent from the retain data",
          "[unlearn][subspace]") {
  const reparam::index d = 8;
  const std::uint64_t seed = reparam::test::test_seed(12);
  CAPTURE(seed);
  // Planted orthonormal e-frame: retain lives in span{b0, b1}; forget in span{b0, b1, b2} with
  // large b0, b1 parts. The deflated subspace must be exactly span{b2} (rank 1: the round-off
  // left of b0, b1 is below the tolerance taken relative to the forget data before deflation).
  const matrix<double> frame = planted_basis(d, 3, seed);
  const matrix<double> zr = reparam::test::random_matrix<double>(50, 2, seed + 1);
  const matrix<double> zf = reparam::test::random_matrix<double>(40, 3, seed + 2);
  const matrix<double> retain = zr * frame.topRows(2);
  matrix<double> scaled = zf;
  scaled.col(0) *= 100.0;
  scaled.col(1) *= 100.0;
  const matrix<double> forget = scaled * frame;
  unlearn::selection all;
  all.centered = false;
  const unlearn::subspace got = unlearn::deflated_subspace(forget, retain, all, all);
  REQUIRE(got.rank() == 1);
  const vector<double> angles = unlearn::principal_angles(got, basis_of(frame.row(2)));
  CHECK(angles(0) <= 1e-12);
  // Orthogonal to the retain span to round-off.
  CHECK((got.directions * frame.topRows(2).transpose()).cwiseAbs().maxCoeff() <= 1e-13);
  // Without deflation the forget data spans all three.
  CHECK(unlearn::principal_subspace(forget, all).rank() == 3);
  // Forget data fully explained by the retain data: nothing left to remove.
  CHECK(unlearn::deflated_subspace(retain, retain, all, all).rank() == 0);
  REQUIRE_THROWS_WITH(
      unlearn::deflated_subspace(forget, matrix<double>(matrix<double>::Ones(3, d + 1)), all, all),
      Contains("unlearn::deflated_subspace") && Contains("forget has 8 columns") &&
          Contains("retain has 9"));
}

TEST_CASE("orthonormal_basis has documented outcomes on degenerate and ill-conditioned input",
          "[unlearn][subspace]") {
  const reparam::index d = 6;
  SECTION("all-zero input gives rank 0, not e_1 (the MRP QR defect)") {
    const unlearn::subspace s =
        unlearn::orthonormal_basis(matrix<double>(matrix<double>::Zero(3, d)));
    CHECK(s.rank() == 0);
    CHECK(s.dim() == d);
    CHECK(s.dropped == 3);
  }
  SECTION("zero rows add nothing") {
    matrix<double> x = matrix<double>::Zero(4, d);
    x.row(1) << 1, 2, 0, 0, 0, 0;
    x.row(3) << 0, 0, 0, 0, 3, 1;
    const unlearn::subspace s = unlearn::orthonormal_basis(x);
    REQUIRE(s.rank() == 2);
    CHECK(span_residual(x, s.directions) <= 10 * eps);
    CHECK(orthonormality_error(s.directions) <= 10 * eps);
    // e_1 is not invented: it is not in span{(1,2,0..), (0,..,3,1)}.
    matrix<double> e1 = matrix<double>::Zero(1, d);
    e1(0, 0) = 1.0;
    CHECK(span_residual(e1, s.directions) > 0.5);
  }
  SECTION("duplicate rows add no rank") {
    matrix<double> x(5, d);
    for (reparam::index i = 0; i < 5; ++i) {
      x.row(i) << 1, -1, 2, 0.5, 0, 3;
    }
    x.row(4) *= -2.0;
    const unlearn::subspace s = unlearn::orthonormal_basis(x);
    CHECK(s.rank() == 1);
    CHECK(span_residual(x, s.directions) <= 10 * eps);
  }
  SECTION("N >= d gives the whole space") {
    const matrix<double> x =
        reparam::test::random_matrix<double>(30, d, reparam::test::test_seed(13));
    const unlearn::subspace s = unlearn::orthonormal_basis(x);
    CHECK(s.rank() == d);
    CHECK((s.directions.transpose() * s.directions - matrix<double>::Identity(d, d))
              .cwiseAbs()
              .maxCoeff() <= 20 * eps);
  }
  SECTION("kappa up to 1e12 keeps every direction, orthonormal; below the tolerance it drops") {
    const std::uint64_t seed = reparam::test::test_seed(14);
    CAPTURE(seed);
    const matrix<double> u = planted_basis(5, 5, seed);
    const matrix<double> v = planted_basis(d, 5, seed + 1);
    vector<double> sigma(5);
    sigma << 1.0, 1e-3, 1e-6, 1e-9, 1e-12;
    const matrix<double> x = u.transpose() * sigma.asDiagonal() * v;  // rows span span(v)
    const unlearn::subspace s = unlearn::orthonormal_basis(x);
    CHECK(s.rank() == 5);
    CHECK(orthonormality_error(s.directions) <= 20 * eps);
    CHECK(span_residual(x, s.directions) <= 100 * eps);
    // The data itself carries the 1e-12 direction only to eps * kappa (x was rounded at scale 1),
    // so the angle to the exact planted span is bounded by that, not by eps.
    CHECK(unlearn::principal_angles(s, basis_of(v)).maxCoeff() <= 10.0 * eps * 1e12);
    CHECK(s.singular_values(4) == Approx(1e-12).epsilon(1e-3));
    // A direction at 1e-17 relative is round-off under the default max(n, d) eps: dropped.
    vector<double> tiny(5);
    tiny << 1.0, 1e-3, 1e-6, 1e-9, 1e-17;
    const unlearn::subspace t =
        unlearn::orthonormal_basis(matrix<double>(u.transpose() * tiny.asDiagonal() * v));
    CHECK(t.rank() == 4);
    CHECK(t.dropped == 1);
    // An explicit relative tolerance of 1e-7 keeps sigma > 1e-7 only: 1, 1e-3, 1e-6.
    unlearn::rank_policy policy;
    policy.relative_tolerance = 1e-7;
    const unlearn::subspace p = unlearn::orthonormal_basis(x, policy);
    CHECK(p.rank() == 3);
    CHECK(p.tolerance_used == Approx(1e-7).epsilon(1e-12));
  }
  SECTION("float input is accumulated in double") {
    matrix<float> x(2, 3);
    x << 1.f, 0.f, 0.f, 1.f, 1e-3f, 0.f;
    const unlearn::subspace s = unlearn::orthonormal_basis(x);
    CHECK(s.rank() == 2);
    CHECK(orthonormality_error(s.directions) <= 10 * eps);
  }
}

TEST_CASE("mean_difference matches hand-computed means and refuses equal means",
          "[unlearn][subspace]") {
  matrix<double> a(2, 2);
  a << 1, 2, 3, 4;
  matrix<float> a_float = a.cast<float>();
  matrix<double> b(2, 2);
  b << 0, 0, 2, 2;
  const unlearn::mean_difference_result r = unlearn::mean_difference(a_float, b);
  CHECK(r.difference(0) == 1.0);
  CHECK(r.difference(1) == 2.0);
  CHECK(r.norm == Approx(std::sqrt(5.0)).epsilon(1e-15));
  CHECK(r.direction(0) == Approx(1.0 / std::sqrt(5.0)).epsilon(1e-15));
  CHECK(r.direction(1) == Approx(2.0 / std::sqrt(5.0)).epsilon(1e-15));
  REQUIRE_THROWS_WITH(unlearn::mean_difference(a, a), Contains("unlearn::mean_difference") &&
                                                          Contains("means of a and b are equal"));
  REQUIRE_THROWS_WITH(
      unlearn::mean_difference(a, matrix<double>(matrix<double>::Ones(2, 3))),
      Contains("unlearn::mean_difference") && Contains("a has 2 columns") && Contains("b has 3"));
  REQUIRE_THROWS_WITH(unlearn::mean_difference(a, matrix<double>(0, 2)),
                      Contains("unlearn::mean_difference") && Contains("b is empty"));
}

TEST_CASE("random_subspace is orthonormal, of rank k, and a pure function of the seed",
          "[unlearn][subspace]") {
  const unlearn::subspace s = unlearn::random_subspace(40, 5, 7);
  CHECK(s.rank() == 5);
  CHECK(s.dim() == 40);
  CHECK(orthonormality_error(s.directions) <= 20 * eps);
  CHECK(unlearn::random_subspace(40, 5, 7).directions == s.directions);
  // Another seed: a different subspace (two random 5-planes in R^40 are far apart).
  CHECK(unlearn::principal_angles(s, unlearn::random_subspace(40, 5, 8)).maxCoeff() > 0.5);
  CHECK(unlearn::random_subspace(40, 0, 7).rank() == 0);
  CHECK(unlearn::random_subspace(3, 3, 7).rank() == 3);
  REQUIRE_THROWS_WITH(unlearn::random_subspace(4, 5, 1),
                      Contains("unlearn::random_subspace") && Contains("k 5"));
  REQUIRE_THROWS_WITH(unlearn::random_subspace(4, -1, 1), Contains("unlearn::random_subspace"));
  REQUIRE_THROWS_WITH(unlearn::random_subspace(0, 0, 1),
                      Contains("unlearn::random_subspace") && Contains("d 0"));
}

TEST_CASE("subspace builders refuse NaN/Inf, empty input and bad selections by name",
          "[unlearn][subspace]") {
  matrix<double> x = matrix<double>::Ones(3, 4);
  x(1, 2) = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(unlearn::orthonormal_basis(x), Contains("unlearn::orthonormal_basis") &&
                                                         Contains("vectors has non-finite") &&
                                                         Contains("(1, 2)"));
  x(1, 2) = std::numeric_limits<double>::infinity();
  REQUIRE_THROWS_WITH(unlearn::principal_subspace(x), Contains("unlearn::principal_subspace") &&
                                                          Contains("samples has non-finite"));
  REQUIRE_THROWS_WITH(unlearn::orthonormal_basis(matrix<double>(0, 4)),
                      Contains("unlearn::orthonormal_basis") && Contains("vectors is empty"));
  REQUIRE_THROWS_WITH(unlearn::orthonormal_basis(matrix<double>(2, 0)),
                      Contains("unlearn::orthonormal_basis") && Contains("(2 x 0)"));
  const matrix<double> ok = matrix<double>::Ones(3, 4);
  unlearn::selection select;
  select.energy = 0.0;
  REQUIRE_THROWS_WITH(unlearn::principal_subspace(ok, select),
                      Contains("unlearn::principal_subspace") && Contains("select.energy 0"));
  select.energy = 1.5;
  REQUIRE_THROWS_WITH(unlearn::principal_subspace(ok, select), Contains("select.energy 1.5"));
  unlearn::rank_policy policy;
  policy.relative_tolerance = 1.0;
  REQUIRE_THROWS_WITH(
      unlearn::orthonormal_basis(ok, policy),
      Contains("unlearn::orthonormal_basis") && Contains("policy.relative_tolerance 1"));
  policy.relative_tolerance = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(unlearn::principal_subspace(ok, {}, policy),
                      Contains("policy.relative_tolerance"));
}

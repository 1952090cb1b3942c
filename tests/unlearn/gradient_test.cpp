// SPDX-License-Identifier: Apache-2.0
// unlearn/gradient.hpp against independent oracles: hand-worked splits (Euclidean and a diagonal
// metric), first-order retain invariance on the unfolded losses (a Taylor bound that a raw,
// unprojected step violates), the trust-region step against the KKT solution of the
// equality-constrained problem [M R^T; R 0] solved directly in double and against many random
// feasible steps, GU's counterexample (one global coefficient keeps g_f, per-block coefficients
// remove it), the joint update against its formula in long double, rank-deficient retain sets
// against a complete-orthogonal-decomposition least-squares residual, and every refusal naming
// the function and the argument.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>
#include <Eigen/LU>
#include <Eigen/QR>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/gradient.hpp>

#include "support/random.hpp"

namespace {

using Catch::Matchers::Contains;
using idx = reparam::index;
using reparam::matrix;
using reparam::vector;
namespace unlearn = reparam::unlearn;

// The refusal's message names the function and the argument. (A macro: Catch 2's combined
// matchers hold their parts by reference, so they cannot be returned from a helper.)
#define REQUIRE_THROWS_NAMING(expr, function, argument) \
  REQUIRE_THROWS_WITH(expr, Contains(function) && Contains(argument))

constexpr double eps = std::numeric_limits<double>::epsilon();
constexpr double qnan = std::numeric_limits<double>::quiet_NaN();
constexpr double inf = std::numeric_limits<double>::infinity();

// A dot product that should be 0 is compared with the sum of the absolute products (the natural
// rounding scale of the dot product). The projection's error is a few p eps of that scale plus the
// basis' orthonormality error (~p eps for the SVD); 1e-12 leaves a margin of ~50 for p <= 64.
constexpr double invariance_tol = 1e-12;

matrix<double> rand_mat(idx rows, idx cols, std::uint64_t salt) {
  return reparam::test::random_matrix<double>(rows, cols, reparam::test::test_seed(salt));
}

vector<double> rand_vec(idx size, std::uint64_t salt) { return rand_mat(size, 1, salt).col(0); }

/// Standard normal entries (Box-Muller on two uniform (0, 1) vectors).
vector<double> gaussian_vec(idx size, std::uint64_t salt) {
  const matrix<double> u =
      reparam::test::random_matrix<double>(size, 2, reparam::test::test_seed(salt), 0.0, 1.0);
  vector<double> out(size);
  for (idx i = 0; i < size; ++i) {
    out(i) = std::sqrt(-2.0 * std::log(u(i, 0))) * std::cos(6.283185307179586 * u(i, 1));
  }
  return out;
}

/// A diagonal metric with entries in [0.05, 4] (the spread of Adam's sqrt(v_hat) + eps).
vector<double> rand_metric(idx size, std::uint64_t salt) {
  return (rand_vec(size, salt).array() * 1.975 + 2.025).matrix();
}

/// |a . b| / sum |a_i b_i| in long double (0 when both are 0).
double relative_dot(const vector<double>& a, const vector<double>& b) {
  long double dot = 0.0L;
  long double scale = 0.0L;
  for (idx i = 0; i < a.size(); ++i) {
    const long double term = static_cast<long double>(a(i)) * static_cast<long double>(b(i));
    dot += term;
    scale += std::fabs(term);
  }
  return scale > 0.0L ? static_cast<double>(std::fabs(dot) / scale) : 0.0;
}

/// Largest relative_dot of a retain row with v.
double max_retain_dot(const matrix<double>& retain, const vector<double>& v) {
  double worst = 0.0;
  for (idx r = 0; r < retain.rows(); ++r) {
    worst = std::max(worst, relative_dot(retain.row(r).transpose(), v));
  }
  return worst;
}

double max_abs_diff(const vector<double>& a, const vector<double>& b) {
  return (a - b).cwiseAbs().maxCoeff();
}

/// Euclidean normal component by an independent route: the residual of the least-squares fit of
/// g by the retain rows, min_c ||R^T c - g||, with a complete orthogonal decomposition (rank
/// revealing, so duplicate and zero rows are fine).
vector<double> lstsq_residual(const matrix<double>& retain, const vector<double>& g) {
  const Eigen::MatrixXd rt = retain.transpose();
  const Eigen::CompleteOrthogonalDecomposition<Eigen::MatrixXd> cod(rt);
  const Eigen::VectorXd c = cod.solve(g);
  return g - rt * c;
}

/// The KKT matrix [M R^T; R 0] of the equality-constrained problem in the step d.
Eigen::MatrixXd kkt_matrix(const matrix<double>& retain, const vector<double>& metric) {
  const idx p = retain.cols();
  const idx m = retain.rows();
  Eigen::MatrixXd k = Eigen::MatrixXd::Zero(p + m, p + m);
  k.topLeftCorner(p, p).diagonal() = metric;
  k.topRightCorner(p, m) = retain.transpose();
  k.bottomLeftCorner(m, p) = retain;
  return k;
}

/// The trust-region maximiser from the KKT conditions of max g^T d s.t. R d = 0, d^T M d = rho^2:
/// g = 2 mu M d + R^T lambda, so u = d / (2 mu) solves [M R^T; R 0] [u; lambda] = [g; 0] and
/// d = rho u / sqrt(u^T M u). Solved with full-pivot LU in double (R must have full row rank).
vector<double> kkt_step(const Eigen::FullPivLU<Eigen::MatrixXd>& lu, const vector<double>& g,
                        const vector<double>& metric, double rho) {
  const idx p = g.size();
  Eigen::VectorXd rhs = Eigen::VectorXd::Zero(lu.rows());
  rhs.head(p) = g;
  const Eigen::VectorXd u = lu.solve(rhs).head(p);
  const double size = std::sqrt(u.dot(metric.asDiagonal() * u));
  return rho * u / size;
}

/// The M-orthogonal projection of v onto {d : R d = 0} from the same KKT system (an independent
/// way to draw feasible directions): [M R^T; R 0] [u; lambda] = [M v; 0].
vector<double> feasible_direction(const Eigen::FullPivLU<Eigen::MatrixXd>& lu,
                                  const vector<double>& v, const vector<double>& metric) {
  const idx p = v.size();
  Eigen::VectorXd rhs = Eigen::VectorXd::Zero(lu.rows());
  rhs.head(p) = metric.asDiagonal() * v;
  return lu.solve(rhs).head(p);
}

/// A smooth loss L(theta) = softplus(a . theta) + (c . theta)^2 / 2 with its gradient and a bound
/// of its Hessian along a direction: d^T H d <= (||a||^2 / 4 + ||c||^2) ||d||^2 everywhere.
struct smooth_loss {
  vector<double> a;
  vector<double> c;

  double value(const vector<double>& theta) const {
    const double s = a.dot(theta);
    const double q = c.dot(theta);
    return std::log1p(std::exp(s)) + 0.5 * q * q;
  }
  vector<double> gradient(const vector<double>& theta) const {
    const double s = a.dot(theta);
    return a / (1.0 + std::exp(-s)) + c.dot(theta) * c;
  }
  double curvature_bound(const vector<double>& d) const {
    return (0.25 * a.squaredNorm() + c.squaredNorm()) * d.squaredNorm();
  }
};

/// True if every retain loss changes by at most its second-order Taylor bound along t d (plus
/// rounding of the loss values), i.e. the first-order term is 0.
bool retain_change_is_second_order(const std::vector<smooth_loss>& losses,
                                   const vector<double>& theta, const vector<double>& d, double t) {
  for (const smooth_loss& loss : losses) {
    const vector<double> moved = theta + t * d;
    const double change = std::fabs(loss.value(moved) - loss.value(theta));
    const double bound = 0.5 * t * t * loss.curvature_bound(d) * (1.0 + 1e-6) +
                         256.0 * eps * (std::fabs(loss.value(theta)) + 1.0);
    if (change > bound) {
      return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("project_forget_gradient and trust_region_step match hand-worked splits",
          "[unlearn][gradient]") {
  SECTION("Euclidean") {
    // R = [e1], g_f = (3, 4, 0): normal (0, 4, 0), tangential (3, 0, 0), ratio 4/5.
    matrix<double> retain(1, 3);
    retain << 1.0, 0.0, 0.0;
    vector<double> forget(3);
    forget << 3.0, 4.0, 0.0;
    const unlearn::gradient_projection s = unlearn::project_forget_gradient(forget, retain);
    CHECK(s.normal(0) == Approx(0.0).margin(1e-15));
    CHECK(s.normal(1) == Approx(4.0).epsilon(1e-15));
    CHECK(s.normal(2) == Approx(0.0).margin(1e-15));
    CHECK(s.tangential(0) == Approx(3.0).epsilon(1e-15));
    CHECK(s.tangential(1) == Approx(0.0).margin(1e-15));
    CHECK(s.preserved_ratio == Approx(0.8).epsilon(1e-15));
    CHECK(s.retain_rank == 1);
    CHECK(s.dropped == 0);
    CHECK(s.metric.size() == 0);
    const vector<double> up = unlearn::trust_region_step(s, 2.0);
    const vector<double> down = unlearn::trust_region_step(s, 2.0, false);
    CHECK(up(0) == Approx(0.0).margin(1e-15));
    CHECK(up(1) == Approx(2.0).epsilon(1e-15));
    CHECK(up(2) == Approx(0.0).margin(1e-15));
    CHECK(down(1) == Approx(-2.0).epsilon(1e-15));
  }
  SECTION("diagonal metric") {
    // m = (4, 1, 1), R = [(1, 1, 0)], g_f = (2, 0, 1). Whitened: z_f = (1, 0, 1),
    // z_r = (1/2, 1, 0); Q^T Q z_f = z_r (z_r . z_f) / ||z_r||^2 = (1/2, 1, 0) * 0.4 = (0.2, 0.4,
    // 0); P_perp z_f = (0.8, -0.4, 1), ||.||^2 = 1.8; normal = sqrt(m) (0.8, -0.4, 1) = (1.6, -0.4,
    // 1), tangential = (0.4, 0.4, 0); step = rho M^{-1/2} (0.8, -0.4, 1) / sqrt(1.8) = rho (0.4,
    // -0.4, 1) / sqrt(1.8), so R d = 0 and d^T M d = rho^2 (0.64 + 0.16 + 1) / 1.8.
    matrix<double> retain(1, 3);
    retain << 1.0, 1.0, 0.0;
    vector<double> forget(3);
    forget << 2.0, 0.0, 1.0;
    vector<double> metric(3);
    metric << 4.0, 1.0, 1.0;
    const unlearn::gradient_projection s = unlearn::project_forget_gradient(forget, retain, metric);
    const double tol = 1e-15;
    CHECK(s.normal(0) == Approx(1.6).epsilon(tol));
    CHECK(s.normal(1) == Approx(-0.4).epsilon(tol));
    CHECK(s.normal(2) == Approx(1.0).epsilon(tol));
    CHECK(s.tangential(0) == Approx(0.4).epsilon(tol));
    CHECK(s.tangential(1) == Approx(0.4).epsilon(tol));
    CHECK(s.tangential(2) == Approx(0.0).margin(tol));
    CHECK(s.preserved_ratio == Approx(std::sqrt(1.8 / 2.0)).epsilon(tol));
    CHECK(s.metric == metric);
    const double rho = 0.5;
    const vector<double> d = unlearn::trust_region_step(s, rho);
    const double n = std::sqrt(1.8);
    CHECK(d(0) == Approx(rho * 0.4 / n).epsilon(tol));
    CHECK(d(1) == Approx(-rho * 0.4 / n).epsilon(tol));
    CHECK(d(2) == Approx(rho * 1.0 / n).epsilon(tol));
  }
}

TEST_CASE("the normal part and the trust-region step are first-order retain invariant",
          "[unlearn][gradient]") {
  CAPTURE(Catch::rngSeed());
  std::uint64_t salt = 100;
  for (const idx p : {8, 20, 64}) {
    for (const idx m : {1, 3, 7}) {
      for (const bool use_metric : {false, true}) {
        CAPTURE(p, m, use_metric);
        const matrix<double> retain = rand_mat(m, p, ++salt);
        const vector<double> forget = rand_vec(p, ++salt);
        const vector<double> metric = use_metric ? rand_metric(p, ++salt) : vector<double>();
        const unlearn::gradient_projection s =
            unlearn::project_forget_gradient(forget, retain, metric);
        REQUIRE(s.retain_rank == std::min(m, p));
        REQUIRE(s.dropped == m - s.retain_rank);
        // normal + tangential == g_f up to rounding
        CHECK(max_abs_diff(s.normal + s.tangential, forget) <= 16.0 * eps * forget.norm());
        const vector<double> d = unlearn::trust_region_step(s, 0.7);
        CHECK(max_retain_dot(retain, d) <= invariance_tol);
        const vector<double> root =
            use_metric ? vector<double>(metric.cwiseSqrt()) : vector<double>::Ones(p);
        // d^T M d = rho^2
        CHECK(d.cwiseProduct(root).norm() == Approx(0.7).epsilon(1e-14));
        // the optimizer's step M^{-1} normal is invariant; Euclidean: normal itself
        const vector<double> preconditioned = s.normal.cwiseQuotient(root).cwiseQuotient(root);
        CHECK(max_retain_dot(retain, preconditioned) <= invariance_tol);
        // the ascent direction raises the forget loss by rho ||P_perp z_f||
        const double rise = forget.dot(d);
        const double whitened_forget = forget.cwiseQuotient(root).norm();
        CHECK(rise == Approx(0.7 * s.preserved_ratio * whitened_forget).epsilon(1e-12));
        if (!use_metric) {
          // the normal part matches the least-squares residual of g_f by the retain rows
          CHECK(max_abs_diff(s.normal, lstsq_residual(retain, forget)) <= 1e-13);
        }
      }
    }
  }
}

TEST_CASE("retain losses change only at second order along the step, unlike a raw step",
          "[unlearn][gradient]") {
  CAPTURE(Catch::rngSeed());
  // The unfolded losses: retain losses L_i and a forget loss of the smooth_loss form at theta0;
  // their gradients feed the projection, and the step is checked on the losses themselves.
  const idx p = 24;
  const idx m = 5;
  std::uint64_t salt = 300;
  const vector<double> theta = rand_vec(p, ++salt);
  std::vector<smooth_loss> retain_losses;
  matrix<double> retain(m, p);
  for (idx i = 0; i < m; ++i) {
    retain_losses.push_back({rand_vec(p, ++salt), rand_vec(p, ++salt)});
    retain.row(i) = retain_losses.back().gradient(theta).transpose();
  }
  const smooth_loss forget_loss{rand_vec(p, ++salt), rand_vec(p, ++salt)};
  const vector<double> forget = forget_loss.gradient(theta);
  for (const bool use_metric : {false, true}) {
    CAPTURE(use_metric);
    const vector<double> metric = use_metric ? rand_metric(p, ++salt) : vector<double>();
    const unlearn::gradient_projection s = unlearn::project_forget_gradient(forget, retain, metric);
    const vector<double> d = unlearn::trust_region_step(s, 1.0);
    const vector<double> raw = forget / forget.norm();
    for (const double t : {1e-2, 1e-3, 1e-4}) {
      CAPTURE(t);
      CHECK(retain_change_is_second_order(retain_losses, theta, d, t));
      // the control: the raw forget direction changes the retain losses at first order
      CHECK_FALSE(retain_change_is_second_order(retain_losses, theta, raw, t));
      // the forget loss rises at first order: L_f(theta + t d) - L_f(theta) >= t g_f.d - t^2 K / 2
      const double rise = forget_loss.value(theta + t * d) - forget_loss.value(theta);
      CHECK(forget.dot(d) > 0.0);
      CHECK(rise >= t * forget.dot(d) - 0.5 * t * t * forget_loss.curvature_bound(d) -
                        64.0 * eps * std::fabs(forget_loss.value(theta)));
    }
  }
}

TEST_CASE("trust_region_step is the KKT solution and beats every random feasible step",
          "[unlearn][gradient]") {
  CAPTURE(Catch::rngSeed());
  std::uint64_t salt = 500;
  for (const bool use_metric : {false, true}) {
    for (const idx p : {6, 30}) {
      const idx m = p / 3;
      CAPTURE(use_metric, p, m);
      const matrix<double> retain = rand_mat(m, p, ++salt);
      const vector<double> forget = rand_vec(p, ++salt);
      const vector<double> metric = use_metric ? rand_metric(p, ++salt) : vector<double>::Ones(p);
      const double rho = 1.3;
      const unlearn::gradient_projection s =
          unlearn::project_forget_gradient(forget, retain, use_metric ? metric : vector<double>());
      const vector<double> d = unlearn::trust_region_step(s, rho);
      const Eigen::FullPivLU<Eigen::MatrixXd> lu(kkt_matrix(retain, metric));
      REQUIRE(lu.rank() == p + m);
      const vector<double> oracle = kkt_step(lu, forget, metric, rho);
      CHECK(max_abs_diff(d, oracle) <= 1e-12 * rho);
      const vector<double> descent = unlearn::trust_region_step(s, rho, false);
      CHECK(max_abs_diff(descent, -oracle) <= 1e-12 * rho);

      const double best = forget.dot(d);
      double sampled_best = -inf;
      double sampled_worst = inf;
      for (int trial = 0; trial < 2000; ++trial) {
        // isotropic on the feasible M-sphere: v = M^{-1/2} xi with xi standard normal
        const vector<double> v = gaussian_vec(p, ++salt).cwiseQuotient(metric.cwiseSqrt());
        const vector<double> u = feasible_direction(lu, v, metric);
        const double size = std::sqrt(u.dot(metric.asDiagonal() * u));
        if (size == 0.0) {
          continue;
        }
        const vector<double> feasible = rho * u / size;  // R d = 0, d^T M d = rho^2
        const double value = forget.dot(feasible);
        sampled_best = std::max(sampled_best, value);
        sampled_worst = std::min(sampled_worst, value);
      }
      CAPTURE(best, sampled_best, sampled_worst);
      CHECK(sampled_best <= best * (1.0 + 1e-12));
      CHECK(sampled_worst >= forget.dot(descent) * (1.0 + 1e-12));
      if (p == 6) {
        // a 4-dimensional feasible sphere sampled isotropically: a sample within 0.95 of the
        // optimum has probability ~0.0067, so 2000 samples find one (miss rate ~e^-13) and the
        // comparison above is not vacuous
        CHECK(sampled_best >= 0.95 * best);
      }
    }
  }
}

TEST_CASE("one global coefficient keeps an orthogonal forget gradient, per-block ones erase it",
          "[unlearn][gradient]") {
  // GU's counterexample: g_f = (1, 0 | 0, 1), g_r = (1, 0 | 0, -1). Globally <g_f, g_r> = 0, so
  // c = 0 and g_f is kept whole; block by block, g_f is parallel to g_r in each block (c = 1, then
  // c = -1) and nothing is left.
  vector<double> forget(4);
  forget << 1.0, 0.0, 0.0, 1.0;
  vector<double> retain(4);
  retain << 1.0, 0.0, 0.0, -1.0;
  const vector<double> global = unlearn::joint_update(forget, retain, 1.0, 0.0);
  CHECK(global == forget);
  vector<double> blockwise(4);
  for (idx block = 0; block < 2; ++block) {
    const vector<double> f = forget.segment(2 * block, 2);
    const vector<double> r = retain.segment(2 * block, 2);
    blockwise.segment(2 * block, 2) = unlearn::joint_update(f, r, 1.0, 0.0);
  }
  CHECK(blockwise == vector<double>::Zero(4));
  // with the retain-descent term: gamma g_f + alpha g_r globally
  const vector<double> joint = unlearn::joint_update(forget, retain, 2.0, 0.5);
  CHECK(joint == 2.0 * forget + 0.5 * retain);

  // The same through the projection: one retain row over the concatenation keeps everything, one
  // per block leaves no retain-invariant step.
  const matrix<double> retain_row = retain.transpose();
  const unlearn::gradient_projection whole = unlearn::project_forget_gradient(forget, retain_row);
  CHECK(whole.preserved_ratio == Approx(1.0).epsilon(1e-15));
  CHECK(max_abs_diff(whole.normal, forget) <= 1e-15);
  for (idx block = 0; block < 2; ++block) {
    const vector<double> f = forget.segment(2 * block, 2);
    const matrix<double> r = retain.segment(2 * block, 2).transpose();
    const unlearn::gradient_projection part = unlearn::project_forget_gradient(f, r);
    CHECK(part.preserved_ratio <= 4.0 * eps);
    REQUIRE_THROWS_NAMING(unlearn::trust_region_step(part, 1.0), "unlearn::trust_region_step",
                          "preserved_ratio");
  }
}

TEST_CASE("joint_update matches its formula and is invariant to the scale of the retain gradient",
          "[unlearn][gradient]") {
  CAPTURE(Catch::rngSeed());
  std::uint64_t salt = 700;
  for (const idx p : {1, 7, 100}) {
    CAPTURE(p);
    const vector<double> forget = rand_vec(p, ++salt);
    const vector<double> retain = rand_vec(p, ++salt);
    const double gamma = 1.7;
    const double alpha = -0.3;
    // formula in long double (plain loops: g++ 12 warns falsely on Eigen's long double
    // reductions with -Wnull-dereference)
    long double fr = 0.0L;
    long double rr = 0.0L;
    for (idx i = 0; i < p; ++i) {
      fr += static_cast<long double>(forget(i)) * static_cast<long double>(retain(i));
      rr += static_cast<long double>(retain(i)) * static_cast<long double>(retain(i));
    }
    const long double c = fr / rr;
    vector<double> expected(p);
    for (idx i = 0; i < p; ++i) {
      const long double fi = forget(i);
      const long double ri = retain(i);
      expected(i) = static_cast<double>(static_cast<long double>(gamma) * (fi - c * ri) +
                                        static_cast<long double>(alpha) * ri);
    }
    const vector<double> out = unlearn::joint_update(forget, retain, gamma, alpha);
    const double scale = forget.norm() + retain.norm();
    CHECK(max_abs_diff(out, expected) <= 8.0 * static_cast<double>(p) * eps * scale);
    // the forget part is orthogonal to the whole retain gradient
    const vector<double> forget_part = unlearn::joint_update(forget, retain, 1.0, 0.0);
    if (p == 1) {
      CHECK(std::fabs(forget_part(0)) <= eps * std::fabs(forget(0)));  // parallel: nothing left
    } else {
      CHECK(relative_dot(forget_part, retain) <= 1e-13);
    }
    // tiny retain gradients (||g_r||^2 underflows) give the same forget part: c g_r depends only
    // on the direction of g_r (an absolute floor such as max(||g_r||^2, 1e-12) would not)
    for (const double tiny : {1e-6, 1e-170, 1e-300}) {
      CAPTURE(tiny);
      const vector<double> small = retain * tiny;
      const vector<double> part = unlearn::joint_update(forget, small, 1.0, 0.0);
      CHECK(max_abs_diff(part, forget_part) <= 16.0 * static_cast<double>(p) * eps * scale);
    }
  }
  // a zero retain gradient: c = 0, the forget gradient is kept whole
  const vector<double> forget = rand_vec(9, ++salt);
  const vector<double> zero = vector<double>::Zero(9);
  CHECK(unlearn::joint_update(forget, zero, 2.0, 5.0) == 2.0 * forget);
}

TEST_CASE("rank-deficient retain sets follow the rank policy and refuse an empty normal space",
          "[unlearn][gradient]") {
  CAPTURE(Catch::rngSeed());
  std::uint64_t salt = 900;
  const idx p = 12;
  const vector<double> forget = rand_vec(p, ++salt);

  SECTION("duplicate and zero rows add no rank") {
    const matrix<double> base = rand_mat(3, p, ++salt);
    matrix<double> retain(7, p);
    retain << base.row(0), base.row(1), matrix<double>::Zero(1, p), base.row(0), base.row(2),
        base.row(1) * -2.0, matrix<double>::Zero(1, p);
    for (const bool use_metric : {false, true}) {
      CAPTURE(use_metric);
      const vector<double> metric = use_metric ? rand_metric(p, ++salt) : vector<double>();
      const unlearn::gradient_projection s =
          unlearn::project_forget_gradient(forget, retain, metric);
      CHECK(s.retain_rank == 3);
      CHECK(s.dropped == 4);
      const vector<double> root =
          use_metric ? vector<double>(metric.cwiseSqrt()) : vector<double>::Ones(p);
      // oracle: least-squares residual in whitened coordinates, mapped back
      const matrix<double> whitened =
          (retain.array().rowwise() / root.transpose().array()).matrix();
      const vector<double> oracle =
          lstsq_residual(whitened, forget.cwiseQuotient(root)).cwiseProduct(root);
      CHECK(max_abs_diff(s.normal, oracle) <= 1e-13);
      const vector<double> d = unlearn::trust_region_step(s, 1.0);
      CHECK(max_retain_dot(retain, d) <= invariance_tol);
    }
  }
  SECTION("m >= p spans everything: the normal component is zero and the step is refused") {
    for (const idx m : {p, p + 5}) {
      CAPTURE(m);
      const matrix<double> retain = rand_mat(m, p, ++salt);
      const unlearn::gradient_projection s = unlearn::project_forget_gradient(forget, retain);
      CHECK(s.retain_rank == p);
      CHECK(s.dropped == m - p);
      CHECK(s.preserved_ratio <= 64.0 * eps);
      CHECK(s.normal.norm() <= 64.0 * eps * forget.norm());
      REQUIRE_THROWS_WITH(unlearn::trust_region_step(s, 1.0),
                          Contains("unlearn::trust_region_step") && Contains("preserved_ratio"));
    }
  }
  SECTION("a forget gradient inside the retain span is refused") {
    const matrix<double> retain = rand_mat(4, p, ++salt);
    const vector<double> inside = retain.transpose() * rand_vec(4, ++salt);
    const unlearn::gradient_projection s = unlearn::project_forget_gradient(inside, retain);
    CHECK(s.preserved_ratio <= 64.0 * eps);
    REQUIRE_THROWS_NAMING(unlearn::trust_region_step(s, 1.0), "unlearn::trust_region_step",
                          "preserved_ratio");
  }
  SECTION("a forget gradient almost inside the retain span still gives an invariant step") {
    // g_f = R^T c + 1e-7 w_perp: the normal part is 1e-7 of g_f, so one projection pass would
    // leave a rounding error of ~eps ||g_f|| = ~1e-9 of the normal part in it; the second pass
    // brings the step back to invariance at ~eps.
    const idx m = 4;
    const matrix<double> retain = rand_mat(m, p, ++salt);
    const vector<double> w = lstsq_residual(retain, rand_vec(p, ++salt));
    const double small = 1e-7;
    const vector<double> inside = retain.transpose() * rand_vec(m, ++salt);
    const vector<double> g = inside + small * w;
    const unlearn::gradient_projection s = unlearn::project_forget_gradient(g, retain);
    CHECK(s.preserved_ratio == Approx(small * w.norm() / g.norm()).epsilon(1e-6));
    const vector<double> d = unlearn::trust_region_step(s, 1.0);
    CHECK(max_retain_dot(retain, d) <= invariance_tol);
  }
  SECTION("no retain rows, all-zero retain rows: the forget gradient is kept whole") {
    for (const idx m : {0, 3}) {
      CAPTURE(m);
      const matrix<double> retain = matrix<double>::Zero(m, p);
      const unlearn::gradient_projection s = unlearn::project_forget_gradient(forget, retain);
      CHECK(s.retain_rank == 0);
      CHECK(s.dropped == m);
      CHECK(s.normal == forget);
      CHECK(s.tangential == vector<double>::Zero(p));
      CHECK(s.preserved_ratio == 1.0);
      const vector<double> d = unlearn::trust_region_step(s, 3.0);
      CHECK(max_abs_diff(d, 3.0 * forget / forget.norm()) <= 4.0 * eps);
    }
    // an empty 0 x 0 matrix is the same as no rows
    const unlearn::gradient_projection s =
        unlearn::project_forget_gradient(forget, matrix<double>());
    CHECK(s.normal == forget);
  }
  SECTION("a zero forget gradient has preserved_ratio 0 and no step") {
    const unlearn::gradient_projection s =
        unlearn::project_forget_gradient(vector<double>::Zero(p), rand_mat(2, p, ++salt));
    CHECK(s.preserved_ratio == 0.0);
    CHECK(s.normal == vector<double>::Zero(p));
    REQUIRE_THROWS_NAMING(unlearn::trust_region_step(s, 1.0), "unlearn::trust_region_step",
                          "preserved_ratio 0");
  }
  SECTION("the rank policy decides what counts as a retain direction") {
    // rows e_0 and 1e-6 e_1: the default tolerance keeps both, a relative 1e-3 drops the second,
    // whose component then stays in the normal part.
    matrix<double> retain = matrix<double>::Zero(2, p);
    retain(0, 0) = 1.0;
    retain(1, 1) = 1e-6;
    const unlearn::gradient_projection all = unlearn::project_forget_gradient(forget, retain);
    CHECK(all.retain_rank == 2);
    CHECK(std::fabs(all.normal(1)) <= 1e-15);
    unlearn::rank_policy loose;
    loose.relative_tolerance = 1e-3;
    const unlearn::gradient_projection some =
        unlearn::project_forget_gradient(forget, retain, vector<double>(), loose);
    CHECK(some.retain_rank == 1);
    CHECK(some.dropped == 1);
    vector<double> expected = forget;
    expected(0) = 0.0;
    CHECK(max_abs_diff(some.normal, expected) <= 1e-15);
  }
}

TEST_CASE("bad inputs are refused with messages naming the function and the argument",
          "[unlearn][gradient]") {
  const idx p = 4;
  vector<double> forget(p);
  forget << 1.0, -2.0, 0.5, 3.0;
  matrix<double> retain(2, p);
  retain << 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0;
  const vector<double> metric = vector<double>::Constant(p, 2.0);
  const auto project = [](const vector<double>& f, const matrix<double>& r,
                          const vector<double>& mt = vector<double>(),
                          unlearn::rank_policy pol = {}) {
    return unlearn::project_forget_gradient(f, r, mt, pol);
  };

  SECTION("project_forget_gradient") {
    REQUIRE_THROWS_NAMING(project(vector<double>(), retain), "unlearn::project_forget_gradient",
                          "forget is empty");
    REQUIRE_THROWS_NAMING(project(forget, matrix<double>::Zero(2, p + 1)),
                          "unlearn::project_forget_gradient", "retain has 5");
    REQUIRE_THROWS_NAMING(project(forget, matrix<double>::Zero(0, p + 1)),
                          "unlearn::project_forget_gradient", "retain has 5");
    vector<double> bad = forget;
    bad(2) = qnan;
    REQUIRE_THROWS_NAMING(project(bad, retain), "unlearn::project_forget_gradient",
                          "forget has non-finite");
    bad(2) = inf;
    REQUIRE_THROWS_NAMING(project(bad, retain), "unlearn::project_forget_gradient",
                          "forget has non-finite");
    matrix<double> bad_retain = retain;
    bad_retain(1, 3) = -inf;
    REQUIRE_THROWS_NAMING(project(forget, bad_retain), "unlearn::project_forget_gradient",
                          "retain has non-finite");
    bad_retain(1, 3) = qnan;
    REQUIRE_THROWS_NAMING(project(forget, bad_retain), "unlearn::project_forget_gradient",
                          "(1, 3)");
    REQUIRE_THROWS_NAMING(project(forget, retain, vector<double>::Ones(p - 1)),
                          "unlearn::project_forget_gradient", "metric has size 3");
    for (const double value : {0.0, -1.0, qnan, inf}) {
      CAPTURE(value);
      vector<double> bad_metric = metric;
      bad_metric(1) = value;
      REQUIRE_THROWS_NAMING(project(forget, retain, bad_metric), "unlearn::project_forget_gradient",
                            "metric[1]");
    }
    // whitening that overflows: forget / sqrt(1e-320)
    vector<double> tiny_metric = metric;
    tiny_metric(3) = 1e-320;
    vector<double> huge = forget;
    huge(3) = 1e300;
    REQUIRE_THROWS_NAMING(project(huge, retain, tiny_metric), "unlearn::project_forget_gradient",
                          "overflows");
    unlearn::rank_policy bad_policy;
    bad_policy.relative_tolerance = 1.0;
    REQUIRE_THROWS_NAMING(project(forget, retain, vector<double>(), bad_policy),
                          "unlearn::project_forget_gradient", "policy.relative_tolerance");
    bad_policy.relative_tolerance = qnan;
    REQUIRE_THROWS_NAMING(project(forget, retain, vector<double>(), bad_policy),
                          "unlearn::project_forget_gradient", "policy.relative_tolerance");
  }
  SECTION("trust_region_step") {
    const unlearn::gradient_projection good = project(forget, retain, metric);
    for (const double rho : {0.0, -1.0, qnan, inf}) {
      CAPTURE(rho);
      REQUIRE_THROWS_WITH(unlearn::trust_region_step(good, rho),
                          Contains("unlearn::trust_region_step") && Contains("rho"));
    }
    REQUIRE_THROWS_WITH(
        unlearn::trust_region_step(unlearn::gradient_projection{}, 1.0),
        Contains("unlearn::trust_region_step") && Contains("split.normal is empty"));
    unlearn::gradient_projection bad = good;
    bad.normal(0) = qnan;
    REQUIRE_THROWS_NAMING(unlearn::trust_region_step(bad, 1.0), "unlearn::trust_region_step",
                          "split.normal");
    bad = good;
    bad.metric = vector<double>::Ones(p + 2);
    REQUIRE_THROWS_NAMING(unlearn::trust_region_step(bad, 1.0), "unlearn::trust_region_step",
                          "split.metric has size");
    bad.metric = metric;
    bad.metric(0) = -2.0;
    REQUIRE_THROWS_NAMING(unlearn::trust_region_step(bad, 1.0), "unlearn::trust_region_step",
                          "split.metric[0]");
    bad = good;
    bad.preserved_ratio = qnan;
    REQUIRE_THROWS_NAMING(unlearn::trust_region_step(bad, 1.0), "unlearn::trust_region_step",
                          "split.preserved_ratio");
    bad = good;
    bad.normal.setZero();  // inconsistent with preserved_ratio > 0
    REQUIRE_THROWS_NAMING(unlearn::trust_region_step(bad, 1.0), "unlearn::trust_region_step",
                          "whitened norm 0");
  }
  SECTION("joint_update") {
    const vector<double> r = retain.row(0).transpose();
    REQUIRE_THROWS_NAMING(unlearn::joint_update(vector<double>(), vector<double>(), 1.0, 1.0),
                          "unlearn::joint_update", "forget is empty");
    REQUIRE_THROWS_NAMING(unlearn::joint_update(forget, vector<double>::Ones(p + 1), 1.0, 1.0),
                          "unlearn::joint_update", "retain has size 5");
    vector<double> bad = forget;
    bad(0) = qnan;
    REQUIRE_THROWS_NAMING(unlearn::joint_update(bad, r, 1.0, 1.0), "unlearn::joint_update",
                          "forget has non-finite");
    REQUIRE_THROWS_NAMING(unlearn::joint_update(forget, bad, 1.0, 1.0), "unlearn::joint_update",
                          "retain has non-finite");
    REQUIRE_THROWS_NAMING(unlearn::joint_update(forget, r, inf, 1.0), "unlearn::joint_update",
                          "gamma");
    REQUIRE_THROWS_NAMING(unlearn::joint_update(forget, r, 1.0, qnan), "unlearn::joint_update",
                          "alpha");
    vector<double> huge = forget;
    huge(1) = 1e308;
    REQUIRE_THROWS_NAMING(unlearn::joint_update(huge, r, 10.0, 0.0), "unlearn::joint_update",
                          "overflows");
  }
}

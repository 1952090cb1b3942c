// SPDX-License-Identifier: Apache-2.0
// Definitions of reparam/unlearn/gradient.hpp (included at its end; self-contained on its own
// too): GU's split of a forget gradient in a diagonal metric, its trust-region step and the joint
// update with one global coefficient. Everything is computed in double.
#ifndef REPARAM_UNLEARN_DETAIL_GRADIENT_IMPL_HPP
#define REPARAM_UNLEARN_DETAIL_GRADIENT_IMPL_HPP

#include <cmath>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/gradient.hpp>  // the declarations (this file is included at its end)
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {
namespace detail {

/// Checks a diagonal metric for `size` entries: empty (Euclidean) or `size` finite entries > 0.
inline void check_metric(const char* function, const char* argument, const vector<double>& metric,
                         index size) {
  reparam::detail::check(metric.size() == 0 || metric.size() == size, function, argument,
                         " has size ", metric.size(), " but the gradient has ", size,
                         " entries (pass an empty metric for the Euclidean one)");
  for (index i = 0; i < metric.size(); ++i) {
    reparam::detail::check(std::isfinite(metric(i)) && metric(i) > 0.0, function, argument, "[", i,
                           "] ", metric(i), " must be finite and > 0");
  }
}

/// sqrt(metric) per entry, or ones for the Euclidean (empty) metric.
inline vector<double> metric_root(const vector<double>& metric, index size) {
  if (metric.size() == 0) {
    return vector<double>::Ones(size);
  }
  return metric.cwiseSqrt();
}

/// Throws naming the first entry of a computed vector that overflowed (inputs were finite).
inline void check_no_overflow(const char* function, const char* what, const vector<double>& v) {
  for (index i = 0; i < v.size(); ++i) {
    reparam::detail::check(std::isfinite(v(i)), function, what, " overflows at ", i, " (", v(i),
                           ")");
  }
}

}  // namespace detail

inline gradient_projection project_forget_gradient(const vector<double>& forget,
                                                   const matrix<double>& retain,
                                                   const vector<double>& metric,
                                                   rank_policy policy) {
  constexpr const char* fn = "unlearn::project_forget_gradient";
  const index p = forget.size();
  const index m = retain.rows();
  reparam::detail::check(p > 0, fn, "forget is empty (the gradient has no entries)");
  reparam::detail::check_finite(fn, "forget", forget.data(), p);
  if (m > 0) {
    reparam::detail::check(retain.cols() == p, fn, "retain has ", retain.cols(),
                           " columns but forget has ", p, " entries");
    detail::check_samples(fn, "retain", retain);
  } else {
    reparam::detail::check(retain.cols() == 0 || retain.cols() == p, fn, "retain has ",
                           retain.cols(), " columns but forget has ", p, " entries");
  }
  detail::check_metric(fn, "metric", metric, p);
  detail::check_policy(fn, policy);

  // Whitened coordinates z = g / sqrt(m) (exact copies for the Euclidean metric).
  const vector<double> root = detail::metric_root(metric, p);
  const vector<double> z_f = forget.cwiseQuotient(root);
  detail::check_no_overflow(fn, "forget / sqrt(metric)", z_f);

  gradient_projection out;
  out.metric = metric;
  vector<double> normal_z = z_f;
  vector<double> tangential_z = vector<double>::Zero(p);
  if (m > 0) {
    const matrix<double> z_r = (retain.array().rowwise() / root.transpose().array()).matrix();
    for (index r = 0; r < m; ++r) {
      for (index c = 0; c < p; ++c) {
        reparam::detail::check(std::isfinite(z_r(r, c)), fn, "retain / sqrt(metric) overflows at (",
                               r, ", ", c, ")");
      }
    }
    const subspace basis = orthonormal_basis(z_r, policy);
    const matrix<double>& q = basis.directions;  // [k, p]
    out.retain_rank = basis.rank();
    out.dropped = m - basis.rank();
    if (basis.rank() > 0) {
      // Two passes: the second removes what the first left by rounding, so the normal component
      // is orthogonal to span Q to ~eps relative to itself, not to ||z_f|| (re-orthogonalised
      // Gram-Schmidt's "twice is enough").
      for (int pass = 0; pass < 2; ++pass) {
        const vector<double> coefficients = q * normal_z;  // [k]
        const vector<double> along = q.transpose() * coefficients;
        normal_z -= along;
        tangential_z += along;
      }
    }
  }
  const double forget_norm = z_f.stableNorm();
  out.preserved_ratio = forget_norm > 0.0 ? normal_z.stableNorm() / forget_norm : 0.0;
  out.normal = normal_z.cwiseProduct(root);
  out.tangential = tangential_z.cwiseProduct(root);
  return out;
}

inline vector<double> trust_region_step(const gradient_projection& split, double rho, bool ascend) {
  constexpr const char* fn = "unlearn::trust_region_step";
  reparam::detail::check(std::isfinite(rho) && rho > 0.0, fn, "rho ", rho,
                         " must be finite and > 0");
  const index p = split.normal.size();
  reparam::detail::check(p > 0, fn,
                         "split.normal is empty (pass the result of project_forget_gradient)");
  reparam::detail::check_finite(fn, "split.normal", split.normal.data(), p);
  detail::check_metric(fn, "split.metric", split.metric, p);
  reparam::detail::check(std::isfinite(split.preserved_ratio) && split.preserved_ratio >= 0.0, fn,
                         "split.preserved_ratio ", split.preserved_ratio,
                         " must be finite and >= 0");
  reparam::detail::check(split.preserved_ratio > min_preserved_ratio, fn,
                         "the normal component is zero: preserved_ratio ", split.preserved_ratio,
                         " <= ", min_preserved_ratio,
                         " (the forget gradient lies in the span of the retain gradients; no "
                         "first-order retain-invariant step exists)");
  const vector<double> root = detail::metric_root(split.metric, p);
  const vector<double> normal_z = split.normal.cwiseQuotient(root);  // P_perp z_f
  const double norm = normal_z.stableNorm();
  reparam::detail::check(norm > 0.0 && std::isfinite(norm), fn, "split.normal has whitened norm ",
                         norm, " but preserved_ratio is ", split.preserved_ratio,
                         " (a split not made by project_forget_gradient?)");
  // d = +-M^{-1/2} rho (P_perp z_f / ||P_perp z_f||); divide by the norm first (no overflow of
  // rho / norm).
  const double sign_rho = ascend ? rho : -rho;
  vector<double> step = (normal_z / norm).cwiseQuotient(root) * sign_rho;
  detail::check_no_overflow(fn, "the step", step);
  return step;
}

inline vector<double> joint_update(const vector<double>& forget, const vector<double>& retain,
                                   double gamma, double alpha) {
  constexpr const char* fn = "unlearn::joint_update";
  const index p = forget.size();
  reparam::detail::check(p > 0, fn, "forget is empty (the gradient has no entries)");
  reparam::detail::check(retain.size() == p, fn, "retain has size ", retain.size(),
                         " but forget has size ", p, " (pass the concatenation of all tensors)");
  reparam::detail::check_finite(fn, "forget", forget.data(), p);
  reparam::detail::check_finite(fn, "retain", retain.data(), p);
  reparam::detail::check(std::isfinite(gamma), fn, "gamma ", gamma, " is not finite");
  reparam::detail::check(std::isfinite(alpha), fn, "alpha ", alpha, " is not finite");
  vector<double> forget_perp = forget;
  const double scale = retain.cwiseAbs().maxCoeff();
  if (scale > 0.0) {
    // c g_r = (<g_f, u> / ||u||^2) u with u = g_r / max|g_r|: ||u||^2 >= 1, so neither the
    // squared norm nor the quotient underflows for tiny retain gradients.
    const vector<double> u = retain / scale;
    const double coefficient = forget.dot(u) / u.squaredNorm();
    forget_perp -= coefficient * u;
  }
  vector<double> out = gamma * forget_perp + alpha * retain;
  detail::check_no_overflow(fn, "the result", out);
  return out;
}

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_DETAIL_GRADIENT_IMPL_HPP

// SPDX-License-Identifier: Apache-2.0
// Definitions of reparam/unlearn/editor.hpp (included at its end). Every editor validates all of
// its inputs first, solves for dW = W' - W0 in double, and writes `out` once at the very end.
#ifndef REPARAM_UNLEARN_DETAIL_EDITOR_IMPL_HPP
#define REPARAM_UNLEARN_DETAIL_EDITOR_IMPL_HPP

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>

#include <reparam/core/error.hpp>
#include <reparam/core/second_moment.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/editor.hpp>  // the declarations (this file is included at its end)

namespace reparam::unlearn {
namespace detail {

using reparam::detail::check;

/// Checks every entry of m is finite; names the argument, row and column.
template <class Derived>
inline void editor_check_finite(const char* function, const char* argument,
                                const Eigen::MatrixBase<Derived>& m) {
  for (index r = 0; r < m.rows(); ++r) {
    for (index c = 0; c < m.cols(); ++c) {
      if (!std::isfinite(m(r, c))) {
        reparam::detail::raise<error>(reparam::detail::concat(function, ": ", argument,
                                                              " has non-finite value ", m(r, c),
                                                              " at row ", r, ", col ", c));
      }
    }
  }
}

/// Shapes and finiteness common to the key/value editors.
template <class T>
inline void editor_check_kv(const char* function, const matrix<T>& w0, const matrix<double>& keys,
                            const matrix<double>& values) {
  check(w0.rows() >= 1 && w0.cols() >= 1, function, "w0 is empty (", w0.rows(), " x ", w0.cols(),
        ")");
  check(keys.rows() >= 1, function, "keys has no rows (", keys.rows(), " x ", keys.cols(), ")");
  check(keys.cols() == w0.cols(), function, "keys has ", keys.cols(), " cols but w0 has d_in ",
        w0.cols());
  check(values.rows() == keys.rows(), function, "values has ", values.rows(), " rows but keys has ",
        keys.rows());
  check(values.cols() == w0.rows(), function, "values has ", values.cols(),
        " cols but w0 has d_out ", w0.rows());
  editor_check_finite(function, "w0", w0);
  editor_check_finite(function, "keys", keys);
  editor_check_finite(function, "values", values);
}

/// Number of singular values of m above max(rows, cols) eps sigma_max (0 for an all-zero m).
template <class Derived>
inline index editor_effective_rank(const Eigen::MatrixBase<Derived>& m) {
  if (m.size() == 0) {
    return 0;
  }
  const Eigen::MatrixXd dense = m;
  const Eigen::BDCSVD<Eigen::MatrixXd> svd(dense);
  const Eigen::VectorXd& s = svd.singularValues();
  if (s.size() == 0 || !(s(0) > 0.0)) {
    return 0;
  }
  const double tol = static_cast<double>(std::max(m.rows(), m.cols())) *
                     std::numeric_limits<double>::epsilon() * s(0);
  index rank = 0;
  for (index i = 0; i < s.size(); ++i) {
    rank += s(i) > tol ? 1 : 0;
  }
  return rank;
}

/// Solves X A = B (A symmetric PSD, B [rows, dim]) by LLT, LDLT fallback. Returns false when A is
/// singular to working precision (reciprocal 1-norm condition <= dim eps); sets condition.
inline bool editor_spd_solve_right(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b,
                                   Eigen::MatrixXd& x, double& condition) {
  const double limit = static_cast<double>(a.rows()) * std::numeric_limits<double>::epsilon();
  const Eigen::LLT<Eigen::MatrixXd> llt(a);
  if (llt.info() == Eigen::Success) {
    const double rcond = llt.rcond();
    if (rcond > limit) {
      condition = 1.0 / rcond;
      x = llt.solve(b.transpose()).transpose();  // A symmetric: X^T = A^-1 B^T
      return true;
    }
  }
  const Eigen::LDLT<Eigen::MatrixXd> ldlt(a);
  // Eigen's LDLT solves with a pseudo-inverse of D (tiny pivots are zeroed), so its rcond
  // estimate can miss an exactly singular A: check the pivots themselves too.
  double pivot_max = 0.0;
  double pivot_min = std::numeric_limits<double>::infinity();
  for (index i = 0; i < a.rows(); ++i) {
    const double p = ldlt.vectorD()(i);
    pivot_max = std::max(pivot_max, std::abs(p));
    pivot_min = std::min(pivot_min, p);
  }
  const bool pivots_ok = pivot_min > limit * pivot_max;
  const double rcond = ldlt.info() == Eigen::Success && pivots_ok ? ldlt.rcond() : 0.0;
  condition = rcond > 0.0 ? 1.0 / rcond : std::numeric_limits<double>::infinity();
  if (!(rcond > limit) || !ldlt.isPositive()) {
    return false;
  }
  x = ldlt.solve(b.transpose()).transpose();
  return true;
}

/// Fills the report's delta_norm and residual from the stored result (weights s, may be empty).
template <class T>
inline void editor_finish_report(edit_report& report, const matrix<T>& w0, const matrix<T>& w1,
                                 const matrix<double>& keys, const matrix<double>& values,
                                 const vector<double>& weights) {
  const Eigen::MatrixXd w1d = w1.template cast<double>();
  report.delta_norm = (w1d - w0.template cast<double>()).norm();
  const Eigen::MatrixXd res = keys * w1d.transpose() - values;  // [n, d_out]
  double sum = 0.0;
  for (index i = 0; i < res.rows(); ++i) {
    const double s = weights.size() == 0 ? 1.0 : weights(i);
    sum += s * res.row(i).squaredNorm();
  }
  report.residual = std::sqrt(sum);
}

/// dW = R^T U_r Sigma_r^-1 V_r^T from the thin SVD of the keys, keeping at most max_rank values
/// above relative_tolerance * sigma_max. Shared by min_norm_edit and low_rank_edit.
template <class T>
inline edit_report editor_pinv_edit(const matrix<T>& w0, const matrix<double>& keys,
                                    const matrix<double>& values, double relative_tolerance,
                                    index max_rank, matrix<T>& out) {
  const Eigen::MatrixXd w0d = w0.template cast<double>();
  const Eigen::MatrixXd r = values - keys * w0d.transpose();  // [n, d_out]
  const Eigen::MatrixXd k = keys;
  const Eigen::BDCSVD<Eigen::MatrixXd> svd(k, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::VectorXd& s = svd.singularValues();
  const double tol_rel = relative_tolerance >= 0.0
                             ? relative_tolerance
                             : static_cast<double>(std::max(keys.rows(), keys.cols())) *
                                   std::numeric_limits<double>::epsilon();
  index rank = 0;
  if (s.size() > 0 && s(0) > 0.0) {
    for (index i = 0; i < s.size(); ++i) {
      rank += s(i) > tol_rel * s(0) ? 1 : 0;
    }
  }
  edit_report report;
  report.effective_rank = rank;
  const index kept = std::min(rank, max_rank);
  Eigen::MatrixXd delta = Eigen::MatrixXd::Zero(w0.rows(), w0.cols());
  if (kept > 0) {
    report.condition = s(0) / s(kept - 1);
    // R^T U_r Sigma_r^-1: [d_out, kept]
    const Eigen::MatrixXd left =
        (r.transpose() * svd.matrixU().leftCols(kept)) * s.head(kept).cwiseInverse().asDiagonal();
    delta.noalias() = left * svd.matrixV().leftCols(kept).transpose();
  }
  out = (w0d + delta).template cast<T>();
  editor_finish_report(report, w0, out, keys, values, vector<double>());
  return report;
}

}  // namespace detail

template <class T>
edit_report least_squares_edit(const matrix<T>& w0, const matrix<double>& keys,
                               const matrix<double>& values, matrix<T>& out,
                               const ls_edit_options& options) {
  constexpr const char* function = "unlearn::least_squares_edit";
  using detail::check;
  detail::editor_check_kv(function, w0, keys, values);
  const index n = keys.rows();
  const index d = keys.cols();
  const vector<double>& sw = options.sample_weights;
  check(sw.size() == 0 || sw.size() == n, function, "options.sample_weights has ", sw.size(),
        " entries but keys has ", n, " rows");
  for (index i = 0; i < sw.size(); ++i) {
    check(std::isfinite(sw(i)) && sw(i) >= 0.0, function, "options.sample_weights(", i,
          ") = ", sw(i), " must be finite and >= 0");
  }
  check(std::isfinite(options.lambda), function, "options.lambda ", options.lambda,
        " must be finite (< 0 selects the relative default)");
  check(std::isfinite(options.relative_lambda) && options.relative_lambda >= 0.0, function,
        "options.relative_lambda ", options.relative_lambda, " must be finite and >= 0");
  if (options.prior != nullptr) {
    check(options.prior->dim() == d, function, "options.prior has dim ", options.prior->dim(),
          " but keys have d_in ", d);
    check(options.prior->samples() > 0, function, "options.prior has no samples");
    check(std::isfinite(options.prior_weight) && options.prior_weight >= 0.0, function,
          "options.prior_weight ", options.prior_weight, " must be finite and >= 0");
    check(options.form != ls_form::push_through, function,
          "options.form = push_through cannot take options.prior (the system is not lambda I + "
          "low rank); use direct or automatic");
  }

  // Weighted keys S^1/2 K and residuals S^1/2 R, R = V - K W0^T.
  const Eigen::MatrixXd w0d = w0.template cast<double>();
  Eigen::MatrixXd kt = keys;
  Eigen::MatrixXd rt = values - keys * w0d.transpose();
  if (sw.size() != 0) {
    const Eigen::VectorXd root = sw.cwiseSqrt();
    kt = root.asDiagonal() * kt;
    rt = root.asDiagonal() * rt;
  }
  const double trace = kt.squaredNorm();  // tr(K^T S K)
  const double lambda = options.lambda >= 0.0
                            ? options.lambda
                            : options.relative_lambda * trace / static_cast<double>(d);
  const bool use_push =
      options.prior == nullptr &&
      (options.form == ls_form::push_through || (options.form == ls_form::automatic && 2 * n < d));

  edit_report report;
  report.lambda_used = lambda;
  report.push_through = use_push;
  report.effective_rank = detail::editor_effective_rank(kt);
  Eigen::MatrixXd delta;
  bool ok = false;
  if (use_push) {
    // dW = Rt^T (Kt Kt^T + lambda I_n)^-1 Kt
    Eigen::MatrixXd a = kt * kt.transpose();
    a.diagonal().array() += lambda;
    Eigen::MatrixXd y;  // Rt^T A^-1 [d_out, n]
    ok = detail::editor_spd_solve_right(a, rt.transpose(), y, report.condition);
    if (ok) {
      delta = y * kt;
    }
  } else {
    // dW (lambda I + prior_weight C + Kt^T Kt) = Rt^T Kt
    Eigen::MatrixXd a = kt.transpose() * kt;
    a.diagonal().array() += lambda;
    if (options.prior != nullptr) {
      a += options.prior_weight * options.prior->mean();
    }
    ok = detail::editor_spd_solve_right(a, rt.transpose() * kt, delta, report.condition);
  }
  check(ok, function, "the ", use_push ? "push-through" : "direct",
        " system is singular to double precision (condition estimate ", report.condition,
        ", lambda ", lambda, ", effective rank ", report.effective_rank,
        " of the weighted keys, n = ", n, ", d_in = ", d,
        "); use lambda > 0 or min_norm_edit for rank-deficient keys");
  out = (w0d + delta).template cast<T>();
  detail::editor_finish_report(report, w0, out, keys, values, sw);
  return report;
}

template <class T>
edit_report min_norm_edit(const matrix<T>& w0, const matrix<double>& keys,
                          const matrix<double>& values, matrix<T>& out, double relative_tolerance) {
  constexpr const char* function = "unlearn::min_norm_edit";
  detail::editor_check_kv(function, w0, keys, values);
  detail::check(std::isfinite(relative_tolerance) && relative_tolerance < 1.0, function,
                "relative_tolerance ", relative_tolerance,
                " must be finite and < 1 (< 0 selects the default)");
  return detail::editor_pinv_edit(w0, keys, values, relative_tolerance,
                                  std::numeric_limits<index>::max(), out);
}

template <class T>
edit_report low_rank_edit(const matrix<T>& w0, const matrix<double>& keys,
                          const matrix<double>& values, index r, matrix<T>& out) {
  constexpr const char* function = "unlearn::low_rank_edit";
  detail::editor_check_kv(function, w0, keys, values);
  detail::check(r >= 1, function, "r ", r, " must be >= 1");
  return detail::editor_pinv_edit(w0, keys, values, -1.0, r, out);
}

template <class T>
edit_report rome_edit(const matrix<T>& w0, const vector<double>& key, const vector<double>& value,
                      const second_moment& keys_moment, matrix<T>& out, double relative_ridge) {
  constexpr const char* function = "unlearn::rome_edit";
  using detail::check;
  check(w0.rows() >= 1 && w0.cols() >= 1, function, "w0 is empty (", w0.rows(), " x ", w0.cols(),
        ")");
  const index d = w0.cols();
  check(key.size() == d, function, "key has ", key.size(), " entries but w0 has d_in ", d);
  check(value.size() == w0.rows(), function, "value has ", value.size(),
        " entries but w0 has d_out ", w0.rows());
  check(keys_moment.dim() == d, function, "keys_moment has dim ", keys_moment.dim(),
        " but w0 has d_in ", d);
  check(keys_moment.samples() > 0, function, "keys_moment has no samples");
  check(std::isfinite(relative_ridge) && relative_ridge >= 0.0, function, "relative_ridge ",
        relative_ridge, " must be finite and >= 0");
  detail::editor_check_finite(function, "w0", w0);
  detail::editor_check_finite(function, "key", key);
  detail::editor_check_finite(function, "value", value);
  check(key.squaredNorm() > 0.0, function, "key is zero: a rank-one edit needs k* != 0");

  Eigen::MatrixXd c = keys_moment.mean();
  const double ridge = relative_ridge * c.trace() / static_cast<double>(d);
  c.diagonal().array() += ridge;
  edit_report report;
  report.lambda_used = ridge;
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(c, Eigen::EigenvaluesOnly);
  const Eigen::VectorXd& ev = eig.eigenvalues();  // increasing
  const double ev_max = ev(d - 1);
  const double tol = static_cast<double>(d) * std::numeric_limits<double>::epsilon() * ev_max;
  for (index i = 0; i < d; ++i) {
    report.effective_rank += ev(i) > tol ? 1 : 0;
  }
  Eigen::MatrixXd u;  // (C^-1 k*)^T, [1, d]
  double cond = 0.0;
  const bool ok = detail::editor_spd_solve_right(c, key.transpose(), u, cond);
  report.condition = ev(0) > 0.0 ? ev_max / ev(0) : std::numeric_limits<double>::infinity();
  check(ok, function, "C (+ ridge ", ridge, ") is singular to double precision (effective rank ",
        report.effective_rank, " of d_in = ", d, ", condition ", report.condition,
        "); pass relative_ridge > 0 or add more key samples");
  const double denom = u.row(0).dot(key);
  check(denom > 0.0 && std::isfinite(denom), function, "k*^T C^-1 k* = ", denom,
        " is not positive");
  const Eigen::MatrixXd w0d = w0.template cast<double>();
  const Eigen::VectorXd r = value - w0d * key;
  Eigen::MatrixXd w1 = w0d;
  w1.noalias() += (r / denom) * u;
  out = w1.template cast<T>();
  const matrix<double> k1 = key.transpose();
  const matrix<double> v1 = value.transpose();
  detail::editor_finish_report(report, w0, out, k1, v1, vector<double>());
  return report;
}

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_DETAIL_EDITOR_IMPL_HPP

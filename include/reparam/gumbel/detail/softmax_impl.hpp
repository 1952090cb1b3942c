// SPDX-License-Identifier: Apache-2.0
// Definitions of reparam/gumbel/softmax.hpp. Every row is computed in double with a max-shifted
// exponential; masked classes (-inf) are skipped explicitly, so no -inf - -inf or 0 * -inf ever
// reaches the arithmetic. Rows are independent and nothing here allocates except the allocating
// conveniences (gumbel_softmax, exp_concrete_log_prob, concrete_log_prob).
//
// Notes for readers:
// - The samplers write the noise with fill_gumbel_rows<Arch> into `perturbed` and add the logits
//   in place (perturbed is the only scratch). Outputs must not overlap each other or the inputs.
// - Costs per row of C classes: sample 2C exp (plus the noise), VJP 2C exp, density 2C exp.
// - The VJPs recompute y from `perturbed` (three passes, no scratch); the tau gradient uses the
//   shift-invariant form with u = (perturbed - max) / tau, so it stays exact for huge logits.
// - ExpConcrete is a density of the K - 1 differences v_k = z_k - z_K on R^(K-1) (the Jacobian of
//   y = softmax(v, 0) is prod_k y_k): for K = 2 it is the density of z1 - z2. Concrete is the
//   density of (y_1 .. y_(K-1)) on the simplex (Maddison et al. 2016, eq. 1).
#ifndef REPARAM_GUMBEL_DETAIL_SOFTMAX_IMPL_HPP
#define REPARAM_GUMBEL_DETAIL_SOFTMAX_IMPL_HPP

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/gumbel/softmax.hpp>
#include <reparam/gumbel/types.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>

namespace reparam::gumbel {
namespace detail {

inline constexpr double negative_infinity = -std::numeric_limits<double>::infinity();

/// Throws unless a [rows, cols] argument `name` matches the reference shape.
inline void check_shape(const char* function, const char* name, index rows, index cols,
                        const char* reference, index reference_rows, index reference_cols) {
  reparam::detail::check(rows == reference_rows && cols == reference_cols, function, name, " is [",
                         rows, ", ", cols, "] but ", reference, " is [", reference_rows, ", ",
                         reference_cols, "]");
}

/// Throws unless a per-row vector `name` has one entry per row.
inline void check_length(const char* function, const char* name, index size, index rows) {
  reparam::detail::check(size == rows, function, name, " has ", size, " entries for ", rows,
                         " rows");
}

/// Largest entry of row r (masked entries are -inf and never win; the row has a finite entry).
template <class Derived>
double row_max(const Eigen::MatrixBase<Derived>& values, index r) noexcept {
  double m = negative_infinity;
  for (index c = 0; c < values.cols(); ++c) {
    m = std::max(m, static_cast<double>(values(r, c)));
  }
  return m;
}

/// gumbel_softmax_rows (is_log false) and log_gumbel_softmax_rows (is_log true), reporting as
/// `function`. All checks run before the first write.
template <class Arch, class Derived, class T>
void sample_rows(const char* function, const Eigen::MatrixBase<Derived>& logits,
                 const temperature& tau, noise_key key, matrix_ref<double> perturbed,
                 matrix_ref<T> out, index_vector_ref hot, row_range rows, bool is_log) {
  reparam::detail::static_check_input<Derived>();
  static_assert(is_supported_scalar_v<T>, "reparam: the sample must be float or double");
  const index row_count = logits.rows();
  const index cols = logits.cols();
  check_shape(function, "perturbed", perturbed.rows(), perturbed.cols(), "logits", row_count, cols);
  check_shape(function, is_log ? "z" : "soft", out.rows(), out.cols(), "logits", row_count, cols);
  check_length(function, "hot", hot.size(), row_count);
  reparam::detail::check_row_range(function, rows, row_count);
  reparam::detail::check(cols < kernels::gumbel_noise_max_cols, function, "logits have ", cols,
                         " columns; at most 2^33 are addressable by the noise");
  check_temperature(function, "tau", tau, row_count);
  check_logits(function, logits, rows);
  if (rows.empty()) {
    return;
  }
  fill_gumbel_rows<Arch, double>(key, perturbed, rows);
  for (index r = rows.begin; r < rows.end; ++r) {
    // perturbed = l + g; the hot index is its first maximum (it does not depend on tau).
    index arg = -1;
    double best = negative_infinity;
    for (index c = 0; c < cols; ++c) {
      const auto l = static_cast<double>(logits(r, c));
      if (l == negative_infinity) {
        perturbed(r, c) = negative_infinity;
        continue;
      }
      const double x = l + perturbed(r, c);
      perturbed(r, c) = x;
      if (arg < 0 || x > best) {
        best = x;
        arg = c;
      }
    }
    hot[r] = arg;
    const double t = tau.at(r);
    double sum = 0.0;  // >= 1: the maximum contributes exp(0)
    for (index c = 0; c < cols; ++c) {
      const double x = perturbed(r, c);
      if (x != negative_infinity) {
        sum += std::exp((x - best) / t);
      }
    }
    if (is_log) {
      const double log_sum = std::log(sum);
      for (index c = 0; c < cols; ++c) {
        const double x = perturbed(r, c);
        out(r, c) = x == negative_infinity ? -std::numeric_limits<T>::infinity()
                                           : static_cast<T>((x - best) / t - log_sum);
      }
    } else {
      for (index c = 0; c < cols; ++c) {
        const double x = perturbed(r, c);
        out(r, c) = x == negative_infinity ? T(0) : static_cast<T>(std::exp((x - best) / t) / sum);
      }
    }
  }
}

/// The shared checks and body of the three VJPs (is_log selects the log-space form).
template <class DerivedP, class DerivedV, class T>
void vjp_rows(const char* function, const Eigen::MatrixBase<DerivedP>& perturbed,
              const temperature& tau, const Eigen::MatrixBase<DerivedV>& v,
              matrix_ref<T> grad_logits, double_vector_ref grad_tau, row_range rows, bool is_log) {
  reparam::detail::static_check_input<DerivedP>();
  reparam::detail::static_check_input<DerivedV>();
  static_assert(is_supported_scalar_v<T>, "reparam: grad_logits must be float or double");
  const index row_count = perturbed.rows();
  const index cols = perturbed.cols();
  check_shape(function, "v", v.rows(), v.cols(), "perturbed", row_count, cols);
  check_shape(function, "grad_logits", grad_logits.rows(), grad_logits.cols(), "perturbed",
              row_count, cols);
  reparam::detail::check(grad_tau.size() == 0 || grad_tau.size() == row_count, function,
                         "grad_tau has ", grad_tau.size(), " entries; it must be empty or have ",
                         row_count, " (one per row)");
  reparam::detail::check_row_range(function, rows, row_count);
  check_temperature(function, "tau", tau, row_count);
  check_finite_or_masked(function, "perturbed", perturbed, rows);
  for (index r = rows.begin; r < rows.end; ++r) {
    for (index c = 0; c < cols; ++c) {
      if (is_log && static_cast<double>(perturbed(r, c)) == negative_infinity) {
        continue;  // documented: v at a masked class is ignored in log space
      }
      const auto value = static_cast<double>(v(r, c));
      reparam::detail::check(std::isfinite(value), function, "v(", r, ", ", c, ") is ", value,
                             "; the upstream gradient must be finite");
    }
  }
  const bool has_tau = grad_tau.size() != 0;
  for (index r = rows.begin; r < rows.end; ++r) {
    const double t = tau.at(r);
    const double m = row_max(perturbed, r);
    // u = (perturbed - m) / t (shift-invariant formulas), e = exp(u), y = e / sum_e.
    double sum_e = 0.0;
    double sum_ev = 0.0;
    double sum_eu = 0.0;
    double sum_v = 0.0;
    for (index c = 0; c < cols; ++c) {
      const auto x = static_cast<double>(perturbed(r, c));
      if (x == negative_infinity) {
        continue;
      }
      const double u = (x - m) / t;
      const double e = std::exp(u);
      const auto vc = static_cast<double>(v(r, c));
      sum_e += e;
      sum_ev += e * vc;
      sum_eu += e * u;
      sum_v += vc;
    }
    const double mean_v = sum_ev / sum_e;  // <v, y>
    const double mean_u = sum_eu / sum_e;  // <y, u>
    double tau_sum = 0.0;
    for (index c = 0; c < cols; ++c) {
      const auto x = static_cast<double>(perturbed(r, c));
      if (x == negative_infinity) {
        grad_logits(r, c) = T(0);
        continue;
      }
      const double u = (x - m) / t;
      const double y = std::exp(u) / sum_e;
      const auto vc = static_cast<double>(v(r, c));
      if (is_log) {
        // dz_j/dl_k = (delta_jk - y_k) / t; dz_j/dt = -(u_j - <y, u>) / t.
        grad_logits(r, c) = static_cast<T>((vc - y * sum_v) / t);
        tau_sum += vc * (u - mean_u);
      } else {
        // dy/dl = (diag(y) - y y^T) / t; dy/dt = -(diag(y) - y y^T) u / t.
        const double a = y * (vc - mean_v);
        grad_logits(r, c) = static_cast<T>(a / t);
        tau_sum += a * (u - mean_u);
      }
    }
    if (has_tau) {
      grad_tau[r] = -tau_sum / t;
    }
  }
}

/// ExpConcrete log-density of one row, with z_k given by z_of(c) at the unmasked classes:
///   lgamma(K) + (K - 1) log t + sum_k (a_k - m) - K log sum_k exp(a_k - m),
/// a_k = l_k - t z_k, m = max_k a_k (the max-shifted form of sum a - K LSE(a)).
template <class DerivedL, class ZOf>
double exp_concrete_row(const Eigen::MatrixBase<DerivedL>& logits, index r, double t,
                        const ZOf& z_of) {
  index classes = 0;
  double m = negative_infinity;
  for (index c = 0; c < logits.cols(); ++c) {
    const auto l = static_cast<double>(logits(r, c));
    if (l == negative_infinity) {
      continue;
    }
    m = std::max(m, l - t * z_of(c));
    ++classes;
  }
  double sum_shifted = 0.0;
  double sum_exp = 0.0;
  for (index c = 0; c < logits.cols(); ++c) {
    const auto l = static_cast<double>(logits(r, c));
    if (l == negative_infinity) {
      continue;
    }
    const double shifted = (l - t * z_of(c)) - m;
    sum_shifted += shifted;
    sum_exp += std::exp(shifted);
  }
  const auto k = static_cast<double>(classes);
  return std::lgamma(k) + (k - 1.0) * std::log(t) + sum_shifted - k * std::log(sum_exp);
}

/// Shared checks of the two density entry points (shapes, rows, tau, logits).
template <class DerivedX, class DerivedL>
void check_density_arguments(const char* function, const char* name,
                             const Eigen::MatrixBase<DerivedX>& x,
                             const Eigen::MatrixBase<DerivedL>& logits, const temperature& tau,
                             index out_size, row_range rows) {
  check_shape(function, name, x.rows(), x.cols(), "logits", logits.rows(), logits.cols());
  check_length(function, "out", out_size, logits.rows());
  reparam::detail::check_row_range(function, rows, logits.rows());
  check_temperature(function, "tau", tau, logits.rows());
  check_logits(function, logits, rows);
}

template <class DerivedZ, class DerivedL>
void exp_concrete_checked(const char* function, const Eigen::MatrixBase<DerivedZ>& z,
                          const Eigen::MatrixBase<DerivedL>& logits, const temperature& tau,
                          double_vector_ref out, row_range rows) {
  reparam::detail::static_check_input<DerivedZ>();
  reparam::detail::static_check_input<DerivedL>();
  check_density_arguments(function, "z", z, logits, tau, out.size(), rows);
  for (index r = rows.begin; r < rows.end; ++r) {
    for (index c = 0; c < z.cols(); ++c) {
      const auto value = static_cast<double>(z(r, c));
      if (static_cast<double>(logits(r, c)) == negative_infinity) {
        reparam::detail::check(value == negative_infinity, function, "z(", r, ", ", c, ") is ",
                               value, " but logits(", r, ", ", c,
                               ") is -inf (masked): z must be -inf there");
      } else {
        reparam::detail::check(std::isfinite(value), function, "z(", r, ", ", c, ") is ", value,
                               "; z must be finite where the logit is finite");
      }
    }
  }
  for (index r = rows.begin; r < rows.end; ++r) {
    out[r] = exp_concrete_row(logits, r, tau.at(r),
                              [&](index c) { return static_cast<double>(z(r, c)); });
  }
}

template <class DerivedY, class DerivedL>
void concrete_checked(const char* function, const Eigen::MatrixBase<DerivedY>& y,
                      const Eigen::MatrixBase<DerivedL>& logits, const temperature& tau,
                      double_vector_ref out, row_range rows) {
  reparam::detail::static_check_input<DerivedY>();
  reparam::detail::static_check_input<DerivedL>();
  check_density_arguments(function, "y", y, logits, tau, out.size(), rows);
  for (index r = rows.begin; r < rows.end; ++r) {
    for (index c = 0; c < y.cols(); ++c) {
      const auto value = static_cast<double>(y(r, c));
      reparam::detail::check(std::isfinite(value) && value >= 0.0, function, "y(", r, ", ", c,
                             ") is ", value, "; y must be finite and >= 0");
      if (static_cast<double>(logits(r, c)) == negative_infinity) {
        reparam::detail::check(value == 0.0, function, "y(", r, ", ", c, ") is ", value,
                               " but logits(", r, ", ", c, ") is -inf (masked): y must be 0 there");
      } else {
        reparam::detail::check(value > 0.0, function, "y(", r, ", ", c,
                               ") is 0 at an unmasked class (the sample underflowed); use "
                               "exp_concrete_log_prob on the log-space sample");
      }
    }
  }
  for (index r = rows.begin; r < rows.end; ++r) {
    double sum_log_y = 0.0;
    for (index c = 0; c < y.cols(); ++c) {
      if (static_cast<double>(logits(r, c)) != negative_infinity) {
        sum_log_y += std::log(static_cast<double>(y(r, c)));
      }
    }
    out[r] = exp_concrete_row(logits, r, tau.at(r),
                              [&](index c) { return std::log(static_cast<double>(y(r, c))); }) -
             sum_log_y;
  }
}

}  // namespace detail

template <class Arch, class Derived, class T>
void gumbel_softmax_rows(const Eigen::MatrixBase<Derived>& logits, const temperature& tau,
                         noise_key key, matrix_ref<double> perturbed, matrix_ref<T> soft,
                         index_vector_ref hot, row_range rows) {
  detail::sample_rows<Arch, Derived, T>("gumbel::gumbel_softmax_rows", logits, tau, key, perturbed,
                                        soft, hot, rows, false);
}

template <class Arch, class Derived, class T>
void log_gumbel_softmax_rows(const Eigen::MatrixBase<Derived>& logits, const temperature& tau,
                             noise_key key, matrix_ref<double> perturbed, matrix_ref<T> z,
                             index_vector_ref hot, row_range rows) {
  detail::sample_rows<Arch, Derived, T>("gumbel::log_gumbel_softmax_rows", logits, tau, key,
                                        perturbed, z, hot, rows, true);
}

template <class T>
void one_hot_rows(const index_vector& hot, matrix_ref<T> hard, row_range rows) {
  constexpr const char* function = "gumbel::one_hot_rows";
  detail::check_length(function, "hot", hot.size(), hard.rows());
  reparam::detail::check_row_range(function, rows, hard.rows());
  for (index r = rows.begin; r < rows.end; ++r) {
    reparam::detail::check(hot[r] >= 0 && hot[r] < hard.cols(), function, "hot[", r, "] ", hot[r],
                           " is outside [0, ", hard.cols(), ")");
  }
  for (index r = rows.begin; r < rows.end; ++r) {
    for (index c = 0; c < hard.cols(); ++c) {
      hard(r, c) = c == hot[r] ? T(1) : T(0);
    }
  }
}

template <class Arch, class Derived>
gumbel_softmax_sample<typename Derived::Scalar> gumbel_softmax(
    const Eigen::MatrixBase<Derived>& logits, const temperature& tau, noise_key key,
    hard_mode mode) {
  using scalar = typename Derived::Scalar;
  constexpr const char* function = "gumbel::gumbel_softmax";
  reparam::detail::check(mode == hard_mode::soft || mode == hard_mode::straight_through, function,
                         "mode ", static_cast<int>(mode), " is not a hard_mode");
  gumbel_softmax_sample<scalar> sample;
  sample.perturbed.resize(logits.rows(), logits.cols());
  sample.soft.resize(logits.rows(), logits.cols());
  sample.hot.resize(logits.rows());
  detail::sample_rows<Arch, Derived, scalar>(function, logits, tau, key, sample.perturbed,
                                             sample.soft, sample.hot, all_rows(logits.rows()),
                                             false);
  if (mode == hard_mode::straight_through) {
    sample.value.resize(logits.rows(), logits.cols());
    one_hot_rows<scalar>(sample.hot, sample.value, all_rows(logits.rows()));
  } else {
    sample.value = sample.soft;
  }
  return sample;
}

template <class DerivedP, class DerivedV, class T>
void gumbel_softmax_vjp_rows(const Eigen::MatrixBase<DerivedP>& perturbed, const temperature& tau,
                             const Eigen::MatrixBase<DerivedV>& v, matrix_ref<T> grad_logits,
                             double_vector_ref grad_tau, row_range rows) {
  detail::vjp_rows("gumbel::gumbel_softmax_vjp_rows", perturbed, tau, v, grad_logits, grad_tau,
                   rows, false);
}

template <class DerivedP, class DerivedV, class T>
void straight_through_vjp_rows(const Eigen::MatrixBase<DerivedP>& perturbed, const temperature& tau,
                               const Eigen::MatrixBase<DerivedV>& v, matrix_ref<T> grad_logits,
                               double_vector_ref grad_tau, row_range rows) {
  detail::vjp_rows("gumbel::straight_through_vjp_rows", perturbed, tau, v, grad_logits, grad_tau,
                   rows, false);
}

template <class DerivedP, class DerivedV, class T>
void log_gumbel_softmax_vjp_rows(const Eigen::MatrixBase<DerivedP>& perturbed,
                                 const temperature& tau, const Eigen::MatrixBase<DerivedV>& v,
                                 matrix_ref<T> grad_logits, double_vector_ref grad_tau,
                                 row_range rows) {
  detail::vjp_rows("gumbel::log_gumbel_softmax_vjp_rows", perturbed, tau, v, grad_logits, grad_tau,
                   rows, true);
}

template <class DerivedZ, class DerivedL>
void exp_concrete_log_prob_rows(const Eigen::MatrixBase<DerivedZ>& z,
                                const Eigen::MatrixBase<DerivedL>& logits, const temperature& tau,
                                double_vector_ref out, row_range rows) {
  detail::exp_concrete_checked("gumbel::exp_concrete_log_prob_rows", z, logits, tau, out, rows);
}

template <class DerivedZ, class DerivedL>
vector<double> exp_concrete_log_prob(const Eigen::MatrixBase<DerivedZ>& z,
                                     const Eigen::MatrixBase<DerivedL>& logits,
                                     const temperature& tau) {
  vector<double> out(logits.rows());
  detail::exp_concrete_checked("gumbel::exp_concrete_log_prob", z, logits, tau, out,
                               all_rows(logits.rows()));
  return out;
}

template <class DerivedY, class DerivedL>
void concrete_log_prob_rows(const Eigen::MatrixBase<DerivedY>& y,
                            const Eigen::MatrixBase<DerivedL>& logits, const temperature& tau,
                            double_vector_ref out, row_range rows) {
  detail::concrete_checked("gumbel::concrete_log_prob_rows", y, logits, tau, out, rows);
}

template <class DerivedY, class DerivedL>
vector<double> concrete_log_prob(const Eigen::MatrixBase<DerivedY>& y,
                                 const Eigen::MatrixBase<DerivedL>& logits,
                                 const temperature& tau) {
  vector<double> out(logits.rows());
  detail::concrete_checked("gumbel::concrete_log_prob", y, logits, tau, out,
                           all_rows(logits.rows()));
  return out;
}

}  // namespace reparam::gumbel

#endif  // REPARAM_GUMBEL_DETAIL_SOFTMAX_IMPL_HPP

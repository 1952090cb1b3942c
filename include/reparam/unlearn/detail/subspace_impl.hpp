// SPDX-License-Identifier: Apache-2.0
// Definitions of reparam/unlearn/subspace.hpp (included at its end; self-contained on its own too).
// Every builder goes through one SVD-with-selection helper, in double, with the rank policy.
#ifndef REPARAM_UNLEARN_DETAIL_SUBSPACE_IMPL_HPP
#define REPARAM_UNLEARN_DETAIL_SUBSPACE_IMPL_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include <Eigen/Core>
#include <Eigen/SVD>

#include <reparam/core/error.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/subspace.hpp>  // the declarations (this file is included at its end)

namespace reparam::unlearn {
namespace detail {

using reparam::detail::check;

/// Column-major double copy of a validated row-major input (the SVD works on it).
template <class Derived>
Eigen::MatrixXd to_double(const Eigen::MatrixBase<Derived>& m) {
  return m.template cast<double>();
}

/// Shape, finiteness and policy checks shared by every builder taking samples.
template <class Derived>
void check_samples(const char* function, const char* argument,
                   const Eigen::MatrixBase<Derived>& m) {
  check(m.rows() > 0 && m.cols() > 0, function, argument, " is empty (", m.rows(), " x ", m.cols(),
        ")");
  for (index r = 0; r < m.rows(); ++r) {
    for (index c = 0; c < m.cols(); ++c) {
      check(std::isfinite(m(r, c)), function, argument, " has non-finite value ", m(r, c), " at (",
            r, ", ", c, ")");
    }
  }
}

inline void check_policy(const char* function, rank_policy policy) {
  check(std::isfinite(policy.relative_tolerance) && policy.relative_tolerance < 1.0, function,
        "policy.relative_tolerance ", policy.relative_tolerance,
        " must be finite and < 1 (< 0 selects the default)");
}

inline void check_selection(const char* function, const char* argument, selection select) {
  check(select.energy > 0.0 && select.energy <= 1.0, function, argument, ".energy ", select.energy,
        " is not in (0, 1]");
}

/// The relative tolerance the policy gives for a rows x cols matrix.
inline double relative_tolerance(rank_policy policy, index rows, index cols) {
  if (policy.relative_tolerance >= 0.0) {
    return policy.relative_tolerance;
  }
  return static_cast<double>(std::max(rows, cols)) * std::numeric_limits<double>::epsilon();
}

/// Largest singular value of x (0 for an all-zero or empty matrix).
inline double largest_singular_value(const Eigen::MatrixXd& x) {
  if (x.size() == 0) {
    return 0.0;
  }
  const Eigen::BDCSVD<Eigen::MatrixXd> svd(x);
  return svd.singularValues().size() > 0 ? svd.singularValues()(0) : 0.0;
}

/// SVD of x [n, d] with the selection: sigma_i > tolerance * reference_sigma_max (the rank
/// policy), then at most top_k, then the fewest reaching `energy` of the sum of all sigma^2.
inline subspace select_directions(const Eigen::MatrixXd& x, index top_k, double energy,
                                  double relative_tolerance_value, double reference_sigma_max) {
  subspace out;
  const index d = x.cols();
  const Eigen::BDCSVD<Eigen::MatrixXd> svd(x, Eigen::ComputeThinV);
  const Eigen::VectorXd& sigma = svd.singularValues();
  const index count = sigma.size();
  const double threshold = relative_tolerance_value * reference_sigma_max;
  out.tolerance_used = threshold;
  index keep = 0;
  if (reference_sigma_max > 0.0) {
    while (keep < count && sigma(keep) > threshold) {
      ++keep;
    }
  }
  if (top_k >= 0) {
    keep = std::min(keep, top_k);
  }
  const double total = sigma.squaredNorm();
  if (energy < 1.0 && keep > 0) {
    double running = 0.0;
    index needed = 0;
    while (needed < keep && running < energy * total) {
      running += sigma(needed) * sigma(needed);
      ++needed;
    }
    keep = std::max<index>(needed, 1);
  }
  out.directions = svd.matrixV().leftCols(keep).transpose();
  out.singular_values = sigma.head(keep);
  out.dropped = count - keep;
  out.retained_energy = total > 0.0 ? out.singular_values.squaredNorm() / total : 1.0;
  if (out.directions.rows() == 0) {
    out.directions.resize(0, d);
  }
  return out;
}

/// Subtracts the column means of x in place (two-pass: sum in double, then subtract).
inline void center_columns(Eigen::MatrixXd& x) {
  const Eigen::RowVectorXd mean = x.colwise().sum() / static_cast<double>(x.rows());
  x.rowwise() -= mean;
}

/// Column sums of m in double, divided by its row count.
template <class Derived>
vector<double> row_mean(const Eigen::MatrixBase<Derived>& m) {
  vector<double> sum = vector<double>::Zero(m.cols());
  for (index r = 0; r < m.rows(); ++r) {
    for (index c = 0; c < m.cols(); ++c) {
      sum(c) += static_cast<double>(m(r, c));
    }
  }
  return sum / static_cast<double>(m.rows());
}

/// One standard normal pair from two uniform (0, 1) doubles (Box-Muller).
inline std::pair<double, double> box_muller(double u1, double u2) {
  constexpr double two_pi = 6.283185307179586476925286766559;
  const double radius = std::sqrt(-2.0 * std::log(u1));
  return {radius * std::cos(two_pi * u2), radius * std::sin(two_pi * u2)};
}

}  // namespace detail

template <class Derived>
subspace orthonormal_basis(const Eigen::MatrixBase<Derived>& vectors, rank_policy policy) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* fn = "unlearn::orthonormal_basis";
  detail::check_samples(fn, "vectors", vectors);
  detail::check_policy(fn, policy);
  const Eigen::MatrixXd x = detail::to_double(vectors);
  const double tol = detail::relative_tolerance(policy, x.rows(), x.cols());
  subspace out = detail::select_directions(x, -1, 1.0, tol, detail::largest_singular_value(x));
  out.retained_energy = 1.0;
  return out;
}

template <class Derived>
subspace principal_subspace(const Eigen::MatrixBase<Derived>& samples, selection select,
                            rank_policy policy) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* fn = "unlearn::principal_subspace";
  detail::check_samples(fn, "samples", samples);
  detail::check_selection(fn, "select", select);
  detail::check_policy(fn, policy);
  Eigen::MatrixXd x = detail::to_double(samples);
  if (select.centered) {
    detail::center_columns(x);
  }
  const double tol = detail::relative_tolerance(policy, x.rows(), x.cols());
  return detail::select_directions(x, select.top_k, select.energy, tol,
                                   detail::largest_singular_value(x));
}

template <class DerivedF, class DerivedR>
subspace deflated_subspace(const Eigen::MatrixBase<DerivedF>& forget,
                           const Eigen::MatrixBase<DerivedR>& retain, selection forget_select,
                           selection retain_select, rank_policy policy) {
  reparam::detail::static_check_input<DerivedF>();
  reparam::detail::static_check_input<DerivedR>();
  constexpr const char* fn = "unlearn::deflated_subspace";
  detail::check_samples(fn, "forget", forget);
  detail::check_samples(fn, "retain", retain);
  reparam::detail::check(forget.cols() == retain.cols(), fn, "forget has ", forget.cols(),
                         " columns but retain has ", retain.cols());
  detail::check_selection(fn, "forget_select", forget_select);
  detail::check_selection(fn, "retain_select", retain_select);
  detail::check_policy(fn, policy);
  const subspace retained = principal_subspace(retain, retain_select, policy);
  Eigen::MatrixXd x = detail::to_double(forget);
  if (forget_select.centered) {
    detail::center_columns(x);
  }
  const double reference = detail::largest_singular_value(x);
  if (retained.rank() > 0) {
    const Eigen::MatrixXd u = retained.directions;  // [m, d]
    // Two passes: the second removes what the first left by rounding (as in re-orthogonalised
    // Gram-Schmidt), so the result is orthogonal to U_r to ~eps, not ~eps * condition.
    for (int pass = 0; pass < 2; ++pass) {
      const Eigen::MatrixXd coefficients = x * u.transpose();
      x.noalias() -= coefficients * u;
    }
  }
  const double tol = detail::relative_tolerance(policy, x.rows(), x.cols());
  return detail::select_directions(x, forget_select.top_k, forget_select.energy, tol, reference);
}

template <class DerivedA, class DerivedB>
mean_difference_result mean_difference(const Eigen::MatrixBase<DerivedA>& a,
                                       const Eigen::MatrixBase<DerivedB>& b) {
  reparam::detail::static_check_input<DerivedA>();
  reparam::detail::static_check_input<DerivedB>();
  constexpr const char* fn = "unlearn::mean_difference";
  detail::check_samples(fn, "a", a);
  detail::check_samples(fn, "b", b);
  reparam::detail::check(a.cols() == b.cols(), fn, "a has ", a.cols(), " columns but b has ",
                         b.cols());
  const vector<double> mean_a = detail::row_mean(a);
  const vector<double> mean_b = detail::row_mean(b);
  mean_difference_result out;
  out.difference = mean_a - mean_b;
  out.norm = out.difference.norm();
  const double noise = 4.0 * static_cast<double>(a.cols()) *
                       std::numeric_limits<double>::epsilon() * (mean_a.norm() + mean_b.norm());
  reparam::detail::check(out.norm > noise, fn, "the means of a and b are equal (difference norm ",
                         out.norm, " <= rounding noise ", noise, "): there is no direction");
  out.direction = out.difference / out.norm;
  return out;
}

inline vector<double> principal_angles(const subspace& a, const subspace& b) {
  reparam::detail::check(a.dim() == b.dim(), "unlearn::principal_angles", "a has dim ", a.dim(),
                         " but b has dim ", b.dim());
  // Let `big` have the larger rank: the residual of the smaller basis then has exactly
  // min(k_a, k_b) singular values, the sines of the angles.
  const subspace& big = a.rank() >= b.rank() ? a : b;
  const subspace& small = a.rank() >= b.rank() ? b : a;
  const index count = small.rank();
  vector<double> angles(count);
  if (count == 0) {
    return angles;
  }
  const Eigen::MatrixXd qa = big.directions;
  const Eigen::MatrixXd qb = small.directions;
  const Eigen::MatrixXd cross = qb * qa.transpose();  // [k_small, k_big]
  const Eigen::JacobiSVD<Eigen::MatrixXd> cos_svd(cross);
  const Eigen::MatrixXd residual = qb - cross * qa;  // component of span(small) outside span(big)
  const Eigen::JacobiSVD<Eigen::MatrixXd> sin_svd(residual);
  const Eigen::VectorXd& cosines = cos_svd.singularValues();  // decreasing
  const Eigen::VectorXd& sines = sin_svd.singularValues();    // decreasing
  for (index i = 0; i < count; ++i) {
    const double c = std::min(cosines(i), 1.0);
    const double s = std::min(sines(count - 1 - i), 1.0);  // increasing
    angles(i) = c * c >= 0.5 ? std::asin(s) : std::acos(c);
  }
  return angles;
}

inline subspace random_subspace(index d, index k, std::uint64_t seed) {
  constexpr const char* fn = "unlearn::random_subspace";
  reparam::detail::check(d >= 1, fn, "d ", d, " must be >= 1");
  reparam::detail::check(k >= 0 && k <= d, fn, "k ", k, " is not in [0, d = ", d, "]");
  if (k == 0) {
    subspace out;
    out.directions.resize(0, d);
    out.dropped = 0;
    return out;
  }
  matrix<double> gaussian(k, d);
  for (index r = 0; r < k; ++r) {
    philox_engine engine(seed, static_cast<std::uint64_t>(r));
    for (index c = 0; c < d; c += 2) {
      const double u1 = uniform_open01_double(engine(), engine());
      const double u2 = uniform_open01_double(engine(), engine());
      const auto normals = detail::box_muller(u1, u2);
      gaussian(r, c) = normals.first;
      if (c + 1 < d) {
        gaussian(r, c + 1) = normals.second;
      }
    }
  }
  subspace out = orthonormal_basis(gaussian);
  reparam::detail::check(out.rank() == k, fn, "the Gaussian matrix for seed ", seed, " has rank ",
                         out.rank(), " < k ", k);
  return out;
}

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_DETAIL_SUBSPACE_IMPL_HPP

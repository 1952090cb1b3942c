// SPDX-License-Identifier: Apache-2.0
// Definitions of reparam/unlearn/projector.hpp (included at its end; self-contained on its own
// too): the factored row kernel shared by the orthogonal and LEACE erasers, the folds, LEACE's fit
// and the INLP intersection.
#ifndef REPARAM_UNLEARN_DETAIL_PROJECTOR_IMPL_HPP
#define REPARAM_UNLEARN_DETAIL_PROJECTOR_IMPL_HPP

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>

#include <reparam/core/error.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/projector.hpp>  // the declarations (this file is included at its end)
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {
namespace detail {

/// sum_j a_j x_j in double with eight independent partial sums, so the compiler can keep them in
/// vector registers (a serial sum is one dependent add per element). Differs from a serial loop
/// by rounding only.
template <class T>
double dot_in_double(const double* a, const T* x, index d) noexcept {
  constexpr index lanes = 8;
  std::array<double, lanes> partial{};
  index j = 0;
  for (; j + lanes <= d; j += lanes) {
    for (index t = 0; t < lanes; ++t) {
      partial[static_cast<std::size_t>(t)] += a[j + t] * static_cast<double>(x[j + t]);
    }
  }
  double tail = 0.0;
  for (; j < d; ++j) {
    tail += a[j] * static_cast<double>(x[j]);
  }
  return ((partial[0] + partial[4]) + (partial[1] + partial[5])) +
         ((partial[2] + partial[6]) + (partial[3] + partial[7])) + tail;
}

/// For each row x of the block: c_i = r_i . x - offset_i (offset may be null), then
/// x <- x - scale * sum_i c_i l_i, directions taken apply_block at a time (coefficients on the
/// stack), computed in double and rounded once per block. The update runs over column chunks of
/// update_chunk with the change accumulated on the stack (contiguous, vectorizable). r and l are
/// [k, d] row-major. noexcept, no allocation, no checks (the callers validated).
template <class T>
void apply_factored_rows(T* data, index row_stride, index rows, index d, const double* r,
                         const double* l, const double* offset, index k, double scale) noexcept {
  constexpr index block = orthogonal_eraser::apply_block;
  constexpr index update_chunk = 128;
  std::array<double, static_cast<std::size_t>(block)> c{};
  std::array<double, static_cast<std::size_t>(update_chunk)> change{};
  for (index row = 0; row < rows; ++row) {
    T* x = data + row * row_stride;
    for (index first = 0; first < k; first += block) {
      const index count = std::min(block, k - first);
      for (index i = 0; i < count; ++i) {
        const double dot = dot_in_double(r + (first + i) * d, x, d);
        c[static_cast<std::size_t>(i)] =
            scale * (offset == nullptr ? dot : dot - offset[first + i]);
      }
      for (index j0 = 0; j0 < d; j0 += update_chunk) {
        const index width = std::min(update_chunk, d - j0);
        double* delta = change.data();
        for (index j = 0; j < width; ++j) {
          delta[j] = 0.0;
        }
        for (index i = 0; i < count; ++i) {
          const double ci = c[static_cast<std::size_t>(i)];
          const double* li = l + (first + i) * d + j0;
          for (index j = 0; j < width; ++j) {
            delta[j] += ci * li[j];
          }
        }
        T* xj = x + j0;
        for (index j = 0; j < width; ++j) {
          xj[j] = static_cast<T>(static_cast<double>(xj[j]) - delta[j]);
        }
      }
    }
  }
}

/// Frobenius norm from a possibly slightly negative squared norm (rounding in a trace formula).
inline double sqrt_nonnegative(double squared) { return std::sqrt(std::max(squared, 0.0)); }

/// Throws naming the first non-finite entry of m (called before anything is changed).
template <class T>
void check_finite_matrix(const char* function, const char* argument, const matrix_ref<T>& m) {
  for (index r = 0; r < m.rows(); ++r) {
    for (index c = 0; c < m.cols(); ++c) {
      reparam::detail::check(std::isfinite(m(r, c)), function, argument, " has non-finite value ",
                             m(r, c), " at (", r, ", ", c, ")");
    }
  }
}

/// Writes `updated` into `weight` (rounded once) and reports the change against `original`.
template <class T>
fold_report write_fold(const matrix<double>& original, const matrix<double>& updated,
                       matrix_ref<T>& weight) {
  weight = updated.cast<T>();
  const matrix<double> written = weight.template cast<double>();
  fold_report report;
  const double before = original.squaredNorm();
  report.delta_norm = (written - original).norm();
  report.relative_delta = before > 0.0 ? report.delta_norm / std::sqrt(before) : 0.0;
  report.retained_energy = before > 0.0 ? written.squaredNorm() / before : 1.0;
  return report;
}

/// W <- P W (output side), optionally b <- P b. Checks everything before writing.
template <class T>
fold_report fold_output_impl(const orthogonal_eraser& eraser, matrix_ref<T>& weight, T* bias,
                             index bias_size, bool has_bias) {
  constexpr const char* fn = "unlearn::fold_output_side";
  reparam::detail::check(weight.rows() == eraser.dim(), fn, "weight has ", weight.rows(),
                         " rows (out) but the eraser has dim ", eraser.dim());
  check_finite_matrix(fn, "weight", weight);
  if (has_bias) {
    reparam::detail::check(bias_size == eraser.dim(), fn, "bias has size ", bias_size,
                           " but the eraser has dim ", eraser.dim());
    for (index i = 0; i < bias_size; ++i) {
      reparam::detail::check(std::isfinite(bias[i]), fn, "bias has non-finite value ", bias[i],
                             " at ", i);
    }
  }
  const matrix<double>& q = eraser.basis();
  const double s = eraser.strength();
  const matrix<double> original = weight.template cast<double>();
  matrix<double> updated = original;
  if (eraser.rank() > 0) {
    const matrix<double> coefficients = q * original;  // [k, in]
    updated.noalias() -= s * (q.transpose() * coefficients);
  }
  if (has_bias && eraser.rank() > 0) {
    Eigen::Map<vector<T>> b(bias, bias_size);
    const vector<double> bd = b.template cast<double>();
    const vector<double> coefficients = q * bd;
    const vector<double> projected = bd - s * (q.transpose() * coefficients);
    b = projected.cast<T>();
  }
  return write_fold(original, updated, weight);
}

/// W <- W P (input side / embedding rows). Checks everything before writing.
template <class T>
fold_report fold_input_impl(const char* fn, const char* argument, const orthogonal_eraser& eraser,
                            matrix_ref<T>& weight) {
  reparam::detail::check(weight.cols() == eraser.dim(), fn, argument, " has ", weight.cols(),
                         " columns but the eraser has dim ", eraser.dim());
  check_finite_matrix(fn, argument, weight);
  const matrix<double>& q = eraser.basis();
  const matrix<double> original = weight.template cast<double>();
  matrix<double> updated = original;
  if (eraser.rank() > 0) {
    const matrix<double> coefficients = original * q.transpose();  // [rows, k]
    updated.noalias() -= eraser.strength() * (coefficients * q);
  }
  return write_fold(original, updated, weight);
}

}  // namespace detail

// ----------------------------------------------------------------------------------------------
// orthogonal_eraser

inline orthogonal_eraser::orthogonal_eraser(subspace basis, double strength) {
  constexpr const char* fn = "unlearn::orthogonal_eraser";
  reparam::detail::check(std::isfinite(strength), fn, "strength ", strength, " is not finite");
  reparam::detail::check(basis.dim() >= 1, fn, "basis has dim ", basis.dim(), " (must be >= 1)");
  const matrix<double>& q = basis.directions;
  reparam::detail::check_finite(fn, "basis.directions", q.data(), q.size());
  if (basis.rank() > 0) {
    const matrix<double> gram = q * q.transpose();
    const double error =
        (gram - matrix<double>::Identity(basis.rank(), basis.rank())).cwiseAbs().maxCoeff();
    reparam::detail::check(error <= 1e-10, fn, "basis rows are not orthonormal: max |Q Q^T - I| ",
                           error,
                           " > 1e-10 (re-orthonormalise with unlearn::orthonormal_basis first)");
  }
  basis_ = std::move(basis);
  strength_ = strength;
}

namespace detail {

/// The apply_rows of both erasers, for either element type: checks, then apply_factored_rows.
template <class T>
void checked_apply_rows(const char* function, matrix_ref<T>& x, row_range rows, index d,
                        const double* r, const double* l, const double* offset, index k,
                        double scale) {
  reparam::detail::check(x.cols() == d, function, "x has ", x.cols(),
                         " columns but the eraser has dim ", d);
  reparam::detail::check_row_range(function, rows, x.rows());
  apply_factored_rows(x.data() + rows.begin * x.outerStride(), x.outerStride(), rows.size(), d, r,
                      l, offset, k, scale);
}

}  // namespace detail

inline void orthogonal_eraser::apply_rows(matrix_ref<float> x, row_range rows) const {
  const double* q = basis_.directions.data();
  detail::checked_apply_rows("unlearn::orthogonal_eraser::apply_rows", x, rows, dim(), q, q,
                             nullptr, rank(), strength_);
}

inline void orthogonal_eraser::apply_rows(matrix_ref<double> x, row_range rows) const {
  const double* q = basis_.directions.data();
  detail::checked_apply_rows("unlearn::orthogonal_eraser::apply_rows", x, rows, dim(), q, q,
                             nullptr, rank(), strength_);
}

inline matrix<double> orthogonal_eraser::dense() const {
  const matrix<double>& q = basis_.directions;
  matrix<double> p = matrix<double>::Identity(dim(), dim());
  p.noalias() -= strength_ * (q.transpose() * q);
  return p;
}

inline projector_diagnostics orthogonal_eraser::diagnostics() const {
  projector_diagnostics out;
  const index k = rank();
  if (k == 0) {
    return out;
  }
  const matrix<double>& q = basis_.directions;
  const matrix<double> gram = q * q.transpose();
  const matrix<double> identity = matrix<double>::Identity(k, k);
  const matrix<double> a = strength_ * strength_ * gram - strength_ * identity;
  const matrix<double> am = a * gram;
  out.idempotence = detail::sqrt_nonnegative((am * am).trace());
  out.symmetry = 0.0;
  out.orthogonality = (gram - identity).norm();
  out.rank_removed = strength_ != 0.0 ? k : 0;
  return out;
}

// ----------------------------------------------------------------------------------------------
// folds

inline fold_report fold_output_side(const orthogonal_eraser& eraser, matrix_ref<float> weight) {
  return detail::fold_output_impl<float>(eraser, weight, nullptr, 0, false);
}
inline fold_report fold_output_side(const orthogonal_eraser& eraser, matrix_ref<double> weight) {
  return detail::fold_output_impl<double>(eraser, weight, nullptr, 0, false);
}
inline fold_report fold_output_side(const orthogonal_eraser& eraser, matrix_ref<float> weight,
                                    Eigen::Ref<vector<float>> bias) {
  return detail::fold_output_impl<float>(eraser, weight, bias.data(), bias.size(), true);
}
inline fold_report fold_output_side(const orthogonal_eraser& eraser, matrix_ref<double> weight,
                                    Eigen::Ref<vector<double>> bias) {
  return detail::fold_output_impl<double>(eraser, weight, bias.data(), bias.size(), true);
}

inline fold_report fold_input_side(const orthogonal_eraser& eraser, matrix_ref<float> weight) {
  return detail::fold_input_impl<float>("unlearn::fold_input_side", "weight", eraser, weight);
}
inline fold_report fold_input_side(const orthogonal_eraser& eraser, matrix_ref<double> weight) {
  return detail::fold_input_impl<double>("unlearn::fold_input_side", "weight", eraser, weight);
}

inline fold_report fold_embedding_rows(const orthogonal_eraser& eraser,
                                       matrix_ref<float> embedding) {
  return detail::fold_input_impl<float>("unlearn::fold_embedding_rows", "embedding", eraser,
                                        embedding);
}
inline fold_report fold_embedding_rows(const orthogonal_eraser& eraser,
                                       matrix_ref<double> embedding) {
  return detail::fold_input_impl<double>("unlearn::fold_embedding_rows", "embedding", eraser,
                                         embedding);
}

// ----------------------------------------------------------------------------------------------
// LEACE

template <class Derived>
leace_eraser leace_eraser::fit(const Eigen::MatrixBase<Derived>& x,
                               const std::vector<index>& labels, index classes,
                               rank_policy policy) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* fn = "unlearn::leace_eraser::fit";
  const index n = x.rows();
  const index d = x.cols();
  reparam::detail::check(n >= 2, fn, "x has ", n, " samples (rows); at least 2 are needed");
  reparam::detail::check(d >= 1, fn, "x has ", d, " columns");
  reparam::detail::check(classes >= 2, fn, "classes ", classes, " must be >= 2");
  reparam::detail::check(static_cast<index>(labels.size()) == n, fn, "labels has size ",
                         labels.size(), " but x has ", n, " rows");
  detail::check_policy(fn, policy);
  std::vector<index> counts(static_cast<std::size_t>(classes), 0);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    reparam::detail::check(labels[i] >= 0 && labels[i] < classes, fn, "labels[", i, "] ", labels[i],
                           " is not in [0, ", classes, ")");
    ++counts[static_cast<std::size_t>(labels[i])];
  }
  for (index c = 0; c < classes; ++c) {
    reparam::detail::check(counts[static_cast<std::size_t>(c)] > 0, fn, "class ", c,
                           " has no sample");
  }
  detail::check_samples(fn, "x", x);

  // Centred statistics in double (two passes: means, then centred products).
  Eigen::MatrixXd xc = x.template cast<double>();
  const Eigen::RowVectorXd mu = xc.colwise().sum() / static_cast<double>(n);
  xc.rowwise() -= mu;
  const index z_cols = classes - 1;  // the last class is the reference column (see the docs)
  Eigen::MatrixXd zc = Eigen::MatrixXd::Zero(n, z_cols);
  for (index i = 0; i < n; ++i) {
    const index label = labels[static_cast<std::size_t>(i)];
    if (label < z_cols) {
      zc(i, label) = 1.0;
    }
  }
  const Eigen::RowVectorXd z_mean = zc.colwise().sum() / static_cast<double>(n);
  zc.rowwise() -= z_mean;
  const double bessel = 1.0 / static_cast<double>(n - 1);
  Eigen::MatrixXd sigma_xx = bessel * (xc.transpose() * xc);
  sigma_xx = 0.5 * (sigma_xx + sigma_xx.transpose()).eval();  // exactly symmetric
  const Eigen::MatrixXd sigma_xz = bessel * (xc.transpose() * zc);

  // Whitening W = Sigma^{-1/2} and W^+ = Sigma^{1/2} on the mask lambda > lambda_max d eps.
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(sigma_xx);
  const Eigen::VectorXd& lambda = eig.eigenvalues();  // increasing
  const double lambda_max = lambda.size() > 0 ? lambda(lambda.size() - 1) : 0.0;
  const double mask = lambda_max * static_cast<double>(d) * std::numeric_limits<double>::epsilon();
  Eigen::VectorXd inv_sqrt = Eigen::VectorXd::Zero(d);
  Eigen::VectorXd sqrt_l = Eigen::VectorXd::Zero(d);
  for (index i = 0; i < d; ++i) {
    if (lambda_max > 0.0 && lambda(i) > mask) {
      sqrt_l(i) = std::sqrt(lambda(i));
      inv_sqrt(i) = 1.0 / sqrt_l(i);
    }
  }
  const Eigen::MatrixXd& v = eig.eigenvectors();
  const Eigen::MatrixXd whiten = v * inv_sqrt.asDiagonal() * v.transpose();
  const Eigen::MatrixXd unwhiten = v * sqrt_l.asDiagonal() * v.transpose();

  const Eigen::MatrixXd m = whiten * sigma_xz;  // [d, classes - 1]
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(m, Eigen::ComputeThinU);
  const Eigen::VectorXd& sv = svd.singularValues();
  const double tol = detail::relative_tolerance(policy, d, z_cols);
  index k = 0;
  if (sv.size() > 0 && sv(0) > 0.0) {
    while (k < sv.size() && sv(k) > tol * sv(0)) {
      ++k;
    }
  }
  const Eigen::MatrixXd u = svd.matrixU().leftCols(k);  // [d, k]

  leace_eraser out;
  out.r_ = u.transpose() * whiten;      // R = U^T W      [k, d]
  out.l_ = (unwhiten * u).transpose();  // L^T = (W^+ U)^T [k, d]
  out.mean_ = mu.transpose();
  out.r_mean_ = out.r_ * out.mean_;
  return out;
}

inline void leace_eraser::apply_rows(matrix_ref<float> x, row_range rows) const {
  detail::checked_apply_rows("unlearn::leace_eraser::apply_rows", x, rows, dim(), r_.data(),
                             l_.data(), r_mean_.data(), rank(), 1.0);
}

inline void leace_eraser::apply_rows(matrix_ref<double> x, row_range rows) const {
  detail::checked_apply_rows("unlearn::leace_eraser::apply_rows", x, rows, dim(), r_.data(),
                             l_.data(), r_mean_.data(), rank(), 1.0);
}

inline matrix<double> leace_eraser::dense() const {
  matrix<double> p = matrix<double>::Identity(dim(), dim());
  p.noalias() -= l_.transpose() * r_;
  return p;
}

inline vector<double> leace_eraser::offset() const { return l_.transpose() * r_mean_; }

inline projector_diagnostics leace_eraser::diagnostics() const {
  projector_diagnostics out;
  const index k = rank();
  if (k == 0) {
    return out;
  }
  // L = l_^T, R = r_. P^2 - P = L (R L - I) R; ||L A R||_F^2 = tr(A^T (L^T L) A (R R^T)).
  const matrix<double> rl = r_ * l_.transpose();
  const matrix<double> ltl = l_ * l_.transpose();
  const matrix<double> rrt = r_ * r_.transpose();
  const matrix<double> a = rl - matrix<double>::Identity(k, k);
  out.idempotence = detail::sqrt_nonnegative((a.transpose() * ltl * a * rrt).trace());
  // ||LR - (LR)^T||_F^2 = 2 ||LR||_F^2 - 2 tr((LR)^2) = 2 tr(L^T L R R^T) - 2 tr((RL)^2).
  out.symmetry = detail::sqrt_nonnegative(2.0 * (ltl * rrt).trace() - 2.0 * (rl * rl).trace());
  out.orthogonality = a.norm();
  out.rank_removed = k;
  return out;
}

// ----------------------------------------------------------------------------------------------
// INLP

inline orthogonal_eraser intersect_nullspaces(const std::vector<subspace>& removed,
                                              rank_policy policy) {
  constexpr const char* fn = "unlearn::intersect_nullspaces";
  reparam::detail::check(!removed.empty(), fn, "removed is empty");
  const index d = removed.front().dim();
  reparam::detail::check(d >= 1, fn, "removed[0] has dim ", d);
  index total = 0;
  for (std::size_t i = 0; i < removed.size(); ++i) {
    reparam::detail::check(removed[i].dim() == d, fn, "removed[", i, "] has dim ", removed[i].dim(),
                           " but removed[0] has dim ", d);
    reparam::detail::check_finite(fn, "removed[i].directions", removed[i].directions.data(),
                                  removed[i].directions.size());
    total += removed[i].rank();
  }
  detail::check_policy(fn, policy);
  if (total == 0) {
    subspace empty;
    empty.directions.resize(0, d);
    return orthogonal_eraser(std::move(empty));
  }
  matrix<double> stacked(total, d);
  index row = 0;
  for (const subspace& s : removed) {
    stacked.middleRows(row, s.rank()) = s.directions;
    row += s.rank();
  }
  return orthogonal_eraser(orthonormal_basis(stacked, policy));
}

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_DETAIL_PROJECTOR_IMPL_HPP

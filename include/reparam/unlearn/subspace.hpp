// SPDX-License-Identifier: Apache-2.0
// Subspaces for projection unlearning: an orthonormal basis with rank reveal (SVD, one documented
// relative tolerance: never plain QR, which invents directions for rank-deficient input, as MRP's
// zero-row init does), principal subspaces (top-k or energy, centred or not), the deflated
// subspace (forget directions not explained by the retain data: the well-posed form of MRP's
// start), the mean-difference direction (refusal direction / abliteration, accumulated in double)
// and principal angles. Bases are stored as RowMajor [k, d]: row i is the unit direction q_i, so
// the projector onto the span is Q^T Q and a residual vector x (a row) is projected as x Q^T Q.
// Definitions: reparam/unlearn/detail/subspace_impl.hpp (included at the end).
#ifndef REPARAM_UNLEARN_SUBSPACE_HPP
#define REPARAM_UNLEARN_SUBSPACE_HPP

#include <cstdint>
#include <limits>

#include <Eigen/Core>

#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>

namespace reparam::unlearn {

/// The rank policy of every builder: singular values sigma_i <= tolerance * sigma_max are dropped.
/// relative_tolerance < 0 selects the default max(rows, cols) * eps(double) (Eigen's / numpy's
/// matrix_rank convention); the tolerance is always relative, never absolute.
struct rank_policy {
  double relative_tolerance = -1.0;
};

/// An orthonormal basis (rows) and how it was obtained. directions is [k, d] with
/// directions * directions^T = I_k to ~k eps; k may be 0 (the empty subspace: its projector is 0).
struct subspace {
  matrix<double> directions;       ///< [k, d], orthonormal rows
  vector<double> singular_values;  ///< [k] of the kept directions (or their energies), decreasing
  index dropped = 0;               ///< input directions dropped by the rank policy / selection
  double tolerance_used = 0.0;     ///< the absolute threshold sigma_max * relative tolerance
  double retained_energy = 1.0;    ///< sum of kept sigma^2 / sum of all sigma^2 (1 for bases)

  index dim() const noexcept { return directions.cols(); }
  index rank() const noexcept { return directions.rows(); }
};

/// Orthonormal basis of the row space of `vectors` [n, d] (SVD, rank revealed by `policy`). Zero
/// rows, duplicates and n >= d are fine (duplicates add no rank; n >= d may give the whole space).
/// Throws on NaN/Inf, n = 0 or d = 0, or a relative tolerance that is NaN/Inf or >= 1. An
/// all-zero input gives the empty subspace (rank 0, dim d), not e_1. directions are the right
/// singular vectors (decreasing singular value); retained_energy is 1. Allocates; thread safe.
template <class Derived>
subspace orthonormal_basis(const Eigen::MatrixBase<Derived>& vectors, rank_policy policy = {});

/// How many principal directions to keep.
struct selection {
  index top_k = -1;      ///< keep at most top_k (< 0: no count limit)
  double energy = 1.0;   ///< keep the fewest directions whose sigma^2 reach this share, in (0, 1]
  bool centered = true;  ///< subtract the sample mean first (false: uncentred second moment, as
                         ///< ROME/MEMIT/MRP use)
};

/// Principal subspace of samples [n, d] (rows are samples, e.g. hidden states), from the SVD of
/// the (centred) sample matrix accumulated in double. The rank policy is applied first (relative
/// to sigma_max of the (centred) samples), then top_k, then energy (the share is of the sum of all
/// sigma^2; energy = 1 keeps every direction above the tolerance). Throws on NaN/Inf, n = 0, d = 0,
/// or energy outside (0, 1]; top_k = 0 is allowed and gives rank 0, and so do all-equal samples
/// (centred) or all-zero samples. Allocates; thread safe.
template <class Derived>
subspace principal_subspace(const Eigen::MatrixBase<Derived>& samples, selection select = {},
                            rank_policy policy = {});

/// The deflated subspace of MRP's initialisation, well posed: the principal directions of the
/// forget samples after removing the retain principal subspace U_r (chosen by `retain_select`):
/// principal_subspace((I - U_r^T U_r) applied to each forget row, forget_select). Directions the
/// retain data explains are never removed. The forget rank tolerance is relative to sigma_max of
/// the forget samples BEFORE deflation (else the round-off left of directions the retain data
/// explains would be kept as directions). Same errors as principal_subspace, plus d mismatch.
template <class DerivedF, class DerivedR>
subspace deflated_subspace(const Eigen::MatrixBase<DerivedF>& forget,
                           const Eigen::MatrixBase<DerivedR>& retain, selection forget_select,
                           selection retain_select, rank_policy policy = {});

/// mean(a) - mean(b) over rows, accumulated in double (Welford-free two-pass sums), and its unit
/// direction. Throws on empty inputs, NaN/Inf, width mismatch, or a zero difference (the means
/// are equal: there is no direction; "zero" means norm <= 4 d eps (|mean a| + |mean b|), the
/// rounding noise of the sums) - the message gives the norm.
struct mean_difference_result {
  vector<double> difference;  ///< [d]
  vector<double> direction;   ///< [d], unit norm
  double norm = 0.0;
};
template <class DerivedA, class DerivedB>
mean_difference_result mean_difference(const Eigen::MatrixBase<DerivedA>& a,
                                       const Eigen::MatrixBase<DerivedB>& b);

/// Principal angles (radians, increasing, min(k_a, k_b) of them) between two subspaces of the same
/// dimension d: arccos of the singular values of A B^T, with the small angles computed from the
/// sine form for accuracy (Bjorck-Golub): an angle with cos^2 >= 1/2 is asin of the matching
/// singular value of B - (B A^T) A. Empty if either rank is 0. Throws on dimension mismatch.
inline vector<double> principal_angles(const subspace& a, const subspace& b);

/// A random k-dimensional subspace of R^d (Gaussian matrix from Philox(seed), orthonormalised):
/// the control of every unlearning experiment. Row r of the Gaussian matrix uses Philox stream r
/// (Box-Muller), so the result depends only on (d, k, seed). Throws if d < 1, k < 0 or k > d.
inline subspace random_subspace(index d, index k, std::uint64_t seed);

}  // namespace reparam::unlearn

#include <reparam/unlearn/detail/subspace_impl.hpp>

#endif  // REPARAM_UNLEARN_SUBSPACE_HPP

// SPDX-License-Identifier: Apache-2.0
// Projectors in factored form. An orthogonal eraser P = I - Q^T Q is stored as its basis Q [k, d]
// (never as a dense d x d matrix unless dense() is asked for), applied to rows as x - (x Q^T) Q,
// and folded into weights on the output side ((I - Q^T Q) W: the layer can no longer write into
// span Q) or the input side (W (I - Q^T Q): the layer can no longer read it). The oblique LEACE
// eraser (Belrose et al. 2023) r(x) = x - L R (x - mu) with whitening, and the INLP intersection
// of nullspaces (Ravfogel et al. 2020) via Ben-Israel's formula. Every transform reports
// diagnostics: ||P^2 - P||, orthogonality residual, retained energy, ||delta W||.
// Definitions: reparam/unlearn/detail/projector_impl.hpp (included at the end).
#ifndef REPARAM_UNLEARN_PROJECTOR_HPP
#define REPARAM_UNLEARN_PROJECTOR_HPP

#include <vector>

#include <Eigen/Core>

#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {

/// Numbers every projector / fold reports (all in double, Frobenius norms unless noted).
struct projector_diagnostics {
  double idempotence = 0.0;    ///< ||P^2 - P||_F (from the factors; 0 for exact orthonormal Q)
  double symmetry = 0.0;       ///< ||P - P^T||_F (0 for orthogonal, > 0 for oblique LEACE)
  double orthogonality = 0.0;  ///< ||Q Q^T - I_k||_F
  index rank_removed = 0;      ///< rank of I - P
};

/// x -> x - strength (x Q^T) Q: strength 1 is the orthogonal eraser onto the complement of span Q,
/// strength in (0, 1) a partial ablation, 2 a reflection. Holds Q by value (k x d doubles).
/// Immutable after construction: every const member is safe to call concurrently.
class orthogonal_eraser {
 public:
  /// Throws if the subspace's rows are not orthonormal to 1e-10 (max |Q Q^T - I|; re-orthonormalise
  /// with orthonormal_basis first), Q has a non-finite entry, or strength is not finite. A rank-0
  /// subspace gives the identity. Allocates the k x k Gram matrix of the check.
  explicit orthogonal_eraser(subspace basis, double strength = 1.0);

  index dim() const noexcept { return basis_.dim(); }
  index rank() const noexcept { return basis_.rank(); }
  double strength() const noexcept { return strength_; }
  const matrix<double>& basis() const noexcept { return basis_.directions; }

  /// Erases every row in `rows` of x [n, d] in place (float or double; computed in double per row,
  /// rounded once when rank <= apply_block; larger ranks are applied in blocks of apply_block
  /// directions, one rounding per block: exact in exact arithmetic since the rows of Q are
  /// orthonormal). No allocation; safe on disjoint row ranges. Throws on width mismatch or a bad
  /// row range (nothing written). NaN/Inf in x propagate into their own row only.
  void apply_rows(matrix_ref<float> x, row_range rows) const;
  void apply_rows(matrix_ref<double> x, row_range rows) const;

  /// Directions per block of apply_rows (the coefficients of one block live on the stack).
  static constexpr index apply_block = 256;

  /// The dense d x d matrix I - strength Q^T Q (allocates d^2 doubles; for tests and small d).
  matrix<double> dense() const;

  /// From the k x k Gram matrix M = Q Q^T only (O(k^2 d), no d x d matrix): P^2 - P =
  /// Q^T (s^2 M - s I) Q, so ||P^2 - P||_F^2 = tr(A M A M) with A = s^2 M - s I; symmetry is 0.
  projector_diagnostics diagnostics() const;

 private:
  subspace basis_;
  double strength_ = 1.0;
};

/// What a fold changed: the relative Frobenius norm of the change and the energy kept.
struct fold_report {
  double delta_norm = 0.0;       ///< ||W' - W||_F
  double relative_delta = 0.0;   ///< ||W' - W||_F / ||W||_F (0 for W = 0)
  double retained_energy = 1.0;  ///< ||W'||_F^2 / ||W||_F^2
};

/// W [out, in] <- P W, P acting on the output (row) index: out must equal the eraser's dim. For a
/// writer of the residual stream (o_proj, down_proj, embedding^T): the layer can no longer write
/// into span Q. A bias b [out] is projected the same way when given. Computed in double, rounded
/// once; in place. Throws on shape mismatch or non-finite weights/bias (nothing changed).
/// Allocates O(out * in) doubles (offline use); not safe to run concurrently on the same weight.
fold_report fold_output_side(const orthogonal_eraser& eraser, matrix_ref<float> weight);
fold_report fold_output_side(const orthogonal_eraser& eraser, matrix_ref<double> weight);
fold_report fold_output_side(const orthogonal_eraser& eraser, matrix_ref<float> weight,
                             Eigen::Ref<vector<float>> bias);
fold_report fold_output_side(const orthogonal_eraser& eraser, matrix_ref<double> weight,
                             Eigen::Ref<vector<double>> bias);

/// W [out, in] <- W P, P acting on the input (column) index: in must equal the eraser's dim (a
/// reader of the residual stream: wq/wk/wv, w1/w3, the classifier). Same contract.
fold_report fold_input_side(const orthogonal_eraser& eraser, matrix_ref<float> weight);
fold_report fold_input_side(const orthogonal_eraser& eraser, matrix_ref<double> weight);

/// Embedding rows [vocab, d] (a writer whose rows are outputs): E <- E P (P symmetric, so this is
/// (P E^T)^T, the output-side fold of E^T). With a classifier tied to E, the logits x E^T become
/// x P E^T as well. Same contract.
fold_report fold_embedding_rows(const orthogonal_eraser& eraser, matrix_ref<float> embedding);
fold_report fold_embedding_rows(const orthogonal_eraser& eraser, matrix_ref<double> embedding);

/// LEACE (least-squares concept erasure, Belrose et al. 2023, "LEACE: Perfect linear concept
/// erasure in closed form", Theorem 4.3): from samples x [n, d] and class labels (0..classes-1,
/// one-hot internally with the last class as the reference column: the centred one-hot columns sum
/// to zero, so classes - 1 of them span the same space and rank(I - P) <= classes - 1 holds by
/// construction), the affine eraser r(x) = x - L R (x - mu) with L = W^+ U, R = U^T W,
/// W = Sigma_xx^{-1/2} (eigenvalues <= lambda_max d eps masked, the pinv convention; W^+ =
/// Sigma_xx^{1/2} on the same mask), U the left singular vectors of W Sigma_xz above the rank
/// policy's relative tolerance (default max(d, classes - 1) eps; never the reference code's
/// absolute 0.01). Covariances are centred with the Bessel 1/(n - 1), no shrinkage, accumulated in
/// double. Guarantees (tested): class means equal after erasure; a least-squares linear probe on
/// erased data has slope ~0 (no better than the constant); rank(I - P) <= classes - 1. Throws on
/// fewer than 2 samples, classes < 2, labels.size() != n, a label outside [0, classes), a class
/// with no sample, NaN/Inf, d = 0. Constant x gives rank 0 (the identity).
class leace_eraser {
 public:
  /// Allocates O(d^2) doubles (covariance, eigendecomposition); thread safe.
  template <class Derived>
  static leace_eraser fit(const Eigen::MatrixBase<Derived>& x, const std::vector<index>& labels,
                          index classes, rank_policy policy = {});

  index dim() const noexcept { return mean_.size(); }
  index rank() const noexcept { return r_.rows(); }
  /// r(x) for every row in `rows` of x [n, d], in place, computed in double (rounded once when
  /// rank <= orthogonal_eraser::apply_block). No allocation; safe on disjoint row ranges. Throws on
  /// width mismatch or a bad row range (nothing written).
  void apply_rows(matrix_ref<float> x, row_range rows) const;
  void apply_rows(matrix_ref<double> x, row_range rows) const;
  /// The oblique P = I - L R and the affine offset L R mu (column vectors: r(x) = P x + L R mu; a
  /// row x maps to x P^T + offset^T). Allocate.
  matrix<double> dense() const;
  vector<double> offset() const;
  /// From k x k products only: idempotence ||L (R L - I) R||_F, symmetry ||L R - R^T L^T||_F,
  /// orthogonality ||R L - I_k||_F (biorthogonality of the factors), rank_removed = k.
  projector_diagnostics diagnostics() const;

 private:
  matrix<double> r_;       // [k, d] rows of R
  matrix<double> l_;       // [k, d] rows of L^T
  vector<double> r_mean_;  // [k] R mu
  vector<double> mean_;    // [d] mu
};

/// INLP's final projector: the orthogonal projection onto the intersection of the nullspaces of
/// the given subspaces (e.g. rowspaces of successive linear classifiers), computed as
/// I - P_R(sum_i Q_i^T Q_i) (Ben-Israel), which is exact even when the classifiers are not
/// mutually orthogonal (the product of the individual projectors is not). Returns the eraser of
/// the union's span. Throws on dimension mismatch or an empty list.
/// Implementation: range(sum Q_i^T Q_i) is the row space of the stacked bases [Q_1; Q_2; ...],
/// whose orthonormal_basis (SVD, `policy`) is taken directly: its singular values are the square
/// roots of the eigenvalues of the sum, so the rank decision is not squared into round-off.
/// Subspaces of rank 0 are allowed (they remove nothing). Allocates; thread safe.
inline orthogonal_eraser intersect_nullspaces(const std::vector<subspace>& removed,
                                              rank_policy policy = {});

}  // namespace reparam::unlearn

#include <reparam/unlearn/detail/projector_impl.hpp>

#endif  // REPARAM_UNLEARN_PROJECTOR_HPP

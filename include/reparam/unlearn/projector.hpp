// SPDX-License-Identifier: Apache-2.0
// Projectors in factored form. An orthogonal eraser P = I - Q^T Q is stored as its basis Q [k, d]
// (never as a dense d x d matrix unless dense() is asked for), applied to rows as x - (x Q^T) Q,
// and folded into weights on the output side ((I - Q^T Q) W: the layer can no longer write into
// span Q) or the input side (W (I - Q^T Q): the layer can no longer read it). The oblique LEACE
// eraser (Belrose et al. 2023) r(x) = x - L R (x - mu) with whitening, and the INLP intersection
// of nullspaces (Ravfogel et al. 2020) via Ben-Israel's formula. Every transform reports
// diagnostics: ||P^2 - P||, orthogonality residual, retained energy, ||delta W||.
// DRAFT CONTRACT (wip/unlearn): declarations and docs only.
#ifndef REPARAM_UNLEARN_PROJECTOR_HPP
#define REPARAM_UNLEARN_PROJECTOR_HPP

#include <vector>

#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {

/// Numbers every projector / fold reports (all in double, Frobenius norms unless noted).
struct projector_diagnostics {
  double idempotence = 0.0;     ///< ||P^2 - P||_F (from the factors; 0 for exact orthonormal Q)
  double symmetry = 0.0;        ///< ||P - P^T||_F (0 for orthogonal, > 0 for oblique LEACE)
  double orthogonality = 0.0;   ///< ||Q Q^T - I_k||_F
  index rank_removed = 0;       ///< rank of I - P
};

/// x -> x - strength (x Q^T) Q: strength 1 is the orthogonal eraser onto the complement of span Q,
/// strength in (0, 1) a partial ablation, 2 a reflection. Holds Q by value (k x d doubles).
class orthogonal_eraser {
 public:
  /// Throws if the subspace's rows are not orthonormal to 1e-10 (re-orthonormalise with
  /// orthonormal_basis first) or strength is not finite.
  explicit orthogonal_eraser(subspace basis, double strength = 1.0);

  index dim() const noexcept;
  index rank() const noexcept;
  double strength() const noexcept;
  const matrix<double>& basis() const noexcept;

  /// Erases every row in `rows` of x [n, d] in place (float or double; computed in double per row,
  /// rounded once). No allocation. Throws on width mismatch.
  template <class T>
  void apply_rows(matrix_ref<T> x, row_range rows) const;

  /// The dense d x d matrix I - strength Q^T Q (allocates d^2 doubles; for tests and small d).
  matrix<double> dense() const;

  projector_diagnostics diagnostics() const;
};

/// What a fold changed: the relative Frobenius norm of the change and the energy kept.
struct fold_report {
  double delta_norm = 0.0;         ///< ||W' - W||_F
  double relative_delta = 0.0;     ///< ||W' - W||_F / ||W||_F (0 for W = 0)
  double retained_energy = 1.0;    ///< ||W'||_F^2 / ||W||_F^2
};

/// W [out, in] <- P W, P acting on the output (row) index: out must equal the eraser's dim. For a
/// writer of the residual stream (o_proj, down_proj, embedding^T): the layer can no longer write
/// into span Q. A bias b [out] is projected the same way when given (non-empty). Computed in
/// double, rounded once; in place. Throws on shape mismatch or non-finite weights (nothing changed).
template <class T>
fold_report fold_output_side(const orthogonal_eraser& eraser, matrix_ref<T> weight,
                             Eigen::Ref<vector<T>> bias = vector<T>());

/// W [out, in] <- W P, P acting on the input (column) index: in must equal the eraser's dim (a
/// reader of the residual stream: wq/wk/wv, w1/w3, the classifier). Same contract.
template <class T>
fold_report fold_input_side(const orthogonal_eraser& eraser, matrix_ref<T> weight);

/// Embedding rows [vocab, d] (a writer whose rows are outputs): E <- E P. Same contract.
template <class T>
fold_report fold_embedding_rows(const orthogonal_eraser& eraser, matrix_ref<T> embedding);

/// LEACE (least-squares concept erasure): from samples x [n, d] and class labels z (0..classes-1,
/// one-hot internally) or a scalar concept value per sample, the affine eraser r(x) = x - L R (x -
/// mu) with L = W^+ U, R = U^T W, W = Sigma_xx^{-1/2} (eigenvalues <= lambda_max d eps masked, the
/// pinv convention), U the left singular vectors of W Sigma_xz above the rank policy's relative
/// tolerance. Guarantees (tested): class means equal after erasure; no linear probe beats the
/// constant predictor; rank(I - P) <= classes - 1. Statistics in double. Throws on fewer than 2
/// samples, a label outside [0, classes), a class with no sample, NaN/Inf.
class leace_eraser {
 public:
  template <class Derived>
  static leace_eraser fit(const Eigen::MatrixBase<Derived>& x, const std::vector<index>& labels,
                          index classes, rank_policy policy = {});

  index dim() const noexcept;
  index rank() const noexcept;
  /// r(x) for every row in `rows` of x, in place. No allocation.
  template <class T>
  void apply_rows(matrix_ref<T> x, row_range rows) const;
  /// The oblique P = I - L R and the affine offset L R mu (r(x) = P x + L R mu).
  matrix<double> dense() const;
  vector<double> offset() const;
  projector_diagnostics diagnostics() const;
};

/// INLP's final projector: the orthogonal projection onto the intersection of the nullspaces of
/// the given subspaces (e.g. rowspaces of successive linear classifiers), computed as
/// I - P_R(sum_i Q_i^T Q_i) (Ben-Israel), which is exact even when the classifiers are not
/// mutually orthogonal (the product of the individual projectors is not). Returns the eraser of
/// the union's span. Throws on dimension mismatch or an empty list.
orthogonal_eraser intersect_nullspaces(const std::vector<subspace>& removed,
                                       rank_policy policy = {});

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_PROJECTOR_HPP

// SPDX-License-Identifier: Apache-2.0
// Closed-form least-squares weight editors. One solver covers UCE / RECE / MEMIT-style edits:
//   W' = argmin sum_i s_i ||W c_i - v_i||^2 + lambda ||W - W0||_F^2
//      = (lambda W0 + sum_i s_i v_i c_i^T)(lambda I + sum_i s_i c_i c_i^T)^-1,
// solved in double with Cholesky (LLT; LDLT fallback, never an explicit inverse), with lambda
// relative to tr(C)/d by default; the push-through form (n << d: O(n^2 d + n^3)); the minimum-norm
// pseudo-inverse edit (lambda -> 0: Delta W = (V - W0 K) K^+); the low-rank (STAMP-like) variant
// O(r^3 + r^2 d); and ROME's rank-one edit with an uncentred key second moment C (shared with the
// shift-add calibration accumulator, core/second_moment.hpp). Keys and values are rows:
// keys [n, d_in], values [n, d_out], weights RowMajor [d_out, d_in].
// DRAFT CONTRACT (wip/unlearn): declarations and docs only.
#ifndef REPARAM_UNLEARN_EDITOR_HPP
#define REPARAM_UNLEARN_EDITOR_HPP

#include <reparam/core/second_moment.hpp>
#include <reparam/core/views.hpp>

namespace reparam::unlearn {

/// Diagnostics of an edit.
struct edit_report {
  double delta_norm = 0.0;        ///< ||W' - W0||_F
  double residual = 0.0;          ///< sqrt(sum s_i ||W' c_i - v_i||^2)
  double condition = 0.0;         ///< condition number of the solved system (2-norm estimate)
  double lambda_used = 0.0;
  index effective_rank = 0;       ///< of the key matrix under the rank policy
  bool push_through = false;      ///< which form was used
};

struct ls_edit_options {
  double lambda = -1.0;           ///< < 0: relative_lambda * tr(sum s c c^T) / d_in
  double relative_lambda = 1e-2;
  /// Key weights s_i (empty: all 1). UCE's erase/preserve scales are per-row weights here.
  vector<double> sample_weights;
  /// Prior second moment added to the normal equations (MEMIT's lambda C with C = E[k k^T]);
  /// null: lambda I.
  const second_moment* prior = nullptr;
  double prior_weight = 0.0;
};

/// W' for the objective above. Chooses the push-through form when n < d_in / 2 (identical result
/// to rounding; both are tested against each other and against a brute-force lstsq oracle).
/// Throws on shape mismatch, NaN/Inf, negative weights, or a singular system (lambda = 0 with
/// rank-deficient keys: the message gives the effective rank; use min_norm_edit instead).
template <class T>
edit_report least_squares_edit(const matrix<T>& w0, const matrix<double>& keys,
                               const matrix<double>& values, matrix<T>& out,
                               const ls_edit_options& options = {});

/// Minimum-Frobenius-norm change with W' K^T = V^T exactly when consistent: Delta W = (V^T - W0
/// K^T) (K^T)^+ by SVD with the rank policy (rank-deficient keys are fine: duplicates, zero rows).
template <class T>
edit_report min_norm_edit(const matrix<T>& w0, const matrix<double>& keys,
                          const matrix<double>& values, matrix<T>& out, double relative_tolerance = -1.0);

/// Low-rank variant: restrict the edit to the top-r right singular directions of the keys
/// (O(r^3 + r^2 d)); r >= rank gives min_norm_edit.
template <class T>
edit_report low_rank_edit(const matrix<T>& w0, const matrix<double>& keys,
                          const matrix<double>& values, index r, matrix<T>& out);

/// ROME: Delta W = (v* - W0 k*) (C^-1 k*)^T / (k*^T C^-1 k*) with C the uncentred key second
/// moment (finalised from `keys_moment`, solved by Cholesky with a relative ridge if needed).
template <class T>
edit_report rome_edit(const matrix<T>& w0, const vector<double>& key, const vector<double>& value,
                      const second_moment& keys_moment, matrix<T>& out, double relative_ridge = 0.0);

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_EDITOR_HPP

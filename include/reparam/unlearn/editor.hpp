// SPDX-License-Identifier: Apache-2.0
// Closed-form least-squares weight editors. One solver covers UCE / RECE / MEMIT-style edits:
//   W' = argmin sum_i s_i ||W c_i - v_i||^2 + lambda ||W - W0||_F^2
//      = (lambda W0 + sum_i s_i v_i c_i^T)(lambda I + sum_i s_i c_i c_i^T)^-1,
// solved in double with Cholesky (LLT; LDLT fallback, never an explicit inverse), with lambda
// relative to tr(C)/d by default; the push-through form (n << d: O(n^2 d + n^3)); the minimum-norm
// pseudo-inverse edit (lambda -> 0: Delta W = (V - W0 K) K^+); the low-rank (STAMP-like) variant;
// and ROME's rank-one edit with an uncentred key second moment C (shared with the shift-add
// calibration accumulator, core/second_moment.hpp). Keys and values are rows:
// keys [n, d_in], values [n, d_out], weights RowMajor [d_out, d_in].
// Definitions: reparam/unlearn/detail/editor_impl.hpp (included at the end).
#ifndef REPARAM_UNLEARN_EDITOR_HPP
#define REPARAM_UNLEARN_EDITOR_HPP

#include <reparam/core/index.hpp>
#include <reparam/core/second_moment.hpp>
#include <reparam/core/views.hpp>

namespace reparam::unlearn {

/// Diagnostics of an edit.
struct edit_report {
  double delta_norm = 0.0;    ///< ||W' - W0||_F (of the stored, cast result)
  double residual = 0.0;      ///< sqrt(sum s_i ||W' c_i - v_i||^2) (of the stored result)
  double condition = 0.0;     ///< condition number of the solved system: 1-norm estimate from the
                              ///< factorisation (least_squares_edit), sigma_max / sigma_min of the
                              ///< kept singular values (min_norm_edit, low_rank_edit), exact 2-norm
                              ///< of the ridged C (rome_edit)
  double lambda_used = 0.0;   ///< the absolute ridge (least_squares_edit, rome_edit), 0 otherwise
  index effective_rank = 0;   ///< of the (weighted) key matrix (of C for rome_edit) under the
                              ///< default rank policy max(rows, cols) eps sigma_max
  bool push_through = false;  ///< which form was used
};

/// Which algebraic form least_squares_edit solves (the result is the same up to rounding).
enum class ls_form {
  automatic,     ///< push-through when there is no prior and n < d_in / 2, direct otherwise
  direct,        ///< d_in x d_in system lambda I (+ prior) + K^T S K
  push_through,  ///< n x n system S^1/2 K K^T S^1/2 + lambda I_n (no prior allowed)
};

struct ls_edit_options {
  double lambda = -1.0;  ///< < 0: relative_lambda * tr(sum s c c^T) / d_in
  double relative_lambda = 1e-2;
  /// Key weights s_i (empty: all 1). UCE's erase/preserve scales are per-row weights here.
  vector<double> sample_weights;
  /// Prior second moment added to the normal equations (MEMIT's lambda C with C = E[k k^T]): the
  /// system becomes lambda I + prior_weight * prior->mean() + K^T S K, i.e. the penalty is
  /// lambda ||dW||_F^2 + prior_weight tr(dW C dW^T). null: lambda I only.
  const second_moment* prior = nullptr;
  double prior_weight = 0.0;
  ls_form form = ls_form::automatic;
};

/// W' for the objective above, solved for dW = W' - W0 in double (dW A = R^T S K with
/// R = V - K W0^T, A the system above) and cast once to T. The push-through form is chosen when
/// there is no prior and n < d_in / 2 (identical result to rounding; both are tested against each
/// other and against a brute-force lstsq oracle).
/// Throws reparam::error (naming the function, argument and values; `out` is untouched) on empty
/// or mismatched shapes, NaN/Inf anywhere, negative sample weights, a non-finite lambda,
/// relative_lambda / prior_weight negative or non-finite, a prior of the wrong dim or without
/// samples, a forced push-through form with a prior, or a singular system (lambda = 0 with
/// rank-deficient keys: reciprocal condition <= d eps; the message gives the effective rank: use
/// min_norm_edit instead; all-zero weighted keys under the relative default give lambda = 0 and
/// this error). Allocates O(d_in^2 + n d) doubles (push-through: O(n^2 + n d)); thread safe.
template <class T>
edit_report least_squares_edit(const matrix<T>& w0, const matrix<double>& keys,
                               const matrix<double>& values, matrix<T>& out,
                               const ls_edit_options& options = {});

/// Minimum-Frobenius-norm change with W' K^T = V^T exactly when consistent: Delta W = (V^T - W0
/// K^T) (K^T)^+ by SVD, singular values <= relative_tolerance * sigma_max dropped (< 0: the
/// default max(n, d_in) eps; rank-deficient keys are fine: duplicates, zero rows; all-zero keys
/// give W' = W0). When inconsistent, the least-squares fit of minimum change. Throws (out
/// untouched) on empty or mismatched shapes, NaN/Inf, or a tolerance that is NaN/Inf or >= 1.
/// Allocates; thread safe.
template <class T>
edit_report min_norm_edit(const matrix<T>& w0, const matrix<double>& keys,
                          const matrix<double>& values, matrix<T>& out,
                          double relative_tolerance = -1.0);

/// Low-rank variant: restrict the edit to the top-r right singular directions of the keys
/// (Delta W = R^T U_r Sigma_r^-1 V_r^T); r >= effective rank gives min_norm_edit. Computed from a
/// thin SVD of the n x d_in keys, O(n^2 d_in + n^3) for n <= d_in: in STAMP's single-sample
/// setting (n = the prompt's tokens = the rank) this is the paper's O(r^3 + r^2 d), never the
/// O(d^3) of the full-space form. Many keys with a small r (n >> r) would want a randomized
/// sketch instead, which is not implemented. Throws like min_norm_edit, plus r < 1.
template <class T>
edit_report low_rank_edit(const matrix<T>& w0, const matrix<double>& keys,
                          const matrix<double>& values, index r, matrix<T>& out);

/// ROME: Delta W = (v* - W0 k*) (C^-1 k*)^T / (k*^T C^-1 k*) with C = keys_moment.mean() the
/// uncentred key second moment, plus relative_ridge * tr(C) / d I, solved by Cholesky (LDLT
/// fallback). Then W' k* = v* exactly (to rounding). Throws (out untouched) on shape mismatch,
/// NaN/Inf, an empty moment, relative_ridge negative or non-finite, k* = 0, or a singular C
/// (reciprocal condition <= d eps: the message gives the effective rank and suggests a ridge).
/// Allocates O(d_in^2); thread safe.
template <class T>
edit_report rome_edit(const matrix<T>& w0, const vector<double>& key, const vector<double>& value,
                      const second_moment& keys_moment, matrix<T>& out,
                      double relative_ridge = 0.0);

}  // namespace reparam::unlearn

#include <reparam/unlearn/detail/editor_impl.hpp>

#endif  // REPARAM_UNLEARN_EDITOR_HPP

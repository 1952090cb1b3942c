// SPDX-License-Identifier: Apache-2.0
// Projection model merging and merge protection: OPCM continual merging (arXiv 2501.09522, as
// tanganke/opcm executes it), which folds task models into one merged model as they arrive in
// constant memory, and MergeLock-style invertible attention transforms (arXiv 2509.01548), which
// rewrite the Q/K/V/O weights of an attention layer so its function is unchanged but averaging the
// weights with another fine-tune of the same base model no longer works. Weights are RowMajor
// [out, in] (HF nn.Linear). Definitions: reparam/unlearn/detail/merge_impl.hpp (included at the
// end).
#ifndef REPARAM_UNLEARN_MERGE_HPP
#define REPARAM_UNLEARN_MERGE_HPP

#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {

// ------------------------------------------------------------------------------------------------
// OPCM: orthogonal-projection continual merging (Tang et al., arXiv 2501.09522, section 3;
// tanganke/opcm@f083162 fusion_bench/method/opcm/opcm.py). With tau = W - W0 (task vectors):
//
//   model 1:  S_1 = tau_1                                   (the merged model is the first model)
//   model t:  for a linear weight, SVD S_{t-1} = U diag(s) V^T (s decreasing), then
//               k = the first 0-based index i with cumsum(s)_i / sum(s) > alpha
//               T = U^T tau_t V,  T[:k, :k] = 0,  tau_t' = U T V^T
//                 (= tau_t - U_k (U_k^T tau_t V_k) V_k^T: tau_t' has no component on the leading k
//                  singular pairs of the merged task vector; the rest of tau_t is kept)
//             for any other tensor tau_t' = tau_t;   S_t = S_{t-1} + tau_t'
//             (the reference takes a full SVD; only the leading r <= min(out, in) pairs are ever
//              touched, so a thin SVD in double gives the same tau_t')
//   merged:   W_t = W0 + S_t * mean_i ||tau_i|| / ||S_t||   (global L2 norms over ALL tensors)
//
// This is the reference's update W <- W0 + (lambda_{t-1} tau_prev + tau_t') / lambda_t run with
// lambda_t = 1 in the pass and the whole merged task vector rescaled afterwards, because
// lambda_{t-1} tau_prev = S_{t-1} (lambda_{t-1} = ||S_{t-1}|| / mean norm undoes the last rescale)
// and a positive scale of S_{t-1} changes neither U, V nor cumsum(s) / sum(s). The state is W0 (a
// copy, in Scalar), S (double) and the running sum of norms: memory does not grow with t. The
// reference keeps the rescaled merged model in its storage type between steps; S here is exact
// double, so results agree with it to storage rounding.
//
// Decisions where the reference is silent or odd (each pinned by a test):
// - Diagonal. tanganke/opcm calls T.diag().fill_(0), and torch.diag on a 2-D tensor returns a
//   copy (pytorch/pytorch#6479), so it removes nothing: the default keeps the diagonal beyond k
//   (as executed). zero_diagonal = true also removes T_ii for k <= i < r (the apparent intent; the
//   later fusion_bench opcm.py writes .diagonal().fill_(0), a view, and does remove it). Pairs
//   beyond the numerical rank r of S_{t-1} are not determined by the SVD, so they are never used.
// - k never exceeds r. If no index passes the threshold (alpha = 1, up to rounding) k = r: every
//   direction of S_{t-1} is protected (the continuous limit alpha -> 1). The reference's argmax
//   returns 0 there and protects nothing; for alpha < 1 the two definitions agree.
// - A tensor with S_{t-1} = 0 (the first model left it at W0) has r = 0: tau_t is added whole
//   (the reference's 0/0 = NaN threshold also gives k = 0).
// - Non-linear tensors are summed, then rescaled with everything (as executed; not a mean).
// - If every task vector so far is 0 the merged model is W0 (scale 1). If S_t vanishes while the
//   mean norm does not (a later task cancels the merged one), no direction exists to rescale:
//   add() throws (the reference would write NaN).
// Exactly tied singular values at the boundary k make the split basis dependent (as in the
// reference); random or trained weights do not have them.
// ------------------------------------------------------------------------------------------------

/// How a tensor takes part in OPCM merging.
enum class merge_role : std::uint8_t {
  linear,  ///< a linear weight [out, in]: its task vector is projected
  other,   ///< biases, norm gains, embeddings, ...: its task vector is added whole
};

/// A read-only view of one tensor of a model and its role. 1-D tensors are [1, n] (or [n, 1]).
template <class Scalar>
struct merge_tensor {
  const_matrix_map<Scalar> weights;
  merge_role role = merge_role::other;
};

/// Views `weights` (stored data: a reparam::matrix, a row_major_map, a row block, or a vector,
/// viewed as [1, n]) as a merge_tensor. No copy: the data must outlive the call that uses it.
template <class Derived>
merge_tensor<typename Derived::Scalar> as_merge_tensor(const Eigen::MatrixBase<Derived>& weights,
                                                       merge_role role);

struct opcm_params {
  double alpha = 0.5;  ///< energy threshold in (0, 1] on cumsum(s) / sum(s) (the reference's)
  bool zero_diagonal = false;  ///< false: as executed (T_ii kept for i >= k); true: also remove
                               ///< T_ii for k <= i < r (the apparent intent; fusion_bench's code)
  rank_policy policy = {};     ///< the numerical rank r of S_{t-1}: s_i > tol * s_0
};

/// What add() did to one tensor.
struct opcm_tensor_report {
  merge_role role = merge_role::other;
  index protected_rank = 0;      ///< k: leading singular pairs of S_{t-1} removed from tau_t
  index merged_rank = 0;         ///< r: numerical rank of S_{t-1} (0 for the first model / other)
  double protected_share = 0.0;  ///< sum_{i<k} s_i / sum(s) (<= alpha): the energy fraction held
                                 ///< by the protected directions (0 if k = 0)
  double task_norm = 0.0;        ///< ||tau_t||_F of this tensor
  double projected_norm = 0.0;   ///< ||tau_t'||_F (= task_norm for other tensors)
  double removed_norm = 0.0;     ///< ||tau_t - tau_t'||_F
};

/// What add() did to the model.
struct opcm_report {
  index model = 0;  ///< models merged so far, this one included (1-based)
  std::vector<opcm_tensor_report> tensors;
  double task_norm = 0.0;       ///< ||tau_t|| over all tensors
  double mean_task_norm = 0.0;  ///< mean_i ||tau_i|| over the models so far: ||W_t - W0||
  double merged_norm = 0.0;     ///< ||S_t|| before the rescale
  double scale = 1.0;           ///< mean_task_norm / merged_norm (1 when both are 0)
  double lambda = 1.0;          ///< the reference's lambda_t = merged_norm / mean_task_norm
};

/// OPCM continual merger over a fixed list of tensors (same order, shapes and roles every call).
/// Not thread safe for add(); the const members may run concurrently with each other.
template <class Scalar>
class opcm_merger {
 public:
  /// Copies the pre-trained tensors W0 and their roles. Throws reparam::error naming
  /// "unlearn::opcm_merger" on an empty list, an empty tensor, NaN/Inf values, alpha not in
  /// (0, 1] (NaN included) or a bad rank policy. Allocates the state (W0 in Scalar, S in double).
  explicit opcm_merger(const std::vector<merge_tensor<Scalar>>& base, opcm_params params = {});

  /// Merges one task model (its tensors in the base's order, with the base's shapes and roles).
  /// Checks everything first: a count, role or shape mismatch, NaN/Inf values, or a merged task
  /// vector that vanishes (see above) throws reparam::error naming "unlearn::opcm_merger::add" and
  /// the argument, and leaves the merger unchanged. Allocates (an SVD per linear tensor, in
  /// double, O(out in min(out, in)); temporaries the size of the model in double).
  opcm_report add(const std::vector<merge_tensor<Scalar>>& model);

  /// Writes merged tensor `tensor`, W0 + scale * S rounded once to Scalar (W0 before any model).
  /// Throws on a bad index or an `out` of the wrong shape (out untouched). No allocation.
  void merged(index tensor, matrix_ref<Scalar> out) const;

  /// All merged tensors. Allocates.
  std::vector<matrix<Scalar>> make_merged() const;

  /// The unscaled merged task vector S_t of `tensor` (double). Throws on a bad index.
  const matrix<double>& task_sum(index tensor) const;

  index models() const noexcept { return models_; }
  index tensors() const noexcept { return static_cast<index>(base_.size()); }
  const opcm_params& params() const noexcept { return params_; }
  /// mean_i ||tau_i|| (0 before the first model).
  double mean_task_norm() const noexcept;
  /// The current rescale factor of S (1 before the first model).
  double scale() const noexcept { return scale_; }

 private:
  opcm_params params_;
  std::vector<matrix<Scalar>> base_;
  std::vector<merge_role> roles_;
  std::vector<matrix<double>> sum_;
  double norm_sum_ = 0.0;
  double base_norm_ = 0.0;
  double scale_ = 1.0;
  index models_ = 0;
};

// ------------------------------------------------------------------------------------------------
// MergeLock-style function-preserving attention transforms (arXiv 2509.01548: "randomly sample two
// pairs of invertible matrices and apply them to the Query-Key and Value-Output branches"; the
// paper's method text and code were not available, this is the algebra of its abstract). With
// heads of head_dim rows and kv group g = h / (n_heads / n_kv_heads) for query head h (the HF
// repeat_kv and llama2.c mapping):
//
//   W_Q^h <- A_g^T W_Q^h,   b_Q^h <- A_g^T b_Q^h       (every query head h of group g)
//   W_K^g <- A_g^-1 W_K^g,  b_K^g <- A_g^-1 b_K^g      so q'^T k' = q^T A_g A_g^-1 k = q^T k
//   W_V^g <- B_g W_V^g,     b_V^g <- B_g b_V^g
//   W_O[:, cols of h] <- W_O[:, cols of h] B_g^-1       (every query head h of group g)
//
// The softmax weights sum to 1, so a value bias passes through B_g and B_g^-1 unchanged; the
// softmax scale and W_O's bias are untouched. With RoPE the scores are q^T A R(s - p) A^-1 k, so
// A_g must commute with every position rotation: A_g is block diagonal with a scaled rotation
// s_i R(phi_i) on each frequency pair (in the pairing's coordinates). Without RoPE A_g and always
// B_g are general: U diag(sigma) V^T with Haar-random orthogonal U, V. QK-norm layers (a norm on q
// or k per head) break the QK invariance: do not lock such models' QK branch with this function.
//
// Draws (deterministic in (layout, params)): Philox stream 2g for A_g, 2g + 1 for B_g, key = seed.
// Gaussian entries by Box-Muller; U, V from the QR of a Gaussian matrix with diag(R) > 0; sigma_i
// and s_i log-uniform in [kappa_max^-1/2, kappa_max^1/2] (geometric mean 1, so the weights keep
// their scale); phi_i uniform in [0, 2 pi). So kappa_2(A_g), kappa_2(B_g) <= kappa_max. Inverses
// are the closed forms V diag(1/sigma) U^T and s_i^-1 R(-phi_i); everything is computed in double
// and rounded once to Scalar, so the output changes by ~kappa eps(Scalar) relative.
// ------------------------------------------------------------------------------------------------

/// Which coordinates RoPE rotates together within a head.
enum class rope_pairing : std::uint8_t {
  none,         ///< no rotary embedding (A_g may be any invertible matrix)
  interleaved,  ///< pairs (2i, 2i + 1): llama2.c, GPT-J, the repo's runner (examples/runner)
  half_split,   ///< pairs (i, i + head_dim / 2): HF transformers' rotate_half (Llama, Qwen, ...)
};

/// Head layout of one attention layer: wq [n_heads * head_dim, d], wk and wv
/// [n_kv_heads * head_dim, d], wo [d, n_heads * head_dim]. n_kv_heads = n_heads is MHA,
/// 1 < n_kv_heads < n_heads GQA, 1 MQA.
struct attention_layout {
  index n_heads = 0;
  index n_kv_heads = 0;
  index head_dim = 0;
  rope_pairing rope = rope_pairing::none;
};

struct lock_params {
  double kappa_max = 10.0;  ///< condition-number bound of every A_g and B_g, in [1, 0.01 / eps]
  std::uint64_t seed = 0;   ///< use a different seed for every layer
};

/// A bias to transform in place (null and size 0: absent).
template <class Scalar>
struct bias_span {
  Scalar* data = nullptr;
  index size = 0;
};

/// Optional q/k/v biases: q [n_heads * head_dim], k and v [n_kv_heads * head_dim].
template <class Scalar>
struct qkv_biases {
  bias_span<Scalar> q;
  bias_span<Scalar> k;
  bias_span<Scalar> v;
};

/// The drawn matrices of one layer: per kv group, [head_dim, head_dim] each, in double.
struct lock_matrices {
  std::vector<matrix<double>> qk;          ///< A_g
  std::vector<matrix<double>> qk_inverse;  ///< A_g^-1
  std::vector<matrix<double>> vo;          ///< B_g
  std::vector<matrix<double>> vo_inverse;  ///< B_g^-1
  std::vector<double> qk_condition;        ///< kappa_2(A_g) (max / min of the drawn sigma or s)
  std::vector<double> vo_condition;        ///< kappa_2(B_g)
  double inverse_residual = 0.0;           ///< max_g of ||M M^-1 - I||_max over all A_g, B_g
};

/// Draws the matrices lock_attention(layout, params) applies. Throws reparam::error naming
/// "unlearn::make_lock_matrices" on a bad layout (heads or head_dim < 1, n_heads not a multiple
/// of n_kv_heads, odd head_dim with RoPE) or kappa_max < 1, NaN/Inf or > 0.01 / eps(double).
/// Allocates; thread safe.
inline lock_matrices make_lock_matrices(const attention_layout& layout,
                                        const lock_params& params = {});

/// Diagnostics of lock_attention.
struct lock_report {
  std::vector<double> qk_condition;  ///< per kv group, kappa_2(A_g)
  std::vector<double> vo_condition;  ///< per kv group, kappa_2(B_g)
  double inverse_residual = 0.0;     ///< as in lock_matrices
  double wq_change = 0.0;            ///< ||W' - W||_F / ||W||_F of the stored result (0 if W = 0)
  double wk_change = 0.0;
  double wv_change = 0.0;
  double wo_change = 0.0;
  double bq_change = 0.0;  ///< same for the biases (0 if absent)
  double bk_change = 0.0;
  double bv_change = 0.0;
};

/// Rewrites wq, wk, wv, wo (and the given biases) of one attention layer in place with the
/// matrices of make_lock_matrices(layout, params), so the layer's output is unchanged up to
/// ~kappa eps(Scalar) relative while the weights move far (||W' - W|| / ||W|| of order 1).
/// Preconditions checked before anything is written (reparam::error naming
/// "unlearn::lock_attention" and the argument, nothing modified): the layout and kappa_max as
/// above, with kappa_max <= 0.01 / eps(Scalar) (8.4e4 for float: beyond it rounding alone moves
/// the output by more than 1 %); the shapes above (d = wq.cols() = wk.cols() = wv.cols() =
/// wo.rows()); bias sizes; NaN/Inf in any weight or bias; a result that could overflow Scalar.
/// Allocates O(head_dim * (d + head_dim) * n_kv_heads) doubles; not thread safe on the same
/// weights; O(d * n_heads * head_dim^2) flops.
inline lock_report lock_attention(matrix_ref<float> wq, matrix_ref<float> wk, matrix_ref<float> wv,
                                  matrix_ref<float> wo, const attention_layout& layout,
                                  const lock_params& params = {}, qkv_biases<float> biases = {});
inline lock_report lock_attention(matrix_ref<double> wq, matrix_ref<double> wk,
                                  matrix_ref<double> wv, matrix_ref<double> wo,
                                  const attention_layout& layout, const lock_params& params = {},
                                  qkv_biases<double> biases = {});

}  // namespace reparam::unlearn

#include <reparam/unlearn/detail/merge_impl.hpp>

#endif  // REPARAM_UNLEARN_MERGE_HPP

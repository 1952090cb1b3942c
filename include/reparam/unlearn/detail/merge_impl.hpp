// SPDX-License-Identifier: Apache-2.0
// Definitions of reparam/unlearn/merge.hpp (included at its end): the OPCM merger (validate the
// whole model, project in double into temporaries, commit at the end) and the MergeLock draws and
// in-place attention transform (validate everything, then rewrite head by head in double).
#ifndef REPARAM_UNLEARN_DETAIL_MERGE_IMPL_HPP
#define REPARAM_UNLEARN_DETAIL_MERGE_IMPL_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>

#include <reparam/core/error.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/merge.hpp>  // the declarations (this file is included at its end)
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {
namespace detail {

inline const char* role_name(merge_role role) {
  return role == merge_role::linear ? "linear" : "other";
}

/// Shape and finiteness of one tensor of a model; `argument` is e.g. "model", `position` its index.
template <class Scalar>
void check_merge_values(const char* function, const char* argument, index position,
                        const const_matrix_map<Scalar>& w) {
  for (index r = 0; r < w.rows(); ++r) {
    for (index c = 0; c < w.cols(); ++c) {
      if (!std::isfinite(w(r, c))) {
        reparam::detail::raise<error>(reparam::detail::concat(function, ": ", argument, "[",
                                                              position, "] has non-finite value ",
                                                              w(r, c), " at (", r, ", ", c, ")"));
      }
    }
  }
}

inline void check_opcm_params(const char* function, const opcm_params& params) {
  reparam::detail::check(std::isfinite(params.alpha) && params.alpha > 0.0 && params.alpha <= 1.0,
                         function, "params.alpha ", params.alpha, " is not in (0, 1]");
  check_policy(function, params.policy);
}

/// Sum of squared entries of a list of double matrices (one fixed order, so equal lists give
/// bitwise equal sums).
inline double squared_norm(const std::vector<matrix<double>>& tensors) {
  double total = 0.0;
  for (const auto& t : tensors) {
    total += t.squaredNorm();
  }
  return total;
}

/// How one linear task vector was projected.
struct opcm_projection {
  index protected_rank = 0;
  index merged_rank = 0;
  double protected_share = 0.0;
};

/// Replaces tau (tau_t) by tau_t' against the SVD of the merged task vector `merged` (S_{t-1}).
/// Only the leading r <= min(rows, cols) singular pairs are used, so a thin SVD suffices: the
/// entries of U^T tau V that the full-SVD formula leaves alone are kept by not touching them.
inline opcm_projection project_task_vector(const matrix<double>& merged, matrix<double>& tau,
                                           const opcm_params& params) {
  opcm_projection out;
  const Eigen::MatrixXd s_prev = merged;
  const Eigen::BDCSVD<Eigen::MatrixXd> svd(s_prev, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::VectorXd& s = svd.singularValues();
  // Summed in the same order as the running sum below, so cumsum(s)_last / sum(s) is exactly 1
  // and alpha = 1 is never exceeded.
  double total = 0.0;
  for (index i = 0; i < s.size(); ++i) {
    total += s(i);
  }
  if (!(total > 0.0)) {
    return out;  // S_{t-1} = 0: nothing to protect (r = 0)
  }
  const double tolerance = relative_tolerance(params.policy, merged.rows(), merged.cols()) * s(0);
  index rank = 0;
  while (rank < s.size() && s(rank) > tolerance) {
    ++rank;
  }
  // k = the first i with cumsum(s)_i / sum(s) > alpha (the reference's argmax), else r.
  index k = rank;
  double running = 0.0;
  for (index i = 0; i < s.size(); ++i) {
    running += s(i);
    if (running / total > params.alpha) {
      k = i;
      break;
    }
  }
  k = std::min(k, rank);
  out.merged_rank = rank;
  out.protected_rank = k;
  out.protected_share = k > 0 ? s.head(k).sum() / total : 0.0;
  const Eigen::MatrixXd& u = svd.matrixU();
  const Eigen::MatrixXd& v = svd.matrixV();
  if (k > 0) {
    const Eigen::MatrixXd core = u.leftCols(k).transpose() * tau * v.leftCols(k);  // [k, k]
    tau.noalias() -= u.leftCols(k) * core * v.leftCols(k).transpose();
  }
  if (params.zero_diagonal && rank > k) {
    // T_ii = u_i^T tau v_i for k <= i < r (the block removal left them alone: u_i is orthogonal
    // to U_k), then tau -= sum_i T_ii u_i v_i^T, both as matrix products.
    const index count = rank - k;
    const Eigen::MatrixXd tau_v = tau * v.middleCols(k, count);  // [m, count]
    const Eigen::VectorXd diagonal =
        u.middleCols(k, count).cwiseProduct(tau_v).colwise().sum().transpose();
    tau.noalias() -=
        u.middleCols(k, count) * diagonal.asDiagonal() * v.middleCols(k, count).transpose();
  }
  return out;
}

}  // namespace detail

template <class Derived>
merge_tensor<typename Derived::Scalar> as_merge_tensor(const Eigen::MatrixBase<Derived>& weights,
                                                       merge_role role) {
  reparam::detail::static_check_input<Derived>();
  using scalar_type = typename Derived::Scalar;
  const Derived& w = weights.derived();
  reparam::detail::check(w.innerStride() == 1, "unlearn::as_merge_tensor",
                         "weights has inner stride ", w.innerStride(),
                         " (rows must be contiguous)");
  if constexpr (static_cast<bool>(Derived::IsRowMajor)) {
    return {const_matrix_map<scalar_type>(w.data(), w.rows(), w.cols(),
                                          Eigen::OuterStride<>(w.outerStride())),
            role};
  } else {
    // A single column (static_check_input allows no other column-major input): view as [1, n].
    return {const_matrix_map<scalar_type>(w.data(), 1, w.size(), Eigen::OuterStride<>(w.size())),
            role};
  }
}

template <class Scalar>
opcm_merger<Scalar>::opcm_merger(const std::vector<merge_tensor<Scalar>>& base, opcm_params params)
    : params_(params) {
  static_assert(is_supported_scalar_v<Scalar>,
                "reparam: Scalar must be float or double; convert with .template cast<float>()");
  constexpr const char* fn = "unlearn::opcm_merger";
  detail::check_opcm_params(fn, params);
  reparam::detail::check(!base.empty(), fn, "base has no tensors");
  for (std::size_t i = 0; i < base.size(); ++i) {
    const auto& w = base[i].weights;
    reparam::detail::check(w.rows() >= 1 && w.cols() >= 1, fn, "base[", i, "] is empty (", w.rows(),
                           " x ", w.cols(), ")");
    detail::check_merge_values(fn, "base", static_cast<index>(i), w);
  }
  double base_squared = 0.0;
  for (const auto& t : base) {
    base_squared += t.weights.template cast<double>().squaredNorm();
  }
  base_norm_ = std::sqrt(base_squared);
  base_.reserve(base.size());
  roles_.reserve(base.size());
  sum_.reserve(base.size());
  for (const auto& t : base) {
    base_.emplace_back(t.weights);
    roles_.push_back(t.role);
    sum_.push_back(matrix<double>::Zero(t.weights.rows(), t.weights.cols()));
  }
}

template <class Scalar>
opcm_report opcm_merger<Scalar>::add(const std::vector<merge_tensor<Scalar>>& model) {
  constexpr const char* fn = "unlearn::opcm_merger::add";
  const auto count = base_.size();
  reparam::detail::check(model.size() == count, fn, "model has ", model.size(),
                         " tensors but the base has ", count);
  for (std::size_t i = 0; i < count; ++i) {
    const auto& w = model[i].weights;
    reparam::detail::check(model[i].role == roles_[i], fn, "model[", i, "] is marked ",
                           detail::role_name(model[i].role), " but base[", i, "] is marked ",
                           detail::role_name(roles_[i]));
    reparam::detail::check(w.rows() == base_[i].rows() && w.cols() == base_[i].cols(), fn, "model[",
                           i, "] is ", w.rows(), " x ", w.cols(), " but base[", i, "] is ",
                           base_[i].rows(), " x ", base_[i].cols());
    detail::check_merge_values(fn, "model", static_cast<index>(i), w);
  }

  opcm_report report;
  report.model = models_ + 1;
  report.tensors.resize(count);
  std::vector<matrix<double>> next(count);
  double task_squared = 0.0;
  for (std::size_t i = 0; i < count; ++i) {
    opcm_tensor_report& t = report.tensors[i];
    t.role = roles_[i];
    matrix<double> tau =
        model[i].weights.template cast<double>() - base_[i].template cast<double>();
    const double tau_squared = tau.squaredNorm();
    task_squared += tau_squared;
    t.task_norm = std::sqrt(tau_squared);
    if (models_ == 0) {
      next[i] = std::move(tau);  // the merged model starts as the first task model
      t.projected_norm = t.task_norm;
      continue;
    }
    if (roles_[i] == merge_role::linear) {
      const matrix<double> original = tau;
      const detail::opcm_projection p = detail::project_task_vector(sum_[i], tau, params_);
      t.protected_rank = p.protected_rank;
      t.merged_rank = p.merged_rank;
      t.protected_share = p.protected_share;
      t.removed_norm = (original - tau).norm();
    }
    t.projected_norm = tau.norm();
    next[i] = sum_[i] + tau;
  }
  report.task_norm = std::sqrt(task_squared);
  const double norm_sum = norm_sum_ + report.task_norm;
  report.mean_task_norm = norm_sum / static_cast<double>(models_ + 1);
  report.merged_norm = std::sqrt(detail::squared_norm(next));
  if (report.mean_task_norm > 0.0) {
    // Rounding noise of S: each added task vector W_t - W0 is rounded to ~eps (||W_t|| + ||W0||)
    // <= eps (||tau_t|| + 2 ||W0||).
    const double noise = 16.0 * std::numeric_limits<double>::epsilon() *
                         (norm_sum + 2.0 * static_cast<double>(models_ + 1) * base_norm_);
    reparam::detail::check(report.merged_norm > noise, fn, "the merged task vector vanished (norm ",
                           report.merged_norm, " <= rounding noise ", noise, ") while the mean ",
                           "task-vector norm is ", report.mean_task_norm,
                           ": model cancels the merged ones and there is no direction to rescale");
    report.scale = report.mean_task_norm / report.merged_norm;
    report.lambda = report.merged_norm / report.mean_task_norm;
  }
  // Commit (nothing below throws).
  sum_.swap(next);
  norm_sum_ = norm_sum;
  scale_ = report.scale;
  ++models_;
  return report;
}

template <class Scalar>
void opcm_merger<Scalar>::merged(index tensor, matrix_ref<Scalar> out) const {
  constexpr const char* fn = "unlearn::opcm_merger::merged";
  reparam::detail::check(tensor >= 0 && tensor < tensors(), fn, "tensor ", tensor,
                         " is not in [0, ", tensors(), ")");
  const auto i = static_cast<std::size_t>(tensor);
  const matrix<Scalar>& w0 = base_[i];
  const matrix<double>& s = sum_[i];
  reparam::detail::check(out.rows() == w0.rows() && out.cols() == w0.cols(), fn, "out is ",
                         out.rows(), " x ", out.cols(), " but tensor ", tensor, " is ", w0.rows(),
                         " x ", w0.cols());
  for (index r = 0; r < w0.rows(); ++r) {
    for (index c = 0; c < w0.cols(); ++c) {
      out(r, c) = static_cast<Scalar>(static_cast<double>(w0(r, c)) + scale_ * s(r, c));
    }
  }
}

template <class Scalar>
std::vector<matrix<Scalar>> opcm_merger<Scalar>::make_merged() const {
  std::vector<matrix<Scalar>> out;
  out.reserve(base_.size());
  for (std::size_t i = 0; i < base_.size(); ++i) {
    out.emplace_back(base_[i].rows(), base_[i].cols());
    merged(static_cast<index>(i), out.back());
  }
  return out;
}

template <class Scalar>
const matrix<double>& opcm_merger<Scalar>::task_sum(index tensor) const {
  reparam::detail::check(tensor >= 0 && tensor < tensors(), "unlearn::opcm_merger::task_sum",
                         "tensor ", tensor, " is not in [0, ", tensors(), ")");
  return sum_[static_cast<std::size_t>(tensor)];
}

template <class Scalar>
double opcm_merger<Scalar>::mean_task_norm() const noexcept {
  return models_ > 0 ? norm_sum_ / static_cast<double>(models_) : 0.0;
}

// ------------------------------------------------------------------------------------------------
// MergeLock
// ------------------------------------------------------------------------------------------------

namespace detail {

/// Standard normals from one Philox stream, two per Box-Muller pair, in draw order.
class normal_stream {
 public:
  normal_stream(std::uint64_t seed, std::uint64_t stream) : engine_(seed, stream) {}

  double uniform() { return uniform_open01_double(engine_(), engine_()); }

  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = uniform();
    const double u2 = uniform();
    const auto pair = box_muller(u1, u2);
    spare_ = pair.second;
    has_spare_ = true;
    return pair.first;
  }

 private:
  philox_engine engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

/// Haar-random orthogonal [n, n]: Q of the QR of a Gaussian matrix with the signs of diag(R)
/// moved into Q (so the factorisation is unique and the law uniform).
inline Eigen::MatrixXd haar_orthogonal(normal_stream& normals, index n) {
  Eigen::MatrixXd g(n, n);
  for (index r = 0; r < n; ++r) {
    for (index c = 0; c < n; ++c) {
      g(r, c) = normals.normal();
    }
  }
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  Eigen::MatrixXd q = qr.householderQ();
  for (index j = 0; j < n; ++j) {
    if (qr.matrixQR()(j, j) < 0.0) {
      q.col(j) = -q.col(j);
    }
  }
  return q;
}

/// exp((u - 1/2) ln kappa): log-uniform in [kappa^-1/2, kappa^1/2].
inline double log_uniform_scale(double u, double log_kappa) {
  return std::exp((u - 0.5) * log_kappa);
}

/// A general invertible M = U diag(sigma) V^T and M^-1 = V diag(1/sigma) U^T; returns kappa_2.
inline double draw_general(normal_stream& normals, index n, double log_kappa, matrix<double>& m,
                           matrix<double>& inverse) {
  const Eigen::MatrixXd u = haar_orthogonal(normals, n);
  const Eigen::MatrixXd v = haar_orthogonal(normals, n);
  Eigen::VectorXd sigma(n);
  for (index i = 0; i < n; ++i) {
    sigma(i) = log_uniform_scale(normals.uniform(), log_kappa);
  }
  m = u * sigma.asDiagonal() * v.transpose();
  inverse = v * sigma.cwiseInverse().asDiagonal() * u.transpose();
  return sigma.maxCoeff() / sigma.minCoeff();
}

/// The two coordinates RoPE rotates together for frequency pair i of a head.
inline std::pair<index, index> rope_pair(rope_pairing pairing, index head_dim, index i) {
  if (pairing == rope_pairing::interleaved) {
    return {2 * i, 2 * i + 1};
  }
  return {i, i + head_dim / 2};
}

/// Block-diagonal scaled rotations s_i R(phi_i) on the RoPE pairs and their inverses
/// s_i^-1 R(-phi_i); returns kappa_2 = max s / min s.
inline double draw_rope_commuting(normal_stream& normals, index head_dim, rope_pairing pairing,
                                  double log_kappa, matrix<double>& m, matrix<double>& inverse) {
  constexpr double two_pi = 6.283185307179586476925286766559;
  m = matrix<double>::Zero(head_dim, head_dim);
  inverse = matrix<double>::Zero(head_dim, head_dim);
  double smallest = std::numeric_limits<double>::infinity();
  double largest = 0.0;
  for (index i = 0; i < head_dim / 2; ++i) {
    const double s = log_uniform_scale(normals.uniform(), log_kappa);
    const double phi = two_pi * normals.uniform();
    const double c = std::cos(phi);
    const double sn = std::sin(phi);
    const auto [a, b] = rope_pair(pairing, head_dim, i);
    m(a, a) = s * c;
    m(a, b) = -s * sn;
    m(b, a) = s * sn;
    m(b, b) = s * c;
    inverse(a, a) = c / s;
    inverse(a, b) = sn / s;
    inverse(b, a) = -sn / s;
    inverse(b, b) = c / s;
    smallest = std::min(smallest, s);
    largest = std::max(largest, s);
  }
  return largest / smallest;
}

inline double inverse_residual(const matrix<double>& m, const matrix<double>& inverse) {
  const Eigen::MatrixXd product = m * inverse;
  return (product - Eigen::MatrixXd::Identity(m.rows(), m.cols())).cwiseAbs().maxCoeff();
}

inline void check_layout(const char* function, const attention_layout& layout) {
  using reparam::detail::check;
  check(layout.n_heads >= 1, function, "layout.n_heads ", layout.n_heads, " must be >= 1");
  check(layout.n_kv_heads >= 1, function, "layout.n_kv_heads ", layout.n_kv_heads, " must be >= 1");
  check(layout.head_dim >= 1, function, "layout.head_dim ", layout.head_dim, " must be >= 1");
  check(layout.n_heads % layout.n_kv_heads == 0, function, "layout.n_heads ", layout.n_heads,
        " is not a multiple of layout.n_kv_heads ", layout.n_kv_heads);
  check(layout.rope == rope_pairing::none || layout.head_dim % 2 == 0, function, "layout.head_dim ",
        layout.head_dim, " is odd but RoPE rotates pairs");
}

inline void check_kappa(const char* function, double kappa_max, double cap, const char* type) {
  reparam::detail::check(std::isfinite(kappa_max) && kappa_max >= 1.0 && kappa_max <= cap, function,
                         "params.kappa_max ", kappa_max, " is not in [1, ", cap,
                         "] (the cap 0.01 / eps(", type,
                         ") keeps the rounding of the locked weights below 1 %)");
}

/// Max |entry| of a checked-finite matrix; names the first non-finite entry.
template <class Derived>
double checked_max_abs(const char* function, const char* argument,
                       const Eigen::MatrixBase<Derived>& m) {
  double largest = 0.0;
  for (index r = 0; r < m.rows(); ++r) {
    for (index c = 0; c < m.cols(); ++c) {
      const auto value = static_cast<double>(m(r, c));
      if (!std::isfinite(value)) {
        reparam::detail::raise<error>(reparam::detail::concat(
            function, ": ", argument, " has non-finite value ", m(r, c), " at (", r, ", ", c, ")"));
      }
      largest = std::max(largest, std::abs(value));
    }
  }
  return largest;
}

template <class Scalar>
double checked_bias(const char* function, const char* argument, const bias_span<Scalar>& bias,
                    index expected) {
  if (bias.data == nullptr) {
    reparam::detail::check(bias.size == 0, function, argument, " has null data but size ",
                           bias.size);
    return 0.0;
  }
  reparam::detail::check(bias.size == expected, function, argument, " has size ", bias.size,
                         " but the layout needs ", expected);
  return checked_max_abs(
      function, argument,
      Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(bias.data, 1, bias.size));
}

/// Frobenius-norm accumulators for ||W' - W|| / ||W||.
struct change_accumulator {
  double delta = 0.0;
  double original = 0.0;

  template <class Stored>
  void add(const Eigen::MatrixXd& before, const Eigen::MatrixBase<Stored>& stored) {
    delta += (stored.template cast<double>() - before).squaredNorm();
    original += before.squaredNorm();
  }

  double relative() const { return original > 0.0 ? std::sqrt(delta / original) : 0.0; }
};

/// Rounds a double block to Scalar, stores it, records the change of the stored values.
template <class Scalar, class Target>
void store_block(const Eigen::MatrixXd& before, const Eigen::MatrixXd& after, Target&& target,
                 change_accumulator& change) {
  target = after.template cast<Scalar>();
  change.add(before, target);
}

/// Largest absolute row sum (the infinity norm) of m.
inline double infinity_norm(const matrix<double>& m) {
  return m.cwiseAbs().rowwise().sum().maxCoeff();
}

template <class Scalar>
lock_report lock_attention_impl(matrix_ref<Scalar>& wq, matrix_ref<Scalar>& wk,
                                matrix_ref<Scalar>& wv, matrix_ref<Scalar>& wo,
                                const attention_layout& layout, const lock_params& params,
                                const qkv_biases<Scalar>& biases) {
  using reparam::detail::check;
  constexpr const char* fn = "unlearn::lock_attention";
  check_layout(fn, layout);
  const auto eps = static_cast<double>(std::numeric_limits<Scalar>::epsilon());
  check_kappa(fn, params.kappa_max, 0.01 / eps, std::is_same_v<Scalar, float> ? "float" : "double");
  const index hd = layout.head_dim;
  const index q_dim = layout.n_heads * hd;
  const index kv_dim = layout.n_kv_heads * hd;
  const index d = wq.cols();
  check(wq.rows() == q_dim, fn, "wq has ", wq.rows(), " rows but n_heads * head_dim = ", q_dim);
  check(d >= 1, fn, "wq has no columns");
  check(wk.rows() == kv_dim && wk.cols() == d, fn, "wk is ", wk.rows(), " x ", wk.cols(),
        " but needs n_kv_heads * head_dim x d = ", kv_dim, " x ", d);
  check(wv.rows() == kv_dim && wv.cols() == d, fn, "wv is ", wv.rows(), " x ", wv.cols(),
        " but needs n_kv_heads * head_dim x d = ", kv_dim, " x ", d);
  check(wo.rows() == d && wo.cols() == q_dim, fn, "wo is ", wo.rows(), " x ", wo.cols(),
        " but needs d x n_heads * head_dim = ", d, " x ", q_dim);
  const double max_q =
      std::max(checked_max_abs(fn, "wq", wq), checked_bias(fn, "biases.q", biases.q, q_dim));
  const double max_k =
      std::max(checked_max_abs(fn, "wk", wk), checked_bias(fn, "biases.k", biases.k, kv_dim));
  const double max_v =
      std::max(checked_max_abs(fn, "wv", wv), checked_bias(fn, "biases.v", biases.v, kv_dim));
  const double max_o = checked_max_abs(fn, "wo", wo);

  const lock_matrices m = make_lock_matrices(layout, params);
  // A rigorous bound on every result entry: |(M W)_ij| <= ||M||_inf max |W| (rows of A^T, A^-1,
  // B), |(W M)_ij| <= ||M^T||_inf max |W| (columns of B^-1). Refuse before writing if it could
  // overflow Scalar.
  double bound = 0.0;
  for (std::size_t g = 0; g < m.qk.size(); ++g) {
    bound = std::max({bound, infinity_norm(m.qk[g].transpose()) * max_q,
                      infinity_norm(m.qk_inverse[g]) * max_k, infinity_norm(m.vo[g]) * max_v,
                      infinity_norm(m.vo_inverse[g].transpose()) * max_o});
  }
  check(bound <= static_cast<double>(std::numeric_limits<Scalar>::max()), fn,
        "the locked weights could overflow (bound ", bound, "); lower params.kappa_max or rescale");

  lock_report report;
  report.qk_condition = m.qk_condition;
  report.vo_condition = m.vo_condition;
  report.inverse_residual = m.inverse_residual;
  const index group = layout.n_heads / layout.n_kv_heads;
  change_accumulator cq, ck, cv, co, cbq, cbk, cbv;
  for (index h = 0; h < layout.n_heads; ++h) {
    const auto g = static_cast<std::size_t>(h / group);
    const Eigen::MatrixXd q_rows = wq.middleRows(h * hd, hd).template cast<double>();
    store_block<Scalar>(q_rows, m.qk[g].transpose() * q_rows, wq.middleRows(h * hd, hd), cq);
    const Eigen::MatrixXd o_cols = wo.middleCols(h * hd, hd).template cast<double>();
    store_block<Scalar>(o_cols, o_cols * m.vo_inverse[g], wo.middleCols(h * hd, hd), co);
    if (biases.q.data != nullptr) {
      vector_map<Scalar> b(biases.q.data + h * hd, hd);
      const Eigen::MatrixXd before = b.template cast<double>();
      store_block<Scalar>(before, m.qk[g].transpose() * before, b, cbq);
    }
  }
  for (index g = 0; g < layout.n_kv_heads; ++g) {
    const auto gi = static_cast<std::size_t>(g);
    const Eigen::MatrixXd k_rows = wk.middleRows(g * hd, hd).template cast<double>();
    store_block<Scalar>(k_rows, m.qk_inverse[gi] * k_rows, wk.middleRows(g * hd, hd), ck);
    const Eigen::MatrixXd v_rows = wv.middleRows(g * hd, hd).template cast<double>();
    store_block<Scalar>(v_rows, m.vo[gi] * v_rows, wv.middleRows(g * hd, hd), cv);
    if (biases.k.data != nullptr) {
      vector_map<Scalar> b(biases.k.data + g * hd, hd);
      const Eigen::MatrixXd before = b.template cast<double>();
      store_block<Scalar>(before, m.qk_inverse[gi] * before, b, cbk);
    }
    if (biases.v.data != nullptr) {
      vector_map<Scalar> b(biases.v.data + g * hd, hd);
      const Eigen::MatrixXd before = b.template cast<double>();
      store_block<Scalar>(before, m.vo[gi] * before, b, cbv);
    }
  }
  report.wq_change = cq.relative();
  report.wk_change = ck.relative();
  report.wv_change = cv.relative();
  report.wo_change = co.relative();
  report.bq_change = cbq.relative();
  report.bk_change = cbk.relative();
  report.bv_change = cbv.relative();
  return report;
}

}  // namespace detail

inline lock_matrices make_lock_matrices(const attention_layout& layout, const lock_params& params) {
  constexpr const char* fn = "unlearn::make_lock_matrices";
  detail::check_layout(fn, layout);
  detail::check_kappa(fn, params.kappa_max, 0.01 / std::numeric_limits<double>::epsilon(),
                      "double");
  const index hd = layout.head_dim;
  const double log_kappa = std::log(params.kappa_max);
  lock_matrices out;
  const auto groups = static_cast<std::size_t>(layout.n_kv_heads);
  out.qk.resize(groups);
  out.qk_inverse.resize(groups);
  out.vo.resize(groups);
  out.vo_inverse.resize(groups);
  out.qk_condition.resize(groups);
  out.vo_condition.resize(groups);
  for (std::size_t g = 0; g < groups; ++g) {
    detail::normal_stream qk_draws(params.seed, 2 * static_cast<std::uint64_t>(g));
    detail::normal_stream vo_draws(params.seed, 2 * static_cast<std::uint64_t>(g) + 1);
    out.qk_condition[g] =
        layout.rope == rope_pairing::none
            ? detail::draw_general(qk_draws, hd, log_kappa, out.qk[g], out.qk_inverse[g])
            : detail::draw_rope_commuting(qk_draws, hd, layout.rope, log_kappa, out.qk[g],
                                          out.qk_inverse[g]);
    out.vo_condition[g] =
        detail::draw_general(vo_draws, hd, log_kappa, out.vo[g], out.vo_inverse[g]);
    out.inverse_residual =
        std::max({out.inverse_residual, detail::inverse_residual(out.qk[g], out.qk_inverse[g]),
                  detail::inverse_residual(out.vo[g], out.vo_inverse[g])});
  }
  return out;
}

inline lock_report lock_attention(matrix_ref<float> wq, matrix_ref<float> wk, matrix_ref<float> wv,
                                  matrix_ref<float> wo, const attention_layout& layout,
                                  const lock_params& params, qkv_biases<float> biases) {
  return detail::lock_attention_impl<float>(wq, wk, wv, wo, layout, params, biases);
}

inline lock_report lock_attention(matrix_ref<double> wq, matrix_ref<double> wk,
                                  matrix_ref<double> wv, matrix_ref<double> wo,
                                  const attention_layout& layout, const lock_params& params,
                                  qkv_biases<double> biases) {
  return detail::lock_attention_impl<double>(wq, wk, wv, wo, layout, params, biases);
}

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_DETAIL_MERGE_IMPL_HPP

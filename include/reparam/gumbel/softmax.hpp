// SPDX-License-Identifier: Apache-2.0
// Gumbel-softmax / Concrete (Jang, Gu, Poole 2016; Maddison, Mnih, Teh 2016): the soft sample
// y = softmax((l + g) / tau), its log-space form z = log_softmax((l + g) / tau) (ExpConcrete),
// the straight-through hard sample (an exact one-hot of argmax(l + g), lowest index on ties, with
// the soft sample's gradient), vector-Jacobian products w.r.t. logits and tau, and the Concrete
// log-densities in log space (TFP ExpRelaxedOneHotCategorical / torch ExpRelaxedCategorical).
#ifndef REPARAM_GUMBEL_SOFTMAX_HPP
#define REPARAM_GUMBEL_SOFTMAX_HPP

#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/gumbel/types.hpp>
#include <reparam/kernels/arch.hpp>

namespace reparam::gumbel {

/// Per-row double outputs (log-densities, tau gradients).
using double_vector_ref = Eigen::Ref<vector<double>>;

/// Soft sample of rows `rows`: perturbed(r, k) = logits(r, k) + g(r, k) (double, g the noise of
/// fill_gumbel_rows<Arch>(key, ...)), soft(r, .) = softmax(perturbed(r, .) / tau_r) computed in
/// double and rounded once to T, hot[r] = argmax_k perturbed(r, k) (lowest index on ties; the
/// hot index does not depend on tau). Masked classes (-inf logits) get perturbed -inf and soft 0.
/// Throws (before writing) on NaN/+inf logits, a row without a finite logit, tau <= 0 or not
/// finite, or mismatched shapes. No allocation.
template <class Arch = default_arch, class Derived, class T>
void gumbel_softmax_rows(const Eigen::MatrixBase<Derived>& logits, const temperature& tau,
                         noise_key key, matrix_ref<double> perturbed, matrix_ref<T> soft,
                         index_vector_ref hot, row_range rows);

/// Log-space (ExpConcrete) sample: z(r, .) = log_softmax(perturbed(r, .) / tau_r), -inf where
/// masked; otherwise as gumbel_softmax_rows. Use it whenever a density is needed: z stays finite
/// at small tau where y underflows to exact 0 (pytorch#18254).
template <class Arch = default_arch, class Derived, class T>
void log_gumbel_softmax_rows(const Eigen::MatrixBase<Derived>& logits, const temperature& tau,
                             noise_key key, matrix_ref<double> perturbed, matrix_ref<T> z,
                             index_vector_ref hot, row_range rows);

/// Writes exact one-hot rows: hard(r, k) = (k == hot[r]) ? 1 : 0 for rows in `rows`, bitwise
/// 1 and 0 (not y_hard - y_soft + y_soft). Throws on an index outside [0, cols). No allocation.
template <class T>
void one_hot_rows(const index_vector& hot, matrix_ref<T> hard, row_range rows);

/// How gumbel_softmax returns its sample.
enum class hard_mode {
  soft,              ///< value = the soft sample
  straight_through,  ///< value = exact one-hot of argmax(l + g); gradient = the soft sample's
};

/// Everything one Gumbel-softmax draw produces; keep `perturbed` for the backward pass.
template <class T>
struct gumbel_softmax_sample {
  matrix<T> value;           ///< soft sample, or exact one-hot in straight_through mode
  matrix<T> soft;            ///< softmax(perturbed / tau), always
  index_vector hot;          ///< argmax of perturbed, lowest index on ties
  matrix<double> perturbed;  ///< logits + g
};

/// Allocating convenience over gumbel_softmax_rows (+ one_hot_rows for straight_through).
template <class Arch = default_arch, class Derived>
gumbel_softmax_sample<typename Derived::Scalar> gumbel_softmax(
    const Eigen::MatrixBase<Derived>& logits, const temperature& tau, noise_key key,
    hard_mode mode = hard_mode::soft);

/// Vector-Jacobian product of the soft sample y = softmax(perturbed / tau) for upstream v = dL/dy
/// (rows `rows`), with y recomputed in double from `perturbed`:
///   grad_logits = (1 / tau) y * (v - <v, y>)
///   grad_tau[r] = -(1 / tau) <y * (v - <v, y>), perturbed / tau - <y, perturbed / tau>>
/// (the noise is a constant of the sample, so d/dlogits = d/dperturbed). Masked (-inf) classes get
/// gradient 0 and add nothing. grad_tau may be empty (size 0) when not wanted; for a scalar tau
/// shared by all rows, dL/dtau is the sum of grad_tau. This is also the straight-through rule:
/// pass v = dL/d(hard value). Throws on shape mismatch, non-finite v or tau <= 0. No allocation.
template <class DerivedP, class DerivedV, class T>
void gumbel_softmax_vjp_rows(const Eigen::MatrixBase<DerivedP>& perturbed, const temperature& tau,
                             const Eigen::MatrixBase<DerivedV>& v, matrix_ref<T> grad_logits,
                             double_vector_ref grad_tau, row_range rows);

/// Straight-through estimator's backward (Jang et al. 2016, sec. 2.2): the forward value is the
/// one-hot, the gradient is the soft sample's VJP at upstream v = dL/d(one-hot). Same as
/// gumbel_softmax_vjp_rows; named for readers of training code.
template <class DerivedP, class DerivedV, class T>
void straight_through_vjp_rows(const Eigen::MatrixBase<DerivedP>& perturbed, const temperature& tau,
                               const Eigen::MatrixBase<DerivedV>& v, matrix_ref<T> grad_logits,
                               double_vector_ref grad_tau, row_range rows);

/// VJP of the log-space sample z = log_softmax(perturbed / tau) for v = dL/dz:
///   grad_logits = (1 / tau) (v - y * sum(v)),  y = exp(z)
///   grad_tau[r] = -(1 / tau^2) sum_k v_k (perturbed_k - <y, perturbed>)
/// Masked classes: v there is ignored, gradient 0. Otherwise as gumbel_softmax_vjp_rows.
template <class DerivedP, class DerivedV, class T>
void log_gumbel_softmax_vjp_rows(const Eigen::MatrixBase<DerivedP>& perturbed,
                                 const temperature& tau, const Eigen::MatrixBase<DerivedV>& v,
                                 matrix_ref<T> grad_logits, double_vector_ref grad_tau,
                                 row_range rows);

/// Log-density of the ExpConcrete (log-space Gumbel-softmax) sample z at logits l, temperature tau:
///   log p(z) = lgamma(K) + (K - 1) log tau + sum_k (l_k - tau z_k) - K LSE_k(l_k - tau z_k),
/// over the K unmasked classes (finite logits; z must be -inf exactly where the logit is -inf).
/// Invariant to l + c and z + c. Computed in double with a max-shifted LSE: finite wherever the
/// inputs are (tau down to 1e-3 and beyond). Throws on NaN, z finite at a masked class or -inf at
/// an unmasked one, tau <= 0, shape mismatch. No allocation.
template <class DerivedZ, class DerivedL>
void exp_concrete_log_prob_rows(const Eigen::MatrixBase<DerivedZ>& z,
                                const Eigen::MatrixBase<DerivedL>& logits, const temperature& tau,
                                double_vector_ref out, row_range rows);
template <class DerivedZ, class DerivedL>
vector<double> exp_concrete_log_prob(const Eigen::MatrixBase<DerivedZ>& z,
                                     const Eigen::MatrixBase<DerivedL>& logits,
                                     const temperature& tau);

/// Log-density of the Concrete / RelaxedOneHotCategorical sample y on the simplex:
/// exp_concrete_log_prob(log y) - sum_k log y_k over unmasked classes (Maddison et al. eq. 1).
/// y must be > 0 on unmasked classes and 0 on masked ones. Prefer the log-space form at small tau.
template <class DerivedY, class DerivedL>
void concrete_log_prob_rows(const Eigen::MatrixBase<DerivedY>& y,
                            const Eigen::MatrixBase<DerivedL>& logits, const temperature& tau,
                            double_vector_ref out, row_range rows);
template <class DerivedY, class DerivedL>
vector<double> concrete_log_prob(const Eigen::MatrixBase<DerivedY>& y,
                                 const Eigen::MatrixBase<DerivedL>& logits, const temperature& tau);

}  // namespace reparam::gumbel

#include <reparam/gumbel/detail/softmax_impl.hpp>

#endif  // REPARAM_GUMBEL_SOFTMAX_HPP

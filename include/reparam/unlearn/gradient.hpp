// SPDX-License-Identifier: Apache-2.0
// Geometric-disentanglement unlearning (GU, arXiv 2511.17100): the forget gradient's normal
// component against the span of retain gradients (first-order retain-invariant), the trust-region
// step d* = rho P_perp g_f / ||P_perp g_f|| (optionally in a diagonal metric M, e.g. Adam's
// sqrt(v_hat) + eps), and the joint forget/retain update gamma z_f_perp + alpha z_r with ONE global
// coefficient across all tensors (per-tensor projection is a different, over-constrained map).
// Definitions: reparam/unlearn/detail/gradient_impl.hpp (included at the end).
//
// Metric convention (geo-unlearning's Adam geometry): M = Diag(metric), whitened coordinates
// z = g / sqrt(metric), the retain rows are whitened the same way, the projection happens in z,
// and gradients map back as g = sqrt(metric) z. The trust region is {d : R d = 0, d^T M d <= rho^2}
// (R = retain gradients as rows); its maximiser of g_f^T d is d* = M^{-1/2} y*,
// y* = rho P_perp z_f / ||P_perp z_f||. With a metric the retain-invariant quantity is the STEP
// d = M^{-1} normal (what a preconditioned optimizer does with the projected gradient), not the
// projected gradient `normal` itself; with the Euclidean metric both coincide.
#ifndef REPARAM_UNLEARN_GRADIENT_HPP
#define REPARAM_UNLEARN_GRADIENT_HPP

#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {

/// The split of a forget gradient against the retain gradients (all in gradient coordinates).
struct gradient_projection {
  vector<double> normal;         ///< sqrt(m) P_perp z_f (Euclidean: P_perp g_f)
  vector<double> tangential;     ///< sqrt(m) Q^T Q z_f (Euclidean: Q^T Q g_f); sums with normal
                                 ///< to g_f up to rounding
  vector<double> metric;         ///< the diagonal metric used (empty: Euclidean); needed by
                                 ///< trust_region_step to map the step back
  double preserved_ratio = 0.0;  ///< ||P_perp z_f|| / ||z_f|| (whitened norms; 0 if g_f = 0)
  index retain_rank = 0;         ///< rank of the (whitened) retain gradients after the rank policy
  index dropped = 0;             ///< retain rows that added no direction: rows - retain_rank
};

/// The smallest preserved_ratio trust_region_step accepts: sqrt(eps(double)) = 2^-26 ~ 1.5e-8.
/// Below it the normal component is at the level of the projection's round-off amplified by the
/// retain set's conditioning (~eps * kappa(R)), so its direction is noise and scaling it to the
/// radius rho would be a step in an arbitrary direction.
inline constexpr double min_preserved_ratio = 1.4901161193847656e-08;

/// Splits a flattened forget gradient g_f [p] against retain gradients [m, p] (rows), in double,
/// with an optional diagonal metric (empty: Euclidean; else m_i > 0 and finite, projection in
/// whitened coordinates z = g / sqrt(m)). The retain basis Q is orthonormal_basis of the whitened
/// retain rows with `policy` (SVD, relative tolerance; duplicates and zero rows add no rank,
/// m >= p may give the whole space and a zero normal component); the projection is applied twice
/// (the second pass removes what the first left by rounding). m = 0 rows is allowed (a 0 x p or
/// 0 x 0 matrix): normal = g_f, tangential = 0, preserved_ratio = 1 (0 if g_f = 0). A zero g_f is
/// allowed (everything 0). Throws reparam::error ("unlearn::project_forget_gradient: ...") on an
/// empty forget gradient, a retain width other than p (0 is accepted too when m = 0), NaN/Inf in
/// forget/retain/metric, a metric size other than 0 or p, metric entries <= 0, a bad policy, or
/// whitened values that overflow. Nothing is clamped. With a metric the rank policy applies to
/// the whitened rows. Allocates O(m p) doubles (SVD); thread safe. Cost O(m^2 p).
inline gradient_projection project_forget_gradient(const vector<double>& forget,
                                                   const matrix<double>& retain,
                                                   const vector<double>& metric = {},
                                                   rank_policy policy = {});

/// Trust-region step of radius rho along the normal component: d = +-M^{-1/2} y*,
/// y* = rho P_perp z_f / ||P_perp z_f||, so d^T M d = rho^2 (Euclidean: ||d|| = rho), R d = 0 and
/// g_f^T d = +-rho ||P_perp z_f|| is the largest (ascend) / smallest value over the feasible set.
/// ascend = true raises the forget loss (g_f^T d > 0); false lowers it. Throws reparam::error
/// ("unlearn::trust_region_step: ...") if rho is not finite and > 0, the split is malformed (empty,
/// size mismatch, non-finite entries, metric entries <= 0), or the normal component is zero:
/// preserved_ratio <= min_preserved_ratio (the forget gradient lies in the retain span: no
/// retain-invariant move exists) - the message gives preserved_ratio. Allocates the result only.
/// Thread safe.
inline vector<double> trust_region_step(const gradient_projection& split, double rho,
                                        bool ascend = true);

/// Joint update gamma (g_f - c g_r) + alpha g_r with c = <g_f, g_r> / ||g_r||^2 computed over ALL
/// tensors at once (pass the concatenation): the forget part keeps only what is orthogonal to the
/// whole retain gradient, the retain-descent term is kept whole. If g_r = 0 then c = 0 (there is
/// no direction to remove); otherwise c is exact for any scale of g_r (no absolute floor such as
/// the reference's max(||g_r||^2, 1e-12), which distorts small gradients). For a metric, pass the
/// whitened z = g / sqrt(m) and map the result back. Throws reparam::error
/// ("unlearn::joint_update: ...") on empty inputs, a size mismatch, NaN/Inf in forget/retain,
/// non-finite gamma or alpha, or a result that overflows. Allocates the result only; thread safe.
inline vector<double> joint_update(const vector<double>& forget, const vector<double>& retain,
                                   double gamma, double alpha);

}  // namespace reparam::unlearn

#include <reparam/unlearn/detail/gradient_impl.hpp>

#endif  // REPARAM_UNLEARN_GRADIENT_HPP

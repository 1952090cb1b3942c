// SPDX-License-Identifier: Apache-2.0
// Geometric-disentanglement unlearning (GU, arXiv 2511.17100): the forget gradient's normal
// component against the span of retain gradients (first-order retain-invariant), the trust-region
// step d* = rho P_perp g_f / ||P_perp g_f|| (optionally in a diagonal metric M, e.g. Adam's
// sqrt(v_hat) + eps), and the joint forget/retain update gamma z_f_perp + alpha z_r with ONE global
// coefficient across all tensors (per-tensor projection is a different, over-constrained map).
// Plus orthogonal-projection continual merging of task vectors (OPCM, arXiv 2501.09522) and
// function-preserving invertible attention transforms (MergeLock, arXiv 2509.01548).
// DRAFT CONTRACT (wip/unlearn): declarations and docs only.
#ifndef REPARAM_UNLEARN_GRADIENT_HPP
#define REPARAM_UNLEARN_GRADIENT_HPP

#include <vector>

#include <reparam/core/views.hpp>
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {

struct gradient_projection {
  vector<double> normal;          ///< P_perp g_f
  vector<double> tangential;      ///< Q^T Q g_f
  double preserved_ratio = 0.0;   ///< ||P_perp g_f|| / ||g_f||
  index retain_rank = 0;          ///< rank of the retain gradients after the rank policy
  index dropped = 0;
};

/// Splits a flattened forget gradient g_f [p] against retain gradients [m, p] (rows), in double,
/// with an optional diagonal metric (empty: Euclidean; else m_i > 0, projection in whitened
/// coordinates z = g / sqrt(m)). Throws on size mismatch, NaN/Inf, non-positive metric entries.
gradient_projection project_forget_gradient(const vector<double>& forget,
                                            const matrix<double>& retain,
                                            const vector<double>& metric = {},
                                            rank_policy policy = {});

/// Trust-region step of radius rho along the normal component (ascend = true raises the forget
/// loss). Throws if the normal component is zero (the forget gradient lies in the retain span:
/// no retain-invariant move exists) - the message gives preserved_ratio.
vector<double> trust_region_step(const gradient_projection& split, double rho, bool ascend = true);

/// Joint update gamma (g_f - c g_r) + alpha g_r with c = <g_f, g_r> / ||g_r||^2 computed over ALL
/// tensors at once (pass the concatenation).
vector<double> joint_update(const vector<double>& forget, const vector<double>& retain,
                            double gamma, double alpha);

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_GRADIENT_HPP

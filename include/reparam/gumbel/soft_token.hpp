// SPDX-License-Identifier: Apache-2.0
// Soft tokens with Gumbel-softmax (SofT-GRPO, Zheng & Lee, arXiv 2511.06411; reference code
// zz1358m/SofT-GRPO-master): at each thinking step keep the top-k candidates of the next-token
// distribution, perturb their log-probabilities with clamped Gumbel noise, weight them with a
// softmax at tau_g and feed the weighted mixture of their embedding rows as the next input. The
// log-probability of such a token under a policy is the (censored) Gumbel log-density of the
// recorded perturbed logits, which is how the reparameterization enters the policy gradient.
#ifndef REPARAM_GUMBEL_SOFT_TOKEN_HPP
#define REPARAM_GUMBEL_SOFT_TOKEN_HPP

#include <limits>

#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/gumbel/softmax.hpp>
#include <reparam/gumbel/types.hpp>

namespace reparam::gumbel {

/// How the per-coordinate Gumbel log-densities of one soft token are combined.
enum class logprob_reduction {
  mean,  ///< the reference code: mean over the kept candidates
  sum,   ///< the plain joint log-likelihood of the kept coordinates
};

/// Settings of soft-token rollout and scoring. Defaults are the paper's training scripts
/// (top_k 5 = max_topk, top_p 0.95, T 1, tau_g 0.1, noise 1, clamp [-1.5, 3], floor 1e-6,
/// mask -3, mean). Set clamp to (-inf, +inf), prob_floor 0 and reduction sum for the clean
/// Gumbel likelihood; top_k = vocab, top_p = 1, no clamp and floor 0 make the top candidate an
/// exact Gumbel-max sample of softmax(logits / T).
struct soft_token_config {
  index top_k = 5;           ///< candidates K kept per token
  double top_p = 0.95;       ///< nucleus inside the top-k, in (0, 1]; 1 disables it
  double temperature = 1.0;  ///< T: p = softmax(logits / T)
  double tau_g = 0.1;        ///< Gumbel-softmax temperature of the weights
  double noise_scale = 1.0;  ///< lambda: y' = log(p_bar + floor) + lambda g
  double clamp_low = -1.5;   ///< g is clamped to [clamp_low, clamp_high]
  double clamp_high = 3.0;
  double prob_floor = 1e-6;      ///< l_bar = log(p_bar + prob_floor)
  double mask_threshold = -3.0;  ///< log-density terms only where l_bar > mask_threshold
  logprob_reduction reduction = logprob_reduction::mean;
};

/// Throws unless the settings are usable: top_k >= 1, top_p in (0, 1], temperature, tau_g and
/// noise_scale finite and > 0, clamp_low < clamp_high (either may be infinite), prob_floor
/// finite and >= 0, mask_threshold not NaN.
inline void check_soft_token_config(const char* function, const soft_token_config& config);

/// Rollout of one soft token per row of next-token `logits` [rows, vocab], steps 1-8 of the
/// reference sampler:
///   p = softmax(logits / T); keep the top_k largest (ties: lowest id), renormalize; top-p inside
///   them (keep the shortest prefix whose mass reaches top_p, the rest get p_bar = 0),
///   renormalize; l_bar = log(p_bar + floor); g = clamp(gumbel_noise(key, r, id)); y' = l_bar +
///   lambda g; weights = softmax(y' / tau_g) (double).
/// Candidates are written sorted by y' (decreasing, lowest id on ties), so ids(r, 0) is the
/// discrete token of the step. logprob[r] is the recorded old log-probability: the reduction over
/// {k : l_bar_k > mask_threshold} of gumbel_log_pdf(g_k) (clamped g). Outputs are [rows, top_k]
/// (logprob [rows]). Throws on bad settings, NaN/+inf logits, top_k > vocab or a row with fewer
/// than top_k finite logits, a row whose mask keeps no candidate (possible only when
/// log(1 / (2 top_k) + prob_floor) <= mask_threshold; then checked exactly, O(vocab top_k) per
/// row), or shape mismatch. No allocation.
template <class Derived>
void soft_token_rows(const Eigen::MatrixBase<Derived>& logits, const soft_token_config& config,
                     noise_key key, index_matrix_ref ids, matrix_ref<double> perturbed,
                     matrix_ref<double> weights, double_vector_ref logprob, row_range rows);

/// One batch of soft tokens (allocating form of soft_token_rows).
struct soft_token_batch {
  index_matrix ids;          ///< [rows, K], sorted by perturbed value
  matrix<double> perturbed;  ///< y' [rows, K]
  matrix<double> weights;    ///< softmax(y' / tau_g) [rows, K]
  vector<double> logprob;    ///< old log-probability [rows]
};
template <class Derived>
soft_token_batch soft_tokens(const Eigen::MatrixBase<Derived>& logits,
                             const soft_token_config& config, noise_key key);

/// Input embeddings of soft tokens: out(r, .) = sum_k w(r, k) embedding(ids(r, k), .) with the
/// weights renormalized to sum 1 (accumulated in double, rounded once). embedding is [vocab, dim],
/// out [rows, dim]. Throws on an id outside [0, vocab), negative/non-finite weights, a zero weight
/// sum or shape mismatch. No allocation.
template <class DerivedE, class T>
void mix_embeddings_rows(const index_matrix& ids, const matrix<double>& weights,
                         const Eigen::MatrixBase<DerivedE>& embedding, matrix_ref<T> out,
                         row_range rows);

/// Log-probability of recorded soft tokens (ids, y') under policy logits [rows, vocab] (the
/// reference trainer's logprobs_from_logits_topk_gumbel):
///   p_hat_k = softmax(logits / T)[id_k] renormalized over the K ids (= softmax of those K logits),
///   L_k = log(p_hat_k + floor), g_hat_k = clamp((y'_k - L_k) / lambda),
///   logprob = reduction over {k : L_k > mask_threshold} of gumbel_log_pdf(g_hat_k).
/// At the rollout policy with top_p = 1 it reproduces the recorded logprob (top-p pruning makes
/// them differ: the trainer does not zero pruned candidates, as in the reference code). If
/// grad_logits is non-empty ([rows, vocab]) it receives d logprob / d logits (a coordinate whose
/// clamp is active adds no gradient of its own, but its logit still moves the others through the
/// renormalization; zero outside the K ids). Throws on duplicate or out-of-range ids, non-finite
/// y', NaN/+inf logits, a row with no kept candidate, or shape mismatch. No allocation.
template <class DerivedL>
void soft_token_logprob_rows(const Eigen::MatrixBase<DerivedL>& policy_logits,
                             const index_matrix& ids, const matrix<double>& perturbed,
                             const soft_token_config& config, double_vector_ref logprob,
                             matrix_ref<double> grad_logits, row_range rows);

/// Log-probability of ordinary (discrete) tokens: log softmax(logits / T)[token], for the rows
/// of a sequence that are not soft tokens. Throws on a token out of range or bad logits.
template <class DerivedL>
void token_logprob_rows(const Eigen::MatrixBase<DerivedL>& policy_logits,
                        const index_vector& tokens, double temperature, double_vector_ref logprob,
                        row_range rows);

}  // namespace reparam::gumbel

#include <reparam/gumbel/detail/soft_token_impl.hpp>

#endif  // REPARAM_GUMBEL_SOFT_TOKEN_HPP

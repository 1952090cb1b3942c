// SPDX-License-Identifier: Apache-2.0
// Definitions of reparam/gumbel/soft_token.hpp: the SofT-GRPO rollout of soft tokens (top-k,
// top-p, clamped Gumbel perturbation, Gumbel-softmax weights), the embedding mixture, and the
// censored Gumbel log-likelihood of recorded tokens with its gradient. Everything is in double;
// the callers' output rows double as scratch, so nothing here allocates.
//
// Choices this file makes (the reference is zz1358m/SofT-GRPO-master, sglang sampler.py and verl
// torch_functional.py):
// - Candidates are ranked by logits / T (the order of p = softmax(logits / T) without its
//   underflow ties), lowest id first on equal values; -inf logits are never candidates.
// - top-p inside the top-k ("keep the shortest prefix whose mass reaches top_p"): with p the
//   top-k probabilities renormalized over the k candidates, in rank order, candidate j is kept iff
//   sum_{i<j} p_i < top_p (the first candidate always is); top_p = 1 keeps all k. The reference
//   rollout calls flashinfer's top_p_renorm_prob, a threshold rule (keep every p >= a pivot such
//   that the kept mass reaches top_p), and sglang's torch fallback keeps j iff sum_{i<j} p_i <=
//   top_p. All three agree except on ties in p at the cut (flashinfer keeps every tied candidate,
//   we keep the lower ids only) and when the prefix mass equals top_p exactly (torch keeps one
//   more). The sums are in double here, float32 there.
// - Noise scale lambda enters the scoring as g_hat = (y' - L) / lambda, so the score reproduces
//   the rollout at any lambda; the reference trainer uses y' - L, the same at lambda = 1.
// - Duplicate ids are rejected by the scoring (the reference uses token id 0 as a "no candidate"
//   sentinel and treats rows whose ids[1:] are all 0 as discrete tokens: score those rows with
//   token_logprob_rows instead). mix_embeddings_rows accepts duplicates (their weights add).
// - The rollout keeps the top-k in the caller's ids/perturbed rows (a heap, O(vocab log top_k)),
//   uses the weights row for l_bar until the weights are written, sorts in place (heapsort) and
//   evaluates gumbel_noise(key, r, id) once per candidate for y' and once for the recorded
//   log-probability (no scratch of vocabulary length). When the mask could drop every candidate
//   (log(1 / (2 top_k) + floor) <= mask_threshold) each row is first checked exactly by repeated
//   scans, O(vocab top_k), so that a failing row throws before anything is written; set
//   mask_threshold = -inf for large top_k. The scoring is O(K^2) per row for the duplicate check,
//   O(K) otherwise, plus O(vocab) to validate the logits and clear the gradient row.
// - A row where no candidate passes the mask has an undefined mean (0 / 0, NaN in the reference
//   code): both the rollout and the scoring throw for it.
// - The clamp passes the gradient where clamp_low <= x <= clamp_high (torch.clamp's rule). At the
//   rollout policy a clamped coordinate sits on its bound up to rounding, so its gradient there is
//   one-sided, as in the reference's autograd.
#ifndef REPARAM_GUMBEL_DETAIL_SOFT_TOKEN_IMPL_HPP
#define REPARAM_GUMBEL_DETAIL_SOFT_TOKEN_IMPL_HPP

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/gumbel/soft_token.hpp>
#include <reparam/gumbel/softmax.hpp>
#include <reparam/gumbel/types.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>

namespace reparam::gumbel {

inline void check_soft_token_config(const char* function, const soft_token_config& config) {
  using reparam::detail::check;
  check(config.top_k >= 1, function, "config.top_k ", config.top_k, " must be >= 1");
  check(config.top_p > 0.0 && config.top_p <= 1.0, function, "config.top_p ", config.top_p,
        " must be in (0, 1]");
  check(std::isfinite(config.temperature) && config.temperature > 0.0, function,
        "config.temperature ", config.temperature, " must be finite and > 0");
  check(std::isfinite(config.tau_g) && config.tau_g > 0.0, function, "config.tau_g ", config.tau_g,
        " must be finite and > 0");
  check(std::isfinite(config.noise_scale) && config.noise_scale > 0.0, function,
        "config.noise_scale ", config.noise_scale, " must be finite and > 0");
  check(config.clamp_low < config.clamp_high, function, "config.clamp_low ", config.clamp_low,
        " must be < config.clamp_high ", config.clamp_high);
  check(std::isfinite(config.prob_floor) && config.prob_floor >= 0.0, function,
        "config.prob_floor ", config.prob_floor, " must be finite and >= 0");
  check(!std::isnan(config.mask_threshold), function, "config.mask_threshold is NaN");
  check(config.reduction == logprob_reduction::mean || config.reduction == logprob_reduction::sum,
        function, "config.reduction ", static_cast<int>(config.reduction),
        " is not a logprob_reduction");
}

namespace detail {

/// Candidate order: the larger value first, the lower id first on equal values (a strict total
/// order on distinct ids).
inline bool comes_before(double value_a, index id_a, double value_b, index id_b) noexcept {
  return value_a > value_b || (value_a == value_b && id_a < id_b);
}

/// Sift-down in a heap of positions [0, size) whose root is the position that comes last;
/// comes_after(i, j) says position i comes after position j, swap(i, j) exchanges them.
template <class ComesAfter, class Swap>
void sift_down(index node, index size, const ComesAfter& comes_after, const Swap& swap) noexcept {
  for (;;) {
    index last = node;
    const index left = 2 * node + 1;
    if (left < size && comes_after(left, last)) {
      last = left;
    }
    if (left + 1 < size && comes_after(left + 1, last)) {
      last = left + 1;
    }
    if (last == node) {
      return;
    }
    swap(node, last);
    node = last;
  }
}

template <class ComesAfter, class Swap>
void make_heap(index size, const ComesAfter& comes_after, const Swap& swap) noexcept {
  for (index node = size / 2 - 1; node >= 0; --node) {
    sift_down(node, size, comes_after, swap);
  }
}

/// In-place heapsort of positions [0, size) into order (position 0 first); O(size log size).
template <class ComesAfter, class Swap>
void heap_sort(index size, const ComesAfter& comes_after, const Swap& swap) noexcept {
  make_heap(size, comes_after, swap);
  for (index end = size - 1; end > 0; --end) {
    swap(0, end);  // the last remaining element goes to the back
    sift_down(0, end, comes_after, swap);
  }
}

/// Neumaier's compensated sum: the result hardly depends on the order of the terms, so the
/// rollout (which sums in rank order) and the scoring (which sums in recorded order) agree.
struct compensated_sum {
  double sum = 0.0;
  double compensation = 0.0;

  void add(double x) noexcept {
    const double t = sum + x;
    compensation += std::abs(sum) >= std::abs(x) ? (sum - t) + x : (x - t) + sum;
    sum = t;
  }
  double value() const noexcept { return sum + compensation; }
};

/// The top-p cut of k ranked candidates with unnormalized weights e_0 = 1 >= e_1 >= ...
/// (for_each(visit) calls visit(j, e_j) in rank order until visit returns false).
struct nucleus {
  double total = 0.0;       ///< sum of the k weights
  index kept = 0;           ///< candidates kept by top-p (a prefix)
  double kept_total = 0.0;  ///< sum of the kept weights; p_bar_j = e_j / kept_total
};

template <class ForEach>
nucleus nucleus_of(index k, double top_p, const ForEach& for_each) {
  compensated_sum total;
  for_each([&](index /*j*/, double e) {
    total.add(e);
    return true;
  });
  nucleus n;
  n.total = total.value();
  n.kept = k;
  n.kept_total = n.total;
  if (top_p < 1.0) {
    double mass = 0.0;
    compensated_sum kept_total;
    index kept = 0;
    for_each([&](index j, double e) {
      if (j > 0 && mass >= top_p) {
        return false;
      }
      mass += e / n.total;
      kept_total.add(e);
      ++kept;
      return true;
    });
    n.kept = kept;
    n.kept_total = kept_total.value();
  }
  return n;
}

/// log(p + floor) of a candidate with weight e in a set of total weight `total`.
inline double floored_log_prob(double e, double total, double floor) noexcept {
  return std::log(e / total + floor);
}

/// Clamped value of x to [low, high].
inline double clamp_to(double x, double low, double high) noexcept {
  return std::min(std::max(x, low), high);
}

/// Rows for which the mask could drop every candidate need an exact pre-check (the top
/// candidate has p_bar >= 1 / top_k, so log(1 / (2 top_k) + floor) > mask_threshold is a safe
/// sufficient condition that every row keeps its top candidate).
inline bool mask_may_drop_all(const soft_token_config& config) {
  return !(std::log(0.5 / static_cast<double>(config.top_k) + config.prob_floor) >
           config.mask_threshold);
}

/// Exact check of one rollout row without scratch memory: walks the top-k in rank order by
/// repeated scans (O(vocab top_k)) and computes the top candidate's l_bar exactly as the rollout
/// does. Returns false if no candidate would pass the mask.
template <class Derived>
bool rollout_row_keeps_a_candidate(const Eigen::MatrixBase<Derived>& logits, index r,
                                   const soft_token_config& config) {
  const index k = config.top_k;
  const double t = config.temperature;
  double u0 = negative_infinity;
  for (index c = 0; c < logits.cols(); ++c) {
    u0 = std::max(u0, static_cast<double>(logits(r, c)) / t);
  }
  const auto for_each = [&](const auto& visit) {
    double previous_u = 0.0;
    index previous_id = -1;
    for (index j = 0; j < k; ++j) {
      double best_u = negative_infinity;
      index best_id = -1;
      for (index c = 0; c < logits.cols(); ++c) {
        const auto l = static_cast<double>(logits(r, c));
        if (l == negative_infinity) {
          continue;
        }
        const double u = l / t;
        const bool is_after_previous =
            previous_id < 0 || comes_before(previous_u, previous_id, u, c);
        if (is_after_previous && (best_id < 0 || comes_before(u, c, best_u, best_id))) {
          best_u = u;
          best_id = c;
        }
      }
      previous_u = best_u;
      previous_id = best_id;
      if (!visit(j, std::exp(best_u - u0))) {
        return;
      }
    }
  };
  const nucleus n = nucleus_of(k, config.top_p, for_each);
  return floored_log_prob(1.0, n.kept_total, config.prob_floor) > config.mask_threshold;
}

/// One rollout row (already validated): candidates in ids/perturbed/weights row r.
template <class Derived>
void soft_token_row(const Eigen::MatrixBase<Derived>& logits, index r,
                    const soft_token_config& config, noise_key key, index* id, double* value,
                    double* weight) {
  const index k = config.top_k;
  const double t = config.temperature;
  // 1. Top-k by u = l / T: a heap whose root is the candidate that ranks last.
  const auto value_after = [&](index i, index j) {
    return comes_before(value[j], id[j], value[i], id[i]);
  };
  const auto swap_two = [&](index i, index j) {
    std::swap(id[i], id[j]);
    std::swap(value[i], value[j]);
  };
  index filled = 0;
  for (index c = 0; c < logits.cols(); ++c) {
    const auto l = static_cast<double>(logits(r, c));
    if (l == negative_infinity) {
      continue;
    }
    const double u = l / t;
    if (filled < k) {
      id[filled] = c;
      value[filled] = u;
      ++filled;
      if (filled == k) {
        make_heap(k, value_after, swap_two);
      }
      continue;
    }
    if (comes_before(u, c, value[0], id[0])) {
      id[0] = c;
      value[0] = u;
      sift_down(0, k, value_after, swap_two);
    }
  }
  heap_sort(k, value_after, swap_two);
  // 2. Renormalize over the k, cut with top-p, renormalize over the kept prefix.
  const double u0 = value[0];
  const auto for_each = [&](const auto& visit) {
    for (index j = 0; j < k; ++j) {
      if (!visit(j, std::exp(value[j] - u0))) {
        return;
      }
    }
  };
  const nucleus n = nucleus_of(k, config.top_p, for_each);
  // 3. l_bar (kept in `weight` as scratch) and y' = l_bar + lambda clamp(g(id)).
  for (index j = 0; j < k; ++j) {
    const double e = std::exp(value[j] - u0);
    const double l_bar = floored_log_prob(j < n.kept ? e : 0.0, n.kept_total, config.prob_floor);
    const double g = clamp_to(gumbel_noise(key, r, id[j]), config.clamp_low, config.clamp_high);
    weight[j] = l_bar;
    value[j] = l_bar + config.noise_scale * g;
  }
  // 4. Sort by y' (lowest id first on ties), carrying l_bar along.
  const auto swap_three = [&](index i, index j) {
    std::swap(id[i], id[j]);
    std::swap(value[i], value[j]);
    std::swap(weight[i], weight[j]);
  };
  heap_sort(k, value_after, swap_three);
}

/// The recorded log-probability of a sorted rollout row (l_bar in `weight`), then the weights
/// softmax(y' / tau_g) over it.
inline double finish_soft_token_row(index r, const soft_token_config& config, noise_key key,
                                    index k, const index* id, const double* value, double* weight) {
  double total = 0.0;
  index count = 0;
  for (index j = 0; j < k; ++j) {
    if (weight[j] > config.mask_threshold) {
      const double g = clamp_to(gumbel_noise(key, r, id[j]), config.clamp_low, config.clamp_high);
      total += gumbel_log_pdf(g);
      ++count;
    }
  }
  const double logprob =
      config.reduction == logprob_reduction::mean ? total / static_cast<double>(count) : total;
  const double top = value[0];  // finite: the top candidate has p_bar > 0
  double sum = 0.0;
  for (index j = 0; j < k; ++j) {
    if (value[j] != negative_infinity) {
      sum += std::exp((value[j] - top) / config.tau_g);
    }
  }
  for (index j = 0; j < k; ++j) {
    weight[j] =
        value[j] == negative_infinity ? 0.0 : std::exp((value[j] - top) / config.tau_g) / sum;
  }
  return logprob;
}

template <class Derived>
void soft_token_checked(const char* function, const Eigen::MatrixBase<Derived>& logits,
                        const soft_token_config& config, noise_key key, index_matrix_ref ids,
                        matrix_ref<double> perturbed, matrix_ref<double> weights,
                        double_vector_ref logprob, row_range rows) {
  reparam::detail::static_check_input<Derived>();
  check_soft_token_config(function, config);
  const index row_count = logits.rows();
  const index k = config.top_k;
  reparam::detail::check(k <= logits.cols(), function, "config.top_k ", k,
                         " exceeds the vocabulary (logits have ", logits.cols(), " columns)");
  reparam::detail::check(logits.cols() < kernels::gumbel_noise_max_cols, function, "logits have ",
                         logits.cols(), " columns; at most 2^33 are addressable by the noise");
  check_shape(function, "ids", ids.rows(), ids.cols(), "[rows, top_k]", row_count, k);
  check_shape(function, "perturbed", perturbed.rows(), perturbed.cols(), "[rows, top_k]", row_count,
              k);
  check_shape(function, "weights", weights.rows(), weights.cols(), "[rows, top_k]", row_count, k);
  check_length(function, "logprob", logprob.size(), row_count);
  reparam::detail::check_row_range(function, rows, row_count);
  check_logits(function, logits, rows, k);
  if (mask_may_drop_all(config)) {
    for (index r = rows.begin; r < rows.end; ++r) {
      reparam::detail::check(rollout_row_keeps_a_candidate(logits, r, config), function, "row ", r,
                             ": no candidate has log(p_bar + prob_floor) > mask_threshold ",
                             config.mask_threshold,
                             ", so its log-probability is undefined (lower mask_threshold)");
    }
  }
  for (index r = rows.begin; r < rows.end; ++r) {
    index* id = &ids(r, 0);
    double* value = &perturbed(r, 0);
    double* weight = &weights(r, 0);
    soft_token_row(logits, r, config, key, id, value, weight);
    logprob[r] = finish_soft_token_row(r, config, key, k, id, value, weight);
  }
}

/// Max of u = logits(r, id) / T over the K ids, and the compensated sum of exp(u - max): the
/// renormalization of p_hat over the recorded candidates.
template <class DerivedL>
void candidate_normalizer(const Eigen::MatrixBase<DerivedL>& policy_logits, const index_matrix& ids,
                          index r, double t, double& max_u, double& total) {
  max_u = negative_infinity;
  for (index k = 0; k < ids.cols(); ++k) {
    max_u = std::max(max_u, static_cast<double>(policy_logits(r, ids(r, k))) / t);
  }
  compensated_sum sum;
  for (index k = 0; k < ids.cols(); ++k) {
    const double u = static_cast<double>(policy_logits(r, ids(r, k))) / t;
    sum.add(u == negative_infinity ? 0.0 : std::exp(u - max_u));
  }
  total = sum.value();
}

}  // namespace detail

template <class Derived>
void soft_token_rows(const Eigen::MatrixBase<Derived>& logits, const soft_token_config& config,
                     noise_key key, index_matrix_ref ids, matrix_ref<double> perturbed,
                     matrix_ref<double> weights, double_vector_ref logprob, row_range rows) {
  detail::soft_token_checked("gumbel::soft_token_rows", logits, config, key, ids, perturbed,
                             weights, logprob, rows);
}

template <class Derived>
soft_token_batch soft_tokens(const Eigen::MatrixBase<Derived>& logits,
                             const soft_token_config& config, noise_key key) {
  constexpr const char* function = "gumbel::soft_tokens";
  check_soft_token_config(function, config);
  soft_token_batch batch;
  batch.ids.resize(logits.rows(), config.top_k);
  batch.perturbed.resize(logits.rows(), config.top_k);
  batch.weights.resize(logits.rows(), config.top_k);
  batch.logprob.resize(logits.rows());
  detail::soft_token_checked(function, logits, config, key, batch.ids, batch.perturbed,
                             batch.weights, batch.logprob, all_rows(logits.rows()));
  return batch;
}

template <class DerivedE, class T>
void mix_embeddings_rows(const index_matrix& ids, const matrix<double>& weights,
                         const Eigen::MatrixBase<DerivedE>& embedding, matrix_ref<T> out,
                         row_range rows) {
  constexpr const char* function = "gumbel::mix_embeddings_rows";
  reparam::detail::static_check_input<DerivedE>();
  static_assert(is_supported_scalar_v<T>, "reparam: out must be float or double");
  const index k = ids.cols();
  const index dim = embedding.cols();
  detail::check_shape(function, "weights", weights.rows(), weights.cols(), "ids", ids.rows(), k);
  detail::check_shape(function, "out", out.rows(), out.cols(), "[ids rows, embedding cols]",
                      ids.rows(), dim);
  reparam::detail::check(k >= 1, function, "ids has no column (no candidate per token)");
  reparam::detail::check_row_range(function, rows, ids.rows());
  for (index r = rows.begin; r < rows.end; ++r) {
    double sum = 0.0;
    for (index j = 0; j < k; ++j) {
      reparam::detail::check(ids(r, j) >= 0 && ids(r, j) < embedding.rows(), function, "ids(", r,
                             ", ", j, ") ", ids(r, j), " is outside [0, ", embedding.rows(),
                             ") (the embedding rows)");
      const double w = weights(r, j);
      reparam::detail::check(std::isfinite(w) && w >= 0.0, function, "weights(", r, ", ", j,
                             ") is ", w, "; weights must be finite and >= 0");
      sum += w;
    }
    reparam::detail::check(sum > 0.0 && std::isfinite(sum), function, "row ", r,
                           " of weights sums to ", sum, "; it must be finite and > 0");
  }
  for (index r = rows.begin; r < rows.end; ++r) {
    double sum = 0.0;
    for (index j = 0; j < k; ++j) {
      sum += weights(r, j);
    }
    // Column-outer so that each output entry is one double accumulation, rounded once.
    for (index d = 0; d < dim; ++d) {
      double acc = 0.0;
      for (index j = 0; j < k; ++j) {
        acc += weights(r, j) * static_cast<double>(embedding(ids(r, j), d));
      }
      out(r, d) = static_cast<T>(acc / sum);
    }
  }
}

template <class DerivedL>
void soft_token_logprob_rows(const Eigen::MatrixBase<DerivedL>& policy_logits,
                             const index_matrix& ids, const matrix<double>& perturbed,
                             const soft_token_config& config, double_vector_ref logprob,
                             matrix_ref<double> grad_logits, row_range rows) {
  constexpr const char* function = "gumbel::soft_token_logprob_rows";
  reparam::detail::static_check_input<DerivedL>();
  check_soft_token_config(function, config);
  const index row_count = policy_logits.rows();
  const index vocab = policy_logits.cols();
  const index k = ids.cols();
  reparam::detail::check(ids.rows() == row_count && k >= 1, function, "ids is [", ids.rows(), ", ",
                         k, "]; it needs ", row_count,
                         " rows (one per logits row) and >= 1 column");
  detail::check_shape(function, "perturbed", perturbed.rows(), perturbed.cols(), "ids", ids.rows(),
                      k);
  detail::check_length(function, "logprob", logprob.size(), row_count);
  const bool has_grad = grad_logits.size() != 0;
  if (has_grad) {
    detail::check_shape(function, "grad_logits", grad_logits.rows(), grad_logits.cols(),
                        "policy_logits", row_count, vocab);
  }
  reparam::detail::check_row_range(function, rows, row_count);
  detail::check_logits(function, policy_logits, rows);
  const double t = config.temperature;
  for (index r = rows.begin; r < rows.end; ++r) {
    for (index j = 0; j < k; ++j) {
      reparam::detail::check(ids(r, j) >= 0 && ids(r, j) < vocab, function, "ids(", r, ", ", j,
                             ") ", ids(r, j), " is outside [0, ", vocab, ")");
      reparam::detail::check(std::isfinite(perturbed(r, j)), function, "perturbed(", r, ", ", j,
                             ") is ", perturbed(r, j), "; recorded values must be finite");
      for (index i = 0; i < j; ++i) {
        reparam::detail::check(ids(r, i) != ids(r, j), function, "row ", r, " repeats id ",
                               ids(r, j), " (columns ", i, " and ", j,
                               "); score discrete tokens with token_logprob_rows");
      }
    }
    double max_u = 0.0;
    double total = 0.0;
    detail::candidate_normalizer(policy_logits, ids, r, t, max_u, total);
    reparam::detail::check(max_u != detail::negative_infinity, function, "row ", r,
                           ": every recorded id has a -inf (masked) policy logit");
    bool any_kept = false;
    for (index j = 0; j < k; ++j) {
      const double u = static_cast<double>(policy_logits(r, ids(r, j))) / t;
      const double e = u == detail::negative_infinity ? 0.0 : std::exp(u - max_u);
      any_kept =
          any_kept || detail::floored_log_prob(e, total, config.prob_floor) > config.mask_threshold;
    }
    reparam::detail::check(any_kept, function, "row ", r,
                           ": no candidate has log(p_hat + prob_floor) > mask_threshold ",
                           config.mask_threshold, ", so its log-probability is undefined");
  }
  const double lambda = config.noise_scale;
  for (index r = rows.begin; r < rows.end; ++r) {
    double max_u = 0.0;
    double total = 0.0;
    detail::candidate_normalizer(policy_logits, ids, r, t, max_u, total);
    const auto p_hat = [&](index j) {
      const double u = static_cast<double>(policy_logits(r, ids(r, j))) / t;
      return u == detail::negative_infinity ? 0.0 : std::exp(u - max_u) / total;
    };
    double sum = 0.0;
    index count = 0;
    for (index j = 0; j < k; ++j) {
      const double u = static_cast<double>(policy_logits(r, ids(r, j))) / t;
      const double e = u == detail::negative_infinity ? 0.0 : std::exp(u - max_u);
      const double log_p = detail::floored_log_prob(e, total, config.prob_floor);
      if (log_p > config.mask_threshold) {
        const double g = detail::clamp_to((perturbed(r, j) - log_p) / lambda, config.clamp_low,
                                          config.clamp_high);
        sum += -g - std::exp(-g);
        ++count;
      }
    }
    const bool is_mean = config.reduction == logprob_reduction::mean;
    logprob[r] = is_mean ? sum / static_cast<double>(count) : sum;
    if (!has_grad) {
      continue;
    }
    // d logprob / d p_hat_j = w (1 - exp(-x_j)) / (lambda (p_hat_j + floor)) where the clamp
    // passes x_j (low <= x_j <= high, as torch.clamp's gradient) and j is kept; then through
    // p_hat = softmax over the K ids of logits / T.
    const double w = is_mean ? 1.0 / static_cast<double>(count) : 1.0;
    const auto d_p_hat = [&](index j) {
      const double u = static_cast<double>(policy_logits(r, ids(r, j))) / t;
      const double e = u == detail::negative_infinity ? 0.0 : std::exp(u - max_u);
      const double log_p = detail::floored_log_prob(e, total, config.prob_floor);
      if (!(log_p > config.mask_threshold)) {
        return 0.0;
      }
      const double x = (perturbed(r, j) - log_p) / lambda;
      if (x < config.clamp_low || x > config.clamp_high) {
        return 0.0;
      }
      return w * (1.0 - std::exp(-x)) / (lambda * (e / total + config.prob_floor));
    };
    double weighted = 0.0;  // sum_j c_j p_hat_j
    for (index j = 0; j < k; ++j) {
      weighted += d_p_hat(j) * p_hat(j);
    }
    for (index c = 0; c < vocab; ++c) {
      grad_logits(r, c) = 0.0;
    }
    for (index j = 0; j < k; ++j) {
      grad_logits(r, ids(r, j)) = p_hat(j) * (d_p_hat(j) - weighted) / t;
    }
  }
}

template <class DerivedL>
void token_logprob_rows(const Eigen::MatrixBase<DerivedL>& policy_logits,
                        const index_vector& tokens, double temperature, double_vector_ref logprob,
                        row_range rows) {
  constexpr const char* function = "gumbel::token_logprob_rows";
  reparam::detail::static_check_input<DerivedL>();
  const index row_count = policy_logits.rows();
  reparam::detail::check(std::isfinite(temperature) && temperature > 0.0, function, "temperature ",
                         temperature, " must be finite and > 0");
  detail::check_length(function, "tokens", tokens.size(), row_count);
  detail::check_length(function, "logprob", logprob.size(), row_count);
  reparam::detail::check_row_range(function, rows, row_count);
  detail::check_logits(function, policy_logits, rows);
  for (index r = rows.begin; r < rows.end; ++r) {
    reparam::detail::check(tokens[r] >= 0 && tokens[r] < policy_logits.cols(), function, "tokens[",
                           r, "] ", tokens[r], " is outside [0, ", policy_logits.cols(), ")");
  }
  for (index r = rows.begin; r < rows.end; ++r) {
    const double m = detail::row_max(policy_logits, r) / temperature;
    double sum = 0.0;
    for (index c = 0; c < policy_logits.cols(); ++c) {
      const auto l = static_cast<double>(policy_logits(r, c));
      if (l != detail::negative_infinity) {
        sum += std::exp(l / temperature - m);
      }
    }
    const auto l = static_cast<double>(policy_logits(r, tokens[r]));
    logprob[r] = l == detail::negative_infinity ? detail::negative_infinity
                                                : (l / temperature - m) - std::log(sum);
  }
}

}  // namespace reparam::gumbel

#endif  // REPARAM_GUMBEL_DETAIL_SOFT_TOKEN_IMPL_HPP

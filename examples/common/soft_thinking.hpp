// SPDX-License-Identifier: Apache-2.0
// Soft-thinking decoding on the llama runner, shared by examples/gumbel_soft_thinking.cpp, the
// demo and the real-model test: discrete sampling (exact Gumbel-max over the whole vocabulary,
// or the top candidate of a soft token), and Gumbel-softmax soft tokens (SofT-GRPO): each step
// mixes the embedding rows of the top-k candidates with weights softmax((log p_bar + g) / tau_g)
// and feeds the mixture back as the next input. The text of a soft run is the sequence of top
// candidates. Also the measures the example reports: perplexity of generated text under the fp32
// model, distinct n-grams, and the re-scoring of a soft rollout in one batched pass (the policy
// log-probability of SofT-GRPO's training step).
#ifndef REPARAM_EXAMPLES_COMMON_SOFT_THINKING_HPP
#define REPARAM_EXAMPLES_COMMON_SOFT_THINKING_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/sample.hpp>
#include <reparam/gumbel/soft_token.hpp>

#include "runner/eval.hpp"
#include "runner/forward.hpp"
#include "runner/model.hpp"

namespace examples {

/// How each next input is chosen.
enum class decode_mode {
  discrete_full,  ///< the token Gumbel-max samples from softmax(logits / T), fed as its embedding
  discrete_top,   ///< the soft token's top candidate (top-k / top-p, clamped noise), as a token
  soft,           ///< the soft token's embedding mixture
};

inline const char* decode_mode_name(decode_mode mode) {
  switch (mode) {
    case decode_mode::discrete_full:
      return "discrete (Gumbel-max, full softmax)";
    case decode_mode::discrete_top:
      return "discrete (top-k/top-p candidate)";
    case decode_mode::soft:
      return "soft tokens (Gumbel-softmax)";
  }
  return "?";
}

struct decode_settings {
  decode_mode mode = decode_mode::soft;
  reparam::gumbel::soft_token_config tokens;  // T, top-k, top-p, tau_g, clamp, ...
  reparam::index steps = 128;                 // generated positions at most
  std::uint64_t seed = 0;
};

/// One generated sequence. `tokens` is the prompt plus the discrete text (BOS not included);
/// for soft runs the per-step candidates, perturbed logits, weights and recorded log-probs are
/// kept (one row per generated position) for re-scoring.
struct decode_trace {
  std::vector<int> tokens;
  std::size_t prompt_size = 0;
  reparam::gumbel::index_matrix ids;
  reparam::matrix<double> perturbed;
  reparam::matrix<double> weights;
  std::vector<double> logprob;
  double effective_candidates = 0.0;  // mean over steps of exp(entropy of the weights)
};

namespace detail {

inline double exp_entropy(const reparam::matrix<double>& weights, reparam::index row) {
  double h = 0.0;
  for (reparam::index k = 0; k < weights.cols(); ++k) {
    const double w = weights(row, k);
    h -= w > 0.0 ? w * std::log(w) : 0.0;
  }
  return std::exp(h);
}

}  // namespace detail

/// Generates from `prompt` ([BOS, ...]) until `steps` positions are added or the chosen token is
/// BOS (llama2.c's stop rule). Step t draws noise key {seed, t} at row 0, so runs are reproducible
/// and two modes with one seed share their noise.
inline decode_trace soft_decode(llama::runner& r, const std::vector<int>& prompt,
                                const decode_settings& settings) {
  namespace g = reparam::gumbel;
  constexpr int bos = 1;
  reparam::detail::check(!prompt.empty(), "examples::soft_decode", "the prompt is empty");
  const llama::model& m = r.bound_model();
  const reparam::index dim = m.config().dim;
  const reparam::index k = settings.tokens.top_k;
  decode_trace trace;
  trace.tokens = prompt;
  trace.prompt_size = prompt.size();
  trace.ids.resize(settings.steps, k);
  trace.perturbed.resize(settings.steps, k);
  trace.weights.resize(settings.steps, k);
  trace.logprob.resize(static_cast<std::size_t>(settings.steps));
  reparam::matrix<float> mixed(settings.steps, dim);  // row t: the soft input after step t
  g::index_vector one(1);
  reparam::vector<double> logprob(1);
  r.reset();
  reparam::matrix<float> logits = r.prefill(prompt, false);  // [1, vocab], the next step's
  reparam::index step = 0;
  double effective = 0.0;
  for (; step < settings.steps && r.position() < m.config().seq_len; ++step) {
    const g::noise_key key{settings.seed, static_cast<std::uint32_t>(step)};
    int token = 0;
    if (settings.mode == decode_mode::discrete_full) {
      g::gumbel_max_rows(logits, key, one, reparam::all_rows(1), settings.tokens.temperature);
      token = static_cast<int>(one[0]);
    } else {
      g::soft_token_rows(logits, settings.tokens, key, trace.ids.middleRows(step, 1),
                         trace.perturbed.middleRows(step, 1), trace.weights.middleRows(step, 1),
                         logprob, reparam::all_rows(1));
      trace.logprob[static_cast<std::size_t>(step)] = logprob[0];
      effective += detail::exp_entropy(trace.weights, step);
      token = static_cast<int>(trace.ids(step, 0));
    }
    if (token == bos) {
      break;
    }
    trace.tokens.push_back(token);
    if (settings.mode == decode_mode::soft) {
      g::mix_embeddings_rows(trace.ids, trace.weights, m.token_embedding(),
                             reparam::matrix_ref<float>(mixed), reparam::row_range{step, step + 1});
      logits = r.prefill_embeddings(
          reparam::row_major_map(static_cast<const float*>(mixed.row(step).data()), 1, dim), false);
    } else {
      logits = r.prefill(&token, 1, false);
    }
  }
  trace.ids.conservativeResize(step, k);
  trace.perturbed.conservativeResize(step, k);
  trace.weights.conservativeResize(step, k);
  trace.logprob.resize(static_cast<std::size_t>(step));
  trace.effective_candidates = step > 0 ? effective / static_cast<double>(step) : 0.0;
  return trace;
}

/// BOS plus the first `count` tokens of each of the first `samples` paragraphs (stories) of
/// the paragraph stream, which begins every paragraph with BOS.
inline std::vector<std::vector<int>> story_prompts(const std::vector<int>& stream, long samples,
                                                   long count) {
  constexpr int bos = 1;
  std::vector<std::vector<int>> prompts;
  for (std::size_t i = 0; i < stream.size() && static_cast<long>(prompts.size()) < samples; ++i) {
    const auto length = static_cast<std::size_t>(count) + 1;
    if (stream[i] != bos || i + length > stream.size()) continue;
    const auto first = stream.begin() + static_cast<std::ptrdiff_t>(i);
    if (std::find(first + 1, first + static_cast<std::ptrdiff_t>(length), bos) !=
        first + static_cast<std::ptrdiff_t>(length)) {
      continue;  // a paragraph shorter than the prompt
    }
    prompts.emplace_back(first, first + static_cast<std::ptrdiff_t>(length));
  }
  return prompts;
}

/// Negative log-likelihood of the generated tokens (after the prompt) under the runner's model,
/// fed as ordinary text in one prefill.
inline llama::nll_total score_generated(llama::runner& r, const decode_trace& trace) {
  llama::nll_total total;
  if (trace.tokens.size() <= trace.prompt_size) {
    return total;
  }
  r.reset();
  const auto logits = r.prefill(trace.tokens, true);
  // Position t - 1 predicts token t: log softmax(logits)[token] per generated token.
  const auto prompt = static_cast<reparam::index>(trace.prompt_size);
  const auto generated = static_cast<reparam::index>(trace.tokens.size()) - prompt;
  reparam::gumbel::index_vector next(generated);
  for (reparam::index t = 0; t < generated; ++t) {
    next[t] = trace.tokens[static_cast<std::size_t>(prompt + t)];
  }
  reparam::vector<double> logprob(generated);
  reparam::gumbel::token_logprob_rows(logits.middleRows(prompt - 1, generated), next, 1.0, logprob,
                                      reparam::all_rows(generated));
  total.nll_sum = -logprob.sum();
  total.tokens = generated;
  total.windows = 1;
  return total;
}

/// Distinct n-grams of the generated parts (after the prompts) over all traces, as
/// {unique n-grams, total n-grams} (Li et al. 2016's distinct-n is unique / total).
inline std::pair<std::size_t, std::size_t> distinct_ngrams(const std::vector<decode_trace>& traces,
                                                           std::size_t n) {
  std::set<std::vector<int>> unique;
  std::size_t total = 0;
  for (const decode_trace& t : traces) {
    for (std::size_t i = t.prompt_size; i + n <= t.tokens.size(); ++i) {
      unique.emplace(t.tokens.begin() + static_cast<std::ptrdiff_t>(i),
                     t.tokens.begin() + static_cast<std::ptrdiff_t>(i + n));
      ++total;
    }
  }
  return {unique.size(), total};
}

/// SofT-GRPO's training-side view of a soft rollout: feeds the prompt tokens and the recorded
/// soft embeddings in ONE batched prefill (as the trainer does) and scores every soft position
/// with soft_token_logprob_rows. Returns the new log-probabilities, one per generated position.
inline std::vector<double> rescore_soft_rollout(llama::runner& r, const decode_trace& trace,
                                                const reparam::gumbel::soft_token_config& config) {
  namespace g = reparam::gumbel;
  const llama::model& m = r.bound_model();
  const reparam::index dim = m.config().dim;
  const auto steps = trace.ids.rows();
  const auto prompt = static_cast<reparam::index>(trace.prompt_size);
  // Inputs: the prompt's embeddings, then the soft embedding of every step but the last (the
  // last step's distribution comes from the input before it).
  const reparam::index inputs = prompt + steps - 1;
  reparam::matrix<float> x(inputs, dim);
  for (reparam::index t = 0; t < prompt; ++t) {
    x.row(t) = m.token_embedding().row(trace.tokens[static_cast<std::size_t>(t)]);
  }
  if (steps > 1) {
    reparam::matrix<float> mixed(steps, dim);
    g::mix_embeddings_rows(trace.ids, trace.weights, m.token_embedding(),
                           reparam::matrix_ref<float>(mixed), reparam::row_range{0, steps - 1});
    x.bottomRows(steps - 1) = mixed.topRows(steps - 1);
  }
  r.reset();
  const auto logits = r.prefill_embeddings(
      reparam::row_major_map(static_cast<const float*>(x.data()), inputs, dim));
  reparam::vector<double> logprob(steps);
  reparam::matrix<double> no_grad(0, 0);
  g::soft_token_logprob_rows(logits.bottomRows(steps), trace.ids, trace.perturbed, config, logprob,
                             no_grad, reparam::all_rows(steps));
  return {logprob.data(), logprob.data() + steps};
}

}  // namespace examples

#endif  // REPARAM_EXAMPLES_COMMON_SOFT_THINKING_HPP

// SPDX-License-Identifier: Apache-2.0
// Perplexity protocols and generation on top of llama::runner.
#include "runner/eval.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <reparam/core/error.hpp>

namespace llama {

using reparam::index;

std::string read_text_file(const std::string& path) {
  return read_file(path, "llama::read_text_file");
}

nll_total& nll_total::operator+=(const nll_total& other) {
  nll_sum += other.nll_sum;
  tokens += other.tokens;
  windows += other.windows;
  return *this;
}

namespace {

// Python's str.strip() restricted to ASCII whitespace; the bundled texts contain no other
// whitespace at piece boundaries (only ' ' and '\n' occur at all).
std::string_view strip(std::string_view text) {
  constexpr std::string_view whitespace = " \t\n\r\v\f";
  const std::size_t begin = text.find_first_not_of(whitespace);
  if (begin == std::string_view::npos) return {};
  const std::size_t end = text.find_last_not_of(whitespace);
  return text.substr(begin, end - begin + 1);
}

// Calls visit(piece) for every non-empty stripped piece of `text` split on `separator`;
// stops early when visit returns false.
template <class Visit>
void for_each_piece(std::string_view text, std::string_view separator, Visit visit) {
  std::size_t start = 0;
  for (;;) {
    const std::size_t end = text.find(separator, start);
    const std::string_view piece =
        strip(text.substr(start, end == std::string_view::npos ? text.npos : end - start));
    if (!piece.empty() && !visit(piece)) return;
    if (end == std::string_view::npos) return;
    start = end + separator.size();
  }
}

perplexity_result make_result(std::string protocol, std::int64_t sequences,
                              const nll_total& total) {
  perplexity_result result;
  result.protocol = std::move(protocol);
  result.sequences = sequences;
  result.windows = total.windows;
  result.tokens = total.tokens;
  result.mean_nll = total.tokens > 0 ? total.nll_sum / static_cast<double>(total.tokens) : 0.0;
  result.ppl = std::exp(result.mean_nll);
  return result;
}

}  // namespace

nll_total score_windows(runner& r, const std::vector<int>& tokens, index window,
                        index max_windows) {
  constexpr const char* function = "llama::score_windows";
  reparam::detail::check(window >= 1 && window <= r.max_batch(), function, "window ", window,
                         " not in [1, max_batch ", r.max_batch(), "]");
  nll_total total;
  const auto predicted = static_cast<index>(tokens.size()) - 1;  // transitions to score
  for (index start = 0; start < predicted; start += window) {
    if (max_windows >= 0 && total.windows >= max_windows) break;
    const index count = std::min(window, predicted - start);
    r.reset();
    const auto logits = r.prefill(tokens.data() + start, count, true);
    for (index t = 0; t < count; ++t) {
      // -log softmax(logits)[target] = logsumexp(logits) - logits[target], in double.
      const auto row = logits.row(t).cast<double>();
      const double max_logit = row.maxCoeff();
      const double log_sum = max_logit + std::log((row.array() - max_logit).exp().sum());
      const int target = tokens[static_cast<std::size_t>(start + t + 1)];
      total.nll_sum += log_sum - row(target);
    }
    total.tokens += count;
    ++total.windows;
  }
  return total;
}

std::vector<std::vector<int>> story_sequences(const tokenizer& tok, std::string_view text) {
  std::vector<std::vector<int>> stories;
  for_each_piece(text, "<|endoftext|>", [&](std::string_view story) {
    stories.push_back(tok.encode(story, /*add_bos=*/true));
    return true;
  });
  return stories;
}

std::vector<int> paragraph_stream(const tokenizer& tok, std::string_view text,
                                  std::int64_t min_tokens, std::int64_t* paragraphs) {
  std::vector<int> stream;
  std::int64_t count = 0;
  for_each_piece(text, "\n\n", [&](std::string_view paragraph) {
    const std::vector<int> tokens = tok.encode(paragraph, /*add_bos=*/true);
    stream.insert(stream.end(), tokens.begin(), tokens.end());
    ++count;
    return min_tokens < 0 || static_cast<std::int64_t>(stream.size()) < min_tokens;
  });
  if (paragraphs != nullptr) *paragraphs = count;
  return stream;
}

perplexity_result perplexity_stories(runner& r, const tokenizer& tok, std::string_view text) {
  const auto stories = story_sequences(tok, text);
  const index window = std::min<index>(r.max_batch(), r.bound_model().config().seq_len);
  nll_total total;
  for (const auto& story : stories) total += score_windows(r, story, window);
  return make_result("stories", static_cast<std::int64_t>(stories.size()), total);
}

perplexity_result perplexity_paragraph_stream(runner& r, const tokenizer& tok,
                                              std::string_view text, index max_windows,
                                              index window) {
  // Window k needs stream[0 .. (k+1)*window] (inputs plus the last target).
  const std::int64_t needed = max_windows < 0 ? -1 : max_windows * window + 1;
  std::int64_t paragraphs = 0;
  const std::vector<int> stream = paragraph_stream(tok, text, needed, &paragraphs);
  return make_result("paragraph_stream", paragraphs, score_windows(r, stream, window, max_windows));
}

// --- generation ----------------------------------------------------------------------------------

int argmax(const reparam::const_vector_map<float>& logits) {
  index best = 0;
  for (index i = 1; i < logits.size(); ++i) {
    if (logits(i) > logits(best)) best = i;  // strict: the first maximum wins, as in llama2.c
  }
  return static_cast<int>(best);
}

sampler::sampler(int vocab_size, const sampler_params& params)
    : params_(params),
      engine_(params.seed),
      probabilities_(static_cast<std::size_t>(vocab_size)),
      order_(static_cast<std::size_t>(vocab_size)) {
  constexpr const char* function = "llama::sampler";
  reparam::detail::check(vocab_size > 0, function, "vocab_size ", vocab_size, " must be > 0");
  reparam::detail::check(std::isfinite(params.temperature) && params.temperature >= 0.0f, function,
                         "temperature ", params.temperature, " must be finite and >= 0");
  reparam::detail::check(std::isfinite(params.top_p), function, "top_p ", params.top_p,
                         " must be finite");
}

int sampler::sample(const reparam::const_vector_map<float>& logits) {
  const auto n = static_cast<index>(probabilities_.size());
  reparam::detail::check(logits.size() == n, "llama::sampler::sample", "logits has ", logits.size(),
                         " entries, expected vocab_size ", n);
  if (params_.temperature == 0.0f) return argmax(logits);

  // softmax(logits / temperature), in float as llama2.c does.
  reparam::vector_map<float> p(probabilities_.data(), n);
  p = logits / params_.temperature;
  p = (p.array() - p.maxCoeff()).exp();
  p /= p.sum();
  const float coin = reparam::uniform_open01_float(engine_());

  if (params_.top_p <= 0.0f || params_.top_p >= 1.0f) {
    float cdf = 0.0f;
    for (index i = 0; i < n; ++i) {
      cdf += p(i);
      if (coin < cdf) return static_cast<int>(i);
    }
    return static_cast<int>(n - 1);  // rounding
  }

  // Nucleus: tokens below (1 - top_p) / (n - 1) can never be in the nucleus, so they are dropped
  // before sorting (llama2.c's shortcut); then the smallest prefix with mass > top_p is sampled.
  const float cutoff = (1.0f - params_.top_p) / static_cast<float>(n - 1);
  std::size_t kept = 0;
  for (index i = 0; i < n; ++i) {
    if (p(i) >= cutoff) order_[kept++] = static_cast<int>(i);
  }
  const auto by_probability = [&](int a, int b) {
    return p(a) > p(b) || (p(a) == p(b) && a < b);  // ties by id: deterministic
  };
  std::sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(kept), by_probability);
  float cumulative = 0.0f;
  std::size_t last = kept - 1;
  for (std::size_t i = 0; i < kept; ++i) {
    cumulative += p(order_[i]);
    if (cumulative > params_.top_p) {
      last = i;
      break;
    }
  }
  const float target = coin * cumulative;
  float cdf = 0.0f;
  for (std::size_t i = 0; i <= last; ++i) {
    cdf += p(order_[i]);
    if (target < cdf) return order_[i];
  }
  return order_[last];
}

std::vector<int> generate(runner& r, const std::vector<int>& prompt, index steps,
                          const sampler_params& params) {
  constexpr const char* function = "llama::generate";
  const model_config& config = r.bound_model().config();
  reparam::detail::check(!prompt.empty(), function, "prompt is empty; start with {BOS}");
  reparam::detail::check(steps >= static_cast<index>(prompt.size()) && steps <= config.seq_len,
                         function, "steps ", steps, " not in [prompt size ", prompt.size(),
                         ", seq_len ", config.seq_len, "]");
  sampler pick(config.vocab_size, params);
  std::vector<int> tokens = prompt;
  tokens.reserve(static_cast<std::size_t>(steps) + 1);
  r.reset();
  const auto last = r.prefill(prompt, /*all_logits=*/false);
  int next = pick.sample(reparam::const_vector_map<float>(last.data(), last.cols()));
  while (next != bos_token) {
    tokens.push_back(next);
    if (static_cast<index>(tokens.size()) > steps) break;
    next = pick.sample(r.step(next));
  }
  return tokens;
}

forward_speed measure_forward_speed(runner& r, const std::vector<int>& window, int decode_steps,
                                    double min_seconds) {
  using clock = std::chrono::steady_clock;
  const auto seconds_since = [](clock::time_point start) {
    return std::chrono::duration<double>(clock::now() - start).count();
  };
  forward_speed out;
  const auto prefill_start = clock::now();
  do {
    r.reset();
    r.prefill(window, /*all_logits=*/true);
    out.prefill_tokens += static_cast<long>(window.size());
  } while (seconds_since(prefill_start) < min_seconds);
  out.prefill_seconds = seconds_since(prefill_start);
  const auto decode_start = clock::now();
  do {
    r.reset();
    int token = bos_token;
    for (int pos = 0; pos < decode_steps; ++pos) {
      token = argmax(r.step(token));
      ++out.decode_tokens;
    }
  } while (seconds_since(decode_start) < min_seconds);
  out.decode_seconds = seconds_since(decode_start);
  return out;
}

}  // namespace llama

// SPDX-License-Identifier: Apache-2.0
// What the examples measure with a runner: perplexity under the two fixed protocols of
// data/llama2c_stories260K/README.md, and text generation (greedy, or sampled with temperature and
// top-p from a seeded Philox stream, stopping at BOS like llama2.c).
#ifndef REPARAM_EXAMPLES_RUNNER_EVAL_HPP
#define REPARAM_EXAMPLES_RUNNER_EVAL_HPP

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <reparam/core/random.hpp>
#include <reparam/core/views.hpp>

#include "runner/forward.hpp"
#include "runner/tokenizer.hpp"

namespace llama {

/// Reads a whole file as bytes; throws reparam::io_error naming it if it cannot be read.
std::string read_text_file(const std::string& path);

/// Sum of -log p(target) over predicted tokens, accumulated in double.
struct nll_total {
  double nll_sum = 0.0;
  std::int64_t tokens = 0;  // predicted tokens
  std::int64_t windows = 0;

  nll_total& operator+=(const nll_total& other);
};

struct perplexity_result {
  std::string protocol;        // "stories" or "paragraph_stream"
  std::int64_t sequences = 0;  // stories or paragraphs scored
  std::int64_t windows = 0;
  std::int64_t tokens = 0;  // predicted tokens
  double mean_nll = 0.0;    // nats per token
  double ppl = 0.0;         // exp(mean_nll)
};

/// Scores `tokens` in non-overlapping windows of `window` inputs, each from an empty KV cache:
/// window k has inputs tokens[k*window, min((k+1)*window, n-1)) and targets shifted by one, so
/// all n-1 transitions are predicted once. At most `max_windows` windows (< 0: all).
/// Needs window <= the runner's max_batch.
nll_total score_windows(runner& r, const std::vector<int>& tokens, reparam::index window,
                        reparam::index max_windows = -1);

/// Protocol (a), tinystories_sample_cs336.txt: split on "<|endoftext|>", strip ASCII whitespace,
/// drop empty pieces; each story is [BOS] + encode(story).
std::vector<std::vector<int>> story_sequences(const tokenizer& tok, std::string_view text);

/// Protocol (b), tinystories_valid_head.txt: split on "\n\n", strip ASCII whitespace, drop empty
/// pieces; the stream is the concatenation of [BOS] + encode(paragraph). Stops encoding once the
/// stream holds `min_tokens` tokens (< 0: encode everything), so a short evaluation does not pay
/// for the whole file. `paragraphs`, if given, receives the number of paragraphs encoded.
std::vector<int> paragraph_stream(const tokenizer& tok, std::string_view text,
                                  std::int64_t min_tokens = -1, std::int64_t* paragraphs = nullptr);

/// Protocol (a): every story scored on its own (windows of seq_len if it were longer).
/// stories260K: 1804 tokens, mean NLL 1.2664, ppl 3.548.
perplexity_result perplexity_stories(runner& r, const tokenizer& tok, std::string_view text);

/// Protocol (b): the first `max_windows` windows of 512 inputs (< 0: all).
/// stories260K, 16 windows: 8192 tokens, mean NLL 1.3928, ppl 4.026.
perplexity_result perplexity_paragraph_stream(runner& r, const tokenizer& tok,
                                              std::string_view text,
                                              reparam::index max_windows = 16,
                                              reparam::index window = 512);

/// Sampling settings. temperature 0 means greedy (argmax). top_p in (0, 1) enables nucleus
/// sampling; otherwise the whole distribution is sampled (llama2.c's rules).
struct sampler_params {
  float temperature = 1.0f;
  float top_p = 0.9f;
  std::uint64_t seed = 0;
};

/// Index of the largest logit (the first one on ties).
int argmax(const reparam::const_vector_map<float>& logits);

/// llama2.c's sampler on a Philox stream. Owns its buffers; sample() does not allocate.
class sampler {
 public:
  sampler(int vocab_size, const sampler_params& params);
  int sample(const reparam::const_vector_map<float>& logits);

 private:
  sampler_params params_;
  reparam::philox_engine engine_;
  std::vector<float> probabilities_;
  std::vector<int> order_;
};

/// Forward throughput of a runner: prefill of `window` (all logits) repeated, and greedy decode
/// from BOS for `decode_steps` positions repeated, each for at least `min_seconds`.
struct forward_speed {
  long prefill_tokens = 0;
  double prefill_seconds = 0.0;
  long decode_tokens = 0;
  double decode_seconds = 0.0;

  double prefill_tokens_per_s() const {
    return static_cast<double>(prefill_tokens) / prefill_seconds;
  }
  double decode_tokens_per_s() const { return static_cast<double>(decode_tokens) / decode_seconds; }
};
forward_speed measure_forward_speed(runner& r, const std::vector<int>& window, int decode_steps,
                                    double min_seconds);

/// Generates from `prompt` (non-empty, e.g. {BOS}) until the sequence holds steps + 1 tokens or
/// BOS is produced (not included). Resets the runner, prefills the prompt in one batch, then
/// decodes token by token. Returns prompt + generated tokens.
std::vector<int> generate(runner& r, const std::vector<int>& prompt, reparam::index steps,
                          const sampler_params& params);

}  // namespace llama

#endif  // REPARAM_EXAMPLES_RUNNER_EVAL_HPP

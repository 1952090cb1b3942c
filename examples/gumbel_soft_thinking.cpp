// SPDX-License-Identifier: Apache-2.0
// Soft-thinking decoding with Gumbel-softmax soft tokens (SofT-GRPO) on the bundled real model
// (llama2.c stories260K): generates continuations of TinyStories openings with discrete sampling
// (exact Gumbel-max over the full softmax, and the top candidate of a top-k/top-p soft token) and
// with soft tokens, whose embedding mixtures are fed back as the next input, for several
// Gumbel-softmax temperatures tau_g. Reports the perplexity of the generated text under the fp32
// model, distinct n-grams, the effective number of mixed candidates, and a sample of each. Then
// re-scores the soft rollouts the way SofT-GRPO's trainer does (one batched pass over the recorded
// soft inputs) and compares with the log-probabilities recorded during the rollout.
// --json writes the same records.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <reparam/gumbel/soft_token.hpp>

#include "common/cli.hpp"
#include "common/results.hpp"
#include "common/soft_thinking.hpp"
#include "runner/eval.hpp"
#include "runner/forward.hpp"
#include "runner/model.hpp"
#include "runner/tokenizer.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
using examples::decode_mode;

struct options {
  std::string data_dir = REPARAM_DATA_DIR;
  std::string model_path;  // default: <data>/llama2c_stories260K/stories260K.bin
  std::string json_path;
  long samples = 32;
  long steps = 200;
  long prompt_tokens = 4;
  long seed = 2026;
};

struct method {
  decode_mode mode;
  double tau_g;
  double top_p;
};

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);
  options opts;
  examples::cli cli(
      "reparam_gumbel_soft_thinking",
      "Generates TinyStories continuations with the bundled llama2.c stories260K using\n"
      "discrete Gumbel-max sampling and Gumbel-softmax soft tokens (SofT-GRPO) for\n"
      "several tau_g; prints perplexity under the fp32 model, distinct n-grams and\n"
      "samples, and checks SofT-GRPO's batched re-scoring of the rollouts.");
  cli.add_option("--data", &opts.data_dir, "DIR",
                 "data directory with llama2c_stories260K/ and tinystories_text/");
  cli.add_option("--model", &opts.model_path, "FILE",
                 "checkpoint (default: DIR/llama2c_stories260K/stories260K.bin)");
  cli.add_option("--json", &opts.json_path, "FILE", "also write the results as a JSON list");
  cli.add_option("--samples", &opts.samples, "N",
                 "continuations per method (one per story of tinystories_valid_head.txt)");
  cli.add_option("--steps", &opts.steps, "N", "generated tokens per continuation at most");
  cli.add_option("--prompt-tokens", &opts.prompt_tokens, "N", "story tokens in each prompt");
  cli.add_option("--seed", &opts.seed, "N", "noise seed (sample i uses seed + i)");
  if (const int code = cli.parse(argc, argv, std::cout, std::cerr);
      code != examples::cli::proceed) {
    return code;
  }
  if (opts.model_path.empty()) {
    opts.model_path = opts.data_dir + "/llama2c_stories260K/stories260K.bin";
  }
  if (opts.samples < 1 || opts.steps < 1 || opts.prompt_tokens < 0 || opts.seed < 0) {
    std::cerr << "reparam_gumbel_soft_thinking: samples and steps must be >= 1, prompt tokens "
                 "and seed >= 0\n";
    return 2;
  }
  try {
    const auto total_start = clock_type::now();
    const llama::model model = llama::load_model(opts.model_path);
    const llama::tokenizer tok = llama::tokenizer::load(
        opts.data_dir + "/llama2c_stories260K/tok512.bin", model.config().vocab_size);
    const std::vector<std::vector<int>> prompts = examples::story_prompts(
        llama::paragraph_stream(
            tok, llama::read_text_file(opts.data_dir + "/tinystories_text/"
                                                       "tinystories_valid_head.txt")),
        opts.samples, opts.prompt_tokens);
    llama::runner runner(model);
    examples::results results;

    const std::vector<method> methods = {
        {decode_mode::discrete_full, 0.0, 1.0}, {decode_mode::discrete_top, 0.0, 0.95},
        {decode_mode::soft, 0.1, 0.95},         {decode_mode::soft, 0.5, 0.95},
        {decode_mode::soft, 1.0, 0.95},         {decode_mode::soft, 2.0, 0.95},
        {decode_mode::soft, 0.1, 1.0}};
    for (const method& m : methods) {
      const auto start = clock_type::now();
      examples::decode_settings settings;
      settings.mode = m.mode;
      settings.steps = opts.steps;
      settings.tokens.tau_g = m.tau_g > 0.0 ? m.tau_g : settings.tokens.tau_g;
      settings.tokens.top_p = m.top_p;
      std::vector<examples::decode_trace> traces;
      llama::nll_total nll;
      double effective = 0.0;
      double logprob_sum = 0.0;
      std::size_t logprob_count = 0;
      for (std::size_t i = 0; i < prompts.size(); ++i) {
        settings.seed = static_cast<std::uint64_t>(opts.seed) + i;
        traces.push_back(examples::soft_decode(runner, prompts[i], settings));
        nll += examples::score_generated(runner, traces.back());
        effective += traces.back().effective_candidates;
        for (const double lp : traces.back().logprob) logprob_sum += lp;
        logprob_count += traces.back().logprob.size();
      }
      const double seconds = seconds_since(start);
      examples::record r{{"section", "decode"},
                         {"method", examples::decode_mode_name(m.mode)},
                         {"tau_g", nullptr},
                         {"top_p", m.top_p},
                         {"samples", static_cast<long>(traces.size())},
                         {"tokens", nll.tokens},
                         {"ppl", std::exp(nll.nll_sum / static_cast<double>(nll.tokens))}};
      if (m.mode == decode_mode::soft) r["tau_g"] = m.tau_g;
      for (const std::size_t n : {std::size_t{1}, std::size_t{2}, std::size_t{3}}) {
        const auto [unique, total] = examples::distinct_ngrams(traces, n);
        r["distinct_" + std::to_string(n)] =
            static_cast<double>(unique) / static_cast<double>(std::max<std::size_t>(total, 1));
      }
      if (m.mode != decode_mode::discrete_full) {
        r["candidates"] = effective / static_cast<double>(traces.size());
        r["logprob"] = logprob_sum / static_cast<double>(std::max<std::size_t>(logprob_count, 1));
      }
      r["seconds"] = seconds;
      results.add(r);
      results.add({{"section", "sample"},
                   {"method", examples::decode_mode_name(m.mode)},
                   {"tau_g", r["tau_g"]},
                   {"top_p", m.top_p},
                   {"text", one_line(tok.decode(traces.front().tokens))}});

      if (m.mode == decode_mode::soft && m.tau_g == 0.1) {
        // SofT-GRPO's trainer: one batched pass over the recorded inputs, then the log-prob of
        // each soft token under the same weights must reproduce the recorded one.
        double max_diff = 0.0;
        double sum_diff = 0.0;
        long positions = 0;
        long differing = 0;
        for (const auto& trace : traces) {
          const std::vector<double> rescored =
              examples::rescore_soft_rollout(runner, trace, settings.tokens);
          for (std::size_t t = 0; t < rescored.size(); ++t) {
            const double d = std::abs(rescored[t] - trace.logprob[t]);
            max_diff = std::max(max_diff, d);
            sum_diff += d;
            differing += d > 1e-4 ? 1 : 0;
            ++positions;
          }
        }
        results.add({{"section", "rescoring"},
                     {"tau_g", 0.1},
                     {"top_p", m.top_p},
                     {"positions", positions},
                     {"max_abs_diff", max_diff},
                     {"mean_abs_diff", sum_diff / static_cast<double>(std::max(positions, 1L))},
                     {"positions_over_1e-4", differing}});
      }
      std::cerr << '.';
    }
    std::cerr << '\n';

    std::cout << "Soft-thinking decode on llama2.c stories260K: " << prompts.size()
              << " openings of tinystories_valid_head.txt stories (BOS + " << opts.prompt_tokens
              << " tokens), up to " << opts.steps << " generated tokens each.\n\n";
    results.print(std::cout, "decode");
    std::cout << "\nppl: perplexity of the generated text under the fp32 model (the text of a soft "
                 "run is its top candidates); distinct_n: unique / total n-grams over all "
                 "continuations; candidates: mean exp(entropy) of the mixture weights; logprob: "
                 "mean recorded SofT-GRPO log-probability (mean clamped Gumbel log-density).\n\n";
    results.print(std::cout, "rescoring");
    std::cout << "\nrescoring: the rollouts' soft inputs fed again in one batched prefill, each "
                 "soft token scored with soft_token_logprob_rows against the log-prob recorded "
                 "while decoding. With top_p 1 they agree to float round-off; with top_p < 1 "
                 "the trainer renormalizes over candidates the rollout pruned (as SofT-GRPO's "
                 "code does), so those positions differ.\n\n";
    results.print(std::cout, "sample");
    std::cout << "\ntotal " << seconds_since(total_start) << " s\n";
    if (!opts.json_path.empty()) {
      results.write_json(opts.json_path);
      std::cout << "wrote " << results.records().size() << " records to " << opts.json_path << '\n';
    }
  } catch (const std::exception& e) {
    std::cerr << "reparam_gumbel_soft_thinking: " << e.what() << '\n';
    return 1;
  }
  return 0;
}

// SPDX-License-Identifier: Apache-2.0
// Removes a concept (default: the character name "Lily", a single token of tok512) from the
// bundled real model (llama2.c stories260K) by projecting a concept subspace out of the residual
// stream, folded into every writer (token embedding, wo and w2 of every block). The subspace is
// built from residual states of TinyStories paragraphs that mention the concept vs paragraphs
// that do not (70% of the paragraphs of tinystories_valid_head.txt, in blocks of 10); every number
// is measured on the other 30%: perplexity on held-out paragraphs with the concept (forget) and
// without it (retain), the probability of the concept's token where it comes next, the balanced
// accuracy of a linear probe retrained on the edited model's states (best residual point), and
// the share of sampled stories that mention the concept. Controls: random subspaces of the same
// ranks (3 seeds), and a fold that skips one writer (inexact: it differs from the run-time hook).
// --json writes the same records.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <reparam/unlearn/ablation.hpp>
#include <reparam/unlearn/subspace.hpp>

#include "common/cli.hpp"
#include "common/concept_erasure.hpp"
#include "common/results.hpp"
#include "runner/eval.hpp"
#include "runner/forward.hpp"
#include "runner/model.hpp"
#include "runner/tokenizer.hpp"

namespace {

namespace ul = reparam::unlearn;
using clock_type = std::chrono::steady_clock;

struct options {
  std::string data_dir = REPARAM_DATA_DIR;
  std::string model_path;  // default: <data>/llama2c_stories260K/stories260K.bin
  std::string json_path;
  std::string word = "Lily";
  long paragraphs = 4300;
  long probe = 300;
  long rank = 4;
  long samples = 16;
  long steps = 200;
  long seed = 2026;
};

/// One edit: how its subspace is made and which writer (if any) the fold leaves out.
struct method {
  std::string name;
  long rank = 0;                      // 0: no edit
  std::optional<std::uint64_t> seed;  // random control
  std::string skip;                   // writer left out
};

std::string one_line(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

/// Largest probe balanced accuracy over the residual points (the best layer for the adversary),
/// with at most `per_class` paragraphs per class and part.
double best_probe(llama::runner& r, const examples::concept_split& split, std::size_t per_class) {
  const auto states = [&](const std::vector<std::vector<int>>& part) {
    return examples::residual_means(r, examples::first_of(part, per_class));
  };
  const auto fit_f = states(split.fit_forget);
  const auto fit_r = states(split.fit_retain);
  const auto test_f = states(split.test_forget);
  const auto test_r = states(split.test_retain);
  double best = 0.0;
  for (std::size_t p = 0; p < fit_f.size(); ++p) {
    best =
        std::max(best, examples::probe_balanced_accuracy(fit_f[p], fit_r[p], test_f[p], test_r[p]));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);
  options opts;
  examples::cli cli(
      "reparam_unlearn_concept",
      "Removes a concept (a character name) from the bundled llama2.c stories260K by\n"
      "folding a residual-stream projection into every writer of the stream; reports\n"
      "held-out perplexity with and without the concept, the concept token's\n"
      "probability, a linear probe's accuracy and sampled stories, against random\n"
      "subspaces of the same rank (3 seeds) and a fold that skips one writer.");
  cli.add_option("--data", &opts.data_dir, "DIR",
                 "data directory with llama2c_stories260K/ and tinystories_text/");
  cli.add_option("--model", &opts.model_path, "FILE",
                 "checkpoint (default: DIR/llama2c_stories260K/stories260K.bin)");
  cli.add_option("--json", &opts.json_path, "FILE", "also write the results as a JSON list");
  cli.add_option("--word", &opts.word, "WORD",
                 "the concept: paragraphs mentioning it are 'forget'");
  cli.add_option("--paragraphs", &opts.paragraphs, "N",
                 "paragraphs of tinystories_valid_head.txt used (70% fit, 30% held out)");
  cli.add_option("--probe", &opts.probe, "N", "paragraphs per class and part for the probes");
  cli.add_option("--rank", &opts.rank, "N", "rank of the deflated subspace");
  cli.add_option("--samples", &opts.samples, "N", "stories sampled from BOS per method");
  cli.add_option("--steps", &opts.steps, "N", "tokens per sampled story at most");
  cli.add_option("--seed", &opts.seed, "N", "sampling seed (story i uses seed + i)");
  if (const int code = cli.parse(argc, argv, std::cout, std::cerr);
      code != examples::cli::proceed) {
    return code;
  }
  if (opts.model_path.empty()) {
    opts.model_path = opts.data_dir + "/llama2c_stories260K/stories260K.bin";
  }
  if (opts.paragraphs < 100 || opts.probe < 2 || opts.rank < 1 || opts.samples < 1 ||
      opts.steps < 1 || opts.seed < 0 || opts.word.empty()) {
    std::cerr << "reparam_unlearn_concept: paragraphs must be >= 100, probe >= 2, rank, samples "
                 "and steps "
                 ">= 1, seed >= 0, word non-empty\n";
    return 2;
  }
  try {
    const auto start = clock_type::now();
    const llama::model original = llama::load_model(opts.model_path);
    const llama::tokenizer tok = llama::tokenizer::load(
        opts.data_dir + "/llama2c_stories260K/tok512.bin", original.config().vocab_size);
    // encode adds llama2.c's dummy-prefix space: "Lily" -> [" Lily"] (one token of tok512), the
    // form the name takes inside a sentence.
    const std::vector<int> word_tokens = tok.encode(opts.word);
    const int concept_token = word_tokens.size() == 1 ? word_tokens.front() : -1;
    const examples::concept_split split = examples::split_by_concept(
        tok, llama::read_text_file(opts.data_dir + "/tinystories_text/tinystories_valid_head.txt"),
        opts.word, static_cast<std::size_t>(opts.paragraphs),
        static_cast<std::size_t>(original.config().seq_len));
    if (split.fit_forget.empty() || split.fit_retain.empty() || split.test_forget.empty() ||
        split.test_retain.empty()) {
      std::cerr << "reparam_unlearn_concept: '" << opts.word
                << "' leaves a part of the split empty\n";
      return 2;
    }
    std::cout << "concept '" << opts.word << "' (" << word_tokens.size() << " token"
              << (word_tokens.size() == 1 ? "" : "s") << "): fit " << split.fit_forget.size()
              << " forget / " << split.fit_retain.size() << " retain paragraphs, held out "
              << split.test_forget.size() << " / " << split.test_retain.size() << "\n\n";

    // The concept subspaces, from the unedited model's fit-part states at every residual point.
    llama::runner base(original);
    const reparam::matrix<double> forget_states =
        examples::stack_points(examples::residual_means(base, split.fit_forget));
    const reparam::matrix<double> retain_states =
        examples::stack_points(examples::residual_means(base, split.fit_retain));
    const ul::subspace mean_diff = ul::orthonormal_basis(
        ul::mean_difference(forget_states, retain_states).direction.transpose());
    ul::selection forget_select;
    forget_select.top_k = opts.rank;
    forget_select.centered = false;
    ul::selection retain_select;
    retain_select.energy = 0.9;
    const ul::subspace deflated =
        ul::deflated_subspace(forget_states, retain_states, forget_select, retain_select);

    std::vector<method> methods{{"none", 0, std::nullopt, ""},
                                {"mean_diff", 1, std::nullopt, ""},
                                {"deflated", deflated.rank(), std::nullopt, ""}};
    for (const long rank : {1L, static_cast<long>(deflated.rank())}) {
      for (std::uint64_t s = 1; s <= 3; ++s) methods.push_back({"random", rank, s, ""});
    }
    methods.push_back({"mean_diff", 1, std::nullopt, "wo.2"});

    examples::results results;
    std::vector<std::pair<std::string, std::string>> stories;
    for (const method& m : methods) {
      llama::model edited = llama::load_model(opts.model_path);
      examples::record rec{{"section", "unlearn"},
                           {"method", m.name},
                           {"rank", m.rank},
                           {"seed", nullptr},
                           {"skipped", m.skip}};
      if (m.seed) rec["seed"] = *m.seed;
      ul::subspace q;
      if (m.rank > 0) {
        q = m.seed ? ul::random_subspace(original.config().dim, m.rank, *m.seed)
                   : (m.name == "mean_diff" ? mean_diff : deflated);
        ul::residual_stream<float> stream = examples::llama_residual_stream(edited, m.skip);
        const ul::ablation_report report = ul::fold_residual_ablation(stream, q);
        double delta = 0.0;
        for (const ul::fold_report& f : report.per_writer)
          delta = std::max(delta, f.relative_delta);
        rec["exact"] = report.exact;
        rec["max_rel_dW"] = delta;
        rec["hook_diff"] =
            examples::hook_mismatch(edited, original, q.directions, split.test_forget, 32);
      } else {
        rec["exact"] = true;
        rec["max_rel_dW"] = 0.0;
        rec["hook_diff"] = 0.0;
      }
      llama::runner r(edited);
      const examples::concept_scores forget =
          examples::score_concept(r, split.test_forget, concept_token);
      const examples::concept_scores retain =
          examples::score_concept(r, split.test_retain, concept_token);
      rec["forget_ppl"] = forget.ppl;
      rec["retain_ppl"] = retain.ppl;
      rec["p_concept"] = forget.p_token;
      rec["probe_acc"] = best_probe(r, split, static_cast<std::size_t>(opts.probe));
      std::string story;
      rec["story_rate"] =
          examples::concept_rate(r, tok, opts.word, static_cast<int>(opts.samples), opts.steps,
                                 static_cast<std::uint64_t>(opts.seed), &story);
      if (!m.seed && m.skip.empty()) {
        llama::sampler_params greedy;
        greedy.temperature = 0.0f;
        stories.emplace_back(
            m.name, tok.decode(llama::generate(r, {llama::tokenizer::bos_id}, opts.steps, greedy)));
      }
      results.add(rec);
    }
    results.print(std::cout, "unlearn");
    std::cout << "\nforget/retain_ppl: held-out paragraphs with / without '" << opts.word
              << "'; p_concept: mean p(' " << opts.word
              << "') where it comes next; probe_acc: balanced accuracy of a linear probe retrained "
                 "on the edited model's states (best residual point; 0.5 = chance); story_rate: "
                 "share of "
              << opts.samples
              << " sampled stories mentioning it; hook_diff: max |logit "
                 "difference| between the fold and the run-time projection hook, "
                 "relative to max |logit|.\n\nGreedy story from BOS:\n";
    for (const auto& [name, text] : stories) {
      std::cout << "  " << name << ": " << one_line(text) << "\n";
    }
    std::cout << "\n(" << std::chrono::duration<double>(clock_type::now() - start).count()
              << " s)\n";
    if (!opts.json_path.empty()) {
      results.write_json(opts.json_path);
      std::cout << "wrote " << results.records().size() << " records to " << opts.json_path << '\n';
    }
  } catch (const std::exception& e) {
    std::cerr << "reparam_unlearn_concept: " << e.what() << '\n';
    return 1;
  }
  return 0;
}

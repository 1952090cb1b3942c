// SPDX-License-Identifier: Apache-2.0
// reparam::unlearn on the bundled real model (llama2.c stories260K): the residual-stream ablation
// folded into every writer (token embedding tied to the classifier, wo and w2 of every block)
// equals the unfolded model with the projection applied at run time (the runner's residual hook),
// a fold that skips one writer does not, and the concept direction of "Lily" built from the fit
// paragraphs lowers the probability of the " Lily" token on held-out paragraphs far more than
// random directions of the same rank.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/unlearn/ablation.hpp>
#include <reparam/unlearn/subspace.hpp>

#include "common/concept_erasure.hpp"
#include "runner/eval.hpp"
#include "runner/forward.hpp"
#include "runner/model.hpp"
#include "runner_fixture.hpp"

namespace {

namespace ul = reparam::unlearn;

const llama::model& stories() {
  static const llama::model m = llama::load_model(runner_test::model_bin);
  return m;
}

const examples::concept_split& lily_split() {
  static const examples::concept_split split = examples::split_by_concept(
      runner_test::tok512(), llama::read_text_file(runner_test::valid_head_txt), "Lily", 1500,
      static_cast<std::size_t>(stories().config().seq_len));
  return split;
}

/// The mean-difference direction of residual states (all points stacked) of the fit paragraphs.
const ul::subspace& lily_direction() {
  static const ul::subspace q = [] {
    llama::runner r(stories());
    return examples::concept_direction(r, lily_split());
  }();
  return q;
}

double fold_vs_hook(const llama::model& folded, const ul::subspace& q) {
  return examples::hook_mismatch(folded, stories(), q.directions, lily_split().test_forget, 8);
}

int lily_token() {
  const std::vector<int> t = runner_test::tok512().encode("Lily");
  REQUIRE(t.size() == 1);
  return t.front();
}

}  // namespace

TEST_CASE("The residual hook sees every residual point and an identity hook changes nothing",
          "[unlearn][real]") {
  const std::vector<int>& s = lily_split().test_forget.front();
  llama::runner plain(stories());
  const reparam::matrix<float> expected = plain.prefill(s);
  llama::runner hooked(stories());
  std::vector<std::pair<int, llama::residual_point>> seen;
  hooked.set_residual_hook(
      [&](int layer, llama::residual_point point, reparam::matrix_map<float> x) {
        CHECK(x.rows() == static_cast<reparam::index>(s.size()));
        CHECK(x.cols() == stories().config().dim);
        seen.emplace_back(layer, point);
      });
  const reparam::matrix<float> got = hooked.prefill(s);
  CHECK(got == expected);
  const int layers = stories().config().n_layers;
  REQUIRE(seen.size() == static_cast<std::size_t>(2 * layers + 2));
  for (int l = 0; l < layers; ++l) {
    CHECK(seen[static_cast<std::size_t>(2 * l)] ==
          std::make_pair(l, llama::residual_point::block_input));
    CHECK(seen[static_cast<std::size_t>(2 * l + 1)] ==
          std::make_pair(l, llama::residual_point::after_attention));
  }
  CHECK(seen[seen.size() - 2] == std::make_pair(layers, llama::residual_point::final_input));
  CHECK(seen.back() == std::make_pair(layers, llama::residual_point::classifier_input));
}

TEST_CASE(
    "Folding the concept direction into every writer of stories260K equals the run-time "
    "hook, and skipping one writer does not",
    "[unlearn][real]") {
  const ul::subspace& q = lily_direction();
  llama::model folded = llama::load_model(runner_test::model_bin);
  ul::residual_stream<float> stream = examples::llama_residual_stream(folded, "");
  REQUIRE(stream.writers.size() == static_cast<std::size_t>(1 + 2 * stories().config().n_layers));
  const ul::ablation_report report = ul::fold_residual_ablation(stream, q);
  CHECK(report.exact);
  CHECK(report.tied == std::vector<std::string>{"embedding"});
  const double exact_diff = fold_vs_hook(folded, q);
  CHECK(exact_diff <= 2e-5);  // float weights and activations, ~1.5e-6 measured
  for (const std::string skip : {"embedding", "wo.2", "w2.4"}) {
    CAPTURE(skip);
    llama::model partial = llama::load_model(runner_test::model_bin);
    ul::residual_stream<float> partial_stream = examples::llama_residual_stream(partial, skip);
    const ul::ablation_report partial_report = ul::fold_residual_ablation(partial_stream, q);
    CHECK_FALSE(partial_report.exact);
    CHECK(partial_report.missing == 1);
    CHECK(fold_vs_hook(partial, q) > 100 * exact_diff);
  }
}

TEST_CASE(
    "The concept direction lowers p(' Lily') on held-out paragraphs far more than random "
    "directions",
    "[unlearn][real]") {
  const int token = lily_token();
  llama::runner base(stories());
  const examples::concept_scores before =
      examples::score_concept(base, lily_split().test_forget, token);
  REQUIRE(before.token_positions >= 50);
  const auto ablated_p = [&](const ul::subspace& q) {
    llama::model edited = llama::load_model(runner_test::model_bin);
    ul::residual_stream<float> stream = examples::llama_residual_stream(edited, "");
    ul::fold_residual_ablation(stream, q);
    llama::runner r(edited);
    return examples::score_concept(r, lily_split().test_forget, token).p_token;
  };
  const double concept_p = ablated_p(lily_direction());
  CAPTURE(before.p_token, concept_p);
  CHECK(concept_p < 0.5 * before.p_token);
  for (std::uint64_t seed = 1; seed <= 3; ++seed) {
    const double random_p = ablated_p(ul::random_subspace(stories().config().dim, 1, seed));
    CAPTURE(seed, random_p);
    CHECK(random_p > 0.7 * before.p_token);
  }
}

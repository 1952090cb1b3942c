// SPDX-License-Identifier: Apache-2.0
// gumbel/soft_token.hpp against independent oracles: the SofT-GRPO rollout written out in long
// double with std::stable_sort (hand-checked on a small vocabulary: top-k ties, top-p cut and
// renormalization, floor, clamp, order by y', weights, recorded log-probability), the trainer's
// logprobs_from_logits_topk_gumbel written out over the full vocabulary (parity at the rollout
// policy, the documented top-p mismatch, central differences of its gradient), the exact Gumbel-max
// configuration against argmax l / T + gumbel_noise, a chi-square test of the top candidate's law,
// the embedding mixture and discrete-token log-probabilities by hand, no allocation, and refusals.
#define EIGEN_RUNTIME_NO_MALLOC  // lets the no-allocation test forbid Eigen's mallocs

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/gumbel/soft_token.hpp>

#include "support/count_allocations.hpp"
#include "support/gumbel_oracles.hpp"
#include "support/random.hpp"
#include "support/statistics.hpp"

namespace {

using reparam::index;
using namespace reparam::gumbel;  // NOLINT(google-build-using-namespace): test file
using namespace reparam::test;    // NOLINT(google-build-using-namespace): the shared oracles

/// p = softmax(l / T) in long double with l / T formed first: exp(l / T - max(l / T)) / sum, 0 at
/// masked classes (the form of the rollout and of the trainer's score).
std::vector<real> scaled_softmax(std::vector<real> logits, double temperature) {
  for (real& l : logits) {
    l /= static_cast<real>(temperature);
  }
  return softmax_row(logits, 1);
}

/// The rollout of one row written out from the description of the reference sampler, in long
/// double: p = softmax(l / T) over the vocabulary, stable sort by p (ties: lower id first), top-k,
/// renormalize, keep j while the mass before it is < top_p, renormalize, l_bar = log(p_bar +
/// floor), g = clamp(gumbel_noise(key, r, id)), y' = l_bar + lambda g, sort by y', weights,
/// log-probability over l_bar > mask.
struct rollout_oracle {
  std::vector<index> ids;
  std::vector<double> perturbed;
  std::vector<double> weights;
  std::vector<double> l_bar;
  double logprob = 0.0;
  index kept = 0;
  real cut_margin = std::numeric_limits<real>::infinity();  // distance of any prefix mass to top_p
};

template <class T>
rollout_oracle oracle_rollout(const matrix<T>& logits, index r, const soft_token_config& cfg,
                              noise_key key) {
  const index vocab = logits.cols();
  const std::vector<real> p = scaled_softmax(row_as<real>(logits, r), cfg.temperature);
  std::vector<index> order;
  for (index c = 0; c < vocab; ++c) {
    if (!std::isinf(static_cast<real>(logits(r, c)))) {
      order.push_back(c);
    }
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](index a, index b) { return p[at(a)] > p[at(b)]; });
  const index k = cfg.top_k;
  real total = 0;
  for (index j = 0; j < k; ++j) {
    total += p[at(order[at(j)])];
  }
  std::vector<real> q;
  for (index j = 0; j < k; ++j) {
    q.push_back(p[at(order[at(j)])] / total);
  }
  rollout_oracle o;
  o.kept = k;
  if (cfg.top_p < 1.0) {
    real cum = 0;
    for (index j = 0; j < k; ++j) {
      if (j > 0) {
        o.cut_margin = std::min(o.cut_margin, std::abs(cum - static_cast<real>(cfg.top_p)));
        if (cum >= static_cast<real>(cfg.top_p)) {
          o.kept = j;
          break;
        }
      }
      cum += q[at(j)];
    }
  }
  real kept_total = 0;
  for (index j = 0; j < o.kept; ++j) {
    kept_total += q[at(j)];
  }
  struct entry {
    real y;
    index id;
    real l_bar;
    real g;
  };
  std::vector<entry> entries;
  for (index j = 0; j < k; ++j) {
    const real p_bar = j < o.kept ? q[at(j)] / kept_total : real(0);
    const real l_bar = std::log(p_bar + static_cast<real>(cfg.prob_floor));
    const index id = order[at(j)];
    const real g = std::min(
        std::max(static_cast<real>(gumbel_noise(key, r, id)), static_cast<real>(cfg.clamp_low)),
        static_cast<real>(cfg.clamp_high));
    entries.push_back({l_bar + static_cast<real>(cfg.noise_scale) * g, id, l_bar, g});
  }
  std::sort(entries.begin(), entries.end(), [](const entry& a, const entry& b) {
    return a.y > b.y || (a.y == b.y && a.id < b.id);
  });
  real weight_sum = 0;
  for (const entry& e : entries) {
    weight_sum +=
        std::isinf(e.y) ? real(0) : std::exp((e.y - entries[0].y) / static_cast<real>(cfg.tau_g));
  }
  real sum = 0;
  index count = 0;
  for (const entry& e : entries) {
    o.ids.push_back(e.id);
    o.perturbed.push_back(static_cast<double>(e.y));
    o.l_bar.push_back(static_cast<double>(e.l_bar));
    o.weights.push_back(static_cast<double>(
        std::isinf(e.y)
            ? real(0)
            : std::exp((e.y - entries[0].y) / static_cast<real>(cfg.tau_g)) / weight_sum));
    if (e.l_bar > static_cast<real>(cfg.mask_threshold)) {
      sum += -e.g - std::exp(-e.g);
      ++count;
    }
  }
  o.logprob = static_cast<double>(cfg.reduction == logprob_reduction::mean ? sum / count : sum);
  return o;
}

/// The trainer's score (verl logprobs_from_logits_topk_gumbel) written out in long double over the
/// full vocabulary: p = softmax(l / T), p_hat = p[ids] / sum p[ids], L = log(p_hat + floor),
/// g_hat = clamp((y' - L) / lambda), reduction over L > mask of -g_hat - exp(-g_hat).
struct score_oracle {
  real value = 0;
  real kink_margin = std::numeric_limits<real>::infinity();  // distance of x to a clamp bound
  real mask_margin = std::numeric_limits<real>::infinity();  // distance of L to the threshold
  index kept = 0;                                            // coordinates with L > mask
  index clamped = 0;  // kept coordinates whose x lies outside [clamp_low, clamp_high]
};

score_oracle oracle_score(const std::vector<real>& logits, const std::vector<index>& ids,
                          const std::vector<double>& y, const soft_token_config& cfg) {
  const std::vector<real> p = scaled_softmax(logits, cfg.temperature);
  real id_mass = 0;
  for (const index id : ids) {
    id_mass += p[at(id)];
  }
  score_oracle o;
  real sum = 0;
  index count = 0;
  for (std::size_t j = 0; j < ids.size(); ++j) {
    const real p_hat = p[at(ids[j])] / id_mass;
    const real big_l = std::log(p_hat + static_cast<real>(cfg.prob_floor));
    o.mask_margin =
        std::min(o.mask_margin, std::abs(big_l - static_cast<real>(cfg.mask_threshold)));
    if (!(big_l > static_cast<real>(cfg.mask_threshold))) {
      continue;
    }
    const real x = (static_cast<real>(y[j]) - big_l) / static_cast<real>(cfg.noise_scale);
    o.kink_margin = std::min({o.kink_margin, std::abs(x - static_cast<real>(cfg.clamp_low)),
                              std::abs(x - static_cast<real>(cfg.clamp_high))});
    const real g =
        std::min(std::max(x, static_cast<real>(cfg.clamp_low)), static_cast<real>(cfg.clamp_high));
    o.clamped += g != x ? 1 : 0;
    sum += -g - std::exp(-g);
    ++count;
  }
  o.kept = count;
  o.value = cfg.reduction == logprob_reduction::mean ? sum / count : sum;
  return o;
}

std::vector<index> ids_of(const index_matrix& ids, index r) { return row_as<index>(ids, r); }

template <class T>
void check_rollout_against_oracle(const matrix<T>& logits, const soft_token_config& cfg,
                                  noise_key key) {
  const soft_token_batch batch = soft_tokens(logits, cfg, key);
  for (index r = 0; r < logits.rows(); ++r) {
    const rollout_oracle o = oracle_rollout(logits, r, cfg, key);
    CAPTURE(r, cfg.top_k, cfg.top_p, o.kept);
    REQUIRE(o.cut_margin > 1e-9);  // the case is not on the top-p boundary
    CHECK(ids_of(batch.ids, r) == o.ids);
    for (index j = 0; j < cfg.top_k; ++j) {
      CAPTURE(j, batch.perturbed(r, j), o.perturbed[at(j)]);
      if (std::isinf(o.perturbed[at(j)])) {
        CHECK(batch.perturbed(r, j) == o.perturbed[at(j)]);
      } else {
        CHECK(std::abs(batch.perturbed(r, j) - o.perturbed[at(j)]) < 1e-12);
      }
      CHECK(std::abs(batch.weights(r, j) - o.weights[at(j)]) < 1e-12);
    }
    CHECK(std::abs(batch.logprob[r] - o.logprob) < 1e-12);
  }
}

soft_token_config small_config() {
  soft_token_config cfg;
  cfg.top_k = 4;
  cfg.top_p = 0.8;
  cfg.temperature = 1.0;
  cfg.tau_g = 0.3;
  cfg.noise_scale = 0.8;
  cfg.clamp_low = -1.0;
  cfg.clamp_high = 2.0;
  return cfg;
}

TEST_CASE("a hand-worked rollout on a six-token vocabulary", "[gumbel][soft_token]") {
  // p = (0.4, 0.1, 0.25, 0.05, 0.15, 0.05): the top 4 are ids 0, 2, 4, 1 (ids 3 and 5 tie at
  // 0.05 and are out). Renormalized: 4/9, 5/18, 1/6, 1/9; prefix masses 0, 4/9, 13/18, 8/9, so
  // top_p 0.8 keeps ids 0, 2, 4 (mass 0.8) and prunes id 1: p_bar = 1/2, 5/16, 3/16, 0.
  matrix<double> logits(1, 6);
  logits << std::log(0.4), std::log(0.1), std::log(0.25), std::log(0.05), std::log(0.15),
      std::log(0.05);
  const soft_token_config cfg = small_config();
  const noise_key key{1234, 5};
  const soft_token_batch batch = soft_tokens(logits, cfg, key);
  std::vector<index> ids = ids_of(batch.ids, 0);
  std::vector<index> sorted_ids = ids;
  std::sort(sorted_ids.begin(), sorted_ids.end());
  CHECK(sorted_ids == std::vector<index>{0, 1, 2, 4});
  const double p_bar[6] = {0.5, 0.0, 5.0 / 16.0, 0.0, 3.0 / 16.0, 0.0};
  double expected_sum = 0.0;
  int expected_count = 0;
  double weight_sum = 0.0;
  for (index j = 0; j < 4; ++j) {
    const index id = ids[at(j)];
    const double g = std::min(std::max(gumbel_noise(key, 0, id), -1.0), 2.0);
    const double l_bar = std::log(p_bar[id] + 1e-6);
    CAPTURE(j, id, g, l_bar);
    CHECK(batch.perturbed(0, j) == Approx(l_bar + 0.8 * g).epsilon(1e-14).margin(1e-14));
    if (j > 0) {
      CHECK(batch.perturbed(0, j - 1) >= batch.perturbed(0, j));  // sorted by y'
    }
    if (l_bar > -3.0) {
      expected_sum += -g - std::exp(-g);
      ++expected_count;
    }
    weight_sum += std::exp((l_bar + 0.8 * g) / 0.3);
  }
  CHECK(expected_count == 3);  // id 1 has l_bar = log(1e-6) < -3
  CHECK(batch.logprob[0] == Approx(expected_sum / 3.0).epsilon(1e-14));
  for (index j = 0; j < 4; ++j) {
    const double l_bar = std::log(p_bar[ids[at(j)]] + 1e-6);
    const double g = std::min(std::max(gumbel_noise(key, 0, ids[at(j)]), -1.0), 2.0);
    CHECK(batch.weights(0, j) ==
          Approx(std::exp((l_bar + 0.8 * g) / 0.3) / weight_sum).epsilon(1e-13));
  }
  CHECK(batch.weights.row(0).sum() == Approx(1.0).epsilon(1e-15));
  check_rollout_against_oracle(logits, cfg, key);
}

TEST_CASE("top-k ties go to the lowest id and the first candidate survives any top_p",
          "[gumbel][soft_token]") {
  // p = (0.3, 0.2, 0.1, 0.2, 0.1, 0.1): the top 4 are 0, 1, 3 (ties 0.2) and 2 (lowest of the
  // three 0.1 ties).
  matrix<double> logits(1, 6);
  logits << std::log(0.3), std::log(0.2), std::log(0.1), std::log(0.2), std::log(0.1),
      std::log(0.1);
  soft_token_config cfg = small_config();
  cfg.top_p = 1.0;
  const soft_token_batch batch = soft_tokens(logits, cfg, noise_key{9, 9});
  std::vector<index> ids = ids_of(batch.ids, 0);
  std::sort(ids.begin(), ids.end());
  CHECK(ids == std::vector<index>{0, 1, 2, 3});
  check_rollout_against_oracle(logits, cfg, noise_key{9, 9});
  cfg.top_p = 1e-9;  // only the first candidate: p_bar = (1, 0, 0, 0)
  cfg.clamp_low = -inf;
  cfg.clamp_high = inf;
  const noise_key key{10, 1};
  const soft_token_batch one = soft_tokens(logits, cfg, key);
  for (index j = 0; j < 4; ++j) {
    const index id = one.ids(0, j);
    const double l_bar = id == 0 ? std::log(1.0 + 1e-6) : std::log(1e-6);
    CHECK(one.perturbed(0, j) == Approx(l_bar + 0.8 * gumbel_noise(key, 0, id)).epsilon(1e-14));
  }
  const double g0 = gumbel_noise(key, 0, 0);
  CHECK(one.logprob[0] == Approx(-g0 - std::exp(-g0)).epsilon(1e-14));  // only id 0 is kept
}

TEST_CASE("soft_token_rows matches the written-out rollout on random rows",
          "[gumbel][soft_token]") {
  const matrix<double> logits = reparam::test::random_matrix<double>(64, 40, 21, -3.0, 3.0);
  const matrix<float> logits_f = reparam::test::random_matrix<float>(64, 40, 22, -3.f, 3.f);
  soft_token_config cfg;  // the paper's settings
  check_rollout_against_oracle(logits, cfg, noise_key{77, 1});
  check_rollout_against_oracle(logits_f, cfg, noise_key{77, 2});
  cfg = small_config();
  cfg.temperature = 0.7;
  cfg.top_k = 7;
  cfg.reduction = logprob_reduction::sum;
  check_rollout_against_oracle(logits, cfg, noise_key{78, 1});
  matrix<double> masked = logits;
  for (index r = 0; r < masked.rows(); ++r) {
    for (index c = r % 3; c < masked.cols(); c += 3) {
      masked(r, c) = -inf;  // 13 or 14 finite classes remain
    }
  }
  cfg.top_k = 13;
  cfg.mask_threshold = -inf;
  check_rollout_against_oracle(masked, cfg, noise_key{78, 2});
  cfg.prob_floor = 0.0;  // pruned candidates get y' = -inf and weight 0
  check_rollout_against_oracle(masked, cfg, noise_key{78, 3});
}

TEST_CASE("row ranges of soft_token_rows reproduce the whole call", "[gumbel][soft_token]") {
  const index rows = 10;
  const matrix<double> logits = reparam::test::random_matrix<double>(rows, 25, 23, -2.0, 2.0);
  const soft_token_config cfg;
  const noise_key key{5, 6};
  const soft_token_batch whole = soft_tokens(logits, cfg, key);
  index_matrix ids = index_matrix::Constant(rows, 5, -7);
  matrix<double> perturbed = matrix<double>::Constant(rows, 5, 7.0);
  matrix<double> weights = matrix<double>::Constant(rows, 5, 7.0);
  vector<double> logprob = vector<double>::Constant(rows, 7.0);
  soft_token_rows(logits, cfg, key, ids, perturbed, weights, logprob, row_range{6, 9});
  soft_token_rows(logits, cfg, key, ids, perturbed, weights, logprob, row_range{2, 6});
  for (index r = 0; r < rows; ++r) {
    if (r >= 2 && r < 9) {
      CHECK(ids.row(r) == whole.ids.row(r));
      CHECK(perturbed.row(r) == whole.perturbed.row(r));
      CHECK(weights.row(r) == whole.weights.row(r));
      CHECK(logprob[r] == whole.logprob[r]);
    } else {
      CHECK((ids.row(r).array() == -7).all());
      CHECK((perturbed.row(r).array() == 7.0).all());
      CHECK(logprob[r] == 7.0);
    }
  }
}

TEST_CASE("top_k = vocab, top_p = 1, no clamp and floor 0 give an exact Gumbel-max sample",
          "[gumbel][soft_token]") {
  const index rows = 500;
  const index vocab = 30;
  matrix<double> logits = reparam::test::random_matrix<double>(rows, vocab, 31, -4.0, 4.0);
  logits(3, 7) = -inf;
  soft_token_config cfg;
  cfg.top_k = vocab - 1;  // row 3 has vocab - 1 finite classes
  cfg.top_p = 1.0;
  cfg.temperature = 0.8;
  cfg.clamp_low = -inf;
  cfg.clamp_high = inf;
  cfg.prob_floor = 0.0;
  cfg.mask_threshold = -inf;
  const noise_key key{4321, 17};
  const soft_token_batch batch = soft_tokens(logits, cfg, key);
  for (index r = 0; r < rows; ++r) {
    index best = -1;
    double best_value = -inf;
    for (index c = 0; c < vocab; ++c) {
      if (std::isinf(logits(r, c))) {
        continue;
      }
      const double v = logits(r, c) / 0.8 + gumbel_noise(key, r, c);
      if (v > best_value) {
        best_value = v;
        best = c;
      }
    }
    CAPTURE(r);
    CHECK(batch.ids(r, 0) == best);
  }
}

TEST_CASE("the top candidate's law is the renormalized top-k distribution without clamp or floor",
          "[gumbel][soft_token]") {
  const index n = 100000;
  const std::vector<double> l = {0.3, 1.2, -0.5, 0.9, 2.0, -1.0, 0.0, 1.5, -2.0, 0.6, 0.1, -0.3};
  const matrix<double> logits = repeated_rows(l, n);
  soft_token_config cfg;
  cfg.top_p = 1.0;
  cfg.clamp_low = -inf;
  cfg.clamp_high = inf;
  cfg.prob_floor = 0.0;
  const soft_token_batch batch = soft_tokens(logits, cfg, noise_key{8080, 0});
  // The top 5 by logit: ids 4 (2.0), 7 (1.5), 1 (1.2), 3 (0.9), 9 (0.6).
  const std::vector<index> top = {4, 7, 1, 3, 9};
  double total = 0.0;
  for (const index id : top) {
    total += std::exp(l[at(id)]);
  }
  std::vector<double> probabilities;
  for (const index id : top) {
    probabilities.push_back(std::exp(l[at(id)]) / total);
  }
  std::vector<std::int64_t> observed(top.size(), 0);
  for (index r = 0; r < n; ++r) {
    const auto it = std::find(top.begin(), top.end(), batch.ids(r, 0));
    REQUIRE(it != top.end());
    ++observed[static_cast<std::size_t>(it - top.begin())];
  }
  const auto result = reparam::test::chi_square_test(observed, probabilities);
  CAPTURE(result.statistic, result.p_value, observed[0], observed[4]);
  CHECK(result.p_value > 1e-4);
}

TEST_CASE("scoring at the rollout policy reproduces the recorded log-probability when top_p = 1",
          "[gumbel][soft_token]") {
  const matrix<double> logits = reparam::test::random_matrix<double>(300, 40, 41, -3.0, 3.0);
  const matrix<float> logits_f = reparam::test::random_matrix<float>(300, 40, 42, -3.f, 3.f);
  for (const logprob_reduction reduction : {logprob_reduction::mean, logprob_reduction::sum}) {
    soft_token_config cfg;
    cfg.top_p = 1.0;
    cfg.reduction = reduction;
    for (const double lambda : {1.0, 0.6}) {
      cfg.noise_scale = lambda;
      const soft_token_batch batch = soft_tokens(logits, cfg, noise_key{41, 1});
      vector<double> score(300);
      matrix<double> no_grad;
      soft_token_logprob_rows(logits, batch.ids, batch.perturbed, cfg, score, no_grad,
                              all_rows(300));
      const soft_token_batch batch_f = soft_tokens(logits_f, cfg, noise_key{41, 2});
      vector<double> score_f(300);
      soft_token_logprob_rows(logits_f, batch_f.ids, batch_f.perturbed, cfg, score_f, no_grad,
                              all_rows(300));
      for (index r = 0; r < 300; ++r) {
        CAPTURE(r, lambda, batch.logprob[r], score[r]);
        CHECK(std::abs(score[r] - batch.logprob[r]) < 1e-12);
        CHECK(std::abs(score_f[r] - batch_f.logprob[r]) < 1e-12);
      }
    }
  }
}

TEST_CASE("with top_p < 1 the score differs from the recorded value only through pruned candidates",
          "[gumbel][soft_token]") {
  // The rollout zeroes pruned candidates before renormalizing; the trainer renormalizes over all K
  // recorded ids with the current probabilities (as in the reference code).
  const index rows = 300;
  const matrix<double> logits = reparam::test::random_matrix<double>(rows, 40, 43, -1.5, 1.5);
  soft_token_config cfg;  // K 5
  cfg.top_p = 0.6;
  const noise_key key{43, 1};
  const soft_token_batch batch = soft_tokens(logits, cfg, key);
  vector<double> score(rows);
  matrix<double> no_grad;
  soft_token_logprob_rows(logits, batch.ids, batch.perturbed, cfg, score, no_grad, all_rows(rows));
  index pruned_rows = 0;
  for (index r = 0; r < rows; ++r) {
    const rollout_oracle o = oracle_rollout(logits, r, cfg, key);
    const score_oracle s = oracle_score(row_as<real>(logits, r), ids_of(batch.ids, r),
                                        row_as<double>(batch.perturbed, r), cfg);
    CAPTURE(r, o.kept, batch.logprob[r], score[r], static_cast<double>(s.value));
    REQUIRE(s.mask_margin > 1e-9);
    CHECK(std::abs(score[r] - static_cast<double>(s.value)) < 1e-12);
    if (o.kept == cfg.top_k) {
      CHECK(std::abs(score[r] - batch.logprob[r]) < 1e-12);
    } else {
      ++pruned_rows;
      CHECK(std::abs(score[r] - batch.logprob[r]) > 1e-6);
    }
  }
  CHECK(pruned_rows > rows / 4);
}

TEST_CASE("the score's gradient matches central differences of the trainer's formula",
          "[gumbel][soft_token]") {
  // Away from the rollout policy (at it, a clamped coordinate sits exactly on its bound).
  const index rows = 40;
  const index vocab = 12;
  const matrix<double> rollout_logits =
      reparam::test::random_matrix<double>(rows, vocab, 51, -2.0, 2.0);
  const matrix<double> policy =
      rollout_logits + reparam::test::random_matrix<double>(rows, vocab, 52, -0.3, 0.3);
  soft_token_config cfg = small_config();  // top_k 4, tau_g 0.3
  cfg.top_p = 1.0;
  cfg.temperature = 0.8;
  cfg.noise_scale = 0.7;
  cfg.clamp_low = -0.5;
  cfg.clamp_high = 1.0;
  for (const logprob_reduction reduction : {logprob_reduction::mean, logprob_reduction::sum}) {
    cfg.reduction = reduction;
    const soft_token_batch batch = soft_tokens(rollout_logits, cfg, noise_key{51, 0});
    vector<double> score(rows);
    matrix<double> grad(rows, vocab);
    soft_token_logprob_rows(policy, batch.ids, batch.perturbed, cfg, score, grad, all_rows(rows));
    index checked = 0;
    index partly_clamped = 0;
    for (index r = 0; r < rows; ++r) {
      const std::vector<index> ids = ids_of(batch.ids, r);
      const std::vector<double> y = row_as<double>(batch.perturbed, r);
      const std::vector<real> l = row_as<real>(policy, r);
      const score_oracle base = oracle_score(l, ids, y, cfg);
      CHECK(std::abs(score[r] - static_cast<double>(base.value)) < 1e-12);
      if (base.kink_margin < 1e-4 || base.mask_margin < 1e-4) {
        continue;  // a kink within reach of the difference step
      }
      ++checked;
      partly_clamped += base.clamped > 0 && base.clamped < base.kept ? 1 : 0;
      for (index c = 0; c < vocab; ++c) {
        const auto fd = static_cast<double>(central_difference(
            [&](const std::vector<real>& x) { return oracle_score(x, ids, y, cfg).value; }, l,
            at(c), 1e-6L));
        const bool is_id = std::find(ids.begin(), ids.end(), c) != ids.end();
        CAPTURE(r, c, is_id, base.clamped, grad(r, c), fd);
        CHECK(std::abs(grad(r, c) - fd) <= 1e-7 + 1e-6 * std::abs(fd));
        if (!is_id) {
          CHECK(grad(r, c) == 0.0);  // logits outside the K ids cancel in p_hat
        }
      }
    }
    CAPTURE(checked, partly_clamped);
    CHECK(checked > rows / 2);
    CHECK(partly_clamped > 5);  // the clamp really acts on part of the coordinates
  }
  // Every kept coordinate clamped: the score is locally constant, so the gradient is exactly 0.
  cfg.clamp_low = -1e-3;
  cfg.clamp_high = 1e-3;
  cfg.reduction = logprob_reduction::mean;
  const soft_token_batch batch = soft_tokens(rollout_logits, cfg, noise_key{51, 1});
  vector<double> score(rows);
  matrix<double> grad(rows, vocab);
  soft_token_logprob_rows(policy, batch.ids, batch.perturbed, cfg, score, grad, all_rows(rows));
  index all_clamped = 0;
  for (index r = 0; r < rows; ++r) {
    const score_oracle base = oracle_score(row_as<real>(policy, r), ids_of(batch.ids, r),
                                           row_as<double>(batch.perturbed, r), cfg);
    if (base.clamped == base.kept) {
      ++all_clamped;
      CAPTURE(r);
      CHECK((grad.row(r).array() == 0.0).all());
    } else {
      CHECK((grad.row(r).array() != 0.0).any());
    }
  }
  CHECK(all_clamped > rows / 2);
}

TEST_CASE("mix_embeddings_rows is the renormalized weighted sum of embedding rows",
          "[gumbel][soft_token]") {
  const matrix<float> embedding = reparam::test::random_matrix<float>(10, 7, 61, -1.f, 1.f);
  index_matrix ids(3, 4);
  ids << 1, 4, 4, 9,  //
      0, 0, 0, 0,     //
      7, 2, 5, 3;
  matrix<double> weights(3, 4);
  weights << 0.5, 0.25, 0.75, 0.5,  //
      1.0, 0.0, 0.0, 0.0,           //
      1e-3, 2.0, 0.0, 3.0;
  matrix<float> out = matrix<float>::Constant(3, 7, 7.f);
  matrix<double> out_d(3, 7);
  mix_embeddings_rows(ids, weights, embedding, matrix_ref<float>(out), row_range{0, 2});
  mix_embeddings_rows(ids, weights, embedding, matrix_ref<double>(out_d), all_rows(3));
  for (index r = 0; r < 3; ++r) {
    real total = 0;
    for (index j = 0; j < 4; ++j) {
      total += static_cast<real>(weights(r, j));
    }
    for (index d = 0; d < 7; ++d) {
      real acc = 0;
      for (index j = 0; j < 4; ++j) {
        acc +=
            static_cast<real>(weights(r, j)) / total * static_cast<real>(embedding(ids(r, j), d));
      }
      CAPTURE(r, d);
      CHECK(std::abs(out_d(r, d) - static_cast<double>(acc)) < 1e-15);
      if (r < 2) {
        CHECK(out(r, d) == static_cast<float>(out_d(r, d)));
      } else {
        CHECK(out(r, d) == 7.f);
      }
    }
  }
  CHECK(out.row(1) == embedding.row(0));  // a discrete token row: its embedding exactly
}

TEST_CASE("token_logprob_rows is log softmax(logits / T) at the token", "[gumbel][soft_token]") {
  matrix<double> logits = reparam::test::random_matrix<double>(4, 9, 71, -5.0, 5.0);
  logits(1, 3) = -inf;
  logits(2, 0) = -inf;
  index_vector tokens(4);
  tokens << 2, 8, 0, 5;
  vector<double> out(4);
  token_logprob_rows(logits, tokens, 0.7, out, all_rows(4));
  for (index r = 0; r < 4; ++r) {
    real s = 0;
    for (index c = 0; c < 9; ++c) {
      s += std::isinf(logits(r, c)) ? real(0) : std::exp(static_cast<real>(logits(r, c)) / 0.7L);
    }
    const real expected = static_cast<real>(logits(r, tokens[r])) / 0.7L - std::log(s);
    CAPTURE(r);
    if (std::isinf(expected)) {
      CHECK(out[r] == -inf);  // a masked token (documented)
    } else {
      CHECK(std::abs(out[r] - static_cast<double>(expected)) < 1e-13);
    }
  }
  CHECK(out[2] == -inf);
}

TEST_CASE("soft_token_rows refuses bad settings and inputs before writing anything",
          "[gumbel][soft_token]") {
  const index rows = 3;
  const index vocab = 8;
  const matrix<double> good = reparam::test::random_matrix<double>(rows, vocab, 81, -1.0, 1.0);
  index_matrix ids = index_matrix::Constant(rows, 5, -7);
  matrix<double> perturbed = matrix<double>::Constant(rows, 5, 7.0);
  matrix<double> weights = matrix<double>::Constant(rows, 5, 7.0);
  vector<double> logprob = vector<double>::Constant(rows, 7.0);
  const noise_key key{1, 2};
  const char* fn = "gumbel::soft_token_rows";
  const auto run = [&](const matrix<double>& logits, const soft_token_config& cfg,
                       row_range range) {
    return [&, cfg, range] {
      soft_token_rows(logits, cfg, key, ids, perturbed, weights, logprob, range);
    };
  };
  const row_range all = all_rows(rows);
  const auto with = [](auto change) {
    soft_token_config cfg;
    change(cfg);
    return cfg;
  };
  require_refusal(run(good, with([](soft_token_config& c) { c.top_k = 0; }), all), fn,
                  "config.top_k 0 must be >= 1");
  for (const double p : {0.0, 1.5, std::nan("")}) {
    require_refusal(run(good, with([p](soft_token_config& c) { c.top_p = p; }), all), fn,
                    "config.top_p");
  }
  for (const double t : {0.0, -1.0, inf, std::nan("")}) {
    require_refusal(run(good, with([t](soft_token_config& c) { c.temperature = t; }), all), fn,
                    "config.temperature");
    require_refusal(run(good, with([t](soft_token_config& c) { c.tau_g = t; }), all), fn,
                    "config.tau_g");
    require_refusal(run(good, with([t](soft_token_config& c) { c.noise_scale = t; }), all), fn,
                    "config.noise_scale");
  }
  require_refusal(run(good, with([](soft_token_config& c) { c.clamp_low = 3.0; }), all), fn,
                  "config.clamp_low 3 must be < config.clamp_high 3");
  require_refusal(run(good, with([](soft_token_config& c) { c.clamp_high = std::nan(""); }), all),
                  fn, "config.clamp_low");
  require_refusal(run(good, with([](soft_token_config& c) { c.prob_floor = -1e-6; }), all), fn,
                  "config.prob_floor");
  require_refusal(run(good, with([](soft_token_config& c) { c.prob_floor = inf; }), all), fn,
                  "config.prob_floor");
  require_refusal(
      run(good, with([](soft_token_config& c) { c.mask_threshold = std::nan(""); }), all), fn,
      "config.mask_threshold is NaN");
  require_refusal(run(good, with([](soft_token_config& c) { c.top_k = 9; }), all), fn,
                  "config.top_k 9 exceeds the vocabulary (logits have 8 columns)");
  matrix<double> bad = good;
  bad(1, 2) = std::nan("");
  require_refusal(run(bad, soft_token_config{}, all), fn, "logits(1, 2) is nan");
  bad(1, 2) = inf;
  require_refusal(run(bad, soft_token_config{}, all), fn, "logits(1, 2) is inf");
  bad = good;
  bad.block(2, 0, 1, 4).setConstant(-inf);
  require_refusal(run(bad, soft_token_config{}, all), fn,
                  "row 2 of logits has 4 finite entries; it needs at least 5");
  require_refusal(run(good, soft_token_config{}, row_range{2, 4}), fn, "row range [2, 4)");
  index_matrix wrong_ids(rows, 4);
  REQUIRE_THROWS_WITH(
      soft_token_rows(good, soft_token_config{}, key, wrong_ids, perturbed, weights, logprob, all),
      Contains(fn) && Contains("ids is [3, 4]"));
  matrix<double> wrong_p(rows + 1, 5);
  REQUIRE_THROWS_WITH(
      soft_token_rows(good, soft_token_config{}, key, ids, wrong_p, weights, logprob, all),
      Contains(fn) && Contains("perturbed is [4, 5]"));
  REQUIRE_THROWS_WITH(
      soft_token_rows(good, soft_token_config{}, key, ids, perturbed, wrong_p, logprob, all),
      Contains(fn) && Contains("weights is [4, 5]"));
  vector<double> wrong_lp(2);
  REQUIRE_THROWS_WITH(
      soft_token_rows(good, soft_token_config{}, key, ids, perturbed, weights, wrong_lp, all),
      Contains(fn) && Contains("logprob has 2 entries"));
  // A mask that can drop every candidate: flat rows keep none (the mean would be 0 / 0).
  matrix<double> wide = matrix<double>::Zero(rows, 30);
  wide(0, 3) = 6.0;  // peaked: l_bar of id 3 is about log(0.93) > -3
  soft_token_config wide_cfg;
  wide_cfg.top_k = 30;
  wide_cfg.top_p = 1.0;
  index_matrix wide_ids = index_matrix::Constant(rows, 30, -7);
  matrix<double> wide_p = matrix<double>::Constant(rows, 30, 7.0);
  matrix<double> wide_w = matrix<double>::Constant(rows, 30, 7.0);
  REQUIRE_THROWS_WITH(
      soft_token_rows(wide, wide_cfg, key, wide_ids, wide_p, wide_w, logprob, all),
      Contains(fn) && Contains("row 1: no candidate has log(p_bar + prob_floor) > mask_threshold"));
  CHECK((wide_ids.array() == -7).all());
  CHECK((wide_p.array() == 7.0).all());
  // Nothing was written by any failed call.
  CHECK((ids.array() == -7).all());
  CHECK((perturbed.array() == 7.0).all());
  CHECK((weights.array() == 7.0).all());
  CHECK((logprob.array() == 7.0).all());
  // The peaked row alone passes the exact pre-check and matches the oracle.
  soft_token_rows(wide, wide_cfg, key, wide_ids, wide_p, wide_w, logprob, row_range{0, 1});
  const rollout_oracle o = oracle_rollout(wide, 0, wide_cfg, key);
  CHECK(ids_of(wide_ids, 0) == o.ids);
  CHECK(std::abs(logprob[0] - o.logprob) < 1e-12);
  REQUIRE_THROWS_WITH(soft_tokens(bad, soft_token_config{}, key),
                      Contains("gumbel::soft_tokens:") && Contains("row 2 of logits"));
}

TEST_CASE("soft_token_logprob_rows, mix_embeddings_rows and token_logprob_rows refuse bad input",
          "[gumbel][soft_token]") {
  const index rows = 2;
  const index vocab = 6;
  const matrix<double> logits = reparam::test::random_matrix<double>(rows, vocab, 91, -1.0, 1.0);
  soft_token_config cfg;
  cfg.top_k = 3;
  const soft_token_batch batch = soft_tokens(logits, cfg, noise_key{3, 3});
  vector<double> out = vector<double>::Constant(rows, 7.0);
  matrix<double> grad = matrix<double>::Constant(rows, vocab, 7.0);
  const row_range all = all_rows(rows);
  const char* fn = "gumbel::soft_token_logprob_rows";
  const auto refuse = [&](const matrix<double>& l, const index_matrix& ids, const matrix<double>& y,
                          const soft_token_config& c, const char* detail) {
    REQUIRE_THROWS_WITH(soft_token_logprob_rows(l, ids, y, c, out, grad, all),
                        Contains(fn) && Contains(detail));
  };
  index_matrix dup = batch.ids;
  dup(1, 2) = dup(1, 0);
  refuse(logits, dup, batch.perturbed, cfg, "row 1 repeats id");
  index_matrix outside = batch.ids;
  outside(0, 1) = vocab;
  refuse(logits, outside, batch.perturbed, cfg, "ids(0, 1) 6 is outside [0, 6)");
  outside(0, 1) = -1;
  refuse(logits, outside, batch.perturbed, cfg, "ids(0, 1) -1 is outside");
  matrix<double> y = batch.perturbed;
  y(1, 1) = -inf;
  refuse(logits, batch.ids, y, cfg, "perturbed(1, 1) is -inf");
  y(1, 1) = std::nan("");
  refuse(logits, batch.ids, y, cfg, "perturbed(1, 1) is nan");
  matrix<double> bad_l = logits;
  bad_l(0, 0) = std::nan("");
  refuse(bad_l, batch.ids, batch.perturbed, cfg, "logits(0, 0) is nan");
  bad_l = logits;
  for (index j = 0; j < 3; ++j) {
    bad_l(1, batch.ids(1, j)) = -inf;
  }
  refuse(bad_l, batch.ids, batch.perturbed, cfg, "row 1: every recorded id has a -inf");
  soft_token_config high = cfg;
  high.mask_threshold = 0.5;  // above log(1 + floor): nothing is kept
  refuse(logits, batch.ids, batch.perturbed, high, "no candidate has log(p_hat + prob_floor)");
  soft_token_config bad_cfg = cfg;
  bad_cfg.noise_scale = 0.0;
  refuse(logits, batch.ids, batch.perturbed, bad_cfg, "config.noise_scale");
  matrix<double> wrong_y(rows, 2);
  refuse(logits, batch.ids, wrong_y, cfg, "perturbed is [2, 2] but ids is [2, 3]");
  index_matrix wrong_ids(rows + 1, 3);
  refuse(logits, wrong_ids, batch.perturbed, cfg, "ids is [3, 3]; it needs 2 rows");
  matrix<double> wrong_grad(rows, vocab + 1);
  REQUIRE_THROWS_WITH(
      soft_token_logprob_rows(logits, batch.ids, batch.perturbed, cfg, out, wrong_grad, all),
      Contains(fn) && Contains("grad_logits is [2, 7]"));
  vector<double> wrong_out(3);
  REQUIRE_THROWS_WITH(
      soft_token_logprob_rows(logits, batch.ids, batch.perturbed, cfg, wrong_out, grad, all),
      Contains(fn) && Contains("logprob has 3 entries"));
  CHECK((out.array() == 7.0).all());
  CHECK((grad.array() == 7.0).all());

  const char* fm = "gumbel::mix_embeddings_rows";
  const matrix<float> embedding = reparam::test::random_matrix<float>(vocab, 4, 92, -1.f, 1.f);
  matrix<float> mixed = matrix<float>::Constant(rows, 4, 7.f);
  matrix<double> w = batch.weights;
  const auto refuse_mix = [&](const index_matrix& ids, const matrix<double>& ww,
                              const char* detail) {
    REQUIRE_THROWS_WITH(mix_embeddings_rows(ids, ww, embedding, matrix_ref<float>(mixed), all),
                        Contains(fm) && Contains(detail));
  };
  refuse_mix(outside, w, "ids(0, 1) -1 is outside [0, 6)");
  w(1, 0) = -0.5;
  refuse_mix(batch.ids, w, "weights(1, 0) is -0.5");
  w(1, 0) = std::nan("");
  refuse_mix(batch.ids, w, "weights(1, 0) is nan");
  w = batch.weights;
  w.row(0).setZero();
  refuse_mix(batch.ids, w, "row 0 of weights sums to 0");
  refuse_mix(batch.ids, wrong_y, "weights is [2, 2] but ids is [2, 3]");
  matrix<float> wrong_mixed(rows, 5);
  REQUIRE_THROWS_WITH(
      mix_embeddings_rows(batch.ids, batch.weights, embedding, matrix_ref<float>(wrong_mixed), all),
      Contains(fm) && Contains("out is [2, 5]"));
  CHECK((mixed.array() == 7.f).all());

  const char* ft = "gumbel::token_logprob_rows";
  index_vector tokens(rows);
  tokens << 1, vocab;
  REQUIRE_THROWS_WITH(token_logprob_rows(logits, tokens, 1.0, out, all),
                      Contains(ft) && Contains("tokens[1] 6 is outside [0, 6)"));
  tokens << 1, 2;
  REQUIRE_THROWS_WITH(token_logprob_rows(logits, tokens, 0.0, out, all),
                      Contains(ft) && Contains("temperature 0"));
  matrix<double> nan_l = logits;
  nan_l(1, 4) = std::nan("");
  REQUIRE_THROWS_WITH(token_logprob_rows(nan_l, tokens, 1.0, out, all),
                      Contains(ft) && Contains("logits(1, 4) is nan"));
  nan_l.row(1).setConstant(-inf);
  REQUIRE_THROWS_WITH(token_logprob_rows(nan_l, tokens, 1.0, out, all),
                      Contains(ft) && Contains("row 1 of logits has 0 finite"));
  index_vector short_tokens(1);
  REQUIRE_THROWS_WITH(token_logprob_rows(logits, short_tokens, 1.0, out, all),
                      Contains(ft) && Contains("tokens has 1 entries for 2 rows"));
  CHECK((out.array() == 7.0).all());
}

TEST_CASE("the soft-token row forms do not allocate", "[gumbel][soft_token]") {
  const index rows = 8;
  const index vocab = 50;
  const matrix<float> logits = reparam::test::random_matrix<float>(rows, vocab, 101, -2.f, 2.f);
  const matrix<float> embedding = reparam::test::random_matrix<float>(vocab, 16, 102, -1.f, 1.f);
  soft_token_config cfg;
  cfg.top_k = 30;
  cfg.mask_threshold = -4.0;  // >= log(1 / 60): the exact pre-check path runs too
  index_matrix ids(rows, 30);
  matrix<double> perturbed(rows, 30);
  matrix<double> weights(rows, 30);
  vector<double> logprob(rows);
  vector<double> score(rows);
  matrix<double> grad(rows, vocab);
  matrix<float> mixed(rows, 16);
  index_vector tokens = index_vector::Constant(rows, 3);
  const long before = reparam::test::allocations();
  Eigen::internal::set_is_malloc_allowed(false);
  soft_token_rows(logits, cfg, noise_key{1, 1}, ids, perturbed, weights, logprob, all_rows(rows));
  soft_token_logprob_rows(logits, ids, perturbed, cfg, score, grad, all_rows(rows));
  mix_embeddings_rows(ids, weights, embedding, matrix_ref<float>(mixed), all_rows(rows));
  token_logprob_rows(logits, tokens, 1.0, score, all_rows(rows));
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(reparam::test::allocations() == before);
  CHECK(reparam::gumbel::detail::mask_may_drop_all(cfg));
}

}  // namespace

// SPDX-License-Identifier: Apache-2.0
// Mixed-precision bit allocation for the shift-add family: ShiftAddLLM's per-layer sensitivity
// criterion, an exact parameter-weighted allocation of candidate bit widths under an average-bit
// budget (a multiple-choice knapsack solved by dynamic programming), and Kendall's tau-b to
// measure how well a criterion ranks layers against their measured errors.
//
// Source: You et al., "ShiftAddLLM", NeurIPS 2024, section 4.3, eq. 3 (criterion) and eq. 4
// (integer program), appendix F (Kendall tau of the criterion); docs/research/shiftadd.md
// section 2.8.
#ifndef REPARAM_SHIFTADD_BIT_ALLOCATION_HPP
#define REPARAM_SHIFTADD_BIT_ALLOCATION_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/shiftadd/detail/bcq_checks.hpp>
#include <reparam/shiftadd/detail/gptq_core.hpp>

namespace reparam::shiftadd {

/// ShiftAddLLM's sensitivity of a layer (paper eq. 3): IS = W with column j divided by U_jj,
/// where U is the upper Cholesky factor of (H')^-1 (GPTQ's form: H' is H with dead inputs fixed,
/// dead weight columns zeroed, and damping damp * mean(diag H) * I; natural column order, as the
/// paper's analysis code), and C = ||IS||_F * std(IS)^2, std over all rows * cols entries with
/// the unbiased (n - 1) estimator (torch.std). Larger C = more sensitive.
/// Throws reparam::error for fewer than 2 weights, non-finite weights, a Hessian that is not
/// cols x cols / finite / symmetric / PSD-diagonal, a negative damp, or a damped Hessian that is
/// not positive definite. Allocates O(cols^2 + rows * cols). O(cols^3 + rows * cols).
template <class Derived>
double sensitivity(const Eigen::MatrixBase<Derived>& weights, const matrix<double>& hessian,
                   double damp = 0.01) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "shiftadd::sensitivity";
  reparam::detail::check(weights.rows() * weights.cols() >= 2, function, "weights shape ",
                         weights.rows(), "x", weights.cols(), " has fewer than 2 entries");
  detail::check_weights(function, weights);
  detail::check_hessian(function, hessian, weights.cols());
  detail::check_gptq_options(function, damp, 1);
  const detail::gptq_factor factor = detail::factor_hessian(function, hessian, damp, false, false);
  matrix<double> scaled = weights.template cast<double>();
  for (index c = 0; c < scaled.cols(); ++c) {
    if (factor.is_dead[static_cast<std::size_t>(c)] != 0) {
      scaled.col(c).setZero();
    } else {
      scaled.col(c) /= factor.u_diagonal(c);
    }
  }
  const auto count = static_cast<double>(scaled.size());
  const double mean = scaled.sum() / count;
  const double variance = (scaled.array() - mean).square().sum() / (count - 1.0);
  return scaled.norm() * variance;
}

/// One layer's entry in the allocation: its parameter count and a cost per candidate bit width
/// (cost[i] for candidate_bits[i]; e.g. the measured output_error, or a model of it).
struct layer_cost {
  index parameters = 0;
  std::vector<double> cost;
};

/// The chosen bit width per layer, the parameter-weighted average bits and the summed cost.
struct bit_allocation {
  std::vector<int> bits;
  double average_bits = 0.0;
  double total_cost = 0.0;
};

/// Largest dynamic-programming table allocate_bits accepts (layers x capacity states, one byte
/// each); above it the instance is rejected rather than silently approximated.
inline constexpr double max_allocation_states = 5e7;

/// Exact mixed-precision allocation (paper eq. 4): chooses one candidate per layer to minimize
/// sum of cost subject to sum(parameters * bits) <= average_bits_budget * sum(parameters).
///
/// Dynamic programming over the extra bits above the smallest candidate, in units of the gcd of
/// the parameter counts (times the gcd of the candidate differences), so the table is
/// layers x (capacity + 1), capacity <= (max - min bits) * sum(parameters) / gcd. The budget is
/// floored to whole units after adding a relative 1e-9 slack, so a budget such as 2.2 that is
/// not exactly representable is not lost to rounding.
/// Ties (equal total cost in the DP's double arithmetic) are broken deterministically: fewest
/// total bits first, then for the last layer the candidate listed first, then the layer before,
/// and so on.
/// Throws reparam::error for no layers, no candidates, candidates outside 1..32 or repeated,
/// a layer with parameters < 1 or a cost count != candidate count or a non-finite cost, a
/// non-finite budget, a budget below the smallest candidate (infeasible: the message names the
/// minimum), or a table above max_allocation_states. Allocates the table (one byte per state).
/// O(layers * capacity * candidates).
inline bit_allocation allocate_bits(const std::vector<layer_cost>& layers,
                                    const std::vector<int>& candidate_bits,
                                    double average_bits_budget) {
  constexpr const char* function = "shiftadd::allocate_bits";
  using reparam::detail::check;
  check(!layers.empty(), function, "no layers");
  check(!candidate_bits.empty(), function, "no candidate bit widths");
  const std::size_t candidates = candidate_bits.size();
  for (std::size_t i = 0; i < candidates; ++i) {
    check(candidate_bits[i] >= 1 && candidate_bits[i] <= 32, function, "candidate_bits[", i,
          "] = ", candidate_bits[i], " is outside [1, 32]");
    for (std::size_t j = 0; j < i; ++j) {
      check(candidate_bits[i] != candidate_bits[j], function, "candidate bit width ",
            candidate_bits[i], " is listed twice");
    }
  }
  std::int64_t unit = 0;
  double total_parameters = 0.0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    check(layers[l].parameters >= 1, function, "layers[", l, "].parameters ", layers[l].parameters,
          " must be >= 1");
    check(layers[l].cost.size() == candidates, function, "layers[", l, "] has ",
          layers[l].cost.size(), " costs but there are ", candidates, " candidate bit widths");
    for (std::size_t i = 0; i < candidates; ++i) {
      check(std::isfinite(layers[l].cost[i]), function, "layers[", l, "].cost[", i,
            "] = ", layers[l].cost[i], " is not finite");
    }
    unit = std::gcd(unit, static_cast<std::int64_t>(layers[l].parameters));
    total_parameters += static_cast<double>(layers[l].parameters);
  }
  check(std::isfinite(average_bits_budget), function, "average_bits_budget ", average_bits_budget,
        " is not finite");
  const int min_bits = *std::min_element(candidate_bits.begin(), candidate_bits.end());
  const int max_bits_candidate = *std::max_element(candidate_bits.begin(), candidate_bits.end());

  // Weights in units, extra bits per candidate, and the step (gcd of the extras).
  std::vector<std::int64_t> weight(layers.size());
  std::int64_t total_weight = 0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    weight[l] = static_cast<std::int64_t>(layers[l].parameters) / unit;
    total_weight += weight[l];
  }
  std::int64_t step = 0;
  for (const int b : candidate_bits) {
    step = std::gcd(step, static_cast<std::int64_t>(b - min_bits));
  }
  step = step == 0 ? 1 : step;
  std::vector<std::int64_t> extra(candidates);
  for (std::size_t i = 0; i < candidates; ++i) {
    extra[i] = (candidate_bits[i] - min_bits) / step;
  }

  // Budget in units of unit * step bits beyond min_bits everywhere.
  const double budget_bits = average_bits_budget * static_cast<double>(total_weight);
  const double slack_bits = budget_bits + 1e-9 * std::abs(budget_bits);
  const double minimum_bits = static_cast<double>(min_bits) * static_cast<double>(total_weight);
  check(slack_bits >= minimum_bits, function, "average_bits_budget ", average_bits_budget,
        " is infeasible: the smallest candidate gives ", min_bits, " bits per parameter");
  const double top = static_cast<double>(max_bits_candidate - min_bits) /
                     static_cast<double>(step) * static_cast<double>(total_weight);
  const double available = std::floor((slack_bits - minimum_bits) / static_cast<double>(step));
  const double capacity_value = std::min(available, top);
  const double states = static_cast<double>(layers.size()) * (capacity_value + 1.0);
  check(states <= max_allocation_states, function, "the allocation table needs ", states,
        " states (", layers.size(), " layers x ", capacity_value + 1.0,
        " capacity units; the gcd of the parameter counts is ", unit, "), above the limit ",
        max_allocation_states, "; round the parameter counts to a coarser common unit");
  const auto capacity = static_cast<std::int64_t>(capacity_value);
  const auto width = static_cast<std::size_t>(capacity + 1);

  // best[c]: least cost of the layers so far using exactly c extra units; choice[l][c]: the
  // candidate of layer l on that path (ties: the candidate listed first).
  constexpr double unreachable = std::numeric_limits<double>::infinity();
  std::vector<double> best;
  best.reserve(width);
  best.push_back(0.0);  // (not best[0] = 0: GCC 12 -O3 then warns of a null dereference)
  best.resize(width, unreachable);
  std::vector<double> next(width);
  std::vector<std::uint8_t> choice(layers.size() * width, 0);
  for (std::size_t l = 0; l < layers.size(); ++l) {
    std::fill(next.begin(), next.end(), unreachable);
    std::uint8_t* row = choice.data() + l * width;
    for (std::size_t i = 0; i < candidates; ++i) {
      const std::int64_t used = extra[i] * weight[l];
      const double cost = layers[l].cost[i];
      for (std::int64_t c = used; c <= capacity; ++c) {
        const double previous = best[static_cast<std::size_t>(c - used)];
        const double value = previous + cost;
        if (previous < unreachable && value < next[static_cast<std::size_t>(c)]) {
          next[static_cast<std::size_t>(c)] = value;
          row[c] = static_cast<std::uint8_t>(i);
        }
      }
    }
    best.swap(next);
  }
  std::size_t used = 0;
  for (std::size_t c = 1; c < width; ++c) {
    used = best[c] < best[used] ? c : used;
  }
  bit_allocation out;
  out.bits.resize(layers.size());
  double total_bits = 0.0;
  for (std::size_t l = layers.size(); l-- > 0;) {
    const std::size_t i = choice[l * width + used];
    out.bits[l] = candidate_bits[i];
    out.total_cost += layers[l].cost[i];
    total_bits +=
        static_cast<double>(candidate_bits[i]) * static_cast<double>(layers[l].parameters);
    used -= static_cast<std::size_t>(extra[i] * weight[l]);
  }
  out.average_bits = total_bits / total_parameters;
  return out;
}

/// Kendall's tau-b rank correlation of two equally long sequences, with ties:
/// (concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b)), n0 = n (n - 1) / 2, where
/// ties_a (ties_b) counts pairs tied in a (in b). 1 = same ranking, -1 = reversed.
/// Throws reparam::error if the sizes differ, n < 2, a value is non-finite, or either sequence
/// is constant (tau-b undefined). No allocation. O(n^2) (meant for per-layer lists).
inline double kendall_tau(const std::vector<double>& a, const std::vector<double>& b) {
  constexpr const char* function = "shiftadd::kendall_tau";
  using reparam::detail::check;
  check(a.size() == b.size(), function, "a has ", a.size(), " values but b has ", b.size());
  check(a.size() >= 2, function, "need at least 2 values, got ", a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    check(std::isfinite(a[i]) && std::isfinite(b[i]), function, "non-finite value at index ", i,
          " (a ", a[i], ", b ", b[i], ")");
  }
  std::int64_t concordant = 0;
  std::int64_t discordant = 0;
  std::int64_t tied_a = 0;
  std::int64_t tied_b = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    for (std::size_t j = i + 1; j < a.size(); ++j) {
      const int sign_a = (a[i] < a[j]) - (a[j] < a[i]);
      const int sign_b = (b[i] < b[j]) - (b[j] < b[i]);
      tied_a += sign_a == 0 ? 1 : 0;
      tied_b += sign_b == 0 ? 1 : 0;
      concordant += sign_a * sign_b > 0 ? 1 : 0;
      discordant += sign_a * sign_b < 0 ? 1 : 0;
    }
  }
  const auto n = static_cast<std::int64_t>(a.size());
  const std::int64_t pairs = n * (n - 1) / 2;
  check(tied_a < pairs && tied_b < pairs, function, tied_a == pairs ? "a" : "b",
        " is constant; tau-b is undefined");
  return static_cast<double>(concordant - discordant) /
         std::sqrt(static_cast<double>(pairs - tied_a) * static_cast<double>(pairs - tied_b));
}

}  // namespace reparam::shiftadd

#endif  // REPARAM_SHIFTADD_BIT_ALLOCATION_HPP

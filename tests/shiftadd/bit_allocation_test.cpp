// SPDX-License-Identifier: Apache-2.0
// Bit allocation: the exact knapsack against brute-force enumeration, budget and monotonicity
// properties, the sensitivity criterion against closed forms and an explicit-inverse oracle, and
// Kendall's tau-b against a hand-computed example and a tie-group formula.
// Defined in every TU of this test binary (see gptq_test.cpp) so Eigen's inline functions agree.
#define EIGEN_RUNTIME_NO_MALLOC

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <vector>

#include <Eigen/Dense>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/random.hpp>
#include <reparam/shiftadd/bit_allocation.hpp>

#include "support/random.hpp"

namespace {

namespace sa = reparam::shiftadd;
using reparam::matrix;

// A reproducible stream of uniforms in (0, 1).
class uniform_source {
 public:
  explicit uniform_source(std::uint64_t seed) : engine_(seed, 0) {}
  double operator()() { return reparam::uniform_open01_double(engine_(), engine_()); }
  reparam::index integer(reparam::index lo, reparam::index hi) {  // in [lo, hi]
    return lo + static_cast<reparam::index>((*this)() * static_cast<double>(hi - lo + 1));
  }

 private:
  reparam::philox_engine engine_;
};

struct brute_force_result {
  double cost = std::numeric_limits<double>::infinity();
  std::vector<int> bits;
};

// Every assignment of candidates to layers; feasible if sum(p b) <= budget sum(p).
brute_force_result brute_force(const std::vector<sa::layer_cost>& layers,
                               const std::vector<int>& candidates, double budget) {
  brute_force_result best;
  const std::size_t count = layers.size();
  std::vector<std::size_t> pick(count, 0);
  double total_parameters = 0.0;
  for (const auto& layer : layers) {
    total_parameters += static_cast<double>(layer.parameters);
  }
  while (true) {
    double bits = 0.0;
    double cost = 0.0;
    for (std::size_t l = 0; l < count; ++l) {
      bits += static_cast<double>(layers[l].parameters) * candidates[pick[l]];
      cost += layers[l].cost[pick[l]];
    }
    if (bits <= budget * total_parameters && cost < best.cost) {
      best.cost = cost;
      best.bits.clear();
      for (std::size_t l = 0; l < count; ++l) {
        best.bits.push_back(candidates[pick[l]]);
      }
    }
    std::size_t l = 0;
    while (l < count && ++pick[l] == candidates.size()) {
      pick[l++] = 0;
    }
    if (l == count) {
      break;
    }
  }
  return best;
}

double average_bits(const std::vector<sa::layer_cost>& layers, const std::vector<int>& bits) {
  double weighted = 0.0;
  double total = 0.0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    weighted += static_cast<double>(layers[l].parameters) * bits[l];
    total += static_cast<double>(layers[l].parameters);
  }
  return weighted / total;
}

// Random layers: parameter counts are multiples of 64 (as real layer shapes are), costs fall
// with bits like quantization error does (roughly 4x per bit) with per-layer sensitivity.
std::vector<sa::layer_cost> random_layers(std::size_t count, uniform_source& uniform) {
  std::vector<sa::layer_cost> layers(count);
  for (auto& layer : layers) {
    layer.parameters = 64 * uniform.integer(1, 40);
    const double sensitivity = 0.1 + 10.0 * uniform();
    double cost = sensitivity * (1.0 + uniform());
    for (int b = 0; b < 3; ++b) {
      layer.cost.push_back(cost);
      cost *= 0.15 + 0.2 * uniform();
    }
  }
  return layers;
}

// tau-b from tie-group sizes: n1 = sum over groups of equal a values of t (t - 1) / 2.
double tau_b_oracle(const std::vector<double>& a, const std::vector<double>& b) {
  const auto n = static_cast<double>(a.size());
  const double n0 = n * (n - 1.0) / 2.0;
  const auto tie_pairs = [](const std::vector<double>& v) {
    std::map<double, double> groups;
    for (const double x : v) {
      groups[x] += 1.0;
    }
    double pairs = 0.0;
    for (const auto& group : groups) {
      pairs += group.second * (group.second - 1.0) / 2.0;
    }
    return pairs;
  };
  double score = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      const double product = (a[i] - a[j]) * (b[i] - b[j]);
      score += product > 0.0 ? 1.0 : (product < 0.0 ? -1.0 : 0.0);
    }
  }
  return score / std::sqrt((n0 - tie_pairs(a)) * (n0 - tie_pairs(b)));
}

}  // namespace

TEST_CASE("allocate_bits equals brute-force enumeration on random instances",
          "[shiftadd][bit_allocation]") {
  const auto seed = reparam::test::test_seed(0xb170);
  CAPTURE(seed);
  uniform_source uniform(seed);
  const std::vector<int> candidates{2, 3, 4};
  for (int instance = 0; instance < 40; ++instance) {
    const std::vector<sa::layer_cost> layers = random_layers(6, uniform);
    const double budget = 2.0 + 2.0 * uniform();
    CAPTURE(instance, budget);
    const sa::bit_allocation result = sa::allocate_bits(layers, candidates, budget);
    const brute_force_result expected = brute_force(layers, candidates, budget);
    REQUIRE(result.bits == expected.bits);
    REQUIRE(result.total_cost == Approx(expected.cost).epsilon(1e-12));
    REQUIRE(result.average_bits == Approx(average_bits(layers, result.bits)).epsilon(1e-15));
    REQUIRE(result.average_bits <= budget);
  }
}

TEST_CASE("allocate_bits handles unordered and non-contiguous candidates like brute force",
          "[shiftadd][bit_allocation]") {
  const auto seed = reparam::test::test_seed(0xb171);
  CAPTURE(seed);
  uniform_source uniform(seed);
  // {4, 2, 8}: extras above 2 are 2 and 6 bits (step 2); listed out of order.
  const std::vector<int> candidates{4, 2, 8};
  for (int instance = 0; instance < 20; ++instance) {
    std::vector<sa::layer_cost> layers(5);
    for (auto& layer : layers) {
      layer.parameters = 4096 * uniform.integer(1, 3) + (uniform() < 0.5 ? 0 : 4096 * 43 / 16);
      layer.cost = {uniform(), 3.0 * uniform(), 0.1 * uniform()};  // arbitrary, not monotone
    }
    const double budget = 2.0 + 6.0 * uniform();
    CAPTURE(instance, budget);
    const sa::bit_allocation result = sa::allocate_bits(layers, candidates, budget);
    const brute_force_result expected = brute_force(layers, candidates, budget);
    REQUIRE(result.total_cost == Approx(expected.cost).epsilon(1e-12));
    REQUIRE(result.bits == expected.bits);
    REQUIRE(result.average_bits <= budget);
  }
}

TEST_CASE("allocate_bits cost is monotone in the budget and spans min to max bits",
          "[shiftadd][bit_allocation]") {
  const auto seed = reparam::test::test_seed(0xb172);
  CAPTURE(seed);
  uniform_source uniform(seed);
  const std::vector<sa::layer_cost> layers = random_layers(12, uniform);
  const std::vector<int> candidates{2, 3, 4};
  double previous = std::numeric_limits<double>::infinity();
  for (double budget = 2.0; budget <= 4.0001; budget += 0.05) {
    CAPTURE(budget);
    const sa::bit_allocation result = sa::allocate_bits(layers, candidates, budget);
    REQUIRE(result.average_bits <= budget + 1e-12);
    REQUIRE(result.total_cost <= previous);
    previous = result.total_cost;
  }
  // Costs fall with bits, so the extremes are uniform allocations.
  const sa::bit_allocation lowest = sa::allocate_bits(layers, candidates, 2.0);
  const sa::bit_allocation highest = sa::allocate_bits(layers, candidates, 4.0);
  REQUIRE(lowest.bits == std::vector<int>(12, 2));
  REQUIRE(highest.bits == std::vector<int>(12, 4));
  REQUIRE(lowest.average_bits == 2.0);
  REQUIRE(highest.average_bits == 4.0);
  // 2.2 is not exactly representable; layers of equal size at exactly 2.2 average must fit.
  std::vector<sa::layer_cost> equal(10, sa::layer_cost{4096, {3.0, 2.0, 1.0}});
  const sa::bit_allocation mixed = sa::allocate_bits(equal, candidates, 2.2);
  REQUIRE(mixed.average_bits == Approx(2.2).epsilon(1e-15));
}

TEST_CASE("allocate_bits breaks exact ties deterministically toward fewer bits",
          "[shiftadd][bit_allocation]") {
  const std::vector<sa::layer_cost> flat(4, sa::layer_cost{100, {1.0, 1.0, 1.0}});
  const sa::bit_allocation result = sa::allocate_bits(flat, {2, 3, 4}, 3.5);
  REQUIRE(result.bits == std::vector<int>(4, 2));
  REQUIRE(result.total_cost == 4.0);
  const sa::bit_allocation again = sa::allocate_bits(flat, {2, 3, 4}, 3.5);
  REQUIRE(again.bits == result.bits);
}

TEST_CASE("allocate_bits rejects infeasible budgets and oversized tables and bad inputs",
          "[shiftadd][bit_allocation]") {
  const std::vector<sa::layer_cost> layers{{64, {3.0, 2.0, 1.0}}, {128, {3.0, 2.0, 1.0}}};
  REQUIRE_THROWS_WITH(sa::allocate_bits(layers, {2, 3, 4}, 1.9),
                      Catch::Contains("shiftadd::allocate_bits") && Catch::Contains("infeasible") &&
                          Catch::Contains("2 bits"));
  // Coprime parameter counts: gcd 1, about 2 x 4e7 states.
  const std::vector<sa::layer_cost> huge{{10000019, {3.0, 2.0, 1.0}}, {10000079, {3.0, 2.0, 1.0}}};
  REQUIRE_THROWS_WITH(sa::allocate_bits(huge, {2, 3, 4}, 4.0),
                      Catch::Contains("states") && Catch::Contains("limit"));
  REQUIRE_THROWS_WITH(sa::allocate_bits({}, {2, 3, 4}, 3.0), Catch::Contains("no layers"));
  REQUIRE_THROWS_WITH(sa::allocate_bits(layers, {}, 3.0), Catch::Contains("no candidate"));
  REQUIRE_THROWS_WITH(sa::allocate_bits(layers, {2, 3, 3}, 3.0), Catch::Contains("listed twice"));
  REQUIRE_THROWS_WITH(sa::allocate_bits(layers, {2, 3}, 3.0),
                      Catch::Contains("layers[0] has 3 costs but there are 2"));
  REQUIRE_THROWS_WITH(sa::allocate_bits({{0, {1.0}}}, {2}, 3.0), Catch::Contains("parameters 0"));
  REQUIRE_THROWS_WITH(
      sa::allocate_bits({{10, {std::numeric_limits<double>::quiet_NaN()}}}, {2}, 3.0),
      Catch::Contains("not finite"));
  REQUIRE_THROWS_WITH(sa::allocate_bits(layers, {2, 3, 4}, std::nan("")),
                      Catch::Contains("not finite"));
}

TEST_CASE("kendall_tau matches a hand-computed example and the tie-group formula",
          "[shiftadd][bit_allocation]") {
  // Pairs of x = (12, 2, 1, 12, 2), y = (1, 4, 7, 1, 0): concordant (0,4) (3,4); discordant
  // (0,1) (0,2) (1,2) (1,3) (2,3) (2,4); tied in x (0,3) (1,4), in y (0,3).
  // tau-b = (2 - 6) / sqrt((10 - 2) (10 - 1)) = -4 / sqrt(72).
  REQUIRE(sa::kendall_tau({12, 2, 1, 12, 2}, {1, 4, 7, 1, 0}) ==
          Approx(-4.0 / std::sqrt(72.0)).epsilon(1e-15));
  REQUIRE(sa::kendall_tau({1, 2, 3, 4}, {10, 20, 30, 40}) == 1.0);
  REQUIRE(sa::kendall_tau({1, 2, 3, 4}, {4, 3, 2, 1}) == -1.0);

  const auto seed = reparam::test::test_seed(0xb173);
  CAPTURE(seed);
  uniform_source uniform(seed);
  for (int instance = 0; instance < 20; ++instance) {
    std::vector<double> a;
    std::vector<double> b;
    for (int i = 0; i < 15; ++i) {
      a.push_back(static_cast<double>(uniform.integer(0, 4)));  // many ties
      b.push_back(a.back() + static_cast<double>(uniform.integer(-2, 2)));
    }
    CAPTURE(instance);
    REQUIRE(sa::kendall_tau(a, b) == Approx(tau_b_oracle(a, b)).epsilon(1e-12));
  }
  REQUIRE_THROWS_WITH(sa::kendall_tau({1, 2}, {1, 2, 3}), Catch::Contains("a has 2 values"));
  REQUIRE_THROWS_WITH(sa::kendall_tau({1, 1, 1}, {1, 2, 3}), Catch::Contains("a is constant"));
  REQUIRE_THROWS_WITH(sa::kendall_tau({1}, {1}), Catch::Contains("at least 2"));
}

TEST_CASE("sensitivity matches the closed form for a diagonal Hessian with a dead input",
          "[shiftadd][bit_allocation]") {
  const auto seed = reparam::test::test_seed(0xb174);
  CAPTURE(seed);
  const matrix<float> weights = reparam::test::random_matrix<float>(5, 6, seed);
  const std::vector<double> diagonal{4.0, 1.0, 0.0, 9.0, 0.25, 2.0};
  matrix<double> hessian = matrix<double>::Zero(6, 6);
  for (reparam::index j = 0; j < 6; ++j) {
    hessian(j, j) = diagonal[static_cast<std::size_t>(j)];
  }
  const double damp = 0.05;
  // Dead input 2: H_22 = 1, column zeroed. Damping: + damp * mean(4, 1, 1, 9, 0.25, 2).
  const double shift = damp * (4.0 + 1.0 + 1.0 + 9.0 + 0.25 + 2.0) / 6.0;
  // H' diagonal -> U = diag(1 / sqrt(d')) -> IS = W[:, j] * sqrt(d'_j).
  std::vector<double> values;
  for (reparam::index r = 0; r < 5; ++r) {
    for (reparam::index j = 0; j < 6; ++j) {
      const double d = (j == 2 ? 1.0 : diagonal[static_cast<std::size_t>(j)]) + shift;
      values.push_back(j == 2 ? 0.0 : static_cast<double>(weights(r, j)) * std::sqrt(d));
    }
  }
  double sum = 0.0;
  double squares = 0.0;
  for (const double v : values) {
    sum += v;
    squares += v * v;
  }
  const double mean = sum / 30.0;
  double variance = 0.0;
  for (const double v : values) {
    variance += (v - mean) * (v - mean);
  }
  variance /= 29.0;
  const double expected = std::sqrt(squares) * variance;
  REQUIRE(sa::sensitivity(weights, hessian, damp) == Approx(expected).epsilon(1e-12));
}

TEST_CASE("sensitivity matches an explicit inverse and Cholesky for a full Hessian",
          "[shiftadd][bit_allocation]") {
  const auto seed = reparam::test::test_seed(0xb175);
  CAPTURE(seed);
  const reparam::index cols = 40;
  const matrix<double> x = reparam::test::random_matrix<double>(80, cols, seed ^ 3);
  const matrix<double> hessian = x.transpose() * x / 80.0;
  const matrix<float> weights = reparam::test::random_matrix<float>(7, cols, seed);
  // Oracle, GPTQ's literal recipe: damp, invert explicitly, upper Cholesky of the inverse.
  Eigen::MatrixXd damped = hessian;
  damped.diagonal().array() += 0.01 * damped.diagonal().mean();
  const Eigen::MatrixXd inverse = damped.inverse();
  const Eigen::MatrixXd u = Eigen::LLT<Eigen::MatrixXd>(inverse).matrixU();
  Eigen::MatrixXd scaled = weights.cast<double>();
  for (reparam::index j = 0; j < cols; ++j) {
    scaled.col(j) /= u(j, j);
  }
  const double mean = scaled.mean();
  const double variance =
      (scaled.array() - mean).square().sum() / static_cast<double>(scaled.size() - 1);
  const double expected = scaled.norm() * variance;
  REQUIRE(sa::sensitivity(weights, hessian) == Approx(expected).epsilon(1e-9));
  // C is homogeneous of degree 3 in W.
  const matrix<float> doubled = 2.0f * weights;
  REQUIRE(sa::sensitivity(doubled, hessian) == Approx(8.0 * expected).epsilon(1e-9));
  REQUIRE_THROWS_WITH(sa::sensitivity(weights, matrix<double>::Identity(3, 3)),
                      Catch::Contains("shiftadd::sensitivity") &&
                          Catch::Contains("hessian is 3x3 but weights have 40 cols"));
}

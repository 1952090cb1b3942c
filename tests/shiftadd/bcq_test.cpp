// SPDX-License-Identifier: Apache-2.0
// The BCQ fitter (shiftadd/bcq.hpp) against independent oracles: the normal equations rebuilt
// from the codes, brute-force nearest levels, a separately written greedy init, the one-bit
// closed form, exact power-of-two arithmetic for APoT, the Gaussian optimal-quantizer bounds, and
// the matrix front end's bookkeeping (axes, strides, allocation count, errors).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Dense>
#include <catch2/catch.hpp>

#include <reparam/core/random.hpp>
#include <reparam/shiftadd/bcq.hpp>

#include "support/count_allocations.hpp"
#include "support/random.hpp"

namespace {

using reparam::matrix;
using reparam::shiftadd::apot_term;
using reparam::shiftadd::assign_bcq_codes;
using reparam::shiftadd::bcq_level;
using reparam::shiftadd::bcq_params;
using reparam::shiftadd::binary_coded_matrix;
using reparam::shiftadd::fit_bcq_group;
using reparam::shiftadd::quantize_bcq;
using reparam::shiftadd::round_apot;
using reparam::shiftadd::scale_axis;

// --- Test data ---

enum class shape_kind { gaussian, uniform, heavy, sparse };

std::vector<float> make_values(reparam::index count, shape_kind kind, std::uint64_t seed,
                               std::uint64_t stream) {
  reparam::philox_engine engine(seed, stream);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> out(static_cast<std::size_t>(count));
  for (float& x : out) {
    switch (kind) {
      case shape_kind::gaussian:
        x = normal(engine);
        break;
      case shape_kind::uniform:
        x = uniform(engine);
        break;
      case shape_kind::heavy: {
        const float g = normal(engine);
        x = g * g * g;  // heavy tails, many values near 0
        break;
      }
      case shape_kind::sparse: {
        const float g = normal(engine);
        x = uniform(engine) > 0.6f ? g : 0.0f;  // 80% exact zeros
        break;
      }
    }
  }
  return out;
}

// --- Oracles, written independently of the code under test ---

// The level of a code as the format defines it: float sum in plane order.
float oracle_level(const float* alphas, int bits, unsigned code) {
  float sum = 0.0f;
  for (int p = 0; p < bits; ++p) {
    sum += ((code >> p) & 1u) != 0 ? alphas[p] : -alphas[p];
  }
  return sum;
}

double squared_error(const std::vector<float>& values, const float* alphas, int bits,
                     const std::vector<std::uint8_t>& codes) {
  double error = 0.0;
  for (std::size_t k = 0; k < values.size(); ++k) {
    const double d =
        static_cast<double>(values[k]) - static_cast<double>(oracle_level(alphas, bits, codes[k]));
    error += d * d;
  }
  return error;
}

// Greedy residual fit: r = w; s = sign(r) (sign(0) = +1); alpha = mean |r|; r -= alpha s.
double greedy_error(const std::vector<float>& values, int bits) {
  std::vector<float> residual = values;
  std::vector<float> alphas(static_cast<std::size_t>(bits));
  std::vector<std::uint8_t> codes(values.size(), 0);
  for (int p = 0; p < bits; ++p) {
    double sum = 0.0;
    for (const float r : residual) {
      sum += std::fabs(static_cast<double>(r));
    }
    const auto alpha = static_cast<float>(sum / static_cast<double>(values.size()));
    alphas[static_cast<std::size_t>(p)] = alpha;
    for (std::size_t k = 0; k < residual.size(); ++k) {
      const bool positive = residual[k] >= 0.0f;
      codes[k] = static_cast<std::uint8_t>(codes[k] | ((positive ? 1u : 0u) << p));
      residual[k] -= positive ? alpha : -alpha;
    }
  }
  return squared_error(values, alphas.data(), bits, codes);
}

// Exact |v - a| as a normalized double-double (TwoSum of the two floats widened to double).
struct exact_value {
  double high;
  double low;
};

exact_value exact_distance(float v, float a) {
  const auto x = static_cast<double>(v);
  const double y = -static_cast<double>(a);
  const double s = x + y;
  const double y_part = s - x;
  const double e = (x - (s - y_part)) + (y - y_part);
  return s < 0.0 ? exact_value{-s, -e} : exact_value{s, e};
}

// -1, 0, +1 as |v - a| is below, equal to or above |v - b|, exactly: rounding to nearest is
// monotone, so different high parts decide, and equal high parts leave the low parts to decide.
int compare_distances(float v, float a, float b) {
  const exact_value da = exact_distance(v, a);
  const exact_value db = exact_distance(v, b);
  if (da.high != db.high) {
    return da.high < db.high ? -1 : 1;
  }
  if (da.low != db.low) {
    return da.low < db.low ? -1 : 1;
  }
  return 0;
}

// Every code is a nearest level among all 2^bits codes (distances compared exactly), and no
// lower level is equally near (ties go to the lower level).
bool codes_are_nearest(const std::vector<float>& values, const float* alphas, int bits,
                       const std::vector<std::uint8_t>& codes, std::string& failure) {
  const unsigned levels = 1u << bits;
  for (std::size_t k = 0; k < values.size(); ++k) {
    const float chosen = oracle_level(alphas, bits, codes[k]);
    for (unsigned c = 0; c < levels; ++c) {
      const float level = oracle_level(alphas, bits, c);
      const int order = compare_distances(values[k], level, chosen);
      if (order < 0 || (order == 0 && level < chosen)) {
        failure = "value " + std::to_string(values[k]) + " at " + std::to_string(k) + " got code " +
                  std::to_string(codes[k]) + " (level " + std::to_string(chosen) + ") but code " +
                  std::to_string(c) + " has level " + std::to_string(level);
        return false;
      }
    }
  }
  return true;
}

struct group_fit {
  std::vector<float> alphas;
  std::vector<std::uint8_t> codes;
  std::vector<apot_term> terms;
};

group_fit fit(const std::vector<float>& values, const bcq_params& params) {
  group_fit out;
  out.alphas.assign(static_cast<std::size_t>(params.bits), -1.0f);
  out.codes.assign(values.size(), 0xAB);
  out.terms.assign(static_cast<std::size_t>(params.bits * std::max(params.apot_terms, 1)),
                   apot_term{});
  fit_bcq_group(values.data(), static_cast<reparam::index>(values.size()), 1, params,
                out.alphas.data(), out.codes.data(),
                params.apot_terms > 0 ? out.terms.data() : nullptr);
  return out;
}

bool is_descending_nonnegative(const std::vector<float>& alphas) {
  for (std::size_t p = 0; p < alphas.size(); ++p) {
    if (!(alphas[p] >= 0.0f) || (p > 0 && alphas[p] > alphas[p - 1])) {
      return false;
    }
  }
  return true;
}

double relative_error(const matrix<float>& w, const binary_coded_matrix& q) {
  const matrix<float> r = reparam::shiftadd::reconstruct(q);
  return (w.cast<double>() - r.cast<double>()).squaredNorm() / w.cast<double>().squaredNorm();
}

}  // namespace

TEST_CASE("fit_bcq_group alphas solve the normal equations of their codes", "[shiftadd][bcq]") {
  const std::uint64_t seed = reparam::test::test_seed(101);
  CAPTURE(seed);
  const int bits = GENERATE(1, 2, 3, 4);
  const reparam::index count = GENERATE(64, 128, 257);
  const auto kind = GENERATE(shape_kind::gaussian, shape_kind::uniform, shape_kind::heavy);
  CAPTURE(bits, count, static_cast<int>(kind));
  for (std::uint64_t stream = 0; stream < 4; ++stream) {
    const std::vector<float> w = make_values(count, kind, seed, stream);
    // Enough rounds to reach the fixed point, where the alphas are the least-squares solution
    // for the codes they produced.
    const group_fit f = fit(w, {bits, 500, 0});
    REQUIRE(is_descending_nonnegative(f.alphas));
    Eigen::MatrixXd s(count, bits);
    for (reparam::index k = 0; k < count; ++k) {
      for (int p = 0; p < bits; ++p) {
        s(k, p) = ((static_cast<unsigned>(f.codes[static_cast<std::size_t>(k)]) >> p) & 1u) != 0
                      ? 1.0
                      : -1.0;
      }
    }
    const Eigen::VectorXd wd = Eigen::Map<const Eigen::VectorXf>(w.data(), count).cast<double>();
    const Eigen::MatrixXd gram = s.transpose() * s;
    const Eigen::VectorXd rhs = s.transpose() * wd;
    // The test data keeps S^T S well conditioned, so no ridge is involved.
    const double smallest = Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(gram).eigenvalues()(0);
    REQUIRE(smallest > 1e-3 * static_cast<double>(count));
    const Eigen::VectorXd a =
        Eigen::Map<const Eigen::VectorXf>(f.alphas.data(), bits).cast<double>();
    // Float alphas: the residual is bounded by float rounding of a times ||S^T S||.
    const double residual = (gram * a - rhs).norm();
    CAPTURE(residual, rhs.norm());
    CHECK(residual <= 1e-5 * (rhs.norm() + gram.norm() * a.norm()));
  }
}

TEST_CASE("fit_bcq_group codes are nearest levels of the fitted alphas", "[shiftadd][bcq]") {
  const std::uint64_t seed = reparam::test::test_seed(102);
  CAPTURE(seed);
  const int bits = GENERATE(range(1, 9));
  const auto kind = GENERATE(shape_kind::gaussian, shape_kind::heavy, shape_kind::sparse);
  const int rounds = GENERATE(0, 3, 20);
  const int apot = GENERATE(0, 2);
  CAPTURE(bits, static_cast<int>(kind), rounds, apot);
  const std::vector<float> w = make_values(96, kind, seed, 7);
  const group_fit f = fit(w, {bits, rounds, apot});
  CHECK(is_descending_nonnegative(f.alphas));
  std::string failure;
  const bool nearest = codes_are_nearest(w, f.alphas.data(), bits, f.codes, failure);
  INFO(failure);
  CHECK(nearest);
}

TEST_CASE("assign_bcq_codes picks the nearest level with ties to the lower level",
          "[shiftadd][bcq]") {
  SECTION("hand-computed levels of alphas 1 and 0.5") {
    // Levels: code 0 -> -1.5, code 2 -> -0.5, code 1 -> +0.5, code 3 -> +1.5.
    const float alphas[2] = {1.0f, 0.5f};
    const std::vector<float> values = {0.0f, 1.0f, -1.0f, 2.0f, -2.0f, 0.25f, -0.2f, 1.5f};
    const std::vector<std::uint8_t> expected = {2, 1, 0, 3, 0, 1, 2, 3};
    std::vector<std::uint8_t> codes(values.size());
    assign_bcq_codes(values.data(), 8, 1, alphas, 2, codes.data());
    CHECK(codes == expected);
    for (unsigned c = 0; c < 4; ++c) {
      const float level = bcq_level(alphas, 2, static_cast<std::uint8_t>(c));
      CHECK(level == oracle_level(alphas, 2, c));
    }
  }
  SECTION("arbitrary alphas: negative, unsorted, repeated, zero") {
    const std::uint64_t seed = reparam::test::test_seed(103);
    CAPTURE(seed);
    const std::vector<std::vector<float>> alpha_sets = {
        {-0.3f, 1.2f, 0.7f},        {0.5f, 0.5f, 0.25f},     {0.0f, 1.0f, 0.0f},
        {2.0f, -1.0f, 0.5f, 0.25f}, {1e-30f, 3.0f},          {0.1f, 0.2f, 0.4f, 0.8f, 1.6f},
        {1.0f, 1e-9f, 1.0f},        {0.0f, 0.0f, 0.0f, 0.0f}};
    for (const auto& alphas : alpha_sets) {
      const int bits = static_cast<int>(alphas.size());
      std::vector<float> values = make_values(200, shape_kind::gaussian, seed, 3);
      // Adversarial values: every level exactly, every float midpoint, and their neighbours.
      for (unsigned c = 0; c < (1u << bits); ++c) {
        const float level = oracle_level(alphas.data(), bits, c);
        values.push_back(level);
        values.push_back(std::nextafter(level, 10.0f));
        values.push_back(std::nextafter(level, -10.0f));
        for (unsigned d = 0; d < (1u << bits); ++d) {
          const float other = oracle_level(alphas.data(), bits, d);
          const float mid = 0.5f * (level + other);
          values.push_back(mid);
          values.push_back(std::nextafter(mid, 10.0f));
          values.push_back(std::nextafter(mid, -10.0f));
        }
      }
      std::vector<std::uint8_t> codes(values.size());
      assign_bcq_codes(values.data(), static_cast<reparam::index>(values.size()), 1, alphas.data(),
                       bits, codes.data());
      std::string failure;
      const bool nearest = codes_are_nearest(values, alphas.data(), bits, codes, failure);
      INFO(failure);
      CHECK(nearest);
    }
  }
  SECTION("a tiny value between the levels -1 and +1 goes to +1") {
    // |v - (-1)| and |v - 1| differ by 2e-30, far below double resolution at 1.
    const float alphas[1] = {1.0f};
    const float values[2] = {1e-30f, -1e-30f};
    std::uint8_t codes[2] = {};
    assign_bcq_codes(values, 2, 1, alphas, 1, codes);
    CHECK(codes[0] == 1);
    CHECK(codes[1] == 0);
  }
}

TEST_CASE("fit_bcq_group is never worse than the greedy init and improves with rounds",
          "[shiftadd][bcq]") {
  const std::uint64_t seed = reparam::test::test_seed(104);
  CAPTURE(seed);
  const int bits = GENERATE(1, 2, 3, 4, 6);
  const auto kind =
      GENERATE(shape_kind::gaussian, shape_kind::uniform, shape_kind::heavy, shape_kind::sparse);
  CAPTURE(bits, static_cast<int>(kind));
  double total_greedy = 0.0;
  double total_fit = 0.0;
  for (std::uint64_t stream = 0; stream < 6; ++stream) {
    const std::vector<float> w = make_values(128, kind, seed, stream);
    const double greedy = greedy_error(w, bits);
    // The fit's greedy alphas are summed in another order than the oracle's, so they can differ
    // in the last float bit; greedy alphas are not a stationary point of the error, so that moves
    // the error to first order: ~1e-7 relative.
    double previous = greedy * (1.0 + 1e-6) + 1e-30;
    for (const int rounds : {0, 1, 2, 5, 20, 60}) {
      const group_fit f = fit(w, {bits, rounds, 0});
      const double error = squared_error(w, f.alphas.data(), bits, f.codes);
      CAPTURE(stream, rounds, greedy, error, previous);
      // More rounds never hurt: the fit keeps the best state of a deterministic sequence.
      CHECK(error <= previous);
      previous = error;
    }
    total_greedy += greedy;
    total_fit += previous;
  }
  CAPTURE(total_greedy, total_fit);
  // The alternating rounds are not decorative: at two or more planes they improve on greedy for
  // bell-shaped data (for uniform data greedy's power-of-two ratios are already near optimal).
  if (bits >= 2 && (kind == shape_kind::gaussian || kind == shape_kind::heavy)) {
    CHECK(total_fit < 0.95 * total_greedy);
  }
}

TEST_CASE("fit_bcq_group at one bit is the closed form mean absolute value and sign",
          "[shiftadd][bcq]") {
  const std::uint64_t seed = reparam::test::test_seed(105);
  CAPTURE(seed);
  const auto kind = GENERATE(shape_kind::gaussian, shape_kind::sparse, shape_kind::heavy);
  const int rounds = GENERATE(0, 20);
  for (std::uint64_t stream = 0; stream < 4; ++stream) {
    const std::vector<float> w = make_values(300, kind, seed, stream);
    double mean_abs = 0.0;
    for (const float x : w) {
      mean_abs += std::fabs(static_cast<double>(x));
    }
    mean_abs /= static_cast<double>(w.size());
    const group_fit f = fit(w, {1, rounds, 0});
    CAPTURE(static_cast<double>(f.alphas[0]), mean_abs);
    CHECK(std::fabs(static_cast<double>(f.alphas[0]) - mean_abs) <= 1e-6 * mean_abs);
    for (std::size_t k = 0; k < w.size(); ++k) {
      if (w[k] != 0.0f) {
        CHECK(f.codes[k] == (w[k] > 0.0f ? 1 : 0));
      }
    }
  }
}

TEST_CASE("round_apot terms are signed powers of two summing exactly to the result",
          "[shiftadd][bcq][apot]") {
  const std::uint64_t seed = reparam::test::test_seed(106);
  CAPTURE(seed);
  reparam::philox_engine engine(seed, 0);
  std::uniform_real_distribution<double> log_magnitude(-20.0, 20.0);
  std::vector<float> alphas = {1.0f,       0.75f,      1.5f,       3.0f,  0.1f,
                               1.4142135f, 1.4142137f, 0.7071067f, -2.5f, 1e-3f};
  for (int i = 0; i < 300; ++i) {
    const double sign = i % 3 == 0 ? -1.0 : 1.0;
    alphas.push_back(static_cast<float>(sign * std::exp2(log_magnitude(engine))));
  }
  for (const int terms : {1, 2, 3, 4, 8}) {
    for (const float alpha : alphas) {
      CAPTURE(terms, alpha);
      std::vector<apot_term> out(static_cast<std::size_t>(terms));
      const float value = round_apot(alpha, terms, out.data());
      // Independent oracle: each term is POT(residual) = sign * 2^round(log2 |residual|), with the
      // residual tracked in double (exact here) and the rounding done in long double.
      double residual = static_cast<double>(alpha);
      double exact_sum = 0.0;
      for (const apot_term& t : out) {
        if (residual == 0.0) {
          CHECK(t.sign == 0);
          continue;
        }
        const long double log2_magnitude = std::log2(std::fabs(static_cast<long double>(residual)));
        const auto power = static_cast<int>(std::nearbyint(log2_magnitude));
        CHECK(static_cast<int>(t.sign) == (residual > 0.0 ? 1 : -1));
        CHECK(static_cast<int>(t.exponent) == power);
        const double term = std::ldexp(static_cast<double>(t.sign), t.exponent);
        int e = 0;
        CHECK(std::fabs(std::frexp(term, &e)) == 0.5);  // a power of two
        exact_sum += term;
        residual -= term;
      }
      // The returned float is the exact sum of the terms, bit for bit.
      CHECK(static_cast<double>(value) == exact_sum);
      // Each term shrinks the residual by at least sqrt 2 - 1.
      CHECK(std::fabs(static_cast<double>(alpha) - exact_sum) <=
            std::pow(std::sqrt(2.0) - 1.0, terms) * std::fabs(static_cast<double>(alpha)));
    }
  }
  SECTION("zero, exact powers and the exponent floor") {
    std::vector<apot_term> out(3);
    CHECK(round_apot(0.0f, 3, out.data()) == 0.0f);
    for (const apot_term& t : out) {
      CHECK(t.sign == 0);
    }
    CHECK(round_apot(0.25f, 3, out.data()) == 0.25f);
    CHECK(out[0].sign == 1);
    CHECK(out[0].exponent == -2);
    CHECK(out[1].sign == 0);
    CHECK(out[2].sign == 0);
    const float smallest = std::ldexp(1.0f, -128);
    CHECK(round_apot(smallest, 3, out.data()) == smallest);
    CHECK(out[0].exponent == -128);
    // Below 2^-128.5 the int8 exponent cannot hold the power: all terms 0.
    CHECK(round_apot(std::ldexp(1.0f, -140), 3, out.data()) == 0.0f);
    CHECK(out[0].sign == 0);
    // 0.75 -> 1 - 0.25 (round(log2 0.75) = 0, then the residual -0.25).
    CHECK(round_apot(0.75f, 2, out.data()) == 0.75f);
    CHECK(out[0].exponent == 0);
    CHECK(out[1].sign == -1);
    CHECK(out[1].exponent == -2);
  }
}

TEST_CASE("fit_bcq_group with APoT returns alphas equal to their term sums",
          "[shiftadd][bcq][apot]") {
  const std::uint64_t seed = reparam::test::test_seed(107);
  CAPTURE(seed);
  const int bits = GENERATE(1, 2, 3, 4);
  const int terms = GENERATE(1, 2, 3, 8);
  CAPTURE(bits, terms);
  for (std::uint64_t stream = 0; stream < 3; ++stream) {
    const std::vector<float> w = make_values(128, shape_kind::gaussian, seed, stream);
    const group_fit f = fit(w, {bits, 20, terms});
    CHECK(is_descending_nonnegative(f.alphas));
    for (int p = 0; p < bits; ++p) {
      double sum = 0.0;
      for (int t = 0; t < terms; ++t) {
        const apot_term term = f.terms[static_cast<std::size_t>(p * terms + t)];
        CHECK((term.sign == -1 || term.sign == 0 || term.sign == 1));
        sum += std::ldexp(static_cast<double>(term.sign), term.exponent);
      }
      CHECK(static_cast<double>(f.alphas[static_cast<std::size_t>(p)]) == sum);
    }
    // Oracle: the float-scale fit with its alphas APoT-rounded and the codes re-assigned. The
    // APoT phase starts from exactly that state, so it can only improve on it.
    const group_fit plain = fit(w, {bits, 20, 0});
    std::vector<float> rounded(static_cast<std::size_t>(bits));
    std::vector<apot_term> scratch(static_cast<std::size_t>(terms));
    for (int p = 0; p < bits; ++p) {
      rounded[static_cast<std::size_t>(p)] =
          round_apot(plain.alphas[static_cast<std::size_t>(p)], terms, scratch.data());
    }
    std::vector<std::uint8_t> rounded_codes(w.size());
    assign_bcq_codes(w.data(), 128, 1, rounded.data(), bits, rounded_codes.data());
    const double rounded_error = squared_error(w, rounded.data(), bits, rounded_codes);
    const double plain_error = squared_error(w, plain.alphas.data(), bits, plain.codes);
    const double apot_error = squared_error(w, f.alphas.data(), bits, f.codes);
    CAPTURE(plain_error, rounded_error, apot_error);
    CHECK(apot_error <= rounded_error * (1.0 + 1e-12));
    // With the paper's K = 3 the power-of-two scales cost little.
    if (terms >= 3) {
      CHECK(apot_error <= 1.1 * plain_error);
    }
  }
}

TEST_CASE("fit_bcq_group handles zero, constant and exactly representable groups",
          "[shiftadd][bcq]") {
  const int bits = GENERATE(range(1, 9));
  const int apot = GENERATE(0, 3);
  CAPTURE(bits, apot);
  SECTION("all zero: alphas 0, no NaN") {
    const std::vector<float> w(64, 0.0f);
    const group_fit f = fit(w, {bits, 20, apot});
    for (const float a : f.alphas) {
      CHECK(a == 0.0f);
    }
    for (std::size_t k = 0; k < w.size(); ++k) {
      CHECK(oracle_level(f.alphas.data(), bits, f.codes[k]) == 0.0f);
    }
  }
  SECTION("constant: reproduced exactly") {
    for (const float c : {1.0f, -3.5f, 1e-20f, -7.25e6f}) {
      const std::vector<float> w(50, c);
      const group_fit f = fit(w, {bits, 20, apot});
      for (const float a : f.alphas) {
        CHECK(std::isfinite(a));
      }
      if (apot == 0) {
        for (std::size_t k = 0; k < w.size(); ++k) {
          CHECK(oracle_level(f.alphas.data(), bits, f.codes[k]) == c);
        }
      }
    }
  }
  SECTION("levels of power-of-two alphas: recovered exactly") {
    // Every level of alphas 2^(bits-1), ..., 2, 1 once: greedy itself is exact here.
    std::vector<float> alphas(static_cast<std::size_t>(bits));
    for (int p = 0; p < bits; ++p) {
      alphas[static_cast<std::size_t>(p)] = std::ldexp(1.0f, bits - 1 - p);
    }
    std::vector<float> w;
    for (unsigned c = 0; c < (1u << bits); ++c) {
      w.push_back(0.125f * oracle_level(alphas.data(), bits, c));
    }
    const group_fit f = fit(w, {bits, 20, apot});
    CHECK(squared_error(w, f.alphas.data(), bits, f.codes) == 0.0);
  }
}

TEST_CASE("fit_bcq_group survives a singular normal matrix", "[shiftadd][bcq]") {
  // Three distinct values and four planes: the codes use at most three sign patterns, so S^T S
  // (4 x 4) has rank <= 3 and the ridge path runs. Three values are still exactly representable
  // by four scales, and the ridge (1e-8 relative) costs nothing visible.
  std::vector<float> w;
  for (int i = 0; i < 10; ++i) {
    w.push_back(-1.0f);
    w.push_back(0.3f);
    w.push_back(2.0f);
  }
  const int bits = GENERATE(3, 4, 8);
  CAPTURE(bits);
  const group_fit f = fit(w, {bits, 20, 0});
  CHECK(is_descending_nonnegative(f.alphas));
  for (const float a : f.alphas) {
    CHECK(std::isfinite(a));
  }
  std::string failure;
  CHECK(codes_are_nearest(w, f.alphas.data(), bits, f.codes, failure));
  const double error = squared_error(w, f.alphas.data(), bits, f.codes);
  CAPTURE(error, greedy_error(w, bits));
  CHECK(error <= greedy_error(w, bits));
  CHECK(error <= 1e-10);
}

TEST_CASE("fit_bcq_group is deterministic and reads strided groups like contiguous ones",
          "[shiftadd][bcq]") {
  const std::uint64_t seed = reparam::test::test_seed(108);
  CAPTURE(seed);
  const int bits = GENERATE(2, 3, 5);
  const int apot = GENERATE(0, 3);
  const std::vector<float> w = make_values(100, shape_kind::heavy, seed, 1);
  const group_fit a = fit(w, {bits, 20, apot});
  const group_fit b = fit(w, {bits, 20, apot});
  CHECK(std::memcmp(a.alphas.data(), b.alphas.data(), a.alphas.size() * sizeof(float)) == 0);
  CHECK(a.codes == b.codes);
  // The same values interleaved with garbage at stride 3.
  std::vector<float> strided(w.size() * 3, 1e30f);
  for (std::size_t k = 0; k < w.size(); ++k) {
    strided[3 * k] = w[k];
  }
  std::vector<float> alphas(static_cast<std::size_t>(bits));
  std::vector<std::uint8_t> codes(w.size());
  std::vector<apot_term> terms(static_cast<std::size_t>(bits * 3));
  fit_bcq_group(strided.data(), 100, 3, {bits, 20, apot}, alphas.data(), codes.data(),
                terms.data());
  CHECK(std::memcmp(a.alphas.data(), alphas.data(), alphas.size() * sizeof(float)) == 0);
  CHECK(a.codes == codes);
  std::vector<std::uint8_t> assigned(w.size());
  assign_bcq_codes(strided.data(), 100, 3, alphas.data(), bits, assigned.data());
  CHECK(assigned == codes);
}

TEST_CASE("quantize_bcq column groups equal the row groups of the transpose", "[shiftadd][bcq]") {
  const std::uint64_t seed = reparam::test::test_seed(109);
  CAPTURE(seed);
  const int apot = GENERATE(0, 2);
  const reparam::index group = GENERATE(0, 8, 24);
  CAPTURE(apot, group);
  const matrix<float> w = reparam::test::random_matrix(48, 37, seed);
  const matrix<float> wt = w.transpose();
  const bcq_params params{3, 10, apot};
  const binary_coded_matrix by_columns = quantize_bcq(w, params, group, scale_axis::columns);
  const binary_coded_matrix by_rows = quantize_bcq(wt, params, group, scale_axis::rows);
  REQUIRE(by_columns.groups() == by_rows.groups());
  CHECK(by_columns.scales() == by_rows.scales());
  CHECK(std::equal(by_columns.apot().begin(), by_columns.apot().end(), by_rows.apot().begin(),
                   by_rows.apot().end(), [](const apot_term& x, const apot_term& y) {
                     return x.sign == y.sign && x.exponent == y.exponent;
                   }));
  reparam::index mismatches = 0;
  for (reparam::index r = 0; r < w.rows(); ++r) {
    for (reparam::index c = 0; c < w.cols(); ++c) {
      mismatches += by_columns.code(r, c) == by_rows.code(c, r) ? 0 : 1;
    }
  }
  CHECK(mismatches == 0);
  const matrix<float> back = reparam::shiftadd::reconstruct(by_rows).transpose();
  CHECK(back == reparam::shiftadd::reconstruct(by_columns));
}

TEST_CASE("quantize_bcq stores exactly the per-group fits", "[shiftadd][bcq]") {
  const std::uint64_t seed = reparam::test::test_seed(110);
  CAPTURE(seed);
  const int bits = GENERATE(1, 3, 8);
  const int apot = GENERATE(0, 3);
  const auto axis = GENERATE(scale_axis::rows, scale_axis::columns);
  CAPTURE(bits, apot, static_cast<int>(axis));
  const reparam::index group = 16;
  // A block of a larger matrix (row stride 70): the front end must respect the stride.
  const matrix<float> big = reparam::test::random_matrix(40, 70, seed, -2.0f, 2.0f);
  const auto w = big.block(4, 3, 32, 64);
  const bcq_params params{bits, 15, apot};
  const binary_coded_matrix q = quantize_bcq(w, params, group, axis);
  const bool by_rows = axis == scale_axis::rows;
  const matrix<float> dense = reparam::shiftadd::reconstruct(q);
  double expected_error = 0.0;
  for (reparam::index major = 0; major < q.scale_major(); ++major) {
    for (reparam::index g = 0; g < q.groups(); ++g) {
      std::vector<float> values(static_cast<std::size_t>(group));
      for (reparam::index k = 0; k < group; ++k) {
        values[static_cast<std::size_t>(k)] =
            by_rows ? w(major, g * group + k) : w(g * group + k, major);
      }
      const group_fit f = fit(values, params);
      expected_error += squared_error(values, f.alphas.data(), bits, f.codes);
      CHECK(std::equal(f.alphas.begin(), f.alphas.end(), q.scales_of(major, g)));
      for (reparam::index k = 0; k < group; ++k) {
        const reparam::index r = by_rows ? major : g * group + k;
        const reparam::index c = by_rows ? g * group + k : major;
        CHECK(q.code(r, c) == f.codes[static_cast<std::size_t>(k)]);
        CHECK(dense(r, c) ==
              oracle_level(f.alphas.data(), bits, f.codes[static_cast<std::size_t>(k)]));
      }
      if (apot > 0) {
        for (int p = 0; p < bits; ++p) {
          for (int t = 0; t < apot; ++t) {
            const apot_term stored = q.apot_of(major, g, p)[t];
            const apot_term fitted = f.terms[static_cast<std::size_t>(p * apot + t)];
            CHECK(stored.sign == fitted.sign);
            CHECK(stored.exponent == fitted.exponent);
          }
        }
      }
    }
  }
  const double error = (w.cast<double>() - dense.cast<double>()).squaredNorm();
  CHECK(std::fabs(error - expected_error) <= 1e-9 * expected_error);
  // double weights are rounded to float first: the same result.
  const matrix<double> wd = w.cast<double>();
  const binary_coded_matrix qd = quantize_bcq(wd, params, group, axis);
  CHECK(qd.scales() == q.scales());
  CHECK(qd.planes() == q.planes());
}

TEST_CASE("quantize_bcq error on Gaussian weights matches the optimal quantizer bounds",
          "[shiftadd][bcq]") {
  const std::uint64_t seed = reparam::test::test_seed(111);
  CAPTURE(seed);
  matrix<float> w(8, 4096);
  for (reparam::index r = 0; r < w.rows(); ++r) {
    const std::vector<float> row =
        make_values(w.cols(), shape_kind::gaussian, seed, static_cast<std::uint64_t>(100 + r));
    std::copy(row.begin(), row.end(), w.row(r).data());
  }
  // Whole-row groups of N(0, 1) samples. Closed forms for the relative MSE:
  //  1 bit:  1 - 2/pi (alpha = E|w|, the optimum for levels +-alpha).
  //  2 bits: levels +-a1 +-a2 are all symmetric 4-level quantizers: Lloyd-Max, 0.1175.
  //  3 bits: a subset of the symmetric 8-level quantizers that contains the uniform ones:
  //          between Lloyd-Max (0.03455) and the optimal uniform quantizer (0.03744).
  // Sampling noise on 32768 samples is ~0.3% relative.
  const double one = relative_error(w, quantize_bcq(w, {1, 20, 0}, 0));
  const double two = relative_error(w, quantize_bcq(w, {2, 50, 0}, 0));
  const double three = relative_error(w, quantize_bcq(w, {3, 50, 0}, 0));
  CAPTURE(one, two, three);
  const double pi = 3.14159265358979323846;
  CHECK(std::fabs(one - (1.0 - 2.0 / pi)) < 0.01);
  CHECK(std::fabs(two - 0.1175) < 0.004);
  CHECK(three > 0.0345 * 0.97);
  CHECK(three < 0.03744 * 1.02);
}

TEST_CASE("quantize_bcq error falls with every added bit", "[shiftadd][bcq]") {
  const std::uint64_t seed = reparam::test::test_seed(112);
  CAPTURE(seed);
  const matrix<float> w = reparam::test::random_matrix(16, 256, seed);
  double previous = 1.0;
  for (int bits = 1; bits <= 6; ++bits) {
    const double error = relative_error(w, quantize_bcq(w, {bits, 20, 0}, 128));
    CAPTURE(bits, error, previous);
    CHECK(error < 0.6 * previous);
    previous = error;
  }
}

TEST_CASE("quantize_bcq rejects bad arguments with clear messages", "[shiftadd][bcq][errors]") {
  const matrix<float> w = reparam::test::random_matrix(4, 100, reparam::test::test_seed(113));
  CHECK_THROWS_WITH(quantize_bcq(w, {3, 20, 0}, 96),
                    "shiftadd::quantize_bcq: group_size 96 does not divide cols 100");
  CHECK_THROWS_WITH(quantize_bcq(w, {3, 20, 0}, 3, scale_axis::columns),
                    "shiftadd::quantize_bcq: group_size 3 does not divide rows 4");
  CHECK_THROWS_WITH(quantize_bcq(w, {3, 20, 0}, -4),
                    "shiftadd::quantize_bcq: group_size -4 is negative");
  CHECK_THROWS_WITH(quantize_bcq(w, {0, 20, 0}, 0),
                    "shiftadd::quantize_bcq: bits 0 is outside [1, 8]");
  CHECK_THROWS_WITH(quantize_bcq(w, {9, 20, 0}, 0),
                    "shiftadd::quantize_bcq: bits 9 is outside [1, 8]");
  CHECK_THROWS_WITH(quantize_bcq(w, {3, -1, 0}, 0),
                    "shiftadd::quantize_bcq: rounds -1 is negative");
  CHECK_THROWS_WITH(quantize_bcq(w, {3, 20, -1}, 0),
                    "shiftadd::quantize_bcq: apot_terms -1 is outside [0, 8]");
  CHECK_THROWS_WITH(quantize_bcq(w, {3, 20, 9}, 0),
                    "shiftadd::quantize_bcq: apot_terms 9 is outside [0, 8]");
  const matrix<float> empty(0, 8);
  CHECK_THROWS_WITH(quantize_bcq(empty, {3, 20, 0}, 0),
                    "shiftadd::quantize_bcq: weights shape 0x8 is empty");
  matrix<float> bad = w;
  bad(2, 57) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(quantize_bcq(bad, {3, 20, 0}, 0),
                    "shiftadd::quantize_bcq: weights has non-finite value nan at (2, 57)");
  bad(2, 57) = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(quantize_bcq(bad, {3, 20, 0}, 0),
                    "shiftadd::quantize_bcq: weights has non-finite value -inf at (2, 57)");
  bad(2, 57) = 3e30f;
  CHECK_THROWS_AS(quantize_bcq(bad, {3, 20, 0}, 0), reparam::error);
  CHECK_THROWS_WITH(quantize_bcq(bad, {3, 20, 0}, 0),
                    Catch::Contains("at (2, 57) exceeds the supported magnitude 2^100"));
}

TEST_CASE("quantize_bcq allocates only its result and one scratch buffer",
          "[shiftadd][bcq][allocation]") {
  const std::uint64_t seed = reparam::test::test_seed(114);
  const int apot = GENERATE(0, 3);
  const auto axis = GENERATE(scale_axis::rows, scale_axis::columns);
  CAPTURE(apot, static_cast<int>(axis));
  const matrix<float> small = reparam::test::random_matrix(8, 8, seed);
  const matrix<float> large = reparam::test::random_matrix(64, 128, seed);
  const auto count_for = [&](const matrix<float>& w, reparam::index group) {
    reparam::shiftadd::bcq_shape shape;
    shape.rows = w.rows();
    shape.cols = w.cols();
    shape.bits = 3;
    shape.group_size = group;
    shape.axis = axis;
    shape.apot_terms = apot;
    long before = reparam::test::allocations();
    { const binary_coded_matrix result_only(shape); }
    const long result_allocations = reparam::test::allocations() - before;
    before = reparam::test::allocations();
    { const binary_coded_matrix q = quantize_bcq(w, {3, 20, apot}, group, axis); }
    return reparam::test::allocations() - before - result_allocations;
  };
  // One group in total versus 512 groups: the same single scratch allocation.
  CHECK(count_for(small, 0) == 1);
  CHECK(count_for(large, 16) == 1);
  SECTION("the group-level functions never allocate") {
    const std::vector<float> w = make_values(256, shape_kind::gaussian, seed, 0);
    std::vector<float> alphas(8);
    std::vector<std::uint8_t> codes(w.size());
    std::vector<apot_term> terms(64);
    const long before = reparam::test::allocations();
    for (int bits = 1; bits <= 8; ++bits) {
      fit_bcq_group(w.data(), 256, 1, {bits, 20, apot}, alphas.data(), codes.data(), terms.data());
      assign_bcq_codes(w.data(), 256, 1, alphas.data(), bits, codes.data());
    }
    round_apot(0.3f, 8, terms.data());
    CHECK(reparam::test::allocations() == before);
  }
}

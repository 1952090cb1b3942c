// SPDX-License-Identifier: Apache-2.0
// scale/calibrate.hpp against independent oracles: the quantile against values worked out by
// hand with numpy.percentile's linear rule; the observers against hand-computed ranges; each
// search (percentile, MSE grid, output-aware clip) against a brute force written here in double
// over the same candidate grid, plus the properties a search must have (p = 1 is min-max, never
// worse than min-max, a heavy outlier shrinks the range), the speed of the per-column percentile
// search, and every documented refusal.
#define EIGEN_RUNTIME_NO_MALLOC  // same Eigen configuration as quantizer_test.cpp

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <ostream>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/calibrate.hpp>
#include <reparam/scale/quantizer.hpp>

#include "support/random.hpp"
#include "support/scale_quantizers.hpp"

namespace {

using Catch::Matchers::Contains;
using reparam::matrix;
using namespace reparam::scale;  // NOLINT(google-build-using-namespace): test file
using reparam::test::library_round;
using reparam::test::oracle_params;
using reparam::test::spec_of;
/// One slot's parameters (oracle_params: the documented range rule, in float arithmetic).
using params = reparam::test::slot_params;

/// x_hat of one value: scale * (clamp(round(x / scale) + zero) - zero) in Scalar.
template <class Scalar>
Scalar oracle_fake(Scalar x, params p, const uniform_spec& spec) {
  const int top = spec.is_symmetric ? (1 << (spec.bits - 1)) - 1 : (1 << spec.bits) - 1;
  const int bottom = spec.is_symmetric ? -top : 0;
  const auto s = static_cast<Scalar>(p.scale);
  const auto z = static_cast<Scalar>(p.zero);
  Scalar code = library_round(x / s, spec.mode) + z;
  code = code < Scalar(bottom) ? Scalar(bottom) : code;
  code = code > Scalar(top) ? Scalar(top) : code;
  return s * (code - z);
}

/// The entries of every slot, in slot order, each in row-major order.
template <class Scalar>
std::vector<std::vector<Scalar>> slot_values(const matrix<Scalar>& x, const uniform_spec& spec) {
  const reparam::index rows = x.rows();
  const reparam::index cols = x.cols();
  std::vector<std::vector<Scalar>> slots;
  if (spec.axis == granularity::per_tensor) {
    slots.resize(1);
    for (reparam::index r = 0; r < rows; ++r) {
      for (reparam::index c = 0; c < cols; ++c) {
        slots[0].push_back(x(r, c));
      }
    }
  } else if (spec.axis == granularity::per_row) {
    for (reparam::index r = 0; r < rows; ++r) {
      slots.emplace_back(x.row(r).data(), x.row(r).data() + cols);
    }
  } else if (spec.axis == granularity::per_column) {
    for (reparam::index c = 0; c < cols; ++c) {
      slots.emplace_back();
      for (reparam::index r = 0; r < rows; ++r) {
        slots.back().push_back(x(r, c));
      }
    }
  } else {
    for (reparam::index r = 0; r < rows; ++r) {
      for (reparam::index c0 = 0; c0 < cols; c0 += spec.group_size) {
        slots.emplace_back(x.row(r).data() + c0, x.row(r).data() + c0 + spec.group_size);
      }
    }
  }
  return slots;
}

/// numpy.percentile(values, 100 p) with the default linear method, written from its definition.
double oracle_quantile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  const double position = p * static_cast<double>(values.size() - 1);
  const double below = std::floor(position);
  const auto i = static_cast<std::size_t>(below);
  const std::size_t j = i + 1 < values.size() ? i + 1 : i;
  const double t = position - below;
  const double a = values[i];
  const double b = values[j];
  // numpy's _lerp: a + (b - a) t, replaced by b - (b - a) (1 - t) where t >= 0.5.
  return t >= 0.5 ? b - (b - a) * (1.0 - t) : a + (b - a) * t;
}

template <class Scalar>
double slot_error(const std::vector<Scalar>& values, params p, const uniform_spec& spec,
                  double norm) {
  double sum = 0.0;
  for (const Scalar v : values) {
    const double d =
        std::fabs(static_cast<double>(oracle_fake(v, p, spec)) - static_cast<double>(v));
    sum += std::pow(d, norm);
  }
  return sum;
}

/// Result of comparing a search with its brute force, slot by slot.
struct search_check {
  reparam::index slots = 0;
  reparam::index exact = 0;      // same parameters as the brute force
  reparam::index near_ties = 0;  // different parameters, error within the tie tolerance of the best
  reparam::index wrong = 0;
  reparam::index first_wrong = -1;
};

std::ostream& operator<<(std::ostream& out, const search_check& c) {
  return out << "{slots " << c.slots << ", exact " << c.exact << ", near ties " << c.near_ties
             << ", wrong " << c.wrong << " (first " << c.first_wrong << ")}";
}

/// Candidates of one slot in the brute force: their parameters and errors.
struct candidate_list {
  std::vector<params> candidates;
  std::vector<double> errors;
};

/// Records whether the chosen (scale, zero) is the brute force's first argmin. Candidate errors
/// are sums of many terms in a different order than the library's, so a different choice is
/// accepted only when its error is within 1e-12 (relative) of the minimum.
void compare_choice(search_check& check, reparam::index slot, const candidate_list& list,
                    float scale, float zero) {
  constexpr double tie_tolerance = 1e-12;
  ++check.slots;
  std::size_t best = 0;
  for (std::size_t k = 1; k < list.errors.size(); ++k) {
    if (list.errors[k] < list.errors[best]) {
      best = k;
    }
  }
  if (list.candidates[best].scale == scale && list.candidates[best].zero == zero) {
    ++check.exact;
    return;
  }
  for (std::size_t k = 0; k < list.candidates.size(); ++k) {
    if (list.candidates[k].scale == scale && list.candidates[k].zero == zero &&
        list.errors[k] <= list.errors[best] * (1.0 + tie_tolerance) + 1e-300) {
      ++check.near_ties;
      return;
    }
  }
  if (check.first_wrong < 0) {
    check.first_wrong = slot;
  }
  ++check.wrong;
}

template <class Scalar>
search_check brute_force_percentile(const matrix<Scalar>& x, const uniform_spec& spec,
                                    const std::vector<double>& percentiles,
                                    const uniform_quantizer& chosen) {
  search_check check;
  const auto slots = slot_values(x, spec);
  for (std::size_t s = 0; s < slots.size(); ++s) {
    const std::vector<double> wide(slots[s].begin(), slots[s].end());
    candidate_list list;
    for (const double p : percentiles) {
      const auto lo = static_cast<float>(oracle_quantile(wide, 1.0 - p));
      const auto hi = static_cast<float>(oracle_quantile(wide, p));
      const params candidate = oracle_params(lo, hi, spec);
      list.candidates.push_back(candidate);
      list.errors.push_back(slot_error(slots[s], candidate, spec, 2.0) /
                            static_cast<double>(slots[s].size()));
    }
    const auto slot = static_cast<reparam::index>(s);
    compare_choice(check, slot, list, chosen.scale[slot], chosen.zero_point[slot]);
  }
  return check;
}

template <class Scalar>
search_check brute_force_mse(const matrix<Scalar>& x, const uniform_spec& spec,
                             const mse_search_params& search, const uniform_quantizer& chosen) {
  search_check check;
  const auto slots = slot_values(x, spec);
  const auto count = static_cast<int>(std::floor(search.max_shrink * search.grid));
  for (std::size_t s = 0; s < slots.size(); ++s) {
    float lo = std::numeric_limits<float>::infinity();
    float hi = -std::numeric_limits<float>::infinity();
    for (const Scalar v : slots[s]) {
      lo = std::min(lo, static_cast<float>(v));
      hi = std::max(hi, static_cast<float>(v));
    }
    candidate_list list;
    for (int i = 0; i < (count < 1 ? 1 : count); ++i) {
      const auto shrink = static_cast<float>(1.0 - static_cast<double>(i) / search.grid);
      const params candidate = oracle_params(shrink * lo, shrink * hi, spec);
      list.candidates.push_back(candidate);
      list.errors.push_back(slot_error(slots[s], candidate, spec, search.norm));
    }
    const auto slot = static_cast<reparam::index>(s);
    compare_choice(check, slot, list, chosen.scale[slot], chosen.zero_point[slot]);
  }
  return check;
}

/// Output error sum_t (sum_j x[t, j] (w_hat_j - w_j))^2 of one slot (row r, columns
/// [c0, c0 + size)) over the tokens listed.
template <class Scalar>
double output_error(const matrix<Scalar>& w, const matrix<Scalar>& x,
                    const std::vector<reparam::index>& tokens, reparam::index r, reparam::index c0,
                    reparam::index size, params p, const uniform_spec& spec) {
  double sum = 0.0;
  for (const reparam::index t : tokens) {
    double dot = 0.0;
    for (reparam::index j = c0; j < c0 + size; ++j) {
      const double d =
          static_cast<double>(oracle_fake(w(r, j), p, spec)) - static_cast<double>(w(r, j));
      dot += static_cast<double>(x(t, j)) * d;
    }
    sum += dot * dot;
  }
  return sum;
}

template <class Scalar>
search_check brute_force_output_clip(const matrix<Scalar>& w, const matrix<Scalar>& x,
                                     const uniform_spec& spec, const clip_search_params& search,
                                     const uniform_quantizer& chosen) {
  search_check check;
  const reparam::index step = (x.rows() + search.max_tokens - 1) / search.max_tokens;
  std::vector<reparam::index> tokens;
  for (reparam::index t = 0; t < x.rows(); t += step) {
    tokens.push_back(t);
  }
  const reparam::index size = spec.axis == granularity::per_group ? spec.group_size : w.cols();
  const auto count = static_cast<int>(std::floor(search.max_shrink * search.grid));
  reparam::index slot = 0;
  for (reparam::index r = 0; r < w.rows(); ++r) {
    for (reparam::index c0 = 0; c0 < w.cols(); c0 += size, ++slot) {
      float lo = std::numeric_limits<float>::infinity();
      float hi = -std::numeric_limits<float>::infinity();
      for (reparam::index j = c0; j < c0 + size; ++j) {
        lo = std::min(lo, static_cast<float>(w(r, j)));
        hi = std::max(hi, static_cast<float>(w(r, j)));
      }
      const float m = std::max(std::fabs(lo), std::fabs(hi));
      candidate_list list;
      for (int i = 0; i < (count < 1 ? 1 : count); ++i) {
        const float clip = m * static_cast<float>(1.0 - static_cast<double>(i) / search.grid);
        const params candidate = oracle_params(std::max(lo, -clip), std::min(hi, clip), spec);
        list.candidates.push_back(candidate);
        list.errors.push_back(output_error(w, x, tokens, r, c0, size, candidate, spec));
      }
      compare_choice(check, slot, list, chosen.scale[slot], chosen.zero_point[slot]);
    }
  }
  return check;
}

/// Random data with a different offset and spread per row and a few outliers, so that
/// percentiles and shrinking matter.
template <class Scalar>
matrix<Scalar> calibration_data(reparam::index rows, reparam::index cols, std::uint64_t seed) {
  matrix<Scalar> x = reparam::test::random_matrix<Scalar>(rows, cols, seed);
  const matrix<Scalar> u = reparam::test::random_matrix<Scalar>(rows, cols, seed ^ 0xabcdu, 0, 1);
  for (reparam::index r = 0; r < rows; ++r) {
    for (reparam::index c = 0; c < cols; ++c) {
      x(r, c) = Scalar(0.2) * Scalar(r % 3) + x(r, c) * Scalar(1 + r % 4);
      if (u(r, c) > Scalar(0.97)) {
        x(r, c) *= Scalar(12);  // an outlier
      }
    }
  }
  return x;
}

bool same_quantizer(const uniform_quantizer& a, const uniform_quantizer& b) {
  return a.scale.size() == b.scale.size() && (a.scale.array() == b.scale.array()).all() &&
         (a.zero_point.array() == b.zero_point.array()).all();
}

const granularity all_axes[] = {granularity::per_tensor, granularity::per_row,
                                granularity::per_column, granularity::per_group};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Quantile

TEST_CASE("quantile matches numpy.percentile linear interpolation on hand-computed arrays",
          "[scale][calibrate]") {
  // {1, 2, 3, 4}: position p * 3.
  const std::vector<double> four = {1.0, 2.0, 3.0, 4.0};
  CHECK(quantile(four, 0.5) == 2.5);    // position 1.5: 2 + 0.5 (3 - 2) -> 3 - 1 * 0.5
  CHECK(quantile(four, 0.1) == 1.3);    // position 0.30000000000000004: 1 + 0.30000000000000004
  CHECK(quantile(four, 0.75) == 3.25);  // position 2.25
  CHECK(quantile(four, 0.0) == 1.0);
  CHECK(quantile(four, 1.0) == 4.0);
  // Unsorted input gives the same values.
  const std::vector<double> shuffled = {4.0, 1.0, 3.0, 2.0};
  CHECK(quantile(shuffled, 0.5) == 2.5);
  CHECK(quantile(shuffled, 0.1) == 1.3);
  CHECK(quantile(shuffled, 1.0) == 4.0);
  // One value: every p gives it.
  CHECK(quantile({7.0}, 0.0) == 7.0);
  CHECK(quantile({7.0}, 0.37) == 7.0);
  CHECK(quantile({7.0}, 1.0) == 7.0);
  // Duplicates {1, 1, 1, 5}: p = 0.5 -> position 1.5 between 1 and 1 -> 1.
  // p = 0.9 -> position 0.9 * 3 = 2.7000000000000002, t = 0.7000000000000002 >= 0.5:
  // 5 - 4 * (1 - t) = 5 - 4 * 0.2999999999999998 = 5 - 1.1999999999999993 = 3.8000000000000007.
  const std::vector<double> duplicates = {1.0, 5.0, 1.0, 1.0};
  CHECK(quantile(duplicates, 0.5) == 1.0);
  CHECK(quantile(duplicates, 0.9) == 3.8000000000000007);
  // {0.1, 0.7}, p = 0.7: t = 0.7 >= 0.5, so numpy computes 0.7 - 0.6 * 0.30000000000000004 =
  // 0.7 - 0.18000000000000002 = 0.5199999999999999, where a + (b - a) t would give 0.52.
  CHECK(quantile({0.7, 0.1}, 0.7) == 0.5199999999999999);
  // Negative values, a tie of the interpolation weight: {-3, -1, 2}, p = 0.25 -> position 0.5,
  // -1 - 2 * 0.5 = -2.
  CHECK(quantile({2.0, -3.0, -1.0}, 0.25) == -2.0);
}

TEST_CASE("quantile refuses empty input, p outside [0, 1] and non-finite values",
          "[scale][calibrate][errors]") {
  REQUIRE_THROWS_WITH(quantile({}, 0.5), Contains("scale::quantile") && Contains("empty"));
  REQUIRE_THROWS_WITH(quantile({1.0}, -0.1), Contains("p -0.1"));
  REQUIRE_THROWS_WITH(quantile({1.0}, 1.5), Contains("p 1.5"));
  REQUIRE_THROWS_WITH(quantile({1.0}, std::numeric_limits<double>::quiet_NaN()),
                      Contains("outside [0, 1]"));
  REQUIRE_THROWS_WITH(quantile({1.0, std::numeric_limits<double>::infinity()}, 0.5),
                      Contains("scale::quantile") && Contains("non-finite"));
}

// ---------------------------------------------------------------------------------------------
// Observers and min-max

TEST_CASE("minmax_observer keeps the running range of every batch", "[scale][calibrate]") {
  minmax_observer tensor(spec_of(8, false, granularity::per_tensor));
  matrix<float> a(2, 3);
  a << -1.0f, 0.5f, 2.0f, 0.0f, 1.0f, 1.5f;
  matrix<double> b(1, 3);
  b << 0.25, 3.0, -0.5;
  tensor.observe(a);
  tensor.observe(matrix<float>(0, 3));  // empty: no-op
  tensor.observe(b);
  CHECK(tensor.batches() == 2);
  const value_range r = tensor.range();
  REQUIRE(r.lo.size() == 1);
  CHECK(r.lo[0] == -1.0f);
  CHECK(r.hi[0] == 3.0f);
  CHECK(same_quantizer(
      tensor.quantizer(),
      make_uniform_quantizer(spec_of(8, false, granularity::per_tensor), r.lo, r.hi)));

  minmax_observer columns(spec_of(4, true, granularity::per_column));
  columns.observe(a);
  columns.observe(b);
  const value_range c = columns.range();
  REQUIRE(c.lo.size() == 3);
  CHECK(c.lo == Eigen::Vector3f(-1.0f, 0.5f, -0.5f));
  CHECK(c.hi == Eigen::Vector3f(0.25f, 3.0f, 2.0f));
  // Symmetric 4 bits: scale = max(|lo|, |hi|) / 7.
  const uniform_quantizer q = columns.quantizer();
  CHECK(q.scale[0] == 1.0f / 7.0f);
  CHECK(q.scale[1] == 3.0f / 7.0f);
  CHECK(q.scale[2] == 2.0f / 7.0f);
}

TEST_CASE("moving_average_minmax_observer averages batch ranges with its momentum",
          "[scale][calibrate]") {
  matrix<float> first(1, 2);
  first << -1.0f, 1.0f;
  moving_average_minmax_observer half(spec_of(8, false, granularity::per_tensor), 0.5);
  half.observe(first);
  CHECK(half.range().lo[0] == -1.0f);
  // Per-tensor slots do not depend on cols, but cols must not change between batches.
  matrix<float> second_wide(1, 2);
  second_wide << -3.0f, 5.0f;
  half.observe(second_wide);
  // lo = -1 + 0.5 (-3 - -1) = -2, hi = 1 + 0.5 (5 - 1) = 3.
  CHECK(half.range().lo[0] == -2.0f);
  CHECK(half.range().hi[0] == 3.0f);
  matrix<float> third_wide(1, 2);
  third_wide << 0.0f, 0.0f;
  half.observe(third_wide);
  // lo = -2 + 0.5 (0 - -2) = -1, hi = 3 + 0.5 (0 - 3) = 1.5.
  CHECK(half.range().lo[0] == -1.0f);
  CHECK(half.range().hi[0] == 1.5f);
  CHECK(half.batches() == 3);

  // Default momentum 0.01 (ONNX Runtime): lo = -1 + 0.01 (-3 + 1) = -1.02, hi = 1.04.
  moving_average_minmax_observer slow(spec_of(8, false, granularity::per_tensor));
  slow.observe(first);
  slow.observe(second_wide);
  CHECK(slow.range().lo[0] == -1.02f);
  CHECK(slow.range().hi[0] == 1.04f);
  CHECK(same_quantizer(slow.quantizer(),
                       make_uniform_quantizer(spec_of(8, false, granularity::per_tensor),
                                              slow.range().lo, slow.range().hi)));
}

TEST_CASE("observers refuse row slots, bad momentum, column changes and bad values unchanged",
          "[scale][calibrate][errors]") {
  REQUIRE_THROWS_WITH(minmax_observer(spec_of(8, false, granularity::per_row)),
                      Contains("scale::minmax_observer") && Contains("per_row") &&
                          Contains("per_tensor or per_column"));
  REQUIRE_THROWS_WITH(moving_average_minmax_observer(spec_of(8, false, granularity::per_group, 4)),
                      Contains("scale::moving_average_minmax_observer") && Contains("per_group"));
  REQUIRE_THROWS_WITH(minmax_observer(spec_of(0, false, granularity::per_tensor)),
                      Contains("bits 0"));
  REQUIRE_THROWS_WITH(
      moving_average_minmax_observer(spec_of(8, false, granularity::per_tensor), 0.0),
      Contains("momentum 0"));
  REQUIRE_THROWS_WITH(
      moving_average_minmax_observer(spec_of(8, false, granularity::per_tensor), 1.5),
      Contains("momentum 1.5"));

  minmax_observer observer(spec_of(8, false, granularity::per_column));
  REQUIRE_THROWS_WITH(observer.range(), Contains("observed no data"));
  REQUIRE_THROWS_WITH(observer.quantizer(), Contains("observed no data"));
  matrix<float> a(1, 3);
  a << -1.0f, 0.5f, 2.0f;
  observer.observe(a);
  const matrix<float> wrong_cols = matrix<float>::Constant(2, 4, 100.0f);
  REQUIRE_THROWS_WITH(observer.observe(wrong_cols),
                      Contains("scale::minmax_observer::observe") && Contains("4 columns"));
  matrix<double> bad(2, 3);
  bad << 9.0, 9.0, 9.0, 9.0, std::numeric_limits<double>::quiet_NaN(), 9.0;
  REQUIRE_THROWS_WITH(observer.observe(bad), Contains("non-finite") && Contains("(1, 1)"));
  bad(1, 1) = 1e300;  // beyond the float range
  REQUIRE_THROWS_WITH(observer.observe(bad), Contains("too large"));
  CHECK(observer.batches() == 1);
  CHECK(observer.range().hi == Eigen::Vector3f(-1.0f, 0.5f, 2.0f));
  REQUIRE_THROWS_WITH(observer.observe(matrix<float>(3, 0)), Contains("0 columns"));

  moving_average_minmax_observer average(spec_of(8, false, granularity::per_tensor));
  average.observe(a);
  REQUIRE_THROWS_WITH(average.observe(wrong_cols), Contains("4 columns"));
  CHECK(average.range().hi[0] == 2.0f);
  CHECK(average.batches() == 1);
}

TEST_CASE("calibrate_minmax takes each slot's min and max", "[scale][calibrate]") {
  const std::uint64_t seed = reparam::test::test_seed(201);
  CAPTURE(seed);
  const matrix<float> xf = calibration_data<float>(6, 12, seed);
  const matrix<double> xd = calibration_data<double>(6, 12, seed);
  for (const granularity axis : all_axes) {
    for (const bool is_symmetric : {false, true}) {
      const uniform_spec spec = spec_of(5, is_symmetric, axis, 4);
      CAPTURE(static_cast<int>(axis), is_symmetric);
      const uniform_quantizer qf = calibrate_minmax(xf, spec);
      const uniform_quantizer qd = calibrate_minmax(xd, spec);
      const auto slots_f = slot_values(xf, spec);
      const auto slots_d = slot_values(xd, spec);
      REQUIRE(qf.scale.size() == static_cast<reparam::index>(slots_f.size()));
      reparam::index wrong = 0;
      for (std::size_t s = 0; s < slots_f.size(); ++s) {
        const auto slot = static_cast<reparam::index>(s);
        const params pf =
            oracle_params(*std::min_element(slots_f[s].begin(), slots_f[s].end()),
                          *std::max_element(slots_f[s].begin(), slots_f[s].end()), spec);
        const params pd = oracle_params(
            static_cast<float>(*std::min_element(slots_d[s].begin(), slots_d[s].end())),
            static_cast<float>(*std::max_element(slots_d[s].begin(), slots_d[s].end())), spec);
        wrong += (qf.scale[slot] != pf.scale || qf.zero_point[slot] != pf.zero) ? 1 : 0;
        wrong += (qd.scale[slot] != pd.scale || qd.zero_point[slot] != pd.zero) ? 1 : 0;
      }
      CHECK(wrong == 0);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Percentile search (RepQ-ViT)

TEST_CASE("calibrate_percentile picks the brute-force best percentile in every slot",
          "[scale][calibrate]") {
  const std::uint64_t seed = reparam::test::test_seed(301);
  CAPTURE(seed);
  const matrix<float> xf = calibration_data<float>(9, 40, seed);
  const matrix<double> xd = calibration_data<double>(9, 40, seed ^ 3u);
  const std::vector<double> spread = {0.9, 0.95, 0.99, 1.0, 0.75, 0.5, 0.51};
  const std::vector<double> repq = {0.999, 0.9999, 0.99999};
  for (const granularity axis : all_axes) {
    for (const bool is_symmetric : {false, true}) {
      for (const int bits : {2, 3, 4, 6}) {
        const uniform_spec spec =
            spec_of(bits, is_symmetric, axis, 8,
                    bits == 3 ? rounding::half_away_from_zero : rounding::half_even);
        CAPTURE(static_cast<int>(axis), is_symmetric, bits);
        const search_check f =
            brute_force_percentile(xf, spec, spread, calibrate_percentile(xf, spec, spread));
        const search_check d =
            brute_force_percentile(xd, spec, spread, calibrate_percentile(xd, spec, spread));
        const search_check r =
            brute_force_percentile(xf, spec, repq, calibrate_percentile(xf, spec));
        CAPTURE(f, d, r);
        CHECK(f.wrong == 0);
        CHECK(d.wrong == 0);
        CHECK(r.wrong == 0);
        CHECK(f.exact + d.exact > (f.slots + d.slots) * 9 / 10);  // ties are rare
      }
    }
  }
}

TEST_CASE("calibrate_percentile with p = 1 is min-max and an outlier shrinks its range",
          "[scale][calibrate]") {
  const std::uint64_t seed = reparam::test::test_seed(311);
  CAPTURE(seed);
  const matrix<float> x = calibration_data<float>(7, 24, seed);
  for (const granularity axis : all_axes) {
    for (const bool is_symmetric : {false, true}) {
      const uniform_spec spec = spec_of(4, is_symmetric, axis, 6);
      CAPTURE(static_cast<int>(axis), is_symmetric);
      CHECK(same_quantizer(calibrate_percentile(x, spec, {1.0}), calibrate_minmax(x, spec)));
    }
  }
  // 9999 values in (-1, 1) and one at 30, 3 bits. Min-max: scale 31 / 7 ~ 4.4, every bulk value
  // rounds to 0 (mean squared error ~ 1/3). quantile(0.999) ~ 1 (position 9989.001 lies in the
  // bulk): scale ~ 2 / 7, bulk error ~ 0.007 plus the clipped outlier 29^2 / 10^4 ~ 0.08.
  matrix<float> heavy = reparam::test::random_matrix<float>(1, 10000, seed);
  heavy(0, 500) = 30.0f;
  const uniform_spec spec = spec_of(3, false, granularity::per_tensor);
  const uniform_quantizer chosen = calibrate_percentile(heavy, spec);
  const uniform_quantizer minmax = calibrate_minmax(heavy, spec);
  CHECK(chosen.scale[0] < minmax.scale[0] / 10.0f);
}

TEST_CASE("calibrate_percentile over 8192 tokens and 172 channels per column is fast",
          "[scale][calibrate]") {
  const matrix<float> x = calibration_data<float>(8192, 172, reparam::test::test_seed(321));
  const uniform_spec spec = spec_of(4, false, granularity::per_column);
  const auto start = std::chrono::steady_clock::now();
  const uniform_quantizer q = calibrate_percentile(x, spec);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CAPTURE(seconds);
  CHECK(q.scale.size() == 172);
  CHECK((q.scale.array() > 0.0f).all());
#if defined(NDEBUG)
  CHECK(seconds < 1.0);  // release builds only; sanitizers and -O0 are several times slower
#endif
}

// ---------------------------------------------------------------------------------------------
// MSE grid search (GPTQ)

TEST_CASE("calibrate_mse picks the brute-force best shrink in every slot", "[scale][calibrate]") {
  const std::uint64_t seed = reparam::test::test_seed(401);
  CAPTURE(seed);
  const matrix<float> xf = calibration_data<float>(6, 32, seed);
  const matrix<double> xd = calibration_data<double>(6, 32, seed ^ 5u);
  mse_search_params coarse;
  coarse.grid = 20;
  coarse.max_shrink = 0.9;
  coarse.norm = 2.0;
  for (const granularity axis : all_axes) {
    for (const bool is_symmetric : {false, true}) {
      for (const int bits : {2, 4}) {
        const uniform_spec spec =
            spec_of(bits, is_symmetric, axis, 8, bits == 2 ? rounding::floor : rounding::half_even);
        CAPTURE(static_cast<int>(axis), is_symmetric, bits);
        const search_check f =
            brute_force_mse(xf, spec, mse_search_params{}, calibrate_mse(xf, spec));
        const search_check d =
            brute_force_mse(xd, spec, mse_search_params{}, calibrate_mse(xd, spec));
        const search_check c = brute_force_mse(xf, spec, coarse, calibrate_mse(xf, spec, coarse));
        CAPTURE(f, d, c);
        CHECK(f.wrong == 0);
        CHECK(d.wrong == 0);
        CHECK(c.wrong == 0);
        CHECK(f.exact + d.exact > (f.slots + d.slots) * 9 / 10);
      }
    }
  }
}

TEST_CASE("calibrate_mse is never worse than min-max and shrinks around an outlier",
          "[scale][calibrate]") {
  const std::uint64_t seed = reparam::test::test_seed(411);
  CAPTURE(seed);
  const matrix<float> x = calibration_data<float>(8, 48, seed);
  for (const granularity axis : all_axes) {
    for (const bool is_symmetric : {false, true}) {
      const uniform_spec spec = spec_of(3, is_symmetric, axis, 12);
      CAPTURE(static_cast<int>(axis), is_symmetric);
      const uniform_quantizer searched = calibrate_mse(x, spec);
      const uniform_quantizer minmax = calibrate_minmax(x, spec);
      const auto slots = slot_values(x, spec);
      reparam::index worse = 0;
      for (std::size_t s = 0; s < slots.size(); ++s) {
        const auto slot = static_cast<reparam::index>(s);
        const double e_search = slot_error(
            slots[s], params{searched.scale[slot], searched.zero_point[slot]}, spec, 2.4);
        const double e_minmax =
            slot_error(slots[s], params{minmax.scale[slot], minmax.zero_point[slot]}, spec, 2.4);
        worse += e_search > e_minmax * (1.0 + 1e-12) ? 1 : 0;
      }
      CHECK(worse == 0);
      // max_shrink 0 leaves only candidate i = 0, min-max itself.
      mse_search_params none;
      none.max_shrink = 0.0;
      CHECK(same_quantizer(calibrate_mse(x, spec, none), minmax));
    }
  }
  // 2000 values in (-1, 1) and one at 8, 4 bits: min-max spends most codes on the empty range
  // (scale 9 / 15); clipping the outlier costs less than the rounding error it saves.
  matrix<float> heavy = reparam::test::random_matrix<float>(1, 2000, seed);
  heavy(0, 1234) = 8.0f;
  const uniform_spec spec = spec_of(4, false, granularity::per_tensor);
  CHECK(calibrate_mse(heavy, spec).scale[0] < calibrate_minmax(heavy, spec).scale[0] * 0.9f);
}

// ---------------------------------------------------------------------------------------------
// Output-aware clip (AWQ)

TEST_CASE("calibrate_output_clip picks the brute-force best clip in every slot",
          "[scale][calibrate]") {
  const std::uint64_t seed = reparam::test::test_seed(501);
  CAPTURE(seed);
  const matrix<float> wf = calibration_data<float>(7, 24, seed);
  const matrix<float> xf = reparam::test::random_matrix<float>(45, 24, seed ^ 7u, -2.0f, 2.0f);
  const matrix<double> wd = calibration_data<double>(7, 24, seed ^ 9u);
  const matrix<double> xd = reparam::test::random_matrix<double>(45, 24, seed ^ 11u, -2.0, 2.0);
  clip_search_params few_tokens;
  few_tokens.max_tokens = 10;  // every 5th token: 0, 5, ..., 40
  few_tokens.grid = 10;
  few_tokens.max_shrink = 0.8;
  for (const granularity axis : {granularity::per_row, granularity::per_group}) {
    for (const bool is_symmetric : {false, true}) {
      for (const int bits : {2, 3, 4}) {
        const uniform_spec spec = spec_of(bits, is_symmetric, axis, 6);
        CAPTURE(static_cast<int>(axis), is_symmetric, bits);
        const clip_search_params defaults;
        const search_check f =
            brute_force_output_clip(wf, xf, spec, defaults, calibrate_output_clip(wf, xf, spec));
        const search_check d =
            brute_force_output_clip(wd, xd, spec, defaults, calibrate_output_clip(wd, xd, spec));
        const search_check t = brute_force_output_clip(
            wf, xf, spec, few_tokens, calibrate_output_clip(wf, xf, spec, few_tokens));
        CAPTURE(f, d, t);
        CHECK(f.wrong == 0);
        CHECK(d.wrong == 0);
        CHECK(t.wrong == 0);
        CHECK(f.exact + d.exact > (f.slots + d.slots) * 9 / 10);
      }
    }
  }
}

TEST_CASE("calibrate_output_clip subsamples tokens evenly and is never worse than no clip",
          "[scale][calibrate]") {
  const std::uint64_t seed = reparam::test::test_seed(511);
  CAPTURE(seed);
  const matrix<float> w = calibration_data<float>(10, 32, seed);
  const matrix<float> x = reparam::test::random_matrix<float>(1000, 32, seed ^ 1u);
  const uniform_spec spec = spec_of(3, false, granularity::per_group, 8);
  // 1000 tokens with max_tokens 512: every 2nd token, the same as passing those 500 rows.
  matrix<float> every_second(500, 32);
  for (reparam::index t = 0; t < 500; ++t) {
    every_second.row(t) = x.row(2 * t);
  }
  const uniform_quantizer sub = calibrate_output_clip(w, x, spec);
  CHECK(same_quantizer(sub, calibrate_output_clip(w, every_second, spec)));

  // Never worse in output error than the unclipped min-max quantizer (candidate i = 0).
  const uniform_quantizer minmax = calibrate_minmax(w, spec);
  std::vector<reparam::index> tokens;
  for (reparam::index t = 0; t < 1000; t += 2) {
    tokens.push_back(t);
  }
  reparam::index worse = 0;
  reparam::index slot = 0;
  for (reparam::index r = 0; r < w.rows(); ++r) {
    for (reparam::index c0 = 0; c0 < w.cols(); c0 += 8, ++slot) {
      const double e_clip =
          output_error(w, x, tokens, r, c0, 8, params{sub.scale[slot], sub.zero_point[slot]}, spec);
      const double e_none = output_error(w, x, tokens, r, c0, 8,
                                         params{minmax.scale[slot], minmax.zero_point[slot]}, spec);
      worse += e_clip > e_none * (1.0 + 1e-12) ? 1 : 0;
    }
  }
  CHECK(worse == 0);
  clip_search_params none;
  none.max_shrink = 0.0;
  CHECK(same_quantizer(calibrate_output_clip(w, x, spec, none), minmax));

  // An outlier weight whose input channel is always 0 costs nothing when clipped: the search
  // shrinks that row's range. Weights in (-20, 20), outlier 50: min-max scale ~70 / 15; the
  // candidates clip at 50 (1 - i / 20) >= 27.5, never the bulk, and a finer scale lowers its
  // error, so the best is among the small clips (scale ~47.5 / 15 at i = 9).
  matrix<float> w_outlier = reparam::test::random_matrix<float>(10, 32, seed ^ 2u, -20.0f, 20.0f);
  w_outlier(3, 5) = 50.0f;
  matrix<float> x_dead = x;
  x_dead.col(5).setZero();
  const uniform_spec row_spec = spec_of(4, false, granularity::per_row);
  CHECK(calibrate_output_clip(w_outlier, x_dead, row_spec).scale[3] <
        calibrate_minmax(w_outlier, row_spec).scale[3] * 0.95f);
}

// ---------------------------------------------------------------------------------------------
// Refusals

TEST_CASE("the calibrators refuse empty or non-finite data and bad search parameters",
          "[scale][calibrate][errors]") {
  const matrix<float> x = calibration_data<float>(4, 8, 5);
  const uniform_spec spec = spec_of(4, false, granularity::per_row);
  matrix<float> nan_x = x;
  nan_x(1, 2) = std::numeric_limits<float>::quiet_NaN();
  const matrix<float> empty(0, 8);

  REQUIRE_THROWS_WITH(calibrate_minmax(empty, spec),
                      Contains("scale::calibrate_minmax") && Contains("empty"));
  REQUIRE_THROWS_WITH(calibrate_minmax(nan_x, spec), Contains("non-finite") && Contains("(1, 2)"));
  REQUIRE_THROWS_WITH(calibrate_minmax(x, spec_of(4, false, granularity::per_group, 3)),
                      Contains("scale::calibrate_minmax") && Contains("does not divide"));

  REQUIRE_THROWS_WITH(calibrate_percentile(empty, spec), Contains("scale::calibrate_percentile"));
  REQUIRE_THROWS_WITH(calibrate_percentile(nan_x, spec), Contains("non-finite"));
  REQUIRE_THROWS_WITH(calibrate_percentile(x, spec, {}), Contains("percentiles is empty"));
  REQUIRE_THROWS_WITH(calibrate_percentile(x, spec, {0.99, 1.5}), Contains("percentile 1.5"));
  REQUIRE_THROWS_WITH(calibrate_percentile(x, spec, {0.3}), Contains("percentile 0.3"));
  REQUIRE_THROWS_WITH(calibrate_percentile(x, spec, {0.0}), Contains("percentile 0"));

  mse_search_params bad_mse;
  bad_mse.grid = 0;
  REQUIRE_THROWS_WITH(calibrate_mse(x, spec, bad_mse),
                      Contains("scale::calibrate_mse") && Contains("grid 0"));
  bad_mse = {};
  bad_mse.max_shrink = 1.5;
  REQUIRE_THROWS_WITH(calibrate_mse(x, spec, bad_mse), Contains("max_shrink 1.5"));
  bad_mse = {};
  bad_mse.norm = 0.0;
  REQUIRE_THROWS_WITH(calibrate_mse(x, spec, bad_mse), Contains("norm 0"));
  REQUIRE_THROWS_WITH(calibrate_mse(nan_x, spec), Contains("non-finite"));

  const matrix<float> tokens = reparam::test::random_matrix<float>(5, 8, 6);
  REQUIRE_THROWS_WITH(calibrate_output_clip(x, tokens, spec_of(4, false, granularity::per_tensor)),
                      Contains("scale::calibrate_output_clip") && Contains("per_row or per_group"));
  REQUIRE_THROWS_WITH(calibrate_output_clip(x, tokens.leftCols(7).eval(), spec),
                      Contains("x has 7 columns"));
  REQUIRE_THROWS_WITH(calibrate_output_clip(x, matrix<float>(0, 8), spec), Contains("no tokens"));
  matrix<float> nan_tokens = tokens;
  nan_tokens(4, 7) = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_WITH(calibrate_output_clip(x, nan_tokens, spec),
                      Contains("x has non-finite") && Contains("(4, 7)"));
  REQUIRE_THROWS_WITH(calibrate_output_clip(nan_x, tokens, spec), Contains("non-finite"));
  clip_search_params bad_clip;
  bad_clip.max_tokens = 0;
  REQUIRE_THROWS_WITH(calibrate_output_clip(x, tokens, spec, bad_clip), Contains("max_tokens 0"));
  bad_clip = {};
  bad_clip.grid = -1;
  REQUIRE_THROWS_WITH(calibrate_output_clip(x, tokens, spec, bad_clip), Contains("grid -1"));
}

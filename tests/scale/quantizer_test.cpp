// SPDX-License-Identifier: Apache-2.0
// scale/quantizer.hpp against independent oracles: the rounding modes against hand-written tables
// and the C library (std::nearbyint, std::round, std::floor, floorl(x + 0.5L)) in every FP
// environment; codes against a hand-worked example; fake quantization against a per-entry
// formula written here; the slot layouts; dynamic quantization against per-row min-max
// calibration; the row form, aliasing, no allocation, and every documented refusal.
#define EIGEN_RUNTIME_NO_MALLOC  // lets the no-allocation test forbid Eigen's mallocs

#include <cfenv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/quantizer.hpp>

#include "support/count_allocations.hpp"
#include "support/random.hpp"
#include "support/scale_quantizers.hpp"

namespace {

using Catch::Matchers::Contains;
using reparam::matrix;
using reparam::row_range;
using namespace reparam::scale;  // NOLINT(google-build-using-namespace): test file
using reparam::test::library_round;
using reparam::test::spec_of;

constexpr rounding all_modes[] = {rounding::half_even, rounding::half_away_from_zero,
                                  rounding::half_up, rounding::floor};

const char* mode_name(rounding mode) {
  switch (mode) {
    case rounding::half_even:
      return "half_even";
    case rounding::half_away_from_zero:
      return "half_away_from_zero";
    case rounding::half_up:
      return "half_up";
    case rounding::floor:
      return "floor";
  }
  return "?";
}

/// Bitwise equality that also tells -0.0 from +0.0.
template <class Scalar>
bool same_value(Scalar a, Scalar b) {
  return a == b && std::signbit(a) == std::signbit(b);
}

/// One row of the rounding table: x and its rounding in half_even, half_away_from_zero, half_up,
/// floor, all worked out by hand.
template <class Scalar>
struct rounding_case {
  Scalar x;
  Scalar expected[4];
};

template <class Scalar>
std::vector<rounding_case<Scalar>> rounding_table() {
  const Scalar big = Scalar(1) / std::numeric_limits<Scalar>::epsilon();  // 2^23 or 2^52
  const Scalar below_half = std::nextafter(Scalar(0.5), Scalar(0));
  const Scalar above_half = std::nextafter(Scalar(0.5), Scalar(1));
  const Scalar below_two_half = std::nextafter(Scalar(2.5), Scalar(0));
  const Scalar above_two_half = std::nextafter(Scalar(2.5), Scalar(3));
  const Scalar zero = Scalar(0);
  const Scalar negative_zero = -Scalar(0);
  return {
      //  x                    half_even           away               half_up            floor
      {Scalar(0.5), {zero, Scalar(1), Scalar(1), zero}},
      {Scalar(-0.5), {negative_zero, Scalar(-1), negative_zero, Scalar(-1)}},
      {Scalar(1.5), {Scalar(2), Scalar(2), Scalar(2), Scalar(1)}},
      {Scalar(-1.5), {Scalar(-2), Scalar(-2), Scalar(-1), Scalar(-2)}},
      {Scalar(2.5), {Scalar(2), Scalar(3), Scalar(3), Scalar(2)}},
      {Scalar(-2.5), {Scalar(-2), Scalar(-3), Scalar(-2), Scalar(-3)}},
      {below_half, {zero, zero, zero, zero}},
      {above_half, {Scalar(1), Scalar(1), Scalar(1), zero}},
      {-below_half, {negative_zero, negative_zero, negative_zero, Scalar(-1)}},
      {-above_half, {Scalar(-1), Scalar(-1), Scalar(-1), Scalar(-1)}},
      {below_two_half, {Scalar(2), Scalar(2), Scalar(2), Scalar(2)}},
      {above_two_half, {Scalar(3), Scalar(3), Scalar(3), Scalar(2)}},
      {Scalar(0.3), {zero, zero, zero, zero}},
      {Scalar(-0.3), {negative_zero, negative_zero, negative_zero, Scalar(-1)}},
      {zero, {zero, zero, zero, zero}},
      {negative_zero, {negative_zero, negative_zero, negative_zero, negative_zero}},
      // 2^23 - 0.5 (float) / 2^52 - 0.5 (double): the largest ties; floor is 2^23 - 1 (odd).
      {big - Scalar(0.5), {big, big, big, big - Scalar(1)}},
      // -(2^23 - 0.5): floor is -2^23 (even).
      {-(big - Scalar(0.5)), {-big, -big, -big + Scalar(1), -big}},
      // 2^22 + 0.5: floor 2^22 is even.
      {big / 2 + Scalar(0.5), {big / 2, big / 2 + 1, big / 2 + 1, big / 2}},
      // Already integers: 2^23 + 1, 2^24 + 2, -(2^24 + 2), 1e30.
      {big + Scalar(1), {big + 1, big + 1, big + 1, big + 1}},
      {2 * big + Scalar(2), {2 * big + 2, 2 * big + 2, 2 * big + 2, 2 * big + 2}},
      {-(2 * big + Scalar(2)), {-(2 * big + 2), -(2 * big + 2), -(2 * big + 2), -(2 * big + 2)}},
      {Scalar(1e30), {Scalar(1e30), Scalar(1e30), Scalar(1e30), Scalar(1e30)}},
  };
}

template <class Scalar>
void check_rounding_table() {
  for (const rounding_case<Scalar>& c : rounding_table<Scalar>()) {
    for (int m = 0; m < 4; ++m) {
      volatile Scalar x = c.x;  // keep the compiler from folding the call
      const Scalar got = reparam::scale::round(static_cast<Scalar>(x), all_modes[m]);
      CAPTURE(c.x, mode_name(all_modes[m]), got, c.expected[m]);
      CHECK(same_value(got, c.expected[m]));
    }
  }
}

template <class Scalar>
void check_rounding_against_library(std::uint64_t seed) {
  reparam::philox_engine engine(seed, 7);
  reparam::index mismatches = 0;
  Scalar first_x = Scalar(0);
  const char* first_mode = "";
  for (int i = 0; i < 20000; ++i) {
    const double u = reparam::uniform_open01_double(engine(), engine());
    Scalar x = Scalar(0);
    if (i % 2 == 0) {
      // Exact ties and their neighbours: k / 2 for integers |k| < 2^12, nudged by 0 or 1 ulp.
      const auto k = static_cast<int>(std::floor(u * 8192.0)) - 4096;
      x = static_cast<Scalar>(k) / Scalar(2);
      if (i % 6 == 2) {
        x = std::nextafter(x, Scalar(0));
      } else if (i % 6 == 4) {
        x = std::nextafter(x, Scalar(1e9));
      }
    } else {
      // Random magnitudes from 2^-10 to 2^60, both signs.
      const double exponent = -10.0 + 70.0 * u;
      x = static_cast<Scalar>((i % 4 == 1 ? -1.0 : 1.0) * std::exp2(exponent));
    }
    for (const rounding mode : all_modes) {
      if (!same_value(reparam::scale::round(x, mode), library_round(x, mode))) {
        if (mismatches == 0) {
          first_x = x;
          first_mode = mode_name(mode);
        }
        ++mismatches;
      }
    }
  }
  CAPTURE(first_x, first_mode);
  CHECK(mismatches == 0);
}

/// Slot index written out independently of slot_of.
reparam::index oracle_slot(const uniform_spec& spec, reparam::index cols, reparam::index r,
                           reparam::index c) {
  if (spec.axis == granularity::per_row) {
    return r;
  }
  if (spec.axis == granularity::per_column) {
    return c;
  }
  if (spec.axis == granularity::per_group) {
    return r * (cols / spec.group_size) + c / spec.group_size;
  }
  return 0;
}

/// The documented per-entry formula, with the C library's rounding: in Scalar, division first.
template <class Scalar>
Scalar oracle_code(Scalar x, const uniform_quantizer& q, reparam::index slot) {
  const auto s = static_cast<Scalar>(q.scale[slot]);
  const auto z = static_cast<Scalar>(q.zero_point[slot]);
  const auto lo = static_cast<Scalar>(q.code_min());
  const auto hi = static_cast<Scalar>(q.code_max());
  const Scalar code = library_round(x / s, q.spec.mode) + z;
  return code < lo ? lo : (code > hi ? hi : code);
}

template <class Scalar>
matrix<Scalar> oracle_fake_quantize(const matrix<Scalar>& x, const uniform_quantizer& q) {
  matrix<Scalar> out(x.rows(), x.cols());
  for (reparam::index r = 0; r < x.rows(); ++r) {
    for (reparam::index c = 0; c < x.cols(); ++c) {
      const reparam::index slot = oracle_slot(q.spec, x.cols(), r, c);
      const auto s = static_cast<Scalar>(q.scale[slot]);
      const auto z = static_cast<Scalar>(q.zero_point[slot]);
      out(r, c) = s * (oracle_code(x(r, c), q, slot) - z);
    }
  }
  return out;
}

/// Number of entries that differ bitwise.
template <class A, class B>
reparam::index bit_mismatches(const A& a, const B& b) {
  reparam::index count = 0;
  for (reparam::index r = 0; r < a.rows(); ++r) {
    for (reparam::index c = 0; c < a.cols(); ++c) {
      if (!(a(r, c) == b(r, c))) {
        ++count;
      }
    }
  }
  return count;
}

/// A quantizer calibrated by min-max per slot, with the range rule written out here:
/// asymmetric [min(lo, 0), max(hi, 0)] / (2^b - 1), zero = nearbyint(-lo / scale);
/// symmetric max(|lo|, |hi|) / (2^(b-1) - 1); scale >= 1e-8.
template <class Scalar>
uniform_quantizer oracle_minmax(const matrix<Scalar>& x, const uniform_spec& spec) {
  const reparam::index cols = x.cols();
  reparam::index slots = 1;
  if (spec.axis == granularity::per_row) {
    slots = x.rows();
  } else if (spec.axis == granularity::per_column) {
    slots = cols;
  } else if (spec.axis == granularity::per_group) {
    slots = x.rows() * (cols / spec.group_size);
  }
  std::vector<float> lo(static_cast<std::size_t>(slots), std::numeric_limits<float>::infinity());
  std::vector<float> hi(static_cast<std::size_t>(slots), -std::numeric_limits<float>::infinity());
  for (reparam::index r = 0; r < x.rows(); ++r) {
    for (reparam::index c = 0; c < cols; ++c) {
      const auto s = static_cast<std::size_t>(oracle_slot(spec, cols, r, c));
      const auto v = static_cast<float>(x(r, c));
      lo[s] = v < lo[s] ? v : lo[s];
      hi[s] = v > hi[s] ? v : hi[s];
    }
  }
  uniform_quantizer q;
  q.spec = spec;
  q.scale.resize(slots);
  q.zero_point.resize(slots);
  for (reparam::index s = 0; s < slots; ++s) {
    const auto u = static_cast<std::size_t>(s);
    const reparam::test::slot_params p = reparam::test::oracle_params(lo[u], hi[u], spec);
    q.scale[s] = p.scale;
    q.zero_point[s] = p.zero;
  }
  return q;
}

/// A per-tensor quantizer with the given scale and zero point.
uniform_quantizer per_tensor_quantizer(int bits, bool is_symmetric, float scale, float zero) {
  uniform_quantizer q;
  q.spec = spec_of(bits, is_symmetric, granularity::per_tensor);
  q.scale = Eigen::VectorXf::Constant(1, scale);
  q.zero_point = Eigen::VectorXf::Constant(1, zero);
  return q;
}

/// Random data with per-row offsets and spreads, so slots differ (some all positive, some all
/// negative, some mixed).
template <class Scalar>
matrix<Scalar> random_rows(reparam::index rows, reparam::index cols, std::uint64_t seed) {
  matrix<Scalar> x = reparam::test::random_matrix<Scalar>(rows, cols, seed);
  const matrix<Scalar> shift = reparam::test::random_matrix<Scalar>(rows, 2, seed ^ 0x5eedu);
  for (reparam::index r = 0; r < rows; ++r) {
    const Scalar spread = Scalar(0.1) + Scalar(3) * (shift(r, 0) + Scalar(1));
    const Scalar offset = Scalar(2) * shift(r, 1) * spread;
    for (reparam::index c = 0; c < cols; ++c) {
      x(r, c) = offset + spread * x(r, c);
    }
  }
  return x;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Rounding

TEST_CASE("round gives the hand-worked result of all four modes at ties and large values",
          "[scale][rounding]") {
  REQUIRE(std::fegetround() == FE_TONEAREST);
  check_rounding_table<float>();
  check_rounding_table<double>();
}

TEST_CASE("round does not depend on the floating-point rounding environment", "[scale][rounding]") {
  for (const int environment : {FE_UPWARD, FE_DOWNWARD, FE_TOWARDZERO}) {
    CAPTURE(environment);
    REQUIRE(std::fesetround(environment) == 0);
    check_rounding_table<float>();
    check_rounding_table<double>();
    std::fesetround(FE_TONEAREST);
  }
}

TEST_CASE("round matches nearbyint, round, floor and floor of x plus one half on random values",
          "[scale][rounding]") {
  const std::uint64_t seed = reparam::test::test_seed(11);
  CAPTURE(seed);
  check_rounding_against_library<float>(seed);
  check_rounding_against_library<double>(seed);
}

// ---------------------------------------------------------------------------------------------
// Range -> parameters

TEST_CASE("make_uniform_quantizer follows the documented range rule on hand-computed ranges",
          "[scale][quantizer]") {
  const uniform_spec asymmetric = spec_of(8, false, granularity::per_column);
  Eigen::VectorXf lo(6);
  Eigen::VectorXf hi(6);
  lo << -1.0f, 0.5f, -2.0f, 0.0f, -3.0f, -1e-9f;
  hi << 3.0f, 2.0f, -0.5f, 0.0f, 3.0f, 0.0f;
  const uniform_quantizer q = make_uniform_quantizer(asymmetric, lo, hi);
  REQUIRE(q.scale.size() == 6);
  // [-1, 3]: scale 4 / 255; -lo / scale = 63.75 -> 64.
  CHECK(q.scale[0] == 4.0f / 255.0f);
  CHECK(q.zero_point[0] == 64.0f);
  // [0.5, 2] widens to [0, 2]: zero point 0.
  CHECK(q.scale[1] == 2.0f / 255.0f);
  CHECK(q.zero_point[1] == 0.0f);
  // [-2, -0.5] widens to [-2, 0]: zero point 255 (the top code).
  CHECK(q.scale[2] == 2.0f / 255.0f);
  CHECK(q.zero_point[2] == 255.0f);
  // [0, 0]: min_scale, zero point +0.
  CHECK(q.scale[3] == min_scale);
  CHECK(same_value(q.zero_point[3], 0.0f));
  // [-3, 3]: scale 6 / 255, -lo / scale = 127.5 (a tie) -> 128 (even).
  CHECK(q.scale[4] == 6.0f / 255.0f);
  CHECK(q.zero_point[4] == 128.0f);
  // [-1e-9, 0]: scale below min_scale -> 1e-8; 1e-9 / 1e-8 = 0.1 -> 0.
  CHECK(q.scale[5] == min_scale);
  CHECK(q.zero_point[5] == 0.0f);

  // Symmetric: scale = max(|lo|, |hi|) / 127, zero point 0.
  const uniform_quantizer s =
      make_uniform_quantizer(spec_of(8, true, granularity::per_column), lo, hi);
  CHECK(s.scale[0] == 3.0f / 127.0f);
  CHECK(s.scale[2] == 2.0f / 127.0f);
  CHECK(s.scale[3] == min_scale);
  CHECK((s.zero_point.array() == 0.0f).all());
  CHECK(s.code_min() == -127);
  CHECK(s.code_max() == 127);

  // One bit, asymmetric: [-1, 1] -> scale 2, -lo / scale = 0.5 (a tie) -> 0.
  Eigen::VectorXf one_lo(1);
  Eigen::VectorXf one_hi(1);
  one_lo << -1.0f;
  one_hi << 1.0f;
  const uniform_quantizer b1 =
      make_uniform_quantizer(spec_of(1, false, granularity::per_tensor), one_lo, one_hi);
  CHECK(b1.scale[0] == 2.0f);
  CHECK(b1.zero_point[0] == 0.0f);
  CHECK(b1.code_min() == 0);
  CHECK(b1.code_max() == 1);
  // Sixteen bits.
  const uniform_quantizer b16 =
      make_uniform_quantizer(spec_of(16, false, granularity::per_tensor), one_lo, one_hi);
  CHECK(b16.code_max() == 65535);
  CHECK(b16.scale[0] == 2.0f / 65535.0f);
  CHECK(b16.zero_point[0] == std::nearbyint(1.0f / (2.0f / 65535.0f)));
}

// ---------------------------------------------------------------------------------------------
// Codes

TEST_CASE("quantize and fake_quantize reproduce a hand-worked 2x3 example", "[scale][quantizer]") {
  // x = [ -1.00  0.50  2.00 ]
  //     [  0.25  0.75 -0.50 ]
  // Asymmetric 2 bits (codes 0..3), per row.
  //  row 0: range [-1, 2], scale = 3 / 3 = 1, zero = round(1 / 1) = 1.
  //         x / scale = -1, 0.5, 2 -> round half even -1, 0, 2 -> + 1 -> codes 0, 1, 3
  //         x_hat = 1 * (code - 1) = -1, 0, 2
  //  row 1: range [-0.5, 0.75], scale s = 1.25 / 3 = 0.41666666f, zero = round(0.5 / s) =
  //         round(1.2) = 1. x / s = 0.6, 1.8, -1.2 -> 1, 2, -1 -> + 1 -> codes 2, 3, 0
  //         x_hat = s * (1, 2, -1) = s, 2 s, -s (products by 1 and 2 are exact).
  // With half_away_from_zero, 0.5 in row 0 rounds to 1: codes 0, 2, 3.
  // With floor, row 1: floor(0.6, 1.8, -1.2) = 0, 1, -2 -> + 1 -> 1, 2, -1 -> clamp -> 1, 2, 0.
  matrix<float> x(2, 3);
  x << -1.0f, 0.5f, 2.0f, 0.25f, 0.75f, -0.5f;
  Eigen::VectorXf lo(2);
  Eigen::VectorXf hi(2);
  lo << -1.0f, -0.5f;
  hi << 2.0f, 0.75f;
  const uniform_quantizer q =
      make_uniform_quantizer(spec_of(2, false, granularity::per_row), lo, hi);
  const float s = 1.25f / 3.0f;
  CHECK(q.scale[0] == 1.0f);
  CHECK(q.zero_point[0] == 1.0f);
  CHECK(q.scale[1] == s);
  CHECK(q.zero_point[1] == 1.0f);

  code_matrix codes(2, 3);
  quantize(x, q, codes);
  code_matrix expected_codes(2, 3);
  expected_codes << 0, 1, 3, 2, 3, 0;
  CHECK(codes == expected_codes);

  matrix<float> x_hat(2, 3);
  fake_quantize(x, q, x_hat);
  matrix<float> expected_hat(2, 3);
  expected_hat << -1.0f, 0.0f, 2.0f, s, 2.0f * s, -s;
  CHECK(x_hat == expected_hat);

  uniform_quantizer away = q;
  away.spec.mode = rounding::half_away_from_zero;
  quantize(x, away, codes);
  CHECK(codes(0, 1) == 2);

  uniform_quantizer down = q;
  down.spec.mode = rounding::floor;
  quantize(x, down, codes);
  CHECK(codes.row(1) == Eigen::RowVector3i(1, 2, 0));

  // Symmetric 3 bits (codes -3..3), per tensor:
  // y = [ -1.5  0.25  0.75 ]   max |y| = 1.5, scale = 1.5 / 3 = 0.5
  //     [  1.0 -0.50  0.10 ]   y / 0.5 = -3, 0.5, 1.5, 2, -1, 0.2
  // half even: codes -3, 0, 2, 2, -1, 0; y_hat = -1.5, 0, 1, 1, -0.5, 0.
  matrix<float> y(2, 3);
  y << -1.5f, 0.25f, 0.75f, 1.0f, -0.5f, 0.1f;
  Eigen::VectorXf ylo(1);
  Eigen::VectorXf yhi(1);
  ylo << -1.5f;
  yhi << 1.0f;
  const uniform_quantizer sym =
      make_uniform_quantizer(spec_of(3, true, granularity::per_tensor), ylo, yhi);
  CHECK(sym.scale[0] == 0.5f);
  quantize(y, sym, codes);
  expected_codes << -3, 0, 2, 2, -1, 0;
  CHECK(codes == expected_codes);
  fake_quantize(y, sym, x_hat);
  expected_hat << -1.5f, 0.0f, 1.0f, 1.0f, -0.5f, 0.0f;
  CHECK(x_hat == expected_hat);
}

TEST_CASE("slots follow the per_row, per_column and per_group layouts", "[scale][quantizer]") {
  // Every entry is 3; slot k has scale 2^k, so code = round(3 / 2^k) = 3, 2 (1.5), 1 (0.75),
  // 0 (0.375) tells which slot an entry used.
  const matrix<float> x = matrix<float>::Constant(2, 4, 3.0f);
  code_matrix codes(2, 4);
  code_matrix expected(2, 4);
  uniform_quantizer q;
  q.zero_point = Eigen::VectorXf::Zero(4);
  q.scale.resize(4);
  q.scale << 1.0f, 2.0f, 4.0f, 8.0f;

  // per_group, group 2: slot = row * 2 + col / 2.
  q.spec = spec_of(8, true, granularity::per_group, 2);
  CHECK(slot_count(q.spec, 2, 4, "test") == 4);
  CHECK(slot_of(q.spec, 4, 0, 3) == 1);
  CHECK(slot_of(q.spec, 4, 1, 0) == 2);
  CHECK(slot_of(q.spec, 4, 1, 3) == 3);
  quantize(x, q, codes);
  expected << 3, 3, 2, 2, 1, 1, 0, 0;
  CHECK(codes == expected);

  // per_column: slot = col.
  q.spec = spec_of(8, true, granularity::per_column);
  CHECK(slot_count(q.spec, 2, 4, "test") == 4);
  CHECK(slot_of(q.spec, 4, 1, 2) == 2);
  quantize(x, q, codes);
  expected << 3, 2, 1, 0, 3, 2, 1, 0;
  CHECK(codes == expected);

  // per_row: slot = row (scales 1 and 2).
  q.spec = spec_of(8, true, granularity::per_row);
  q.scale.resize(2);
  q.scale << 1.0f, 2.0f;
  q.zero_point = Eigen::VectorXf::Zero(2);
  CHECK(slot_count(q.spec, 2, 4, "test") == 2);
  CHECK(slot_of(q.spec, 4, 1, 2) == 1);
  quantize(x, q, codes);
  expected << 3, 3, 3, 3, 2, 2, 2, 2;
  CHECK(codes == expected);

  // per_tensor: one slot.
  q.spec = spec_of(8, true, granularity::per_tensor);
  q.scale = Eigen::VectorXf::Constant(1, 1.0f);
  q.zero_point = Eigen::VectorXf::Zero(1);
  CHECK(slot_count(q.spec, 2, 4, "test") == 1);
  CHECK(slot_of(q.spec, 4, 1, 3) == 0);
  quantize(x, q, codes);
  CHECK((codes.array() == 3).all());
}

TEST_CASE(
    "symmetric codes stay in the restricted range and asymmetric zero points in the code range",
    "[scale][quantizer]") {
  const std::uint64_t seed = reparam::test::test_seed(21);
  CAPTURE(seed);
  const matrix<float> x = random_rows<float>(24, 37, seed);
  for (int bits = 1; bits <= 16; ++bits) {
    for (const bool is_symmetric : {false, true}) {
      if (is_symmetric && bits == 1) {
        continue;
      }
      CAPTURE(bits, is_symmetric);
      const uniform_quantizer q =
          oracle_minmax(x, spec_of(bits, is_symmetric, granularity::per_row));
      code_matrix codes(x.rows(), x.cols());
      quantize(x, q, codes);
      const int top = is_symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
      const int bottom = is_symmetric ? -top : 0;
      CHECK(q.code_min() == bottom);
      CHECK(q.code_max() == top);
      CHECK(codes.minCoeff() >= bottom);
      CHECK(codes.maxCoeff() <= top);
      if (is_symmetric) {
        CHECK((q.zero_point.array() == 0.0f).all());
        // The entry of largest magnitude of each row maps to +-top.
        for (reparam::index r = 0; r < x.rows(); ++r) {
          reparam::index c = 0;
          x.row(r).cwiseAbs().maxCoeff(&c);
          CHECK(std::abs(codes(r, c)) == top);
        }
      } else {
        CHECK(q.zero_point.minCoeff() >= 0.0f);
        CHECK(q.zero_point.maxCoeff() <= static_cast<float>(top));
        // 0 is exactly representable: it maps to the zero point and back to 0.
        const matrix<float> zeros = matrix<float>::Zero(x.rows(), 1);
        matrix<float> back(x.rows(), 1);
        fake_quantize(zeros, q, back);
        CHECK((back.array() == 0.0f).all());
      }
    }
  }
}

TEST_CASE("an all-zero slot reproduces its zeros exactly", "[scale][quantizer]") {
  matrix<float> x = random_rows<float>(5, 8, reparam::test::test_seed(31));
  x.row(2).setZero();
  x.block(4, 4, 1, 4).setZero();  // group 1 of row 4 with group_size 4
  for (const bool is_symmetric : {false, true}) {
    for (const granularity axis : {granularity::per_row, granularity::per_group}) {
      const uniform_spec spec = spec_of(4, is_symmetric, axis, 4);
      CAPTURE(is_symmetric, static_cast<int>(axis));
      const uniform_quantizer q = oracle_minmax(x, spec);
      const matrix<float> x_hat = make_fake_quantized(x, q);
      CHECK((x_hat.row(2).array() == 0.0f).all());
      if (axis == granularity::per_group) {
        CHECK((x_hat.block(4, 4, 1, 4).array() == 0.0f).all());
      }
      matrix<float> dynamic(x.rows(), x.cols());
      fake_quantize_dynamic(x, spec, dynamic);
      CHECK((dynamic.row(2).array() == 0.0f).all());
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fake quantization

TEST_CASE("fake_quantize matches the per-entry formula bit for bit for float and double",
          "[scale][quantizer]") {
  const std::uint64_t seed = reparam::test::test_seed(41);
  CAPTURE(seed);
  const matrix<float> xf = random_rows<float>(9, 12, seed);
  const matrix<double> xd = random_rows<double>(9, 12, seed);
  for (const granularity axis : {granularity::per_tensor, granularity::per_row,
                                 granularity::per_column, granularity::per_group}) {
    for (const rounding mode : all_modes) {
      for (const int bits : {1, 2, 3, 4, 8}) {
        for (const bool is_symmetric : {false, true}) {
          if (is_symmetric && bits == 1) {
            continue;
          }
          const uniform_spec spec = spec_of(bits, is_symmetric, axis, 3, mode);
          CAPTURE(static_cast<int>(axis), mode_name(mode), bits, is_symmetric);
          // Calibrate on a shrunken copy, so that clamping happens too.
          const uniform_quantizer qf = oracle_minmax<float>(xf * 0.7f, spec);
          const uniform_quantizer qd = oracle_minmax<double>(xd * 0.7, spec);
          CHECK(bit_mismatches(make_fake_quantized(xf, qf), oracle_fake_quantize(xf, qf)) == 0);
          CHECK(bit_mismatches(make_fake_quantized(xd, qd), oracle_fake_quantize(xd, qd)) == 0);
        }
      }
    }
  }
}

TEST_CASE("fake_quantize equals dequantize of quantize exactly", "[scale][quantizer]") {
  const std::uint64_t seed = reparam::test::test_seed(51);
  CAPTURE(seed);
  const matrix<float> x = random_rows<float>(11, 16, seed);
  const matrix<double> xd = x.cast<double>();
  for (const granularity axis : {granularity::per_tensor, granularity::per_row,
                                 granularity::per_column, granularity::per_group}) {
    for (const rounding mode : all_modes) {
      for (const bool is_symmetric : {false, true}) {
        const uniform_spec spec = spec_of(4, is_symmetric, axis, 8, mode);
        CAPTURE(static_cast<int>(axis), mode_name(mode), is_symmetric);
        const uniform_quantizer q = oracle_minmax<float>(x * 0.8f, spec);
        code_matrix codes(x.rows(), x.cols());
        quantize(x, q, codes);
        matrix<float> dequantized(x.rows(), x.cols());
        dequantize(codes, q, dequantized);
        CHECK(bit_mismatches(make_fake_quantized(x, q), dequantized) == 0);
        // Double input: the double result is scale * (q - z) without rounding (24 x 17 bits),
        // so it rounds to the float dequantized value.
        const matrix<float> from_double = make_fake_quantized(xd, q).cast<float>();
        code_matrix codes_d(x.rows(), x.cols());
        quantize(xd, q, codes_d);
        CHECK(codes_d == codes);  // x is float data, so the quotients agree
        CHECK(bit_mismatches(from_double, dequantized) == 0);
      }
    }
  }
}

TEST_CASE("fake_quantize_rows on disjoint ranges equals the whole call", "[scale][quantizer]") {
  const std::uint64_t seed = reparam::test::test_seed(61);
  CAPTURE(seed);
  const matrix<float> x = random_rows<float>(17, 24, seed);
  for (const granularity axis : {granularity::per_tensor, granularity::per_row,
                                 granularity::per_column, granularity::per_group}) {
    const uniform_spec spec = spec_of(3, false, axis, 6);
    const uniform_quantizer q = oracle_minmax(x, spec);
    const matrix<float> whole = make_fake_quantized(x, q);
    matrix<float> parts = matrix<float>::Constant(x.rows(), x.cols(), -99.0f);
    matrix<float> dynamic_whole(x.rows(), x.cols());
    matrix<float> dynamic_parts = matrix<float>::Constant(x.rows(), x.cols(), -99.0f);
    const bool is_dynamic = axis == granularity::per_row || axis == granularity::per_group;
    if (is_dynamic) {
      fake_quantize_dynamic(x, spec, dynamic_whole);
    }
    for (const row_range part : reparam::split_rows(x.rows(), 4)) {
      fake_quantize_rows(x, q, parts, part);
      if (is_dynamic) {
        fake_quantize_dynamic_rows(x, spec, dynamic_parts, part);
      }
    }
    CAPTURE(static_cast<int>(axis));
    CHECK(bit_mismatches(parts, whole) == 0);
    if (is_dynamic) {
      CHECK(bit_mismatches(dynamic_parts, dynamic_whole) == 0);
    }
    // A range writes only its rows.
    matrix<float> one = matrix<float>::Constant(x.rows(), x.cols(), -99.0f);
    fake_quantize_rows(x, q, one, row_range{5, 7});
    CHECK(bit_mismatches(one.middleRows(5, 2), whole.middleRows(5, 2)) == 0);
    CHECK((one.topRows(5).array() == -99.0f).all());
    CHECK((one.bottomRows(10).array() == -99.0f).all());
  }
}

TEST_CASE("fake_quantize works in place and on strided blocks", "[scale][quantizer]") {
  const std::uint64_t seed = reparam::test::test_seed(71);
  CAPTURE(seed);
  const matrix<float> x = random_rows<float>(8, 10, seed);
  const uniform_spec spec = spec_of(4, false, granularity::per_group, 5);
  const uniform_quantizer q = oracle_minmax(x, spec);
  const matrix<float> expected = oracle_fake_quantize(x, q);

  matrix<float> in_place = x;
  fake_quantize(in_place, q, in_place);
  CHECK(bit_mismatches(in_place, expected) == 0);

  matrix<float> dynamic_in_place = x;
  matrix<float> dynamic_expected(x.rows(), x.cols());
  fake_quantize_dynamic(x, spec, dynamic_expected);
  fake_quantize_dynamic(dynamic_in_place, spec, dynamic_in_place);
  CHECK(bit_mismatches(dynamic_in_place, dynamic_expected) == 0);

  // x as columns 3..12 of a wider matrix (row stride 15); out as a block of another one.
  matrix<float> wide = matrix<float>::Constant(8, 15, 7.0f);
  wide.middleCols(3, 10) = x;
  matrix<float> target = matrix<float>::Constant(8, 15, -1.0f);
  const auto view = reparam::row_major_map(static_cast<const float*>(wide.data() + 3), 8, 10, 15);
  fake_quantize(view, q, target.middleCols(2, 10));
  CHECK(bit_mismatches(target.middleCols(2, 10), expected) == 0);
  CHECK((target.leftCols(2).array() == -1.0f).all());
  CHECK((target.rightCols(3).array() == -1.0f).all());
}

TEST_CASE("fake_quantize_dynamic equals per-row min-max calibration then fake_quantize",
          "[scale][quantizer]") {
  const std::uint64_t seed = reparam::test::test_seed(81);
  CAPTURE(seed);
  const matrix<float> xf = random_rows<float>(13, 24, seed);
  const matrix<double> xd = random_rows<double>(13, 24, seed ^ 1u);
  for (const bool is_symmetric : {false, true}) {
    for (const int bits : {2, 4, 8}) {
      for (const granularity axis : {granularity::per_row, granularity::per_group}) {
        const uniform_spec spec = spec_of(bits, is_symmetric, axis, 6);
        CAPTURE(is_symmetric, bits, static_cast<int>(axis));
        matrix<float> dynamic_f(xf.rows(), xf.cols());
        matrix<double> dynamic_d(xd.rows(), xd.cols());
        fake_quantize_dynamic(xf, spec, dynamic_f);
        fake_quantize_dynamic(xd, spec, dynamic_d);
        // Oracle: per row, calibrate make_uniform_quantizer on that row alone (per_tensor for
        // per_row, per_group with the same groups), then fake-quantize that row.
        const uniform_spec row_spec = spec_of(
            bits, is_symmetric,
            axis == granularity::per_row ? granularity::per_tensor : granularity::per_group, 6);
        reparam::index mismatches = 0;
        for (reparam::index r = 0; r < xf.rows(); ++r) {
          const matrix<float> row_f = xf.row(r);
          const matrix<double> row_d = xd.row(r);
          const reparam::index slots = slot_count(row_spec, 1, xf.cols(), "test");
          Eigen::VectorXf lo_f(slots), hi_f(slots), lo_d(slots), hi_d(slots);
          for (reparam::index s = 0; s < slots; ++s) {
            const reparam::index width = xf.cols() / slots;
            lo_f[s] = row_f.middleCols(s * width, width).minCoeff();
            hi_f[s] = row_f.middleCols(s * width, width).maxCoeff();
            lo_d[s] = static_cast<float>(row_d.middleCols(s * width, width).minCoeff());
            hi_d[s] = static_cast<float>(row_d.middleCols(s * width, width).maxCoeff());
          }
          mismatches += bit_mismatches(
              oracle_fake_quantize(row_f, make_uniform_quantizer(row_spec, lo_f, hi_f)),
              dynamic_f.row(r));
          mismatches += bit_mismatches(
              oracle_fake_quantize(row_d, make_uniform_quantizer(row_spec, lo_d, hi_d)),
              dynamic_d.row(r));
        }
        CHECK(mismatches == 0);
      }
    }
  }
}

TEST_CASE("fake_quantize_rows and fake_quantize_dynamic_rows do not allocate",
          "[scale][quantizer]") {
  const matrix<float> x = random_rows<float>(16, 64, reparam::test::test_seed(91));
  const uniform_spec spec = spec_of(4, false, granularity::per_group, 16);
  const uniform_quantizer q = oracle_minmax(x, spec);
  matrix<float> out(x.rows(), x.cols());
  const long before = reparam::test::allocations();
  Eigen::internal::set_is_malloc_allowed(false);
  fake_quantize_rows(x, q, out, row_range{0, 8});
  fake_quantize_rows(x, q, out, row_range{8, 16});
  fake_quantize_dynamic_rows(x, spec, out, row_range{0, 16});
  fake_quantize(x, q, out);
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(reparam::test::allocations() == before);
}

TEST_CASE("fake_quantize_ste_mask passes the gradient inside the clamp range only",
          "[scale][quantizer]") {
  // Symmetric 4 bits, scale 1: codes -7..7. round(7.4) = 7 inside; round(7.5) = 8 (half even)
  // outside; round(-7.5) = -8 outside; round(-7.49) = -7 inside; 0 and 6.6 inside; 100 outside.
  matrix<float> x(2, 4);
  x << 7.4f, 7.5f, -7.5f, -7.49f, 0.0f, 6.6f, 100.0f, -100.0f;
  const uniform_quantizer q = per_tensor_quantizer(4, true, 1.0f, 0.0f);
  matrix<float> mask(2, 4);
  fake_quantize_ste_mask(x, q, mask);
  matrix<float> expected(2, 4);
  expected << 1, 0, 0, 1, 1, 1, 0, 0;
  CHECK(mask == expected);
  // Asymmetric 2 bits, scale 0.5, zero 1: codes 0..3 cover x in [-0.75, 1.25] (ties inclusive
  // when they round inwards): -0.75 / 0.5 = -1.5 -> -2 + 1 = -1 outside; -0.7 -> -1 + 1 = 0 in.
  matrix<double> y(1, 4);
  y << -0.75, -0.7, 1.25, 1.3;
  const uniform_quantizer a = per_tensor_quantizer(2, false, 0.5f, 1.0f);
  matrix<double> mask_d(1, 4);
  fake_quantize_ste_mask(y, a, mask_d);
  // 1.25 / 0.5 = 2.5 -> 2 (even) + 1 = 3 inside; 1.3 / 0.5 = 2.6 -> 3 + 1 = 4 outside.
  CHECK(mask_d(0, 0) == 0.0);
  CHECK(mask_d(0, 1) == 1.0);
  CHECK(mask_d(0, 2) == 1.0);
  CHECK(mask_d(0, 3) == 0.0);
}

TEST_CASE("fake_quantize accepts a non-integer zero point but quantize refuses it",
          "[scale][quantizer]") {
  // RepQ-ViT's official un-rounded mean zero point: x_hat = s * (clamp(round(x / s) + z) - z).
  matrix<float> x(1, 3);
  x << 0.0f, 1.0f, 100.0f;
  const uniform_quantizer q = per_tensor_quantizer(4, false, 1.0f, 2.5f);
  matrix<float> out(1, 3);
  fake_quantize(x, q, out);
  // 0 -> 0 + 2.5 = 2.5 -> 0; 1 -> 3.5 -> 1; 100 -> 102.5 -> clamp 15 -> 12.5.
  CHECK(out(0, 0) == 0.0f);
  CHECK(out(0, 1) == 1.0f);
  CHECK(out(0, 2) == 12.5f);
  code_matrix codes = code_matrix::Constant(1, 3, 42);
  REQUIRE_THROWS_WITH(quantize(x, q, codes),
                      Contains("scale::quantize") && Contains("not an integer"));
  CHECK((codes.array() == 42).all());
}

// ---------------------------------------------------------------------------------------------
// Refusals

TEST_CASE("make_uniform_quantizer refuses bad bits, sizes and ranges",
          "[scale][quantizer][errors]") {
  Eigen::VectorXf lo(2);
  Eigen::VectorXf hi(2);
  lo << -1.0f, 0.0f;
  hi << 1.0f, 2.0f;
  const auto make = [&](const uniform_spec& spec) { return make_uniform_quantizer(spec, lo, hi); };
  REQUIRE_THROWS_WITH(make(spec_of(17, false, granularity::per_row)),
                      Contains("scale::make_uniform_quantizer") && Contains("bits 17"));
  REQUIRE_THROWS_WITH(make(spec_of(0, false, granularity::per_row)), Contains("bits 0"));
  REQUIRE_THROWS_WITH(make(spec_of(1, true, granularity::per_row)),
                      Contains("bits 1") && Contains("symmetric"));
  CHECK_NOTHROW(make(spec_of(1, false, granularity::per_row)));
  CHECK_NOTHROW(make(spec_of(16, true, granularity::per_row)));
  REQUIRE_THROWS_WITH(make(spec_of(4, false, granularity::per_group, 0)), Contains("group_size 0"));
  Eigen::VectorXf short_hi(1);
  short_hi << 1.0f;
  REQUIRE_THROWS_WITH(make_uniform_quantizer(spec_of(4, false, granularity::per_row), lo, short_hi),
                      Contains("lo has 2") && Contains("hi has 1"));
  REQUIRE_THROWS_WITH(make_uniform_quantizer(spec_of(4, false, granularity::per_row),
                                             Eigen::VectorXf(), Eigen::VectorXf()),
                      Contains("empty"));
  Eigen::VectorXf reversed = hi;
  reversed[1] = -1.0f;
  REQUIRE_THROWS_WITH(make_uniform_quantizer(spec_of(4, false, granularity::per_row), lo, reversed),
                      Contains("slot 1") && Contains("> hi"));
  Eigen::VectorXf not_finite = lo;
  not_finite[0] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(
      make_uniform_quantizer(spec_of(4, false, granularity::per_row), not_finite, hi),
      Contains("slot 0") && Contains("non-finite"));
  Eigen::VectorXf huge_lo = Eigen::VectorXf::Constant(1, -std::numeric_limits<float>::max());
  Eigen::VectorXf huge_hi = Eigen::VectorXf::Constant(1, std::numeric_limits<float>::max());
  REQUIRE_THROWS_WITH(
      make_uniform_quantizer(spec_of(1, false, granularity::per_tensor), huge_lo, huge_hi),
      Contains("too wide"));
}

TEST_CASE("quantize, dequantize and fake_quantize refuse bad arguments before writing",
          "[scale][quantizer][errors]") {
  matrix<float> x = random_rows<float>(4, 6, reparam::test::test_seed(101));
  const uniform_quantizer q = oracle_minmax(x, spec_of(4, false, granularity::per_row));
  const float sentinel = -123.0f;
  matrix<float> out = matrix<float>::Constant(4, 6, sentinel);
  code_matrix codes = code_matrix::Constant(4, 6, 77);
  const auto untouched = [&] {
    return (out.array() == sentinel).all() && (codes.array() == 77).all();
  };

  SECTION("slot count does not fit the shape") {
    const matrix<float> five = random_rows<float>(5, 6, 3);
    matrix<float> out5(5, 6);
    REQUIRE_THROWS_WITH(fake_quantize(five, q, out5),
                        Contains("scale::fake_quantize:") && Contains("needs 5 slots"));
    uniform_quantizer group = q;
    group.spec = spec_of(4, false, granularity::per_group, 4);
    REQUIRE_THROWS_WITH(fake_quantize(x, group, out),
                        Contains("group_size 4 does not divide cols 6"));
  }
  SECTION("output shape mismatch") {
    matrix<float> small(4, 5);
    REQUIRE_THROWS_WITH(fake_quantize(x, q, small),
                        Contains("scale::fake_quantize:") && Contains("out is [4, 5]"));
    code_matrix small_codes(3, 6);
    REQUIRE_THROWS_WITH(quantize(x, q, small_codes),
                        Contains("scale::quantize") && Contains("codes is [3, 6]"));
  }
  SECTION("non-finite x") {
    x(2, 3) = std::numeric_limits<float>::infinity();
    REQUIRE_THROWS_WITH(quantize(x, q, codes), Contains("scale::quantize") &&
                                                   Contains("non-finite") && Contains("(2, 3)"));
    REQUIRE_THROWS_WITH(fake_quantize(x, q, out),
                        Contains("scale::fake_quantize:") && Contains("(2, 3)"));
    REQUIRE_THROWS_WITH(fake_quantize_rows(x, q, out, row_range{0, 4}),
                        Contains("scale::fake_quantize_rows:"));
    // Rows outside the range are not looked at.
    CHECK_NOTHROW(fake_quantize_rows(x, q, out, row_range{0, 2}));
    out.setConstant(sentinel);
    x(2, 3) = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(fake_quantize_dynamic(x, spec_of(4, false, granularity::per_row), out),
                        Contains("scale::fake_quantize_dynamic:") && Contains("non-finite"));
    REQUIRE_THROWS_WITH(fake_quantize_ste_mask(x, q, out),
                        Contains("scale::fake_quantize_ste_mask"));
  }
  SECTION("bad scale or zero point") {
    uniform_quantizer bad = q;
    bad.scale[1] = 0.0f;
    REQUIRE_THROWS_WITH(fake_quantize(x, bad, out), Contains("scale 0 of slot 1"));
    bad.scale[1] = -1.0f;
    REQUIRE_THROWS_WITH(quantize(x, bad, codes), Contains("scale -1 of slot 1"));
    bad.scale[1] = std::numeric_limits<float>::infinity();
    REQUIRE_THROWS_WITH(fake_quantize(x, bad, out), Contains("slot 1") && Contains("finite"));
    bad = q;
    bad.zero_point[3] = std::numeric_limits<float>::quiet_NaN();
    REQUIRE_THROWS_WITH(fake_quantize(x, bad, out), Contains("zero_point") && Contains("slot 3"));
    bad = q;
    bad.spec.bits = 20;
    REQUIRE_THROWS_WITH(fake_quantize(x, bad, out), Contains("bits 20"));
    bad = q;
    bad.scale = q.scale.head(3).eval();
    REQUIRE_THROWS_WITH(fake_quantize(x, bad, out), Contains("3 scales"));
  }
  SECTION("bad row range") {
    REQUIRE_THROWS_WITH(fake_quantize_rows(x, q, out, row_range{2, 5}),
                        Contains("scale::fake_quantize_rows") && Contains("row range [2, 5)"));
    REQUIRE_THROWS_WITH(fake_quantize_dynamic_rows(x, spec_of(4, false, granularity::per_row), out,
                                                   row_range{-1, 2}),
                        Contains("scale::fake_quantize_dynamic_rows:") && Contains("row range"));
  }
  SECTION("dynamic axis and spec") {
    REQUIRE_THROWS_WITH(
        fake_quantize_dynamic(x, spec_of(4, false, granularity::per_tensor), out),
        Contains("scale::fake_quantize_dynamic:") && Contains("per_row or per_group"));
    REQUIRE_THROWS_WITH(fake_quantize_dynamic(x, spec_of(4, false, granularity::per_column), out),
                        Contains("per_row or per_group"));
    REQUIRE_THROWS_WITH(fake_quantize_dynamic(x, spec_of(4, false, granularity::per_group, 4), out),
                        Contains("does not divide"));
    REQUIRE_THROWS_WITH(fake_quantize_dynamic(x, spec_of(1, true, granularity::per_row), out),
                        Contains("bits 1"));
    x(0, 0) = 3e38f;
    REQUIRE_THROWS_WITH(fake_quantize_dynamic(x, spec_of(4, false, granularity::per_row), out),
                        Contains("too large"));
  }
  SECTION("codes outside the code range") {
    code_matrix bad_codes = code_matrix::Zero(4, 6);
    bad_codes(1, 1) = 16;
    REQUIRE_THROWS_WITH(dequantize(bad_codes, q, out),
                        Contains("scale::dequantize") && Contains("code 16 at (1, 1)"));
    bad_codes(1, 1) = -1;
    REQUIRE_THROWS_WITH(dequantize(bad_codes, q, out), Contains("code -1"));
  }
  CHECK(untouched());
}

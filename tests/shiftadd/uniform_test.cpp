// SPDX-License-Identifier: Apache-2.0
// Uniform INT-b quantization (shiftadd/uniform.hpp) against independent oracles: min-max formulas
// with the scale rounded to fp16 precision by integer bit manipulation, the zero point rounded by
// std::nearbyint (the fitter uses its own mode-independent rounding), codes against hand-computed
// ties, and the exact conversion to the binary-coded format checked bit for bit.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/random.hpp>
#include <reparam/shiftadd/uniform.hpp>

#include "support/random.hpp"

namespace {

using reparam::matrix;
using reparam::shiftadd::binary_coded_matrix;
using reparam::shiftadd::dequantize_uniform;
using reparam::shiftadd::fit_uniform_group;
using reparam::shiftadd::quantize_rtn;
using reparam::shiftadd::quantize_uniform;
using reparam::shiftadd::to_binary_coded;
using reparam::shiftadd::uniform_group;
using reparam::shiftadd::uniform_matrix;
using reparam::shiftadd::uniform_params;

std::uint32_t bits_of(float x) {
  std::uint32_t b = 0;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

float from_bits(std::uint32_t b) {
  float x = 0;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// A normal positive float rounded to 11 significant bits, ties to even, by integer arithmetic on
// its bit pattern (drop 13 mantissa bits; a carry bumps the exponent, which is correct).
float round_to_11_bits(float x) {
  const std::uint32_t b = bits_of(x);
  const std::uint32_t rounded = (b + 0xfffu + ((b >> 13) & 1u)) & ~0x1fffu;
  return from_bits(rounded);
}

// The documented min-max rule, written out independently.
uniform_group oracle_group(const std::vector<float>& x, int bits, bool symmetric) {
  const auto max_code = static_cast<float>((1 << bits) - 1);
  float lo = std::min(0.0f, *std::min_element(x.begin(), x.end()));
  float hi = std::max(0.0f, *std::max_element(x.begin(), x.end()));
  if (symmetric) {
    hi = std::max(std::fabs(lo), hi);
    lo = -hi;
  }
  float raw = (hi - lo) / max_code;
  if (raw < FLT_MIN) {
    lo = -1.0f;
    raw = 2.0f / max_code;
  }
  uniform_group g;
  g.scale = round_to_11_bits(raw);
  g.zero = symmetric ? static_cast<float>(1 << (bits - 1))
                     : std::clamp(std::nearbyint(-lo / g.scale), 0.0f, max_code);
  return g;
}

std::uint8_t oracle_code(float value, const uniform_group& g, int bits) {
  const auto max_code = static_cast<float>((1 << bits) - 1);
  const float code = std::nearbyint(value / g.scale) + g.zero;
  return static_cast<std::uint8_t>(std::clamp(code, 0.0f, max_code));
}

std::vector<float> random_values(reparam::index count, std::uint64_t seed, std::uint64_t stream,
                                 float lo, float hi) {
  reparam::philox_engine engine(seed, stream);
  std::uniform_real_distribution<float> uniform(lo, hi);
  std::vector<float> out(static_cast<std::size_t>(count));
  for (float& x : out) {
    x = uniform(engine);
  }
  return out;
}

bool same_bits(const matrix<float>& a, const matrix<float>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("fit_uniform_group matches the min-max formulas", "[shiftadd][uniform]") {
  const std::uint64_t seed = reparam::test::test_seed(201);
  CAPTURE(seed);
  const int bits = GENERATE(range(1, 9));
  const bool symmetric = GENERATE(false, true);
  CAPTURE(bits, symmetric);
  const std::vector<std::pair<float, float>> ranges = {
      {-1.0f, 1.0f}, {0.1f, 2.0f}, {-3.0f, -0.5f}, {-0.01f, 5.0f}, {-1e-3f, 1e-3f}};
  std::uint64_t stream = 0;
  for (const auto& [lo, hi] : ranges) {
    const std::vector<float> x = random_values(64, seed, stream++, lo, hi);
    const uniform_group g = fit_uniform_group(x.data(), 64, 1, bits, symmetric);
    const uniform_group expected = oracle_group(x, bits, symmetric);
    CAPTURE(lo, hi, g.scale, expected.scale, g.zero, expected.zero);
    CHECK(g.scale == expected.scale);
    CHECK(g.zero == expected.zero);
    // Strided reads give the same group.
    std::vector<float> strided(2 * x.size(), 99.0f);
    for (std::size_t k = 0; k < x.size(); ++k) {
      strided[2 * k] = x[k];
    }
    const uniform_group gs = fit_uniform_group(strided.data(), 64, 2, bits, symmetric);
    CHECK(gs.scale == g.scale);
    CHECK(gs.zero == g.zero);
    // Every value in the covered range dequantizes within half a step (plus the fp16 rounding of
    // the scale, which moves the ends by at most 2^-11 of the range).
    const auto max_code = static_cast<float>((1 << bits) - 1);
    const float covered_lo = g.scale * (0.0f - g.zero);
    const float covered_hi = g.scale * (max_code - g.zero);
    for (const float v : x) {
      if (v >= covered_lo && v <= covered_hi) {
        const float back = dequantize_uniform(quantize_uniform(v, g, bits), g);
        CHECK(std::fabs(back - v) <= 0.5f * g.scale * (1.0f + 1e-5f));
      }
    }
    if (!symmetric) {
      // The asymmetric range covers the data up to the scale rounding.
      const float range = std::max(0.0f, *std::max_element(x.begin(), x.end())) -
                          std::min(0.0f, *std::min_element(x.begin(), x.end()));
      CHECK(covered_lo <= std::min(0.0f, *std::min_element(x.begin(), x.end())) + 0.5f * g.scale +
                              range * 0x1p-10f);
      CHECK(covered_hi >= std::max(0.0f, *std::max_element(x.begin(), x.end())) - 0.5f * g.scale -
                              range * 0x1p-10f);
    }
  }
}

TEST_CASE("fit_uniform_group handles zero, constant and tiny groups", "[shiftadd][uniform]") {
  const int bits = GENERATE(range(1, 9));
  const bool symmetric = GENERATE(false, true);
  CAPTURE(bits, symmetric);
  const std::vector<std::vector<float>> groups = {
      std::vector<float>(16, 0.0f),    std::vector<float>(16, 0.3f),
      std::vector<float>(16, -2.5f),   std::vector<float>(16, 1e-40f),
      std::vector<float>(16, -1e-42f), {0.0f, 1e-39f, -1e-39f, 0.0f}};
  for (const auto& x : groups) {
    const uniform_group g =
        fit_uniform_group(x.data(), static_cast<reparam::index>(x.size()), 1, bits, symmetric);
    const uniform_group expected = oracle_group(x, bits, symmetric);
    CAPTURE(x[0], g.scale, g.zero);
    CHECK(g.scale == expected.scale);
    CHECK(g.zero == expected.zero);
    CHECK(std::isnormal(g.scale));
    CHECK(g.scale > 0.0f);
    // 0 is reproduced exactly; every value comes back finite and within a step.
    CHECK(dequantize_uniform(quantize_uniform(0.0f, g, bits), g) == 0.0f);
    for (const float v : x) {
      const float back = dequantize_uniform(quantize_uniform(v, g, bits), g);
      CHECK(std::isfinite(back));
      CHECK(std::fabs(back - v) <= g.scale);
    }
  }
}

TEST_CASE("quantize_uniform rounds half to even and clamps", "[shiftadd][uniform]") {
  // scale 0.25, zero 2, 3 bits: code = clamp(round_half_even(4 v) + 2, 0, 7).
  const uniform_group g{0.25f, 2.0f};
  const std::vector<std::pair<float, int>> cases = {{0.125f, 2},   // 0.5 -> 0
                                                    {0.375f, 4},   // 1.5 -> 2
                                                    {0.625f, 4},   // 2.5 -> 2
                                                    {0.875f, 6},   // 3.5 -> 4
                                                    {-0.125f, 2},  // -0.5 -> -0
                                                    {-0.375f, 0},  // -1.5 -> -2
                                                    {-0.625f, 0},  // -2.5 -> -2, then clamped at 0
                                                    {0.126f, 3},   // 0.504 -> 1
                                                    {0.124f, 2},   // 0.496 -> 0
                                                    {1.2f, 7},     // 4.8 -> 5 -> 7, clamped
                                                    {10.0f, 7},   {-10.0f, 0}, {1e30f, 7},
                                                    {-1e30f, 0},  {0.0f, 2}};
  for (const auto& [value, code] : cases) {
    CAPTURE(value);
    CHECK(static_cast<int>(quantize_uniform(value, g, 3)) == code);
  }
  CHECK(dequantize_uniform(0, g) == -0.5f);
  CHECK(dequantize_uniform(7, g) == 1.25f);
  // Random values against the FPU's own round-half-even.
  const std::uint64_t seed = reparam::test::test_seed(202);
  CAPTURE(seed);
  for (const int bits : {1, 2, 4, 8}) {
    const std::vector<float> x =
        random_values(500, seed, static_cast<std::uint64_t>(bits), -3.0f, 3.0f);
    const uniform_group h = fit_uniform_group(x.data(), 500, 1, bits, false);
    for (const float v : x) {
      CHECK(quantize_uniform(v, h, bits) == oracle_code(v, h, bits));
      // Exact ties (v / scale = k + 1/2) resolved the same way as nearbyint.
      const float tie = (std::floor(v / h.scale) + 0.5f) * h.scale;
      CHECK(quantize_uniform(tie, h, bits) == oracle_code(tie, h, bits));
    }
  }
}

TEST_CASE("quantize_rtn matches the per-group oracle", "[shiftadd][uniform]") {
  const std::uint64_t seed = reparam::test::test_seed(203);
  CAPTURE(seed);
  const int bits = GENERATE(2, 3, 4, 8);
  const bool symmetric = GENERATE(false, true);
  const reparam::index group = GENERATE(0, 8, 32);
  CAPTURE(bits, symmetric, group);
  const matrix<float> big = reparam::test::random_matrix(12, 80, seed, -2.0f, 1.0f);
  const auto w = big.block(2, 8, 9, 64);  // row stride 80
  const uniform_matrix u = quantize_rtn(w, {bits, group, symmetric});
  const reparam::index size = group == 0 ? 64 : group;
  REQUIRE(u.rows == 9);
  REQUIRE(u.cols == 64);
  REQUIRE(u.bits == bits);
  REQUIRE(u.group_size == size);
  REQUIRE(u.codes.size() == 9u * 64u);
  REQUIRE(u.groups.size() == static_cast<std::size_t>(9 * (64 / size)));
  const matrix<float> dense = u.dequantize();
  for (reparam::index r = 0; r < 9; ++r) {
    for (reparam::index g = 0; g < 64 / size; ++g) {
      std::vector<float> x(static_cast<std::size_t>(size));
      for (reparam::index k = 0; k < size; ++k) {
        x[static_cast<std::size_t>(k)] = w(r, g * size + k);
      }
      const uniform_group expected = oracle_group(x, bits, symmetric);
      const uniform_group& got = u.groups[static_cast<std::size_t>(r * (64 / size) + g)];
      CHECK(got.scale == expected.scale);
      CHECK(got.zero == expected.zero);
      for (reparam::index k = 0; k < size; ++k) {
        const std::uint8_t code = oracle_code(x[static_cast<std::size_t>(k)], expected, bits);
        CHECK(u.code(r, g * size + k) == code);
        CHECK(dense(r, g * size + k) ==
              expected.scale * (static_cast<float>(code) - expected.zero));
      }
    }
  }
  // double weights are rounded to float first: the same result.
  const matrix<double> wd = w.cast<double>();
  const uniform_matrix ud = quantize_rtn(wd, {bits, group, symmetric});
  CHECK(ud.codes == u.codes);
  CHECK(same_bits(ud.dequantize(), dense));
}

TEST_CASE("to_binary_coded reproduces the dequantized weights bit for bit",
          "[shiftadd][uniform][convert]") {
  const std::uint64_t seed = reparam::test::test_seed(204);
  CAPTURE(seed);
  const int bits = GENERATE(range(1, 9));
  const bool symmetric = GENERATE(false, true);
  CAPTURE(bits, symmetric);
  const reparam::index cols = 64;
  const reparam::index group = 16;
  matrix<float> w = reparam::test::random_matrix(14, cols, seed, -1.0f, 1.0f);
  // Adversarial rows (one per group of 16 columns is enough to give every case its own group).
  w.row(0).setZero();
  w.row(1).setConstant(0.3f);
  w.row(2).setConstant(-7.0f);
  w.row(3).setZero();
  w(3, 5) = 1e29f;  // one outlier in a zero group
  for (reparam::index c = 0; c < cols; ++c) {
    const float t = static_cast<float>(c) / static_cast<float>(cols - 1);
    w(4, c) = std::exp2(-100.0f + 160.0f * t) * (c % 2 == 0 ? 1.0f : -1.0f);  // huge range
    w(5, c) = 1e-42f * static_cast<float>(c % 5);                             // denormals
    w(6, c) = std::ldexp(1.0f, 100) * (c % 3 == 0 ? -1.0f : 1.0f);            // the limit
    w(7, c) = static_cast<float>(c % 16);                                     // integers
    w(8, c) = 0.5f + 0.25f * static_cast<float>(c % 4);                       // positive only
    w(9, c) = -0.5f - 0.25f * static_cast<float>(c % 4);                      // negative only
  }
  // A raw scale with an all-ones mantissa: rounding to 11 bits carries into the exponent.
  const auto max_code = static_cast<float>((1 << bits) - 1);
  w.row(10).setZero();
  w(10, 0) = std::nextafter(2.0f, 0.0f) * max_code;
  const matrix<float> wt = w;
  const uniform_matrix u = quantize_rtn(wt, {bits, group, symmetric});
  const binary_coded_matrix b = to_binary_coded(u);
  REQUIRE(b.has_offsets());
  REQUIRE(b.bits() == bits);
  REQUIRE(b.group_size() == group);
  const matrix<float> expected = u.dequantize();
  const matrix<float> got = reparam::shiftadd::reconstruct(b);
  reparam::index mismatches = 0;
  for (reparam::index r = 0; r < w.rows(); ++r) {
    for (reparam::index c = 0; c < cols; ++c) {
      mismatches += bits_of(got(r, c)) == bits_of(expected(r, c)) ? 0 : 1;
    }
  }
  CHECK(mismatches == 0);
  CHECK(same_bits(got, expected));
  // The alphas are scale * 2^(i-1), so the sign bits are the code bits.
  for (reparam::index r = 0; r < w.rows(); ++r) {
    for (reparam::index c = 0; c < cols; ++c) {
      CHECK(b.code(r, c) == u.code(r, c));
    }
    for (reparam::index g = 0; g < cols / group; ++g) {
      const float scale = u.groups[static_cast<std::size_t>(r * (cols / group) + g)].scale;
      for (int i = 0; i < bits; ++i) {
        CHECK(b.scales_of(r, g)[i] == std::ldexp(scale, i - 1));
      }
    }
  }
}

TEST_CASE("to_binary_coded accepts scales up to the exactness limit and rejects beyond",
          "[shiftadd][uniform][convert]") {
  const int bits = GENERATE(1, 4, 8);
  CAPTURE(bits);
  uniform_matrix u;
  u.rows = 1;
  u.cols = 4;
  u.bits = bits;
  u.group_size = 4;
  const auto max_code = static_cast<std::uint8_t>((1 << bits) - 1);
  u.codes = {0, max_code, static_cast<std::uint8_t>(max_code / 2), 1};
  // The largest odd significand with 23 - bits bits: every partial sum stays exact.
  const int limit = 23 - bits;
  const float at_limit = std::ldexp(static_cast<float>((1 << limit) - 1), -limit);
  u.groups = {{at_limit, static_cast<float>(max_code / 2)}};
  const binary_coded_matrix b = to_binary_coded(u);
  CHECK(same_bits(reparam::shiftadd::reconstruct(b), u.dequantize()));
  // One more significant bit is refused rather than converted inexactly.
  u.groups[0].scale = std::ldexp(static_cast<float>((1 << (limit + 1)) - 1), -limit - 1);
  CHECK_THROWS_WITH(to_binary_coded(u), Catch::Contains("cannot be converted exactly at " +
                                                        std::to_string(bits) + " bits"));
}

TEST_CASE("uniform_matrix packed_size counts codes, fp16 scales and zero points",
          "[shiftadd][uniform]") {
  const matrix<float> w = reparam::test::random_matrix(4, 64, reparam::test::test_seed(205));
  const uniform_matrix u = quantize_rtn(w, {3, 32, false});
  // 3 * 4 * 64 / 8 = 96 code bytes, 8 groups * 2 scale bytes, ceil(8 * 3 / 8) = 3 zero bytes.
  CHECK(u.packed_size() == 96u + 16u + 3u);
  const uniform_matrix v = quantize_rtn(w, {5, 0, true});
  // ceil(5 * 256 / 8) = 160, 4 groups * 2, ceil(4 * 5 / 8) = 3.
  CHECK(v.packed_size() == 160u + 8u + 3u);
}

TEST_CASE("quantize_rtn and to_binary_coded reject bad arguments", "[shiftadd][uniform][errors]") {
  const matrix<float> w = reparam::test::random_matrix(3, 40, reparam::test::test_seed(206));
  CHECK_THROWS_WITH(quantize_rtn(w, {4, 16, false}),
                    "shiftadd::quantize_rtn: group_size 16 does not divide cols 40");
  CHECK_THROWS_WITH(quantize_rtn(w, {0, 8, false}),
                    "shiftadd::quantize_rtn: bits 0 is outside [1, 8]");
  CHECK_THROWS_WITH(quantize_rtn(w, {9, 8, false}),
                    "shiftadd::quantize_rtn: bits 9 is outside [1, 8]");
  CHECK_THROWS_WITH(quantize_rtn(w, {4, -8, false}),
                    "shiftadd::quantize_rtn: group_size -8 is negative");
  const matrix<float> empty(2, 0);
  CHECK_THROWS_WITH(quantize_rtn(empty, {4, 0, false}),
                    "shiftadd::quantize_rtn: weights shape 2x0 is empty");
  matrix<float> bad = w;
  bad(1, 33) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(quantize_rtn(bad, {4, 8, false}),
                    "shiftadd::quantize_rtn: weights has non-finite value inf at (1, 33)");

  uniform_matrix u = quantize_rtn(w, {3, 8, false});
  uniform_matrix broken = u;
  broken.codes[7] = 8;
  CHECK_THROWS_WITH(to_binary_coded(broken),
                    "shiftadd::to_binary_coded: code 8 at flat index 7 exceeds 2^bits - 1 = 7");
  broken = u;
  broken.groups[4].zero = 2.5f;
  CHECK_THROWS_WITH(to_binary_coded(broken),
                    "shiftadd::to_binary_coded: group (0, 4) zero 2.5 is not an integer in [0, 7]");
  broken = u;
  broken.groups[5].scale = 0.0f;
  CHECK_THROWS_WITH(to_binary_coded(broken),
                    "shiftadd::to_binary_coded: group (1, 0) scale 0 is not finite and > 0");
  broken = u;
  broken.groups.pop_back();
  CHECK_THROWS_WITH(to_binary_coded(broken),
                    "shiftadd::to_binary_coded: groups has 14 entries, expected 15");
  broken = u;
  broken.group_size = 7;
  CHECK_THROWS_WITH(to_binary_coded(broken),
                    "shiftadd::to_binary_coded: group_size 7 does not divide cols 40");
}

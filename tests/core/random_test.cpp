// SPDX-License-Identifier: Apache-2.0
// Philox4x32-10 against the Random123 known-answer vectors, and the stream engine and the
// open-interval uniforms built on it.
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/random.hpp>

using reparam::philox4x32_10;
using reparam::philox4x32_counter;
using reparam::philox4x32_key;
using reparam::philox_engine;

TEST_CASE("philox4x32_10 reproduces the Random123 known-answer vectors", "[core][random]") {
  // Random123 1.14 tests/kat_vectors, lines "philox4x32 10 <ctr x4> <key x2> <expected x4>".
  struct kat {
    philox4x32_counter counter;
    philox4x32_key key;
    philox4x32_counter expected;
  };
  const std::array<kat, 3> vectors{{
      {{0u, 0u, 0u, 0u}, {0u, 0u}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  }};
  for (const auto& v : vectors) {
    CHECK(philox4x32_10(v.counter, v.key) == v.expected);
  }
  // constexpr: usable at compile time.
  static_assert(philox4x32_10({0u, 0u, 0u, 0u}, {0u, 0u})[0] == 0x6627e8d5u);
}

TEST_CASE("philox_engine emits the words of consecutive counter blocks of its stream",
          "[core][random]") {
  const std::uint64_t seed = 0x0123456789abcdefULL;
  const std::uint64_t stream = 0xfedcba9876543210ULL;
  philox_engine engine(seed, stream);
  const philox4x32_key key{0x89abcdefu, 0x01234567u};
  for (std::uint64_t block = 0; block < 5; ++block) {
    const philox4x32_counter expected =
        philox4x32_10({static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32),
                       0x76543210u, 0xfedcba98u},
                      key);
    for (std::uint32_t word : expected) {
      REQUIRE(engine() == word);
    }
  }
  REQUIRE(engine.word_position() == 20);
}

TEST_CASE("philox_engine discard equals drawing, from any position", "[core][random]") {
  for (std::uint64_t start = 0; start < 5; ++start) {
    for (std::uint64_t skip = 0; skip < 23; ++skip) {
      CAPTURE(start, skip);
      philox_engine drawn(7, 3);
      philox_engine skipped(7, 3);
      for (std::uint64_t i = 0; i < start; ++i) {
        drawn();
        skipped();
      }
      for (std::uint64_t i = 0; i < skip; ++i) drawn();
      skipped.discard(skip);
      REQUIRE(skipped.word_position() == start + skip);
      for (int i = 0; i < 9; ++i) REQUIRE(drawn() == skipped());
    }
  }
  // Large jumps land in the right block (the counter's high word is used).
  philox_engine far(1, 0);
  far.discard(std::uint64_t{4} << 33);
  REQUIRE(far() == philox_engine(1, 0).block(std::uint64_t{1} << 33)[0]);
}

TEST_CASE("philox streams and seeds are distinct sequences", "[core][random]") {
  std::vector<std::uint32_t> a, b, c;
  philox_engine ea(42, 0), eb(42, 1), ec(43, 0);
  for (int i = 0; i < 64; ++i) {
    a.push_back(ea());
    b.push_back(eb());
    c.push_back(ec());
  }
  CHECK(a != b);
  CHECK(a != c);
  CHECK(b != c);
}

TEST_CASE("uniform_open01_float never returns 0 or 1 and hits its extreme midpoints exactly",
          "[core][random]") {
  using reparam::uniform_open01_double;
  using reparam::uniform_open01_float;
  const float lowest = uniform_open01_float(0u);
  const float highest = uniform_open01_float(0xffffffffu);
  CHECK(lowest == std::ldexp(1.0f, -24));
  CHECK(highest == 1.0f - std::ldexp(1.0f, -24));
  CHECK(highest < 1.0f);
  CHECK(lowest > 0.0f);
  // Symmetric: u(bits) + u(~bits) == 1 exactly, for a spread of patterns.
  reparam::philox_engine engine(11, 0);
  for (int i = 0; i < 100000; ++i) {
    const std::uint32_t bits = engine();
    REQUIRE(uniform_open01_float(bits) + uniform_open01_float(~bits) == 1.0f);
  }
  CHECK(uniform_open01_double(0u, 0u) == std::ldexp(1.0, -53));
  CHECK(uniform_open01_double(0xffffffffu, 0xffffffffu) == 1.0 - std::ldexp(1.0, -53));
  CHECK(uniform_open01_double(0xffffffffu, 0xffffffffu) < 1.0);
}

TEST_CASE("philox uniforms pass a chi-square test on 64 bins (fixed seed)", "[core][random]") {
  // 64 equiprobable bins, 2^20 draws: the statistic is chi-square with 63 degrees of freedom;
  // its 0.999 quantile is 103.4, so a correct generator fails this with probability 1e-3 for a
  // random seed, and never for this fixed one (checked once, deterministic thereafter).
  constexpr int bins = 64;
  constexpr int draws = 1 << 20;
  std::array<double, bins> counts{};
  philox_engine engine(2024, 0);
  for (int i = 0; i < draws; ++i) {
    const float u = reparam::uniform_open01_float(engine());
    counts[static_cast<std::size_t>(u * bins)] += 1.0;
  }
  const double expected = static_cast<double>(draws) / bins;
  double chi2 = 0.0;
  for (double c : counts) chi2 += (c - expected) * (c - expected) / expected;
  CAPTURE(chi2);
  REQUIRE(chi2 < 103.4);
  // And a generator that is obviously broken (only even words) is caught by the same statistic
  // on the low bit: this guards the test itself.
  std::array<double, 2> parity{};
  philox_engine engine2(2024, 1);
  for (int i = 0; i < draws; ++i) parity[engine2() & 1u] += 1.0;
  const double half = draws / 2.0;
  const double chi2_parity = (parity[0] - half) * (parity[0] - half) / half +
                             (parity[1] - half) * (parity[1] - half) / half;
  CAPTURE(chi2_parity);
  REQUIRE(chi2_parity < 10.83);  // chi-square(1) 0.999 quantile
}

TEST_CASE("philox_engine works with <random> distributions", "[core][random]") {
  philox_engine engine(5, 9);
  std::normal_distribution<double> normal(0.0, 1.0);
  double sum = 0.0;
  double sum_sq = 0.0;
  constexpr int draws = 200000;
  for (int i = 0; i < draws; ++i) {
    const double x = normal(engine);
    sum += x;
    sum_sq += x * x;
  }
  const double mean = sum / draws;
  const double var = sum_sq / draws - mean * mean;
  // Standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032; allow 5 sigma.
  CHECK(std::abs(mean) < 0.0112);
  CHECK(std::abs(var - 1.0) < 0.016);
}

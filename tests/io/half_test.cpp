// SPDX-License-Identifier: Apache-2.0
// Tests for core/half.hpp: every binary16, bfloat16 and FP8 bit pattern against independent
// oracles (a ldexp decoder in double, _Float16 where the compiler has it, the bfloat16 bit shift),
// and float -> binary16/bfloat16 rounding against a round-to-nearest-even oracle in double.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/half.hpp>

namespace {

std::uint32_t bits_of(float value) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float float_of(std::uint32_t bits) {
  float value = 0;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Decodes a binary format with the given field widths straight from the definition, in double.
// Returns NaN for NaN encodings (has_infinity == false: only all-ones exponent and mantissa).
double decode_oracle(std::uint32_t bits, int exponent_bits, int mantissa_bits,
                     bool has_infinity = true) {
  const int total = 1 + exponent_bits + mantissa_bits;
  const bool negative = ((bits >> (total - 1)) & 1u) != 0;
  const auto exponent = static_cast<int>((bits >> mantissa_bits) & ((1u << exponent_bits) - 1u));
  const auto mantissa = static_cast<int>(bits & ((1u << mantissa_bits) - 1u));
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const int max_exponent = (1 << exponent_bits) - 1;
  double magnitude = 0;
  if (has_infinity && exponent == max_exponent) {
    magnitude = mantissa == 0 ? std::numeric_limits<double>::infinity()
                              : std::numeric_limits<double>::quiet_NaN();
  } else if (!has_infinity && exponent == max_exponent && mantissa == (1 << mantissa_bits) - 1) {
    magnitude = std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(mantissa, 1 - bias - mantissa_bits);
  } else {
    magnitude = std::ldexp((1 << mantissa_bits) + mantissa, exponent - bias - mantissa_bits);
  }
  return negative ? -magnitude : magnitude;
}

// Rounds x to the nearest value with `mantissa_bits` fraction bits and exponent >= min_exponent
// (subnormals below), ties to even, overflowing to infinity past max_finite. std::nearbyint
// under the default rounding mode rounds ties to even; dividing by a power of two is exact.
double round_oracle(double x, int mantissa_bits, int min_exponent, double max_finite) {
  if (x == 0 || std::isnan(x) || std::isinf(x)) {
    return x;
  }
  int exponent = 0;
  std::frexp(std::fabs(x), &exponent);  // |x| in [2^(exponent-1), 2^exponent)
  const int leading = std::max(exponent - 1, min_exponent);
  const double quantum = std::ldexp(1.0, leading - mantissa_bits);
  const double rounded = std::nearbyint(std::fabs(x) / quantum) * quantum;
  const double magnitude = rounded > max_finite ? std::numeric_limits<double>::infinity() : rounded;
  return std::copysign(magnitude, x);
}

double f16_decode(std::uint16_t bits) { return decode_oracle(bits, 5, 10); }
double bf16_decode(std::uint16_t bits) { return decode_oracle(bits, 8, 7); }
double f16_round(float x) { return round_oracle(static_cast<double>(x), 10, -14, 65504.0); }
double bf16_round(float x) {
  return round_oracle(static_cast<double>(x), 7, -126, std::ldexp(255.0, 120));
}

// Same value, and the same sign for zeros.
bool same_value(double a, double b) { return a == b && std::signbit(a) == std::signbit(b); }

// Floats at and around the midpoints between consecutive non-negative values of a 16-bit format
// (and their negatives): the cases where rounding decides. `decode` gives a pattern's value.
template <class Decode>
std::vector<float> rounding_probes(std::uint16_t last_finite, Decode decode) {
  std::vector<float> probes;
  for (std::uint32_t bits = 0; bits <= last_finite; ++bits) {
    const double low = decode(static_cast<std::uint16_t>(bits));
    const double high = bits == last_finite ? 2 * low - decode(static_cast<std::uint16_t>(bits - 1))
                                            : decode(static_cast<std::uint16_t>(bits + 1));
    const auto mid = static_cast<float>((low + high) / 2);  // exact: one more bit than the format
    for (const float x :
         {static_cast<float>(low), mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e30f)}) {
      probes.push_back(x);
      probes.push_back(-x);
    }
  }
  return probes;
}

std::vector<float> random_floats(std::size_t count) {
  std::mt19937 generator(Catch::rngSeed());  // the seed is printed by the callers' CAPTURE
  std::vector<float> values;
  std::uniform_real_distribution<float> in_range(-70000.f, 70000.f);
  for (std::size_t i = 0; i < count; ++i) {
    values.push_back(float_of(static_cast<std::uint32_t>(generator())));  // any pattern, NaN too
    values.push_back(in_range(generator));
  }
  return values;
}

}  // namespace

TEST_CASE("f16_to_float decodes every binary16 pattern exactly", "[io][half]") {
  std::size_t mismatches = 0;
  std::uint32_t first_bad = 0;
  for (std::uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const auto half = static_cast<std::uint16_t>(bits);
    const float value = reparam::f16_to_float(half);
    const double expected = f16_decode(half);
    bool is_good = false;
    if (std::isnan(expected)) {
      // NaN stays NaN: same sign, payload kept, quiet bit set.
      const std::uint32_t expected_bits = (static_cast<std::uint32_t>(half & 0x8000u) << 16) |
                                          0x7fc00000u |
                                          (static_cast<std::uint32_t>(half & 0x3ffu) << 13);
      is_good = bits_of(value) == expected_bits;
    } else {
      is_good = same_value(static_cast<double>(value), expected);
    }
    if (!is_good && mismatches++ == 0) {
      first_bad = bits;
    }
  }
  CAPTURE(mismatches, first_bad);
  REQUIRE(mismatches == 0);
}

#if defined(__FLT16_MANT_DIG__)
TEST_CASE("f16_to_float matches the compiler's _Float16 on every pattern", "[io][half]") {
  std::size_t mismatches = 0;
  for (std::uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const auto half = static_cast<std::uint16_t>(bits);
    _Float16 native;
    std::memcpy(&native, &half, sizeof half);
    mismatches += bits_of(reparam::f16_to_float(half)) != bits_of(static_cast<float>(native));
  }
  REQUIRE(mismatches == 0);
}

TEST_CASE("float_to_f16 matches the compiler's _Float16 rounding", "[io][half]") {
  std::vector<float> probes = rounding_probes(0x7bff, f16_decode);
  CAPTURE(Catch::rngSeed());
  const std::vector<float> random = random_floats(100000);
  probes.insert(probes.end(), random.begin(), random.end());
  std::size_t mismatches = 0;
  float first_bad = 0;
  for (const float x : probes) {
    const auto native = static_cast<_Float16>(x);
    std::uint16_t native_bits = 0;
    std::memcpy(&native_bits, &native, sizeof native_bits);
    if (reparam::float_to_f16(x) != native_bits && mismatches++ == 0) {
      first_bad = x;
    }
  }
  CAPTURE(mismatches, first_bad, bits_of(first_bad));
  REQUIRE(mismatches == 0);
}
#endif

TEST_CASE("bf16_to_float is the 16-bit shift on every pattern", "[io][half]") {
  std::size_t mismatches = 0;
  for (std::uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const auto bf16 = static_cast<std::uint16_t>(bits);
    mismatches += bits_of(reparam::bf16_to_float(bf16)) != bits << 16;
    // And the value is the one the format defines (NaN checked by the shift above).
    const double expected = bf16_decode(bf16);
    mismatches += !std::isnan(expected) &&
                  !same_value(static_cast<double>(reparam::bf16_to_float(bf16)), expected);
  }
  REQUIRE(mismatches == 0);
}

TEST_CASE("float_to_f16 rounds to nearest even like the double oracle", "[io][half]") {
  std::vector<float> probes = rounding_probes(0x7bff, f16_decode);
  CAPTURE(Catch::rngSeed());
  const std::vector<float> random = random_floats(100000);
  probes.insert(probes.end(), random.begin(), random.end());
  std::size_t mismatches = 0;
  float first_bad = 0;
  for (const float x : probes) {
    const std::uint16_t half = reparam::float_to_f16(x);
    const bool is_good = std::isnan(x) ? std::isnan(f16_decode(half)) &&
                                             std::signbit(f16_decode(half)) == std::signbit(x)
                                       : same_value(f16_decode(half), f16_round(x));
    if (!is_good && mismatches++ == 0) {
      first_bad = x;
    }
  }
  CAPTURE(probes.size(), mismatches, first_bad, bits_of(first_bad));
  REQUIRE(mismatches == 0);
}

TEST_CASE("float_to_bf16 rounds to nearest even like the double oracle", "[io][half]") {
  std::vector<float> probes = rounding_probes(0x7f7f, bf16_decode);
  CAPTURE(Catch::rngSeed());
  const std::vector<float> random = random_floats(100000);
  probes.insert(probes.end(), random.begin(), random.end());
  std::size_t mismatches = 0;
  float first_bad = 0;
  for (const float x : probes) {
    const std::uint16_t bf16 = reparam::float_to_bf16(x);
    const bool is_good = std::isnan(x) ? std::isnan(bf16_decode(bf16)) &&
                                             std::signbit(bf16_decode(bf16)) == std::signbit(x)
                                       : same_value(bf16_decode(bf16), bf16_round(x));
    if (!is_good && mismatches++ == 0) {
      first_bad = x;
    }
  }
  CAPTURE(probes.size(), mismatches, first_bad, bits_of(first_bad));
  REQUIRE(mismatches == 0);
}

TEST_CASE("float_to_f16 handles overflow, subnormals, ties and NaN at the boundaries",
          "[io][half]") {
  using reparam::float_to_f16;
  CHECK(float_to_f16(65504.f) == 0x7bff);
  CHECK(float_to_f16(65519.996f) == 0x7bff);  // just below the tie
  CHECK(float_to_f16(65520.f) == 0x7c00);     // tie rounds to even: inf
  CHECK(float_to_f16(-65520.f) == 0xfc00);
  CHECK(float_to_f16(std::numeric_limits<float>::max()) == 0x7c00);
  CHECK(float_to_f16(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(float_to_f16(-std::numeric_limits<float>::infinity()) == 0xfc00);
  CHECK(float_to_f16(std::ldexp(1.f, -24)) == 0x0001);  // smallest subnormal
  CHECK(float_to_f16(std::ldexp(1.f, -25)) == 0x0000);  // tie to even: zero
  CHECK(float_to_f16(std::nextafter(std::ldexp(1.f, -25), 1.f)) == 0x0001);
  CHECK(float_to_f16(std::ldexp(3.f, -25)) == 0x0002);      // 1.5 ulp: tie to even
  CHECK(float_to_f16(-std::ldexp(1.f, -26)) == 0x8000);     // -0
  CHECK(float_to_f16(std::ldexp(1023.5f, -24)) == 0x0400);  // rounds up into normals
  CHECK(float_to_f16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(float_to_f16(-0.f) == 0x8000);
  CHECK(float_to_f16(1.f + std::ldexp(1.f, -11)) == 0x3c00);  // tie, even stays
  CHECK(float_to_f16(1.f + std::ldexp(3.f, -11)) == 0x3c02);  // tie, odd rounds up
  CHECK(float_to_f16(float_of(0x7f800001u)) == 0x7e00);       // signalling NaN -> quiet
  CHECK(float_to_f16(float_of(0xffc00000u)) == 0xfe00);
  CHECK(float_to_f16(float_of(0x7fffe000u)) == 0x7fff);  // payload kept
}

TEST_CASE("float_to_bf16 handles overflow, ties and NaN at the boundaries", "[io][half]") {
  using reparam::float_to_bf16;
  CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // rounds past max: inf
  CHECK(float_to_bf16(float_of(0x7f7f7fffu)) == 0x7f7f);
  CHECK(float_to_bf16(float_of(0x7f7f8000u)) == 0x7f80);  // tie, odd: up to inf
  CHECK(float_to_bf16(float_of(0x3f808000u)) == 0x3f80);  // tie, even stays
  CHECK(float_to_bf16(float_of(0x3f818000u)) == 0x3f82);  // tie, odd rounds up
  CHECK(float_to_bf16(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(float_to_bf16(float_of(0x00008000u)) == 0x0000);  // subnormal tie to even
  CHECK(float_to_bf16(float_of(0x00018000u)) == 0x0002);
  CHECK(float_to_bf16(-0.f) == 0x8000);
  CHECK(float_to_bf16(float_of(0x7f800001u)) == 0x7fc0);  // NaN must not become inf
  CHECK(float_to_bf16(float_of(0xff800001u)) == 0xffc0);
  CHECK(float_to_bf16(float_of(0x7fff0000u)) == 0x7fff);
}

TEST_CASE("binary16 and bfloat16 survive a round trip through float", "[io][half]") {
  std::size_t mismatches = 0;
  for (std::uint32_t bits = 0; bits <= 0xffffu; ++bits) {
    const auto pattern = static_cast<std::uint16_t>(bits);
    const bool is_f16_nan = (bits & 0x7c00u) == 0x7c00u && (bits & 0x3ffu) != 0;
    const bool is_bf16_nan = (bits & 0x7f80u) == 0x7f80u && (bits & 0x7fu) != 0;
    // A NaN comes back quieted, with sign and payload.
    const std::uint32_t f16_expected = is_f16_nan ? (bits | 0x200u) : bits;
    const std::uint32_t bf16_expected = is_bf16_nan ? (bits | 0x40u) : bits;
    mismatches += reparam::float_to_f16(reparam::f16_to_float(pattern)) != f16_expected;
    mismatches += reparam::float_to_bf16(reparam::bf16_to_float(pattern)) != bf16_expected;
  }
  REQUIRE(mismatches == 0);
}

TEST_CASE("FP8 E4M3 and E5M2 decode every pattern exactly", "[io][half]") {
  std::size_t mismatches = 0;
  for (std::uint32_t bits = 0; bits <= 0xffu; ++bits) {
    const auto byte = static_cast<std::uint8_t>(bits);
    const double e4m3 = decode_oracle(bits, 4, 3, /*has_infinity=*/false);
    const double e5m2 = decode_oracle(bits, 5, 2);
    const float got_e4m3 = reparam::f8_e4m3_to_float(byte);
    const float got_e5m2 = reparam::f8_e5m2_to_float(byte);
    mismatches +=
        std::isnan(e4m3) ? !std::isnan(got_e4m3) : !same_value(static_cast<double>(got_e4m3), e4m3);
    mismatches +=
        std::isnan(e5m2) ? !std::isnan(got_e5m2) : !same_value(static_cast<double>(got_e5m2), e5m2);
  }
  REQUIRE(mismatches == 0);
  CHECK(reparam::f8_e4m3_to_float(0x7e) == 448.f);  // largest E4M3FN value
  CHECK(reparam::f8_e4m3_to_float(0x01) == std::ldexp(1.f, -9));
  CHECK(std::isinf(reparam::f8_e5m2_to_float(0x7c)));
}

TEST_CASE("bulk converters agree with the scalar conversions on odd counts", "[io][half]") {
  for (const reparam::index count : {0, 1, 2, 3, 7, 17, 257, 1025}) {
    CAPTURE(count);
    std::vector<std::uint16_t> patterns(static_cast<std::size_t>(count));
    std::vector<float> floats(patterns.size());
    for (std::size_t i = 0; i < patterns.size(); ++i) {
      patterns[i] = static_cast<std::uint16_t>(i * 40503u);  // spread over the whole range
      floats[i] = float_of(static_cast<std::uint32_t>(i * 2654435761u));
    }
    std::vector<float> widened(patterns.size());
    std::vector<std::uint16_t> narrowed(patterns.size());
    std::size_t mismatches = 0;
    reparam::f16_to_float_n(patterns.data(), widened.data(), count);
    for (std::size_t i = 0; i < patterns.size(); ++i) {
      mismatches += bits_of(widened[i]) != bits_of(reparam::f16_to_float(patterns[i]));
    }
    reparam::bf16_to_float_n(patterns.data(), widened.data(), count);
    for (std::size_t i = 0; i < patterns.size(); ++i) {
      mismatches += bits_of(widened[i]) != bits_of(reparam::bf16_to_float(patterns[i]));
    }
    reparam::float_to_f16_n(floats.data(), narrowed.data(), count);
    for (std::size_t i = 0; i < patterns.size(); ++i) {
      mismatches += narrowed[i] != reparam::float_to_f16(floats[i]);
    }
    reparam::float_to_bf16_n(floats.data(), narrowed.data(), count);
    for (std::size_t i = 0; i < patterns.size(); ++i) {
      mismatches += narrowed[i] != reparam::float_to_bf16(floats[i]);
    }
    REQUIRE(mismatches == 0);
  }
}

TEST_CASE("half conversions are usable in constant expressions", "[io][half]") {
  static_assert(reparam::detail::f32_bits_to_f16_bits(0x3f800000u) == 0x3c00);
  static_assert(reparam::detail::f32_bits_to_f16_bits(0x33800000u) == 0x0001);  // 2^-24
  static_assert(reparam::detail::f32_bits_to_bf16_bits(0x3f800000u) == 0x3f80);
#if defined(REPARAM_HAS_BUILTIN_BIT_CAST)
  static_assert(reparam::detail::f16_bits_to_f32_bits(0x3c00) == 0x3f800000u);
  static_assert(reparam::detail::f16_bits_to_f32_bits(0x0001) == 0x33800000u);
  static_assert(reparam::f16_to_float(0xc000) == -2.f);
  static_assert(reparam::float_to_f16(0.5f) == 0x3800);
  static_assert(reparam::bf16_to_float(0x4049) == 3.140625f);
  static_assert(reparam::float_to_bf16(3.14159265f) == 0x4049);
#endif
  SUCCEED("checked at compile time");
}

// SPDX-License-Identifier: Apache-2.0
// Scalar and bulk conversions between float and the 16- and 8-bit float storage formats found in
// checkpoints (IEEE binary16, bfloat16, FP8 E4M3FN/E5M2). Used by io/safetensors.hpp and by anyone
// who stores weights in half precision. Pure integer bit manipulation: no FPU mode dependence.
#ifndef REPARAM_CORE_HALF_HPP
#define REPARAM_CORE_HALF_HPP

#include <cstdint>
#include <cstring>

#include <reparam/core/index.hpp>

// constexpr float <-> bits needs a constexpr bit cast (std::bit_cast is C++20). g++ >= 11 and
// clang >= 9 provide __builtin_bit_cast in C++17; elsewhere the functions are merely inline.
#if defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
#define REPARAM_HAS_BUILTIN_BIT_CAST 1
#endif
#endif
#if defined(REPARAM_HAS_BUILTIN_BIT_CAST)
#define REPARAM_HALF_CONSTEXPR constexpr
#else
#define REPARAM_HALF_CONSTEXPR inline
#endif

namespace reparam {
namespace detail {

REPARAM_HALF_CONSTEXPR std::uint32_t float_bits(float value) noexcept {
#if defined(REPARAM_HAS_BUILTIN_BIT_CAST)
  return __builtin_bit_cast(std::uint32_t, value);
#else
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

REPARAM_HALF_CONSTEXPR float float_from_bits(std::uint32_t bits) noexcept {
#if defined(REPARAM_HAS_BUILTIN_BIT_CAST)
  return __builtin_bit_cast(float, bits);
#else
  float value = 0;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

/// `condition ? if_true : if_false` as bit masks: compilers if-convert and vectorize this where
/// they keep a nested ?: as a branch (g++ 12).
constexpr std::uint32_t select_bits(bool condition, std::uint32_t if_true,
                                    std::uint32_t if_false) noexcept {
  const std::uint32_t mask = 0u - static_cast<std::uint32_t>(condition);
  return (if_true & mask) | (if_false & ~mask);
}

/// binary16 bits -> binary32 bits. Exact for every finite value and infinity; a NaN keeps its sign
/// and payload and gets the quiet bit (as F16C's vcvtph2ps and IEEE 754 conversion do).
/// Branch-free (selects only), so bulk loops vectorize.
REPARAM_HALF_CONSTEXPR std::uint32_t f16_bits_to_f32_bits(std::uint16_t half) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = half & 0x7c00u;
  const std::uint32_t mantissa = half & 0x3ffu;
  // Normal: rebias the exponent (15 -> 127) and widen the mantissa.
  const std::uint32_t normal = (static_cast<std::uint32_t>(half & 0x7fffu) << 13) + (112u << 23);
  // Subnormal (and zero): mantissa * 2^-24. Both conversions and the product are exact and the
  // result is a normal float, so neither the rounding mode nor flush-to-zero can change it.
  const std::uint32_t subnormal = float_bits(static_cast<float>(mantissa) * 0x1p-24f);
  // Inf stays Inf; NaN keeps its payload and is quieted.
  const std::uint32_t special =
      0x7f800000u | (mantissa << 13) | select_bits(mantissa != 0, 0x400000u, 0);
  return sign |
         select_bits(exponent == 0x7c00u, special, select_bits(exponent == 0, subnormal, normal));
}

/// binary32 bits -> binary16 bits, round to nearest, ties to even. Values at or above 65520
/// (halfway between 65504 and 2^16) become infinity; values below 2^-14 round to subnormals or
/// zero; a NaN keeps its sign and the top 9 payload bits and gets the quiet bit, so it stays NaN.
/// Integer only (no dependence on the FPU rounding mode) and branch-free, so bulk loops vectorize.
constexpr std::uint16_t f32_bits_to_f16_bits(std::uint32_t bits) noexcept {
  const std::uint32_t sign = (bits >> 16) & 0x8000u;
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  // [2^-14, 65520): drop 13 mantissa bits rounding to nearest even (adding 0xfff plus the lowest
  // kept bit carries exactly when the dropped part is above half, or half with an odd result),
  // then rebias the exponent (127 -> 15). A carry out of the mantissa bumps the exponent, which
  // is the correctly rounded result.
  const std::uint32_t normal =
      ((magnitude + 0xfffu + ((magnitude >> 13) & 1u)) >> 13) - (112u << 10);
  // Below 2^-14: the result counts units of 2^-24, significand * 2^(exponent - 150), i.e. the
  // significand shifted right by 126 - exponent (14 for the largest subnormal; at 31 everything
  // rounds to zero), rounded the same way.
  const std::uint32_t exponent = magnitude >> 23;
  const std::uint32_t shift = exponent > 112u ? 14u : (exponent < 95u ? 31u : 126u - exponent);
  const std::uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  const std::uint32_t truncated = significand >> shift;
  const std::uint32_t rest = significand & ((1u << shift) - 1u);
  const std::uint32_t subnormal =
      truncated + ((rest + (1u << (shift - 1u)) - 1u + (truncated & 1u)) >> shift);
  const std::uint32_t nan = 0x7e00u | ((magnitude >> 13) & 0x3ffu);
  const std::uint32_t finite = select_bits(magnitude >= 0x38800000u, normal, subnormal);
  // At or above 65520 the value rounds to 2^16, which overflows to infinity.
  const std::uint32_t result = select_bits(magnitude > 0x7f800000u, nan,
                                           select_bits(magnitude >= 0x477ff000u, 0x7c00u, finite));
  return static_cast<std::uint16_t>(sign | result);
}

/// binary32 bits -> bfloat16 bits, round to nearest, ties to even (overflow gives infinity, as
/// rounding requires); a NaN keeps its sign and top payload bits and gets the quiet bit.
constexpr std::uint16_t f32_bits_to_bf16_bits(std::uint32_t bits) noexcept {
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  }
  const std::uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding_bias) >> 16);
}

/// FP8 E4M3FN bits (bias 7, no infinities, 0x7f/0xff are NaN) -> binary32 bits. Exact.
constexpr std::uint32_t f8_e4m3_bits_to_f32_bits(std::uint8_t byte) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(byte & 0x80u) << 24;
  const std::uint32_t exponent = (byte >> 3) & 0xfu;
  std::uint32_t mantissa = byte & 0x7u;
  if (exponent == 0xfu && mantissa == 0x7u) {
    return sign | 0x7fc00000u;
  }
  if (exponent != 0) {  // rebias 7 -> 127
    return sign | ((exponent + 120u) << 23) | (mantissa << 20);
  }
  if (mantissa == 0) {
    return sign;
  }
  std::uint32_t float_exponent = 121;  // exponent of 2^-6, the smallest normal E4M3 value
  while ((mantissa & 0x8u) == 0) {
    mantissa <<= 1;
    --float_exponent;
  }
  return sign | (float_exponent << 23) | ((mantissa & 0x7u) << 20);
}

}  // namespace detail

/// IEEE binary16 bits -> float. Exact (every binary16 value is a float); NaN stays NaN with its
/// payload, quieted. No allocation; thread safe.
REPARAM_HALF_CONSTEXPR float f16_to_float(std::uint16_t half) noexcept {
  return detail::float_from_bits(detail::f16_bits_to_f32_bits(half));
}

/// bfloat16 bits -> float: the bits shifted into the top half, so exact for every pattern
/// (including NaN payloads, which are kept bit for bit). No allocation; thread safe.
REPARAM_HALF_CONSTEXPR float bf16_to_float(std::uint16_t bf16) noexcept {
  return detail::float_from_bits(static_cast<std::uint32_t>(bf16) << 16);
}

/// float -> IEEE binary16 bits, round to nearest even. |x| >= 65520 gives +-infinity, tiny values
/// give subnormals or +-0, NaN gives a quiet NaN of the same sign. No allocation; thread safe.
REPARAM_HALF_CONSTEXPR std::uint16_t float_to_f16(float value) noexcept {
  return detail::f32_bits_to_f16_bits(detail::float_bits(value));
}

/// float -> bfloat16 bits, round to nearest even. Values that round past the largest bfloat16
/// give +-infinity, NaN gives a quiet NaN of the same sign. No allocation; thread safe.
REPARAM_HALF_CONSTEXPR std::uint16_t float_to_bf16(float value) noexcept {
  return detail::f32_bits_to_bf16_bits(detail::float_bits(value));
}

/// FP8 E4M3FN bits (as in PyTorch's float8_e4m3fn) -> float. Exact; 0x7f/0xff give quiet NaN.
REPARAM_HALF_CONSTEXPR float f8_e4m3_to_float(std::uint8_t byte) noexcept {
  return detail::float_from_bits(detail::f8_e4m3_bits_to_f32_bits(byte));
}

/// FP8 E5M2 bits (the top byte of a binary16) -> float. Exact; NaN stays NaN, quieted.
REPARAM_HALF_CONSTEXPR float f8_e5m2_to_float(std::uint8_t byte) noexcept {
  return f16_to_float(static_cast<std::uint16_t>(byte << 8));
}

/// Converts `count` binary16 values at `source` to floats at `destination`.
/// Preconditions: count >= 0; both ranges valid and not overlapping. No allocation; thread safe
/// on disjoint outputs.
inline void f16_to_float_n(const std::uint16_t* source, float* destination, index count) noexcept {
  for (index i = 0; i < count; ++i) {
    destination[i] = f16_to_float(source[i]);
  }
}

/// Converts `count` bfloat16 values at `source` to floats at `destination` (exact).
/// Preconditions: count >= 0; both ranges valid and not overlapping. No allocation; thread safe
/// on disjoint outputs.
inline void bf16_to_float_n(const std::uint16_t* source, float* destination, index count) noexcept {
  for (index i = 0; i < count; ++i) {
    destination[i] = bf16_to_float(source[i]);
  }
}

/// Converts `count` floats at `source` to binary16 bits at `destination`, round to nearest even.
/// Preconditions: count >= 0; both ranges valid and not overlapping. No allocation; thread safe
/// on disjoint outputs.
inline void float_to_f16_n(const float* source, std::uint16_t* destination, index count) noexcept {
  for (index i = 0; i < count; ++i) {
    destination[i] = float_to_f16(source[i]);
  }
}

/// Converts `count` floats at `source` to bfloat16 bits at `destination`, round to nearest even.
/// Preconditions: count >= 0; both ranges valid and not overlapping. No allocation; thread safe
/// on disjoint outputs.
inline void float_to_bf16_n(const float* source, std::uint16_t* destination, index count) noexcept {
  for (index i = 0; i < count; ++i) {
    destination[i] = float_to_bf16(source[i]);
  }
}

}  // namespace reparam

#endif  // REPARAM_CORE_HALF_HPP

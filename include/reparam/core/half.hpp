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

/// binary16 bits -> binary32 bits. Exact for every finite value and infinity; a NaN keeps its sign
/// and payload and gets the quiet bit (as F16C's vcvtph2ps and IEEE 754 conversion do).
constexpr std::uint32_t f16_bits_to_f32_bits(std::uint16_t half) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1fu;
  std::uint32_t mantissa = half & 0x3ffu;
  if (exponent == 0x1fu) {  // Inf or NaN
    return mantissa == 0 ? (sign | 0x7f800000u) : (sign | 0x7fc00000u | (mantissa << 13));
  }
  if (exponent != 0) {  // normal: rebias 15 -> 127
    return sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  if (mantissa == 0) {
    return sign;  // +-0
  }
  // Subnormal: value = mantissa * 2^-24. Shift the leading one up to the implicit bit position.
  std::uint32_t float_exponent = 113;  // exponent of 2^-14 (127 - 14), lowered once per shift
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --float_exponent;
  }
  return sign | (float_exponent << 23) | ((mantissa & 0x3ffu) << 13);
}

/// binary32 bits -> binary16 bits, round to nearest, ties to even. Values at or above 65520
/// (halfway between 65504 and 2^16) become infinity; values below 2^-14 round to subnormals or
/// zero; a NaN keeps its sign and the top 9 payload bits and gets the quiet bit, so it stays NaN.
constexpr std::uint16_t f32_bits_to_f16_bits(std::uint32_t bits) noexcept {
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // Inf or NaN
    if (magnitude == 0x7f800000u) {
      return static_cast<std::uint16_t>(sign | 0x7c00u);
    }
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  if (magnitude >= 0x477ff000u) {  // >= 65520: rounds to 2^16, which overflows
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  if (magnitude >= 0x38800000u) {  // >= 2^-14: normal binary16
    // Rebias the exponent (127 -> 15) and drop 13 mantissa bits, rounding ties to even. A carry
    // out of the mantissa correctly bumps the exponent.
    std::uint32_t half = (magnitude >> 13) - (112u << 10);
    const std::uint32_t rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u) != 0)) {
      ++half;
    }
    return static_cast<std::uint16_t>(sign | half);
  }
  const std::uint32_t exponent = magnitude >> 23;
  if (exponent < 102) {  // < 2^-25 (half the smallest subnormal): rounds to zero
    return sign;
  }
  // Subnormal binary16 (units of 2^-24): value = significand * 2^(exponent - 150), so the result
  // is significand >> (126 - exponent), rounded ties to even. A result of 0x400 is the smallest
  // normal number, which is the right encoding.
  const std::uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126 - exponent;  // 14 .. 24
  std::uint32_t half = significand >> shift;
  const std::uint32_t rest = significand & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1u);
  if (rest > halfway || (rest == halfway && (half & 1u) != 0)) {
    ++half;
  }
  return static_cast<std::uint16_t>(sign | half);
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

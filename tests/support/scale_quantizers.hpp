// SPDX-License-Identifier: Apache-2.0
// Quantizer set-up shared by the scale family's quantizer, calibration and log tests: a uniform
// spec from its fields, the rounding oracle (the C library), one slot's scale and zero point by the
// documented min-max range rule written out here in float arithmetic (the oracle the calibrators
// and min-max quantizers are checked against), and a log quantizer from its fields.
#ifndef REPARAM_TESTS_SUPPORT_SCALE_QUANTIZERS_HPP
#define REPARAM_TESTS_SUPPORT_SCALE_QUANTIZERS_HPP

#include <cmath>

#include <reparam/core/index.hpp>
#include <reparam/scale/log_quantizer.hpp>
#include <reparam/scale/quantizer.hpp>

namespace reparam::test {

inline scale::uniform_spec spec_of(int bits, bool is_symmetric, scale::granularity axis,
                                   index group_size = 0,
                                   scale::rounding mode = scale::rounding::half_even) {
  scale::uniform_spec spec;
  spec.bits = bits;
  spec.is_symmetric = is_symmetric;
  spec.axis = axis;
  spec.group_size = group_size;
  spec.mode = mode;
  return spec;
}

/// The rounding oracle: the C library in the default environment (round to nearest even).
template <class Scalar>
Scalar library_round(Scalar x, scale::rounding mode) {
  switch (mode) {
    case scale::rounding::half_even:
      return std::nearbyint(x);
    case scale::rounding::half_away_from_zero:
      return std::round(x);
    case scale::rounding::half_up:
      // x + 0.5 is exact in long double (64-bit significand) for every float and double here.
      // reparam's convention gives a zero result the sign of x (floor(-0.3 + 0.5) is +0).
      return std::copysign(static_cast<Scalar>(std::floor(static_cast<long double>(x) + 0.5L)), x);
    case scale::rounding::floor:
      return std::floor(x);
  }
  return x;
}

/// One slot's parameters.
struct slot_params {
  float scale;
  float zero;
};

/// The range rule for a slot with values in [lo, hi]: symmetric scale max(|lo|, |hi|) /
/// (2^(b-1) - 1), zero 0; asymmetric scale (max(hi, 0) - min(lo, 0)) / (2^b - 1), zero
/// round_even(-min(lo, 0) / scale); the scale at least 1e-8.
inline slot_params oracle_params(float lo, float hi, const scale::uniform_spec& spec) {
  if (spec.is_symmetric) {
    const float m = std::fabs(lo) > std::fabs(hi) ? std::fabs(lo) : std::fabs(hi);
    const float scale = m / static_cast<float>((1 << (spec.bits - 1)) - 1);
    return {scale < 1e-8f ? 1e-8f : scale, 0.0f};
  }
  const float low = lo < 0.0f ? lo : 0.0f;
  const float high = hi > 0.0f ? hi : 0.0f;
  float scale = (high - low) / static_cast<float>((1 << spec.bits) - 1);
  scale = scale < 1e-8f ? 1e-8f : scale;
  return {scale, std::nearbyint(-low / scale) + 0.0f};
}

inline scale::log_quantizer make_log_quantizer(scale::log_base base, int bits,
                                               scale::zero_policy zeros, float scale) {
  scale::log_quantizer q;
  q.base = base;
  q.bits = bits;
  q.zeros = zeros;
  q.scale = scale;
  return q;
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_SCALE_QUANTIZERS_HPP

// SPDX-License-Identifier: Apache-2.0
// Entry-point validation shared by the shift-add quantizers (quantize_bcq, quantize_rtn and the
// GPTQ front ends): every weight finite and within the magnitude the fitters support.
#ifndef REPARAM_SHIFTADD_DETAIL_BCQ_CHECKS_HPP
#define REPARAM_SHIFTADD_DETAIL_BCQ_CHECKS_HPP

#include <cmath>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
// formats.hpp calls detail::check from namespace reparam::shiftadd; it must be parsed before this
// header opens reparam::shiftadd::detail, or that name would no longer find reparam::detail.
#include <reparam/shiftadd/formats.hpp>

namespace reparam::shiftadd::detail {

/// Largest |weight| the fitters accept (2^100). Level sums of up to 8 planes, least-squares
/// scales and APoT exponents (int8) then stay far from float overflow.
inline constexpr double max_weight_magnitude = 0x1p100;

/// Throws reparam::error unless weights has at least one row and column and every entry is finite
/// with |w| <= max_weight_magnitude; names the first offender by (row, col). O(rows * cols).
template <class Derived>
void check_weights(const char* function, const Eigen::MatrixBase<Derived>& weights) {
  reparam::detail::check(weights.rows() >= 1 && weights.cols() >= 1, function, "weights shape ",
                         weights.rows(), "x", weights.cols(), " is empty");
  for (index r = 0; r < weights.rows(); ++r) {
    for (index c = 0; c < weights.cols(); ++c) {
      const auto value = static_cast<double>(weights(r, c));
      reparam::detail::check(std::isfinite(value), function, "weights has non-finite value ", value,
                             " at (", r, ", ", c, ")");
      reparam::detail::check(std::abs(value) <= max_weight_magnitude, function, "weights value ",
                             value, " at (", r, ", ", c, ") exceeds the supported magnitude 2^100");
    }
  }
}

}  // namespace reparam::shiftadd::detail

#endif  // REPARAM_SHIFTADD_DETAIL_BCQ_CHECKS_HPP

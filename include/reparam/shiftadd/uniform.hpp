// SPDX-License-Identifier: Apache-2.0
// Uniform INT-b quantization per group (min-max, round-to-nearest): the RTN baseline, the
// quantizer inside the GPTQ baseline (shiftadd/gptq.hpp), and the exact conversion of INT-b weights
// to the binary-coded format with offsets, so uniform checkpoints run on the BCQ kernels.
//
// Conversion (LUT-GEMM's extended BCQ; docs/research/shiftadd.md section 1): for a code
// c = sum_i 2^i bit_i and w = scale (c - zero), writing bit_i = (s_i + 1) / 2 gives
// w = sum_i (scale 2^(i-1)) s_i + scale ((2^b - 1) / 2 - zero).
#ifndef REPARAM_SHIFTADD_UNIFORM_HPP
#define REPARAM_SHIFTADD_UNIFORM_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/shiftadd/detail/bcq_checks.hpp>
#include <reparam/shiftadd/formats.hpp>

namespace reparam::shiftadd {

/// Options of uniform quantization. group_size 0 = the whole row; groups run along the columns of
/// each row. symmetric: zero point fixed at 2^(bits-1) (see fit_uniform_group).
struct uniform_params {
  int bits = 4;
  index group_size = 128;
  bool symmetric = false;
};

/// Scale and zero point of one group: w = scale * (code - zero). zero is an integer stored as
/// float.
struct uniform_group {
  float scale = 0.f;
  float zero = 0.f;
};

/// Significant bits kept in a fitted scale: fp16 precision (10 stored + 1 implicit). This keeps
/// scale * (code - zero) and every partial sum of the BCQ conversion exact in float, which makes
/// to_binary_coded exact, and matches the fp16 scale that packed_size() counts.
inline constexpr int uniform_scale_bits = 11;

namespace detail {

/// Round to nearest, ties to even, independent of the FPU rounding mode (used for the scale and
/// the zero point, so a fitted group never depends on the environment). |x| <= 2^22.
inline float round_half_even(float x) noexcept {
  const float floor = std::floor(x);
  const float fraction = x - floor;                              // exact
  const bool is_odd = floor != 2.0f * std::floor(0.5f * floor);  // exact for integers
  const bool is_up = (fraction > 0.5f) | ((fraction == 0.5f) & is_odd);
  return floor + (is_up ? 1.0f : 0.0f);
}

/// Min and max of values[k * stride], k < count, starting from 0 (so lo <= 0 <= hi). Eight
/// lanes (k mod 8) so the contiguous case vectorizes; min and max are exact in any order.
inline void min_max_with_zero(const float* values, index count, index stride, float& lo,
                              float& hi) noexcept {
  float lows[8] = {};
  float highs[8] = {};
  const index blocks = stride == 1 ? count / 8 : 0;
  for (index block = 0; block < blocks; ++block) {
    for (int lane = 0; lane < 8; ++lane) {
      const float v = values[block * 8 + lane];
      lows[lane] = v < lows[lane] ? v : lows[lane];
      highs[lane] = v > highs[lane] ? v : highs[lane];
    }
  }
  for (index k = blocks * 8; k < count; ++k) {
    const float v = values[k * stride];
    lows[0] = v < lows[0] ? v : lows[0];
    highs[0] = v > highs[0] ? v : highs[0];
  }
  lo = *std::min_element(lows, lows + 8);
  hi = *std::max_element(highs, highs + 8);
}

/// Significant bits of a finite x != 0 (the bit length of the odd integer M with |x| = M 2^t);
/// also returns e with |x| = m 2^e, m in [0.5, 1), so x is a multiple of 2^(e - bits).
inline int significant_bits(float x, int& exponent) noexcept {
  auto mantissa = static_cast<std::uint32_t>(std::ldexp(std::frexp(std::fabs(x), &exponent), 24));
  int bits = 24;
  while ((mantissa & 1u) == 0) {
    mantissa >>= 1;
    --bits;
  }
  return bits;
}

/// x (> 0, finite) rounded to `bits` significant bits, ties to even.
inline float round_significand(float x, int bits) noexcept {
  int exponent = 0;
  const float mantissa = std::frexp(x, &exponent);  // [0.5, 1)
  return std::ldexp(round_half_even(std::ldexp(mantissa, bits)), exponent - bits);
}

}  // namespace detail

/// Min-max scale and zero point of a group of `count` values read at values[k * stride].
///  - asymmetric: range [lo, hi] = [min(min x, 0), max(max x, 0)], scale = (hi - lo) / (2^b - 1),
///    zero = round_half_even(-lo / scale) (an integer in [0, 2^b - 1]), so 0 is exactly
///    representable.
///  - symmetric (GPTQ's convention): m = max |x|, scale = 2 m / (2^b - 1), zero = 2^(b-1); the
///    codes cover [-m (2^b / (2^b - 1)), m (1 - 1 / (2^b - 1))] (the top is clipped by one step).
/// The scale is rounded to fp16 precision (uniform_scale_bits significant bits, float exponent
/// range). A zero group, or one whose scale would fall below FLT_MIN, uses the range [-1, 1]
/// (as GPTQ does), so the scale is always a normal float > 0 and 0 is reproduced exactly; never
/// NaN. Preconditions: count >= 1, bits in 1..8, finite values with |x| <= 2^100. No allocation.
inline uniform_group fit_uniform_group(const float* values, index count, index stride, int bits,
                                       bool symmetric) noexcept {
  float lo = 0.0f;
  float hi = 0.0f;
  detail::min_max_with_zero(values, count, stride, lo, hi);
  const auto max_code = static_cast<float>((1 << bits) - 1);
  if (symmetric) {
    hi = std::max(-lo, hi);
    lo = -hi;
  }
  float scale = (hi - lo) / max_code;
  if (!(scale >= std::numeric_limits<float>::min())) {
    lo = -1.0f;
    hi = 1.0f;
    scale = 2.0f / max_code;
  }
  uniform_group group;
  group.scale = detail::round_significand(scale, uniform_scale_bits);
  if (symmetric) {
    group.zero = static_cast<float>(1 << (bits - 1));
  } else {
    const float zero = detail::round_half_even(std::min(-lo / group.scale, max_code));
    group.zero = std::max(0.0f, std::min(zero, max_code));
  }
  return group;
}

/// clamp(round_half_even(value / scale) + zero, 0, 2^bits - 1), computed in float. The rounding is
/// std::nearbyint, i.e. ties to even in the default floating-point environment (the one every
/// reparam function assumes; it vectorizes, unlike a mode-independent emulation, which made
/// quantize_rtn 2.3x slower). Preconditions: bits in 1..8, g.scale > 0, value finite.
/// No allocation.
inline std::uint8_t quantize_uniform(float value, const uniform_group& g, int bits) noexcept {
  const auto max_code = static_cast<float>((1 << bits) - 1);
  // Clamping the quotient first keeps the rounding in range and changes no result: anything
  // beyond +-512 clamps to the same end code.
  const float quotient = std::max(-512.0f, std::min(value / g.scale, 512.0f));
  const float code = std::nearbyint(quotient) + g.zero;
  return static_cast<std::uint8_t>(std::max(0.0f, std::min(code, max_code)));
}

/// scale * (code - zero) in float.
inline float dequantize_uniform(std::uint8_t code, const uniform_group& g) noexcept {
  return g.scale * (static_cast<float>(code) - g.zero);
}

/// A uniformly quantized matrix W [rows, cols] (row-major [out, in]).
///
///   array   type           shape                      meaning
///   ------  -------------  -------------------------  ----------------------------------
///   codes   uint8          [rows, cols]               code in [0, 2^bits - 1]
///   groups  uniform_group  [rows, cols / group_size]  scale and zero of columns
///                                                     [g G, (g+1) G) of the row
struct uniform_matrix {
  index rows = 0;
  index cols = 0;
  int bits = 0;
  index group_size = 0;  // the actual group size (never 0)
  std::vector<std::uint8_t> codes;
  std::vector<uniform_group> groups;

  index groups_per_row() const noexcept { return group_size > 0 ? cols / group_size : 0; }
  const uniform_group& group_of(index row, index col) const noexcept {
    return groups[static_cast<std::size_t>(row * groups_per_row() + col / group_size)];
  }
  std::uint8_t code(index row, index col) const noexcept {
    return codes[static_cast<std::size_t>(row * cols + col)];
  }

  /// Dense W with W[r, c] = dequantize_uniform(code, group). Allocates.
  matrix<float> dequantize() const {
    matrix<float> out(rows, cols);
    for (index r = 0; r < rows; ++r) {
      for (index c = 0; c < cols; ++c) {
        out(r, c) = dequantize_uniform(code(r, c), group_of(r, c));
      }
    }
    return out;
  }

  /// Bytes a deployment stores: the codes packed at `bits` bits each (ceil(bits rows cols / 8)),
  /// per group an fp16 scale (2 bytes; fitted scales carry fp16 precision) and a bits-wide zero
  /// point (ceil(bits * groups / 8) bytes in total; counted for symmetric groups too, as GPTQ
  /// checkpoints store them).
  std::size_t packed_size() const noexcept {
    const auto b = static_cast<std::size_t>(bits);
    const auto weights = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
    const std::size_t group_count = groups.size();
    return (b * weights + 7) / 8 + 2 * group_count + (b * group_count + 7) / 8;
  }
};

namespace detail {

inline void check_uniform_params(const char* function, const uniform_params& params, index cols) {
  reparam::detail::check(params.bits >= 1 && params.bits <= 8, function, "bits ", params.bits,
                         " is outside [1, 8]");
  reparam::detail::check(params.group_size >= 0, function, "group_size ", params.group_size,
                         " is negative");
  const index size = params.group_size == 0 ? cols : params.group_size;
  reparam::detail::check(cols % size == 0, function, "group_size ", size, " does not divide cols ",
                         cols);
}

}  // namespace detail

/// Round-to-nearest baseline: per row and group of params.group_size columns (0 = the whole row),
/// fit_uniform_group on the weights, then quantize_uniform each weight. double weights are rounded
/// to float first.
/// Throws reparam::error for empty weights, bits outside 1..8, group_size negative or not dividing
/// cols, and any non-finite weight or |w| > 2^100 (named by (row, col)).
/// Allocates the result (and, for double weights, one row of float scratch).
template <class Derived>
uniform_matrix quantize_rtn(const Eigen::MatrixBase<Derived>& weights,
                            const uniform_params& params) {
  reparam::detail::static_check_input<Derived>();
  using scalar = typename Derived::Scalar;
  constexpr const char* function = "shiftadd::quantize_rtn";
  reparam::detail::check(weights.rows() >= 1 && weights.cols() >= 1, function, "weights shape ",
                         weights.rows(), "x", weights.cols(), " is empty");
  detail::check_uniform_params(function, params, weights.cols());
  detail::check_weights(function, weights);

  uniform_matrix out;
  out.rows = weights.rows();
  out.cols = weights.cols();
  out.bits = params.bits;
  out.group_size = params.group_size == 0 ? out.cols : params.group_size;
  const index groups = out.cols / out.group_size;
  out.codes.resize(static_cast<std::size_t>(out.rows * out.cols));
  out.groups.resize(static_cast<std::size_t>(out.rows * groups));

  std::vector<float> row_buffer;
  if constexpr (!std::is_same_v<scalar, float>) {
    row_buffer.resize(static_cast<std::size_t>(out.cols));
  }
  const index col_stride = weights.derived().colStride();
  for (index r = 0; r < out.rows; ++r) {
    const scalar* source = weights.derived().data() + r * weights.derived().rowStride();
    const float* row = nullptr;
    index stride = 1;
    if constexpr (std::is_same_v<scalar, float>) {
      row = source;
      stride = col_stride;
    } else {
      for (index c = 0; c < out.cols; ++c) {
        row_buffer[static_cast<std::size_t>(c)] = static_cast<float>(source[c * col_stride]);
      }
      row = row_buffer.data();
    }
    for (index g = 0; g < groups; ++g) {
      const float* first = row + g * out.group_size * stride;
      const uniform_group group =
          fit_uniform_group(first, out.group_size, stride, params.bits, params.symmetric);
      out.groups[static_cast<std::size_t>(r * groups + g)] = group;
      std::uint8_t* codes = out.codes.data() + r * out.cols + g * out.group_size;
      if (stride == 1) {
        for (index k = 0; k < out.group_size; ++k) {
          codes[k] = quantize_uniform(first[k], group, params.bits);
        }
      } else {
        for (index k = 0; k < out.group_size; ++k) {
          codes[k] = quantize_uniform(first[k * stride], group, params.bits);
        }
      }
    }
  }
  return out;
}

/// Exact conversion to the binary-coded format with offsets (scale_axis::rows, the same group
/// size): alpha_i = scale 2^(i-1), offset = scale ((2^b - 1) / 2 - zero), sign bit i = bit i of
/// the code. reconstruct(to_binary_coded(u)) == u.dequantize() bit for bit: every partial sum is
/// scale times a multiple of 1/2 below 2^(b+1), exact in float when the scale has at most
/// 23 - bits significant bits (fitted scales have 11).
/// Throws reparam::error for an inconsistent u (shape, bits outside 1..8, group_size not dividing
/// cols, array sizes, codes >= 2^bits) and for a group that breaks exactness (scale not finite and
/// > 0, more than 23 - bits significant bits, scale / 2 not exact, scale >= 2^(127 - bits), zero
/// not an integer in [0, 2^bits - 1]). Allocates the result.
inline binary_coded_matrix to_binary_coded(const uniform_matrix& u) {
  constexpr const char* function = "shiftadd::to_binary_coded";
  using reparam::detail::check;
  check(u.rows >= 1 && u.cols >= 1, function, "shape ", u.rows, "x", u.cols, " is empty");
  check(u.bits >= 1 && u.bits <= 8, function, "bits ", u.bits, " is outside [1, 8]");
  check(u.group_size >= 1 && u.cols % u.group_size == 0, function, "group_size ", u.group_size,
        " does not divide cols ", u.cols);
  const index groups = u.cols / u.group_size;
  check(u.codes.size() == static_cast<std::size_t>(u.rows * u.cols), function, "codes has ",
        u.codes.size(), " entries, expected rows * cols = ", u.rows * u.cols);
  check(u.groups.size() == static_cast<std::size_t>(u.rows * groups), function, "groups has ",
        u.groups.size(), " entries, expected ", u.rows * groups);
  const int max_code = (1 << u.bits) - 1;
  for (std::size_t i = 0; i < u.codes.size(); ++i) {
    check(u.codes[i] <= max_code, function, "code ", static_cast<int>(u.codes[i]),
          " at flat index ", i, " exceeds 2^bits - 1 = ", max_code);
  }
  for (index r = 0; r < u.rows; ++r) {
    for (index g = 0; g < groups; ++g) {
      const uniform_group& group = u.groups[static_cast<std::size_t>(r * groups + g)];
      const float scale = group.scale;
      check(std::isfinite(scale) && scale > 0.0f, function, "group (", r, ", ", g, ") scale ",
            scale, " is not finite and > 0");
      int exponent = 0;
      const int bits = detail::significant_bits(scale, exponent);
      const int lowest = exponent - bits;  // scale is a multiple of 2^lowest
      check(bits <= 23 - u.bits && lowest - 1 >= -149 && exponent <= 127 - u.bits, function,
            "group (", r, ", ", g, ") scale ", scale, " (", bits,
            " significant bits) cannot be converted exactly at ", u.bits,
            " bits: it needs at most ", 23 - u.bits,
            " significant bits (fitted scales have 11) and 2^-148 <= scale < 2^", 127 - u.bits);
      check(group.zero >= 0.0f && group.zero <= static_cast<float>(max_code) &&
                group.zero == std::floor(group.zero),
            function, "group (", r, ", ", g, ") zero ", group.zero, " is not an integer in [0, ",
            max_code, "]");
    }
  }

  bcq_shape shape;
  shape.rows = u.rows;
  shape.cols = u.cols;
  shape.bits = u.bits;
  shape.group_size = u.group_size;
  shape.axis = scale_axis::rows;
  shape.has_offsets = true;
  binary_coded_matrix out(shape);
  for (index r = 0; r < u.rows; ++r) {
    for (index g = 0; g < groups; ++g) {
      const uniform_group& group = u.groups[static_cast<std::size_t>(r * groups + g)];
      float* alphas = out.scales_of(r, g);
      for (int i = 0; i < u.bits; ++i) {
        alphas[i] = std::ldexp(group.scale, i - 1);  // exact
      }
      // scale ((2^b - 1) / 2 - zero) = (scale (2^b - 1 - 2 zero)) / 2, both steps exact.
      out.offsets()[static_cast<std::size_t>(r * groups + g)] =
          std::ldexp(group.scale * (static_cast<float>(max_code) - 2.0f * group.zero), -1);
    }
    for (index c = 0; c < u.cols; ++c) {
      const unsigned code = u.code(r, c);
      for (int p = 0; p < u.bits; ++p) {
        if (((code >> p) & 1u) != 0) {
          out.plane_row(p, r)[c >> 5] |= std::uint32_t{1} << (c & 31);
        }
      }
    }
  }
  return out;
}

}  // namespace reparam::shiftadd

#endif  // REPARAM_SHIFTADD_UNIFORM_HPP

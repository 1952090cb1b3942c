// SPDX-License-Identifier: Apache-2.0
// Uniform (affine) quantizers: the rounding modes, the granularities (per tensor, per row, per
// column, per group), range -> (scale, zero point), integer codes, dequantization and
// fake quantization, and dynamic per-row (per-token) quantization of activations.
//
// Convention (RepQ-ViT, AWQ, OmniQuant, GPTQ; docs in research/scale_and_gumbel.md A1):
//   q = clamp(round(x / scale) + zero_point, code_min, code_max),  x_hat = scale * (q - zero_point)
// asymmetric: codes [0, 2^b - 1]; symmetric (SmoothQuant "restricted range"):
// codes [-(2^(b-1) - 1), 2^(b-1) - 1], zero_point 0.
//
// Rounding is round-half-to-even by default, which is what torch.round does, so codes match the
// PyTorch references bit for bit. std::round (half away from zero), half up (llama.cpp's
// trunc(x + 0.5) for positive x) and floor are options.
//
// Arithmetic (bit-exact parity with PyTorch): x / scale is a true division in the input Scalar
// (never x * (1 / scale)); for double input the float scale and zero point are widened and the
// whole formula runs in double. Every step after the division is exact except the final product
// scale * (q - zero_point), so x_hat carries exactly one rounding of that product.
#ifndef REPARAM_SCALE_QUANTIZER_HPP
#define REPARAM_SCALE_QUANTIZER_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/scalar_traits.hpp>
#include <reparam/core/views.hpp>

namespace reparam::scale {

/// How x / scale is rounded to an integer.
enum class rounding {
  half_even,            ///< ties to even (torch.round, std::nearbyint in FE_TONEAREST); default
  half_away_from_zero,  ///< ties away from zero (std::round)
  half_up,              ///< ties towards +inf (floor(x + 0.5))
  floor,                ///< towards -inf
};

namespace detail {

/// 2^(digits - 1) (2^23 for float, 2^52 for double): every value with at least this magnitude is
/// an integer already, and below it floor(x) + 0.5 and floor(x) + 1 are exact.
template <class Scalar>
constexpr Scalar exact_integer_bound() noexcept {
  return Scalar(1) / std::numeric_limits<Scalar>::epsilon();
}

/// round(x, Mode) with the mode fixed at compile time (the loops dispatch once per call). Uses
/// only floor, exact additions and comparisons, so it does not depend on the floating-point
/// environment. x is compared with the midpoint floor(x) + 0.5 (x - floor(x) would not be exact
/// for small negative x: -0.49999997f - -1 rounds to 0.5f). The result carries the sign of x
/// (-0.3 -> -0.0), like std::nearbyint.
template <rounding Mode, class Scalar>
inline Scalar round_as(Scalar x) noexcept {
  if (!(std::fabs(x) < exact_integer_bound<Scalar>())) {
    return x;  // already an integer, an infinity or NaN
  }
  const Scalar down = std::floor(x);
  if constexpr (Mode == rounding::floor) {
    // copysign: without SSE4.1, GCC expands floor inline as trunc(x) - (trunc(x) > x), and
    // 0.0 - 0.0 is -0.0 under FE_DOWNWARD; floor(x) always has the sign of x.
    return std::copysign(down, x);
  } else {
    const auto half = Scalar(0.5);
    const Scalar middle = down + half;  // exact
    bool is_up = false;
    if constexpr (Mode == rounding::half_even) {
      // down is odd iff it differs from 2 floor(down / 2) (exact for these integers).
      const bool is_odd = down != Scalar(2) * std::floor(half * down);
      is_up = (x > middle) | ((x == middle) & is_odd);
    } else if constexpr (Mode == rounding::half_away_from_zero) {
      is_up = (x > middle) | ((x == middle) & (x > Scalar(0)));
    } else {
      is_up = x >= middle;
    }
    return std::copysign(down + (is_up ? Scalar(1) : Scalar(0)), x);
  }
}

/// Calls body(std::integral_constant<rounding, mode>{}) so that loops see the mode as a constant.
template <class Body>
inline decltype(auto) with_rounding(rounding mode, Body&& body) {
  switch (mode) {
    case rounding::half_away_from_zero:
      return body(std::integral_constant<rounding, rounding::half_away_from_zero>{});
    case rounding::half_up:
      return body(std::integral_constant<rounding, rounding::half_up>{});
    case rounding::floor:
      return body(std::integral_constant<rounding, rounding::floor>{});
    case rounding::half_even:
    default:
      return body(std::integral_constant<rounding, rounding::half_even>{});
  }
}

}  // namespace detail

/// Rounds x with `mode`, independent of the floating-point environment. Exact for every finite x
/// (the result is the mathematically rounded value). Scalar is float or double.
/// Integers (every |x| >= 2^23 for float, 2^52 for double), infinities and NaN are returned
/// unchanged; a zero result has the sign of x (-0.3 -> -0.0, like std::nearbyint).
template <class Scalar>
Scalar round(Scalar x, rounding mode) noexcept {
  static_assert(is_supported_scalar_v<Scalar>,
                "reparam::scale::round: Scalar must be float or double");
  return detail::with_rounding(mode,
                               [x](auto tag) { return detail::round_as<decltype(tag)::value>(x); });
}

/// Which entries of a [rows, cols] matrix share one (scale, zero_point) "slot".
enum class granularity {
  per_tensor,  ///< 1 slot
  per_row,     ///< `rows` slots: weights per output channel; activations per token
  per_column,  ///< `cols` slots: activations per input channel (RepQ-ViT's post-LayerNorm)
  per_group,   ///< rows * (cols / group_size) slots, groups of group_size along each row,
               ///< slot index row * (cols / group_size) + col / group_size (AWQ g128, ggml)
};

/// What a quantizer is, before calibration gives it numbers.
struct uniform_spec {
  int bits = 8;  ///< 2..16 (asymmetric may also use 1)
  bool is_symmetric = false;
  granularity axis = granularity::per_tensor;
  index group_size = 0;  ///< per_group only; must divide cols
  rounding mode = rounding::half_even;
};

/// A calibrated uniform quantizer. scale and zero_point have one entry per slot, in slot order;
/// zero_point holds integers (as float), all 0 when symmetric.
/// (fake_quantize also accepts a non-integer zero point, e.g. RepQ-ViT's official un-rounded
/// mean zero point, and applies the formula as written; quantize and dequantize, which produce or
/// read integer codes, require integer zero points.)
struct uniform_quantizer {
  uniform_spec spec;
  vector<float> scale;       ///< > 0 and finite
  vector<float> zero_point;  ///< integer valued

  int code_min() const noexcept;  ///< 0, or -(2^(b-1) - 1) when symmetric
  int code_max() const noexcept;  ///< 2^b - 1, or 2^(b-1) - 1 when symmetric
};

namespace detail {

/// The code range of `spec` (0 for bits outside 1..16, so an invalid spec never shifts too far).
inline int code_min_of(const uniform_spec& spec) noexcept {
  if (spec.bits < 1 || spec.bits > 16) {
    return 0;
  }
  return spec.is_symmetric ? -((1 << (spec.bits - 1)) - 1) : 0;
}

inline int code_max_of(const uniform_spec& spec) noexcept {
  if (spec.bits < 1 || spec.bits > 16) {
    return 0;
  }
  return spec.is_symmetric ? (1 << (spec.bits - 1)) - 1 : (1 << spec.bits) - 1;
}

}  // namespace detail

inline int uniform_quantizer::code_min() const noexcept { return detail::code_min_of(spec); }
inline int uniform_quantizer::code_max() const noexcept { return detail::code_max_of(spec); }

namespace detail {

/// Validates the fields of `spec` that do not depend on a shape: bits (2..16, 1 only asymmetric),
/// the enums, and group_size >= 1 for per_group.
inline void check_uniform_spec(const uniform_spec& spec, const char* function) {
  const int min_bits = spec.is_symmetric ? 2 : 1;
  reparam::detail::check(spec.bits >= min_bits && spec.bits <= 16, function, "bits ", spec.bits,
                         " is outside [", min_bits, ", 16] (",
                         spec.is_symmetric ? "symmetric" : "asymmetric", ")");
  const auto mode = static_cast<int>(spec.mode);
  reparam::detail::check(mode >= 0 && mode <= static_cast<int>(rounding::floor), function,
                         "rounding mode ", mode, " is not a scale::rounding value");
  const auto axis = static_cast<int>(spec.axis);
  reparam::detail::check(axis >= 0 && axis <= static_cast<int>(granularity::per_group), function,
                         "axis ", axis, " is not a scale::granularity value");
  if (spec.axis == granularity::per_group) {
    reparam::detail::check(spec.group_size >= 1, function, "group_size ", spec.group_size,
                           " must be >= 1 for per_group");
  }
}

}  // namespace detail

/// Number of slots of `spec` for a [rows, cols] operand. Throws reparam::error naming `function`
/// if group_size does not divide cols (per_group) or the spec is invalid (bits out of range).
inline index slot_count(const uniform_spec& spec, index rows, index cols, const char* function) {
  detail::check_uniform_spec(spec, function);
  reparam::detail::check(rows >= 0 && cols >= 0, function, "shape [", rows, ", ", cols,
                         "] is negative");
  switch (spec.axis) {
    case granularity::per_row:
      return rows;
    case granularity::per_column:
      return cols;
    case granularity::per_group:
      reparam::detail::check(cols % spec.group_size == 0, function, "group_size ", spec.group_size,
                             " does not divide cols ", cols);
      return rows * (cols / spec.group_size);
    case granularity::per_tensor:
    default:
      return 1;
  }
}

/// The slot of entry (row, col) (no checks).
inline index slot_of(const uniform_spec& spec, index cols, index row, index col) noexcept {
  switch (spec.axis) {
    case granularity::per_row:
      return row;
    case granularity::per_column:
      return col;
    case granularity::per_group:
      return row * (cols / spec.group_size) + col / spec.group_size;
    case granularity::per_tensor:
    default:
      return 0;
  }
}

/// Smallest scale a range maps to (a zero-width range, e.g. an all-zero channel, gets this scale,
/// so such a slot reproduces its constant exactly when the constant is 0).
inline constexpr float min_scale = 1e-8f;

namespace detail {

/// One slot's parameters.
struct slot_params {
  float scale = 1.0f;
  float zero_point = 0.0f;
};

/// The range rule of make_uniform_quantizer for one slot, computed in float like the PyTorch
/// references (lo <= hi, both finite; the caller checks that the scale comes out finite).
inline slot_params params_from_range(float lo, float hi, int bits, bool is_symmetric) noexcept {
  slot_params p;
  if (is_symmetric) {
    const auto levels = static_cast<float>((1 << (bits - 1)) - 1);
    const float magnitude = std::max(std::fabs(lo), std::fabs(hi));
    p.scale = std::max(magnitude / levels, min_scale);
    p.zero_point = 0.0f;
    return p;
  }
  const auto levels = static_cast<float>((1 << bits) - 1);
  const float low = std::min(lo, 0.0f);
  const float high = std::max(hi, 0.0f);
  p.scale = std::max((high - low) / levels, min_scale);
  // -low / scale is in [0, levels] up to one rounding, so the clamp only guards that rounding;
  // + 0.0f turns a -0.0 into +0.0.
  const float zero = round_as<rounding::half_even>(-low / p.scale) + 0.0f;
  p.zero_point = std::min(std::max(zero, 0.0f), levels);
  return p;
}

/// Largest |x| a calibrator or dynamic quantizer accepts: the float range width hi - lo of any
/// two such values is finite.
inline constexpr float max_range_magnitude = std::numeric_limits<float>::max() / 2.0f;

/// Base pointer and row stride of a validated dense input (row-major, or a single column).
template <class Scalar>
struct input_rows {
  const Scalar* data = nullptr;
  index row_stride = 0;
  const Scalar* row(index r) const noexcept { return data + r * row_stride; }
};

template <class Derived>
input_rows<typename Derived::Scalar> rows_of(const Eigen::MatrixBase<Derived>& x,
                                             const char* function) {
  reparam::detail::check(x.cols() <= 1 || x.derived().colStride() == 1, function,
                         "x must have unit inner stride (got ", x.derived().colStride(), ")");
  return {x.derived().data(), x.derived().rowStride()};
}

/// Throws (before anything is written) if an entry of rows `rows` of x is not finite, or, when
/// `limit` is given, exceeds it in magnitude; names the entry.
template <class Scalar>
void check_finite_rows(const char* function, const char* argument, input_rows<Scalar> x,
                       row_range rows, index cols, double limit = -1.0) {
  for (index r = rows.begin; r < rows.end; ++r) {
    const Scalar* row = x.row(r);
    for (index c = 0; c < cols; ++c) {
      const auto v = static_cast<double>(row[c]);
      if (!std::isfinite(v)) {
        reparam::detail::raise<error>(reparam::detail::concat(
            function, ": ", argument, " has non-finite value ", v, " at (", r, ", ", c, ")"));
      }
      if (limit >= 0.0 && std::fabs(v) > limit) {
        reparam::detail::raise<error>(reparam::detail::concat(
            function, ": ", argument, " value ", v, " at (", r, ", ", c,
            ") is too large for a float quantizer range (|x| <= ", limit, ")"));
      }
    }
  }
}

/// Slots [first, last) that rows `rows` of a [*, cols] operand use.
inline row_range slots_of_rows(const uniform_spec& spec, index cols, row_range rows,
                               index slots) noexcept {
  switch (spec.axis) {
    case granularity::per_row:
      return rows;
    case granularity::per_group: {
      const index per_row = cols / spec.group_size;
      return {rows.begin * per_row, rows.end * per_row};
    }
    case granularity::per_tensor:
    case granularity::per_column:
    default:
      return {0, slots};
  }
}

/// Validates q for an operand [rows, cols] (spec, slot counts, scales > 0 and finite, zero points
/// finite and, if `is_integer_zero`, integers), looking at the slots that rows `used` touch.
inline void check_quantizer(const uniform_quantizer& q, index rows, index cols, row_range used,
                            bool is_integer_zero, const char* function) {
  const index slots = slot_count(q.spec, rows, cols, function);
  reparam::detail::check(q.scale.size() == slots && q.zero_point.size() == slots, function,
                         "quantizer has ", q.scale.size(), " scales and ", q.zero_point.size(),
                         " zero points, but a [", rows, ", ", cols, "] operand needs ", slots,
                         " slots");
  const row_range range = slots_of_rows(q.spec, cols, used, slots);
  for (index s = range.begin; s < range.end; ++s) {
    const float scale = q.scale[s];
    const float zero = q.zero_point[s];
    reparam::detail::check(std::isfinite(scale) && scale > 0.0f, function, "scale ", scale,
                           " of slot ", s, " must be > 0 and finite");
    reparam::detail::check(std::isfinite(zero), function, "zero_point ", zero, " of slot ", s,
                           " is not finite");
    if (is_integer_zero) {
      reparam::detail::check(std::floor(zero) == zero, function, "zero_point ", zero, " of slot ",
                             s, " is not an integer (integer codes need one)");
    }
  }
}

/// The code of x (before the int conversion), in Scalar: clamp(round(x / s) + z, lo, hi).
template <rounding Mode, class Scalar>
inline Scalar code_of(Scalar x, Scalar scale, Scalar zero, Scalar code_min,
                      Scalar code_max) noexcept {
  const Scalar code = round_as<Mode>(x / scale) + zero;
  return std::min(std::max(code, code_min), code_max);
}

/// Calls kernel(is_per_column, in_row, out_row, count, scale, zero) for every run of entries of
/// rows `rows` that share parameters; with is_per_column (std::true_type) entry j of the run uses
/// scale[j], zero[j], otherwise scale[0], zero[0].
template <class In, class Out, class Kernel>
void for_each_run(const In* in, index in_stride, Out* out, index out_stride, index cols,
                  row_range rows, const uniform_spec& spec, const float* scale, const float* zero,
                  Kernel&& kernel) {
  for (index r = rows.begin; r < rows.end; ++r) {
    const In* in_row = in + r * in_stride;
    Out* out_row = out + r * out_stride;
    switch (spec.axis) {
      case granularity::per_row:
        kernel(std::false_type{}, in_row, out_row, cols, scale + r, zero + r);
        break;
      case granularity::per_column:
        kernel(std::true_type{}, in_row, out_row, cols, scale, zero);
        break;
      case granularity::per_group: {
        const index size = spec.group_size;
        const index groups = cols / size;
        for (index g = 0; g < groups; ++g) {
          kernel(std::false_type{}, in_row + g * size, out_row + g * size, size,
                 scale + r * groups + g, zero + r * groups + g);
        }
        break;
      }
      case granularity::per_tensor:
      default:
        kernel(std::false_type{}, in_row, out_row, cols, scale, zero);
        break;
    }
  }
}

/// Calls entry(j, s, z) for j in [0, count) with entry j's parameters converted to Scalar:
/// scale[j], zero[j] when IsPerColumn, otherwise scale[0], zero[0] (one run of for_each_run).
template <class Scalar, bool IsPerColumn, class Entry>
inline void for_each_entry(index count, const float* scale, const float* zero, Entry&& entry) {
  constexpr index step = IsPerColumn ? 1 : 0;
  for (index j = 0; j < count; ++j) {
    entry(j, static_cast<Scalar>(scale[j * step]), static_cast<Scalar>(zero[j * step]));
  }
}

/// x_hat = scale * (code - zero) over `count` entries, in Scalar (out may equal in).
template <rounding Mode, class Scalar, bool IsPerColumn>
inline void fake_quantize_run(const Scalar* in, Scalar* out, index count, const float* scale,
                              const float* zero, Scalar code_min, Scalar code_max) noexcept {
  for_each_entry<Scalar, IsPerColumn>(count, scale, zero, [&](index j, Scalar s, Scalar z) {
    out[j] = s * (code_of<Mode>(in[j], s, z, code_min, code_max) - z);
  });
}

/// out(r, c) = entry(mode, x(r, c), s, z) over rows `rows` of x [*, cols], with (s, z) the
/// entry's slot parameters converted to Scalar and mode q.spec.mode as a
/// std::integral_constant<rounding, ...> (validated arguments).
template <class Scalar, class Out, class Entry>
void map_entries(input_rows<Scalar> x, index cols, const uniform_quantizer& q, Out* out,
                 index out_stride, row_range rows, Entry&& entry) {
  with_rounding(q.spec.mode, [&](auto mode) {
    for_each_run(x.data, x.row_stride, out, out_stride, cols, rows, q.spec, q.scale.data(),
                 q.zero_point.data(),
                 [&](auto is_per_column, const Scalar* in_run, Out* out_run, index count,
                     const float* scale, const float* zero) {
                   for_each_entry<Scalar, decltype(is_per_column)::value>(
                       count, scale, zero, [&](index j, Scalar s, Scalar z) {
                         out_run[j] = entry(mode, in_run[j], s, z);
                       });
                 });
  });
}

/// The body of fake_quantize_rows (validated arguments; out may equal x).
template <class Scalar>
void fake_quantize_unchecked(input_rows<Scalar> x, index cols, const uniform_quantizer& q,
                             Scalar* out, index out_stride, row_range rows) noexcept {
  const auto code_min = static_cast<Scalar>(q.code_min());
  const auto code_max = static_cast<Scalar>(q.code_max());
  map_entries(x, cols, q, out, out_stride, rows, [&](auto mode, Scalar v, Scalar s, Scalar z) {
    return s * (code_of<decltype(mode)::value>(v, s, z, code_min, code_max) - z);
  });
}

template <class Derived, class OutScalar>
void check_same_shape(const char* function, const Eigen::MatrixBase<Derived>& x,
                      const matrix_ref<OutScalar>& out, const char* out_name) {
  reparam::detail::check(out.rows() == x.rows() && out.cols() == x.cols(), function, out_name,
                         " is [", out.rows(), ", ", out.cols(), "] but x is [", x.rows(), ", ",
                         x.cols(), "]");
}

/// The checks of a calibrated quantizer applied to rows `rows` of x (after the output's shape
/// and the row range): q fits x (integer zero points when `is_integer_zero`) and x is finite in
/// those rows. Returns x's rows.
template <class Derived>
input_rows<typename Derived::Scalar> check_quantizer_input(const Eigen::MatrixBase<Derived>& x,
                                                           const uniform_quantizer& q,
                                                           row_range rows, bool is_integer_zero,
                                                           const char* function) {
  check_quantizer(q, x.rows(), x.cols(), rows, is_integer_zero, function);
  const input_rows<typename Derived::Scalar> in = rows_of(x, function);
  check_finite_rows(function, "x", in, rows, x.cols());
  return in;
}

/// fake_quantize_rows with its checks, reporting as `function`.
template <class Derived>
void fake_quantize_checked(const Eigen::MatrixBase<Derived>& x, const uniform_quantizer& q,
                           matrix_ref<typename Derived::Scalar> out, row_range rows,
                           const char* function) {
  reparam::detail::static_check_input<Derived>();
  check_same_shape(function, x, out, "out");
  reparam::detail::check_row_range(function, rows, x.rows());
  const auto in = check_quantizer_input(x, q, rows, false, function);
  fake_quantize_unchecked(in, x.cols(), q, out.data(), out.outerStride(), rows);
}

}  // namespace detail

/// Scale and zero point per slot from a range [lo, hi] per slot (vectors of slot_count entries).
/// Asymmetric: the range is first widened to include 0 (GPTQ/AWQ), so zero_point is in
/// [0, 2^b - 1] and 0 is exactly representable; scale = (hi - lo) / (2^b - 1),
/// zero_point = round_half_even(-lo / scale). Symmetric: scale = max(|lo|, |hi|) / (2^(b-1) - 1).
/// Both: scale = max(scale, min_scale). Throws reparam::error on bits out of range, size
/// mismatch, lo > hi or non-finite bounds.
/// Computed in float, as the PyTorch references do. Also throws on empty vectors and on a range
/// so wide that (hi - lo) overflows float. Allocates the result; thread safe.
inline uniform_quantizer make_uniform_quantizer(const uniform_spec& spec, const vector<float>& lo,
                                                const vector<float>& hi) {
  constexpr const char* function = "scale::make_uniform_quantizer";
  detail::check_uniform_spec(spec, function);
  reparam::detail::check(lo.size() == hi.size(), function, "lo has ", lo.size(),
                         " entries but hi has ", hi.size());
  reparam::detail::check(lo.size() > 0, function, "lo and hi are empty (no slots)");
  const index slots = lo.size();
  uniform_quantizer q;
  q.spec = spec;
  q.scale.resize(slots);
  q.zero_point.resize(slots);
  for (index s = 0; s < slots; ++s) {
    reparam::detail::check(std::isfinite(lo[s]) && std::isfinite(hi[s]), function, "slot ", s,
                           " has non-finite range [", lo[s], ", ", hi[s], "]");
    reparam::detail::check(lo[s] <= hi[s], function, "slot ", s, " has lo ", lo[s], " > hi ",
                           hi[s]);
    const detail::slot_params p =
        detail::params_from_range(lo[s], hi[s], spec.bits, spec.is_symmetric);
    reparam::detail::check(std::isfinite(p.scale), function, "slot ", s, " range [", lo[s], ", ",
                           hi[s], "] is too wide: its scale overflows float");
    q.scale[s] = p.scale;
    q.zero_point[s] = p.zero_point;
  }
  return q;
}

/// Integer codes (row-major, like every reparam matrix).
using code_matrix = Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using code_matrix_ref = Eigen::Ref<code_matrix, 0, Eigen::OuterStride<>>;

/// codes = clamp(round(x / scale) + zero_point, code_min, code_max) per entry with its slot's
/// parameters. x is [rows, cols] float or double, codes is sized [rows, cols] by the caller.
/// Throws reparam::error on shape mismatch, a quantizer whose slot count does not fit x, or a
/// non-finite x (checked before anything is written). No allocation.
/// Also throws on a scale <= 0 or non-finite, or a non-integer zero point. An empty x is a no-op.
/// Thread safe (writes only `codes`).
template <class Derived>
void quantize(const Eigen::MatrixBase<Derived>& x, const uniform_quantizer& q,
              code_matrix_ref codes) {
  reparam::detail::static_check_input<Derived>();
  using scalar_type = typename Derived::Scalar;
  constexpr const char* function = "scale::quantize";
  reparam::detail::check(codes.rows() == x.rows() && codes.cols() == x.cols(), function,
                         "codes is [", codes.rows(), ", ", codes.cols(), "] but x is [", x.rows(),
                         ", ", x.cols(), "]");
  const row_range rows = all_rows(x.rows());
  const auto in = detail::check_quantizer_input(x, q, rows, true, function);
  const auto code_min = static_cast<scalar_type>(q.code_min());
  const auto code_max = static_cast<scalar_type>(q.code_max());
  detail::map_entries(in, x.cols(), q, codes.data(), codes.outerStride(), rows,
                      [&](auto mode, scalar_type v, scalar_type s, scalar_type z) {
                        return static_cast<std::int32_t>(
                            detail::code_of<decltype(mode)::value>(v, s, z, code_min, code_max));
                      });
}

/// out = scale * (codes - zero_point), computed in float (one rounding). Same checks.
/// codes has an integer Scalar (std::int32_t as quantize writes, or any integral type); every
/// code must lie in [code_min, code_max] (checked before writing). No allocation; thread safe.
template <class Derived>
void dequantize(const Eigen::MatrixBase<Derived>& codes, const uniform_quantizer& q,
                matrix_ref<float> out) {
  using code_type = typename Derived::Scalar;
  static_assert(std::is_integral_v<code_type>,
                "reparam::scale::dequantize: codes must have an integer Scalar (code_matrix)");
  static_assert((Derived::Flags & Eigen::DirectAccessBit) != 0,
                "reparam: pass stored data, not an expression; call .eval() first");
  static_assert((Derived::Flags & Eigen::RowMajorBit) != 0 || Derived::RowsAtCompileTime == 1 ||
                    Derived::ColsAtCompileTime == 1,
                "reparam: codes must be RowMajor; use reparam::scale::code_matrix");
  constexpr const char* function = "scale::dequantize";
  reparam::detail::check(out.rows() == codes.rows() && out.cols() == codes.cols(), function,
                         "out is [", out.rows(), ", ", out.cols(), "] but codes is [", codes.rows(),
                         ", ", codes.cols(), "]");
  const row_range rows = all_rows(codes.rows());
  detail::check_quantizer(q, codes.rows(), codes.cols(), rows, true, function);
  const detail::input_rows<code_type> in = detail::rows_of(codes, function);
  const int code_min = q.code_min();
  const int code_max = q.code_max();
  for (index r = 0; r < codes.rows(); ++r) {
    for (index c = 0; c < codes.cols(); ++c) {
      const auto code = static_cast<long long>(in.row(r)[c]);
      reparam::detail::check(code >= code_min && code <= code_max, function, "code ", code, " at (",
                             r, ", ", c, ") is outside [", code_min, ", ", code_max, "]");
    }
  }
  detail::for_each_run(in.data, in.row_stride, out.data(), out.outerStride(), codes.cols(), rows,
                       q.spec, q.scale.data(), q.zero_point.data(),
                       [](auto is_per_column, const code_type* in_run, float* out_run, index count,
                          const float* scale, const float* zero) {
                         detail::for_each_entry<float, decltype(is_per_column)::value>(
                             count, scale, zero, [&](index j, float s, float z) {
                               out_run[j] = s * (static_cast<float>(in_run[j]) - z);
                             });
                       });
}

/// out = dequantize(quantize(x)) without materializing codes; out may alias x (same object).
/// Scalar of out equals Scalar of x. Rows [rows.begin, rows.end) only in the _rows form (safe on
/// disjoint ranges). No allocation.
/// out is [rows, cols] like x in both forms (the _rows form writes only its rows). Throws
/// reparam::error, before writing, on a shape mismatch, a bad row range, a quantizer that does
/// not fit x (slot count, scale <= 0 or non-finite, zero point non-finite; a non-integer zero
/// point is accepted and used as written), or a non-finite x in the rows processed. For float x
/// this equals dequantize(quantize(x)) bit for bit; for double x it is computed in double.
template <class Derived>
void fake_quantize(const Eigen::MatrixBase<Derived>& x, const uniform_quantizer& q,
                   matrix_ref<typename Derived::Scalar> out) {
  detail::fake_quantize_checked(x, q, out, all_rows(x.rows()), "scale::fake_quantize");
}
template <class Derived>
void fake_quantize_rows(const Eigen::MatrixBase<Derived>& x, const uniform_quantizer& q,
                        matrix_ref<typename Derived::Scalar> out, row_range rows) {
  detail::fake_quantize_checked(x, q, out, rows, "scale::fake_quantize_rows");
}

/// Allocating convenience: returns dequantize(quantize(x)).
/// (Computed as fake_quantize, in the Scalar of x; same checks.)
template <class Derived>
matrix<typename Derived::Scalar> make_fake_quantized(const Eigen::MatrixBase<Derived>& x,
                                                     const uniform_quantizer& q) {
  matrix<typename Derived::Scalar> out(x.rows(), x.cols());
  fake_quantize(x, q, out);
  return out;
}

namespace detail {

/// fake_quantize_dynamic_rows with its checks, reporting as `function`.
template <class Derived>
void fake_quantize_dynamic_checked(const Eigen::MatrixBase<Derived>& x, const uniform_spec& spec,
                                   matrix_ref<typename Derived::Scalar> out, row_range rows,
                                   const char* function) {
  reparam::detail::static_check_input<Derived>();
  using scalar_type = typename Derived::Scalar;
  check_same_shape(function, x, out, "out");
  reparam::detail::check_row_range(function, rows, x.rows());
  slot_count(spec, x.rows(), x.cols(), function);
  reparam::detail::check(
      spec.axis == granularity::per_row || spec.axis == granularity::per_group, function,
      "axis must be per_row or per_group (dynamic slots lie within one row), got axis ",
      static_cast<int>(spec.axis));
  const input_rows<scalar_type> in = rows_of(x, function);
  check_finite_rows(function, "x", in, rows, x.cols(), static_cast<double>(max_range_magnitude));
  const index cols = x.cols();
  const index size = spec.axis == granularity::per_group ? spec.group_size : cols;
  const index runs = size > 0 ? cols / size : 0;
  const auto code_min = static_cast<scalar_type>(code_min_of(spec));
  const auto code_max = static_cast<scalar_type>(code_max_of(spec));
  scalar_type* out_data = out.data();
  const index out_stride = out.outerStride();
  with_rounding(spec.mode, [&](auto mode) {
    for (index r = rows.begin; r < rows.end; ++r) {
      for (index g = 0; g < runs; ++g) {
        const scalar_type* in_run = in.row(r) + g * size;
        scalar_type* out_run = out_data + r * out_stride + g * size;
        scalar_type lo = in_run[0];
        scalar_type hi = in_run[0];
        for (index j = 1; j < size; ++j) {
          lo = std::min(lo, in_run[j]);
          hi = std::max(hi, in_run[j]);
        }
        const slot_params p = params_from_range(static_cast<float>(lo), static_cast<float>(hi),
                                                spec.bits, spec.is_symmetric);
        fake_quantize_run<decltype(mode)::value, scalar_type, false>(
            in_run, out_run, size, &p.scale, &p.zero_point, code_min, code_max);
      }
    }
  });
}

}  // namespace detail

/// Dynamic quantization (SmoothQuant per-token, OmniQuant a_dynamic): each slot's range is the
/// min/max of its own entries in x, computed on the fly; spec.axis must be per_row or per_group
/// (slots within one row, so rows are independent and the _rows form is safe on disjoint
/// ranges). out may alias x. No allocation.
/// Each slot's (scale, zero point) is exactly make_uniform_quantizer's for the range
/// [float(min), float(max)] of the slot (widened to include 0 when asymmetric, min_scale floor),
/// so the result equals calibrate_minmax per row followed by fake_quantize. Throws
/// reparam::error, before writing, on shape mismatch, a bad row range, a bad spec (bits,
/// group_size not dividing cols, another axis), a non-finite x or |x| > FLT_MAX / 2 in the rows
/// processed.
template <class Derived>
void fake_quantize_dynamic(const Eigen::MatrixBase<Derived>& x, const uniform_spec& spec,
                           matrix_ref<typename Derived::Scalar> out) {
  detail::fake_quantize_dynamic_checked(x, spec, out, all_rows(x.rows()),
                                        "scale::fake_quantize_dynamic");
}
template <class Derived>
void fake_quantize_dynamic_rows(const Eigen::MatrixBase<Derived>& x, const uniform_spec& spec,
                                matrix_ref<typename Derived::Scalar> out, row_range rows) {
  detail::fake_quantize_dynamic_checked(x, spec, out, rows, "scale::fake_quantize_dynamic_rows");
}

/// Straight-through estimator for training scales/clips (OmniQuant round_ste): the forward value is
/// fake_quantize(x), the gradient w.r.t. x is passed through where x is inside the clamp range and
/// zeroed where clamped. Writes that mask (1 or 0) into grad_mask [rows, cols].
/// Inside means code_min <= round(x / scale) + zero_point <= code_max (inclusive, like the
/// gradient of torch.clamp). Same checks as fake_quantize. No allocation; thread safe.
template <class Derived>
void fake_quantize_ste_mask(const Eigen::MatrixBase<Derived>& x, const uniform_quantizer& q,
                            matrix_ref<typename Derived::Scalar> grad_mask) {
  reparam::detail::static_check_input<Derived>();
  using scalar_type = typename Derived::Scalar;
  constexpr const char* function = "scale::fake_quantize_ste_mask";
  detail::check_same_shape(function, x, grad_mask, "grad_mask");
  const row_range rows = all_rows(x.rows());
  const auto in = detail::check_quantizer_input(x, q, rows, false, function);
  const auto code_min = static_cast<scalar_type>(q.code_min());
  const auto code_max = static_cast<scalar_type>(q.code_max());
  detail::map_entries(in, x.cols(), q, grad_mask.data(), grad_mask.outerStride(), rows,
                      [&](auto mode, scalar_type v, scalar_type s, scalar_type z) {
                        const scalar_type code = detail::round_as<decltype(mode)::value>(v / s) + z;
                        return (code >= code_min && code <= code_max) ? scalar_type(1)
                                                                      : scalar_type(0);
                      });
}

}  // namespace reparam::scale

#endif  // REPARAM_SCALE_QUANTIZER_HPP

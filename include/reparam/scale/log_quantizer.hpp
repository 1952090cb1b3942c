// SPDX-License-Identifier: Apache-2.0
// Logarithmic quantizers for non-negative activations (post-softmax attention probabilities):
// log2 (FQ-ViT) and log-sqrt2 (RepQ-ViT), their calibration, and RepQ-ViT's reparameterization of
// log-sqrt2 into log2 + shift form: P_hat V = scale_p * scale_v * (S_even + sqrt2 * S_odd), where
// S_even / S_odd are sums of integer V codes scaled by powers of two (shifts, no multiplies).
// Sources: research/scale_and_gumbel.md A1 (quantizers) and A2 (post-softmax reparameterization);
// RepQ-ViT (Li et al., ICCV 2023, arXiv 2212.08254) LogSqrt2Quantizer and sec. 4.3.
//
// Codes (std::uint8_t), level q >= 0:
//   log2:       x_hat = scale * 2^-q
//   log_sqrt2:  x_hat = scale * 2^-(q/2) = scale * 2^-ceil(q/2) * (q odd ? sqrt2 : 1)
// encode: q~ = round(-log_base(x / scale)) (rounding in the log domain, as RepQ-ViT); q~ < 0 -> 0
// (x >= scale is clipped to scale); x == 0 or q~ beyond the last level -> the zero code.
// The exact zero needs a code of its own (zero_policy):
//   extra_zero       (RepQ-ViT compatible) levels 0 .. 2^b - 1 plus zero code 2^b: 2^b + 1
//                    outputs, which do not fit in b bits (bits <= 7 so codes fit a byte);
//   reserve_top_code levels 0 .. 2^b - 2, zero code 2^b - 1: honest b-bit codes (bits <= 8).
// In both policies the zero code equals levels(), so every code >= levels() is "zero" to the
// product kernels; codes above zero_code() are invalid input and refused by every entry point.
//
// Arithmetic (the numbers are pinned by the tests):
//   encode   t = -log2(double(x) / double(scale)) (sqrt2: 2 t, exact), q~ = round_half_even(t),
//            all in double, independent of the floating-point environment; RepQ-ViT computes the
//            same formula in float32 (torch.round is half-even too), so a code can differ from
//            it only for x within float rounding of a level midpoint.
//   decode   the double scale * 2^-ceil(q/2) * (odd ? sqrt2 : 1) (sqrt2 levels; the product
//            double(scale) * sqrt2 rounds once, the power of two is exact) or scale * 2^-q,
//            converted to float. Every grid point that is a normal float round-trips:
//            encode(decode(q)) == q, since its log lies within 2^-23 of the integer q, far from the
//            rounding midpoints.
//   -0.0 counts as 0 (zero code). Negative, NaN or infinite x is an error, never clamped.
#ifndef REPARAM_SCALE_LOG_QUANTIZER_HPP
#define REPARAM_SCALE_LOG_QUANTIZER_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/log_shift_matmul.hpp>
#include <reparam/kernels/simd/log_shift_matmul.hpp>
#include <reparam/scale/quantizer.hpp>

namespace reparam::scale {

enum class log_base { two, sqrt2 };
enum class zero_policy { extra_zero, reserve_top_code };

struct log_quantizer {
  log_base base = log_base::sqrt2;
  int bits = 4;  ///< 1 .. 7 (extra_zero) or 1 .. 8 (reserve_top_code)
  zero_policy zeros = zero_policy::extra_zero;
  float scale = 1.0f;  ///< > 0 and finite; the largest representable value

  int levels() const noexcept;  ///< number of non-zero levels: 2^b (extra_zero), 2^b - 1
  std::uint8_t zero_code() const noexcept;  ///< 2^b (extra_zero) or 2^b - 1; equals levels()
  /// Right shift ceil(q / 2) (sqrt2) or q (two) of level q, and whether q carries the sqrt2 factor.
  int shift_of(int level) const noexcept;
  bool is_odd(int level) const noexcept;
};

using log_code_matrix =
    Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using log_code_matrix_ref = Eigen::Ref<log_code_matrix, 0, Eigen::OuterStride<>>;

/// Throws reparam::error naming `function` if bits are out of range for the zero policy or scale
/// is not positive and finite (or base / zeros hold a value outside their enums).
void check_log_quantizer(const log_quantizer& q, const char* function);

/// Codes of x [rows, cols] (float or double, every entry >= 0 and finite, else reparam::error,
/// checked before writing; the _rows form checks and writes only rows [rows.begin, rows.end)).
/// codes is sized [rows, cols] by the caller. No allocation. _rows form safe on disjoint ranges.
template <class Derived>
void encode(const Eigen::MatrixBase<Derived>& x, const log_quantizer& q, log_code_matrix_ref codes);
template <class Derived>
void encode_rows(const Eigen::MatrixBase<Derived>& x, const log_quantizer& q,
                 log_code_matrix_ref codes, row_range rows);

/// x_hat of every code, as the double value scale * 2^-(q/2) rounded once to float. codes is a
/// row-major std::uint8_t matrix (e.g. log_code_matrix); a code above q.zero_code() is a
/// reparam::error (checked before writing), as is a shape mismatch. No allocation.
template <class Derived>
void decode(const Eigen::MatrixBase<Derived>& codes, const log_quantizer& q, matrix_ref<float> out);

/// decode(encode(x)); out may alias x. The values are decode's float grid values converted to
/// Scalar (so a double x gets the same values as a float x). Same checks as encode. No
/// allocation; the _rows form is safe on disjoint ranges.
template <class Derived>
void fake_quantize(const Eigen::MatrixBase<Derived>& x, const log_quantizer& q,
                   matrix_ref<typename Derived::Scalar> out);
template <class Derived>
void fake_quantize_rows(const Eigen::MatrixBase<Derived>& x, const log_quantizer& q,
                        matrix_ref<typename Derived::Scalar> out, row_range rows);

/// RepQ-ViT's log-sqrt2 calibration: scale = quantile(x, p) for p in `percentiles`, keep the one
/// with the smallest fake-quantization MSE over x (first on ties). x >= 0, non-empty.
/// The quantile is numpy.percentile / torch.quantile's default (linear interpolation at
/// position p (n - 1) of the sorted values, torch.lerp's two-sided formula), computed in double
/// and rounded to float; the MSE is mean((fake_quantize(x) - x)^2) in double. spec gives base,
/// bits and zeros (its scale is ignored). A candidate that is not a positive finite float (a
/// quantile of 0) is skipped; if all are, reparam::error. Also reparam::error on empty x,
/// negative / non-finite x, an empty percentile list or p outside [0, 1]. Allocates a sorted
/// copy of x. Cost O(n log n + n * percentiles.size()).
template <class Derived>
log_quantizer calibrate_log(const Eigen::MatrixBase<Derived>& x, log_quantizer spec,
                            const std::vector<double>& percentiles = {0.999, 0.9999, 0.99999, 1.0});

/// The shift-form product out = P_hat V_hat for P given as log codes [rows, inner] and V as
/// centred integer codes v - z_v [inner, cols] (std::int16_t, any value: the full int16 range is
/// exact) with scale v_scale: out[i, c] = q.scale * v_scale * (S_even[i, c] + sqrt2 * S_odd[i, c])
/// with
///   S_even = sum over j with even level q_ij (or every level for log2) of V[j, c] * 2^-shift,
///   S_odd  = sum over j with odd level of V[j, c] * 2^-ceil(q/2);
/// zero codes contribute nothing. Computed by bucketing: integer sums of V rows per level (exact
/// int32 adds, no multiplies), then one combine per output in double with a fixed order
/// (kernels/reference/log_shift_matmul.hpp documents it), rounded once to float. Every kernel
/// path equals the reference bit for bit.
/// Only rows [rows.begin, rows.end) of out are written. p_codes and v_codes are row-major
/// (std::uint8_t and std::int16_t) with unit inner stride; blocks and maps bind.
/// Workspace: log_shift_workspace_size(q, cols) int32 entries. No allocation. Safe on disjoint
/// row ranges (each call with its own workspace). Throws reparam::error on shape mismatch,
/// inner > 65536 (int32 bucket overflow bound), a workspace that is too small (or null), v_scale
/// not positive and finite, a code above q.zero_code() in the row range, out overlapping an
/// input or the workspace, or a bad quantizer; all checked before anything is written.
/// Cost: rows * (inner * cols int32 adds, fewer for zero codes, + levels * cols double fmas).
/// `Arch` picks the kernel path (kernels/simd/log_shift_matmul.hpp); reparam::kernel_arch adds
/// the AVX-512 VNNI path when the compile flags enable it.
template <class Arch = default_arch, class DerivedP, class DerivedV>
void multiply_shift_form_rows(const Eigen::MatrixBase<DerivedP>& p_codes, const log_quantizer& q,
                              const Eigen::MatrixBase<DerivedV>& v_codes, float v_scale,
                              matrix_ref<float> out, row_range rows, std::int32_t* workspace,
                              index workspace_size);
/// levels() * cols. Throws reparam::error on a bad quantizer or cols < 0.
index log_shift_workspace_size(const log_quantizer& q, index cols);

/// Allocating whole-matrix convenience (allocates the result and the workspace).
template <class Arch = default_arch, class DerivedP, class DerivedV>
matrix<float> multiply_shift_form(const Eigen::MatrixBase<DerivedP>& p_codes,
                                  const log_quantizer& q,
                                  const Eigen::MatrixBase<DerivedV>& v_codes, float v_scale);

// ------------------------------------------------------------------------------------------------
// Definitions.

inline int log_quantizer::levels() const noexcept {
  if (bits < 1 || bits > 8) {
    return 0;  // invalid quantizer (check_log_quantizer refuses it)
  }
  return zeros == zero_policy::extra_zero ? (1 << bits) : (1 << bits) - 1;
}

inline std::uint8_t log_quantizer::zero_code() const noexcept {
  return static_cast<std::uint8_t>(levels());
}

inline int log_quantizer::shift_of(int level) const noexcept {
  return kernels::log_shift_of(level, base == log_base::sqrt2);
}

inline bool log_quantizer::is_odd(int level) const noexcept {
  return kernels::log_shift_is_odd(level, base == log_base::sqrt2);
}

inline void check_log_quantizer(const log_quantizer& q, const char* function) {
  reparam::detail::check(q.base == log_base::two || q.base == log_base::sqrt2, function,
                         "log_quantizer.base holds ", static_cast<int>(q.base),
                         ", which is not a log_base value");
  reparam::detail::check(
      q.zeros == zero_policy::extra_zero || q.zeros == zero_policy::reserve_top_code, function,
      "log_quantizer.zeros holds ", static_cast<int>(q.zeros),
      ", which is not a zero_policy value");
  const int max_bits = q.zeros == zero_policy::extra_zero ? 7 : 8;
  reparam::detail::check(q.bits >= 1 && q.bits <= max_bits, function, "log_quantizer.bits ", q.bits,
                         " is outside [1, ", max_bits, "] for zero policy ",
                         q.zeros == zero_policy::extra_zero
                             ? "extra_zero (code 2^bits must fit a byte)"
                             : "reserve_top_code");
  reparam::detail::check(std::isfinite(q.scale) && q.scale > 0.0f, function, "log_quantizer.scale ",
                         q.scale, " must be positive and finite");
}

inline index log_shift_workspace_size(const log_quantizer& q, index cols) {
  constexpr const char* function = "scale::log_shift_workspace_size";
  check_log_quantizer(q, function);
  reparam::detail::check(cols >= 0, function, "cols ", cols, " is negative");
  return index{q.levels()} * cols;
}

namespace detail {

/// The encode rounding of t (round half to even, independent of the floating-point environment):
/// scale::round(t, rounding::half_even). A zero result carries the sign of t, which
/// log_encode_one's r <= 0 test ignores.
inline double log_round_half_even(double t) noexcept {
  return scale::round(t, rounding::half_even);
}

/// The exact-as-documented double value of level `level` (see the file comment).
inline double log_level_value(const log_quantizer& q, int level) noexcept {
  const auto scale = static_cast<double>(q.scale);
  const double base = q.is_odd(level) ? scale * kernels::log_shift_sqrt2 : scale;
  return std::ldexp(base, -q.shift_of(level));
}

/// Float value of every code 0 .. zero_code() (the zero code decodes to 0).
struct log_decode_table {
  float value[256] = {};
  explicit log_decode_table(const log_quantizer& q) noexcept {
    for (int level = 0; level < q.levels(); ++level) {
      value[level] = static_cast<float>(log_level_value(q, level));
    }
  }
};

/// Code of one x >= 0, finite (validated by the caller).
template <class Scalar>
std::uint8_t log_encode_one(Scalar x, const log_quantizer& q) noexcept {
  const std::uint8_t zero = q.zero_code();
  if (x == Scalar(0)) {
    return zero;
  }
  double t = -std::log2(static_cast<double>(x) / static_cast<double>(q.scale));
  if (q.base == log_base::sqrt2) {
    t = 2.0 * t;
  }
  const double r = log_round_half_even(t);
  if (r <= 0.0) {
    return 0;
  }
  if (r > static_cast<double>(q.levels() - 1)) {
    return zero;
  }
  return static_cast<std::uint8_t>(r);
}

/// Refuses negative, NaN and infinite entries of x in `rows`, naming the first offender.
template <class Derived>
void log_check_values(const char* function, const Eigen::MatrixBase<Derived>& x, row_range rows) {
  for (index r = rows.begin; r < rows.end; ++r) {
    for (index c = 0; c < x.cols(); ++c) {
      const auto v = x.derived().coeff(r, c);
      if (!(std::isfinite(v) && v >= 0)) {
        reparam::detail::raise<error>(
            reparam::detail::concat(function, ": x(", r, ", ", c, ") = ", v,
                                    " must be finite and >= 0 (log quantizers take non-negative "
                                    "values such as softmax outputs)"));
      }
    }
  }
}

/// Static checks of an integer code matrix input (the float inputs use static_check_input).
template <class Derived, class Code>
constexpr void log_static_check_codes() {
  static_assert(std::is_same_v<typename Derived::Scalar, Code>,
                "reparam: log codes must be std::uint8_t (scale::log_code_matrix) and V codes "
                "std::int16_t; convert with .template cast<...>().eval()");
  static_assert((Derived::Flags & Eigen::DirectAccessBit) != 0,
                "reparam: pass stored data, not an expression; call .eval() first");
  static_assert((Derived::Flags & Eigen::RowMajorBit) != 0 || Derived::RowsAtCompileTime == 1 ||
                    Derived::ColsAtCompileTime == 1,
                "reparam: codes must be RowMajor; use scale::log_code_matrix or "
                "reparam::row_major_map");
  static_assert(
      Derived::InnerStrideAtCompileTime == 1 || Derived::InnerStrideAtCompileTime == Eigen::Dynamic,
      "reparam: the inner stride must be 1 (contiguous rows)");
}

/// Elements between the starts of consecutive rows of a row-major (or vector) input.
template <class Derived>
index log_row_stride(const Eigen::MatrixBase<Derived>& m) {
  return Derived::IsRowMajor ? m.outerStride() : m.innerStride();
}

/// Checks a row-major input has contiguous rows.
template <class Derived>
void log_check_contiguous(const char* function, const char* name,
                          const Eigen::MatrixBase<Derived>& m) {
  reparam::detail::check(!Derived::IsRowMajor || m.cols() <= 1 || m.innerStride() == 1, function,
                         name, " must have unit inner stride (contiguous rows), got inner stride ",
                         m.innerStride());
}

/// Refuses codes above the zero code in `rows` of a code matrix with contiguous rows (a max
/// reduction per row, which compilers vectorize).
template <class Derived>
void log_check_codes(const char* function, const char* name,
                     const Eigen::MatrixBase<Derived>& codes, const log_quantizer& q,
                     row_range rows) {
  const unsigned zero = q.zero_code();
  const std::uint8_t* data = codes.derived().data();
  const index stride = log_row_stride(codes);
  const index cols = codes.cols();
  for (index r = rows.begin; r < rows.end; ++r) {
    const std::uint8_t* row = data + r * stride;
    std::uint8_t top = 0;
    for (index c = 0; c < cols; ++c) {
      top = std::max(top, row[c]);
    }
    if (top > zero) {
      index c = 0;
      while (row[c] <= zero) {
        ++c;
      }
      reparam::detail::raise<error>(reparam::detail::concat(
          function, ": ", name, "(", r, ", ", c, ") = ", static_cast<unsigned>(row[c]),
          " is above the zero code ", zero, " of a ", q.bits, "-bit quantizer"));
    }
  }
}

/// Byte span [first, last) of a strided row-major operand (empty when it has no elements).
struct log_span {
  std::uintptr_t first = 0;
  std::uintptr_t last = 0;
};

template <class T>
log_span log_span_of(const T* data, index rows, index cols, index row_stride) {
  if (rows <= 0 || cols <= 0) {
    return {};
  }
  const auto first = reinterpret_cast<std::uintptr_t>(data);
  const auto count = static_cast<std::uintptr_t>((rows - 1) * row_stride + cols);
  return {first, first + count * sizeof(T)};
}

inline bool log_spans_overlap(log_span a, log_span b) noexcept {
  return a.first < a.last && b.first < b.last && a.first < b.last && b.first < a.last;
}

template <class Derived>
void log_encode_checked(const char* function, const Eigen::MatrixBase<Derived>& x,
                        const log_quantizer& q, log_code_matrix_ref codes, row_range rows) {
  check_log_quantizer(q, function);
  reparam::detail::check(codes.rows() == x.rows() && codes.cols() == x.cols(), function,
                         "codes is ", codes.rows(), "x", codes.cols(), " but x is ", x.rows(), "x",
                         x.cols());
  reparam::detail::check_row_range(function, rows, x.rows());
  log_check_values(function, x, rows);
  for (index r = rows.begin; r < rows.end; ++r) {
    for (index c = 0; c < x.cols(); ++c) {
      codes(r, c) = log_encode_one(x.derived().coeff(r, c), q);
    }
  }
}

template <class Derived>
void log_fake_quantize_checked(const char* function, const Eigen::MatrixBase<Derived>& x,
                               const log_quantizer& q, matrix_ref<typename Derived::Scalar> out,
                               row_range rows) {
  using scalar_type = typename Derived::Scalar;
  check_log_quantizer(q, function);
  reparam::detail::check(out.rows() == x.rows() && out.cols() == x.cols(), function, "out is ",
                         out.rows(), "x", out.cols(), " but x is ", x.rows(), "x", x.cols());
  reparam::detail::check_row_range(function, rows, x.rows());
  log_check_values(function, x, rows);
  const log_decode_table table(q);
  for (index r = rows.begin; r < rows.end; ++r) {
    for (index c = 0; c < x.cols(); ++c) {
      // Read before write: out may be x itself.
      const std::uint8_t code = log_encode_one(x.derived().coeff(r, c), q);
      out(r, c) = static_cast<scalar_type>(table.value[code]);
    }
  }
}

/// numpy.percentile / torch.quantile (linear) of sorted values: position p (n - 1), interpolated
/// with torch.lerp's formula (from the nearer end).
inline double log_quantile(const std::vector<double>& sorted, double p) {
  const auto n = static_cast<index>(sorted.size());
  const double position = p * static_cast<double>(n - 1);
  auto below = static_cast<index>(std::floor(position));
  below = std::min(std::max(below, index{0}), n - 1);
  const index above = std::min(below + 1, n - 1);
  const double weight = position - static_cast<double>(below);
  const double lo = sorted[static_cast<std::size_t>(below)];
  const double hi = sorted[static_cast<std::size_t>(above)];
  const double delta = hi - lo;
  return weight < 0.5 ? lo + weight * delta : hi - (1.0 - weight) * delta;
}

/// Checks shared by multiply_shift_form and multiply_shift_form_rows.
template <class DerivedP, class DerivedV>
void log_shift_check(const char* function, const Eigen::MatrixBase<DerivedP>& p_codes,
                     const log_quantizer& q, const Eigen::MatrixBase<DerivedV>& v_codes,
                     float v_scale, const float* out, index out_rows, index out_cols,
                     index out_row_stride, row_range rows, const std::int32_t* workspace,
                     index workspace_size) {
  check_log_quantizer(q, function);
  const index inner = p_codes.cols();
  reparam::detail::check(v_codes.rows() == inner, function, "p_codes is ", p_codes.rows(), "x",
                         inner, " but v_codes is ", v_codes.rows(), "x", v_codes.cols(),
                         " (inner dimensions differ)");
  reparam::detail::check(out_rows == p_codes.rows() && out_cols == v_codes.cols(), function,
                         "out is ", out_rows, "x", out_cols, " but must be [p_codes.rows ",
                         p_codes.rows(), ", v_codes.cols ", v_codes.cols(), "]");
  reparam::detail::check(inner <= kernels::log_shift_max_inner, function, "inner dimension ", inner,
                         " exceeds ", kernels::log_shift_max_inner,
                         ", the bound that keeps the int32 bucket sums exact");
  reparam::detail::check(std::isfinite(v_scale) && v_scale > 0.0f, function, "v_scale ", v_scale,
                         " must be positive and finite");
  reparam::detail::check_row_range(function, rows, p_codes.rows());
  log_check_contiguous(function, "p_codes", p_codes);
  log_check_contiguous(function, "v_codes", v_codes);
  const index required = index{q.levels()} * v_codes.cols();
  reparam::detail::check(workspace_size >= required, function, "workspace has ", workspace_size,
                         " int32 entries but ", required,
                         " are required; size it with scale::log_shift_workspace_size");
  reparam::detail::check(workspace != nullptr || required == 0, function, "workspace is null");
  const log_span out_span = log_span_of(out, out_rows, out_cols, out_row_stride);
  reparam::detail::check(
      !log_spans_overlap(out_span, log_span_of(p_codes.derived().data(), p_codes.rows(), inner,
                                               log_row_stride(p_codes))),
      function, "out overlaps p_codes");
  reparam::detail::check(
      !log_spans_overlap(out_span, log_span_of(v_codes.derived().data(), inner, v_codes.cols(),
                                               log_row_stride(v_codes))),
      function, "out overlaps v_codes");
  reparam::detail::check(
      !log_spans_overlap(out_span, log_span_of(workspace, 1, required, required)), function,
      "out overlaps the workspace");
  log_check_codes(function, "p_codes", p_codes, q, rows);
}

template <class DerivedP, class DerivedV>
kernels::log_shift_operand log_shift_operand_of(const Eigen::MatrixBase<DerivedP>& p_codes,
                                                const log_quantizer& q,
                                                const Eigen::MatrixBase<DerivedV>& v_codes,
                                                float v_scale) noexcept {
  kernels::log_shift_operand op;
  op.codes = p_codes.derived().data();
  op.code_row_stride = log_row_stride(p_codes);
  op.v = v_codes.derived().data();
  op.v_row_stride = log_row_stride(v_codes);
  op.inner = p_codes.cols();
  op.cols = v_codes.cols();
  op.levels = q.levels();
  op.is_sqrt2 = q.base == log_base::sqrt2;
  op.scale = static_cast<double>(q.scale) * static_cast<double>(v_scale);  // exact
  return op;
}

}  // namespace detail

template <class Derived>
void encode(const Eigen::MatrixBase<Derived>& x, const log_quantizer& q,
            log_code_matrix_ref codes) {
  reparam::detail::static_check_input<Derived>();
  detail::log_encode_checked("scale::encode", x, q, codes, all_rows(x.rows()));
}

template <class Derived>
void encode_rows(const Eigen::MatrixBase<Derived>& x, const log_quantizer& q,
                 log_code_matrix_ref codes, row_range rows) {
  reparam::detail::static_check_input<Derived>();
  detail::log_encode_checked("scale::encode_rows", x, q, codes, rows);
}

template <class Derived>
void decode(const Eigen::MatrixBase<Derived>& codes, const log_quantizer& q,
            matrix_ref<float> out) {
  detail::log_static_check_codes<Derived, std::uint8_t>();
  constexpr const char* function = "scale::decode";
  check_log_quantizer(q, function);
  reparam::detail::check(out.rows() == codes.rows() && out.cols() == codes.cols(), function,
                         "out is ", out.rows(), "x", out.cols(), " but codes is ", codes.rows(),
                         "x", codes.cols());
  detail::log_check_contiguous(function, "codes", codes);
  detail::log_check_codes(function, "codes", codes, q, all_rows(codes.rows()));
  const detail::log_decode_table table(q);
  for (index r = 0; r < codes.rows(); ++r) {
    for (index c = 0; c < codes.cols(); ++c) {
      out(r, c) = table.value[codes.derived().coeff(r, c)];
    }
  }
}

template <class Derived>
void fake_quantize(const Eigen::MatrixBase<Derived>& x, const log_quantizer& q,
                   matrix_ref<typename Derived::Scalar> out) {
  reparam::detail::static_check_input<Derived>();
  detail::log_fake_quantize_checked("scale::fake_quantize", x, q, out, all_rows(x.rows()));
}

template <class Derived>
void fake_quantize_rows(const Eigen::MatrixBase<Derived>& x, const log_quantizer& q,
                        matrix_ref<typename Derived::Scalar> out, row_range rows) {
  reparam::detail::static_check_input<Derived>();
  detail::log_fake_quantize_checked("scale::fake_quantize_rows", x, q, out, rows);
}

template <class Derived>
log_quantizer calibrate_log(const Eigen::MatrixBase<Derived>& x, log_quantizer spec,
                            const std::vector<double>& percentiles) {
  reparam::detail::static_check_input<Derived>();
  constexpr const char* function = "scale::calibrate_log";
  log_quantizer probe = spec;
  probe.scale = 1.0f;  // the spec's scale is ignored
  check_log_quantizer(probe, function);
  reparam::detail::check(x.size() > 0, function, "x is empty (", x.rows(), "x", x.cols(), ")");
  reparam::detail::check(!percentiles.empty(), function, "percentiles is empty");
  for (const double p : percentiles) {
    reparam::detail::check(std::isfinite(p) && p >= 0.0 && p <= 1.0, function, "percentile ", p,
                           " is outside [0, 1]");
  }
  detail::log_check_values(function, x, all_rows(x.rows()));

  std::vector<double> sorted;
  sorted.reserve(static_cast<std::size_t>(x.size()));
  for (index r = 0; r < x.rows(); ++r) {
    for (index c = 0; c < x.cols(); ++c) {
      sorted.push_back(static_cast<double>(x.derived().coeff(r, c)));
    }
  }
  std::sort(sorted.begin(), sorted.end());

  bool has_best = false;
  double best_mse = 0.0;
  log_quantizer best = probe;
  for (const double p : percentiles) {
    const auto scale = static_cast<float>(detail::log_quantile(sorted, p));
    if (!(std::isfinite(scale) && scale > 0.0f)) {
      continue;
    }
    log_quantizer candidate = probe;
    candidate.scale = scale;
    const detail::log_decode_table table(candidate);
    double sum = 0.0;
    for (index r = 0; r < x.rows(); ++r) {
      for (index c = 0; c < x.cols(); ++c) {
        const auto v = x.derived().coeff(r, c);
        const double e = static_cast<double>(table.value[detail::log_encode_one(v, candidate)]) -
                         static_cast<double>(v);
        sum += e * e;
      }
    }
    const double mse = sum / static_cast<double>(x.size());
    if (!has_best || mse < best_mse) {
      has_best = true;
      best_mse = mse;
      best = candidate;
    }
  }
  reparam::detail::check(
      has_best, function,
      "no percentile gives a positive finite float scale (the quantiles of x are 0 or "
      "beyond float range)");
  return best;
}

template <class Arch, class DerivedP, class DerivedV>
void multiply_shift_form_rows(const Eigen::MatrixBase<DerivedP>& p_codes, const log_quantizer& q,
                              const Eigen::MatrixBase<DerivedV>& v_codes, float v_scale,
                              matrix_ref<float> out, row_range rows, std::int32_t* workspace,
                              index workspace_size) {
  detail::log_static_check_codes<DerivedP, std::uint8_t>();
  detail::log_static_check_codes<DerivedV, std::int16_t>();
  detail::log_shift_check("scale::multiply_shift_form_rows", p_codes, q, v_codes, v_scale,
                          out.data(), out.rows(), out.cols(), out.outerStride(), rows, workspace,
                          workspace_size);
  const kernels::log_shift_operand op = detail::log_shift_operand_of(p_codes, q, v_codes, v_scale);
  kernels::simd::log_shift_matmul_rows(Arch{}, op, out.data(), out.outerStride(), rows.begin,
                                       rows.end, workspace);
}

template <class Arch, class DerivedP, class DerivedV>
matrix<float> multiply_shift_form(const Eigen::MatrixBase<DerivedP>& p_codes,
                                  const log_quantizer& q,
                                  const Eigen::MatrixBase<DerivedV>& v_codes, float v_scale) {
  detail::log_static_check_codes<DerivedP, std::uint8_t>();
  detail::log_static_check_codes<DerivedV, std::int16_t>();
  constexpr const char* function = "scale::multiply_shift_form";
  check_log_quantizer(q, function);
  matrix<float> out(p_codes.rows(), v_codes.cols());
  std::vector<std::int32_t> workspace(static_cast<std::size_t>(index{q.levels()} * v_codes.cols()));
  const auto workspace_size = static_cast<index>(workspace.size());
  detail::log_shift_check(function, p_codes, q, v_codes, v_scale, out.data(), out.rows(),
                          out.cols(), out.outerStride(), all_rows(p_codes.rows()), workspace.data(),
                          workspace_size);
  const kernels::log_shift_operand op = detail::log_shift_operand_of(p_codes, q, v_codes, v_scale);
  kernels::simd::log_shift_matmul_rows(Arch{}, op, out.data(), out.outerStride(), 0, out.rows(),
                                       workspace.data());
  return out;
}

}  // namespace reparam::scale

#endif  // REPARAM_SCALE_LOG_QUANTIZER_HPP

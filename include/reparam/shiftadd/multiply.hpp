// SPDX-License-Identifier: Apache-2.0
// Products with binary-coded weights used directly in their packed form (ShiftAddLLM, You et al.
// 2024, eq. 1: y_r = sum_g sum_p alpha_{r,g,p} * (sum_{c in g} s_p[r,c] x_c)): y = W x for one
// activation vector and Y = X W^T for a batch. Entry points validate and call the scalar
// reference kernel (kernels/reference/bcq_multiply.hpp), whose header fixes the summation order.
#ifndef REPARAM_SHIFTADD_MULTIPLY_HPP
#define REPARAM_SHIFTADD_MULTIPLY_HPP

#include <cstddef>
#include <functional>
#include <type_traits>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/kernels/reference/bcq_multiply.hpp>
#include <reparam/shiftadd/formats.hpp>

namespace reparam::shiftadd {

namespace detail {

/// The raw kernel view of `w` (no copy; valid while `w` lives unchanged).
inline kernels::reference::bcq_operand operand_of(const binary_coded_matrix& w) noexcept {
  kernels::reference::bcq_operand op;
  op.planes = w.planes().data();
  op.scales = w.scales().data();
  op.offsets = w.has_offsets() ? w.offsets().data() : nullptr;
  op.rows = w.rows();
  op.cols = w.cols();
  op.words_per_row = w.words_per_row();
  op.group_size = w.group_size();
  op.groups = w.groups();
  op.bits = w.bits();
  op.is_column_wise = w.axis() == scale_axis::columns;
  return op;
}

/// Checks that `w` is a constructed matrix whose arrays have the sizes its shape implies (a
/// default-constructed matrix, or one whose vectors were resized by hand, is rejected). O(1).
inline void check_operand(const char* function, const binary_coded_matrix& w) {
  using reparam::detail::check;
  check(w.rows() >= 1 && w.cols() >= 1, function, "w is empty (", w.rows(), "x", w.cols(),
        "); construct it from a bcq_shape");
  const auto expected = [](index count) { return static_cast<std::size_t>(count); };
  check(w.planes().size() == expected(w.bits() * w.rows() * w.words_per_row()) &&
            w.scales().size() == expected(w.scale_major() * w.groups() * w.bits()) &&
            w.offsets().size() ==
                (w.has_offsets() ? expected(w.scale_major() * w.groups()) : std::size_t{0}),
        function, "w's arrays (", w.planes().size(), " plane words, ", w.scales().size(),
        " scales, ", w.offsets().size(), " offsets) do not match its shape ", w.rows(), "x",
        w.cols(), ", bits ", w.bits(), ", group_size ", w.group_size());
}

inline void check_no_overlap(const char* function, const float* x, index x_count, const float* y,
                             index y_count) {
  const auto before = [](const float* a, const float* b) { return std::less<>()(a, b); };
  const bool is_disjoint = !before(x, y + y_count) || !before(y, x + x_count);
  reparam::detail::check(is_disjoint, function,
                         "x and y overlap; the output must not alias the "
                         "input");
}

/// The checks and the kernel call of multiply_rows, reporting errors as `function`.
inline void multiply_rows_checked(const char* function, const binary_coded_matrix& w,
                                  const const_matrix_map<float>& x, matrix_map<float>& y,
                                  row_range rows) {
  check_operand(function, w);
  reparam::detail::check(x.cols() == w.cols(), function, "x has ", x.cols(),
                         " columns but w has cols ", w.cols());
  reparam::detail::check(y.rows() == x.rows() && y.cols() == w.rows(), function, "y is ", y.rows(),
                         "x", y.cols(), " but must be [batch ", x.rows(), ", w.rows ", w.rows(),
                         "]");
  reparam::detail::check_row_range(function, rows, w.rows());
  if (x.rows() == 0 || rows.empty()) {
    return;
  }
  check_no_overlap(function, x.data(), (x.rows() - 1) * x.outerStride() + x.cols(), y.data(),
                   (y.rows() - 1) * y.outerStride() + y.cols());
  kernels::reference::bcq_multiply_rows(operand_of(w), x.data(), x.rows(), x.outerStride(),
                                        y.data(), y.outerStride(), rows.begin, rows.end);
}

}  // namespace detail

/// Y[:, rows] = X W^T restricted to the output channels in `rows`: for each batch row b and each
/// r in [rows.begin, rows.end), y(b, r) = sum_c W[r, c] x(b, c), computed on the packed planes in
/// the order documented in kernels/reference/bcq_multiply.hpp (both scale axes, offsets). x is
/// [batch, w.cols()], y is [batch, w.rows()] (the whole output; only columns in `rows` are
/// written). Any row strides.
///
/// Throws reparam::error if w is empty or inconsistent, x.cols() != w.cols(), y is not
/// [x.rows(), w.rows()], `rows` is not inside [0, w.rows()), or x and y overlap. x need not be
/// finite: NaN/Inf propagate as the kernel header describes (a NaN in row b of x makes row b of
/// y NaN). No allocation. Safe to call concurrently on disjoint row ranges of the same y (the
/// ranges of split_rows), which together produce exactly what one whole call produces.
inline void multiply_rows(const binary_coded_matrix& w, const const_matrix_map<float>& x,
                          matrix_map<float> y, row_range rows) {
  detail::multiply_rows_checked("shiftadd::multiply_rows", w, x, y, rows);
}

/// y = W x for x of w.cols() values (a vector type), or Y = X W^T for x [batch, w.cols()]
/// row-major: y(b, r) = sum_c W[r, c] x(b, c), computed on the packed planes in the order
/// documented in kernels/reference/bcq_multiply.hpp. y is [batch, w.rows()] ([1, w.rows()] for a
/// vector x), sized by the caller; row blocks and strided rows bind. The same as
/// multiply_rows(w, x, y, {0, w.rows()}).
///
/// x must be float, stored (not an expression) with unit inner stride; a column-major matrix
/// does not compile. Throws reparam::error on the shape errors listed for multiply_rows. x need
/// not be finite (NaN/Inf propagate). No allocation. Thread safe for distinct outputs.
/// Cost: batch * rows * cols * (bits + has_offsets) float additions.
template <class DerivedX>
void multiply(const binary_coded_matrix& w, const Eigen::MatrixBase<DerivedX>& x,
              matrix_ref<float> y) {
  reparam::detail::static_check_input<DerivedX>();
  static_assert(std::is_same_v<typename DerivedX::Scalar, float>,
                "reparam: shiftadd::multiply takes float activations; convert with "
                ".template cast<float>().eval()");
  constexpr const char* function = "shiftadd::multiply";
  detail::check_operand(function, w);
  constexpr bool is_column_vector =
      DerivedX::ColsAtCompileTime == 1 && DerivedX::RowsAtCompileTime != 1;
  const index batch = is_column_vector ? 1 : x.rows();
  const index cols = is_column_vector ? x.rows() : x.cols();
  reparam::detail::check(x.innerStride() == 1 || cols <= 1, function,
                         "x must have unit inner stride (contiguous values), got inner stride ",
                         x.innerStride());
  const index row_stride = is_column_vector || batch <= 1 ? cols : x.outerStride();
  reparam::detail::check(cols == w.cols(), function, "x has ", cols,
                         is_column_vector ? " values" : " columns", " but w has cols ", w.cols());
  reparam::detail::check(y.rows() == batch && y.cols() == w.rows(), function, "y is ", y.rows(),
                         "x", y.cols(), " but must be [batch ", batch, ", w.rows ", w.rows(), "]");
  const const_matrix_map<float> x_view(x.derived().data(), batch, cols,
                                       Eigen::OuterStride<>(row_stride));
  matrix_map<float> y_view(y.data(), y.rows(), y.cols(), Eigen::OuterStride<>(y.outerStride()));
  detail::multiply_rows_checked(function, w, x_view, y_view, all_rows(w.rows()));
}

}  // namespace reparam::shiftadd

#endif  // REPARAM_SHIFTADD_MULTIPLY_HPP

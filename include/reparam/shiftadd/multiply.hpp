// SPDX-License-Identifier: Apache-2.0
// Products with binary-coded weights used directly in their packed form (ShiftAddLLM, You et al.
// 2024, eq. 1: y_r = sum_g sum_p alpha_{r,g,p} * (sum_{c in g} s_p[r,c] x_c)): y = W x for one
// activation vector and Y = X W^T for a batch.
//  - On the canonical binary_coded_matrix: the scalar reference kernel
//    (kernels/reference/bcq_multiply.hpp, whose header fixes the summation order).
//  - On a packed_binary_coded_matrix: the lookup-table kernels (T-MAC style; per group of four
//    activations a table of the 16 signed sums, queried with the weights' sign bits), in two
//    modes: lut_mode::lossless (float tables, bit-identical to the reference) and lut_mode::fast
//    (int8 tables with one scale per group, bit-identical to reference::bcq_multiply_rows_fast).
//    Tables are built once per call into a caller-owned lut_tables; multiply_rows then runs on
//    any row range, so engines can split rows over their own threads.
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
#include <reparam/core/workspace.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/bcq_lut_layout.hpp>
#include <reparam/kernels/reference/bcq_multiply.hpp>
#include <reparam/kernels/simd/bcq_lut.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/packed.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

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

using kernels::lut_mode;
using kernels::lut_path;

/// The activation tables of up to `capacity` tokens for products with packed matrices of `cols`
/// columns in groups of `group_size` (any packed matrix of that geometry). Build them once per
/// activation batch with build(), then run multiply_rows on as many row ranges (and threads) as
/// wanted. Owns its memory: lossless 16 floats per column per token, fast 4 bytes per column per
/// token (plus one group's float scratch).
class lut_tables {
 public:
  lut_tables() = default;
  /// Allocates. Throws reparam::error if cols or group_size < 1, group_size does not divide cols,
  /// or capacity < 1.
  lut_tables(index cols, index group_size, index capacity, lut_mode mode)
      : mode_(mode), cols_(cols), group_size_(group_size), capacity_(capacity) {
    constexpr const char* function = "shiftadd::lut_tables";
    reparam::detail::check(cols >= 1 && group_size >= 1 && cols % group_size == 0, function,
                           "cols ", cols, " and group_size ", group_size,
                           " must be >= 1 with group_size dividing cols");
    reparam::detail::check(group_size <= kernels::lut_max_group_size, function, "group_size ",
                           group_size, " exceeds ", kernels::lut_max_group_size);
    reparam::detail::check(capacity >= 1, function, "capacity ", capacity, " must be >= 1");
    groups_ = cols / group_size;
    token_entries_ = groups_ * kernels::lut_quads_per_group(group_size) * kernels::lut_quad_entries;
    const index entries = capacity * token_entries_;
    std::size_t bytes = workspace_bytes<float>(capacity * groups_) * 2 +
                        workspace_bytes<float>(kernels::lut_tables_scratch_floats(group_size));
    bytes += mode == lut_mode::lossless ? workspace_bytes<float>(entries)
                                        : workspace_bytes<std::int8_t>(entries);
    buffer_ = workspace_buffer(bytes);
    workspace ws = buffer_.view();
    group_scale_ = ws.take<float>(capacity * groups_);
    group_sum_ = ws.take<float>(capacity * groups_);
    scratch_ = ws.take<float>(kernels::lut_tables_scratch_floats(group_size));
    if (mode == lut_mode::lossless) {
      float_entries_ = ws.take<float>(entries);
    } else {
      int8_entries_ = ws.take<std::int8_t>(entries);
    }
  }
  /// Tables sized for products with `w` (its cols and group_size).
  lut_tables(const packed_binary_coded_matrix& w, index capacity, lut_mode mode)
      : lut_tables(w.cols(), w.group_size(), capacity, mode) {}

  lut_mode mode() const noexcept { return mode_; }
  index cols() const noexcept { return cols_; }
  index group_size() const noexcept { return group_size_; }
  index capacity() const noexcept { return capacity_; }
  /// Tokens held by the last build().
  index batch() const noexcept { return batch_; }

  /// Builds the tables of the rows of x ([batch, cols], row-major, any row stride), replacing
  /// the previous ones. Throws reparam::error if x.cols() != cols() or x.rows() > capacity().
  /// x need not be finite (see the modes' NaN/Inf rules in kernels/reference/bcq_multiply.hpp).
  /// No allocation. `Arch` sets the vector width; the tables do not depend on it.
  template <class Arch = kernel_arch, class DerivedX>
  void build(const Eigen::MatrixBase<DerivedX>& x_in) {
    reparam::detail::static_check_input<DerivedX>();
    static_assert(std::is_same_v<typename DerivedX::Scalar, float>,
                  "reparam: lut_tables::build takes float activations");
    reparam::detail::check(x_in.innerStride() == 1 || x_in.cols() <= 1,
                           "shiftadd::lut_tables::build", "x must have unit inner stride, got ",
                           x_in.innerStride());
    const const_matrix_map<float> x(
        x_in.derived().data(), x_in.rows(), x_in.cols(),
        Eigen::OuterStride<>(x_in.rows() <= 1 ? x_in.cols() : x_in.outerStride()));
    constexpr const char* function = "shiftadd::lut_tables::build";
    reparam::detail::check(capacity_ > 0, function, "the tables are default-constructed");
    reparam::detail::check(x.cols() == cols_, function, "x has ", x.cols(),
                           " columns but the tables are for cols ", cols_);
    reparam::detail::check(x.rows() <= capacity_, function, "x has ", x.rows(),
                           " rows but the tables hold at most ", capacity_, " tokens");
    batch_ = x.rows();
    if (batch_ == 0) {
      return;
    }
    kernels::build_lut_tables_for<Arch>(mode_, x.data(), batch_, x.outerStride(), cols_,
                                        group_size_, float_entries_, int8_entries_, group_scale_,
                                        group_sum_, scratch_);
  }

  /// The raw kernel view of the last build.
  kernels::bcq_lut_tables view() const noexcept {
    kernels::bcq_lut_tables t;
    t.mode = mode_;
    t.float_entries = float_entries_;
    t.int8_entries = int8_entries_;
    t.group_scale = group_scale_;
    t.group_sum = group_sum_;
    t.batch = batch_;
    t.groups = groups_;
    t.token_entries = token_entries_;
    return t;
  }

 private:
  lut_mode mode_ = lut_mode::lossless;
  index cols_ = 0;
  index group_size_ = 0;
  index capacity_ = 0;
  index groups_ = 0;
  index token_entries_ = 0;
  index batch_ = 0;
  workspace_buffer buffer_;
  float* group_scale_ = nullptr;
  float* group_sum_ = nullptr;
  float* scratch_ = nullptr;
  float* float_entries_ = nullptr;
  std::int8_t* int8_entries_ = nullptr;
};

/// The fastest kernel path usable here (compiled for `Arch` and supported by this CPU).
template <class Arch = kernel_arch>
lut_path best_path() noexcept {
  return kernels::best_lut_path<Arch>();
}

namespace detail {

template <class Arch>
void check_lut_call(const char* function, const packed_binary_coded_matrix& w,
                    const lut_tables& tables, const matrix_map<float>& y, row_range rows,
                    lut_path path) {
  using reparam::detail::check;
  check(!w.empty(), function, "w is empty (default-constructed packed matrix)");
  check(tables.cols() == w.cols() && tables.group_size() == w.group_size(), function,
        "the tables are for cols ", tables.cols(), ", group_size ", tables.group_size(),
        " but w has cols ", w.cols(), ", group_size ", w.group_size());
  check(y.rows() == tables.batch() && y.cols() == w.rows(), function, "y is ", y.rows(), "x",
        y.cols(), " but must be [tables.batch ", tables.batch(), ", w.rows ", w.rows(), "]");
  reparam::detail::check_row_range(function, rows, w.rows());
  check(kernels::is_lut_path_usable<Arch>(path), function, "kernel path ",
        kernels::lut_path_name(path), " is not ",
        kernels::is_lut_path_compiled<Arch>(path) ? "supported by this CPU"
                                                  : "compiled in (enable its ISA flags)");
}

}  // namespace detail

/// Y[:, rows] = X W^T for the tokens whose tables were built (tables.batch() of them), on the
/// output channels in `rows`, with the kernel `path` (best_path() by default). y is
/// [tables.batch(), w.rows()]; only columns in `rows` are written. Results are bit-identical for
/// every path and every split of rows: lossless equals multiply() on unpack(w) bit for bit, fast
/// equals kernels::reference::bcq_multiply_rows_fast.
///
/// Throws reparam::error if w is empty, the tables do not match w's cols/group_size, y has the
/// wrong shape, `rows` is outside [0, w.rows()), or `path` is not usable here. No allocation.
/// Safe to call concurrently on disjoint row ranges of the same y and tables; ranges that are
/// multiples of packed_binary_coded_matrix::row_granularity() never repeat work.
template <class Arch = kernel_arch>
void multiply_rows(const packed_binary_coded_matrix& w, const lut_tables& tables,
                   matrix_ref<float> y, row_range rows, lut_path path = best_path<Arch>()) {
  const matrix_map<float> y_view(y.data(), y.rows(), y.cols(),
                                 Eigen::OuterStride<>(y.outerStride()));
  detail::check_lut_call<Arch>("shiftadd::multiply_rows", w, tables, y_view, rows, path);
  if (tables.batch() == 0 || rows.empty()) {
    return;
  }
  kernels::bcq_lut_rows<Arch>(path, w.operand(), tables.view(), y.data(), y.outerStride(),
                              rows.begin, rows.end);
}

/// Y = X W^T with the LUT kernels: builds `tables` from x (x [batch, w.cols()] row-major, or a
/// vector of w.cols() values), then runs all rows on `threads` threads (OpenMP when the TU is
/// compiled with -fopenmp, else one; compile every TU of a program that instantiates this the
/// same way). y is [batch, w.rows()]. Throws reparam::error on the shape errors of
/// multiply_rows, or if the tables are too small for the batch. No allocation beyond OpenMP's.
template <class Arch = kernel_arch, class DerivedX>
void multiply(const packed_binary_coded_matrix& w, const Eigen::MatrixBase<DerivedX>& x,
              matrix_ref<float> y, lut_tables& tables, int threads = 1,
              lut_path path = best_path<Arch>()) {
  reparam::detail::static_check_input<DerivedX>();
  static_assert(std::is_same_v<typename DerivedX::Scalar, float>,
                "reparam: shiftadd::multiply takes float activations");
  constexpr const char* function = "shiftadd::multiply";
  reparam::detail::check(!w.empty(), function, "w is empty (default-constructed packed matrix)");
  constexpr bool is_column_vector =
      DerivedX::ColsAtCompileTime == 1 && DerivedX::RowsAtCompileTime != 1;
  const index batch = is_column_vector ? 1 : x.rows();
  const index cols = is_column_vector ? x.rows() : x.cols();
  reparam::detail::check(x.innerStride() == 1 || cols <= 1, function,
                         "x must have unit inner stride, got ", x.innerStride());
  reparam::detail::check(cols == w.cols(), function, "x has ", cols, " columns but w has cols ",
                         w.cols());
  reparam::detail::check(threads >= 1, function, "threads ", threads, " must be >= 1");
  const index row_stride = is_column_vector || batch <= 1 ? cols : x.outerStride();
  const const_matrix_map<float> x_view(x.derived().data(), batch, cols,
                                       Eigen::OuterStride<>(row_stride));
  matrix_map<float> y_view(y.data(), y.rows(), y.cols(), Eigen::OuterStride<>(y.outerStride()));
  if (batch > 0) {
    detail::check_no_overlap(function, x_view.data(), (batch - 1) * row_stride + cols,
                             y_view.data(),
                             (y_view.rows() - 1) * y_view.outerStride() + y_view.cols());
  }
  tables.build<Arch>(x_view);
  detail::check_lut_call<Arch>(function, w, tables, y_view, all_rows(w.rows()), path);
  if (batch == 0) {
    return;
  }
  const kernels::bcq_lut_tables view = tables.view();
  const kernels::bcq_lut_operand& op = w.operand();
#if defined(_OPENMP)
  if (threads > 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int part = 0; part < threads; ++part) {
      const row_range r = split_rows_part(w.rows(), threads, part, kernels::lut_tile_rows);
      if (!r.empty()) {
        kernels::bcq_lut_rows<Arch>(path, op, view, y_view.data(), y_view.outerStride(), r.begin,
                                    r.end);
      }
    }
    return;
  }
#endif
  kernels::bcq_lut_rows<Arch>(path, op, view, y_view.data(), y_view.outerStride(), 0, w.rows());
}

}  // namespace reparam::shiftadd

#endif  // REPARAM_SHIFTADD_MULTIPLY_HPP

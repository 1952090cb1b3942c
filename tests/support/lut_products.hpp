// SPDX-License-Identifier: Apache-2.0
// The two sides of every LUT kernel test: the scalar reference product of a lookup-table mode on
// the canonical binary-coded matrix, and one kernel path's product on the packed matrix.
#ifndef REPARAM_TESTS_SUPPORT_LUT_PRODUCTS_HPP
#define REPARAM_TESTS_SUPPORT_LUT_PRODUCTS_HPP

#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/kernels/reference/bcq_multiply.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/multiply.hpp>
#include <reparam/shiftadd/packed.hpp>

namespace reparam::test {

/// The scalar reference of `mode` on the canonical matrix: y [batch, w.rows()] from `batch` rows
/// of x, x_stride floats apart.
inline matrix<float> reference_product(const shiftadd::binary_coded_matrix& w, const float* x,
                                       index batch, index x_stride, kernels::lut_mode mode) {
  matrix<float> y(batch, w.rows());
  const auto op = shiftadd::detail::operand_of(w);
  if (mode == kernels::lut_mode::lossless) {
    kernels::reference::bcq_multiply_rows(op, x, batch, x_stride, y.data(), w.rows(), 0, w.rows());
  } else {
    kernels::reference::bcq_multiply_rows_fast(op, x, batch, x_stride, y.data(), w.rows(), 0,
                                               w.rows());
  }
  return y;
}

/// Kernel `path` on rows `rows` of the packed matrix (the other entries of y stay -7).
inline matrix<float> path_product(const shiftadd::packed_binary_coded_matrix& w, const float* x,
                                  index batch, index x_stride, kernels::lut_mode mode,
                                  kernels::lut_path path, row_range rows) {
  shiftadd::lut_tables tables(w, batch < 1 ? 1 : batch, mode);
  tables.build(const_matrix_map<float>(x, batch, w.cols(), Eigen::OuterStride<>(x_stride)));
  matrix<float> y = matrix<float>::Constant(batch, w.rows(), -7.0f);
  shiftadd::multiply_rows(w, tables, y, rows, path);
  return y;
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_LUT_PRODUCTS_HPP

// SPDX-License-Identifier: Apache-2.0
// Row-major Eigen aliases and views: the shapes every reparam function takes and returns.
// Rows are output channels ([out, in], as in PyTorch), so a row range is an output-channel range.
#ifndef REPARAM_CORE_VIEWS_HPP
#define REPARAM_CORE_VIEWS_HPP

#include <type_traits>

#include <Eigen/Core>

#include <reparam/core/index.hpp>
#include <reparam/core/scalar_traits.hpp>

namespace reparam {

/// Owning dynamic row-major matrix.
template <class Scalar>
using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Owning dynamic column vector.
template <class Scalar>
using vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Non-owning row-major view with a row stride (elements between row starts, >= cols).
template <class Scalar>
using matrix_map = Eigen::Map<matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class Scalar>
using const_matrix_map = Eigen::Map<const matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class Scalar>
using vector_map = Eigen::Map<vector<Scalar>>;

template <class Scalar>
using const_vector_map = Eigen::Map<const vector<Scalar>>;

/// Output parameter type: a writable row-major reference. Never copies; row blocks bind; a
/// column-major argument is a compile error.
template <class Scalar>
using matrix_ref = Eigen::Ref<matrix<Scalar>, 0, Eigen::OuterStride<>>;

/// Views `rows` x `cols` elements at `data` as a row-major matrix (row_stride defaults to cols).
template <class Scalar>
matrix_map<Scalar> row_major_map(Scalar* data, index rows, index cols, index row_stride = -1) {
  return matrix_map<Scalar>(data, rows, cols,
                            Eigen::OuterStride<>(row_stride < 0 ? cols : row_stride));
}

template <class Scalar>
const_matrix_map<Scalar> row_major_map(const Scalar* data, index rows, index cols,
                                       index row_stride = -1) {
  return const_matrix_map<Scalar>(data, rows, cols,
                                  Eigen::OuterStride<>(row_stride < 0 ? cols : row_stride));
}

namespace detail {

/// Compile-time checks for a read-only dense input given as `const Eigen::MatrixBase<Derived>&`:
/// stored data (not an expression), row-major (or a single row/column), unit inner stride,
/// supported scalar. Call as the first statement of a public entry point.
template <class Derived>
constexpr void static_check_input() {
  using scalar_type = typename Derived::Scalar;
  static_assert(is_supported_scalar_v<scalar_type>,
                "reparam: Scalar must be float or double; convert with .template cast<float>()");
  static_assert((Derived::Flags & Eigen::DirectAccessBit) != 0,
                "reparam: pass stored data, not an expression; call .eval() first");
  static_assert((Derived::Flags & Eigen::RowMajorBit) != 0 || Derived::RowsAtCompileTime == 1 ||
                    Derived::ColsAtCompileTime == 1,
                "reparam: weights must be RowMajor [out, in]; use reparam::matrix or "
                "reparam::row_major_map");
  static_assert(
      Derived::InnerStrideAtCompileTime == 1 || Derived::InnerStrideAtCompileTime == Eigen::Dynamic,
      "reparam: the inner stride must be 1 (contiguous rows)");
}

}  // namespace detail
}  // namespace reparam

#endif  // REPARAM_CORE_VIEWS_HPP

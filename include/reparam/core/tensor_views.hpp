// SPDX-License-Identifier: Apache-2.0
// N-d weights (conv OIHW and friends) as row-major Eigen tensor maps, and their zero-copy view as a
// [dim0, product of the other dims] matrix. The one header that includes Eigen's Tensor module.
#ifndef REPARAM_CORE_TENSOR_VIEWS_HPP
#define REPARAM_CORE_TENSOR_VIEWS_HPP

#include <unsupported/Eigen/CXX11/Tensor>

#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>

namespace reparam {

template <class Scalar, int Rank>
using tensor = Eigen::Tensor<Scalar, Rank, Eigen::RowMajor>;

template <class Scalar, int Rank>
using tensor_map = Eigen::TensorMap<Eigen::Tensor<Scalar, Rank, Eigen::RowMajor>>;

template <class Scalar, int Rank>
using const_tensor_map = Eigen::TensorMap<Eigen::Tensor<const Scalar, Rank, Eigen::RowMajor>>;

/// Views a row-major tensor as [dim(0), product of the remaining dims]; no copy.
template <class Scalar, int Rank>
const_matrix_map<Scalar> as_matrix(const const_tensor_map<Scalar, Rank>& t) {
  static_assert(Rank >= 1, "reparam::as_matrix needs a tensor of rank >= 1");
  const index rows = t.dimension(0);
  const index cols = rows == 0 ? 0 : t.size() / rows;
  return const_matrix_map<Scalar>(t.data(), rows, cols, Eigen::OuterStride<>(cols));
}

template <class Scalar, int Rank>
matrix_map<Scalar> as_matrix(const tensor_map<Scalar, Rank>& t) {
  static_assert(Rank >= 1, "reparam::as_matrix needs a tensor of rank >= 1");
  const index rows = t.dimension(0);
  const index cols = rows == 0 ? 0 : t.size() / rows;
  return matrix_map<Scalar>(t.data(), rows, cols, Eigen::OuterStride<>(cols));
}

}  // namespace reparam

#endif  // REPARAM_CORE_TENSOR_VIEWS_HPP

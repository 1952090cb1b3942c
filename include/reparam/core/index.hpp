// SPDX-License-Identifier: Apache-2.0
// The signed index type used for every size, count and stride in reparam's API.
#ifndef REPARAM_CORE_INDEX_HPP
#define REPARAM_CORE_INDEX_HPP

#include <Eigen/Core>

namespace reparam {

/// Signed, Eigen's own index type. Convert to std::size_t only at a std container boundary.
using index = Eigen::Index;

}  // namespace reparam

#endif  // REPARAM_CORE_INDEX_HPP

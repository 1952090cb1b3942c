// SPDX-License-Identifier: Apache-2.0
// Which scalar types the templates accept, and the accumulator types that go with them.
#ifndef REPARAM_CORE_SCALAR_TRAITS_HPP
#define REPARAM_CORE_SCALAR_TRAITS_HPP

#include <type_traits>

namespace reparam {

/// float is first class; double is supported, mainly for references and tests.
template <class Scalar>
inline constexpr bool is_supported_scalar_v =
    std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

/// `accumulator`: what kernels sum in (same width, so vector lanes stay full);
/// `wide`: what offline code (folds, Hessians, references) sums in so one rounding remains.
template <class Scalar>
struct scalar_traits {
  static_assert(is_supported_scalar_v<Scalar>,
                "reparam supports Scalar = float or double; convert other types first");
  using accumulator = Scalar;
  using wide = double;
};

}  // namespace reparam

#endif  // REPARAM_CORE_SCALAR_TRAITS_HPP

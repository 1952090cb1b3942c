// SPDX-License-Identifier: Apache-2.0
// Scalar types other than float and double are refused with advice.
#include <reparam/core/scalar_traits.hpp>

int main() {
#if defined(REPARAM_COMPILE_FAIL)
  using accumulator = reparam::scalar_traits<int>::accumulator;
#else
  using accumulator = reparam::scalar_traits<float>::accumulator;
#endif
  accumulator zero{};
  return static_cast<int>(zero);
}

// SPDX-License-Identifier: Apache-2.0
// Random binary-coded matrices for the shift-add multiply and kernel tests: uniformly random
// codes (every sign pattern equally likely, a better oracle workload than fitted weights, whose
// codes follow the data), scales in (0, 1), offsets in (-0.5, 0.5); optionally some scales zero
// or denormal.
#ifndef REPARAM_TESTS_SUPPORT_RANDOM_BCQ_HPP
#define REPARAM_TESTS_SUPPORT_RANDOM_BCQ_HPP

#include <cstdint>
#include <limits>

#include <reparam/core/random.hpp>
#include <reparam/shiftadd/formats.hpp>

namespace reparam::test {

enum class scale_style { uniform, with_zeros_and_denormals };

inline shiftadd::binary_coded_matrix random_bcq(const shiftadd::bcq_shape& shape,
                                                std::uint64_t seed,
                                                scale_style style = scale_style::uniform) {
  shiftadd::binary_coded_matrix m(shape);
  philox_engine engine(seed, 1);
  const unsigned code_mask = (1u << shape.bits) - 1u;
  for (index r = 0; r < m.rows(); ++r) {
    for (index c = 0; c < m.cols(); ++c) {
      m.set_code(r, c, static_cast<std::uint8_t>(engine() & code_mask));
    }
  }
  for (float& s : m.scales()) {
    s = static_cast<float>(uniform_open01_double(engine(), engine()));
    if (style == scale_style::with_zeros_and_denormals) {
      const std::uint32_t pick = engine() % 8u;
      if (pick == 0) {
        s = 0.0f;
      } else if (pick == 1) {
        s *= std::numeric_limits<float>::denorm_min() * 1000.0f;
      }
    }
  }
  for (float& o : m.offsets()) {
    o = static_cast<float>(uniform_open01_double(engine(), engine()) - 0.5);
  }
  return m;
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_RANDOM_BCQ_HPP

// SPDX-License-Identifier: Apache-2.0
// binary_coded_matrix: shape validation, bit and code access, the value of an element, and the
// storage accounting, against values written out by hand.
#include <cstdint>

#include <catch2/catch.hpp>

#include <reparam/shiftadd/formats.hpp>

using reparam::shiftadd::bcq_shape;
using reparam::shiftadd::binary_coded_matrix;
using reparam::shiftadd::scale_axis;

TEST_CASE("binary_coded_matrix rejects invalid shapes with clear messages", "[shiftadd][format]") {
  REQUIRE_THROWS_WITH(binary_coded_matrix(bcq_shape{0, 4, 2, 0}),
                      "shiftadd::binary_coded_matrix: shape 0x4 must have rows and cols >= 1");
  REQUIRE_THROWS_WITH(binary_coded_matrix(bcq_shape{2, 4, 9, 0}),
                      "shiftadd::binary_coded_matrix: bits 9 is outside [1, 8]");
  REQUIRE_THROWS_WITH(binary_coded_matrix(bcq_shape{2, 4000, 3, 96}),
                      "shiftadd::binary_coded_matrix: group_size 96 does not divide cols 4000");
  REQUIRE_THROWS_WITH(binary_coded_matrix(bcq_shape{172, 64, 3, 32, scale_axis::columns}),
                      "shiftadd::binary_coded_matrix: group_size 32 does not divide rows 172");
  REQUIRE_THROWS_AS(binary_coded_matrix(bcq_shape{2, 4, 2, -1}), reparam::error);
  REQUIRE_THROWS_AS(binary_coded_matrix(bcq_shape{2, 4, 2, 0, scale_axis::rows, 9}),
                    reparam::error);
}

TEST_CASE("binary_coded_matrix stores signs LSB-first in 32-bit words per plane and row",
          "[shiftadd][format]") {
  binary_coded_matrix m(bcq_shape{3, 70, 3, 0});
  REQUIRE(m.words_per_row() == 3);
  REQUIRE(m.groups() == 1);
  REQUIRE(m.group_size() == 70);
  m.set_code(2, 33, 0b101);
  CHECK(m.plane_row(0, 2)[1] == (1u << 1));
  CHECK(m.plane_row(1, 2)[1] == 0u);
  CHECK(m.plane_row(2, 2)[1] == (1u << 1));
  CHECK(m.code(2, 33) == 0b101);
  CHECK(m.code(2, 32) == 0);
  m.set_sign(1, 0, 69, true);
  CHECK(m.plane_row(1, 0)[2] == (1u << 5));
  m.set_sign(1, 0, 69, false);
  CHECK(m.plane_row(1, 0)[2] == 0u);
}

TEST_CASE("binary_coded_matrix value sums signed scales in plane order, plus the offset",
          "[shiftadd][format]") {
  // Row groups of 2 columns; 2 planes; offsets.
  binary_coded_matrix m(bcq_shape{2, 4, 2, 2, scale_axis::rows, 0, true});
  REQUIRE(m.groups() == 2);
  float* a = m.scales_of(1, 1);  // row 1, columns 2..3
  a[0] = 0.5f;
  a[1] = 0.25f;
  m.offsets()[3] = 1.0f;   // (row 1, group 1)
  m.set_code(1, 3, 0b01);  // +0.5 - 0.25 + 1
  CHECK(m.value(1, 3) == 1.25f);
  m.set_code(1, 2, 0b10);  // -0.5 + 0.25 + 1
  CHECK(m.value(1, 2) == 0.75f);
  CHECK(m.value(0, 0) == 0.0f);  // scales 0
  const auto dense = reparam::shiftadd::reconstruct(m);
  CHECK(dense(1, 3) == 1.25f);
  CHECK(dense(1, 2) == 0.75f);
  CHECK(dense(1, 1) == 0.0f);

  // Column groups: scales follow the column, groups run down the rows.
  binary_coded_matrix c(bcq_shape{4, 3, 1, 2, scale_axis::columns});
  REQUIRE(c.scale_major() == 3);
  REQUIRE(c.groups() == 2);
  c.scales_of(2, 1)[0] = 3.0f;  // column 2, rows 2..3
  c.set_code(3, 2, 1);
  CHECK(c.value(3, 2) == 3.0f);
  CHECK(c.value(2, 2) == -3.0f);
  CHECK(c.value(1, 2) == 0.0f);
  CHECK(c.group_of(3, 2) == 1);
  CHECK(c.major_of(3, 2) == 2);
}

TEST_CASE("binary_coded_matrix packed_size counts planes, scales, offsets and APoT terms",
          "[shiftadd][format]") {
  // 64 x 128, 3 bits, groups of 32: planes 3*64*4 words, scales 64*4*3 floats.
  const binary_coded_matrix m(bcq_shape{64, 128, 3, 32});
  CHECK(m.packed_size() == 3u * 64u * 4u * 4u + 64u * 4u * 3u * 4u);
  CHECK(m.bits_per_weight() == Approx(3.0 + 3.0 * 32.0 / 32.0));
  // APoT with 3 terms: 2 bytes per term instead of a float per scale; offsets add a float.
  const binary_coded_matrix p(bcq_shape{64, 128, 3, 32, scale_axis::rows, 3, true});
  CHECK(p.packed_size() == 3u * 64u * 4u * 4u + 64u * 4u * 3u * 3u * 2u + 64u * 4u * 4u);
}

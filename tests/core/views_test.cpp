// SPDX-License-Identifier: Apache-2.0
// Row-major aliases and maps: strides, blocks, and the tensor-to-matrix view.
#include <numeric>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/tensor_views.hpp>
#include <reparam/core/views.hpp>

TEST_CASE("row_major_map views strided rows without copying", "[core][views]") {
  std::vector<float> buffer(3 * 5);
  std::iota(buffer.begin(), buffer.end(), 0.f);
  auto m = reparam::row_major_map(buffer.data(), 3, 4, 5);  // 3 rows of 4, stride 5
  REQUIRE(m.rows() == 3);
  REQUIRE(m.cols() == 4);
  CHECK(m(1, 0) == 5.f);
  CHECK(m(2, 3) == 13.f);
  m(2, 3) = -1.f;
  CHECK(buffer[13] == -1.f);
  const float* cbuf = buffer.data();
  auto c = reparam::row_major_map(cbuf, 5, 3);
  CHECK(c(4, 2) == 14.f);
  CHECK(c.data() == cbuf);
}

TEST_CASE("matrix_ref binds row blocks of a row-major matrix without copying", "[core][views]") {
  reparam::matrix<float> m = reparam::matrix<float>::Zero(6, 4);
  auto fill = [](reparam::matrix_ref<float> out) { out.setConstant(2.f); };
  fill(m.middleRows(2, 3));
  CHECK(m.row(1).sum() == 0.f);
  CHECK(m.middleRows(2, 3).sum() == 24.f);
  CHECK(m.row(5).sum() == 0.f);
}

TEST_CASE("as_matrix views an OIHW tensor as O x IHW in place", "[core][views]") {
  std::vector<float> data(2 * 3 * 2 * 2);
  std::iota(data.begin(), data.end(), 0.f);
  reparam::const_tensor_map<float, 4> t(data.data(), 2, 3, 2, 2);
  auto m = reparam::as_matrix<float, 4>(t);
  REQUIRE(m.rows() == 2);
  REQUIRE(m.cols() == 12);
  CHECK(m.data() == data.data());
  // Row-major tensor index (o, i, h, w) is column i*4 + h*2 + w of row o.
  CHECK(m(1, 1 * 4 + 1 * 2 + 0) == t(1, 1, 1, 0));
}

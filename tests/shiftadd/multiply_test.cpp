// SPDX-License-Identifier: Apache-2.0
// shiftadd::multiply and multiply_rows (the scalar reference product on packed binary-coded
// weights): against reconstruct() followed by a dense product in double within a float summation
// bound, against an independent re-implementation of the documented summation order bit for bit,
// against hand-computed values, on odd shapes, both scale axes, offsets, batches, strided and
// blocked operands, row-range splits, NaN propagation, no allocation, and argument errors.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <thread>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/random.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/multiply.hpp>

#include "support/compare.hpp"
#include "support/count_allocations.hpp"
#include "support/random.hpp"
#include "support/random_bcq.hpp"

namespace {

using reparam::matrix;
using reparam::shiftadd::bcq_shape;
using reparam::shiftadd::binary_coded_matrix;
using reparam::shiftadd::scale_axis;

// Unit roundoff of float, 2^-24.
constexpr double float_unit_roundoff = 0x1p-24;

using reparam::test::random_bcq;

/// Y = X W^T in double from the float weights reconstruct() gives.
matrix<double> dense_reference(const binary_coded_matrix& w, const matrix<float>& x) {
  const matrix<double> dense = reparam::shiftadd::reconstruct(w).cast<double>();
  const matrix<double> xd = x.cast<double>();
  matrix<double> y(x.rows(), w.rows());
  for (reparam::index b = 0; b < x.rows(); ++b) {
    for (reparam::index r = 0; r < w.rows(); ++r) {
      double sum = 0.0;
      for (reparam::index c = 0; c < w.cols(); ++c) {
        sum += dense(r, c) * xd(b, c);
      }
      y(b, r) = sum;
    }
  }
  return y;
}

/// M[b, r] = sum_c (sum_p |alpha_p(r, c)| + |offset(r, c)|) |x[b, c]|: the magnitude that float
/// rounding errors of either evaluation order are proportional to.
matrix<double> magnitude(const binary_coded_matrix& w, const matrix<float>& x) {
  matrix<double> m(x.rows(), w.rows());
  for (reparam::index b = 0; b < x.rows(); ++b) {
    for (reparam::index r = 0; r < w.rows(); ++r) {
      double sum = 0.0;
      for (reparam::index c = 0; c < w.cols(); ++c) {
        const float* alpha = w.scales_of(w.major_of(r, c), w.group_of(r, c));
        double weight =
            std::abs(static_cast<double>(w.offset_of(w.major_of(r, c), w.group_of(r, c))));
        for (int p = 0; p < w.bits(); ++p) {
          weight += std::abs(static_cast<double>(alpha[p]));
        }
        sum += weight * std::abs(static_cast<double>(x(b, c)));
      }
      m(b, r) = sum;
    }
  }
  return m;
}

/// The number of float roundings an error bound counts, so that
/// |multiply - dense_reference| <= 2 * error_terms * u * M (u = 2^-24; the factor 2 covers the
/// second-order terms of gamma_n = n u / (1 - n u) and the double evaluation of the oracle):
///  - row-wise: each plane's partial sum rounds up to group_size - 1 times, the group sums of the
///    offsets likewise, the fma chain over groups * (bits + has_offsets) terms rounds once per
///    term, and the oracle's reconstruct() rounds bits (+1 with offsets) times per weight;
///  - column-wise: the fma chain over cols terms on exactly the weights reconstruct() gives.
double error_terms(const binary_coded_matrix& w) {
  const int per_group = w.bits() + (w.has_offsets() ? 1 : 0);
  if (w.axis() == scale_axis::columns) {
    return static_cast<double>(w.cols());
  }
  return static_cast<double>(w.group_size() + w.groups() * per_group + per_group);
}

/// The documented summation order re-implemented from the element accessors (sign(), scales_of,
/// offset_of), independently of the kernel's word and pointer arithmetic.
matrix<float> spec_multiply(const binary_coded_matrix& w, const matrix<float>& x) {
  matrix<float> y(x.rows(), w.rows());
  for (reparam::index b = 0; b < x.rows(); ++b) {
    for (reparam::index r = 0; r < w.rows(); ++r) {
      float acc = 0.0f;
      if (w.axis() == scale_axis::rows) {
        for (reparam::index g = 0; g < w.groups(); ++g) {
          // Columns four at a time ("k-groups"): each k-group's signed sum is formed from its
          // first column on, then added to the running partial sum.
          const reparam::index first = g * w.group_size();
          const reparam::index last = first + w.group_size();
          for (int p = 0; p < w.bits(); ++p) {
            float partial = 0.0f;
            for (reparam::index k = first; k < last; k += 4) {
              float term = w.sign(p, r, k) ? x(b, k) : -x(b, k);
              for (reparam::index c = k + 1; c < std::min(k + 4, last); ++c) {
                term += w.sign(p, r, c) ? x(b, c) : -x(b, c);
              }
              partial += term;
            }
            acc = std::fma(w.scales_of(r, g)[p], partial, acc);
          }
          if (w.has_offsets()) {
            float sum = 0.0f;
            for (reparam::index k = first; k < last; k += 4) {
              float term = x(b, k);
              for (reparam::index c = k + 1; c < std::min(k + 4, last); ++c) {
                term += x(b, c);
              }
              sum += term;
            }
            acc = std::fma(w.offset_of(r, g), sum, acc);
          }
        }
      } else {
        for (reparam::index c = 0; c < w.cols(); ++c) {
          acc = std::fma(w.value(r, c), x(b, c), acc);
        }
      }
      y(b, r) = acc;
    }
  }
  return y;
}

bool bitwise_equal(const matrix<float>& a, const matrix<float>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) == 0;
}

/// Group sizes to try for a grouped dimension: whole (0) plus every proper divisor among a few.
std::vector<reparam::index> group_sizes_for(reparam::index grouped) {
  std::vector<reparam::index> out{0};
  for (const reparam::index g : {1, 3, 5, 7, 8, 9, 11, 13, 16, 21, 32}) {
    if (g < grouped && grouped % g == 0 && out.size() < 4) {
      out.push_back(g);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("multiply matches reconstruct then a dense double product on odd shapes",
          "[shiftadd][multiply]") {
  const std::uint64_t seed = reparam::test::test_seed(11);
  CAPTURE(seed);
  long cases = 0;
  for (const reparam::index cols : {1, 3, 7, 31, 33, 63, 65, 127}) {
    for (const scale_axis axis : {scale_axis::rows, scale_axis::columns}) {
      const reparam::index rows =
          axis == scale_axis::rows ? 5 : 12;  // 12 rows: column groups 3, 4, 6
      const reparam::index grouped = axis == scale_axis::rows ? cols : rows;
      std::vector<reparam::index> groups = group_sizes_for(grouped);
      if (axis == scale_axis::columns) {
        groups = {0, 3, 4, 6};
      }
      for (const reparam::index group_size : groups) {
        for (const int bits : {1, 2, 3, 4, 8}) {
          for (const bool has_offsets : {false, true}) {
            for (const reparam::index batch : {1, 5}) {
              const bcq_shape shape{rows, cols, bits, group_size, axis, 0, has_offsets};
              const std::uint64_t case_seed = seed + static_cast<std::uint64_t>(cases++);
              const binary_coded_matrix w = random_bcq(shape, case_seed);
              const matrix<float> x = reparam::test::random_matrix(batch, cols, case_seed);
              matrix<float> y(batch, rows);
              reparam::shiftadd::multiply(w, x, y);

              const matrix<double> expected = dense_reference(w, x);
              const matrix<double> bound =
                  2.0 * error_terms(w) * float_unit_roundoff * magnitude(w, x);
              reparam::index bad = 0;
              double worst_ratio = 0.0;
              for (reparam::index i = 0; i < y.size(); ++i) {
                const double err = std::abs(static_cast<double>(y.data()[i]) - expected.data()[i]);
                bad += err <= bound.data()[i] ? 0 : 1;
                worst_ratio = std::max(worst_ratio, err / std::max(bound.data()[i], 1e-300));
              }
              INFO("cols " << cols << " rows " << rows << " axis " << static_cast<int>(axis)
                           << " group_size " << group_size << " bits " << bits << " offsets "
                           << has_offsets << " batch " << batch << ": " << bad
                           << " outside the bound, worst error/bound " << worst_ratio);
              REQUIRE(bad == 0);
            }
          }
        }
      }
    }
  }
  CHECK(cases > 500);
}

TEST_CASE("multiply follows the documented summation order bit for bit", "[shiftadd][multiply]") {
  const std::uint64_t seed = reparam::test::test_seed(12);
  CAPTURE(seed);
  struct config {
    reparam::index rows, cols, group_size;
    int bits;
    scale_axis axis;
    bool has_offsets;
  };
  const config configs[] = {
      {7, 65, 13, 3, scale_axis::rows, false},    {7, 65, 5, 2, scale_axis::rows, true},
      {9, 127, 0, 4, scale_axis::rows, true},     {3, 96, 32, 8, scale_axis::rows, false},
      {12, 33, 4, 3, scale_axis::columns, false}, {12, 33, 3, 2, scale_axis::columns, true},
      {6, 70, 0, 1, scale_axis::columns, true}};
  std::uint64_t salt = 0;
  for (const config& c : configs) {
    const binary_coded_matrix w =
        random_bcq({c.rows, c.cols, c.bits, c.group_size, c.axis, 0, c.has_offsets}, seed + salt);
    // Activations of mixed magnitude so that the rounding of each partial sum matters.
    matrix<float> x = reparam::test::random_matrix(4, c.cols, seed + salt + 100);
    for (reparam::index i = 0; i < x.size(); i += 3) {
      x.data()[i] *= 1024.0f;
    }
    ++salt;
    matrix<float> y(4, c.rows);
    reparam::shiftadd::multiply(w, x, y);
    const matrix<float> expected = spec_multiply(w, x);
    INFO("rows " << c.rows << " cols " << c.cols << " group_size " << c.group_size << " bits "
                 << c.bits << " axis " << static_cast<int>(c.axis) << " offsets " << c.has_offsets);
    REQUIRE(bitwise_equal(y, expected));
  }
}

TEST_CASE("multiply gives hand-computed values on a 2x4 2-bit matrix", "[shiftadd][multiply]") {
  // Row groups of 2 columns. value = (s0 a0) + (s1 a1) [+ offset]; code bit p set <=> s_p = +1.
  //   row 0: group 0 alphas (1, 0.5), group 1 alphas (2, 0.25); codes 3 0 1 2
  //          -> weights  1.5  -1.5  1.75  -1.75
  //   row 1: group 0 alphas (0.5, 0.5), group 1 alphas (1, 1);  codes 0 3 2 1
  //          -> weights -1     1    0      0
  binary_coded_matrix w(bcq_shape{2, 4, 2, 2});
  const float alphas[2][2][2] = {{{1.0f, 0.5f}, {2.0f, 0.25f}}, {{0.5f, 0.5f}, {1.0f, 1.0f}}};
  const std::uint8_t codes[2][4] = {{3, 0, 1, 2}, {0, 3, 2, 1}};
  for (reparam::index r = 0; r < 2; ++r) {
    for (reparam::index g = 0; g < 2; ++g) {
      std::copy(alphas[r][g], alphas[r][g] + 2, w.scales_of(r, g));
    }
    for (reparam::index c = 0; c < 4; ++c) {
      w.set_code(r, c, codes[r][c]);
    }
  }
  matrix<float> x(2, 4);
  x << 1.0f, 2.0f, 3.0f, 4.0f,  //
      0.5f, -1.0f, 2.0f, -0.25f;
  matrix<float> y(2, 2);
  reparam::shiftadd::multiply(w, x, y);
  // 1.5*1 - 1.5*2 + 1.75*3 - 1.75*4 = -3.25;  -1*1 + 1*2 = 1
  // 1.5*0.5 + 1.5 + 3.5 + 0.4375 = 6.1875;     -0.5 - 1 = -1.5
  CHECK(y(0, 0) == -3.25f);
  CHECK(y(0, 1) == 1.0f);
  CHECK(y(1, 0) == 6.1875f);
  CHECK(y(1, 1) == -1.5f);

  // The same with offsets: row 0 (0.25, -0.5), row 1 (0, 1) per group, times the group's x sum.
  binary_coded_matrix wo(bcq_shape{2, 4, 2, 2, scale_axis::rows, 0, true});
  wo.planes() = w.planes();
  wo.scales() = w.scales();
  wo.offsets() = {0.25f, -0.5f, 0.0f, 1.0f};
  reparam::shiftadd::multiply(wo, x, y);
  // -3.25 + 0.25*3 - 0.5*7 = -6;  1 + 0*3 + 1*7 = 8
  // 6.1875 + 0.25*(-0.5) - 0.5*1.75 = 5.1875;  -1.5 + 1*1.75 = 0.25
  CHECK(y(0, 0) == -6.0f);
  CHECK(y(0, 1) == 8.0f);
  CHECK(y(1, 0) == 5.1875f);
  CHECK(y(1, 1) == 0.25f);

  // Column-wise scales (one group of both rows per column):
  //   alphas per column (1, 0.5) (0.25, 0.25) (2, 1) (0.5, 0.125)
  //   row 0 codes 3 1 0 2 -> weights  1.5  0  -3   -0.375
  //   row 1 codes 0 2 3 1 -> weights -1.5  0   3    0.375
  binary_coded_matrix wc(bcq_shape{2, 4, 2, 0, scale_axis::columns});
  const float column_alphas[4][2] = {{1.0f, 0.5f}, {0.25f, 0.25f}, {2.0f, 1.0f}, {0.5f, 0.125f}};
  const std::uint8_t column_codes[2][4] = {{3, 1, 0, 2}, {0, 2, 3, 1}};
  for (reparam::index c = 0; c < 4; ++c) {
    std::copy(column_alphas[c], column_alphas[c] + 2, wc.scales_of(c, 0));
    for (reparam::index r = 0; r < 2; ++r) {
      wc.set_code(r, c, column_codes[r][c]);
    }
  }
  reparam::shiftadd::multiply(wc, x, y);
  // 1.5 - 9 - 1.5 = -9;  -1.5 + 9 + 1.5 = 9;  0.75 - 6 + 0.09375 = -5.15625;  -0.75 + 6 - 0.09375
  CHECK(y(0, 0) == -9.0f);
  CHECK(y(0, 1) == 9.0f);
  CHECK(y(1, 0) == -5.15625f);
  CHECK(y(1, 1) == 5.15625f);
}

TEST_CASE("multiply accepts row blocks, strided rows and vectors with identical results",
          "[shiftadd][multiply]") {
  const std::uint64_t seed = reparam::test::test_seed(13);
  CAPTURE(seed);
  for (const scale_axis axis : {scale_axis::rows, scale_axis::columns}) {
    const reparam::index rows = 12;
    const reparam::index cols = 45;
    const binary_coded_matrix w =
        random_bcq({rows, cols, 3, axis == scale_axis::rows ? 9 : 4, axis, 0, true}, seed);
    // x lives inside a wider, taller matrix: rows 2..6, columns 3..3+cols.
    const matrix<float> big_x = reparam::test::random_matrix(9, cols + 7, seed + 1);
    const matrix<float> x = big_x.block(2, 3, 5, cols);
    matrix<float> expected(5, rows);
    reparam::shiftadd::multiply(w, x, expected);

    constexpr float sentinel = 12345.0f;
    matrix<float> big_y = matrix<float>::Constant(8, rows + 6, sentinel);
    reparam::shiftadd::multiply(w, big_x.block(2, 3, 5, cols), big_y.block(1, 4, 5, rows));
    CHECK(bitwise_equal(big_y.block(1, 4, 5, rows), expected));
    // Nothing outside the output block was written.
    matrix<float> outside = big_y;
    outside.block(1, 4, 5, rows).setConstant(sentinel);
    CHECK((outside.array() == sentinel).all());

    // middleRows of a contiguous matrix, into middleRows of the output.
    const matrix<float> tall = reparam::test::random_matrix(11, cols, seed + 2);
    matrix<float> tall_y(11, rows);
    reparam::shiftadd::multiply(w, tall, tall_y);
    matrix<float> part_y(4, rows);
    reparam::shiftadd::multiply(w, tall.middleRows(3, 4), part_y);
    CHECK(bitwise_equal(part_y, tall_y.middleRows(3, 4)));

    // A vector x gives a [1, rows] y equal to the batch-1 product; so does a row of a matrix.
    const reparam::vector<float> v = x.row(0).transpose();
    matrix<float> y_vector(1, rows);
    reparam::shiftadd::multiply(w, v, y_vector);
    CHECK(bitwise_equal(y_vector, expected.topRows(1)));
    matrix<float> y_row(1, rows);
    reparam::shiftadd::multiply(w, big_x.row(2).segment(3, cols), y_row);
    CHECK(bitwise_equal(y_row, expected.topRows(1)));
  }
}

TEST_CASE("multiply_rows on split_rows pieces equals one whole multiply", "[shiftadd][multiply]") {
  const std::uint64_t seed = reparam::test::test_seed(14);
  CAPTURE(seed);
  for (const scale_axis axis : {scale_axis::rows, scale_axis::columns}) {
    const reparam::index rows = 37;
    const reparam::index cols = 70;
    const binary_coded_matrix w =
        random_bcq({rows, cols, 2, axis == scale_axis::rows ? 35 : 0, axis, 0, true}, seed);
    const matrix<float> x = reparam::test::random_matrix(3, cols, seed + 1);
    matrix<float> whole(3, rows);
    reparam::shiftadd::multiply(w, x, whole);

    for (const reparam::index parts : {1, 2, 3, 5, 40}) {
      for (const reparam::index granularity : {1, 4}) {
        // Sequentially: each piece writes exactly its own columns of y.
        matrix<float> y = matrix<float>::Constant(3, rows, std::numeric_limits<float>::quiet_NaN());
        for (const reparam::row_range piece : reparam::split_rows(rows, parts, granularity)) {
          reparam::shiftadd::multiply_rows(w, reparam::row_major_map(x.data(), 3, cols),
                                           reparam::row_major_map(y.data(), 3, rows), piece);
          for (reparam::index r = 0; r < rows; ++r) {
            const bool is_done = r < piece.end;
            CHECK((y.col(r).array().isNaN().any()) == !is_done);
          }
        }
        CHECK(bitwise_equal(y, whole));

        // Concurrently: one thread per piece, same result.
        matrix<float> y_threads(3, rows);
        std::vector<std::thread> threads;
        for (const reparam::row_range piece : reparam::split_rows(rows, parts, granularity)) {
          threads.emplace_back([&w, &x, &y_threads, piece, cols, rows] {
            reparam::shiftadd::multiply_rows(w, reparam::row_major_map(x.data(), 3, cols),
                                             reparam::row_major_map(y_threads.data(), 3, rows),
                                             piece);
          });
        }
        for (std::thread& t : threads) {
          t.join();
        }
        CHECK(bitwise_equal(y_threads, whole));
      }
    }
  }
}

TEST_CASE("multiply propagates NaN in x to the whole output row", "[shiftadd][multiply]") {
  const std::uint64_t seed = reparam::test::test_seed(15);
  for (const scale_axis axis : {scale_axis::rows, scale_axis::columns}) {
    // Zero scales too: NaN * 0 is NaN, so even an all-zero weight row turns NaN.
    binary_coded_matrix w = random_bcq({6, 40, 2, axis == scale_axis::rows ? 8 : 0, axis}, seed);
    std::fill(w.scales_of(0, 0), w.scales_of(0, 0) + 2, 0.0f);
    matrix<float> x = reparam::test::random_matrix(3, 40, seed + 1);
    x(1, 17) = std::numeric_limits<float>::quiet_NaN();
    matrix<float> y(3, 6);
    reparam::shiftadd::multiply(w, x, y);
    CHECK(y.row(1).array().isNaN().all());
    CHECK(y.row(0).array().isFinite().all());
    CHECK(y.row(2).array().isFinite().all());
  }
}

TEST_CASE("multiply and multiply_rows do not allocate", "[shiftadd][multiply]") {
  const std::uint64_t seed = reparam::test::test_seed(16);
  const binary_coded_matrix w = random_bcq({16, 64, 3, 32, scale_axis::rows, 0, true}, seed);
  const binary_coded_matrix wc = random_bcq({16, 64, 3, 8, scale_axis::columns, 0, true}, seed);
  const matrix<float> x = reparam::test::random_matrix(4, 64, seed + 1);
  matrix<float> y(4, 16);
  const long before = reparam::test::allocations();
  reparam::shiftadd::multiply(w, x, y);
  reparam::shiftadd::multiply(wc, x, y);
  reparam::shiftadd::multiply_rows(w, reparam::row_major_map(x.data(), 4, 64),
                                   reparam::row_major_map(y.data(), 4, 16), {3, 9});
  const long after = reparam::test::allocations();
  CHECK(after == before);
}

TEST_CASE("multiply rejects bad shapes, ranges and aliasing with clear messages",
          "[shiftadd][multiply]") {
  const binary_coded_matrix w = random_bcq({3, 8, 2, 4}, 1);
  const matrix<float> x(2, 8);
  matrix<float> y(2, 3);
  using Catch::Matchers::Equals;
  REQUIRE_THROWS_WITH(reparam::shiftadd::multiply(w, matrix<float>(2, 7), y),
                      Equals("shiftadd::multiply: x has 7 columns but w has cols 8"));
  REQUIRE_THROWS_WITH(reparam::shiftadd::multiply(w, reparam::vector<float>(5), y.topRows(1)),
                      Equals("shiftadd::multiply: x has 5 values but w has cols 8"));
  matrix<float> y_wrong(2, 4);
  REQUIRE_THROWS_WITH(reparam::shiftadd::multiply(w, x, y_wrong),
                      Equals("shiftadd::multiply: y is 2x4 but must be [batch 2, w.rows 3]"));
  matrix<float> y_batch(3, 3);
  REQUIRE_THROWS_WITH(reparam::shiftadd::multiply(w, x, y_batch),
                      Equals("shiftadd::multiply: y is 3x3 but must be [batch 2, w.rows 3]"));
  REQUIRE_THROWS_WITH(
      reparam::shiftadd::multiply(binary_coded_matrix(), x, y),
      Equals("shiftadd::multiply: w is empty (0x0); construct it from a bcq_shape"));
  // A column of a row-major matrix is a vector with a non-unit stride.
  const matrix<float> columns(8, 3);
  matrix<float> y1(1, 3);
  REQUIRE_THROWS_WITH(reparam::shiftadd::multiply(w, columns.col(1), y1),
                      Equals("shiftadd::multiply: x must have unit inner stride (contiguous "
                             "values), got inner stride 3"));

  const auto x_map = reparam::row_major_map(x.data(), 2, 8);
  const auto y_map = reparam::row_major_map(y.data(), 2, 3);
  REQUIRE_THROWS_WITH(reparam::shiftadd::multiply_rows(w, x_map, y_map, {2, 4}),
                      Equals("shiftadd::multiply_rows: row range [2, 4) is not inside [0, 3)"));
  REQUIRE_THROWS_WITH(reparam::shiftadd::multiply_rows(w, x_map, y_map, {2, 1}),
                      Equals("shiftadd::multiply_rows: row range [2, 1) is not inside [0, 3)"));
  REQUIRE_THROWS_WITH(
      reparam::shiftadd::multiply_rows(w, reparam::row_major_map(x.data(), 2, 7), y_map, {0, 3}),
      Equals("shiftadd::multiply_rows: x has 7 columns but w has cols 8"));
  // y inside x's storage.
  matrix<float> shared(2, 8);
  REQUIRE_THROWS_WITH(
      reparam::shiftadd::multiply_rows(
          w, reparam::row_major_map(static_cast<const float*>(shared.data()), 2, 8),
          reparam::row_major_map(shared.data() + 4, 2, 3, 8), {0, 3}),
      Equals("shiftadd::multiply_rows: x and y overlap; the output must not alias the input"));
  // An empty range and an empty batch are fine and write nothing.
  y.setConstant(7.0f);
  reparam::shiftadd::multiply_rows(w, x_map, y_map, {1, 1});
  CHECK((y.array() == 7.0f).all());
  matrix<float> empty_x(0, 8);
  matrix<float> empty_y(0, 3);
  reparam::shiftadd::multiply(w, empty_x, empty_y);
  // An inconsistent matrix (arrays resized by hand) is rejected, not read out of bounds.
  binary_coded_matrix broken = random_bcq({3, 8, 2, 4}, 2);
  broken.scales().pop_back();
  REQUIRE_THROWS_WITH(reparam::shiftadd::multiply(broken, x, y),
                      Equals("shiftadd::multiply: w's arrays (6 plane words, 11 scales, 0 "
                             "offsets) do not match its shape 3x8, bits 2, group_size 4"));
}

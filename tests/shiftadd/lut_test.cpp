// SPDX-License-Identifier: Apache-2.0
// The lookup-table product on packed binary-coded weights (shiftadd::packed_binary_coded_matrix,
// lut_tables, multiply_rows, multiply): packing round-trips to the canonical matrix, and every
// kernel path usable on this machine equals the scalar reference of its mode bit for bit
// (lossless: kernels::reference::bcq_multiply_rows, fast: bcq_multiply_rows_fast) on odd shapes
// (rows around the 64-row tile, groups of 4k +- 1 columns, whole-row groups), every bit width,
// batches 1..65, scales with zeros and denormals, misaligned activations and row ranges; the
// fast mode's error against the lossless product stays inside its derived bound; NaN/Inf follow
// the documented rules; bad input is refused.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/core/half.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/kernels/reference/bcq_multiply.hpp>
#include <reparam/kernels/simd/bcq_lut.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/multiply.hpp>
#include <reparam/shiftadd/packed.hpp>

#include "support/count_allocations.hpp"
#include "support/lut_products.hpp"
#include "support/random.hpp"
#include "support/random_bcq.hpp"

namespace {

using reparam::matrix;
using reparam::kernels::lut_mode;
using reparam::kernels::lut_path;
using reparam::shiftadd::bcq_shape;
using reparam::shiftadd::binary_coded_matrix;
using reparam::shiftadd::packed_binary_coded_matrix;
using reparam::test::path_product;
using reparam::test::random_bcq;
using reparam::test::reference_product;

/// The paths this machine and build can run (generic always).
std::vector<lut_path> usable_paths() {
  std::vector<lut_path> out;
  for (const lut_path path : reparam::kernels::all_lut_paths) {
    if (reparam::kernels::is_lut_path_usable(path)) {
      out.push_back(path);
    } else {
      WARN("kernel path " << reparam::kernels::lut_path_name(path) << " not usable here: "
                          << (reparam::kernels::is_lut_path_compiled(path) ? "CPU lacks it"
                                                                           : "not compiled"));
    }
  }
  return out;
}

/// Bit equality of two float matrices (NaN equal to NaN of the same bits).
bool same_bits(const matrix<float>& a, const matrix<float>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

/// First differing element, for the failure message.
std::string first_difference(const matrix<float>& a, const matrix<float>& b) {
  for (reparam::index i = 0; i < a.rows(); ++i) {
    for (reparam::index j = 0; j < a.cols(); ++j) {
      if (std::memcmp(&a(i, j), &b(i, j), sizeof(float)) != 0) {
        return "(" + std::to_string(i) + ", " + std::to_string(j) +
               "): " + std::to_string(a(i, j)) + " vs " + std::to_string(b(i, j));
      }
    }
  }
  return "none";
}

struct shape_case {
  reparam::index rows;
  reparam::index cols;
  reparam::index group_size;
};

// Rows around the tile (64) and half tile (32); groups of 4k, 4k +- 1, 16k +- 1 columns and whole
// rows; multi-group rows.
const shape_case shapes[] = {{1, 4, 4},      {5, 12, 0},      {31, 36, 12}, {33, 17, 17},
                             {64, 64, 16},   {65, 127, 127},  {63, 129, 0}, {130, 96, 32},
                             {70, 258, 129}, {128, 256, 128}, {3, 15, 5},   {97, 400, 80}};

}  // namespace

TEST_CASE("packing round-trips to the canonical matrix", "[shiftadd][lut]") {
  const std::uint64_t seed = reparam::test::test_seed(41);
  CAPTURE(seed);
  for (const shape_case& s : shapes) {
    for (int bits = 1; bits <= 8; ++bits) {
      for (bool has_offsets : {false, true}) {
        bcq_shape shape{s.rows, s.cols, bits, s.group_size};
        shape.has_offsets = has_offsets;
        const binary_coded_matrix w = random_bcq(shape, seed + static_cast<std::uint64_t>(bits));
        const packed_binary_coded_matrix packed(w);
        CAPTURE(s.rows, s.cols, s.group_size, bits, has_offsets);
        CHECK(packed.rows() == w.rows());
        CHECK(packed.size_bytes() % 64 == 0);
        CHECK(reinterpret_cast<std::uintptr_t>(packed.bytes()) % 64 == 0);
        const binary_coded_matrix back = reparam::shiftadd::unpack(packed);
        CHECK(back.planes() == w.planes());
        CHECK(back.scales() == w.scales());
        CHECK(back.offsets() == w.offsets());
        const packed_binary_coded_matrix half(w, reparam::shiftadd::scale_storage::f16);
        const binary_coded_matrix half_back = reparam::shiftadd::unpack(half);
        CHECK(half_back.planes() == w.planes());
        CHECK(half.size_bytes() < packed.size_bytes());
        for (std::size_t i = 0; i < w.scales().size(); ++i) {
          CHECK(half_back.scales()[i] ==
                reparam::f16_to_float(reparam::float_to_f16(w.scales()[i])));
        }
        for (std::size_t i = 0; i < w.offsets().size(); ++i) {
          CHECK(half_back.offsets()[i] ==
                reparam::f16_to_float(reparam::float_to_f16(w.offsets()[i])));
        }
        const packed_binary_coded_matrix copy = packed;  // deep copy
        CHECK(std::memcmp(copy.bytes(), packed.bytes(), packed.size_bytes()) == 0);
        CHECK(copy.bytes() != packed.bytes());
      }
    }
  }
}

TEST_CASE("every kernel path equals the scalar reference of its mode bit for bit",
          "[shiftadd][lut]") {
  const std::uint64_t seed = reparam::test::test_seed(42);
  CAPTURE(seed);
  const std::vector<lut_path> paths = usable_paths();
  std::uint64_t salt = 0;
  for (const shape_case& s : shapes) {
    for (int bits : {1, 2, 3, 4, 5, 8}) {
      for (bool has_offsets : {false, true}) {
        bcq_shape shape{s.rows, s.cols, bits, s.group_size};
        shape.has_offsets = has_offsets;
        const binary_coded_matrix original =
            random_bcq(shape, seed + ++salt, reparam::test::scale_style::with_zeros_and_denormals);
        // f16 scales: the products equal the reference on the unpacked (rounded) scales.
        const auto storage = salt % 2 == 0 ? reparam::shiftadd::scale_storage::f16
                                           : reparam::shiftadd::scale_storage::f32;
        const packed_binary_coded_matrix packed(original, storage);
        const binary_coded_matrix w = reparam::shiftadd::unpack(packed);
        for (reparam::index batch : {reparam::index{1}, reparam::index{3}, reparam::index{8}}) {
          // One float of offset so x is misaligned, and a row stride wider than cols.
          const reparam::index stride = s.cols + 3;
          const matrix<float> x_storage =
              reparam::test::random_matrix(batch + 1, stride, seed + salt);
          const float* x = x_storage.data() + 1;
          for (lut_mode mode : {lut_mode::lossless, lut_mode::fast}) {
            const matrix<float> expected = reference_product(w, x, batch, stride, mode);
            for (lut_path path : paths) {
              CAPTURE(s.rows, s.cols, s.group_size, bits, has_offsets, batch,
                      static_cast<int>(mode), static_cast<int>(storage),
                      reparam::kernels::lut_path_name(path));
              const matrix<float> got =
                  path_product(packed, x, batch, stride, mode, path, {0, s.rows});
              INFO("first difference " << first_difference(got, expected));
              CHECK(same_bits(got, expected));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("kernel paths handle batches 1..65 with per-token tables", "[shiftadd][lut]") {
  const std::uint64_t seed = reparam::test::test_seed(43);
  CAPTURE(seed);
  bcq_shape shape{72, 160, 3, 32};
  shape.has_offsets = true;
  const binary_coded_matrix w = random_bcq(shape, seed);
  const packed_binary_coded_matrix packed(w);
  const matrix<float> x = reparam::test::random_matrix(65, 160, seed + 1, -4.0f, 4.0f);
  for (lut_mode mode : {lut_mode::lossless, lut_mode::fast}) {
    const matrix<float> expected = reference_product(w, x.data(), 65, 160, mode);
    for (lut_path path : usable_paths()) {
      for (reparam::index batch :
           {reparam::index{1}, reparam::index{2}, reparam::index{7}, reparam::index{16},
            reparam::index{17}, reparam::index{33}, reparam::index{64}, reparam::index{65}}) {
        CAPTURE(batch, static_cast<int>(mode), reparam::kernels::lut_path_name(path));
        const matrix<float> got = path_product(packed, x.data(), batch, 160, mode, path, {0, 72});
        CHECK(same_bits(got, expected.topRows(batch)));
      }
    }
  }
}

TEST_CASE("row ranges write only their rows and compose to the whole product", "[shiftadd][lut]") {
  const std::uint64_t seed = reparam::test::test_seed(44);
  CAPTURE(seed);
  const binary_coded_matrix w = random_bcq({203, 96, 2, 48}, seed);
  const packed_binary_coded_matrix packed(w);
  const matrix<float> x = reparam::test::random_matrix(3, 96, seed + 1);
  for (lut_mode mode : {lut_mode::lossless, lut_mode::fast}) {
    const matrix<float> expected = reference_product(w, x.data(), 3, 96, mode);
    for (lut_path path : usable_paths()) {
      CAPTURE(static_cast<int>(mode), reparam::kernels::lut_path_name(path));
      reparam::shiftadd::lut_tables tables(packed, 3, mode);
      tables.build(x);
      // Unaligned pieces (splitting tiles) and tile-aligned pieces.
      for (reparam::index granularity : {reparam::index{1}, reparam::index{64}}) {
        for (reparam::index parts : {reparam::index{2}, reparam::index{3}, reparam::index{7}}) {
          matrix<float> y = matrix<float>::Constant(3, 203, -7.0f);
          for (const reparam::row_range r : reparam::split_rows(203, parts, granularity)) {
            reparam::shiftadd::multiply_rows(packed, tables, y, r, path);
          }
          CHECK(same_bits(y, expected));
        }
      }
      matrix<float> y = matrix<float>::Constant(3, 203, -7.0f);
      reparam::shiftadd::multiply_rows(packed, tables, y, {70, 75}, path);
      for (reparam::index r = 0; r < 203; ++r) {
        for (reparam::index b = 0; b < 3; ++b) {
          if (r >= 70 && r < 75) {
            CHECK(y(b, r) == expected(b, r));
          } else {
            CHECK(y(b, r) == -7.0f);
          }
        }
      }
    }
  }
}

TEST_CASE("the fast mode stays inside its table-rounding error bound", "[shiftadd][lut]") {
  // Each lookup rounds one entry to a multiple of sigma_g: |error| <= sigma_g / 2. A plane of
  // group g sums ceil(G/4) lookups, weighted by |alpha|, so
  // |fast - lossless| <= sum_g sigma_g / 2 * ceil(G/4) * sum_p |alpha_p| (+ float rounding of
  // both, bounded by 1e-5 of the magnitude here).
  const std::uint64_t seed = reparam::test::test_seed(45);
  CAPTURE(seed);
  const binary_coded_matrix w = random_bcq({64, 512, 3, 128}, seed);
  const matrix<float> x = reparam::test::random_matrix(4, 512, seed + 1, -2.0f, 2.0f);
  const matrix<float> lossless = reference_product(w, x.data(), 4, 512, lut_mode::lossless);
  const matrix<float> fast = reference_product(w, x.data(), 4, 512, lut_mode::fast);
  double error_energy = 0.0;
  double energy = 0.0;
  for (reparam::index b = 0; b < 4; ++b) {
    for (reparam::index r = 0; r < 64; ++r) {
      double bound = 0.0;
      double magnitude = 0.0;
      for (reparam::index g = 0; g < w.groups(); ++g) {
        const float* xg = x.data() + b * 512 + g * 128;
        const auto quantizer = reparam::kernels::reference::lut_group_quantizer(xg, 128);
        double alpha_sum = 0.0;
        for (int p = 0; p < 3; ++p) {
          alpha_sum += std::abs(static_cast<double>(w.scales_of(r, g)[p]));
        }
        bound += 0.5 * static_cast<double>(quantizer.scale) * 32.0 * alpha_sum;
        for (reparam::index c = 0; c < 128; ++c) {
          magnitude += alpha_sum * std::abs(static_cast<double>(xg[c]));
        }
      }
      const double error =
          std::abs(static_cast<double>(fast(b, r)) - static_cast<double>(lossless(b, r)));
      CHECK(error <= bound + 1e-5 * magnitude);
      error_energy += error * error;
      energy += static_cast<double>(lossless(b, r)) * static_cast<double>(lossless(b, r));
    }
  }
  // The normalized error is far below the bound in practice (errors are unbiased).
  const double nmse = error_energy / energy;
  CAPTURE(nmse);
  CHECK(nmse < 1e-3);
}

TEST_CASE("NaN and Inf activations follow each mode's documented rule", "[shiftadd][lut]") {
  const std::uint64_t seed = reparam::test::test_seed(46);
  CAPTURE(seed);
  bcq_shape shape{67, 64, 2, 32};
  shape.has_offsets = true;
  const binary_coded_matrix w = random_bcq(shape, seed);
  const packed_binary_coded_matrix packed(w);
  matrix<float> x = reparam::test::random_matrix(3, 64, seed + 1);
  x(0, 5) = std::numeric_limits<float>::quiet_NaN();
  x(1, 40) = std::numeric_limits<float>::infinity();
  for (lut_mode mode : {lut_mode::lossless, lut_mode::fast}) {
    const matrix<float> expected = reference_product(w, x.data(), 3, 64, mode);
    for (lut_path path : usable_paths()) {
      CAPTURE(static_cast<int>(mode), reparam::kernels::lut_path_name(path));
      const matrix<float> got = path_product(packed, x.data(), 3, 64, mode, path, {0, 67});
      for (reparam::index r = 0; r < 67; ++r) {
        CHECK(std::isnan(got(0, r)));
        if (mode == lut_mode::fast) {
          CHECK(std::isnan(got(1, r)));  // Inf makes the token NaN in the fast mode
        } else {
          CHECK(!std::isfinite(got(1, r)));
        }
        CHECK(std::isfinite(got(2, r)));
        CHECK((std::isnan(got(1, r)) ? std::isnan(expected(1, r)) : got(1, r) == expected(1, r)));
        CHECK(got(2, r) == expected(2, r));
      }
    }
  }
}

TEST_CASE("multiply with tables runs every path on one or two threads without allocating",
          "[shiftadd][lut]") {
  const std::uint64_t seed = reparam::test::test_seed(47);
  CAPTURE(seed);
  const binary_coded_matrix w = random_bcq({150, 256, 2, 128}, seed);
  const packed_binary_coded_matrix packed(w);
  const matrix<float> x = reparam::test::random_matrix(5, 256, seed + 1);
  const Eigen::VectorXf v = x.row(0).transpose();
  for (lut_mode mode : {lut_mode::lossless, lut_mode::fast}) {
    const matrix<float> expected = reference_product(w, x.data(), 5, 256, mode);
    reparam::shiftadd::lut_tables tables(packed, 5, mode);
    for (lut_path path : usable_paths()) {
      for (int threads : {1, 2}) {
        matrix<float> y(5, 150);
        matrix<float> yv(1, 150);
        const long before = reparam::test::allocations();
        reparam::shiftadd::multiply(packed, x, y, tables, threads, path);
        const long after = reparam::test::allocations();
        if (threads == 1) {
          CHECK(after == before);
        }
        reparam::shiftadd::multiply(packed, v, yv, tables, threads, path);
        CHECK(same_bits(y, expected));
        CHECK(same_bits(yv, expected.topRows(1)));
      }
    }
  }
}

TEST_CASE("LUT entry points refuse bad input with clear messages", "[shiftadd][lut]") {
  using Catch::Matchers::Contains;
  binary_coded_matrix wc = random_bcq({8, 16, 2, 4, reparam::shiftadd::scale_axis::columns}, 1);
  CHECK_THROWS_WITH(packed_binary_coded_matrix(wc), Contains("column-wise"));
  CHECK_THROWS_WITH(packed_binary_coded_matrix(binary_coded_matrix()), Contains("empty"));
  binary_coded_matrix large = random_bcq({8, 16, 2, 8}, 3);
  large.scales()[5] = 1e6f;
  CHECK_THROWS_WITH(packed_binary_coded_matrix(large, reparam::shiftadd::scale_storage::f16),
                    Contains("binary16 range"));
  CHECK_NOTHROW(packed_binary_coded_matrix(large, reparam::shiftadd::scale_storage::f32));
  const packed_binary_coded_matrix packed(random_bcq({8, 16, 2, 8}, 2));
  reparam::shiftadd::lut_tables tables(packed, 2, lut_mode::fast);
  CHECK_THROWS_WITH(tables.build(matrix<float>(matrix<float>::Zero(3, 16))),
                    Contains("at most 2 tokens"));
  CHECK_THROWS_WITH(tables.build(matrix<float>(matrix<float>::Zero(1, 15))),
                    Contains("x has 15 columns"));
  CHECK_THROWS_WITH(reparam::shiftadd::lut_tables(16, 5, 1, lut_mode::fast),
                    Contains("group_size 5"));
  reparam::shiftadd::lut_tables other(32, 8, 1, lut_mode::lossless);
  matrix<float> y(1, 8);
  CHECK_THROWS_WITH(reparam::shiftadd::multiply_rows(packed, other, y, {0, 8}),
                    Contains("the tables are for cols 32"));
  tables.build(matrix<float>(matrix<float>::Zero(1, 16)));
  CHECK_THROWS_WITH(reparam::shiftadd::multiply_rows(packed, tables, y, {0, 9}),
                    Contains("row range [0, 9)"));
  matrix<float> wrong(2, 8);
  CHECK_THROWS_WITH(reparam::shiftadd::multiply_rows(packed, tables, wrong, {0, 8}),
                    Contains("y is 2x8"));
  CHECK_THROWS_WITH(
      reparam::shiftadd::multiply_rows(packed_binary_coded_matrix(), tables, y, {0, 0}),
      Contains("empty"));
  for (const lut_path path : reparam::kernels::all_lut_paths) {
    if (!reparam::kernels::is_lut_path_usable(path)) {
      CHECK_THROWS_WITH(reparam::shiftadd::multiply_rows(packed, tables, y, {0, 8}, path),
                        Contains(reparam::kernels::lut_path_name(path)));
    }
  }
}

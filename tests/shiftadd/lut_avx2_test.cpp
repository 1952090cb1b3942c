// SPDX-License-Identifier: Apache-2.0
// The AVX2 + FMA path of the LUT product (kernels/simd/bcq_lut_avx2.hpp) built the way an
// AVX2-only CPU would run it: this file is compiled with AVX-512 switched off (-mno-avx512f after
// the target's -march=native, see CMakeLists.txt), so kernel_arch is fma3<avx2> and avx2 is the
// best path. It must equal the scalar reference of each mode bit for bit on odd shapes, on groups
// long enough to be cut into chunks, at the int16 accumulators' extreme (every entry +-127 over
// 64 quads), on token blocks beyond 16 and on row ranges that split tiles.
#if defined(__AVX512F__)
#error "lut_avx2_test.cpp must be compiled without AVX-512 (-mno-avx512f)"
#endif
#if !defined(__AVX2__) || !defined(__FMA__)
#error "lut_avx2_test.cpp must be compiled with AVX2 and FMA (-mavx2 -mfma)"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include <catch2/catch.hpp>
#include <xsimd/xsimd.hpp>

#include <reparam/core/row_range.hpp>
#include <reparam/kernels/reference/bcq_multiply.hpp>
#include <reparam/kernels/simd/bcq_lut.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/multiply.hpp>
#include <reparam/shiftadd/packed.hpp>

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
using reparam::test::reference_product;

static_assert(std::is_same_v<reparam::kernel_arch, xsimd::fma3<xsimd::avx2>>,
              "without AVX-512 the kernels' ISA ceiling is fma3<avx2>");
static_assert(reparam::kernels::is_lut_path_compiled(lut_path::avx2),
              "the AVX2 path must be compiled into this translation unit");

/// Whether this CPU runs AVX2 + FMA (WARNs and returns false otherwise; Catch2 2 has no SKIP).
bool avx2_runs_here() {
  if (!reparam::kernels::is_lut_path_supported_by_cpu(lut_path::avx2)) {
    WARN("this CPU lacks AVX2 + FMA: the avx2 LUT path is not tested");
    return false;
  }
  return true;
}

/// Number of elements whose bits differ, and the first of them, for the failure message.
struct bit_comparison {
  reparam::index mismatches = 0;
  std::string first = "none";
};

bit_comparison compare_bits(const matrix<float>& got, const matrix<float>& expected) {
  bit_comparison c;
  for (reparam::index b = 0; b < got.rows(); ++b) {
    for (reparam::index r = 0; r < got.cols(); ++r) {
      if (std::memcmp(&got(b, r), &expected(b, r), sizeof(float)) != 0) {
        if (c.mismatches == 0) {
          c.first = "(" + std::to_string(b) + ", " + std::to_string(r) +
                    "): " + std::to_string(got(b, r)) + " vs " + std::to_string(expected(b, r));
        }
        ++c.mismatches;
      }
    }
  }
  return c;
}

/// Checks the avx2 path against the reference of both modes on `batch` random tokens.
void check_both_modes(const binary_coded_matrix& w, reparam::index batch, std::uint64_t seed) {
  const packed_binary_coded_matrix packed(w);
  // One float of offset so x is misaligned, and a row stride wider than cols.
  const reparam::index stride = w.cols() + 3;
  const matrix<float> storage = reparam::test::random_matrix(batch + 1, stride, seed);
  const float* x = storage.data() + 1;
  for (const lut_mode mode : {lut_mode::lossless, lut_mode::fast}) {
    CAPTURE(w.rows(), w.cols(), w.group_size(), w.bits(), w.has_offsets(), batch,
            static_cast<int>(mode));
    const matrix<float> expected = reference_product(w, x, batch, stride, mode);
    const matrix<float> got =
        path_product(packed, x, batch, stride, mode, lut_path::avx2, {0, w.rows()});
    const bit_comparison c = compare_bits(got, expected);
    INFO("mismatches " << c.mismatches << ", first " << c.first);
    CHECK(c.mismatches == 0);
  }
}

}  // namespace

TEST_CASE("the avx2 LUT path is compiled without AVX-512 and is the best path here",
          "[shiftadd][lut]") {
  CHECK(std::string(reparam::kernel_arch::name()) == xsimd::fma3<xsimd::avx2>::name());
  if (avx2_runs_here()) {
    CHECK(reparam::kernels::best_lut_path() == lut_path::avx2);
    CHECK(reparam::shiftadd::best_path() == lut_path::avx2);
  }
}

TEST_CASE("the avx2 LUT path equals the references bit for bit on odd shapes", "[shiftadd][lut]") {
  if (!avx2_runs_here()) {
    return;
  }
  const std::uint64_t seed = reparam::test::test_seed(142);
  CAPTURE(seed);
  struct shape_case {
    reparam::index rows;
    reparam::index cols;
    reparam::index group_size;
  };
  // Rows around the half tile and the tile; groups of 4k +- 1 and 16k +- 1 columns, whole rows.
  const shape_case shapes[] = {{1, 4, 4},      {31, 36, 12},  {33, 17, 17},   {64, 64, 16},
                               {65, 127, 127}, {130, 96, 32}, {70, 258, 129}, {97, 400, 80}};
  std::uint64_t salt = 0;
  for (const shape_case& s : shapes) {
    for (int bits = 1; bits <= 8; ++bits) {
      bcq_shape shape{s.rows, s.cols, bits, s.group_size};
      shape.has_offsets = bits % 2 == 0;
      const binary_coded_matrix w = reparam::test::random_bcq(
          shape, seed + ++salt, reparam::test::scale_style::with_zeros_and_denormals);
      check_both_modes(w, bits == 3 ? 5 : 1, seed + salt);
    }
  }
}

TEST_CASE("the avx2 LUT path cuts long groups into chunks without changing the sums",
          "[shiftadd][lut]") {
  if (!avx2_runs_here()) {
    return;
  }
  const std::uint64_t seed = reparam::test::test_seed(143);
  CAPTURE(seed);
  // 65 quads (one past the 64-quad chunk of 1-2 planes), 129 quads with a ragged last k-group,
  // and whole 2000-column rows (125 quads: several chunks at every width).
  const reparam::index cases[][2] = {{1040, 1040}, {2062, 2062}, {2000, 0}};
  std::uint64_t salt = 0;
  for (const auto& c : cases) {
    for (int bits : {1, 2, 3, 5, 8}) {
      bcq_shape shape{40, c[0], bits, c[1]};
      shape.has_offsets = bits == 3;
      const binary_coded_matrix w = reparam::test::random_bcq(shape, seed + ++salt);
      check_both_modes(w, 2, seed + salt);
    }
  }
}

TEST_CASE("the avx2 fast path sums int8 entries of +-127 over long groups exactly",
          "[shiftadd][lut]") {
  if (!avx2_runs_here()) {
    return;
  }
  // Equal positive activations make entry 15 (all signs +1) the group maximum, quantized to
  // +127, and entry 0 to -127. Rows of all-+1 or all--1 codes look up only those, so a row's
  // int16 sum grows by 4 * 127 per quad: 32512 over a 64-quad chunk (1-2 planes), the edge of
  // int16. Whole-row groups of 64 and 256 quads.
  for (const reparam::index cols : {reparam::index{1024}, reparam::index{4096}}) {
    for (int bits : {1, 2, 4}) {
      binary_coded_matrix w(bcq_shape{70, cols, bits, cols});
      const auto top = static_cast<std::uint8_t>((1u << bits) - 1u);
      for (reparam::index r = 0; r < w.rows(); ++r) {
        for (reparam::index c = 0; c < cols; ++c) {
          w.set_code(r, c,
                     r % 3 == 0 ? std::uint8_t{0}
                                : (r % 3 == 1 ? top : static_cast<std::uint8_t>(c % (top + 1))));
        }
      }
      for (float& s : w.scales()) {
        s = 0.5f;
      }
      const packed_binary_coded_matrix packed(w);
      const matrix<float> x = matrix<float>::Constant(2, cols, 0.25f);
      CAPTURE(cols, bits);
      const matrix<float> expected = reference_product(w, x.data(), 2, cols, lut_mode::fast);
      const matrix<float> got =
          path_product(packed, x.data(), 2, cols, lut_mode::fast, lut_path::avx2, {0, 70});
      const bit_comparison c = compare_bits(got, expected);
      INFO("mismatches " << c.mismatches << ", first " << c.first);
      CHECK(c.mismatches == 0);
      // Row 1 (codes all +1) looks up +127 everywhere: I_p = 127 * cols / 4, sigma = 1 / 127.
      const float sigma = 1.0f / 127.0f;
      const float plane = 127.0f * static_cast<float>(cols / 4);
      float s = 0.0f;
      for (int p = 0; p < bits; ++p) {
        s = std::fma(0.5f, plane, s);
      }
      CHECK(got(0, 1) == std::fma(sigma, s, 0.0f));
    }
  }
}

TEST_CASE("the avx2 LUT path handles token blocks beyond 16 and row ranges that split tiles",
          "[shiftadd][lut]") {
  if (!avx2_runs_here()) {
    return;
  }
  const std::uint64_t seed = reparam::test::test_seed(144);
  CAPTURE(seed);
  bcq_shape shape{203, 160, 3, 32};
  shape.has_offsets = true;
  const binary_coded_matrix w = reparam::test::random_bcq(shape, seed);
  const packed_binary_coded_matrix packed(w);
  const matrix<float> x = reparam::test::random_matrix(37, 160, seed + 1, -4.0f, 4.0f);
  for (const lut_mode mode : {lut_mode::lossless, lut_mode::fast}) {
    CAPTURE(static_cast<int>(mode));
    const matrix<float> expected = reference_product(w, x.data(), 37, 160, mode);
    reparam::shiftadd::lut_tables tables(packed, 37, mode);
    tables.build(x);
    for (reparam::index parts : {reparam::index{1}, reparam::index{3}, reparam::index{7}}) {
      CAPTURE(parts);
      matrix<float> y = matrix<float>::Constant(37, 203, -7.0f);
      for (const reparam::row_range r : reparam::split_rows(203, parts, 1)) {
        reparam::shiftadd::multiply_rows(packed, tables, y, r, lut_path::avx2);
      }
      const bit_comparison c = compare_bits(y, expected);
      INFO("mismatches " << c.mismatches << ", first " << c.first);
      CHECK(c.mismatches == 0);
    }
    matrix<float> y = matrix<float>::Constant(37, 203, -7.0f);
    reparam::shiftadd::multiply_rows(packed, tables, y, {70, 75}, lut_path::avx2);
    reparam::index wrong = 0;
    for (reparam::index b = 0; b < 37; ++b) {
      for (reparam::index r = 0; r < 203; ++r) {
        const float want = r >= 70 && r < 75 ? expected(b, r) : -7.0f;
        wrong += std::memcmp(&y(b, r), &want, sizeof(float)) != 0 ? 1 : 0;
      }
    }
    CHECK(wrong == 0);
  }
}

TEST_CASE("the avx2 LUT path propagates NaN and Inf activations like the references",
          "[shiftadd][lut]") {
  if (!avx2_runs_here()) {
    return;
  }
  const std::uint64_t seed = reparam::test::test_seed(145);
  CAPTURE(seed);
  bcq_shape shape{67, 64, 2, 32};
  shape.has_offsets = true;
  const binary_coded_matrix w = reparam::test::random_bcq(shape, seed);
  const packed_binary_coded_matrix packed(w);
  matrix<float> x = reparam::test::random_matrix(3, 64, seed + 1);
  x(0, 5) = std::numeric_limits<float>::quiet_NaN();
  x(1, 40) = std::numeric_limits<float>::infinity();
  for (const lut_mode mode : {lut_mode::lossless, lut_mode::fast}) {
    CAPTURE(static_cast<int>(mode));
    const matrix<float> expected = reference_product(w, x.data(), 3, 64, mode);
    const matrix<float> got = path_product(packed, x.data(), 3, 64, mode, lut_path::avx2, {0, 67});
    for (reparam::index r = 0; r < 67; ++r) {
      CHECK(std::isnan(got(0, r)));
      CHECK((std::isnan(expected(1, r)) ? std::isnan(got(1, r)) : got(1, r) == expected(1, r)));
      CHECK(std::memcmp(&got(2, r), &expected(2, r), sizeof(float)) == 0);
    }
  }
}

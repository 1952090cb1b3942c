// SPDX-License-Identifier: Apache-2.0
// The shift-form product P_hat V_hat of scale/log_quantizer.hpp (RepQ-ViT's log-sqrt2 attention
// reparameterized into log2 + shift) and its kernels (kernels/reference/log_shift_matmul.hpp,
// kernels/simd/log_shift_matmul.hpp):
//  - the integer bucket sums against a brute-force int64 loop;
//  - every compiled SIMD path against the scalar reference, bit for bit, on odd shapes, every bit
//    width and zero policy of both bases, int16 extremes, several key chunks, row ranges and
//    misaligned strided blocks;
//  - the product against the dequantized product computed directly in long double (an oracle
//    that shares no code with the library: the level values are scale * 2^(-q/2) by powl);
//  - no allocation in multiply_shift_form_rows, and every refusal with its message.
#define EIGEN_RUNTIME_NO_MALLOC

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>
#include <xsimd/xsimd.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/random.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/log_shift_matmul.hpp>
#include <reparam/kernels/simd/log_shift_matmul.hpp>
#include <reparam/scale/log_quantizer.hpp>

#include "support/count_allocations.hpp"
#include "support/random.hpp"
#include "support/scale_quantizers.hpp"

namespace {

namespace sc = reparam::scale;
namespace kr = reparam::kernels;
using Catch::Matchers::Contains;
using reparam::index;
using reparam::matrix;
using int16_matrix = matrix<std::int16_t>;

/// A seeded stream of integers and uniforms for the test data.
class source {
 public:
  explicit source(std::uint64_t seed, std::uint64_t stream = 0) : engine_(seed, stream) {}
  double uniform() { return reparam::uniform_open01_double(engine_(), engine_()); }
  /// Uniform integer in [lo, hi].
  std::int64_t integer(std::int64_t lo, std::int64_t hi) {
    const auto span = static_cast<double>(hi - lo + 1);
    const auto k = static_cast<std::int64_t>(uniform() * span);
    return lo + (k > hi - lo ? hi - lo : k);
  }

 private:
  reparam::philox_engine engine_;
};

/// The kernel tests' log quantizer: scale 0.75 unless given.
sc::log_quantizer make_quantizer(sc::log_base base, int bits, sc::zero_policy zeros,
                                 float scale = 0.75f) {
  return reparam::test::make_log_quantizer(base, bits, zeros, scale);
}

/// Codes of a [rows, inner] matrix: each entry is the zero code with probability zero_share,
/// else a uniform level (or, with `any_byte`, any byte >= levels for the kernels, which treat
/// every such value as zero).
sc::log_code_matrix random_codes(index rows, index inner, int levels, double zero_share,
                                 source& random, bool any_byte = false) {
  sc::log_code_matrix codes(rows, inner);
  for (index i = 0; i < rows; ++i) {
    for (index j = 0; j < inner; ++j) {
      if (random.uniform() < zero_share) {
        codes(i, j) = static_cast<std::uint8_t>(any_byte ? random.integer(levels, 255) : levels);
      } else {
        codes(i, j) = static_cast<std::uint8_t>(random.integer(0, levels - 1));
      }
    }
  }
  return codes;
}

/// V in [lo, hi], with the extremes themselves forced into some entries.
int16_matrix random_values(index inner, index cols, source& random, int lo = -32767,
                           int hi = 32767) {
  int16_matrix v(inner, cols);
  for (index j = 0; j < inner; ++j) {
    for (index c = 0; c < cols; ++c) {
      const double u = random.uniform();
      const std::int64_t value = u < 0.05 ? lo : (u < 0.1 ? hi : random.integer(lo, hi));
      v(j, c) = static_cast<std::int16_t>(value);
    }
  }
  return v;
}

kr::log_shift_operand operand(const sc::log_code_matrix& codes, const int16_matrix& v, int levels,
                              bool is_sqrt2, double scale) {
  kr::log_shift_operand op;
  op.codes = codes.data();
  op.code_row_stride = codes.cols();
  op.v = v.data();
  op.v_row_stride = v.cols();
  op.inner = codes.cols();
  op.cols = v.cols();
  op.levels = levels;
  op.is_sqrt2 = is_sqrt2;
  op.scale = scale;
  return op;
}

/// Bucket sums of row `row` by brute force in int64: bucket[q][c] = sum of v[j][c] over code q.
std::vector<std::int64_t> brute_buckets(const sc::log_code_matrix& codes, const int16_matrix& v,
                                        index row, int levels) {
  const index cols = v.cols();
  std::vector<std::int64_t> out(static_cast<std::size_t>(levels * cols), 0);
  for (index j = 0; j < codes.cols(); ++j) {
    const int q = codes(row, j);
    if (q >= levels) {
      continue;  // a zero code
    }
    for (index c = 0; c < cols; ++c) {
      out[static_cast<std::size_t>(q * cols + c)] += v(j, c);
    }
  }
  return out;
}

/// The bits of a float, so that bit-for-bit comparisons also cover -0 and NaN payloads.
std::uint32_t bits_of(float x) {
  std::uint32_t u = 0;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

/// Number of entries whose bits differ; `first` receives the first such (row, col).
index bit_mismatches(const matrix<float>& a, const matrix<float>& b, index& first_row,
                     index& first_col) {
  index count = 0;
  first_row = -1;
  first_col = -1;
  for (index i = 0; i < a.rows(); ++i) {
    for (index c = 0; c < a.cols(); ++c) {
      if (bits_of(a(i, c)) != bits_of(b(i, c))) {
        if (count == 0) {
          first_row = i;
          first_col = c;
        }
        ++count;
      }
    }
  }
  return count;
}

/// Runs `check(arch tag, path name)` for every SIMD path compiled into this TU and supported
/// by the CPU; an unsupported one is reported with WARN (Catch2 2.13 has no SKIP).
template <class Check>
void for_each_path(const Check& check) {
  const auto available = xsimd::available_architectures();
  check(xsimd::sse2{}, "generic");
#if REPARAM_HAS_LOG_SHIFT_AVX2
  if (available.fma3_avx2 != 0) {
    static_assert(kr::simd::log_shift_path_of<xsimd::fma3<xsimd::avx2>>() ==
                  kr::simd::log_shift_path::avx2);
    check(xsimd::fma3<xsimd::avx2>{}, "avx2");
  } else {
    WARN("the CPU has no AVX2 + FMA: the avx2 path is not tested");
  }
#endif
#if REPARAM_HAS_LOG_SHIFT_AVX512
  if (available.avx512bw != 0) {
    static_assert(kr::simd::log_shift_path_of<xsimd::avx512bw>() ==
                  kr::simd::log_shift_path::avx512bw);
    check(xsimd::avx512bw{}, "avx512bw");
#if REPARAM_WITH_AVX512VBMI_VNNI
    static_assert(kr::simd::log_shift_path_of<reparam::avx512vbmi_vnni>() ==
                  kr::simd::log_shift_path::avx512vnni);
    check(reparam::avx512vbmi_vnni{}, "avx512vnni");
#endif
  } else {
    WARN("the CPU has no AVX-512BW: the AVX-512 paths are not tested");
  }
#endif
  static_cast<void>(available);
}

/// One configuration of the bit-exact comparison.
struct config {
  sc::log_base base;
  int bits;
  sc::zero_policy zeros;
};

std::vector<config> all_configs() {
  std::vector<config> out;
  for (const sc::log_base base : {sc::log_base::two, sc::log_base::sqrt2}) {
    for (int bits = 2; bits <= 8; ++bits) {
      for (const sc::zero_policy zeros :
           {sc::zero_policy::extra_zero, sc::zero_policy::reserve_top_code}) {
        if (bits == 8 && zeros == sc::zero_policy::extra_zero) {
          continue;
        }
        out.push_back({base, bits, zeros});
      }
    }
  }
  return out;
}

/// Compares every path with the reference (product and bucket stage) on one problem.
void require_paths_match(const sc::log_code_matrix& codes, const int16_matrix& v, int levels,
                         bool is_sqrt2, double scale) {
  const kr::log_shift_operand op = operand(codes, v, levels, is_sqrt2, scale);
  const index rows = codes.rows();
  const index cols = v.cols();
  std::vector<std::int32_t> workspace(static_cast<std::size_t>(levels * cols + 1));
  matrix<float> expected(rows, cols);
  kr::reference::log_shift_matmul_rows(op, expected.data(), cols, 0, rows, workspace.data());
  std::vector<std::int32_t> expected_buckets(workspace.size());
  std::vector<std::int32_t> buckets(workspace.size());
  const index last = rows - 1;
  kr::reference::log_shift_buckets(op, last, expected_buckets.data());
  for_each_path([&](auto arch, const char* name) {
    CAPTURE(name, rows, codes.cols(), cols, levels, is_sqrt2);
    matrix<float> got = matrix<float>::Constant(rows, cols, -7.0f);
    std::fill(workspace.begin(), workspace.end(), 12345);
    kr::simd::log_shift_matmul_rows(arch, op, got.data(), cols, 0, rows, workspace.data());
    index first_row = 0;
    index first_col = 0;
    const index bad = bit_mismatches(got, expected, first_row, first_col);
    CAPTURE(bad, first_row, first_col);
    if (bad != 0) {
      CAPTURE(got(first_row, first_col), expected(first_row, first_col));
      FAIL("SIMD product differs from the reference");
    }
    // The bucket stage alone, from a dirty workspace.
    std::fill(buckets.begin(), buckets.end(), -99);
    kr::simd::log_shift_buckets(arch, op, last, buckets.data());
    REQUIRE(std::equal(buckets.begin(), buckets.end() - 1, expected_buckets.begin()));
    REQUIRE(buckets.back() == -99);  // nothing past levels * cols
    // The combine stage alone.
    matrix<float> row_out(1, cols);
    kr::simd::log_shift_combine(arch, op, expected_buckets.data(), row_out.data());
    REQUIRE(bit_mismatches(row_out, expected.row(last), first_row, first_col) == 0);
  });
}

TEST_CASE("the bucket stage equals a brute-force int64 sum per level",
          "[scale][log_shift][kernels]") {
  const std::uint64_t seed = reparam::test::test_seed(101);
  CAPTURE(seed);
  source random(seed);
  for (const index inner : {1, 5, 64, 600, 2049}) {
    for (const int levels : {1, 4, 16, 127, 255}) {
      for (const index cols : {1, 7, 33, 130}) {
        CAPTURE(inner, levels, cols);
        const index rows = 2;
        const sc::log_code_matrix codes = random_codes(rows, inner, levels, 0.4, random, true);
        const int16_matrix v = random_values(inner, cols, random, -32768, 32767);
        const kr::log_shift_operand op = operand(codes, v, levels, true, 1.0);
        std::vector<std::int32_t> buckets(static_cast<std::size_t>(levels * cols), 77);
        for (index row = 0; row < rows; ++row) {
          const std::vector<std::int64_t> expected = brute_buckets(codes, v, row, levels);
          kr::reference::log_shift_buckets(op, row, buckets.data());
          REQUIRE(std::equal(buckets.begin(), buckets.end(), expected.begin()));
          for_each_path([&](auto arch, const char* name) {
            CAPTURE(name);
            std::fill(buckets.begin(), buckets.end(), 77);
            kr::simd::log_shift_buckets(arch, op, row, buckets.data());
            REQUIRE(std::equal(buckets.begin(), buckets.end(), expected.begin()));
          });
        }
      }
    }
  }
}

TEST_CASE("bucket sums at the int32 bound are exact", "[scale][log_shift][kernels]") {
  // 65536 keys of -32768 sum to -2^31 and of 32767 to 2^31 - 65536: both representable.
  const index inner = kr::log_shift_max_inner;
  for (const int value : {-32768, 32767}) {
    const sc::log_code_matrix codes = sc::log_code_matrix::Zero(1, inner);
    const int16_matrix v = int16_matrix::Constant(inner, 3, static_cast<std::int16_t>(value));
    const kr::log_shift_operand op = operand(codes, v, 2, false, 1.0);
    const std::int64_t expected = std::int64_t{value} * inner;
    std::vector<std::int32_t> buckets(6);
    kr::reference::log_shift_buckets(op, 0, buckets.data());
    CHECK(buckets[0] == expected);
    CHECK(buckets[3] == 0);
    for_each_path([&](auto arch, const char* name) {
      CAPTURE(name, value);
      std::fill(buckets.begin(), buckets.end(), 5);
      kr::simd::log_shift_buckets(arch, op, 0, buckets.data());
      CHECK(buckets[0] == expected);
      CHECK(buckets[2] == expected);
      CHECK(buckets[4] == 0);
      matrix<float> out = matrix<float>::Zero(1, 3);
      kr::simd::log_shift_matmul_rows(arch, op, out.data(), 3, 0, 1, buckets.data());
      CHECK(out(0, 1) == static_cast<float>(expected));  // level 0 of log2: factor 1
    });
  }
}

TEST_CASE("every SIMD path equals the reference bit for bit on odd shapes",
          "[scale][log_shift][kernels]") {
  const std::uint64_t seed = reparam::test::test_seed(102);
  CAPTURE(seed);
  source random(seed);
  const index col_list[] = {1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 64, 65, 127, 128, 129};
  const index inner_list[] = {1, 2, 3, 17, 64, 255, 600};
  const std::vector<config> configs = all_configs();
  std::size_t k = 0;
  for (const index cols : col_list) {
    for (const index inner : inner_list) {
      const config& cfg = configs[k++ % configs.size()];
      const sc::log_quantizer q = make_quantizer(cfg.base, cfg.bits, cfg.zeros);
      const index rows = random.integer(1, 9);
      const double zero_share = random.uniform() < 0.2 ? 1.0 : random.uniform();
      CAPTURE(cols, inner, rows, cfg.bits, static_cast<int>(cfg.base), static_cast<int>(cfg.zeros),
              zero_share);
      const sc::log_code_matrix codes = random_codes(rows, inner, q.levels(), zero_share, random);
      const int16_matrix v = random_values(inner, cols, random);
      require_paths_match(codes, v, q.levels(), cfg.base == sc::log_base::sqrt2,
                          static_cast<double>(q.scale) * 0.01);
    }
  }
}

TEST_CASE("every SIMD path equals the reference for every bit width, base and zero policy",
          "[scale][log_shift][kernels]") {
  const std::uint64_t seed = reparam::test::test_seed(103);
  CAPTURE(seed);
  source random(seed);
  for (const config& cfg : all_configs()) {
    const sc::log_quantizer q = make_quantizer(cfg.base, cfg.bits, cfg.zeros, 1.0f);
    for (const index cols : {8, 33, 64}) {
      CAPTURE(cfg.bits, static_cast<int>(cfg.base), static_cast<int>(cfg.zeros), cols);
      const index inner = random.integer(1, 300);
      const sc::log_code_matrix codes = random_codes(3, inner, q.levels(), 0.3, random);
      const int16_matrix v = random_values(inner, cols, random, -32767, 32767);
      require_paths_match(codes, v, q.levels(), cfg.base == sc::log_base::sqrt2, 3e-5);
    }
  }
}

TEST_CASE("every SIMD path equals the reference across key chunks and on all-zero rows",
          "[scale][log_shift][kernels]") {
  const std::uint64_t seed = reparam::test::test_seed(104);
  CAPTURE(seed);
  source random(seed);
  // 2048 keys per chunk in the SIMD paths: cross one and two chunk boundaries.
  for (const index inner : {2047, 2048, 2049, 4097, 5000}) {
    for (const index cols : {5, 16, 40}) {
      CAPTURE(inner, cols);
      const sc::log_code_matrix codes = random_codes(2, inner, 16, 0.5, random);
      const int16_matrix v = random_values(inner, cols, random);
      require_paths_match(codes, v, 16, true, 1e-4);
    }
  }
  // Every code zero (or any byte >= levels): the product is +0 everywhere.
  for (const index cols : {3, 16, 64}) {
    const sc::log_code_matrix codes = random_codes(4, 100, 16, 1.0, random, true);
    const int16_matrix v = random_values(100, cols, random);
    require_paths_match(codes, v, 16, true, 1.0);
    const kr::log_shift_operand op = operand(codes, v, 16, true, 1.0);
    matrix<float> out = matrix<float>::Constant(4, cols, 3.0f);
    std::vector<std::int32_t> workspace(static_cast<std::size_t>(16 * cols));
    kr::simd::log_shift_matmul_rows(reparam::kernel_arch{}, op, out.data(), cols, 0, 4,
                                    workspace.data());
    for (index i = 0; i < out.size(); ++i) {
      REQUIRE(bits_of(out.data()[i]) == 0u);
    }
  }
}

TEST_CASE("every SIMD path equals the reference when small values allow int16 sums",
          "[scale][log_shift][kernels]") {
  // With 4 rows or more the AVX-512 paths sum a level's keys in int16 when there are at most
  // 32767 / max|v| of them: cover all-zero V, tiny ranges, 8-bit ranges, and ranges where
  // levels with more keys than that bound take the int32 sums in the same row.
  const std::uint64_t seed = reparam::test::test_seed(108);
  CAPTURE(seed);
  source random(seed);
  for (const int top : {0, 1, 127, 300, 16384, 32767}) {
    for (const index inner : {40, 2100}) {
      for (const index cols : {8, 20, 100}) {
        for (const int levels : {2, 16}) {
          CAPTURE(top, inner, cols, levels);
          const sc::log_code_matrix codes = random_codes(5, inner, levels, 0.2, random);
          int16_matrix v = random_values(inner, cols, random, -top, top);
          // Constant +top and -top columns: a level's int16 sum reaches 32767 / top * top
          // exactly at the bound, so one key too many would wrap.
          v.col(0).setConstant(static_cast<std::int16_t>(top));
          v.col(cols - 1).setConstant(static_cast<std::int16_t>(-top));
          require_paths_match(codes, v, levels, true, 1e-3);
        }
      }
    }
  }
}

/// The level value scale * 2^(-q/2) (sqrt2) or scale * 2^-q (log2), computed independently of
/// the library with powl in long double.
long double oracle_level(const sc::log_quantizer& q, int level) {
  const long double exponent = q.base == sc::log_base::sqrt2
                                   ? -static_cast<long double>(level) / 2.0L
                                   : -static_cast<long double>(level);
  return static_cast<long double>(q.scale) * std::pow(2.0L, exponent);
}

TEST_CASE("the shift-form product equals the dequantized product within a tight bound",
          "[scale][log_shift]") {
  // Oracle: y[i, c] = sum_j level(q_ij) * v_scale * v[j, c] in long double (64-bit mantissa).
  // The shift form is exact up to (a) the double sums of the combine, at most levels + 3
  // roundings of 2^-53 relative to the sum of magnitudes M = sum_j |level| |v_scale v|, and
  // (b) the final rounding to float, half an ulp of the result. So we require
  //   |out - y| <= ulp_float(y) + 2^-40 M
  // (one ulp leaves room for the double error near a float rounding boundary; 2^-40 M bounds
  // (258 + 3) 2^-53 M with margin and only matters under cancellation).
  const std::uint64_t seed = reparam::test::test_seed(105);
  CAPTURE(seed);
  source random(seed);
  for (const config& cfg : all_configs()) {
    const auto scale = static_cast<float>(0.05 + random.uniform());
    const sc::log_quantizer q = make_quantizer(cfg.base, cfg.bits, cfg.zeros, scale);
    const index rows = random.integer(1, 6);
    const index inner = random.integer(1, 400);
    const index cols = random.integer(1, 70);
    const float v_scale = 0.013f;
    CAPTURE(cfg.bits, static_cast<int>(cfg.base), static_cast<int>(cfg.zeros), rows, inner, cols);
    const sc::log_code_matrix codes = random_codes(rows, inner, q.levels(), 0.3, random);
    const int16_matrix v = random_values(inner, cols, random, -2000, 2000);
    const matrix<float> out = sc::multiply_shift_form(codes, q, v, v_scale);
    index bad = 0;
    double worst = 0.0;
    for (index i = 0; i < rows; ++i) {
      for (index c = 0; c < cols; ++c) {
        long double y = 0.0L;
        long double magnitude = 0.0L;
        for (index j = 0; j < inner; ++j) {
          if (codes(i, j) == q.zero_code()) {
            continue;
          }
          const long double term = oracle_level(q, codes(i, j)) *
                                   static_cast<long double>(v_scale) *
                                   static_cast<long double>(v(j, c));
          y += term;
          magnitude += std::fabs(term);
        }
        const auto yf = static_cast<float>(y);
        const auto ulp = static_cast<long double>(
            std::nextafter(std::fabs(yf), std::numeric_limits<float>::infinity()) - std::fabs(yf));
        const long double err = std::fabs(static_cast<long double>(out(i, c)) - y);
        const long double bound = ulp + std::ldexp(magnitude, -40);
        worst = std::max(worst, static_cast<double>(err / bound));
        bad += err <= bound ? 0 : 1;
      }
    }
    CAPTURE(worst);
    REQUIRE(bad == 0);
  }
}

TEST_CASE("multiply_shift_form_rows writes only its row range and binds strided blocks",
          "[scale][log_shift]") {
  const std::uint64_t seed = reparam::test::test_seed(106);
  CAPTURE(seed);
  source random(seed);
  const sc::log_quantizer q =
      make_quantizer(sc::log_base::sqrt2, 4, sc::zero_policy::extra_zero, 0.5f);
  for (const index cols : {1, 9, 16, 17, 70}) {
    for (const index offset : {0, 1, 3}) {
      const index rows = 7;
      const index inner = 45;
      CAPTURE(cols, offset);
      // Larger buffers, read through misaligned blocks (start offsets, row strides > cols).
      const sc::log_code_matrix big_codes =
          random_codes(rows + 2, inner + offset + 5, q.levels(), 0.3, random);
      const int16_matrix big_v = random_values(inner + 3, cols + offset + 2, random);
      const auto codes = big_codes.block(1, offset, rows, inner);
      const auto v = big_v.block(2, offset, inner, cols);
      const sc::log_code_matrix codes_copy = codes;
      const int16_matrix v_copy = v;
      const matrix<float> expected = sc::multiply_shift_form(codes_copy, q, v_copy, 0.25f);

      matrix<float> big_out = matrix<float>::Constant(rows + 3, cols + 4, -1.0f);
      const index workspace_size = sc::log_shift_workspace_size(q, cols);
      std::vector<std::int32_t> workspace(static_cast<std::size_t>(workspace_size));
      const reparam::row_range range{2, 5};
      sc::multiply_shift_form_rows(codes, q, v, 0.25f, big_out.block(1, offset, rows, cols), range,
                                   workspace.data(), workspace_size);
      for (index i = 0; i < big_out.rows(); ++i) {
        for (index c = 0; c < big_out.cols(); ++c) {
          const index r = i - 1;
          const index k = c - offset;
          const bool is_written = r >= range.begin && r < range.end && k >= 0 && k < cols;
          CAPTURE(i, c);
          if (is_written) {
            REQUIRE(bits_of(big_out(i, c)) == bits_of(expected(r, k)));
          } else {
            REQUIRE(big_out(i, c) == -1.0f);
          }
        }
      }
      // The rest of the rows, with the reference-path default arch too.
      sc::multiply_shift_form_rows<xsimd::sse2>(codes, q, v, 0.25f,
                                                big_out.block(1, offset, rows, cols), {0, 2},
                                                workspace.data(), workspace_size);
      sc::multiply_shift_form_rows(codes, q, v, 0.25f, big_out.block(1, offset, rows, cols), {5, 7},
                                   workspace.data(), workspace_size);
      index first_row = 0;
      index first_col = 0;
      const matrix<float> got = big_out.block(1, offset, rows, cols);
      REQUIRE(bit_mismatches(got, expected, first_row, first_col) == 0);
    }
  }
}

TEST_CASE("empty dimensions give empty or all-zero products", "[scale][log_shift]") {
  const sc::log_quantizer q = make_quantizer(sc::log_base::sqrt2, 4, sc::zero_policy::extra_zero);
  for (const index rows : {0, 1, 5}) {
    for (const index inner : {0, 3}) {
      for (const index cols : {0, 2, 40}) {
        CAPTURE(rows, inner, cols);
        const sc::log_code_matrix codes = sc::log_code_matrix::Zero(rows, inner);
        const int16_matrix v = int16_matrix::Constant(inner, cols, 3);
        const matrix<float> out = sc::multiply_shift_form(codes, q, v, 0.5f);
        REQUIRE(out.rows() == rows);
        REQUIRE(out.cols() == cols);
        // Level 0 of every key: 0.75 * 0.5 * 3 * inner.
        REQUIRE((out.array() == static_cast<float>(0.75 * 0.5 * 3.0 * static_cast<double>(inner)))
                    .all());
        for_each_path([&](auto arch, const char* name) {
          CAPTURE(name);
          matrix<float> got = matrix<float>::Constant(rows, cols, 8.0f);
          std::vector<std::int32_t> workspace(static_cast<std::size_t>(16 * cols));
          kr::simd::log_shift_matmul_rows(arch, operand(codes, v, 16, true, 0.375), got.data(),
                                          cols, 0, rows, workspace.data());
          REQUIRE(got == out);
        });
      }
    }
  }
}

TEST_CASE("multiply_shift_form_rows does not allocate", "[scale][log_shift]") {
  const std::uint64_t seed = reparam::test::test_seed(107);
  source random(seed);
  const sc::log_quantizer q = make_quantizer(sc::log_base::sqrt2, 5, sc::zero_policy::extra_zero);
  const sc::log_code_matrix codes = random_codes(6, 3000, q.levels(), 0.5, random);
  for (const index cols : {8, 64}) {
    const int16_matrix v = random_values(3000, cols, random);
    matrix<float> out(6, cols);
    const index workspace_size = sc::log_shift_workspace_size(q, cols);
    std::vector<std::int32_t> workspace(static_cast<std::size_t>(workspace_size));
    const long before = reparam::test::allocations();
    Eigen::internal::set_is_malloc_allowed(false);
    sc::multiply_shift_form_rows(codes, q, v, 0.5f, out, {0, 6}, workspace.data(), workspace_size);
    sc::multiply_shift_form_rows<reparam::kernel_arch>(codes.middleRows(1, 3), q, v, 0.5f,
                                                       out.middleRows(2, 3), {0, 3},
                                                       workspace.data(), workspace_size);
    Eigen::internal::set_is_malloc_allowed(true);
    CHECK(reparam::test::allocations() == before);
  }
}

TEST_CASE("multiply_shift_form refuses bad arguments before writing anything",
          "[scale][log_shift]") {
  const sc::log_quantizer q = make_quantizer(sc::log_base::sqrt2, 3, sc::zero_policy::extra_zero);
  source random(7);
  const sc::log_code_matrix codes = random_codes(4, 10, q.levels(), 0.2, random);
  const int16_matrix v = random_values(10, 6, random);
  const index workspace_size = sc::log_shift_workspace_size(q, 6);
  REQUIRE(workspace_size == index{8} * 6);
  std::vector<std::int32_t> workspace(static_cast<std::size_t>(workspace_size), 42);
  matrix<float> out = matrix<float>::Constant(4, 6, 9.0f);
  constexpr const char* function = "scale::multiply_shift_form_rows";
  const auto untouched = [&] {
    return (out.array() == 9.0f).all() &&
           std::all_of(workspace.begin(), workspace.end(), [](std::int32_t w) { return w == 42; });
  };
  const auto call = [&](const auto& p, const sc::log_quantizer& quant, const auto& values,
                        float v_scale, reparam::matrix_ref<float> o, reparam::row_range rows,
                        std::int32_t* ws, index ws_size) {
    sc::multiply_shift_form_rows(p, quant, values, v_scale, o, rows, ws, ws_size);
  };

  REQUIRE_THROWS_WITH(
      call(codes, q, v.topRows(9), 1.0f, out, {0, 4}, workspace.data(), workspace_size),
      Contains(function) && Contains("inner dimensions differ"));
  matrix<float> wrong_out(4, 5);
  REQUIRE_THROWS_WITH(call(codes, q, v, 1.0f, wrong_out, {0, 4}, workspace.data(), workspace_size),
                      Contains(function) && Contains("out is 4x5"));
  REQUIRE_THROWS_WITH(call(codes, q, v, 0.0f, out, {0, 4}, workspace.data(), workspace_size),
                      Contains(function) && Contains("v_scale 0"));
  REQUIRE_THROWS_WITH(call(codes, q, v, std::numeric_limits<float>::quiet_NaN(), out, {0, 4},
                           workspace.data(), workspace_size),
                      Contains("v_scale nan"));
  REQUIRE_THROWS_WITH(call(codes, q, v, 1.0f, out, {1, 5}, workspace.data(), workspace_size),
                      Contains(function) && Contains("row range [1, 5)"));
  REQUIRE_THROWS_WITH(call(codes, q, v, 1.0f, out, {0, 4}, workspace.data(), workspace_size - 1),
                      Contains(function) && Contains("workspace has 47 int32 entries but 48"));
  REQUIRE_THROWS_WITH(call(codes, q, v, 1.0f, out, {0, 4}, nullptr, workspace_size),
                      Contains(function) && Contains("workspace is null"));
  sc::log_quantizer bad = q;
  bad.bits = 8;
  REQUIRE_THROWS_WITH(call(codes, bad, v, 1.0f, out, {0, 4}, workspace.data(), workspace_size),
                      Contains(function) && Contains("bits 8"));
  bad = q;
  bad.scale = -1.0f;
  REQUIRE_THROWS_WITH(call(codes, bad, v, 1.0f, out, {0, 4}, workspace.data(), workspace_size),
                      Contains(function) && Contains("scale -1"));
  // A code above the zero code (8 for 3 bits, extra zero) in the row range.
  sc::log_code_matrix bad_codes = codes;
  bad_codes(2, 7) = 9;
  REQUIRE_THROWS_WITH(
      call(bad_codes, q, v, 1.0f, out, {0, 4}, workspace.data(), workspace_size),
      Contains(function) && Contains("p_codes(2, 7) = 9") && Contains("zero code 8"));
  // ... outside the range it is not read.
  REQUIRE_NOTHROW(call(bad_codes, q, v, 1.0f, out, {0, 2}, workspace.data(), workspace_size));
  out.setConstant(9.0f);
  std::fill(workspace.begin(), workspace.end(), 42);
  // out overlapping the workspace.
  std::vector<float> shared(static_cast<std::size_t>(workspace_size + 24));
  auto* overlap = reinterpret_cast<std::int32_t*>(shared.data());
  REQUIRE_THROWS_WITH(call(codes, q, v, 1.0f, reparam::row_major_map(shared.data(), 4, 6), {0, 4},
                           overlap, workspace_size),
                      Contains("out overlaps the workspace"));
  REQUIRE(untouched());
  // The inner bound.
  const sc::log_code_matrix wide = sc::log_code_matrix::Zero(1, kr::log_shift_max_inner + 1);
  const int16_matrix tall = int16_matrix::Zero(kr::log_shift_max_inner + 1, 1);
  REQUIRE_THROWS_WITH(sc::multiply_shift_form(wide, q, tall, 1.0f),
                      Contains("scale::multiply_shift_form") && Contains("65537 exceeds 65536"));
  REQUIRE_THROWS_WITH(sc::log_shift_workspace_size(q, -1),
                      Contains("scale::log_shift_workspace_size") && Contains("cols -1"));
}

}  // namespace

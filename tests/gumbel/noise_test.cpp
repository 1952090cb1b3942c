// SPDX-License-Identifier: Apache-2.0
// gumbel/noise.hpp and its kernels (kernels/reference/gumbel_noise.hpp,
// kernels/simd/gumbel_noise.hpp) against independent oracles:
//  - the Philox words of every compiled path against philox4x32_10 on counters built here from
//    the documented layout (and three Random123 known answers), odd block counts and starts,
//    rows >= 2^32, wrapping block indices, misaligned outputs with guard words;
//  - the fill against the definition written out here (52-bit midpoint uniform, then
//    -log(-log1p(-v)) with std::log1p/std::log) within a documented bound, float and double, odd
//    shapes, row strides, misaligned blocks; split invariance and shape independence;
//  - the extreme uniforms 2^-53 and 1 - 2^-53 (hand-computed g) through the scalar and the
//    vector arithmetic, and the 10^6 uniforms at each end of the grid;
//  - statistics with fixed seeds: KS against exp(-exp(-g)), mean and variance, chi-square of the
//    uniform's bits, tail frequencies, and no NaN/Inf over 10^8 draws (10^7 in Debug builds and
//    builds without a vector path);
//  - truncated Gumbels against the conditional CDF, Kool et al.'s shift to a maximum against the
//    exact conditional law and an extended-precision oracle, the log density against the
//    textbook formula and its integral; no allocation, and every refusal with its message.
#define EIGEN_RUNTIME_NO_MALLOC  // lets the no-allocation test forbid Eigen's mallocs

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
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>
#include <reparam/kernels/simd/gumbel_noise.hpp>

#include "support/count_allocations.hpp"
#include "support/gumbel_oracles.hpp"
#include "support/statistics.hpp"

namespace {

namespace gb = reparam::gumbel;
namespace kr = reparam::kernels;
using reparam::index;
using namespace reparam::test;  // NOLINT(google-build-using-namespace): the shared oracles

constexpr double two_pow_52 = 4503599627370496.0;
constexpr double pi = 3.14159265358979323846;

// ----------------------------------------------------------------------------------------------
// Oracles, written from the documented definition (kernels/reference/gumbel_noise.hpp): element
// (row, col) of draw (seed, step) uses Philox block {col / 2, step, row_lo, row_hi} under key
// {seed_lo, seed_hi}; column 2b takes words 0 (high) and 1 (low), column 2b + 1 words 2 and 3;
// j = high << 20 | low >> 12, v = (j + 1/2) 2^-52, g = -log(-log1p(-v)).

reparam::philox4x32_counter oracle_block(gb::noise_key key, std::uint64_t row,
                                         std::uint32_t block) {
  return reparam::philox4x32_10(
      {block, key.step, static_cast<std::uint32_t>(row), static_cast<std::uint32_t>(row >> 32)},
      {static_cast<std::uint32_t>(key.seed), static_cast<std::uint32_t>(key.seed >> 32)});
}

/// The 52-bit integer j of (row, col).
std::uint64_t oracle_j(gb::noise_key key, std::uint64_t row, std::uint64_t col) {
  const auto words = oracle_block(key, row, static_cast<std::uint32_t>(col / 2));
  const std::size_t lane = col % 2 == 0 ? 0 : 2;
  return (std::uint64_t{words[lane]} << 20) | (words[lane + 1] >> 12);
}

/// (j + 1/2) 2^-52: j < 2^52, so j + 1/2 has at most 53 significant bits and the value is exact.
double uniform_of_j(std::uint64_t j) { return (static_cast<double>(j) + 0.5) / two_pow_52; }

double gumbel_of_uniform(double v) { return -std::log(-std::log1p(-v)); }

double oracle_gumbel(gb::noise_key key, std::uint64_t row, std::uint64_t col) {
  return gumbel_of_uniform(uniform_of_j(oracle_j(key, row, col)));
}

double ulp_of(double x) {
  const double a = std::abs(x);
  return std::nextafter(a, inf) - a;
}

float ulp_of(float x) {
  const float a = std::abs(x);
  return std::nextafter(a, std::numeric_limits<float>::infinity()) - a;
}

/// Tolerance of the vectorized noise against the oracle (double output), in units of
/// ulp(g) + 2^-53. Both the oracle (std::log1p, std::log) and the kernel (fdlibm's log, within
/// 0.8 ulp) are within 1.3 units of the exact g, and their difference measured over 10^7 draws
/// is at most 2 units. The absolute 2^-53 is needed near g = 0: there E = -log1p(-v) is close to
/// 1, and one ulp of E (1.1e-16) moves g = -log(E) by as much, whatever ulp(g) is.
constexpr double noise_units = 4.0;

double noise_tolerance(double expected) { return noise_units * (ulp_of(expected) + 0x1p-53); }

/// Largest and smallest noise values: g at v = 2^-53 and v = 1 - 2^-53, by hand. For tiny v,
/// E = -log1p(-v) = v + v^2/2 + ..., so g = -log(E) = 53 ln 2 - 2^-54 + O(2^-106); at the other
/// end E = -log(2^-53) = 53 ln 2 and g = -log(53 ln 2).
constexpr double ln2 = 0.69314718055994530942;
const double g_max = 53.0 * ln2 - 0x1p-54;   // 36.736800569677101
const double g_min = -std::log(53.0 * ln2);  // -3.6037789929704576
/// The largest Gumbel value of float-uniform samplers (v >= 2^-24): -log(-log1p(-2^-24)).
const double float_uniform_ceiling = 24.0 * ln2;  // 16.64

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }
bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// ----------------------------------------------------------------------------------------------
// Every path compiled into this TU.

/// Runs check(arch tag, name) for every kernel path this TU compiles and the CPU supports; an
/// unsupported one is reported with WARN (Catch2 2.13 has no SKIP). The scalar path always runs.
template <class Check>
void for_each_path(const Check& check) {
  const auto available = xsimd::available_architectures();
  static_assert(kr::simd::gumbel_noise_path_of<xsimd::sse2>() ==
                kr::simd::gumbel_noise_path::scalar);
  check(xsimd::sse2{}, "scalar");
#if REPARAM_HAS_GUMBEL_NOISE_AVX2
  static_assert(kr::simd::gumbel_noise_path_of<xsimd::avx2>() == kr::simd::gumbel_noise_path::avx2);
  static_assert(kr::simd::gumbel_noise_path_of<xsimd::fma3<xsimd::avx2>>() ==
                kr::simd::gumbel_noise_path::avx2);
  if (available.avx2 != 0) {
    check(xsimd::avx2{}, "avx2");
    check(xsimd::fma3<xsimd::avx2>{}, "fma3<avx2>");
  } else {
    WARN("the CPU has no AVX2: the avx2 path is not tested");
  }
#endif
#if REPARAM_HAS_GUMBEL_NOISE_AVX512
  static_assert(kr::simd::gumbel_noise_path_of<xsimd::avx512bw>() ==
                kr::simd::gumbel_noise_path::avx512);
  static_assert(kr::simd::gumbel_noise_path_of<reparam::avx512vbmi_vnni>() ==
                kr::simd::gumbel_noise_path::avx512);
  if (available.avx512f != 0) {
    check(xsimd::avx512f{}, "avx512f");
    check(xsimd::avx512bw{}, "avx512bw");
  } else {
    WARN("the CPU has no AVX-512F: the avx512 path is not tested");
  }
#endif
  static_cast<void>(available);
}

// ----------------------------------------------------------------------------------------------
// gumbel_noise_words

/// Compares gumbel_noise_words<Arch> with the oracle blocks; the output starts `offset` words into
/// a buffer with 8 guard words on each side that must stay untouched.
template <class Arch>
index words_mismatches(gb::noise_key key, std::uint64_t row, std::uint32_t first_block,
                       index blocks, index offset) {
  constexpr std::uint32_t guard = 0xA5A5A5A5u;
  std::vector<std::uint32_t> buffer(static_cast<std::size_t>(4 * blocks + offset + 16), guard);
  std::uint32_t* words = buffer.data() + 8 + offset;
  kr::simd::gumbel_noise_words<Arch>(key, row, first_block, blocks, words);
  index bad = 0;
  for (index i = 0; i < blocks; ++i) {
    const auto expected = oracle_block(key, row, first_block + static_cast<std::uint32_t>(i));
    for (std::size_t j = 0; j < 4; ++j) {
      bad += words[4 * i + static_cast<index>(j)] == expected[j] ? 0 : 1;
    }
  }
  for (index i = 0; i < 8 + offset; ++i) {
    bad += buffer[static_cast<std::size_t>(i)] == guard ? 0 : 1;
  }
  for (std::size_t i = static_cast<std::size_t>(8 + offset + 4 * blocks); i < buffer.size(); ++i) {
    bad += buffer[i] == guard ? 0 : 1;
  }
  return bad;
}

TEST_CASE("gumbel_noise_words reproduces the Random123 known answers on every path",
          "[gumbel][noise]") {
  struct known {
    gb::noise_key key;
    std::uint64_t row;
    std::uint32_t block;
    std::uint32_t expected[4];
  };
  // Random123 kat_vectors for philox4x32_10: counter {block, step, row_lo, row_hi}, key
  // {seed_lo, seed_hi}.
  const known cases[] = {
      {{0, 0}, 0, 0u, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{~std::uint64_t{0}, 0xffffffffu},
       ~std::uint64_t{0},
       0xffffffffu,
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x299f31d0a4093822ull, 0x85a308d3u},
       0x0370734413198a2eull,
       0x243f6a88u,
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for_each_path([&](auto arch, const char* name) {
    using Arch = decltype(arch);
    CAPTURE(name);
    for (const known& k : cases) {
      // The known block first in a run of 37, and last in a run of 19 (a vector tail).
      std::uint32_t words[4 * 37];
      kr::simd::gumbel_noise_words<Arch>(k.key, k.row, k.block, 37, words);
      std::uint32_t tail[4 * 19];
      kr::simd::gumbel_noise_words<Arch>(k.key, k.row, k.block - 18u, 19, tail);
      for (int j = 0; j < 4; ++j) {
        CHECK(words[j] == k.expected[j]);
        CHECK(tail[4 * 18 + j] == k.expected[j]);
      }
    }
  });
}

TEST_CASE("gumbel_noise_words matches philox4x32_10 for many rows steps starts and counts",
          "[gumbel][noise]") {
  const std::uint64_t rows[] = {0,
                                1,
                                12345,
                                0xffffffffull,
                                0x100000000ull,
                                0x100000007ull,
                                0x8000000000000001ull,
                                ~std::uint64_t{0}};
  const gb::noise_key keys[] = {
      {0, 0}, {1, 0}, {0x0123456789abcdefull, 7}, {~std::uint64_t{0}, ~0u}};
  const std::uint32_t starts[] = {0u, 1u, 3u, 8u, 17u, 0x7fffffffu, 0xfffffff9u};
  // Lane-relative counts for groups of 8 (AVX2) and 16 (AVX-512) blocks, and odd ones.
  const index counts[] = {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 63, 65, 127, 257};
  for_each_path([&](auto arch, const char* name) {
    using Arch = decltype(arch);
    CAPTURE(name);
    index bad = 0;
    index checked = 0;
    for (const std::uint64_t row : rows) {
      for (const gb::noise_key& key : keys) {
        for (const std::uint32_t start : starts) {
          for (const index count : counts) {
            const index offset = (count + static_cast<index>(start)) % 4;  // misaligned outputs
            const index b = words_mismatches<Arch>(key, row, start, count, offset);
            if (b != 0 && bad == 0) {
              UNSCOPED_INFO("first mismatch: row " << row << " seed " << key.seed << " step "
                                                   << key.step << " start " << start << " count "
                                                   << count);
            }
            bad += b;
            ++checked;
          }
        }
      }
    }
    CAPTURE(checked);
    REQUIRE(bad == 0);
  });
}

TEST_CASE("gumbel_noise_words lays out each column's high and low word as open_uniform reads them",
          "[gumbel][noise]") {
  const gb::noise_key key{2024, 3};
  for_each_path([&](auto arch, const char* name) {
    using Arch = decltype(arch);
    CAPTURE(name);
    for (const std::uint32_t first_block : {0u, 5u, 40u}) {
      std::uint32_t words[4 * 41];
      kr::simd::gumbel_noise_words<Arch>(key, 9, first_block, 41, words);
      index bad = 0;
      for (index k = 0; k < 82; ++k) {
        const index col = 2 * static_cast<index>(first_block) + k;
        const double v = reparam::uniform_open01_double(words[2 * k], words[2 * k + 1]);
        bad += v == gb::open_uniform(key, 9, col) ? 0 : 1;
      }
      CHECK(bad == 0);
    }
  });
}

// ----------------------------------------------------------------------------------------------
// gumbel_noise_fill

struct fill_stats {
  double max_units = 0.0;  // max |a - e| / (ulp(e) + 2^-53) (double output)
  index bad = 0;           // outside the tolerance
  index exact = 0;         // bitwise equal to the oracle (rounded to T)
  index count = 0;
  index guard_damage = 0;  // written elements outside the [rows, cols] block
};

std::ostream& operator<<(std::ostream& out, const fill_stats& s) {
  return out << "{max_units " << s.max_units << ", bad " << s.bad << ", exact " << s.exact << "/"
             << s.count << ", guard_damage " << s.guard_damage << "}";
}

/// Fills [rows, cols] with row stride cols + pad at `offset` elements into a guarded buffer
/// with gumbel_noise_fill<Arch, T> and compares every element with the oracle.
template <class Arch, class T>
fill_stats check_fill(gb::noise_key key, std::uint64_t first_row, index rows, index cols, index pad,
                      index offset) {
  const index stride = cols + pad;
  const T guard = static_cast<T>(-1234.5);  // not a Gumbel value the grid can produce here
  std::vector<T> buffer(static_cast<std::size_t>(rows * stride + offset + 8), guard);
  T* out = buffer.data() + offset;
  kr::simd::gumbel_noise_fill<Arch, T>(key, first_row, rows, cols, out, stride);
  fill_stats s;
  for (index r = 0; r < rows; ++r) {
    for (index c = 0; c < cols; ++c) {
      const double e = oracle_gumbel(key, first_row + static_cast<std::uint64_t>(r),
                                     static_cast<std::uint64_t>(c));
      const T a = out[r * stride + c];
      ++s.count;
      if constexpr (std::is_same_v<T, double>) {
        const double units = std::abs(a - e) / (ulp_of(e) + 0x1p-53);
        s.max_units = std::max(s.max_units, units);
        s.bad += std::abs(a - e) <= noise_tolerance(e) ? 0 : 1;
        s.exact += same_bits(a, e) ? 1 : 0;
      } else {
        // The double is within a few 1e-16 of the oracle's, so rounding both to float gives the
        // same float or, next to a rounding boundary, an adjacent one.
        const auto ef = static_cast<float>(e);
        s.bad += std::abs(a - ef) <= ulp_of(ef) ? 0 : 1;
        s.exact += same_bits(a, ef) ? 1 : 0;
      }
    }
  }
  for (std::size_t i = 0; i < buffer.size(); ++i) {
    const auto k = static_cast<index>(i) - offset;
    const bool inside = k >= 0 && k < rows * stride && k % stride < cols;
    s.guard_damage += !inside && !same_bits(buffer[i], guard) ? 1 : 0;
  }
  return s;
}

template <class T>
void require_fill_matches_everywhere(index random_cols) {
  // Lane-relative widths for groups of 16 (AVX2) and 32 (AVX-512) columns, and odd ones.
  const std::vector<index> col_list = {1,  2,  3,  7,  15, 16, 17,  31,  32,  33,
                                       48, 63, 64, 65, 96, 97, 127, 257, 1000};
  const gb::noise_key key{0x5eed5eed12345678ull, 41};
  for_each_path([&](auto arch, const char* name) {
    using Arch = decltype(arch);
    CAPTURE(name, random_cols);
    fill_stats total;
    auto add = [&total](const fill_stats& s) {
      total.max_units = std::max(total.max_units, s.max_units);
      total.bad += s.bad;
      total.exact += s.exact;
      total.count += s.count;
      total.guard_damage += s.guard_damage;
    };
    for (const index cols : col_list) {
      add(check_fill<Arch, T>(key, 0, 2, cols, 0, 0));
    }
    add(check_fill<Arch, T>(key, 3, 3, random_cols, 5, 1));
    // Rows crossing 2^32, a huge row index, padded and misaligned outputs.
    add(check_fill<Arch, T>(key, 0xfffffffeull, 4, 45, 3, 3));
    add(check_fill<Arch, T>(key, 0x0000010000000003ull, 2, 77, 0, 1));
    add(check_fill<Arch, T>({7, 0}, 123, 2, 200, 8, 5));
    add(check_fill<Arch, T>({7, 1}, 0, 3, 70, 1, 17));
    CAPTURE(total);
    REQUIRE(total.guard_damage == 0);
    REQUIRE(total.bad == 0);
  });
}

TEST_CASE("gumbel_noise_fill matches the definition within the documented bound (double)",
          "[gumbel][noise]") {
  require_fill_matches_everywhere<double>(GENERATE(take(4, random(1, 300))));
}

TEST_CASE("gumbel_noise_fill matches the definition to one float ulp (float)", "[gumbel][noise]") {
  require_fill_matches_everywhere<float>(GENERATE(take(4, random(1, 300))));
}

TEST_CASE("gumbel_noise_fill of a column does not depend on the matrix width", "[gumbel][noise]") {
  const gb::noise_key key{99, 2};
  for_each_path([&](auto arch, const char* name) {
    using Arch = decltype(arch);
    CAPTURE(name);
    std::vector<double> wide(3 * 100);
    kr::simd::gumbel_noise_fill<Arch, double>(key, 5, 3, 100, wide.data(), 100);
    for (const index cols : {1, 7, 16, 31, 33, 64, 99}) {
      std::vector<double> narrow(static_cast<std::size_t>(3 * cols));
      kr::simd::gumbel_noise_fill<Arch, double>(key, 5, 3, cols, narrow.data(), cols);
      index bad = 0;
      for (index r = 0; r < 3; ++r) {
        for (index c = 0; c < cols; ++c) {
          bad += same_bits(narrow[static_cast<std::size_t>(r * cols + c)],
                           wide[static_cast<std::size_t>(r * 100 + c)])
                     ? 0
                     : 1;
        }
      }
      CAPTURE(cols);
      CHECK(bad == 0);
    }
  });
}

// ----------------------------------------------------------------------------------------------
// The public fill: split invariance, agreement with gumbel_noise, distinct draws.

TEST_CASE("fill_gumbel_rows gives the same matrix for any split of the rows", "[gumbel][noise]") {
  const gb::noise_key key{31337, 5};
  const index rows = 13;
  const index cols = 211;
  matrix<double> whole(rows, cols);
  gb::fill_gumbel<reparam::default_arch, double>(key, whole);
  for (const std::vector<index>& cuts : std::vector<std::vector<index>>{
           {0, 13}, {0, 1, 13}, {0, 5, 6, 13}, {0, 2, 4, 8, 12, 13}, {0, 0, 7, 7, 13}}) {
    matrix<double> parts = matrix<double>::Constant(rows, cols, -99.0);
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
      gb::fill_gumbel_rows<reparam::default_arch, double>(key, parts, {cuts[i], cuts[i + 1]});
    }
    index bad = 0;
    for (index r = 0; r < rows; ++r) {
      for (index c = 0; c < cols; ++c) {
        bad += same_bits(parts(r, c), whole(r, c)) ? 0 : 1;
      }
    }
    CHECK(bad == 0);
  }
  // Rows are the rows of the matrix passed in: a block gets the noise of its own rows 0, 1, ...
  matrix<double> big = matrix<double>::Constant(rows + 4, cols + 9, -99.0);
  gb::fill_gumbel<reparam::default_arch, double>(key, big.block(2, 3, rows, cols));
  CHECK(big.block(2, 3, rows, cols) == whole);
  CHECK((big.topRows(2).array() == -99.0).all());
  CHECK((big.bottomRows(2).array() == -99.0).all());
  CHECK((big.leftCols(3).array() == -99.0).all());
  CHECK((big.rightCols(6).array() == -99.0).all());
  // A range of rows leaves the other rows alone.
  matrix<float> f = matrix<float>::Constant(rows, cols, 7.0f);
  gb::fill_gumbel_rows<reparam::default_arch, float>(key, f, {4, 9});
  CHECK((f.topRows(4).array() == 7.0f).all());
  CHECK((f.bottomRows(4).array() == 7.0f).all());
  CHECK((f.middleRows(4, 5).array() != 7.0f).all());
}

TEST_CASE("fill_gumbel agrees with gumbel_noise and the matrix convenience", "[gumbel][noise]") {
  const gb::noise_key key{8, 1};
  const matrix<double> d = gb::gumbel_noise_matrix<double>(key, 6, 67);
  const matrix<float> f = gb::gumbel_noise_matrix<float>(key, 6, 67);
  index bad = 0;
  for (index r = 0; r < 6; ++r) {
    for (index c = 0; c < 67; ++c) {
      const double g = gb::gumbel_noise(key, r, c);
      bad += std::abs(d(r, c) - g) <= noise_tolerance(g) ? 0 : 1;
      const auto gf = static_cast<float>(g);
      bad += std::abs(f(r, c) - gf) <= ulp_of(gf) ? 0 : 1;
      // gumbel_noise is the definition: -log(-log1p(-open_uniform)).
      bad += same_bits(g, gumbel_of_uniform(gb::open_uniform(key, r, c))) ? 0 : 1;
    }
  }
  CHECK(bad == 0);
  CHECK(gb::gumbel_noise_matrix<double>(key, 0, 5).size() == 0);
  CHECK(gb::gumbel_noise_matrix<double>(key, 4, 0).size() == 0);
}

TEST_CASE("open_uniform is a 2^-52 midpoint strictly between 0 and 1", "[gumbel][noise]") {
  const gb::noise_key key{5, 0};
  for (index r = 0; r < 20; ++r) {
    for (index c = 0; c < 20; ++c) {
      const double v = gb::open_uniform(key, r, c);
      const double scaled = v * two_pow_52 - 0.5;  // exact: v has at most 53 significant bits
      REQUIRE(v > 0.0);
      REQUIRE(v < 1.0);
      REQUIRE(scaled == std::floor(scaled));
      REQUIRE(static_cast<std::uint64_t>(scaled) ==
              oracle_j(key, static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(c)));
    }
  }
}

TEST_CASE("different steps and seeds give unrelated noise", "[gumbel][noise]") {
  const index rows = 8;
  const index cols = 1000;
  const matrix<double> a = gb::gumbel_noise_matrix<double>({1, 0}, rows, cols);
  const matrix<double> b = gb::gumbel_noise_matrix<double>({1, 1}, rows, cols);
  const matrix<double> c = gb::gumbel_noise_matrix<double>({2, 0}, rows, cols);
  const matrix<double> a2 = gb::gumbel_noise_matrix<double>({1, 0}, rows, cols);
  CHECK(a == a2);
  CHECK((a.array() == b.array()).count() == 0);
  CHECK((a.array() == c.array()).count() == 0);
  // Sample correlation of two independent draws: |r| < 5 / sqrt(n).
  const auto correlation = [](const matrix<double>& x, const matrix<double>& y) {
    const double mx = x.mean();
    const double my = y.mean();
    const double sxy = ((x.array() - mx) * (y.array() - my)).sum();
    const double sxx = (x.array() - mx).square().sum();
    const double syy = (y.array() - my).square().sum();
    return sxy / std::sqrt(sxx * syy);
  };
  const double bound = 5.0 / std::sqrt(static_cast<double>(rows * cols));
  CHECK(std::abs(correlation(a, b)) < bound);
  CHECK(std::abs(correlation(a, c)) < bound);
  // Neighbours inside one Philox block (columns 2b, 2b + 1) and across rows are uncorrelated.
  const matrix<double> big = gb::gumbel_noise_matrix<double>({3, 0}, 200, 1000);
  matrix<double> even(200, 500);
  matrix<double> odd(200, 500);
  for (index k = 0; k < 500; ++k) {
    even.col(k) = big.col(2 * k);
    odd.col(k) = big.col(2 * k + 1);
  }
  const double bound_big = 5.0 / std::sqrt(200.0 * 500.0);
  CHECK(std::abs(correlation(even, odd)) < bound_big);
  const matrix<double> up = big.topRows(199);
  const matrix<double> down = big.bottomRows(199);
  CHECK(std::abs(correlation(up, down)) < 5.0 / std::sqrt(199.0 * 1000.0));
}

// ----------------------------------------------------------------------------------------------
// Extremes and tails

TEST_CASE("the extreme uniforms 2^-53 and 1 - 2^-53 give finite noise between -3.61 and 36.74",
          "[gumbel][noise]") {
  // Words 0/0 and all-ones are j = 0 and j = 2^52 - 1.
  const double v_low = reparam::uniform_open01_double(0u, 0u);
  const double v_high = reparam::uniform_open01_double(0xffffffffu, 0xffffffffu);
  REQUIRE(v_low == 0x1p-53);
  REQUIRE(v_high == 1.0 - 0x1p-53);
  const double top = kr::gumbel_from_survival(v_low);
  const double bottom = kr::gumbel_from_survival(v_high);
  CHECK(std::isfinite(top));
  CHECK(std::isfinite(bottom));
  CHECK(std::abs(top - g_max) <= 4.0 * ulp_of(g_max));
  CHECK(std::abs(bottom - g_min) <= 4.0 * ulp_of(g_min));
  CHECK(top < 36.74);
  CHECK(bottom > -3.61);
  // The upper tail reaches past what a float uniform can give (v >= 2^-24: g <= 16.64).
  CHECK(top > float_uniform_ceiling + 20.0);
  CHECK(kr::gumbel_from_survival(std::ldexp(1.0, -24)) < 16.65);
  // The Exp(1) variate at the ends.
  CHECK(-std::log1p(-v_low) > 0.0);
  CHECK(std::isfinite(-std::log1p(-v_high)));
}

/// The vector arithmetic (uniform, two logs) on given 52-bit integers j, through the kernels'
/// own helper (each j as a 64-bit word pair h:l = j << 12 | junk: the low 12 bits are unused).
template <class Isa, class Vec, class Load, class Store>
void vector_gumbel_of_j(const std::vector<std::uint64_t>& js, std::vector<double>& out, Load load,
                        Store store) {
  constexpr std::size_t lanes = sizeof(Vec) / 8;
  out.assign(js.size(), 0.0);
  for (std::size_t i = 0; i + lanes <= js.size(); i += lanes) {
    std::uint64_t pairs[lanes];
    for (std::size_t l = 0; l < lanes; ++l) {
      pairs[l] = (js[i + l] << 12) | ((i + l) & 0xfffu);
    }
    store(out.data() + i, kr::simd::detail::gumbel_noise::gumbel_of_pairs<Isa>(load(pairs)));
  }
}

/// Runs check(name, fn) with fn(js, out) for every vector path compiled in and supported.
template <class Check>
void for_each_vector_arithmetic(const Check& check) {
  const auto available = xsimd::available_architectures();
#if REPARAM_HAS_GUMBEL_NOISE_AVX2
  if (available.avx2 != 0) {
    check("avx2", [](const std::vector<std::uint64_t>& js, std::vector<double>& out) {
      vector_gumbel_of_j<kr::simd::detail::gumbel_noise::avx2_isa, __m256i>(
          js, out,
          [](const std::uint64_t* p) {
            return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
          },
          [](double* o, __m256d g) { _mm256_storeu_pd(o, g); });
    });
  }
#endif
#if REPARAM_HAS_GUMBEL_NOISE_AVX512
  if (available.avx512f != 0) {
    check("avx512", [](const std::vector<std::uint64_t>& js, std::vector<double>& out) {
      vector_gumbel_of_j<kr::simd::detail::gumbel_noise::avx512_isa, __m512i>(
          js, out, [](const std::uint64_t* p) { return _mm512_loadu_si512(p); },
          [](double* o, __m512d g) { _mm512_storeu_pd(o, g); });
    });
  }
#endif
  static_cast<void>(available);
  static_cast<void>(check);  // no vector path in a baseline (sse2) build
}

TEST_CASE("the 10^6 uniforms at each end of the grid give finite monotone accurate noise",
          "[gumbel][noise]") {
  constexpr std::uint64_t count = 1000000;
  constexpr std::uint64_t top_j = (std::uint64_t{1} << 52) - 1;
  std::vector<std::uint64_t> js;
  js.reserve(2 * count);
  for (std::uint64_t k = 0; k < count; ++k) {
    js.push_back(k);  // upper tail: v = (k + 1/2) 2^-52
  }
  for (std::uint64_t k = 0; k < count; ++k) {
    js.push_back(top_j - count + 1 + k);  // lower tail
  }
  std::vector<double> expected(js.size());
  index not_finite = 0;
  index out_of_range = 0;
  index not_monotone = 0;
  for (std::size_t i = 0; i < js.size(); ++i) {
    expected[i] = gumbel_of_uniform(uniform_of_j(js[i]));
    not_finite += std::isfinite(expected[i]) ? 0 : 1;
    out_of_range += expected[i] >= g_min - 1e-12 && expected[i] <= g_max + 1e-12 ? 0 : 1;
    // g decreases strictly with v; the grid step is fine enough for double to resolve it.
    not_monotone += i == 0 || i == count || expected[i] < expected[i - 1] ? 0 : 1;
  }
  CHECK(not_finite == 0);
  CHECK(out_of_range == 0);
  CHECK(not_monotone == 0);
  CHECK(expected.front() == kr::gumbel_from_survival(0x1p-53));
  CHECK(expected.back() == kr::gumbel_from_survival(1.0 - 0x1p-53));
  for_each_vector_arithmetic([&](const char* name, auto fn) {
    CAPTURE(name);
    std::vector<double> got;
    fn(js, got);
    index bad = 0;
    double max_units = 0.0;
    for (std::size_t i = 0; i < js.size(); ++i) {
      bad += std::isfinite(got[i]) && std::abs(got[i] - expected[i]) <= noise_tolerance(expected[i])
                 ? 0
                 : 1;
      max_units =
          std::max(max_units, std::abs(got[i] - expected[i]) / (ulp_of(expected[i]) + 0x1p-53));
    }
    CAPTURE(max_units);
    CHECK(bad == 0);
    CHECK(std::abs(got.front() - g_max) <= noise_tolerance(g_max));
    CHECK(std::abs(got.back() - g_min) <= noise_tolerance(g_min));
  });
}

TEST_CASE("no NaN or Inf over 10^8 noise draws and the expected tail frequencies",
          "[gumbel][noise]") {
  // 10^8 draws take about 0.4 s through the vector kernels of an optimized build. Unoptimized
  // (Debug, sanitizers) builds and builds without a vector path (ci-baseline: the scalar
  // reference, about 40 ns a draw) draw 10^7, which keeps them to a few seconds.
#if defined(NDEBUG)
  constexpr index total =
      kr::simd::gumbel_noise_path_of<reparam::default_arch>() != kr::simd::gumbel_noise_path::scalar
          ? 100000000
          : 10000000;
#else
  constexpr index total = 10000000;
#endif
  constexpr index rows = 16;
  constexpr index cols = 62500;  // 10^6 draws per chunk
  static_assert(total % (rows * cols) == 0);
  matrix<double> chunk(rows, cols);
  index not_finite = 0;
  double lowest = inf;
  double highest = -inf;
  index above_10 = 0;
  index above_15 = 0;
  index below_minus_2 = 0;
  for (index k = 0; k < total / (rows * cols); ++k) {
    gb::fill_gumbel<reparam::default_arch, double>({0xfeedull, static_cast<std::uint32_t>(k)},
                                                   chunk);
    // One plain pass (Eigen reductions are slow in unoptimized builds).
    const double* g = chunk.data();
    for (index i = 0; i < chunk.size(); ++i) {
      const double x = g[i];
      not_finite += std::isfinite(x) ? 0 : 1;
      lowest = x < lowest ? x : lowest;
      highest = x > highest ? x : highest;
      above_10 += x > 10.0 ? 1 : 0;
      above_15 += x > 15.0 ? 1 : 0;
      below_minus_2 += x < -2.0 ? 1 : 0;
    }
  }
  CAPTURE(lowest, highest, above_10, above_15, below_minus_2);
  CHECK(not_finite == 0);
  CHECK(lowest >= g_min - noise_tolerance(g_min));
  CHECK(highest <= g_max + noise_tolerance(g_max));
  // Counts against n p within 5 binomial standard deviations (+1 for the smallest counts).
  const auto n = static_cast<double>(total);
  const auto near = [n](index observed, double p) {
    return std::abs(static_cast<double>(observed) - n * p) <= 5.0 * std::sqrt(n * p * (1 - p)) + 1;
  };
  CHECK(near(above_10, -std::expm1(-std::exp(-10.0))));  // 4.54e-5
  CHECK(near(above_15, -std::expm1(-std::exp(-15.0))));  // 3.06e-7
  CHECK(near(below_minus_2, std::exp(-std::exp(2.0))));  // 6.18e-4
  // float output: same draws rounded once, never inf.
  matrix<float> f(rows, cols);
  gb::fill_gumbel<reparam::default_arch, float>({0xfeedull, 0}, f);
  CHECK(f.array().isFinite().all());
}

// ----------------------------------------------------------------------------------------------
// Statistics (fixed seeds: these tests are deterministic)

double gumbel_cdf(double g) { return std::exp(-std::exp(-g)); }

TEST_CASE("the noise passes a KS test against exp(-exp(-g)) and matches its moments",
          "[gumbel][noise]") {
  const index rows = 100;
  const index cols = 10000;
  const matrix<double> g = gb::gumbel_noise_matrix<double>({20240607, 11}, rows, cols);
  std::vector<double> samples(g.data(), g.data() + g.size());
  const auto n = static_cast<double>(samples.size());
  double mean = 0.0;
  for (const double x : samples) {
    mean += x;
  }
  mean /= n;
  double m2 = 0.0;
  for (const double x : samples) {
    m2 += (x - mean) * (x - mean);
  }
  const double variance = m2 / (n - 1.0);
  // Gumbel(0, 1): mean gamma, variance pi^2/6, excess kurtosis 12/5, so the standard error of
  // the sample variance is sqrt((mu4 - sigma^4) / n) = sigma^2 sqrt(4.4 / n).
  const double sigma2 = pi * pi / 6.0;
  CAPTURE(mean, variance);
  CHECK(std::abs(mean - gb::euler_gamma) < 5.0 * std::sqrt(sigma2 / n));
  CHECK(std::abs(variance - sigma2) < 5.0 * sigma2 * std::sqrt(4.4 / n));
  const reparam::test::ks_result ks = reparam::test::ks_test(samples, gumbel_cdf);
  CAPTURE(ks.statistic, ks.p_value);
  CHECK(ks.p_value > 1e-4);
}

TEST_CASE("the bits behind the uniform pass chi-square tests", "[gumbel][noise]") {
  // 2^20 columns worth of words: the top byte of each high word, and bits 12..19 of each low
  // word (the lowest bits the uniform uses), each on 256 equiprobable bins.
  const gb::noise_key key{77, 4};
  std::vector<std::int64_t> top(256, 0);
  std::vector<std::int64_t> low(256, 0);
  std::vector<std::uint32_t> words(4 * 4096);
  for (std::uint64_t row = 0; row < 128; ++row) {
    kr::simd::gumbel_noise_words<reparam::default_arch>(key, row, 0, 4096, words.data());
    for (std::size_t i = 0; i < words.size(); i += 2) {
      ++top[words[i] >> 24];
      ++low[(words[i + 1] >> 12) & 0xffu];
    }
  }
  const std::vector<double> uniform(256, 1.0 / 256.0);
  const auto a = reparam::test::chi_square_test(top, uniform);
  const auto b = reparam::test::chi_square_test(low, uniform);
  CAPTURE(a.statistic, a.p_value, b.statistic, b.p_value);
  CHECK(a.p_value > 1e-4);
  CHECK(b.p_value > 1e-4);
}

// ----------------------------------------------------------------------------------------------
// Truncated Gumbel

/// CDF of Gumbel(location, 1) conditioned on G <= bound, at x <= bound:
/// F(x - location) / F(bound - location) = exp(-(exp(location - x) - exp(location - bound))).
double truncated_cdf(double x, double location, double bound) {
  if (x >= bound) {
    return 1.0;
  }
  return std::exp(-(std::exp(location - x) - std::exp(location - bound)));
}

TEST_CASE("truncated_gumbel_rows follows the conditional law and never exceeds the bound",
          "[gumbel][noise]") {
  struct setting {
    double location;
    double bound;
  };
  const setting settings[] = {{0.0, 0.0}, {0.0, 2.0}, {-2.0, 5.0}, {1.5, -3.0}, {10.0, 0.0}};
  const index rows = 200;
  const index cols = 1000;
  std::uint32_t step = 0;
  for (const setting& s : settings) {
    CAPTURE(s.location, s.bound);
    const matrix<double> locations = matrix<double>::Constant(rows, cols, s.location);
    const vector<double> bounds = vector<double>::Constant(rows, s.bound);
    matrix<double> out(rows, cols);
    gb::truncated_gumbel_rows(locations, bounds, {4242, step++}, out, reparam::all_rows(rows));
    CHECK((out.array() <= s.bound).all());
    CHECK(out.array().isFinite().all());
    std::vector<double> samples(out.data(), out.data() + out.size());
    const auto ks = reparam::test::ks_test(
        samples, [&s](double x) { return truncated_cdf(x, s.location, s.bound); });
    CAPTURE(ks.statistic, ks.p_value);
    CHECK(ks.p_value > 1e-4);
  }
}

TEST_CASE("truncated_gumbel_rows agrees with truncated_gumbel and gumbel_noise and keeps masks",
          "[gumbel][noise]") {
  const gb::noise_key key{606, 2};
  const index rows = 5;
  const index cols = 37;
  matrix<float> locations(rows, cols);
  for (index r = 0; r < rows; ++r) {
    for (index c = 0; c < cols; ++c) {
      locations(r, c) = static_cast<float>(0.25 * static_cast<double>(c % 9) - 1.0 +
                                           0.5 * static_cast<double>(r));
    }
  }
  locations(1, 3) = -std::numeric_limits<float>::infinity();
  vector<double> bounds(rows);
  bounds << 0.5, inf, -4.0, 1e300, 3.0;
  matrix<double> out = matrix<double>::Constant(rows, cols, -7.0);
  gb::truncated_gumbel_rows(locations, bounds, key, out, {1, 4});
  CHECK((out.row(0).array() == -7.0).all());
  CHECK((out.row(4).array() == -7.0).all());
  CHECK(out(1, 3) == -inf);
  index bad = 0;
  for (index r = 1; r < 4; ++r) {
    for (index c = 0; c < cols; ++c) {
      if (r == 1 && c == 3) {
        continue;
      }
      const auto loc = static_cast<double>(locations(r, c));
      const double e = kr::exponential_noise_value(key, static_cast<std::uint64_t>(r),
                                                   static_cast<std::uint64_t>(c));
      bad += same_bits(out(r, c), gb::truncated_gumbel(loc, bounds[r], e)) ? 0 : 1;
      if (r == 1) {
        // bound = +inf: the untruncated loc + g of the same draw, bit for bit.
        bad += same_bits(out(r, c), loc + gb::gumbel_noise(key, r, c)) ? 0 : 1;
      }
      bad += out(r, c) <= bounds[r] ? 0 : 1;
    }
  }
  CHECK(bad == 0);
  // The scalar form by hand: G <= T from E by g = -log(e^-T + e^-loc E).
  CHECK(gb::truncated_gumbel(0.0, inf, 1.0) == 0.0);
  CHECK(gb::truncated_gumbel(0.0, 0.0, 1.0) == Approx(-std::log(2.0)).epsilon(1e-15));
  CHECK(gb::truncated_gumbel(2.0, 1.0, 0.5) ==
        Approx(-std::log(std::exp(-1.0) + std::exp(-2.0) * 0.5)).epsilon(1e-15));
  // Far-away magnitudes stay finite: bound 1e4 below the location, and the reverse.
  CHECK(gb::truncated_gumbel(1e4, 0.0, 1.0) == Approx(-std::log1p(std::exp(-1e4))).margin(1e-300));
  CHECK(gb::truncated_gumbel(-1e4, 1e300, 2.0) == Approx(-1e4 - std::log(2.0)).epsilon(1e-15));
}

TEST_CASE("truncated_gumbel_rows may write over its locations", "[gumbel][noise]") {
  const gb::noise_key key{1, 9};
  matrix<double> values = matrix<double>::Constant(3, 40, 0.5);
  values(2, 7) = -inf;
  const vector<double> bounds = vector<double>::Constant(3, 1.0);
  matrix<double> separate(3, 40);
  gb::truncated_gumbel_rows(values, bounds, key, separate, reparam::all_rows(3));
  gb::truncated_gumbel_rows(values, bounds, key, values, reparam::all_rows(3));
  CHECK(values == separate);
}

// ----------------------------------------------------------------------------------------------
// Kool et al.: Gumbels conditioned on their maximum

/// The shifted value -log(e^-T - e^-Z + e^-g) in long double, for T, Z, g finite with g <= Z:
/// e^-T + e^-g (1 - e^(g - Z)) = e^-T + e^d with d = -g + log(-expm1(g - Z)).
long double shifted_oracle(long double t, long double z, long double g) {
  if (g == z) {
    return t;
  }
  const long double d = -g + std::log(-std::expm1(g - z));
  const long double a = -t;
  const long double hi = std::max(a, d);
  return -(hi + std::log1p(std::exp(std::min(a, d) - hi)));
}

TEST_CASE("shift_to_maximum_rows sets the maximum to the target and keeps the order",
          "[gumbel][noise]") {
  const index rows = 500;
  const index cols = 9;
  matrix<double> values = gb::gumbel_noise_matrix<double>({55, 0}, rows, cols);
  for (index c = 0; c < cols; ++c) {
    values.col(c).array() += 0.3 * static_cast<double>(c) - 1.0;
  }
  values(3, 4) = -inf;
  vector<double> targets(rows);
  for (index r = 0; r < rows; ++r) {
    targets[r] = static_cast<double>(r % 7) - 3.0;
  }
  const matrix<double> before = values;
  gb::shift_to_maximum_rows(values, targets, reparam::all_rows(rows));
  index bad = 0;
  double max_error = 0.0;
  for (index r = 0; r < rows; ++r) {
    index arg = 0;
    for (index c = 1; c < cols; ++c) {
      arg = before(r, c) > before(r, arg) ? c : arg;
    }
    bad += values(r, arg) == targets[r] ? 0 : 1;
    for (index c = 0; c < cols; ++c) {
      bad += values(r, c) <= targets[r] ? 0 : 1;
      for (index k = 0; k < cols; ++k) {
        bad += before(r, c) < before(r, k) && !(values(r, c) <= values(r, k)) ? 1 : 0;
      }
      if (std::isfinite(before(r, c))) {
        const long double expected = shifted_oracle(targets[r], before(r, arg), before(r, c));
        max_error = std::max(
            max_error,
            static_cast<double>(std::abs(static_cast<long double>(values(r, c)) - expected)));
      }
    }
  }
  CHECK(values(3, 4) == -inf);
  CHECK(bad == 0);
  CHECK(max_error < 1e-14);
  // Magnitudes near the double range: T - g overflows, the result must not.
  matrix<double> extreme(2, 2);
  extreme << 1e308, -1e308, 1e308, -1e308;
  vector<double> extreme_targets(2);
  extreme_targets << 1e308, -1e308;
  gb::shift_to_maximum_rows(extreme, extreme_targets, reparam::all_rows(2));
  CHECK(extreme(0, 0) == 1e308);
  CHECK(extreme(0, 1) == -1e308);  // -log(e^-T - e^-Z + e^-g) = g to double precision
  CHECK(extreme(1, 0) == -1e308);
  CHECK(extreme(1, 1) == -1e308);  // -(1e308 + log 2): T - log 2, which rounds to T
  // Ties at the maximum all become the target; the first one is the argmax.
  matrix<double> tied(1, 3);
  tied << 3.0, 3.0, 1.0;
  gb::shift_to_maximum_rows(tied, vector<double>::Constant(1, 1.0), reparam::all_rows(1));
  CHECK(tied(0, 0) == 1.0);
  CHECK(tied(0, 1) == 1.0);
  CHECK(tied(0, 2) < 1.0);
}

TEST_CASE("shift_to_maximum_rows gives the law of Gumbels conditioned on their maximum",
          "[gumbel][noise]") {
  // With G_i ~ Gumbel(phi_i) independent and max = T, a non-argmax entry i is Gumbel(phi_i)
  // truncated at T (the argmax is independent of the maximum, and given both the others are
  // independent truncated Gumbels), and i is the argmax with probability softmax(phi)_i.
  const double phi[] = {0.5, -1.0, 2.0, 0.0};
  const double target = 1.0;
  const index rows = 100000;
  const index cols = 4;
  matrix<double> values = gb::gumbel_noise_matrix<double>({2718, 28}, rows, cols);
  for (index c = 0; c < cols; ++c) {
    values.col(c).array() += phi[c];
  }
  gb::shift_to_maximum_rows(values, vector<double>::Constant(rows, target),
                            reparam::all_rows(rows));
  std::vector<std::int64_t> argmax_counts(cols, 0);
  std::vector<std::vector<double>> others(cols);
  for (index r = 0; r < rows; ++r) {
    for (index c = 0; c < cols; ++c) {
      if (values(r, c) == target) {
        ++argmax_counts[static_cast<std::size_t>(c)];
      } else {
        others[static_cast<std::size_t>(c)].push_back(values(r, c));
      }
    }
  }
  double total = 0.0;
  for (const double p : phi) {
    total += std::exp(p);
  }
  std::vector<double> softmax;
  for (const double p : phi) {
    softmax.push_back(std::exp(p) / total);
  }
  const auto chi = reparam::test::chi_square_test(argmax_counts, softmax);
  CAPTURE(chi.statistic, chi.p_value);
  CHECK(chi.p_value > 1e-4);
  for (index c = 0; c < cols; ++c) {
    CAPTURE(c);
    auto& samples = others[static_cast<std::size_t>(c)];
    const double location = phi[c];
    const auto ks = reparam::test::ks_test(
        samples, [location, target](double x) { return truncated_cdf(x, location, target); });
    CAPTURE(samples.size(), ks.statistic, ks.p_value);
    CHECK(ks.p_value > 1e-4);
  }
}

TEST_CASE("shift_to_maximum_rows stays accurate next to the maximum and for values around 1e4",
          "[gumbel][noise]") {
  const double z = 1e4;
  const double step = std::nextafter(z, inf) - z;  // ulp(1e4) = 2^-39
  matrix<double> values(4, 7);
  values << z, z - step, z - 3.0 * step, z - 1e-9, 9990.0, -1e4, -inf,     //
      -1e4, -1e4 - step, -1e4 - 5.0 * step, -1e4 - 3.0, -2e4, -inf, -inf,  //
      1e4, 1e4 - 5e-12, -1e4, 0.0, 5.0, 1.0, 2.0,                          //
      1e-3, 1e-3 - 1e-18, 1e-3 - 1e-12, -1.0, -inf, 0.0, 1e-3;
  vector<double> targets(4);
  targets << z + 30.0, -1e4 + 20.0, -1e4, 45.0;
  const matrix<double> before = values;
  gb::shift_to_maximum_rows(values, targets, reparam::all_rows(4));
  CHECK(!values.array().isNaN().any());
  for (index r = 0; r < 4; ++r) {
    const double row_max = before.row(r).maxCoeff();
    for (index c = 0; c < 7; ++c) {
      CAPTURE(r, c, before(r, c), values(r, c));
      if (before(r, c) == -inf) {
        CHECK(values(r, c) == -inf);
        continue;
      }
      CHECK(std::isfinite(values(r, c)));
      const long double expected = shifted_oracle(targets[r], row_max, before(r, c));
      // A few ulp of 1e4 (1.8e-12). Kool's log1p(-exp(g - Z)) is off by 5e-10 for g = Z - 1e-9
      // (1 - exp(x) loses x^2 / 2 below 2^-54) and returns the target for g = 1e-3 - 1e-18
      // (exp(x) rounds to 1).
      CHECK(std::abs(static_cast<long double>(values(r, c)) - expected) < 1e-11L);
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Log density

TEST_CASE("gumbel_log_pdf is the textbook density and integrates to 1", "[gumbel][noise]") {
  CHECK(gb::gumbel_log_pdf(0.0) == -1.0);
  CHECK(gb::gumbel_log_pdf(1.0) == Approx(-1.0 - std::exp(-1.0)).epsilon(1e-15));
  CHECK(gb::gumbel_log_pdf(-2.0, 1.0) == Approx(3.0 - std::exp(3.0)).epsilon(1e-15));
  CHECK(gb::gumbel_log_pdf(30.0, 0.0) == Approx(-30.0 - std::exp(-30.0)).epsilon(1e-15));
  // Far left: the density underflows, -inf rather than NaN, also when g - location overflows.
  CHECK(gb::gumbel_log_pdf(-800.0) == -inf);
  CHECK(gb::gumbel_log_pdf(-1e308, 1e308) == -inf);
  CHECK(gb::gumbel_log_pdf(1e308, -1e308) == -inf);
  // Simpson's rule on [location - 8, location + 45] (the mass outside is below 1e-15).
  const double location = 0.7;
  const double lo = location - 8.0;
  const double hi = location + 45.0;
  const int steps = 53000;
  const double h = (hi - lo) / steps;
  double sum = 0.0;
  double mean = 0.0;
  for (int i = 0; i <= steps; ++i) {
    const double x = lo + h * i;
    const double w = i == 0 || i == steps ? 1.0 : (i % 2 == 1 ? 4.0 : 2.0);
    const double f = std::exp(gb::gumbel_log_pdf(x, location));
    sum += w * f;
    mean += w * f * x;
  }
  sum *= h / 3.0;
  mean *= h / 3.0;
  CHECK(sum == Approx(1.0).epsilon(1e-10));
  CHECK(mean == Approx(location + gb::euler_gamma).epsilon(1e-9));
}

// ----------------------------------------------------------------------------------------------
// No allocation

TEST_CASE("the row forms do not allocate", "[gumbel][noise]") {
  matrix<double> out(4, 300);
  matrix<float> outf(4, 300);
  const matrix<double> locations = matrix<double>::Constant(4, 300, 0.5);
  const vector<double> bounds = vector<double>::Constant(4, 1.0);
  matrix<double> values = matrix<double>::Constant(4, 300, 0.25);
  const vector<double> targets = vector<double>::Constant(4, 3.0);
  const long before = reparam::test::allocations();
  Eigen::internal::set_is_malloc_allowed(false);
  gb::fill_gumbel_rows<reparam::default_arch, double>({1, 2}, out, {1, 3});
  gb::fill_gumbel<reparam::default_arch, float>({1, 2}, outf);
  gb::truncated_gumbel_rows(locations, bounds, {1, 2}, out, {0, 4});
  gb::shift_to_maximum_rows(values, targets, {0, 4});
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(reparam::test::allocations() == before);
}

// ----------------------------------------------------------------------------------------------
// Refusals: the message names the function and the argument; outputs stay untouched.

TEST_CASE("the noise entry points refuse bad coordinates and ranges and shapes",
          "[gumbel][noise]") {
  const gb::noise_key key{1, 1};
  const index too_far = index{1} << 33;
  REQUIRE_THROWS_WITH(gb::gumbel_noise(key, -1, 0),
                      Contains("gumbel::gumbel_noise") && Contains("row -1"));
  REQUIRE_THROWS_WITH(gb::gumbel_noise(key, 0, -2),
                      Contains("gumbel::gumbel_noise") && Contains("col -2"));
  REQUIRE_THROWS_WITH(gb::gumbel_noise(key, 0, too_far),
                      Contains("gumbel::gumbel_noise") && Contains("col 8589934592"));
  REQUIRE_THROWS_WITH(gb::open_uniform(key, -5, 0),
                      Contains("gumbel::open_uniform") && Contains("row -5"));
  REQUIRE_THROWS_WITH(gb::open_uniform(key, 0, too_far), Contains("gumbel::open_uniform"));
  CHECK(std::isfinite(gb::gumbel_noise(key, 0, too_far - 1)));
  CHECK(std::isfinite(gb::gumbel_noise(key, std::numeric_limits<index>::max(), 0)));

  matrix<double> out = matrix<double>::Constant(3, 5, 42.0);
  const matrix<double> untouched = out;
  using arch = reparam::default_arch;
  REQUIRE_THROWS_WITH((gb::fill_gumbel_rows<arch, double>(key, out, {2, 4})),
                      Contains("gumbel::fill_gumbel_rows") && Contains("row range [2, 4)"));
  REQUIRE_THROWS_WITH((gb::fill_gumbel_rows<arch, double>(key, out, {-1, 2})),
                      Contains("gumbel::fill_gumbel_rows") && Contains("row range"));
  REQUIRE_THROWS_WITH((gb::fill_gumbel_rows<arch, double>(key, out, {2, 1})),
                      Contains("gumbel::fill_gumbel_rows") && Contains("row range"));
  CHECK(out == untouched);
  // More than 2^33 columns (a view that is never read or written: the check comes first).
  double cell = 42.0;
  auto huge = reparam::row_major_map(&cell, 1, too_far + 1, too_far + 1);
  REQUIRE_THROWS_WITH((gb::fill_gumbel_rows<arch, double>(key, huge, {0, 1})),
                      Contains("gumbel::fill_gumbel_rows") && Contains("8589934593 columns"));
  CHECK(cell == 42.0);
  REQUIRE_THROWS_WITH(gb::gumbel_noise_matrix<double>(key, -1, 3),
                      Contains("gumbel::gumbel_noise_matrix") && Contains("[-1, 3]"));
}

TEST_CASE("gumbel_log_pdf and truncated_gumbel refuse non-finite arguments", "[gumbel][noise]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(gb::gumbel_log_pdf(nan),
                      Contains("gumbel::gumbel_log_pdf") && Contains("g nan"));
  REQUIRE_THROWS_WITH(gb::gumbel_log_pdf(inf), Contains("gumbel::gumbel_log_pdf"));
  REQUIRE_THROWS_WITH(gb::gumbel_log_pdf(0.0, -inf),
                      Contains("gumbel::gumbel_log_pdf") && Contains("location -inf"));
  REQUIRE_THROWS_WITH(gb::truncated_gumbel(nan, 0.0, 1.0),
                      Contains("gumbel::truncated_gumbel") && Contains("location nan"));
  REQUIRE_THROWS_WITH(gb::truncated_gumbel(inf, 0.0, 1.0), Contains("location inf"));
  REQUIRE_THROWS_WITH(gb::truncated_gumbel(0.0, nan, 1.0),
                      Contains("gumbel::truncated_gumbel") && Contains("bound nan"));
  REQUIRE_THROWS_WITH(gb::truncated_gumbel(0.0, -inf, 1.0), Contains("bound -inf"));
  REQUIRE_THROWS_WITH(gb::truncated_gumbel(0.0, 0.0, 0.0),
                      Contains("gumbel::truncated_gumbel") && Contains("exponential 0"));
  REQUIRE_THROWS_WITH(gb::truncated_gumbel(0.0, 0.0, -1.0), Contains("exponential -1"));
  REQUIRE_THROWS_WITH(gb::truncated_gumbel(0.0, 0.0, inf), Contains("exponential inf"));
}

TEST_CASE("truncated_gumbel_rows refuses bad locations or bounds or shapes untouched",
          "[gumbel][noise]") {
  const gb::noise_key key{3, 3};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  matrix<double> locations = matrix<double>::Zero(3, 4);
  vector<double> bounds = vector<double>::Constant(3, 1.0);
  matrix<double> out = matrix<double>::Constant(3, 4, 9.0);
  const matrix<double> untouched = out;
  const auto call = [&](row_range rows) {
    gb::truncated_gumbel_rows(locations, bounds, key, out, rows);
  };
  locations(2, 3) = nan;
  REQUIRE_THROWS_WITH(call({0, 3}), Contains("gumbel::truncated_gumbel_rows") &&
                                        Contains("locations(2, 3) is nan"));
  CHECK_NOTHROW(call({0, 2}));  // only the rows in the range are read
  out = untouched;
  locations(2, 3) = inf;
  REQUIRE_THROWS_WITH(call({0, 3}), Contains("locations(2, 3) is inf"));
  locations(2, 3) = 0.0;
  bounds[1] = nan;
  REQUIRE_THROWS_WITH(call({0, 3}),
                      Contains("gumbel::truncated_gumbel_rows") && Contains("bounds[1] nan"));
  bounds[1] = -inf;
  REQUIRE_THROWS_WITH(call({0, 3}), Contains("bounds[1] -inf"));
  bounds[1] = 1.0;
  REQUIRE_THROWS_WITH(call({1, 5}), Contains("row range [1, 5)"));
  CHECK(out == untouched);
  const vector<double> short_bounds = vector<double>::Constant(2, 1.0);
  REQUIRE_THROWS_WITH(
      gb::truncated_gumbel_rows(locations, short_bounds, key, out, reparam::all_rows(3)),
      Contains("gumbel::truncated_gumbel_rows") && Contains("bounds has 2 entries for 3 rows"));
  matrix<double> wrong(3, 5);
  REQUIRE_THROWS_WITH(
      gb::truncated_gumbel_rows(locations, bounds, key, wrong, reparam::all_rows(3)),
      Contains("out is [3, 5] but locations are [3, 4]"));
  CHECK(out == untouched);
}

TEST_CASE("shift_to_maximum_rows refuses bad values and targets untouched", "[gumbel][noise]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  matrix<double> values = matrix<double>::Zero(3, 4);
  vector<double> targets = vector<double>::Constant(3, 1.0);
  values(1, 2) = nan;
  matrix<double> snapshot = values;
  const auto same = [&] {
    return values.array().isNaN().count() == snapshot.array().isNaN().count() &&
           (values.array() == snapshot.array() || values.array().isNaN()).all();
  };
  REQUIRE_THROWS_WITH(gb::shift_to_maximum_rows(values, targets, reparam::all_rows(3)),
                      Contains("gumbel::shift_to_maximum_rows") && Contains("values(1, 2) is nan"));
  CHECK(same());
  values(1, 2) = inf;
  snapshot = values;
  REQUIRE_THROWS_WITH(gb::shift_to_maximum_rows(values, targets, reparam::all_rows(3)),
                      Contains("values(1, 2) is inf"));
  CHECK(same());
  values(1, 2) = 0.0;
  values.row(2).setConstant(-inf);
  snapshot = values;
  REQUIRE_THROWS_WITH(
      gb::shift_to_maximum_rows(values, targets, reparam::all_rows(3)),
      Contains("gumbel::shift_to_maximum_rows") && Contains("row 2 has no finite value"));
  CHECK(same());
  values.row(2).setZero();
  targets[0] = inf;
  snapshot = values;
  REQUIRE_THROWS_WITH(gb::shift_to_maximum_rows(values, targets, reparam::all_rows(3)),
                      Contains("targets[0] inf"));
  targets[0] = nan;
  REQUIRE_THROWS_WITH(gb::shift_to_maximum_rows(values, targets, reparam::all_rows(3)),
                      Contains("targets[0] nan"));
  CHECK(same());
  targets[0] = 1.0;
  REQUIRE_THROWS_WITH(gb::shift_to_maximum_rows(values, targets, {0, 4}),
                      Contains("gumbel::shift_to_maximum_rows") && Contains("row range [0, 4)"));
  const vector<double> short_targets = vector<double>::Constant(2, 1.0);
  REQUIRE_THROWS_WITH(gb::shift_to_maximum_rows(values, short_targets, reparam::all_rows(3)),
                      Contains("targets has 2 entries for 3 rows"));
  CHECK(same());
}

}  // namespace

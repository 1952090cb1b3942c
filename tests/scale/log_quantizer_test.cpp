// SPDX-License-Identifier: Apache-2.0
// The log2 and log-sqrt2 quantizers of scale/log_quantizer.hpp: codes computed by hand, the level
// values against powl in long double, exact round trips of every grid point, the rounding
// boundaries at the geometric midpoints between levels, the zero policies, fake quantization,
// the MSE advantage of the finer sqrt2 grid on softmax rows, and calibrate_log against a
// brute-force oracle (numpy's quantile and nearest-level-in-log-domain quantization written out
// here). Every refusal is checked for its message and for untouched outputs.
#define EIGEN_RUNTIME_NO_MALLOC

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/random.hpp>
#include <reparam/scale/log_quantizer.hpp>

#include "support/random.hpp"
#include "support/scale_quantizers.hpp"

namespace {

namespace sc = reparam::scale;
using Catch::Matchers::Contains;
using reparam::index;
using reparam::matrix;
using reparam::test::make_log_quantizer;

constexpr sc::log_base two = sc::log_base::two;
constexpr sc::log_base sqrt2 = sc::log_base::sqrt2;
constexpr sc::zero_policy extra = sc::zero_policy::extra_zero;
constexpr sc::zero_policy reserve = sc::zero_policy::reserve_top_code;

/// Code and value of one scalar through the matrix API.
std::uint8_t code_of(float x, const sc::log_quantizer& q) {
  matrix<float> m(1, 1);
  m(0, 0) = x;
  sc::log_code_matrix codes(1, 1);
  sc::encode(m, q, codes);
  return codes(0, 0);
}

float value_of(std::uint8_t code, const sc::log_quantizer& q) {
  sc::log_code_matrix codes(1, 1);
  codes(0, 0) = code;
  matrix<float> out(1, 1);
  sc::decode(codes, q, out);
  return out(0, 0);
}

/// scale * 2^(-q/2) (sqrt2) or scale * 2^-q (log2) in long double, by powl.
long double oracle_level(const sc::log_quantizer& q, int level) {
  const long double step = q.base == sqrt2 ? 0.5L : 1.0L;
  return static_cast<long double>(q.scale) * std::pow(2.0L, -step * level);
}

/// Spacing of the floats at |v| (2^-149 in the subnormal range).
long double float_ulp(long double v) {
  const float f = std::fabs(static_cast<float>(v));
  if (f < std::numeric_limits<float>::min()) {
    return std::ldexp(1.0L, -149);
  }
  return std::ldexp(1.0L, std::ilogb(f) - 23);
}

TEST_CASE("log quantizers have the documented levels, zero codes and shifts",
          "[scale][log_quantizer]") {
  // extra_zero: 2^b levels and the zero code 2^b; reserve_top_code: 2^b - 1 levels and the zero
  // code 2^b - 1 (an honest b-bit code). Both: zero code == levels().
  CHECK(make_log_quantizer(sqrt2, 4, extra, 1.0f).levels() == 16);
  CHECK(make_log_quantizer(sqrt2, 4, extra, 1.0f).zero_code() == 16);
  CHECK(make_log_quantizer(sqrt2, 4, reserve, 1.0f).levels() == 15);
  CHECK(make_log_quantizer(sqrt2, 4, reserve, 1.0f).zero_code() == 15);
  CHECK(make_log_quantizer(two, 7, extra, 1.0f).zero_code() == 128);
  CHECK(make_log_quantizer(two, 8, reserve, 1.0f).levels() == 255);
  CHECK(make_log_quantizer(two, 8, reserve, 1.0f).zero_code() == 255);
  CHECK(make_log_quantizer(two, 1, reserve, 1.0f).levels() == 1);
  // sqrt2 level q: shift ceil(q / 2), odd levels carry sqrt2: q = 5 -> 2^-3 * sqrt2 = 2^-2.5.
  const sc::log_quantizer s = make_log_quantizer(sqrt2, 4, extra, 1.0f);
  CHECK(s.shift_of(0) == 0);
  CHECK(s.shift_of(1) == 1);
  CHECK(s.shift_of(2) == 1);
  CHECK(s.shift_of(5) == 3);
  CHECK_FALSE(s.is_odd(4));
  CHECK(s.is_odd(5));
  // log2 level q: shift q, never odd.
  const sc::log_quantizer t = make_log_quantizer(two, 4, extra, 1.0f);
  CHECK(t.shift_of(5) == 5);
  CHECK_FALSE(t.is_odd(5));
}

TEST_CASE("encode gives the hand-computed codes", "[scale][log_quantizer]") {
  const sc::log_quantizer t = make_log_quantizer(two, 4, extra, 1.0f);
  // -log2(0.25) = 2 -> level 2, value 0.25.
  CHECK(code_of(0.25f, t) == 2);
  // -log2(0.3) = 1.737 -> 2 (value 0.25).
  CHECK(code_of(0.3f, t) == 2);
  CHECK(value_of(2, t) == 0.25f);
  // -log2(0.7) = 0.515 -> 1 (value 0.5); -log2(0.71) = 0.494 -> 0 (value 1).
  CHECK(code_of(0.7f, t) == 1);
  CHECK(code_of(0.71f, t) == 0);

  const sc::log_quantizer s = make_log_quantizer(sqrt2, 4, extra, 1.0f);
  // -2 log2(0.3) = 3.474 -> level 3, value 2^-1.5 = 0.35355339.
  CHECK(code_of(0.3f, s) == 3);
  CHECK(value_of(3, s) == Approx(0.35355339).epsilon(1e-7));
  // -2 log2(0.004) = 15.93 -> 16 > 15 (last level of 4 bits): the zero code 16, value 0.
  CHECK(code_of(0.004f, s) == 16);
  CHECK(value_of(16, s) == 0.0f);
  // -2 log2(2^-7.6) = 15.2 -> 15, value 2^-7.5 = 0.0055242717.
  CHECK(code_of(std::exp2(-7.6f), s) == 15);
  CHECK(value_of(15, s) == Approx(0.0055242717).epsilon(1e-7));

  const sc::log_quantizer h = make_log_quantizer(sqrt2, 4, extra, 0.5f);
  // x / scale = 0.2: -2 log2(0.2) = 4.644 -> 5, value 0.5 * 2^-2.5 = 0.088388348.
  CHECK(code_of(0.1f, h) == 5);
  CHECK(value_of(5, h) == Approx(0.088388348).epsilon(1e-7));

  const sc::log_quantizer r = make_log_quantizer(sqrt2, 4, reserve, 1.0f);
  // reserve_top_code: last level 14. 2^-7 -> 14 (value 2^-7); 2^-7.5 -> 15 > 14: zero code 15.
  CHECK(code_of(std::exp2(-7.0f), r) == 14);
  CHECK(value_of(14, r) == std::exp2(-7.0f));
  CHECK(code_of(std::exp2(-7.5f), r) == 15);
  CHECK(value_of(15, r) == 0.0f);
}

TEST_CASE("values at or above the scale clip to level 0 and zero maps to the zero code",
          "[scale][log_quantizer]") {
  for (const sc::log_base base : {two, sqrt2}) {
    for (const sc::zero_policy zeros : {extra, reserve}) {
      const sc::log_quantizer q = make_log_quantizer(base, 3, zeros, 0.8f);
      CAPTURE(static_cast<int>(base), static_cast<int>(zeros));
      CHECK(code_of(0.8f, q) == 0);
      CHECK(code_of(5.0f, q) == 0);
      CHECK(code_of(std::numeric_limits<float>::max(), q) == 0);
      CHECK(value_of(0, q) == 0.8f);
      CHECK(code_of(0.0f, q) == q.zero_code());
      CHECK(code_of(-0.0f, q) == q.zero_code());
      CHECK(code_of(std::numeric_limits<float>::denorm_min(), q) == q.zero_code());
      CHECK(code_of(1e-30f, q) == q.zero_code());
      CHECK(value_of(q.zero_code(), q) == 0.0f);
    }
  }
}

TEST_CASE("level values equal scale * 2^(-q/2) and every normal grid point round-trips",
          "[scale][log_quantizer]") {
  for (const sc::log_base base : {two, sqrt2}) {
    for (const sc::zero_policy zeros : {extra, reserve}) {
      for (int bits = 1; bits <= (zeros == extra ? 7 : 8); ++bits) {
        for (const float scale : {1.0f, 0.37f, 1024.0f, 3e5f, 1e-3f}) {
          const sc::log_quantizer q = make_log_quantizer(base, bits, zeros, scale);
          CAPTURE(static_cast<int>(base), static_cast<int>(zeros), bits, scale);
          sc::log_code_matrix codes(1, q.levels() + 1);
          for (int level = 0; level <= q.levels(); ++level) {
            codes(0, level) = static_cast<std::uint8_t>(level);
          }
          matrix<float> values(1, q.levels() + 1);
          sc::decode(codes, q, values);
          CHECK(values(0, q.levels()) == 0.0f);
          index checked = 0;
          for (int level = 0; level < q.levels(); ++level) {
            CAPTURE(level);
            const float x = values(0, level);
            const long double exact = oracle_level(q, level);
            // One rounding of the double value to float (plus the double product's 2^-53):
            // within half an ulp of float, and exactly a power of two times scale for log2.
            CHECK(std::fabs(static_cast<long double>(x) - exact) <=
                  0.5L * float_ulp(exact) * (1.0L + 1e-6L));
            if (x >= std::numeric_limits<float>::min()) {
              CHECK(code_of(x, q) == level);
              CHECK(value_of(code_of(x, q), q) == x);
              ++checked;
            }
          }
          CHECK(checked > 0);
        }
      }
    }
  }
}

TEST_CASE("codes change at the geometric midpoints between levels", "[scale][log_quantizer]") {
  // Rounding in the log domain: the boundary between levels q and q + 1 is the geometric mean of
  // their values, scale * b^-(q + 1/2) with b = 2 or sqrt2. The float just above it encodes to
  // q, the float just below to q + 1 (or to the zero code past the last level).
  for (const sc::log_base base : {two, sqrt2}) {
    for (const sc::zero_policy zeros : {extra, reserve}) {
      for (int bits = 1; bits <= 7; ++bits) {
        const float scale = base == two ? 1024.0f : 1.0f;  // every midpoint is a normal float
        const sc::log_quantizer q = make_log_quantizer(base, bits, zeros, scale);
        const long double step = base == sqrt2 ? 0.5L : 1.0L;
        for (int level = 0; level < q.levels(); ++level) {
          const long double mid = static_cast<long double>(scale) *
                                  std::pow(2.0L, -step * (static_cast<long double>(level) + 0.5L));
          auto above = static_cast<float>(mid);
          if (static_cast<long double>(above) <= mid) {
            above = std::nextafter(above, std::numeric_limits<float>::infinity());
          }
          auto below = static_cast<float>(mid);
          if (static_cast<long double>(below) >= mid) {
            below = std::nextafter(below, 0.0f);
          }
          CAPTURE(static_cast<int>(base), static_cast<int>(zeros), bits, level, above, below);
          CHECK(code_of(above, q) == level);
          const int next = level + 1 < q.levels() ? level + 1 : q.zero_code();
          CHECK(code_of(below, q) == next);
        }
      }
    }
  }
}

TEST_CASE("round half to even in the log domain is independent of the rounding mode",
          "[scale][log_quantizer]") {
  // The helper encode uses (ties cannot occur for real data: they would need an irrational x).
  CHECK(sc::detail::log_round_half_even(2.5) == 2.0);
  CHECK(sc::detail::log_round_half_even(3.5) == 4.0);
  CHECK(sc::detail::log_round_half_even(-0.5) == 0.0);
  CHECK(sc::detail::log_round_half_even(-1.5) == -2.0);
  CHECK(sc::detail::log_round_half_even(2.4999999999999996) == 2.0);
  CHECK(sc::detail::log_round_half_even(2.5000000000000004) == 3.0);
  CHECK(sc::detail::log_round_half_even(1e300) == 1e300);
}

TEST_CASE("encode_rows writes only its range and fake_quantize equals decode(encode)",
          "[scale][log_quantizer]") {
  const std::uint64_t seed = reparam::test::test_seed(201);
  CAPTURE(seed);
  const matrix<float> x = reparam::test::random_matrix<float>(9, 13, seed, 0.0f, 1.5f);
  for (const sc::log_base base : {two, sqrt2}) {
    for (const sc::zero_policy zeros : {extra, reserve}) {
      const sc::log_quantizer q = make_log_quantizer(base, 3, zeros, 0.9f);
      sc::log_code_matrix codes(9, 13);
      sc::encode(x, q, codes);
      matrix<float> decoded(9, 13);
      sc::decode(codes, q, decoded);
      matrix<float> fq(9, 13);
      sc::fake_quantize(x, q, fq);
      CHECK(fq == decoded);
      // In place (out aliases x), and in double: the same float grid values.
      matrix<float> y = x;
      sc::fake_quantize(y, q, y);
      CHECK(y == decoded);
      const matrix<double> xd = x.cast<double>();
      matrix<double> fd(9, 13);
      sc::fake_quantize(xd, q, fd);
      CHECK(fd == decoded.cast<double>());
      // Row ranges.
      sc::log_code_matrix part = sc::log_code_matrix::Constant(9, 13, 200);
      sc::encode_rows(x, q, part, {2, 5});
      CHECK(part.middleRows(2, 3) == codes.middleRows(2, 3));
      CHECK((part.topRows(2).array() == 200).all());
      CHECK((part.bottomRows(4).array() == 200).all());
      matrix<float> fpart = matrix<float>::Constant(9, 13, -1.0f);
      sc::fake_quantize_rows(x, q, fpart, {7, 9});
      CHECK(fpart.bottomRows(2) == decoded.bottomRows(2));
      CHECK((fpart.topRows(7).array() == -1.0f).all());
    }
  }
}

/// Rows of softmax(N(0, sigma^2) logits), as attention probabilities.
matrix<float> softmax_rows(index rows, index cols, double sigma, std::uint64_t seed) {
  reparam::philox_engine engine(seed, 3);
  matrix<float> p(rows, cols);
  std::vector<double> e(static_cast<std::size_t>(cols));
  for (index i = 0; i < rows; ++i) {
    double top = -1e300;
    for (double& l : e) {
      const double u1 = reparam::uniform_open01_double(engine(), engine());
      const double u2 = reparam::uniform_open01_double(engine(), engine());
      l = sigma * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
      top = std::max(top, l);
    }
    double sum = 0.0;
    for (double& l : e) {
      l = std::exp(l - top);
      sum += l;
    }
    for (index j = 0; j < cols; ++j) {
      p(i, j) = static_cast<float>(e[static_cast<std::size_t>(j)] / sum);
    }
  }
  return p;
}

double mse(const matrix<float>& a, const matrix<float>& b) {
  return (a.cast<double>() - b.cast<double>()).array().square().mean();
}

TEST_CASE("log-sqrt2 has a smaller error than log2 on softmax rows at the same bits",
          "[scale][log_quantizer]") {
  // The sqrt2 grid is twice as fine in the log domain (relative error bound 2^(1/4) - 1 = 19%
  // vs 2^(1/2) - 1 = 41%), which wins on the large probabilities that dominate the squared
  // error, as long as its range (half that of log2) still covers the bulk of the mass: from 4
  // bits on (16 levels, down to 2^-7.5 of the scale) for these 197-key rows. At 3 bits
  // (2^-3.5) it zeroes most probabilities and log2 wins, which is why RepQ-ViT uses it at 4+.
  const std::uint64_t seed = reparam::test::test_seed(202);
  CAPTURE(seed);
  const matrix<float> p = softmax_rows(48, 197, 2.0, seed);
  for (int bits = 4; bits <= 7; ++bits) {
    for (const sc::zero_policy zeros : {extra, reserve}) {
      CAPTURE(bits, static_cast<int>(zeros));
      const sc::log_quantizer qs =
          sc::calibrate_log(p, make_log_quantizer(sqrt2, bits, zeros, 1.0f));
      const sc::log_quantizer qt = sc::calibrate_log(p, make_log_quantizer(two, bits, zeros, 1.0f));
      matrix<float> fs(p.rows(), p.cols());
      matrix<float> ft(p.rows(), p.cols());
      sc::fake_quantize(p, qs, fs);
      sc::fake_quantize(p, qt, ft);
      const double es = mse(fs, p);
      const double et = mse(ft, p);
      CAPTURE(es, et, qs.scale, qt.scale);
      CHECK(es < et);
    }
  }
}

/// numpy.percentile(x, 100 p) (linear), written out: position p (n - 1) in the sorted values.
double oracle_quantile(std::vector<double> sorted, double p) {
  std::sort(sorted.begin(), sorted.end());
  const double position = p * static_cast<double>(sorted.size() - 1);
  const auto below = static_cast<std::size_t>(std::floor(position));
  const std::size_t above = std::min(below + 1, sorted.size() - 1);
  const double weight = position - static_cast<double>(below);
  return sorted[below] + (sorted[above] - sorted[below]) * weight;
}

/// Fake-quantization MSE by brute force: each x goes to the level whose value is nearest in the
/// log domain (ties impossible), to level 0 when x >= scale, and to 0 when x is 0 or more than
/// half a step below the last level.
long double oracle_mse(const std::vector<double>& x, const sc::log_quantizer& q) {
  const long double step = q.base == sqrt2 ? 0.5L : 1.0L;
  long double sum = 0.0L;
  for (const double v : x) {
    long double hat = 0.0L;
    if (v > 0.0) {
      const long double lv = std::log2(static_cast<long double>(v));
      const long double ls = std::log2(static_cast<long double>(q.scale));
      int best = 0;
      long double best_distance = std::numeric_limits<long double>::infinity();
      for (int level = 0; level < q.levels(); ++level) {
        const long double d = std::fabs(lv - (ls - step * level));
        if (d < best_distance) {
          best_distance = d;
          best = level;
        }
      }
      const bool is_below_last = lv < ls - step * (q.levels() - 1) - step / 2;
      hat = is_below_last ? 0.0L : static_cast<long double>(q.scale) * std::pow(2.0L, -step * best);
    }
    const long double e = hat - static_cast<long double>(v);
    sum += e * e;
  }
  return sum / static_cast<long double>(x.size());
}

TEST_CASE("calibrate_log picks the percentile scale with the smallest MSE",
          "[scale][log_quantizer]") {
  const std::uint64_t seed = reparam::test::test_seed(203);
  CAPTURE(seed);
  const std::vector<double> percentiles = {0.5, 0.9, 0.99, 0.999, 0.9999, 1.0};
  for (const double sigma : {0.5, 2.0, 4.0}) {
    for (int bits = 2; bits <= 6; ++bits) {
      for (const sc::log_base base : {two, sqrt2}) {
        const matrix<float> p = softmax_rows(8, 61, sigma, seed + static_cast<std::uint64_t>(bits));
        std::vector<double> values(p.data(), p.data() + p.size());
        sc::log_quantizer spec = make_log_quantizer(base, bits, extra, -3.0f);  // scale ignored
        const sc::log_quantizer got = sc::calibrate_log(p, spec, percentiles);
        CAPTURE(sigma, bits, static_cast<int>(base), got.scale);
        CHECK(got.base == base);
        CHECK(got.bits == bits);
        long double best = std::numeric_limits<long double>::infinity();
        bool is_candidate = false;
        for (const double pct : percentiles) {
          sc::log_quantizer candidate = spec;
          candidate.scale = static_cast<float>(oracle_quantile(values, pct));
          best = std::min(best, oracle_mse(values, candidate));
          // (within a float ulp: the library interpolates with torch.lerp's two-sided formula)
          is_candidate = is_candidate || std::fabs(static_cast<long double>(candidate.scale) -
                                                   got.scale) <= float_ulp(got.scale);
        }
        CHECK(is_candidate);
        const long double chosen = oracle_mse(values, got);
        CAPTURE(static_cast<double>(chosen), static_cast<double>(best));
        CHECK(chosen <= best * (1.0L + 1e-6L));
      }
    }
  }
}

TEST_CASE("calibrate_log uses numpy's linear quantile", "[scale][log_quantizer]") {
  // Sorted 0, 0.1, 0.2, 0.3, 0.4: p = 0.9 sits at position 0.9 * 4 = 3.6, i.e.
  // 0.3 + 0.6 * (0.4 - 0.3) = 0.36; p = 0.5 at position 2: 0.2.
  matrix<double> x(1, 5);
  x << 0.3, 0.0, 0.4, 0.1, 0.2;
  const sc::log_quantizer spec = make_log_quantizer(sqrt2, 4, extra, 1.0f);
  CHECK(sc::calibrate_log(x, spec, {0.9}).scale == Approx(0.36).epsilon(1e-7));
  CHECK(sc::calibrate_log(x, spec, {0.5}).scale == 0.2f);
  // p = 0.1 gives the quantile 0.04; p = 0 gives 0, which is skipped (not a valid scale).
  CHECK(sc::calibrate_log(x, spec, {0.0, 0.1}).scale == Approx(0.04).epsilon(1e-7));
}

TEST_CASE("log quantizer entry points refuse bad arguments before writing",
          "[scale][log_quantizer]") {
  const sc::log_quantizer q = make_log_quantizer(sqrt2, 4, extra, 1.0f);
  matrix<float> x = matrix<float>::Constant(2, 3, 0.5f);
  sc::log_code_matrix codes = sc::log_code_matrix::Constant(2, 3, 99);
  matrix<float> out = matrix<float>::Constant(2, 3, 7.0f);

  // Bad values: negative, NaN, infinite, each named with its position.
  for (const float bad :
       {-0.25f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    x(1, 2) = bad;
    REQUIRE_THROWS_WITH(sc::encode(x, q, codes), Contains("scale::encode") &&
                                                     Contains("x(1, 2) = ") &&
                                                     Contains("must be finite and >= 0"));
    REQUIRE_THROWS_WITH(sc::encode_rows(x, q, codes, {1, 2}), Contains("scale::encode_rows"));
    REQUIRE_THROWS_WITH(sc::fake_quantize(x, q, out), Contains("scale::fake_quantize"));
    REQUIRE_THROWS_WITH(sc::fake_quantize_rows(x, q, out, {0, 2}),
                        Contains("scale::fake_quantize_rows"));
    REQUIRE_THROWS_WITH(sc::calibrate_log(x, q), Contains("scale::calibrate_log"));
    // In place: x keeps its values too.
    matrix<float> y = x;
    REQUIRE_THROWS(sc::fake_quantize(y, q, y));
    CHECK(y(0, 0) == 0.5f);
  }
  CHECK((codes.array() == 99).all());
  CHECK((out.array() == 7.0f).all());
  // The bad entry outside the row range is not read.
  REQUIRE_NOTHROW(sc::encode_rows(x, q, codes, {0, 1}));
  x(1, 2) = 0.5f;

  // Quantizer parameters.
  for (const int bits : {0, 8, 9}) {
    const sc::log_quantizer b = make_log_quantizer(sqrt2, bits, extra, 1.0f);
    REQUIRE_THROWS_WITH(sc::encode(x, b, codes),
                        Contains("scale::encode") && Contains("bits ") && Contains("[1, 7]"));
  }
  REQUIRE_THROWS_WITH(sc::encode(x, make_log_quantizer(two, 9, reserve, 1.0f), codes),
                      Contains("[1, 8]"));
  REQUIRE_NOTHROW(sc::check_log_quantizer(make_log_quantizer(two, 8, reserve, 1.0f), "f"));
  for (const float scale : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::infinity()}) {
    const sc::log_code_matrix zero_codes = sc::log_code_matrix::Zero(2, 3);
    REQUIRE_THROWS_WITH(sc::decode(zero_codes, make_log_quantizer(sqrt2, 4, extra, scale), out),
                        Contains("scale::decode") && Contains("log_quantizer.scale"));
  }
  sc::log_quantizer weird = q;
  weird.base = static_cast<sc::log_base>(7);
  REQUIRE_THROWS_WITH(sc::check_log_quantizer(weird, "scale::f"),
                      Contains("scale::f") && Contains("not a log_base"));

  // Shapes and codes.
  sc::log_code_matrix small(2, 2);
  REQUIRE_THROWS_WITH(sc::encode(x, q, small), Contains("codes is 2x2 but x is 2x3"));
  REQUIRE_THROWS_WITH(sc::encode_rows(x, q, codes, {1, 3}), Contains("row range [1, 3)"));
  sc::log_code_matrix bad_codes = sc::log_code_matrix::Zero(2, 3);
  bad_codes(0, 1) = 17;  // zero code of 4 bits (extra zero) is 16
  REQUIRE_THROWS_WITH(sc::decode(bad_codes, q, out), Contains("scale::decode") &&
                                                         Contains("codes(0, 1) = 17") &&
                                                         Contains("zero code 16"));
  CHECK((out.array() == 7.0f).all());
  matrix<float> narrow(2, 2);
  REQUIRE_THROWS_WITH(sc::fake_quantize(x, q, narrow), Contains("out is 2x2 but x is 2x3"));

  // Calibration.
  const matrix<float> empty(0, 4);
  REQUIRE_THROWS_WITH(sc::calibrate_log(empty, q), Contains("x is empty"));
  REQUIRE_THROWS_WITH(sc::calibrate_log(x, q, {}), Contains("percentiles is empty"));
  REQUIRE_THROWS_WITH(sc::calibrate_log(x, q, {0.5, 1.5}), Contains("percentile 1.5"));
  const matrix<float> zeros = matrix<float>::Zero(3, 3);
  REQUIRE_THROWS_WITH(sc::calibrate_log(zeros, q),
                      Contains("scale::calibrate_log") && Contains("no percentile"));
}

}  // namespace

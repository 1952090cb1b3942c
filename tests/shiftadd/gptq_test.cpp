// SPDX-License-Identifier: Apache-2.0
// GPTQ / ShiftAddLLM: the compensated loop against a naive optimal-brain-quantizer recursion
// (explicit inverse, OBS downdates), H = I against the weight-only quantizers, the activation-aware
// objective against weight-only quantization on a calibration-like Hessian, dead inputs and the
// argument checks.
// Eigen's heap allocations can be forbidden at run time (checked in Debug builds); defined in every
// TU of this test binary so Eigen's inline functions agree.
#define EIGEN_RUNTIME_NO_MALLOC

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <numeric>
#include <vector>

#include <Eigen/Dense>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/second_moment.hpp>
#include <reparam/shiftadd/bcq.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/gptq.hpp>
#include <reparam/shiftadd/uniform.hpp>

#include "support/compare.hpp"
#include "support/count_allocations.hpp"
#include "support/random.hpp"

namespace {

namespace sa = reparam::shiftadd;
using reparam::index;
using reparam::matrix;

// ---------------------------------------------------------------------------------------------
// Test data.

// Standard normal samples (Box-Muller on Philox uniforms), deterministic for (seed, stream).
matrix<double> gaussian(index rows, index cols, std::uint64_t seed) {
  matrix<double> out(rows, cols);
  for (index r = 0; r < rows; ++r) {
    reparam::philox_engine engine(seed, static_cast<std::uint64_t>(r));
    for (index c = 0; c < cols; ++c) {
      const double u1 = reparam::uniform_open01_double(engine(), engine());
      const double u2 = reparam::uniform_open01_double(engine(), engine());
      out(r, c) = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
  }
  return out;
}

// Calibration-like inputs [samples, dim]: correlated channels (a random mixing of Gaussian
// sources) and a few outlier channels with 10x the scale, as in LLM activations.
matrix<double> calibration_inputs(index samples, index dim, std::uint64_t seed) {
  const matrix<double> sources = gaussian(samples, dim, seed);
  matrix<double> mixing = 0.6 * gaussian(dim, dim, seed ^ 0x77);
  mixing.diagonal().array() += 1.0;
  matrix<double> x = sources * mixing;
  for (index c = 0; c < dim; c += std::max<index>(dim / 4, 1)) {
    x.col(c) *= 10.0;
  }
  return x;
}

matrix<double> hessian_of(const matrix<double>& x) {
  reparam::second_moment h(x.cols());
  h.add(x);
  return h.mean();
}

// ---------------------------------------------------------------------------------------------
// The oracle: GPTQ as the optimal-brain-quantizer recursion, written directly. Column j (in
// processing order) is quantized, the remaining columns get the optimal compensation
// delta_k = -(w_j - q_j) / [H^-1]_jj * [H^-1]_jk from the explicit inverse of the remaining
// Hessian, and j is removed from H^-1 by the OBS downdate H^-1 -= H^-1[:, j] H^-1[j, :] / H^-1_jj.
// No Cholesky factor and no blocks. The quantizers below record their codes and scales.

struct oracle_options {
  double damp = 0.01;
  bool act_order = false;
};

template <class Quantizer>
matrix<double> oracle_gptq(matrix<double> w, matrix<double> h, const oracle_options& options,
                           Quantizer& quantizer) {
  const index cols = w.cols();
  for (index j = 0; j < cols; ++j) {
    if (h(j, j) == 0.0) {
      h(j, j) = 1.0;
      w.col(j).setZero();
    }
  }
  std::vector<index> order(static_cast<std::size_t>(cols));
  std::iota(order.begin(), order.end(), index{0});
  if (options.act_order) {
    std::stable_sort(order.begin(), order.end(),
                     [&h](index a, index b) { return h(a, a) > h(b, b); });
  }
  h.diagonal().array() += options.damp * h.diagonal().mean();
  quantizer.prepare(w, options.act_order);
  matrix<double> inverse = h.inverse();
  std::vector<bool> is_done(static_cast<std::size_t>(cols), false);
  for (const index j : order) {
    quantizer.begin(w, j);
    const Eigen::VectorXd q = quantizer.quantize(j, w.col(j));
    const Eigen::VectorXd scaled_error = (w.col(j) - q) / inverse(j, j);
    for (index k = 0; k < cols; ++k) {
      if (k != j && !is_done[static_cast<std::size_t>(k)]) {
        w.col(k) -= scaled_error * inverse(j, k);
      }
    }
    w.col(j) = q;
    is_done[static_cast<std::size_t>(j)] = true;
    const Eigen::VectorXd column = inverse.col(j);
    const Eigen::RowVectorXd row = inverse.row(j);
    inverse -= column * row / inverse(j, j);
  }
  return w;
}

// BCQ with scales per (row, group of columns). Dynamic groups are fitted when the recursion
// reaches the group's first column (act_order off); static groups up front.
struct oracle_bcq_rows {
  oracle_bcq_rows(const sa::bcq_params& p, index g) : params(p), group_size(g) {}
  sa::bcq_params params;
  index group_size;
  bool is_static = false;
  std::vector<float> alphas;        // [rows, groups, bits]
  std::vector<std::uint8_t> codes;  // [rows, cols]
  index rows = 0;
  index cols = 0;

  void fit(const matrix<double>& w, index group) {
    std::vector<float> values(static_cast<std::size_t>(group_size));
    std::vector<std::uint8_t> scratch(static_cast<std::size_t>(group_size));
    for (index r = 0; r < rows; ++r) {
      for (index k = 0; k < group_size; ++k) {
        values[static_cast<std::size_t>(k)] = static_cast<float>(w(r, group * group_size + k));
      }
      sa::fit_bcq_group(values.data(), group_size, 1, params, alpha_of(r, group), scratch.data(),
                        nullptr);
    }
  }
  float* alpha_of(index r, index group) {
    return alphas.data() + (r * (cols / group_size) + group) * params.bits;
  }
  void prepare(const matrix<double>& w, bool act_order) {
    rows = w.rows();
    cols = w.cols();
    alphas.assign(static_cast<std::size_t>(rows * (cols / group_size) * params.bits), 0.f);
    codes.assign(static_cast<std::size_t>(rows * cols), 0);
    is_static = act_order;
    if (is_static) {
      for (index g = 0; g < cols / group_size; ++g) {
        fit(w, g);
      }
    }
  }
  void begin(const matrix<double>& w, index j) {
    if (!is_static && j % group_size == 0) {
      fit(w, j / group_size);
    }
  }
  Eigen::VectorXd quantize(index j, const Eigen::VectorXd& w) {
    Eigen::VectorXd q(rows);
    for (index r = 0; r < rows; ++r) {
      const auto value = static_cast<float>(w(r));
      std::uint8_t code = 0;
      sa::assign_bcq_codes(&value, 1, 1, alpha_of(r, j / group_size), params.bits, &code);
      codes[static_cast<std::size_t>(r * cols + j)] = code;
      q(r) = static_cast<double>(sa::bcq_level(alpha_of(r, j / group_size), params.bits, code));
    }
    return q;
  }
};

// ShiftAddLLM's column-wise scales: each column fitted on its own per group of rows.
struct oracle_bcq_columns {
  oracle_bcq_columns(const sa::bcq_params& p, index g) : params(p), group_size(g) {}
  sa::bcq_params params;
  index group_size;
  std::vector<float> alphas;        // [cols, groups, bits]
  std::vector<std::uint8_t> codes;  // [rows, cols]
  index rows = 0;
  index cols = 0;

  void prepare(const matrix<double>& w, bool /*act_order*/) {
    rows = w.rows();
    cols = w.cols();
    alphas.assign(static_cast<std::size_t>(cols * (rows / group_size) * params.bits), 0.f);
    codes.assign(static_cast<std::size_t>(rows * cols), 0);
  }
  void begin(const matrix<double>& /*w*/, index /*j*/) {}
  Eigen::VectorXd quantize(index j, const Eigen::VectorXd& w) {
    Eigen::VectorXd q(rows);
    std::vector<float> values(static_cast<std::size_t>(group_size));
    std::vector<std::uint8_t> group_codes(static_cast<std::size_t>(group_size));
    for (index g = 0; g < rows / group_size; ++g) {
      for (index k = 0; k < group_size; ++k) {
        values[static_cast<std::size_t>(k)] = static_cast<float>(w(g * group_size + k));
      }
      float* alpha = alphas.data() + (j * (rows / group_size) + g) * params.bits;
      sa::fit_bcq_group(values.data(), group_size, 1, params, alpha, group_codes.data(), nullptr);
      for (index k = 0; k < group_size; ++k) {
        const std::uint8_t code = group_codes[static_cast<std::size_t>(k)];
        codes[static_cast<std::size_t>((g * group_size + k) * cols + j)] = code;
        q(g * group_size + k) = static_cast<double>(sa::bcq_level(alpha, params.bits, code));
      }
    }
    return q;
  }
};

// Uniform INT-b per (row, group of columns), dynamic or static groups as above.
struct oracle_uniform {
  oracle_uniform(int b, index g, bool s = false) : bits(b), group_size(g), symmetric(s) {}
  int bits;
  index group_size;
  bool symmetric;
  bool is_static = false;
  std::vector<sa::uniform_group> groups;  // [rows, groups]
  std::vector<std::uint8_t> codes;        // [rows, cols]
  index rows = 0;
  index cols = 0;

  void fit(const matrix<double>& w, index group) {
    std::vector<float> values(static_cast<std::size_t>(group_size));
    for (index r = 0; r < rows; ++r) {
      for (index k = 0; k < group_size; ++k) {
        values[static_cast<std::size_t>(k)] = static_cast<float>(w(r, group * group_size + k));
      }
      groups[static_cast<std::size_t>(r * (cols / group_size) + group)] =
          sa::fit_uniform_group(values.data(), group_size, 1, bits, symmetric);
    }
  }
  void prepare(const matrix<double>& w, bool act_order) {
    rows = w.rows();
    cols = w.cols();
    groups.assign(static_cast<std::size_t>(rows * (cols / group_size)), {});
    codes.assign(static_cast<std::size_t>(rows * cols), 0);
    is_static = act_order;
    if (is_static) {
      for (index g = 0; g < cols / group_size; ++g) {
        fit(w, g);
      }
    }
  }
  void begin(const matrix<double>& w, index j) {
    if (!is_static && j % group_size == 0) {
      fit(w, j / group_size);
    }
  }
  Eigen::VectorXd quantize(index j, const Eigen::VectorXd& w) {
    Eigen::VectorXd q(rows);
    for (index r = 0; r < rows; ++r) {
      const sa::uniform_group& g =
          groups[static_cast<std::size_t>(r * (cols / group_size) + j / group_size)];
      const std::uint8_t code = sa::quantize_uniform(static_cast<float>(w(r)), g, bits);
      codes[static_cast<std::size_t>(r * cols + j)] = code;
      q(r) = static_cast<double>(sa::dequantize_uniform(code, g));
    }
    return q;
  }
};

// ---------------------------------------------------------------------------------------------
// Comparison helpers.

index code_mismatches(const sa::binary_coded_matrix& m, const std::vector<std::uint8_t>& codes) {
  index mismatches = 0;
  for (index r = 0; r < m.rows(); ++r) {
    for (index c = 0; c < m.cols(); ++c) {
      mismatches += m.code(r, c) == codes[static_cast<std::size_t>(r * m.cols() + c)] ? 0 : 1;
    }
  }
  return mismatches;
}

index code_mismatches(const sa::uniform_matrix& m, const std::vector<std::uint8_t>& codes) {
  index mismatches = 0;
  for (std::size_t i = 0; i < codes.size(); ++i) {
    mismatches += m.codes[i] == codes[i] ? 0 : 1;
  }
  return mismatches;
}

// The library and the oracle take the same float inputs up to the rounding of the compensated
// weights (different summation orders, ~1e-15 relative), so scales agree to a few float ulps.
constexpr double oracle_tolerance = 1e-5;

// Small weights and a correlated Hessian, so that compensation changes the result.
struct small_case {
  matrix<float> weights;
  matrix<double> hessian;
};

small_case make_case(index rows, index cols, std::uint64_t seed) {
  small_case out;
  out.weights = reparam::test::random_matrix<float>(rows, cols, seed);
  out.hessian = hessian_of(calibration_inputs(4 * cols, cols, seed ^ 0x1234));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST_CASE("GPTQ with uniform codes reproduces the brute-force OBQ recursion on a 3x4 matrix",
          "[shiftadd][gptq]") {
  const bool act_order = GENERATE(false, true);
  const reparam::index group_size = GENERATE(reparam::index{2}, reparam::index{4});
  const auto seed = reparam::test::test_seed(0x6001);
  CAPTURE(seed, act_order, group_size);
  const small_case data = make_case(3, 4, seed);
  const sa::uniform_params params{2, group_size, false};
  sa::gptq_params gptq;
  gptq.act_order = act_order;
  gptq.block_size = 3;  // a block boundary inside the 4 columns

  const sa::uniform_matrix result = sa::quantize_gptq(data.weights, data.hessian, params, gptq);
  oracle_uniform oracle{2, group_size};
  const matrix<double> expected =
      oracle_gptq(data.weights.cast<double>(), data.hessian, {gptq.damp, act_order}, oracle);
  REQUIRE(code_mismatches(result, oracle.codes) == 0);
  const matrix<float> dequantized = result.dequantize();
  const matrix<float> expected_float = expected.cast<float>();
  const auto stats = reparam::test::compare(dequantized.data(), expected_float.data(),
                                            expected.size(), oracle_tolerance, oracle_tolerance);
  INFO(stats);
  REQUIRE(stats.ok());
}

TEST_CASE("ShiftAdd with 1-bit BCQ reproduces the brute-force OBQ recursion on a 3x4 matrix",
          "[shiftadd][gptq]") {
  const bool act_order = GENERATE(false, true);
  const sa::scale_axis axis = GENERATE(sa::scale_axis::rows, sa::scale_axis::columns);
  const auto seed = reparam::test::test_seed(0x6002);
  CAPTURE(seed, act_order, static_cast<int>(axis));
  const small_case data = make_case(3, 4, seed);
  sa::shiftadd_params params;
  params.bcq.bits = 1;
  params.axis = axis;
  params.group_size = axis == sa::scale_axis::rows ? 2 : 3;
  params.gptq.act_order = act_order;
  params.gptq.block_size = 3;

  const sa::binary_coded_matrix result = sa::quantize_shiftadd(data.weights, data.hessian, params);
  matrix<double> expected;
  std::vector<std::uint8_t> codes;
  if (axis == sa::scale_axis::rows) {
    oracle_bcq_rows oracle{params.bcq, params.group_size};
    expected = oracle_gptq(data.weights.cast<double>(), data.hessian, {0.01, act_order}, oracle);
    codes = oracle.codes;
  } else {
    oracle_bcq_columns oracle{params.bcq, params.group_size};
    expected = oracle_gptq(data.weights.cast<double>(), data.hessian, {0.01, act_order}, oracle);
    codes = oracle.codes;
  }
  REQUIRE(code_mismatches(result, codes) == 0);
  const matrix<float> reconstructed = sa::reconstruct(result);
  const matrix<float> expected_float = expected.cast<float>();
  const auto stats = reparam::test::compare(reconstructed.data(), expected_float.data(),
                                            expected.size(), oracle_tolerance, oracle_tolerance);
  INFO(stats);
  REQUIRE(stats.ok());
}

TEST_CASE("GPTQ matches the OBQ recursion for any block size and group size on both scale axes",
          "[shiftadd][gptq]") {
  // 6x12, groups of 4 columns (rows axis) or 3 rows (columns axis), 3-bit BCQ with APoT scales
  // and 3-bit uniform; block sizes that split groups (5), align with them (4), or hold everything.
  const reparam::index block_size =
      GENERATE(reparam::index{1}, reparam::index{4}, reparam::index{5}, reparam::index{128});
  const bool act_order = GENERATE(false, true);
  const auto seed = reparam::test::test_seed(0x6003);
  CAPTURE(seed, block_size, act_order);
  const small_case data = make_case(6, 12, seed);
  sa::gptq_params gptq;
  gptq.act_order = act_order;
  gptq.block_size = block_size;

  for (const sa::scale_axis axis : {sa::scale_axis::rows, sa::scale_axis::columns}) {
    sa::shiftadd_params params;
    params.bcq = {3, 10, 2};
    params.axis = axis;
    params.group_size = axis == sa::scale_axis::rows ? 4 : 3;
    params.gptq = gptq;
    const sa::binary_coded_matrix result =
        sa::quantize_shiftadd(data.weights, data.hessian, params);
    matrix<double> expected;
    reparam::index mismatches = 0;
    if (axis == sa::scale_axis::rows) {
      oracle_bcq_rows oracle{params.bcq, params.group_size};
      expected = oracle_gptq(data.weights.cast<double>(), data.hessian, {0.01, act_order}, oracle);
      mismatches = code_mismatches(result, oracle.codes);
    } else {
      oracle_bcq_columns oracle{params.bcq, params.group_size};
      expected = oracle_gptq(data.weights.cast<double>(), data.hessian, {0.01, act_order}, oracle);
      mismatches = code_mismatches(result, oracle.codes);
    }
    CAPTURE(static_cast<int>(axis));
    REQUIRE(mismatches == 0);
    const matrix<float> reconstructed = sa::reconstruct(result);
    const matrix<float> expected_float = expected.cast<float>();
    const auto stats = reparam::test::compare(reconstructed.data(), expected_float.data(),
                                              expected.size(), oracle_tolerance, oracle_tolerance);
    INFO(stats);
    REQUIRE(stats.ok());
    // APoT: every stored scale is the exact sum of its power-of-two terms.
    reparam::index apot_mismatches = 0;
    for (reparam::index major = 0; major < result.scale_major(); ++major) {
      for (reparam::index g = 0; g < result.groups(); ++g) {
        for (int p = 0; p < 3; ++p) {
          const sa::apot_term* terms = result.apot_of(major, g, p);
          double sum = 0.0;
          for (int t = 0; t < 2; ++t) {
            sum += terms[t].sign * std::ldexp(1.0, terms[t].exponent);
          }
          apot_mismatches += sum == static_cast<double>(result.scales_of(major, g)[p]) ? 0 : 1;
        }
      }
    }
    REQUIRE(apot_mismatches == 0);
  }

  const sa::uniform_params uniform{3, 4, true};
  const sa::uniform_matrix result = sa::quantize_gptq(data.weights, data.hessian, uniform, gptq);
  oracle_uniform oracle{3, 4, true};
  const matrix<double> expected =
      oracle_gptq(data.weights.cast<double>(), data.hessian, {0.01, act_order}, oracle);
  REQUIRE(code_mismatches(result, oracle.codes) == 0);
  const matrix<float> dequantized = result.dequantize();
  const matrix<float> expected_float = expected.cast<float>();
  const auto stats = reparam::test::compare(dequantized.data(), expected_float.data(),
                                            expected.size(), oracle_tolerance, oracle_tolerance);
  INFO(stats);
  REQUIRE(stats.ok());
}

TEST_CASE("with H = identity GPTQ equals RTN and ShiftAdd equals weight-only BCQ exactly",
          "[shiftadd][gptq]") {
  const bool act_order = GENERATE(false, true);
  const auto seed = reparam::test::test_seed(0x6004);
  CAPTURE(seed, act_order);
  const matrix<float> weights = reparam::test::random_matrix<float>(8, 16, seed);
  const matrix<double> identity = matrix<double>::Identity(16, 16);
  sa::gptq_params gptq;
  gptq.act_order = act_order;
  gptq.block_size = 5;

  for (const int bits : {2, 3, 4}) {
    for (const reparam::index group_size : {reparam::index{0}, reparam::index{8}}) {
      CAPTURE(bits, group_size);
      const sa::uniform_params params{bits, group_size, bits == 3};
      const sa::uniform_matrix gptq_result = sa::quantize_gptq(weights, identity, params, gptq);
      const sa::uniform_matrix rtn = sa::quantize_rtn(weights, params);
      REQUIRE(gptq_result.group_size == rtn.group_size);
      REQUIRE(gptq_result.codes == rtn.codes);
      reparam::index group_mismatches = 0;
      for (std::size_t i = 0; i < rtn.groups.size(); ++i) {
        group_mismatches += gptq_result.groups[i].scale == rtn.groups[i].scale &&
                                    gptq_result.groups[i].zero == rtn.groups[i].zero
                                ? 0
                                : 1;
      }
      REQUIRE(group_mismatches == 0);

      for (const sa::scale_axis axis : {sa::scale_axis::rows, sa::scale_axis::columns}) {
        sa::shiftadd_params shiftadd;
        shiftadd.bcq.bits = bits;
        shiftadd.bcq.apot_terms = bits == 3 ? 3 : 0;
        shiftadd.group_size = group_size;
        shiftadd.axis = axis;
        shiftadd.gptq = gptq;
        const sa::binary_coded_matrix ours = sa::quantize_shiftadd(weights, identity, shiftadd);
        const sa::binary_coded_matrix bcq =
            sa::quantize_bcq(weights, shiftadd.bcq, group_size, axis);
        REQUIRE(ours.planes() == bcq.planes());
        REQUIRE(ours.scales() == bcq.scales());
        REQUIRE(ours.apot().size() == bcq.apot().size());
        REQUIRE(std::equal(ours.apot().begin(), ours.apot().end(), bcq.apot().begin(),
                           [](const sa::apot_term& a, const sa::apot_term& b) {
                             return a.sign == b.sign && a.exponent == b.exponent;
                           }));
      }
    }
  }
}

TEST_CASE("activation-aware quantization has lower output error than weight-only at 2 to 4 bits",
          "[shiftadd][gptq]") {
  const auto seed = reparam::test::test_seed(0x6005);
  CAPTURE(seed);
  const reparam::index rows = 32;
  const reparam::index cols = 64;
  const matrix<float> weights = gaussian(rows, cols, seed).cast<float>();
  const matrix<double> hessian = hessian_of(calibration_inputs(512, cols, seed ^ 0x99));
  for (const int bits : {2, 3, 4}) {
    CAPTURE(bits);
    const sa::uniform_params uniform{bits, 32, false};
    const double rtn =
        sa::output_error(weights, sa::quantize_rtn(weights, uniform).dequantize(), hessian);
    const double gptq = sa::output_error(
        weights, sa::quantize_gptq(weights, hessian, uniform).dequantize(), hessian);
    CAPTURE(rtn, gptq);
    REQUIRE(gptq <= rtn);
    for (const sa::scale_axis axis : {sa::scale_axis::rows, sa::scale_axis::columns}) {
      CAPTURE(static_cast<int>(axis));
      sa::shiftadd_params params;
      params.bcq.bits = bits;
      params.group_size = 32;
      params.axis = axis;
      const double bcq = sa::output_error(
          weights, sa::reconstruct(sa::quantize_bcq(weights, params.bcq, 32, axis)), hessian);
      const double shiftadd = sa::output_error(
          weights, sa::reconstruct(sa::quantize_shiftadd(weights, hessian, params)), hessian);
      CAPTURE(bcq, shiftadd);
      REQUIRE(shiftadd <= bcq);
    }
  }
}

TEST_CASE("output_error equals the summed squared output error on the calibration inputs",
          "[shiftadd][gptq]") {
  const auto seed = reparam::test::test_seed(0x6006);
  CAPTURE(seed);
  const matrix<double> x = calibration_inputs(40, 12, seed);
  const matrix<float> w = reparam::test::random_matrix<float>(5, 12, seed ^ 1);
  const matrix<float> q = reparam::test::random_matrix<float>(5, 12, seed ^ 2);
  reparam::second_moment h(12);
  h.add(x);
  // Oracle: sum over samples t and outputs r of ((W - Q) x_t)_r^2, directly.
  double expected = 0.0;
  for (reparam::index t = 0; t < x.rows(); ++t) {
    for (reparam::index r = 0; r < 5; ++r) {
      double y = 0.0;
      for (reparam::index c = 0; c < 12; ++c) {
        y += (static_cast<double>(w(r, c)) - static_cast<double>(q(r, c))) * x(t, c);
      }
      expected += y * y;
    }
  }
  REQUIRE(sa::output_error(w, q, h.sum()) == Approx(expected).epsilon(1e-10));
  REQUIRE_THROWS_WITH(sa::output_error(w, q.leftCols(11), h.sum()),
                      Catch::Contains("quantized is 5x11 but weights are 5x12"));
}

TEST_CASE("dead inputs give zeroed columns and no NaN", "[shiftadd][gptq]") {
  const bool act_order = GENERATE(false, true);
  const auto seed = reparam::test::test_seed(0x6007);
  CAPTURE(seed, act_order);
  matrix<double> x = calibration_inputs(64, 16, seed);
  x.col(3).setZero();
  x.col(10).setZero();
  const matrix<double> hessian = hessian_of(x);
  const matrix<float> weights = reparam::test::random_matrix<float>(8, 16, seed ^ 5);
  sa::gptq_params gptq;
  gptq.act_order = act_order;

  const sa::uniform_matrix uniform = sa::quantize_gptq(weights, hessian, {3, 8, false}, gptq);
  const matrix<float> dequantized = uniform.dequantize();
  REQUIRE(dequantized.allFinite());
  REQUIRE(dequantized.col(3).isZero(0.0));
  REQUIRE(dequantized.col(10).isZero(0.0));

  sa::shiftadd_params columns;
  columns.axis = sa::scale_axis::columns;
  columns.group_size = 4;
  columns.gptq = gptq;
  const matrix<float> by_columns =
      sa::reconstruct(sa::quantize_shiftadd(weights, hessian, columns));
  REQUIRE(by_columns.allFinite());
  REQUIRE(by_columns.col(3).isZero(0.0));
  REQUIRE(by_columns.col(10).isZero(0.0));

  // Row-wise scales: a dead weight takes the level of its group nearest to 0 (BCQ has no 0 level).
  sa::shiftadd_params rows;
  rows.group_size = 8;
  rows.gptq = gptq;
  const sa::binary_coded_matrix by_rows = sa::quantize_shiftadd(weights, hessian, rows);
  const matrix<float> reconstructed = sa::reconstruct(by_rows);
  REQUIRE(reconstructed.allFinite());
  for (const reparam::index c : {reparam::index{3}, reparam::index{10}}) {
    for (reparam::index r = 0; r < 8; ++r) {
      float nearest = std::numeric_limits<float>::infinity();
      for (unsigned code = 0; code < 8u; ++code) {
        const float level =
            sa::bcq_level(by_rows.scales_of(r, c / 8), 3, static_cast<std::uint8_t>(code));
        nearest = std::abs(level) < std::abs(nearest) ? level : nearest;
      }
      CAPTURE(r, c);
      REQUIRE(std::abs(reconstructed(r, c)) == std::abs(nearest));
    }
  }
  const double error = sa::output_error(weights, reconstructed, hessian);
  REQUIRE(std::isfinite(error));
}

TEST_CASE("GPTQ rejects Hessians that are not positive definite after damping",
          "[shiftadd][gptq]") {
  const matrix<float> weights = reparam::test::random_matrix<float>(4, 4, 7);
  sa::shiftadd_params params;
  params.group_size = 2;

  matrix<double> negative = matrix<double>::Identity(4, 4);
  negative(2, 2) = -1.0;
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, negative, params),
                      Catch::Contains("shiftadd::quantize_shiftadd") &&
                          Catch::Contains("H(2, 2) = -1 is negative"));

  // Rank 2 in 4 dimensions with no zero diagonal, no damping: singular.
  const matrix<double> x = reparam::test::random_matrix<double>(2, 4, 11);
  const matrix<double> singular = x.transpose() * x;
  sa::gptq_params no_damp;
  no_damp.damp = 0.0;
  REQUIRE_THROWS_WITH(sa::quantize_gptq(weights, singular, {2, 2, false}, no_damp),
                      Catch::Contains("shiftadd::quantize_gptq") &&
                          Catch::Contains("not positive definite") && Catch::Contains("smallest"));
  params.gptq = no_damp;
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, singular, params),
                      Catch::Contains("not positive definite"));
  // The same Hessian damped is fine.
  REQUIRE_NOTHROW(sa::quantize_gptq(weights, singular, {2, 2, false}));

  // Indefinite with a positive diagonal.
  matrix<double> indefinite = matrix<double>::Identity(4, 4);
  indefinite(0, 1) = indefinite(1, 0) = 3.0;
  REQUIRE_THROWS_WITH(sa::quantize_gptq(weights, indefinite, {2, 2, false}),
                      Catch::Contains("not positive definite"));
}

TEST_CASE("GPTQ rejects bad weights and shapes and parameters with clear messages",
          "[shiftadd][gptq]") {
  matrix<float> weights = reparam::test::random_matrix<float>(4, 6, 3);
  const matrix<double> hessian = matrix<double>::Identity(6, 6);
  sa::shiftadd_params params;
  params.group_size = 3;

  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, matrix<double>::Identity(5, 5), params),
                      Catch::Contains("hessian is 5x5 but weights have 6 cols"));
  REQUIRE_THROWS_WITH(sa::quantize_gptq(weights, matrix<double>::Identity(6, 5), {2, 3, false}),
                      Catch::Contains("hessian is 6x5 but weights have 6 cols"));
  matrix<double> asymmetric = hessian;
  asymmetric(1, 4) = 0.5;
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, asymmetric, params),
                      Catch::Contains("not symmetric"));
  matrix<double> nan_hessian = hessian;
  nan_hessian(2, 2) = std::numeric_limits<double>::quiet_NaN();
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, nan_hessian, params),
                      Catch::Contains("hessian has non-finite"));

  params.group_size = 4;
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, hessian, params),
                      Catch::Contains("group_size 4 does not divide cols 6"));
  params.axis = sa::scale_axis::columns;
  params.group_size = 3;
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, hessian, params),
                      Catch::Contains("group_size 3 does not divide rows 4"));
  params.axis = sa::scale_axis::rows;
  params.bcq.bits = 9;
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, hessian, params), Catch::Contains("bits 9"));
  params.bcq.bits = 3;
  params.gptq.damp = -0.1;
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, hessian, params), Catch::Contains("damp"));
  params.gptq.damp = 0.01;
  params.gptq.block_size = 0;
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, hessian, params),
                      Catch::Contains("block_size 0"));
  params.gptq.block_size = 128;
  REQUIRE_THROWS_WITH(sa::quantize_gptq(weights, hessian, {2, 4, false}),
                      Catch::Contains("group_size 4 does not divide cols 6"));

  weights(2, 5) = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(sa::quantize_shiftadd(weights, hessian, params),
                      Catch::Contains("non-finite") && Catch::Contains("(2, 5)"));
  REQUIRE_THROWS_WITH(sa::quantize_gptq(weights, hessian, {2, 3, false}),
                      Catch::Contains("shiftadd::quantize_gptq") && Catch::Contains("non-finite"));
}

TEST_CASE("GPTQ accepts double weights and row blocks of a larger matrix", "[shiftadd][gptq]") {
  const auto seed = reparam::test::test_seed(0x6008);
  CAPTURE(seed);
  const small_case data = make_case(6, 8, seed);
  const matrix<double> as_double = data.weights.cast<double>();
  sa::shiftadd_params params;
  params.group_size = 4;
  const sa::binary_coded_matrix from_float =
      sa::quantize_shiftadd(data.weights, data.hessian, params);
  const sa::binary_coded_matrix from_double =
      sa::quantize_shiftadd(as_double, data.hessian, params);
  REQUIRE(from_float.planes() == from_double.planes());
  REQUIRE(from_float.scales() == from_double.scales());
  const sa::binary_coded_matrix from_block =
      sa::quantize_shiftadd(data.weights.middleRows(1, 4), data.hessian, params);
  REQUIRE(from_block.rows() == 4);
  const sa::uniform_matrix uniform =
      sa::quantize_gptq(as_double.middleRows(2, 3), data.hessian, {4, 0, false});
  REQUIRE(uniform.group_size == 8);
  REQUIRE(uniform.dequantize().allFinite());
}

TEST_CASE("the inverse Cholesky factor satisfies U^T U = inverse of the damped permuted Hessian",
          "[shiftadd][gptq]") {
  // 100 columns: the recursive triangular inverse splits down to 25-column leaves.
  const bool act_order = GENERATE(false, true);
  const auto seed = reparam::test::test_seed(0x6009);
  CAPTURE(seed, act_order);
  const reparam::index n = 100;
  matrix<double> x = calibration_inputs(300, n, seed);
  x.col(17).setZero();
  const matrix<double> hessian = hessian_of(x);
  const sa::detail::gptq_factor factor =
      sa::detail::factor_hessian("test", hessian, 0.02, act_order);
  // Oracle: H' (dead fix, damping) permuted to loop order, inverted explicitly.
  matrix<double> fixed = hessian;
  fixed(17, 17) = 1.0;
  double mean_diagonal = 0.0;
  for (reparam::index j = 0; j < n; ++j) {
    mean_diagonal += fixed(j, j) / static_cast<double>(n);
  }
  for (reparam::index j = 0; j < n; ++j) {
    fixed(j, j) += 0.02 * mean_diagonal;
  }
  std::vector<reparam::index> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), reparam::index{0});
  if (act_order) {
    std::stable_sort(order.begin(), order.end(), [&fixed](reparam::index a, reparam::index b) {
      return fixed(a, a) > fixed(b, b);
    });
  }
  REQUIRE(factor.order == order);
  REQUIRE(factor.is_dead[17] == 1);
  matrix<double> permuted(n, n);
  for (reparam::index i = 0; i < n; ++i) {
    for (reparam::index j = 0; j < n; ++j) {
      permuted(i, j) =
          fixed(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
    }
  }
  const matrix<double> inverse = permuted.inverse();
  const matrix<double> product = factor.u.transpose() * factor.u;
  const double scale = inverse.cwiseAbs().maxCoeff();
  // Both sides are computed from a matrix with condition number ~1e3-1e4; 1e-10 relative to the
  // largest entry leaves ample room above double rounding.
  const auto stats =
      reparam::test::compare(product.data(), inverse.data(), inverse.size(), 1e-10 * scale);
  INFO(stats);
  REQUIRE(stats.ok());
  REQUIRE(factor.u.triangularView<Eigen::StrictlyLower>().toDenseMatrix().isZero(0.0));
  reparam::index bad_diagonal = 0;
  for (reparam::index k = 0; k < n; ++k) {
    bad_diagonal += std::abs(factor.u(k, k) - factor.u_diagonal(k)) <= 1e-14 * factor.u(k, k) &&
                            factor.u(k, k) > 0.0
                        ? 0
                        : 1;
  }
  REQUIRE(bad_diagonal == 0);
}

TEST_CASE("cached code tables give the same codes and levels as assign_bcq_codes",
          "[shiftadd][gptq]") {
  const auto seed = reparam::test::test_seed(0x600a);
  CAPTURE(seed);
  for (const int bits : {1, 3, 5, 8}) {
    for (const bool is_static : {false, true}) {
      CAPTURE(bits, is_static);
      sa::bcq_shape shape;
      shape.rows = 6;
      shape.cols = 8;
      shape.bits = bits;
      shape.group_size = 4;
      sa::binary_coded_matrix cached(shape);
      sa::binary_coded_matrix uncached(shape);
      const sa::bcq_params params{bits, 5, 0};
      sa::detail::bcq_rows_scheme with_cache(cached, params, is_static);
      sa::detail::bcq_rows_scheme without_cache(uncached, params, is_static, 0);
      const matrix<float> group = reparam::test::random_matrix<float>(6, 4, seed ^ 7);
      const matrix<double> column = reparam::test::random_matrix<double>(1, 6, seed ^ 8, -2.0, 2.0);
      std::vector<double> q_cached(6);
      std::vector<double> q_uncached(6);
      for (reparam::index r = 0; r < 6; ++r) {
        with_cache.fit(r, 1, group.row(r).data(), 4);
        without_cache.fit(r, 1, group.row(r).data(), 4);
      }
      with_cache.quantize_column(5, 1, column.data(), q_cached.data());
      without_cache.quantize_column(5, 1, column.data(), q_uncached.data());
      with_cache.finish();
      without_cache.finish();
      REQUIRE(q_cached == q_uncached);
      REQUIRE(cached.planes() == uncached.planes());
      for (reparam::index r = 0; r < 6; ++r) {
        const auto value = static_cast<float>(column(0, r));
        std::uint8_t code = 0;
        sa::assign_bcq_codes(&value, 1, 1, cached.scales_of(r, 1), bits, &code);
        REQUIRE(cached.code(r, 5) == code);
      }
    }
  }
}

namespace {

// Forwards to a real policy; from the first call inside the column loop on (after the loop's own
// buffers are allocated), forbids Eigen heap allocations and counts operator new calls.
template <class Inner>
struct allocation_probe {
  Inner& inner;
  mutable bool is_started = false;
  mutable long news_at_start = 0;

  void start() const {
    if (!is_started) {
      is_started = true;
      news_at_start = reparam::test::allocations();
      Eigen::internal::set_is_malloc_allowed(false);
    }
  }
  long news() const { return reparam::test::allocations() - news_at_start; }
  void prepare(const matrix<double>& wt) { inner.prepare(wt); }
  bool starts_group(reparam::index position, reparam::index column) const noexcept {
    start();
    return inner.starts_group(position, column);
  }
  void begin_group(reparam::index position, reparam::index column, const matrix<double>& wt) {
    start();
    inner.begin_group(position, column, wt);
  }
  void quantize_column(reparam::index position, reparam::index column, const double* w,
                       double* q) noexcept {
    start();
    inner.quantize_column(position, column, w, q);
  }
};

template <class Policy>
long loop_allocations(const small_case& data, bool act_order, Policy& policy) {
  const sa::detail::gptq_factor factor =
      sa::detail::factor_hessian("test", data.hessian, 0.01, act_order);
  matrix<double> wt = sa::detail::working_transpose(data.weights, factor.is_dead);
  policy.prepare(wt);
  if (act_order) {
    sa::detail::permute_rows(wt, factor.order);
  }
  allocation_probe<Policy> probe{policy};
  sa::detail::compensate(wt, factor.u, factor.order, 128, probe);
  policy.finish();
  Eigen::internal::set_is_malloc_allowed(true);
  return probe.is_started ? probe.news() : -1;
}

}  // namespace

TEST_CASE("the compensated loop allocates nothing per column", "[shiftadd][gptq]") {
  const bool act_order = GENERATE(false, true);
  const auto seed = reparam::test::test_seed(0x600b);
  CAPTURE(seed, act_order);
  // 24 columns in groups of 8: without act_order the loop ends a block (one small GEMM on the
  // stack) at every group start and refits the group's scales there.
  const small_case data = make_case(16, 24, seed);

  sa::bcq_shape shape;
  shape.rows = 16;
  shape.cols = 24;
  shape.group_size = 8;
  sa::binary_coded_matrix by_rows(shape);
  sa::detail::bcq_rows_scheme bcq_scheme(by_rows, {3, 10, 2}, act_order);
  sa::detail::row_group_policy<sa::detail::bcq_rows_scheme> bcq_policy(bcq_scheme, 16, 8,
                                                                       act_order);
  CHECK(loop_allocations(data, act_order, bcq_policy) == 0);

  shape.axis = sa::scale_axis::columns;
  sa::binary_coded_matrix by_columns(shape);
  sa::detail::bcq_columns_policy columns_policy(by_columns, {3, 10, 0});
  CHECK(loop_allocations(data, act_order, columns_policy) == 0);

  sa::uniform_matrix uniform;
  uniform.rows = 16;
  uniform.cols = 24;
  uniform.bits = 4;
  uniform.group_size = 8;
  uniform.codes.resize(std::size_t{16} * 24);
  uniform.groups.resize(std::size_t{16} * 3);
  sa::detail::uniform_rows_scheme uniform_scheme(uniform, false);
  sa::detail::row_group_policy<sa::detail::uniform_rows_scheme> uniform_policy(uniform_scheme, 16,
                                                                               8, act_order);
  CHECK(loop_allocations(data, act_order, uniform_policy) == 0);
}

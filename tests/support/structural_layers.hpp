// SPDX-License-Identifier: Apache-2.0
// Shared helpers of the structural family's tests (tests/structural/*_test.cpp): seeded random
// layers (convs, BatchNorms far from identity, linears), their "magnitude twins" (the same layers
// on absolute values, which bound the rounding error of any evaluation), short names for the
// double reference layers of reference_conv.hpp, BatchNorm on tokens, and the rounding tolerances
// derived from the twins. Like reference_conv.hpp, nothing here calls the code under test.
#ifndef REPARAM_TESTS_SUPPORT_STRUCTURAL_LAYERS_HPP
#define REPARAM_TESTS_SUPPORT_STRUCTURAL_LAYERS_HPP

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/random.hpp>
#include <reparam/core/tensor_views.hpp>
#include <reparam/core/views.hpp>
#include <reparam/structural/types.hpp>

#include "support/random.hpp"
#include "support/reference_conv.hpp"

namespace reparam::test {

// --- Random layers for the conv tests ---

/// One Philox stream (key `seed`, stream 0) of uniform doubles. The conv tests draw every input
/// and weight from it in order, so their data depends only on the seed and the order of draws.
class uniform_stream {
 public:
  explicit uniform_stream(std::uint64_t seed) : engine_(seed, 0) {}

  /// The next value, uniform in (lo, hi) from 53 random bits.
  double uniform(double lo, double hi) {
    const std::uint32_t high = engine_();
    const std::uint32_t low = engine_();
    return lo + (hi - lo) * uniform_open01_double(high, low);
  }

 private:
  philox_engine engine_;
};

/// A batch of two images [2, channels, height, width] (odd 9x7 by default), entries uniform in
/// (-1, 1).
inline activations random_input(uniform_stream& rng, index channels, index height = 9,
                                index width = 7) {
  activations x(2, channels, height, width);
  for (index i = 0; i < x.size(); ++i) {
    x.data()[i] = rng.uniform(-1.0, 1.0);
  }
  return x;
}

/// A conv with weight [out, in / groups, kernel_h, kernel_w] and, if has_bias, a bias [out], all
/// uniform in (-1, 1) and drawn in that order; without a bias, `bias` is empty.
inline structural::conv2d random_conv(uniform_stream& rng, index out, index in, index kernel_h,
                                      index kernel_w, const structural::conv_geometry& geometry,
                                      bool has_bias = true) {
  structural::conv2d c;
  c.geometry = geometry;
  c.weight = tensor<double, 4>(out, in / geometry.groups, kernel_h, kernel_w);
  for (index i = 0; i < c.weight.size(); ++i) {
    c.weight.data()[i] = rng.uniform(-1.0, 1.0);
  }
  if (has_bias) {
    c.bias.resize(out);
    for (index o = 0; o < out; ++o) {
      c.bias[o] = rng.uniform(-1.0, 1.0);
    }
  }
  return c;
}

/// A BatchNorm far from identity: running_var ~ U(1e-3, 0.1) (scales up to 2 / sqrt(1e-3 + eps)
/// ~ 63, and small variances amplify errors), running_mean ~ U(-1, 1), gamma ~ U(0.5, 2), beta ~
/// U(-1, 1), eps 1e-5 or 1e-3 per layer. Without is_affine, gamma and beta are empty
/// (affine=False) and not drawn.
inline structural::batch_norm random_bn(uniform_stream& rng, index channels,
                                        bool is_affine = true) {
  structural::batch_norm bn;
  bn.running_mean.resize(channels);
  bn.running_var.resize(channels);
  bn.eps = rng.uniform(0.0, 1.0) < 0.5 ? 1e-5 : 1e-3;
  if (is_affine) {
    bn.gamma.resize(channels);
    bn.beta.resize(channels);
  }
  for (index c = 0; c < channels; ++c) {
    bn.running_mean[c] = rng.uniform(-1.0, 1.0);
    bn.running_var[c] = rng.uniform(1e-3, 0.1);
    if (is_affine) {
      bn.gamma[c] = rng.uniform(0.5, 2.0);
      bn.beta[c] = rng.uniform(-1.0, 1.0);
    }
  }
  return bn;
}

/// A BatchNorm that is the identity up to rounding: gamma 1, beta 0, mean 0 and running_var
/// 1 - epsilon, so s = 1 / sqrt((1 - epsilon) + epsilon) is 1 within a few roundings.
inline structural::batch_norm identity_bn(index channels, double epsilon) {
  structural::batch_norm bn;
  bn.eps = epsilon;
  bn.gamma = Eigen::VectorXd::Ones(channels);
  bn.beta = Eigen::VectorXd::Zero(channels);
  bn.running_mean = Eigen::VectorXd::Zero(channels);
  bn.running_var = Eigen::VectorXd::Constant(channels, 1.0 - epsilon);
  return bn;
}

/// The four padding modes, zeros first.
inline const std::vector<structural::padding_mode> all_padding_modes = {
    structural::padding_mode::zeros, structural::padding_mode::reflect,
    structural::padding_mode::replicate, structural::padding_mode::circular};

/// A conv geometry with padding pad_h on top and bottom, pad_w left and right, and the same
/// stride and dilation along both axes.
inline structural::conv_geometry geometry_of(
    index pad_h, index pad_w, index stride, index groups,
    structural::padding_mode mode = structural::padding_mode::zeros, index dilation = 1) {
  structural::conv_geometry g =
      structural::conv_geometry::padded(0, stride, groups, dilation, mode);
  g.pad_top = g.pad_bottom = pad_h;
  g.pad_left = g.pad_right = pad_w;
  return g;
}

// --- Random layers for the linear and transformer tests ---

/// Fresh random data for every call, all derived from the run's seed: call number i fills its
/// result with random_matrix(seed + i * golden ratio), row by row.
class random_source {
 public:
  explicit random_source(std::uint64_t seed) : seed_(seed) {}

  /// A rows x cols matrix uniform in (lo, hi).
  matrix<double> uniform(index rows, index cols, double lo, double hi) {
    ++calls_;
    return random_matrix<double>(rows, cols, seed_ + 0x9E3779B97F4A7C15ull * calls_, lo, hi);
  }

  /// A vector of `size` values uniform in (lo, hi).
  Eigen::VectorXd vector(index size, double lo, double hi) {
    const matrix<double> m = uniform(size, 1, lo, hi);
    return Eigen::Map<const Eigen::VectorXd>(m.data(), size);
  }

  /// Images [batch, channels, height, width] uniform in (-2, 2).
  activations images(index batch, index channels, index height, index width) {
    const matrix<double> m = uniform(batch * channels, height * width, -2.0, 2.0);
    activations x(batch, channels, height, width);
    std::copy(m.data(), m.data() + m.size(), x.data());
    return x;
  }

  /// A linear [out, in] with weight and bias uniform in (-1, 1).
  structural::linear dense(index out, index in) {
    return {uniform(out, in, -1.0, 1.0), vector(out, -1.0, 1.0)};
  }

  /// A BatchNorm far from identity: running_var ~ U(1e-3, 0.1), nonzero means, gammas of both
  /// signs (U(-1.5, 1.5)), eps 1e-5.
  structural::batch_norm norm(index channels) {
    structural::batch_norm bn;
    bn.gamma = vector(channels, -1.5, 1.5);
    bn.beta = vector(channels, -1.0, 1.0);
    bn.running_mean = vector(channels, -1.0, 1.0);
    bn.running_var = vector(channels, 1e-3, 0.1);
    bn.eps = 1e-5;
    return bn;
  }

  /// A conv [out, in / groups, kh, kw] with weight and bias uniform in (-1, 1).
  structural::conv2d conv(index out, index in, index kh, index kw,
                          const structural::conv_geometry& geometry) {
    structural::conv2d c;
    c.weight = tensor<double, 4>(out, in / geometry.groups, kh, kw);
    const matrix<double> w = uniform(out, c.weight.size() / out, -1.0, 1.0);
    std::copy(w.data(), w.data() + w.size(), c.weight.data());
    c.bias = vector(out, -1.0, 1.0);
    c.geometry = geometry;
    return c;
  }

 private:
  std::uint64_t seed_;
  std::uint64_t calls_ = 0;
};

// --- Magnitude twins ---
// Evaluating a block on |x| with |W|, |b|, and BatchNorms rewritten as |s| (|z| + |mean|) +
// |beta| gives at every output the sum of the absolute values of all products the block
// accumulates: the quantity forward rounding-error bounds are proportional to.

/// |x| elementwise.
inline activations magnitude(const activations& x) {
  activations out = x.abs();
  return out;
}

/// The conv with |weight| and |bias| (same geometry).
inline structural::conv2d magnitude(const structural::conv2d& c) {
  structural::conv2d out = c;
  out.weight = c.weight.abs();
  out.bias = c.bias.cwiseAbs();
  return out;
}

/// The transposed conv with |weight| and |bias| (same geometry and output padding).
inline structural::conv_transpose2d magnitude(const structural::conv_transpose2d& c) {
  structural::conv_transpose2d out = c;
  out.weight = c.weight.abs();
  out.bias = c.bias.cwiseAbs();
  return out;
}

/// The BatchNorm with |gamma|, |beta| and mean -|mean|: on |x| it computes
/// |s| (|x| + |mean|) + |beta|.
inline structural::batch_norm magnitude(const structural::batch_norm& bn) {
  structural::batch_norm out = bn;
  out.gamma = bn.gamma.cwiseAbs();
  out.beta = bn.beta.cwiseAbs();
  out.running_mean = -bn.running_mean.cwiseAbs();
  return out;
}

/// The linear with |weight| and |bias| (an empty bias stays empty).
inline structural::linear magnitude(const structural::linear& l) {
  return {l.weight.cwiseAbs(), l.bias.cwiseAbs()};
}

// --- Reference layers (reference_conv.hpp) under short names ---

/// conv(x) by the direct reference loops.
inline activations conv(const activations& x, const structural::conv2d& c) {
  return reference_conv2d(x, c);
}

/// Eval-mode BatchNorm by its formula.
inline activations norm(const activations& x, const structural::batch_norm& bn) {
  return reference_batch_norm(x, bn);
}

/// a + b elementwise.
inline activations sum(const activations& a, const activations& b) {
  activations out = a + b;
  return out;
}

/// x padded per side by g's padding with the constant values[c] in channel c (DBB's BNAndPad).
inline activations pad_constant(const activations& x, const structural::conv_geometry& g,
                                const Eigen::VectorXd& values) {
  activations out(x.dimension(0), x.dimension(1), x.dimension(2) + g.pad_top + g.pad_bottom,
                  x.dimension(3) + g.pad_left + g.pad_right);
  for (index b = 0; b < out.dimension(0); ++b) {
    for (index c = 0; c < out.dimension(1); ++c) {
      for (index i = 0; i < out.dimension(2); ++i) {
        for (index j = 0; j < out.dimension(3); ++j) {
          const index si = i - g.pad_top;
          const index sj = j - g.pad_left;
          const bool is_inside = si >= 0 && si < x.dimension(2) && sj >= 0 && sj < x.dimension(3);
          out(b, c, i, j) = is_inside ? x(b, c, si, sj) : values[c];
        }
      }
    }
  }
  return out;
}

/// c applied to x padded with the constant values[c] per channel instead of c's own padding
/// (same amounts per side): a k x k conv behind DBB's BNAndPad.
inline activations conv_padded_with(const activations& x, const structural::conv2d& c,
                                    const Eigen::VectorXd& values) {
  structural::conv2d unpadded = c;
  unpadded.geometry.pad_top = unpadded.geometry.pad_bottom = 0;
  unpadded.geometry.pad_left = unpadded.geometry.pad_right = 0;
  return conv(pad_constant(x, c.geometry, values), unpadded);
}

/// What a per-pixel block (1x1 convs, BatchNorms) outputs for an all-zero input, per channel:
/// `block` (activations -> activations) applied to one zero pixel of `channels` channels.
template <class Block>
Eigen::VectorXd output_at_zero(index channels, const Block& block) {
  activations zero(1, channels, 1, 1);
  zero.setZero();
  const activations out = block(zero);
  Eigen::VectorXd values(out.dimension(1));
  for (index c = 0; c < values.size(); ++c) {
    values[c] = out(0, c, 0, 0);
  }
  return values;
}

// --- Layers on tokens [tokens, features] ---

/// Eval BatchNorm on tokens [tokens, channels], straight from its formula.
inline matrix<double> batch_norm_tokens(const matrix<double>& x, const structural::batch_norm& bn) {
  matrix<double> y(x.rows(), x.cols());
  const bool is_affine = bn.gamma.size() != 0;
  for (index t = 0; t < x.rows(); ++t) {
    for (index c = 0; c < x.cols(); ++c) {
      const double z = (x(t, c) - bn.running_mean[c]) / std::sqrt(bn.running_var[c] + bn.eps);
      y(t, c) = is_affine ? bn.gamma[c] * z + bn.beta[c] : z;
    }
  }
  return y;
}

/// The magnitude twin of batch_norm_tokens on x_abs = |x|:
/// (|x| + |mean|) |gamma| / sqrt(var + eps) + |beta|.
inline matrix<double> batch_norm_magnitude(const matrix<double>& x_abs,
                                           const structural::batch_norm& bn) {
  matrix<double> y(x_abs.rows(), x_abs.cols());
  for (index t = 0; t < x_abs.rows(); ++t) {
    for (index c = 0; c < x_abs.cols(); ++c) {
      const double gamma = bn.gamma.size() == 0 ? 1.0 : std::fabs(bn.gamma[c]);
      const double beta = bn.beta.size() == 0 ? 0.0 : std::fabs(bn.beta[c]);
      y(t, c) = (x_abs(t, c) + std::fabs(bn.running_mean[c])) * gamma /
                    std::sqrt(bn.running_var[c] + bn.eps) +
                beta;
    }
  }
  return y;
}

/// GELU (erf form): 0.5 x (1 + erf(x / sqrt(2))). 1.13-Lipschitz, |gelu(x)| <= |x|.
inline double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

/// Largest |a - b| over two equally shaped matrices (a failed REQUIRE on a shape mismatch).
inline double max_abs_diff(const matrix<double>& a, const matrix<double>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return (a - b).cwiseAbs().maxCoeff();
}

// --- Tolerances ---

/// Unit roundoff u of double.
constexpr double unit_roundoff = 0x1p-53;
/// Machine epsilon of double, 2u.
constexpr double machine_epsilon = std::numeric_limits<double>::epsilon();
/// Unit roundoff of float: what the one rounding of merged weights to float costs, relative.
constexpr double float_roundoff = 0x1p-24;

/// Bound on |merged - unmerged| for two double evaluations of the same block, as the conv tests
/// count: each evaluation accumulates at most `terms` rounded operations along any path from an
/// input to an output (conv taps of every stage, the bias, the BN's few operations, the branch
/// sum, and the merge's own sums of products), so by the standard forward bound (Higham, Accuracy
/// and Stability of Numerical Algorithms, eq. 3.5: |fl(sum) - sum| <= gamma_n sum |terms|, gamma_n
/// ~ n u) each is within terms * u * M of the exact block output, M the magnitude twin's output
/// (the sum of absolute products, which already carries the BN scales up to ~63). The two
/// evaluations therefore differ by at most 2 * terms * u * M.
inline double double_tolerance(index terms, double magnitude_bound) {
  return 2.0 * static_cast<double>(terms) * unit_roundoff * magnitude_bound;
}

/// The same bound as the linear tests count: each output is a sum of at most `terms` products
/// along its longest path (the sum of the fan-ins it goes through), so each evaluation errs by
/// at most terms * u * M (Higham eq. 3.5), M = the sum of |products| from the magnitude twin.
/// Forming the merged weights adds a few relative roundings (`depth`: e.g. sqrt, divide, multiply
/// for a BatchNorm scale times a weight). Both sides together: (terms + depth) * eps * M, with
/// eps = 2u (machine_epsilon).
inline double rounding_tolerance(double terms, double magnitude_bound, double depth = 4.0) {
  return (terms + depth) * machine_epsilon * magnitude_bound;
}

/// Checks a merged conv against the unmerged block output `reference` (double), within
/// double_tolerance(terms, M), M = magnitude_bound; then its float rounding: to_float perturbs
/// every weight and bias by at most float_roundoff relative, so the float conv's output moves by
/// at most float_roundoff * M (M bounds the merged conv on |x|, whose absolute weights are at
/// most the sums of the absolute branch terms). Finally the headline figure: the float
/// conv within 1e-6 of max |reference| (M / max|y| stays below ~10 in these tests).
inline void check_merged(const activations& x, const structural::conv2d& merged,
                         const activations& reference, double magnitude_bound, index terms) {
  const double err = max_abs_diff(conv(x, merged), reference);
  const double tolerance = double_tolerance(terms, magnitude_bound);
  const double scale = max_abs(reference);
  CAPTURE(err, tolerance, magnitude_bound, scale);
  CHECK(err <= tolerance);
  const structural::conv2d_f rounded = structural::to_float(merged);
  const structural::conv2d back = structural::conv2d_from(
      const_tensor_map<float, 4>(rounded.weight.data(), rounded.weight.dimensions()), rounded.bias,
      rounded.geometry);
  const double err_float = max_abs_diff(conv(x, back), reference);
  const double tolerance_float = float_roundoff * magnitude_bound + tolerance;
  CAPTURE(err_float, tolerance_float);
  CHECK(err_float <= tolerance_float);
  CHECK(err_float <= 1e-6 * scale);
}

/// CHECKs every weight and bias of `actual` against `expected` (same shapes) within
/// relative * |expected|, one CHECK per value.
inline void check_each_within(const structural::conv2d& actual, const structural::conv2d& expected,
                              double relative) {
  for (index i = 0; i < expected.weight.size(); ++i) {
    CHECK(std::abs(actual.weight.data()[i] - expected.weight.data()[i]) <=
          relative * std::abs(expected.weight.data()[i]));
  }
  for (index o = 0; o < expected.bias.size(); ++o) {
    CHECK(std::abs(actual.bias[o] - expected.bias[o]) <= relative * std::abs(expected.bias[o]));
  }
}

/// True if two convs have the same shapes, geometry and bit-identical weights and biases.
inline bool same_bits(const structural::conv2d& a, const structural::conv2d& b) {
  if (a.weight.dimensions() != b.weight.dimensions() || a.bias.size() != b.bias.size() ||
      a.geometry != b.geometry) {
    return false;
  }
  return std::equal(a.weight.data(), a.weight.data() + a.weight.size(), b.weight.data()) &&
         a.bias == b.bias;
}

/// Products per output of a conv: C/groups * kh * kw.
inline index taps(const structural::conv2d& c) {
  return c.weight.dimension(1) * c.kernel_h() * c.kernel_w();
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_STRUCTURAL_LAYERS_HPP

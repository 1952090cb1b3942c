// SPDX-License-Identifier: Apache-2.0
// The inference forward of structural/forward.hpp (im2col + GEMM convolution, BatchNorm, pooling,
// linear) against the direct double-precision loops of tests/support/reference_conv.hpp, on odd
// shapes, every padding mode, groups 1/2/depthwise, stride 1/2 and dilation 1/2, in double and
// float. Tolerances are the textbook dot-product bound: a sum of K products computed in any order
// is within gamma_K = K u / (1 - K u) of the exact value, relative to the sum of the products'
// magnitudes (Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5). That magnitude is
// computed per output element by running the reference on |x| and |w|.
// Eigen's heap allocations can be forbidden at run time (checked in Debug builds); this is the
// only TU of the test binary.
#define EIGEN_RUNTIME_NO_MALLOC

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include <catch2/catch.hpp>

#include <reparam/core/random.hpp>
#include <reparam/structural/forward.hpp>
#include <reparam/structural/types.hpp>

#include "support/count_allocations.hpp"
#include "support/random.hpp"
#include "support/reference_conv.hpp"

namespace {

namespace st = reparam::structural;
using reparam::test::activations;

// Uniform values in (lo, hi) rounded to float, so the float and double runs see the same inputs.
double float_uniform(reparam::philox_engine& engine, double lo, double hi) {
  const double u = reparam::uniform_open01_double(engine(), engine());
  return static_cast<double>(static_cast<float>(lo + u * (hi - lo)));
}

activations random_activations(reparam::index batch, reparam::index channels, reparam::index height,
                               reparam::index width, std::uint64_t seed) {
  activations x(batch, channels, height, width);
  reparam::philox_engine engine(seed, 1);
  for (reparam::index i = 0; i < x.size(); ++i) {
    x.data()[i] = float_uniform(engine, -1.0, 1.0);
  }
  return x;
}

st::conv2d random_conv(reparam::index out_channels, reparam::index group_channels,
                       reparam::index kernel_h, reparam::index kernel_w,
                       const st::conv_geometry& geometry, std::uint64_t seed) {
  st::conv2d c;
  c.weight = reparam::tensor<double, 4>(out_channels, group_channels, kernel_h, kernel_w);
  c.bias.resize(out_channels);
  c.geometry = geometry;
  reparam::philox_engine engine(seed, 2);
  for (reparam::index i = 0; i < c.weight.size(); ++i) {
    c.weight.data()[i] = float_uniform(engine, -1.0, 1.0);
  }
  for (reparam::index o = 0; o < out_channels; ++o) {
    c.bias[o] = float_uniform(engine, -0.5, 0.5);
  }
  return c;
}

st::conv2d abs_conv(const st::conv2d& c) {
  st::conv2d a = c;
  a.weight = c.weight.abs();
  a.bias = c.bias.cwiseAbs();
  return a;
}

activations to_double(const st::activations<float>& x) { return x.cast<double>(); }

// The largest |got - want| / bound over all elements (0/0 counts as 0), and where it occurs.
struct bound_stats {
  double worst_ratio = 0.0;
  double worst_diff = 0.0;
  reparam::index worst_index = -1;
  reparam::index violations = 0;
};

bound_stats compare_with_bound(const activations& got, const activations& want,
                               const activations& bound) {
  REQUIRE(got.dimensions() == want.dimensions());
  bound_stats s;
  for (reparam::index i = 0; i < got.size(); ++i) {
    const double diff = std::fabs(got.data()[i] - want.data()[i]);
    const double ratio = diff == 0.0 ? 0.0 : diff / bound.data()[i];
    if (diff > bound.data()[i]) {
      ++s.violations;
    }
    if (ratio > s.worst_ratio || s.worst_index < 0) {
      s.worst_ratio = ratio;
      s.worst_diff = diff;
      s.worst_index = i;
    }
  }
  return s;
}

constexpr double unit_roundoff_double = std::numeric_limits<double>::epsilon() / 2.0;
constexpr double unit_roundoff_float =
    static_cast<double>(std::numeric_limits<float>::epsilon()) / 2.0;

struct channel_layout {
  reparam::index in_channels;
  reparam::index out_channels;
  reparam::index groups;
  const char* name;
};

}  // namespace

TEST_CASE("conv2d_forward matches the reference conv in every mode, groups, stride and dilation",
          "[structural]") {
  const channel_layout layout = GENERATE(
      channel_layout{5, 7, 1, "dense, odd channels"}, channel_layout{6, 10, 2, "groups 2"},
      channel_layout{5, 5, 5, "depthwise"}, channel_layout{3, 6, 3, "depthwise x2 multiplier"});
  const st::padding_mode mode = GENERATE(st::padding_mode::zeros, st::padding_mode::reflect,
                                         st::padding_mode::replicate, st::padding_mode::circular);
  const reparam::index stride = GENERATE(1, 2);
  const reparam::index dilation = GENERATE(1, 2);
  const int kernel_case = GENERATE(0, 1, 2);
  // 1x1 without padding (the no-im2col path at stride 1), 3x3 "same" plus one extra bottom row,
  // 3x5 non-square with asymmetric padding.
  reparam::index kernel_h = 1;
  reparam::index kernel_w = 1;
  st::conv_geometry g;
  g.stride_h = g.stride_w = stride;
  g.dilation_h = g.dilation_w = dilation;
  g.groups = layout.groups;
  g.mode = mode;
  if (kernel_case == 1) {
    kernel_h = kernel_w = 3;
    g.pad_top = g.pad_left = g.pad_right = dilation;
    g.pad_bottom = dilation + 1;
  } else if (kernel_case == 2) {
    kernel_h = 3;
    kernel_w = 5;
    g.pad_top = 0;
    g.pad_bottom = dilation;
    g.pad_left = 2 * dilation + 1;
    g.pad_right = 2 * dilation - 1;
  }
  const std::uint64_t seed = reparam::test::test_seed(0x5f0);
  CAPTURE(layout.name, st::padding_mode_name(mode), stride, dilation, kernel_h, kernel_w, seed);
  const activations x = random_activations(2, layout.in_channels, 7, 9, seed);
  const st::conv2d conv = random_conv(layout.out_channels, layout.in_channels / layout.groups,
                                      kernel_h, kernel_w, g, seed + 1);
  const activations want = reparam::test::reference_conv2d(x, conv);
  // Sum of |products| per output element, and the number of accumulated terms (taps + bias).
  const activations magnitude = reparam::test::reference_conv2d(x.abs(), abs_conv(conv));
  const auto terms =
      static_cast<double>(layout.in_channels / layout.groups * kernel_h * kernel_w + 1);

  SECTION("double") {
    const st::activations<double> got = st::conv2d_forward(x, conv);
    // Both sides are double sums of `terms` products in different orders: each is within
    // gamma_terms of the exact value, so they differ by at most 2 (terms + 1) u magnitude.
    const activations bound = magnitude * (2.0 * (terms + 1.0) * unit_roundoff_double);
    const bound_stats s = compare_with_bound(got, want, bound);
    CAPTURE(s.worst_ratio, s.worst_diff, s.worst_index);
    REQUIRE(s.violations == 0);
    CHECK(s.worst_diff < 1e-12);
  }
  SECTION("float") {
    const st::conv2d_f conv_f = st::to_float(conv);  // exact: the values are floats
    const st::activations<float> got = st::conv2d_forward(x.cast<float>(), conv_f);
    // The float sum of `terms` products is within gamma_terms (float u) of the exact value,
    // plus the reference's double error (negligible, covered by the + 1).
    const activations bound = magnitude * ((terms + 1.0) * unit_roundoff_float);
    const bound_stats s = compare_with_bound(to_double(got), want, bound);
    CAPTURE(s.worst_ratio, s.worst_diff, s.worst_index);
    REQUIRE(s.violations == 0);
  }
}

TEST_CASE("conv2d_forward handles a conv without bias and a batch of odd spatial size",
          "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5f1);
  CAPTURE(seed);
  st::conv2d conv = random_conv(3, 4, 3, 3, st::conv_geometry::padded(1, 2), seed);
  conv.bias.resize(0);
  const activations x = random_activations(3, 4, 5, 3, seed + 1);
  const activations got = st::conv2d_forward(x, conv);
  REQUIRE(got.dimension(2) == 3);
  REQUIRE(got.dimension(3) == 2);
  const activations want = reparam::test::reference_conv2d(x, conv);
  // 4 * 9 products of magnitude < 1 each: |error| <= 2 * 37 u * 36 < 1e-12.
  CHECK(reparam::test::max_abs_diff(got, want) < 1e-12);
}

TEST_CASE("conv2d_output_size follows the PyTorch formula", "[structural]") {
  st::conv_geometry g = st::conv_geometry::padded(1, 2);
  st::conv_output_size s = st::conv2d_output_size(g, 32, 31, 3, 3);
  CHECK(s.height == 16);
  CHECK(s.width == 16);
  g = st::conv_geometry::padded(0, 1, 1, 2);
  s = st::conv2d_output_size(g, 7, 9, 3, 3);  // dilated span 5
  CHECK(s.height == 3);
  CHECK(s.width == 5);
}

TEST_CASE("conv2d_forward refuses inconsistent layers and geometries", "[structural]") {
  using Catch::Matchers::Contains;
  const activations x = random_activations(1, 4, 5, 5, 7);
  st::conv2d conv = random_conv(6, 4, 3, 3, st::conv_geometry::padded(1), 8);
  REQUIRE_NOTHROW(st::conv2d_forward(x, conv));

  st::conv2d wrong_channels = random_conv(6, 3, 3, 3, st::conv_geometry::padded(1), 8);
  CHECK_THROWS_WITH(st::conv2d_forward(x, wrong_channels),
                    Contains("structural::conv2d_forward") && Contains("4 channels"));
  st::conv2d bad_groups = conv;
  bad_groups.geometry.groups = 4;  // weight [6, 4, ...] with 4 groups: 6 % 4 != 0
  CHECK_THROWS_WITH(st::conv2d_forward(x, bad_groups), Contains("does not divide"));
  st::conv2d bad_bias = conv;
  bad_bias.bias.resize(5);
  CHECK_THROWS_WITH(st::conv2d_forward(x, bad_bias), Contains("bias has 5 values"));
  st::conv2d reflect = conv;
  reflect.geometry = st::conv_geometry::padded(5, 1, 1, 1, st::padding_mode::reflect);
  CHECK_THROWS_WITH(st::conv2d_forward(x, reflect), Contains("reflect padding"));
  st::conv2d circular = conv;
  circular.geometry = st::conv_geometry::padded(6, 1, 1, 1, st::padding_mode::circular);
  CHECK_THROWS_WITH(st::conv2d_forward(x, circular), Contains("circular padding"));
  st::conv2d too_large = conv;
  too_large.geometry = st::conv_geometry::padded(0, 1, 1, 3);  // dilated span 7 > 5
  CHECK_THROWS_WITH(st::conv2d_forward(x, too_large), Contains("smaller than the dilated kernel"));
  st::conv2d zero_stride = conv;
  zero_stride.geometry.stride_w = 0;
  CHECK_THROWS_WITH(st::conv2d_forward(x, zero_stride), Contains("stride"));
  st::conv2d negative_pad = conv;
  negative_pad.geometry.pad_left = -1;
  CHECK_THROWS_WITH(st::conv2d_forward(x, negative_pad), Contains("must be >= 0"));
  CHECK_THROWS_WITH(st::conv2d_output_size(st::conv_geometry::padded(0), 2, 2, 3, 3),
                    Contains("structural::conv2d_output_size"));
}

TEST_CASE("batch_norm_forward matches the reference BatchNorm with statistics far from identity",
          "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5f2);
  CAPTURE(seed);
  const reparam::index channels = 7;
  const activations x = random_activations(2, channels, 5, 3, seed);
  st::batch_norm bn;
  bn.gamma.resize(channels);
  bn.beta.resize(channels);
  bn.running_mean.resize(channels);
  bn.running_var.resize(channels);
  bn.eps = 1e-3;
  reparam::philox_engine engine(seed, 3);
  for (reparam::index c = 0; c < channels; ++c) {
    bn.gamma[c] = float_uniform(engine, -2.0, 2.0);
    bn.beta[c] = float_uniform(engine, -1.0, 1.0);
    bn.running_mean[c] = float_uniform(engine, -1.0, 1.0);
    bn.running_var[c] = float_uniform(engine, 1e-3, 0.1);  // small variances amplify errors
  }
  const activations want = reparam::test::reference_batch_norm(x, bn);
  // |s x| + |s mean| + |beta|: the magnitudes both formulas round against.
  activations magnitude(x.dimensions());
  for (reparam::index n = 0; n < x.dimension(0); ++n) {
    for (reparam::index c = 0; c < channels; ++c) {
      const double s = std::fabs(bn.gamma[c]) / std::sqrt(bn.running_var[c] + bn.eps);
      for (reparam::index i = 0; i < x.dimension(2); ++i) {
        for (reparam::index j = 0; j < x.dimension(3); ++j) {
          magnitude(n, c, i, j) = s * (std::fabs(x(n, c, i, j)) + std::fabs(bn.running_mean[c])) +
                                  std::fabs(bn.beta[c]);
        }
      }
    }
  }
  SECTION("double") {
    // The reference takes 5 rounded steps, s x + t about 5 (s and t themselves, product, sum):
    // 10 u of the magnitude bounds both.
    const activations bound = magnitude * (10.0 * unit_roundoff_double);
    const bound_stats s = compare_with_bound(st::batch_norm_forward(x, bn), want, bound);
    CAPTURE(s.worst_ratio, s.worst_diff);
    REQUIRE(s.violations == 0);
  }
  SECTION("float") {
    // s and t rounded to float, then a float product and sum: 4 float roundings of the magnitude.
    const activations bound = magnitude * (5.0 * unit_roundoff_float);
    const st::activations<float> got =
        st::batch_norm_forward(st::activations<float>(x.cast<float>()), bn);
    const bound_stats s = compare_with_bound(to_double(got), want, bound);
    CAPTURE(s.worst_ratio, s.worst_diff);
    REQUIRE(s.violations == 0);
  }
  SECTION("affine=False") {
    st::batch_norm plain = bn;
    plain.gamma.resize(0);
    plain.beta.resize(0);
    const activations plain_want = reparam::test::reference_batch_norm(x, plain);
    CHECK(reparam::test::max_abs_diff(st::batch_norm_forward(x, plain), plain_want) <
          1e-12 * reparam::test::max_abs(plain_want));
  }
}

TEST_CASE("batch_norm_forward refuses training mode, missing statistics and wrong channels",
          "[structural]") {
  using Catch::Matchers::Contains;
  const activations x = random_activations(1, 3, 2, 2, 11);
  st::batch_norm bn;
  bn.running_mean = Eigen::VectorXd::Zero(3);
  bn.running_var = Eigen::VectorXd::Ones(3);
  REQUIRE_NOTHROW(st::batch_norm_forward(x, bn));
  st::batch_norm training = bn;
  training.is_training = true;
  CHECK_THROWS_WITH(st::batch_norm_forward(x, training),
                    Contains("structural::batch_norm_forward") && Contains("training mode"));
  st::batch_norm untracked = bn;
  untracked.has_running_stats = false;
  CHECK_THROWS_WITH(st::batch_norm_forward(x, untracked), Contains("no running statistics"));
  st::batch_norm wrong = bn;
  wrong.running_mean = Eigen::VectorXd::Zero(4);
  wrong.running_var = Eigen::VectorXd::Ones(4);
  CHECK_THROWS_WITH(st::batch_norm_forward(x, wrong), Contains("4 channels"));
}

TEST_CASE("avg_pool2d_forward matches the reference pooling (count_include_pad)", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5f3);
  CAPTURE(seed);
  const activations x = random_activations(2, 3, 7, 9, seed);
  const reparam::index kernel = GENERATE(1, 2, 3);
  const reparam::index stride = GENERATE(1, 2);
  const reparam::index pad = GENERATE(0, 1);
  if (2 * pad > kernel) {
    return;  // not a valid pooling (checked below)
  }
  CAPTURE(kernel, stride, pad);
  const activations want = reparam::test::reference_avg_pool(x, kernel, stride, pad);
  const activations magnitude = reparam::test::reference_avg_pool(x.abs(), kernel, stride, pad);
  // kernel^2 additions and one division, in either order: (kernel^2 + 1) u of the magnitude,
  // doubled for the two sides.
  const double terms = static_cast<double>(kernel * kernel + 1);
  const bound_stats d = compare_with_bound(st::avg_pool2d_forward(x, kernel, stride, pad), want,
                                           magnitude * (2.0 * terms * unit_roundoff_double));
  CHECK(d.violations == 0);
  const st::activations<float> got_f =
      st::avg_pool2d_forward(st::activations<float>(x.cast<float>()), kernel, stride, pad);
  const bound_stats f =
      compare_with_bound(to_double(got_f), want, magnitude * ((terms + 1.0) * unit_roundoff_float));
  CHECK(f.violations == 0);
}

TEST_CASE("avg_pool2d_forward refuses padding larger than half the kernel", "[structural]") {
  using Catch::Matchers::Contains;
  const activations x = random_activations(1, 1, 4, 4, 3);
  CHECK_THROWS_WITH(st::avg_pool2d_forward(x, 2, 2, 2),
                    Contains("structural::avg_pool2d_forward") && Contains("pad 2"));
  CHECK_THROWS_WITH(st::avg_pool2d_forward(x, 0, 1, 0), Contains("kernel 0"));
  CHECK_THROWS_WITH(st::avg_pool2d_forward(x, 7, 1, 1), Contains("smaller than the kernel"));
}

TEST_CASE("global_avg_pool, relu and linear_forward match direct loops", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5f4);
  CAPTURE(seed);
  const activations x = random_activations(3, 5, 7, 9, seed);
  const reparam::matrix<double> pooled = st::global_avg_pool(x);
  REQUIRE(pooled.rows() == 3);
  REQUIRE(pooled.cols() == 5);
  double worst = 0.0;
  for (reparam::index n = 0; n < 3; ++n) {
    for (reparam::index c = 0; c < 5; ++c) {
      double sum = 0.0;
      for (reparam::index i = 0; i < 7; ++i) {
        for (reparam::index j = 0; j < 9; ++j) {
          sum += x(n, c, i, j);
        }
      }
      worst = std::fmax(worst, std::fabs(pooled(n, c) - sum / 63.0));
    }
  }
  // 63 values below 1 in magnitude, averaged in two orders: 2 * 64 u.
  CHECK(worst <= 128.0 * unit_roundoff_double);

  const activations r = st::relu(x);
  for (reparam::index i = 0; i < x.size(); ++i) {
    REQUIRE(r.data()[i] == (x.data()[i] > 0.0 ? x.data()[i] : 0.0));
  }

  st::linear layer;
  layer.weight = reparam::test::random_matrix<double>(4, 5, seed + 1);
  layer.bias = reparam::test::random_matrix<double>(4, 1, seed + 2).col(0);
  const reparam::matrix<double> want = reparam::test::reference_linear(pooled, layer);
  const reparam::matrix<double> got = st::linear_forward(pooled, layer);
  // 6 terms below 1 each: 2 * 7 u * 6.
  CHECK((got - want).cwiseAbs().maxCoeff() <= 84.0 * unit_roundoff_double);
  const reparam::matrix<float> got_f =
      st::linear_forward(reparam::matrix<float>(pooled.cast<float>()), st::to_float(layer));
  // The inputs and weights themselves rounded to float (3 roundings per product) + 6 sums.
  CHECK((got_f.cast<double>() - want).cwiseAbs().maxCoeff() <= 6.0 * 10.0 * unit_roundoff_float);

  using Catch::Matchers::Contains;
  CHECK_THROWS_WITH(st::linear_forward(reparam::matrix<double>(2, 3), layer),
                    Contains("structural::linear_forward") && Contains("3 features"));
}

TEST_CASE("conv2d_forward_into equals conv2d_forward and reuses its buffers", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(0x5f5);
  CAPTURE(seed);
  const reparam::index kernel = GENERATE(1, 3);
  const reparam::index stride = GENERATE(1, 2);
  const st::padding_mode mode = GENERATE(st::padding_mode::zeros, st::padding_mode::circular);
  CAPTURE(kernel, stride, st::padding_mode_name(mode));
  const st::conv2d conv = random_conv(
      4, 3, kernel, kernel, st::conv_geometry::padded(kernel / 2, stride, 1, 1, mode), seed);
  const st::conv2d_f conv_f = st::to_float(conv);
  const st::activations<float> x = random_activations(2, 3, 6, 5, seed + 1).cast<float>();
  const st::activations<float> want = st::conv2d_forward(x, conv_f);
  st::activations<float> y;
  reparam::matrix<float> columns;
  st::conv2d_forward_into(x, conv_f, y, columns);  // sizes the buffers
  REQUIRE(y.dimensions() == want.dimensions());
  // The second call on the same shapes: no operator new, and (Debug) no Eigen heap allocation;
  // the GEMMs are small enough for Eigen's stack blocks.
  const float* const buffer = y.data();
  const long before = reparam::test::allocations();
  Eigen::internal::set_is_malloc_allowed(false);
  st::conv2d_forward_into(x, conv_f, y, columns);
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(reparam::test::allocations() == before);
  CHECK(y.data() == buffer);
  for (reparam::index i = 0; i < want.size(); ++i) {
    REQUIRE(y.data()[i] == want.data()[i]);  // the same code path: bit for bit
  }
  using Catch::Matchers::Contains;
  const st::conv2d_f square =
      st::to_float(random_conv(4, 4, 1, 1, st::conv_geometry::padded(0), 9));
  CHECK_THROWS_WITH(st::conv2d_forward_into(y, square, y, columns),
                    Contains("structural::conv2d_forward") && Contains("must not be the input"));
}

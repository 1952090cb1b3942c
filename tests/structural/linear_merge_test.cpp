// SPDX-License-Identifier: Apache-2.0
// The linear transforms of structural/linear_merge.hpp (T1, T2, T10-T13 FFN, T15, T16) against
// the unmerged layers run by the double oracles of tests/support/reference_conv.hpp
// (reference_linear, reference_conv2d) and BatchNorm / activation formulas (written here and in
// tests/support/structural_layers.hpp, with the random layers and tolerances), on random
// data with odd sizes and BatchNorm statistics far from identity (running_var ~ U(1e-3, 0.1)).
// Every refusal is checked for its message; exactness flags are checked. The multi-head
// attention merge is tested in transformer_recipes_test.cpp next to its reference attention.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <ostream>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/error.hpp>
#include <reparam/structural/linear_merge.hpp>
#include <reparam/structural/types.hpp>

#include "support/random.hpp"
#include "support/reference_conv.hpp"
#include "support/structural_layers.hpp"

namespace {

using namespace reparam::structural;  // NOLINT(google-build-using-namespace): test file
using Catch::Matchers::Contains;
using reparam::matrix;
using namespace reparam::test;  // NOLINT(google-build-using-namespace): test vocabulary

/// x -> scale * x + shift per feature (columns).
matrix<double> affine_tokens(const matrix<double>& x, const Eigen::VectorXd& scale,
                             const Eigen::VectorXd& shift) {
  matrix<double> y = x * scale.asDiagonal();
  y.rowwise() += shift.transpose();
  return y;
}

/// x -> scale * x + shift per channel of an NCHW tensor.
activations affine_images(const activations& x, const Eigen::VectorXd& scale,
                          const Eigen::VectorXd& shift) {
  activations y(x.dimensions());
  for (reparam::index b = 0; b < x.dimension(0); ++b) {
    for (reparam::index c = 0; c < x.dimension(1); ++c) {
      for (reparam::index i = 0; i < x.dimension(2); ++i) {
        for (reparam::index j = 0; j < x.dimension(3); ++j) {
          y(b, c, i, j) = scale[c] * x(b, c, i, j) + shift[c];
        }
      }
    }
  }
  return y;
}

/// M for conv(scale x + shift): the magnitude twin of the conv on |scale| |x| + |shift|.
double affine_conv_bound(const activations& x, const Eigen::VectorXd& scale,
                         const Eigen::VectorXd& shift, const conv2d& c) {
  return max_abs(reference_conv2d(affine_images(magnitude(x), scale.cwiseAbs(), shift.cwiseAbs()),
                                  magnitude(c)));
}

double relu(double x) { return x > 0.0 ? x : 0.0; }

/// The FFN on tokens with an elementwise activation.
template <class Activation>
matrix<double> run_ffn(const matrix<double>& x, const ffn& block, Activation act) {
  matrix<double> h = reference_linear(x, block.up);
  h = h.unaryExpr(act);
  return reference_linear(h, block.down);
}

/// Sum over |terms| of an FFN on |x| (|act(h)| <= |h| for GELU and ReLU).
double ffn_magnitude(const matrix<double>& x_abs, const ffn& block) {
  return reference_linear(reference_linear(x_abs, magnitude(block.up)), magnitude(block.down))
      .maxCoeff();
}

struct conv_case {
  reparam::index out;
  reparam::index in;
  reparam::index kh;
  reparam::index kw;
  conv_geometry geometry;
};

std::ostream& operator<<(std::ostream& out, const conv_case& c) {
  const conv_geometry& g = c.geometry;
  return out << reparam::detail::concat(
             "O ", c.out, " C ", c.in, " k ", c.kh, "x", c.kw, " stride ", g.stride_h, " groups ",
             g.groups, " dilation ", g.dilation_h, " pad ", g.pad_top, "/", g.pad_bottom, "/",
             g.pad_left, "/", g.pad_right, " ", padding_mode_name(g.mode));
}

// A geometry with explicit padding per side (the symmetric reparam::test::geometry_of takes
// pad_h, pad_w instead).
conv_geometry geometry_of(reparam::index top, reparam::index bottom, reparam::index left,
                          reparam::index right, reparam::index stride, reparam::index groups,
                          reparam::index dilation, padding_mode mode) {
  conv_geometry g;
  g.pad_top = top;
  g.pad_bottom = bottom;
  g.pad_left = left;
  g.pad_right = right;
  g.stride_h = g.stride_w = stride;
  g.groups = groups;
  g.dilation_h = g.dilation_w = dilation;
  g.mode = mode;
  return g;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// T1

TEST_CASE("fold_batch_norm_after matches a linear followed by BatchNorm on tokens",
          "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(101);
  CAPTURE(seed);
  random_source rng(seed);
  const reparam::index shapes[][2] = {{1, 1}, {7, 5}, {13, 17}, {33, 31}};
  for (const auto& shape : shapes) {
    const reparam::index out = shape[0];
    const reparam::index in = shape[1];
    CAPTURE(out, in);
    linear layer = rng.dense(out, in);
    batch_norm bn = rng.norm(out);
    if (out == 7) {  // affine=False BatchNorm and a layer without bias
      bn.gamma.resize(0);
      bn.beta.resize(0);
      layer.bias.resize(0);
    }
    const matrix<double> x = rng.uniform(9, in, -2.0, 2.0);  // 9 tokens (batch * sequence)
    const matrix<double> expected = batch_norm_tokens(reference_linear(x, layer), bn);
    const merge_result<linear> merged = fold_batch_norm_after(layer, bn);
    CHECK(merged.is_exact);
    REQUIRE(merged.layer.bias.size() == out);
    const matrix<double> actual = reference_linear(x, merged.layer);
    const double bound =
        batch_norm_magnitude(reference_linear(x.cwiseAbs(), magnitude(layer)), bn).maxCoeff();
    const double tolerance = rounding_tolerance(static_cast<double>(in), bound);
    CAPTURE(bound, tolerance);
    CHECK(max_abs_diff(actual, expected) <= tolerance);

    // Rounded once to float: each weight and bias is off by at most 2^-24 relative, so the
    // output moves by at most 2^-24 times the merged layer's own magnitude (plus the double
    // tolerance above).
    const linear_f rounded = to_float(merged.layer);
    const linear widened{rounded.weight.cast<double>(), rounded.bias.cast<double>()};
    const double merged_magnitude =
        reference_linear(x.cwiseAbs(), magnitude(merged.layer)).maxCoeff();
    CHECK(max_abs_diff(reference_linear(x, widened), expected) <=
          float_roundoff * merged_magnitude * 1.01 + tolerance);
  }
}

TEST_CASE("fold_batch_norm_after refuses training-mode and mismatched BatchNorms", "[structural]") {
  random_source rng(reparam::test::test_seed(102));
  const linear layer = rng.dense(5, 3);
  batch_norm bn = rng.norm(5);
  bn.is_training = true;
  CHECK_THROWS_WITH(fold_batch_norm_after(layer, bn),
                    Contains("structural::fold_batch_norm_after") && Contains("training mode"));
  bn.is_training = false;
  bn.has_running_stats = false;
  CHECK_THROWS_WITH(fold_batch_norm_after(layer, bn), Contains("no running statistics"));
  CHECK_THROWS_WITH(fold_batch_norm_after(layer, rng.norm(4)),
                    Contains("4 channels but the layer has 5 outputs"));
  linear bad = layer;
  bad.bias = Eigen::VectorXd::Zero(2);
  CHECK_THROWS_WITH(fold_batch_norm_after(bad, rng.norm(5)),
                    Contains("layer has 2 bias values but 5 outputs"));
}

// ---------------------------------------------------------------------------------------------
// T2, linear

TEST_CASE("fold_affine_before and fold_batch_norm_before are exact for a linear", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(103);
  CAPTURE(seed);
  random_source rng(seed);
  const reparam::index shapes[][2] = {{1, 1}, {5, 7}, {17, 13}, {3, 64}};
  for (const auto& shape : shapes) {
    const reparam::index out = shape[0];
    const reparam::index in = shape[1];
    CAPTURE(out, in);
    const linear layer = rng.dense(out, in);
    const matrix<double> x = rng.uniform(11, in, -2.0, 2.0);

    // A LayerNorm-style affine.
    const Eigen::VectorXd scale = rng.vector(in, -2.0, 2.0);
    const Eigen::VectorXd shift = rng.vector(in, -1.0, 1.0);
    const merge_result<linear> by_affine = fold_affine_before(scale, shift, layer);
    CHECK(by_affine.is_exact);
    const matrix<double> expected = reference_linear(affine_tokens(x, scale, shift), layer);
    const double bound =
        reference_linear(affine_tokens(x.cwiseAbs(), scale.cwiseAbs(), shift.cwiseAbs()),
                         magnitude(layer))
            .maxCoeff();
    CHECK(max_abs_diff(reference_linear(x, by_affine.layer), expected) <=
          rounding_tolerance(static_cast<double>(in), bound));

    // A BatchNorm1d far from identity.
    const batch_norm bn = rng.norm(in);
    const merge_result<linear> by_bn = fold_batch_norm_before(bn, layer);
    CHECK(by_bn.is_exact);
    const matrix<double> expected_bn = reference_linear(batch_norm_tokens(x, bn), layer);
    const double magnitude_bn =
        reference_linear(batch_norm_magnitude(x.cwiseAbs(), bn), magnitude(layer)).maxCoeff();
    CAPTURE(magnitude_bn);
    CHECK(max_abs_diff(reference_linear(x, by_bn.layer), expected_bn) <=
          rounding_tolerance(static_cast<double>(in), magnitude_bn));
  }
}

TEST_CASE("fold_affine_before refuses mismatched or non-finite affines", "[structural]") {
  random_source rng(reparam::test::test_seed(104));
  const linear layer = rng.dense(4, 6);
  CHECK_THROWS_WITH(fold_affine_before(Eigen::VectorXd::Ones(5), Eigen::VectorXd::Zero(6), layer),
                    Contains("structural::fold_affine_before") && Contains("scale has 5 values") &&
                        Contains("6"));
  Eigen::VectorXd shift = Eigen::VectorXd::Zero(6);
  shift[2] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(fold_affine_before(Eigen::VectorXd::Ones(6), shift, layer),
                    Contains("shift has non-finite value"));
  batch_norm bn = rng.norm(6);
  bn.is_training = true;
  CHECK_THROWS_WITH(fold_batch_norm_before(bn, layer),
                    Contains("structural::fold_batch_norm_before") && Contains("training mode"));
  CHECK_THROWS_WITH(fold_batch_norm_before(rng.norm(5), layer),
                    Contains("structural::fold_batch_norm_before") &&
                        Contains("the BatchNorm has 5 channels but the layer takes 6 inputs"));
}

TEST_CASE("folding identity affines, scales and constants changes nothing", "[structural]") {
  random_source rng(reparam::test::test_seed(105));
  const linear layer = rng.dense(7, 5);
  const auto same = [](const linear& a, const linear& b) {
    return a.weight == b.weight && a.bias == b.bias;
  };
  CHECK(same(fold_affine_before(Eigen::VectorXd::Ones(5), Eigen::VectorXd::Zero(5), layer).layer,
             layer));
  batch_norm identity_bn;  // mean 0, var 1, eps 0, gamma 1, beta 0: s = 1, t = 0 exactly
  identity_bn.running_mean = Eigen::VectorXd::Zero(7);
  identity_bn.running_var = Eigen::VectorXd::Ones(7);
  identity_bn.eps = 0.0;
  CHECK(same(fold_batch_norm_after(layer, identity_bn).layer, layer));
  CHECK(same(scale_outputs(layer, Eigen::VectorXd::Ones(7)).layer, layer));
  CHECK(same(fold_input_constant(Eigen::VectorXd::Zero(5), layer).layer, layer));
  CHECK(same(collapse_chain({layer}, false).layer, layer));
  CHECK(same(fold_low_rank(layer, matrix<double>(7, 0), matrix<double>(0, 5), 3.0).layer, layer));
  CHECK(same(merge_parallel_ffn({ffn{layer, rng.dense(3, 7)}}).layer.up, layer));

  const conv2d conv = rng.conv(4, 6, 3, 3, conv_geometry::padded(1, 1, 2));
  const conv2d folded =
      fold_affine_before(Eigen::VectorXd::Ones(6), Eigen::VectorXd::Zero(6), conv).layer;
  const Eigen::Map<const Eigen::VectorXd> before(conv.weight.data(), conv.weight.size());
  const Eigen::Map<const Eigen::VectorXd> after(folded.weight.data(), folded.weight.size());
  CHECK(before == after);
  CHECK(folded.bias == conv.bias);
  CHECK(folded.geometry == conv.geometry);
}

TEST_CASE("BatchNorm folds before and after a linear commute", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(106);
  CAPTURE(seed);
  random_source rng(seed);
  const linear layer = rng.dense(9, 11);
  const batch_norm pre = rng.norm(11);
  const batch_norm post = rng.norm(9);
  const linear a = fold_batch_norm_after(fold_batch_norm_before(pre, layer).layer, post).layer;
  const linear b = fold_batch_norm_before(pre, fold_batch_norm_after(layer, post).layer).layer;
  // Each weight is W s_pre s_post, rounded in a different order (a few ulps); the biases are
  // 11-term sums of such products, bounded by their absolute-value sums.
  const double weight_scale = a.weight.cwiseAbs().maxCoeff();
  CHECK(max_abs_diff(a.weight, b.weight) <= 8.0 * machine_epsilon * weight_scale);
  const channel_affine pre_affine = bn_affine("test", pre);
  const channel_affine post_affine = bn_affine("test", post);
  const Eigen::VectorXd inner =
      layer.weight.cwiseAbs() * pre_affine.shift.cwiseAbs() + layer.bias.cwiseAbs();
  const double bias_magnitude =
      (post_affine.scale.cwiseAbs().cwiseProduct(inner) + post_affine.shift.cwiseAbs()).maxCoeff();
  CHECK((a.bias - b.bias).cwiseAbs().maxCoeff() <= rounding_tolerance(11.0, bias_magnitude));
}

// ---------------------------------------------------------------------------------------------
// T2, conv

TEST_CASE("fold_affine_before into a conv is exact without zero padding", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(107);
  CAPTURE(seed);
  random_source rng(seed);
  const std::vector<conv_case> cases = {
      {7, 5, 1, 1, geometry_of(0, 0, 0, 0, 1, 1, 1, padding_mode::zeros)},
      {7, 5, 1, 1, geometry_of(0, 0, 0, 0, 2, 1, 1, padding_mode::zeros)},
      {15, 9, 3, 3, geometry_of(0, 0, 0, 0, 1, 3, 1, padding_mode::zeros)},
      {10, 6, 3, 5, geometry_of(0, 0, 0, 0, 2, 2, 1, padding_mode::zeros)},
      {7, 7, 3, 3, geometry_of(0, 0, 0, 0, 1, 7, 2, padding_mode::zeros)},
      {5, 3, 3, 3, geometry_of(1, 1, 1, 1, 1, 1, 1, padding_mode::reflect)},
      {10, 6, 3, 3, geometry_of(1, 1, 1, 1, 2, 2, 1, padding_mode::replicate)},
      {7, 7, 3, 3, geometry_of(1, 1, 1, 1, 1, 7, 1, padding_mode::circular)},
      {14, 7, 5, 3, geometry_of(2, 1, 1, 0, 2, 7, 1, padding_mode::reflect)},
      {9, 9, 3, 3, geometry_of(2, 2, 2, 2, 1, 3, 2, padding_mode::circular)},
  };
  for (const conv_case& c : cases) {
    CAPTURE(c);
    const conv2d conv = rng.conv(c.out, c.in, c.kh, c.kw, c.geometry);
    const activations x = rng.images(2, c.in, 7, 9);
    const batch_norm bn = rng.norm(c.in);
    const channel_affine affine = bn_affine("test", bn);
    const double terms = static_cast<double>(taps(conv));

    const activations expected =
        reference_conv2d(affine_images(x, affine.scale, affine.shift), conv);
    const double bound = affine_conv_bound(x, affine.scale, affine.shift, conv);
    const merge_result<conv2d> by_affine = fold_affine_before(affine.scale, affine.shift, conv);
    CHECK(by_affine.is_exact);
    CHECK(by_affine.layer.geometry == conv.geometry);
    CHECK(max_abs_diff(reference_conv2d(x, by_affine.layer), expected) <=
          rounding_tolerance(terms, bound));

    // The BatchNorm overload, against BatchNorm2d's own formula.
    const activations expected_bn = reference_conv2d(reference_batch_norm(x, bn), conv);
    const merge_result<conv2d> by_bn = fold_batch_norm_before(bn, conv);
    CHECK(by_bn.is_exact);
    CHECK(max_abs_diff(reference_conv2d(x, by_bn.layer), expected_bn) <=
          rounding_tolerance(terms, bound));
  }
}

TEST_CASE("a pure scale folds exactly into a zero-padded conv", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(108);
  CAPTURE(seed);
  random_source rng(seed);
  for (reparam::index groups : {reparam::index{1}, reparam::index{2}, reparam::index{6}}) {
    CAPTURE(groups);
    const conv2d conv = rng.conv(6, 6, 3, 3, conv_geometry::padded(1, groups == 2 ? 2 : 1, groups));
    const activations x = rng.images(1, 6, 7, 9);
    const Eigen::VectorXd scale = rng.vector(6, -3.0, 3.0);
    const Eigen::VectorXd zero = Eigen::VectorXd::Zero(6);
    const merge_result<conv2d> merged = fold_affine_before(scale, zero, conv);
    CHECK(merged.is_exact);
    const activations expected = reference_conv2d(affine_images(x, scale, zero), conv);
    const double bound = affine_conv_bound(x, scale, zero, conv);
    const double terms = static_cast<double>(6 / groups * 9);
    CHECK(max_abs_diff(reference_conv2d(x, merged.layer), expected) <=
          rounding_tolerance(terms, bound));
  }
}

TEST_CASE("fold_affine_before refuses a zero-padded conv after a shift, whose borders differ",
          "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(109);
  CAPTURE(seed);
  random_source rng(seed);
  const conv2d conv = rng.conv(5, 3, 3, 3, conv_geometry::padded(1));
  const batch_norm bn = rng.norm(3);
  const channel_affine affine = bn_affine("test", bn);
  CHECK_THROWS_WITH(fold_affine_before(affine.scale, affine.shift, conv),
                    Contains("structural::fold_affine_before") && Contains("zero-pads") &&
                        Contains("border") && Contains("not exact") &&
                        Contains("pad_value_for_affine") &&
                        Contains("fold_affine_before_with_pad_value"));
  CHECK_THROWS_WITH(fold_batch_norm_before(bn, conv),
                    Contains("structural::fold_batch_norm_before") && Contains("zero-pads") &&
                        Contains("border"));
  CHECK_THROWS_WITH(fold_batch_norm_before(rng.norm(4), conv),
                    Contains("the BatchNorm has 4 channels but the conv takes 3 input channels"));
  // A 1x1 conv that zero-pads has the same problem (its padded outputs would gain W t).
  const conv2d pointwise = rng.conv(5, 3, 1, 1, conv_geometry::padded(1));
  CHECK_THROWS_WITH(fold_affine_before(affine.scale, affine.shift, pointwise),
                    Contains("zero-pads"));

  // Why: the folded weights with the original zero padding match the block in the interior
  // (outputs whose taps are all inside the image) and miss the shift terms at the border.
  conv2d wrong = fold_affine_before_with_pad_value(affine.scale, affine.shift, conv).layer;
  wrong.geometry = conv.geometry;
  const activations x = rng.images(1, 3, 7, 9);
  const activations expected = reference_conv2d(affine_images(x, affine.scale, affine.shift), conv);
  const activations actual = reference_conv2d(x, wrong);
  double interior = 0.0;
  double border = 0.0;
  for (reparam::index o = 0; o < 5; ++o) {
    for (reparam::index i = 0; i < 7; ++i) {
      for (reparam::index j = 0; j < 9; ++j) {
        const double diff = std::fabs(actual(0, o, i, j) - expected(0, o, i, j));
        const bool is_border = i == 0 || i == 6 || j == 0 || j == 8;
        (is_border ? border : interior) = std::fmax(is_border ? border : interior, diff);
      }
    }
  }
  const double bound = affine_conv_bound(x, affine.scale, affine.shift, conv);
  CHECK(interior <= rounding_tolerance(27.0, bound));
  CHECK(border > 1e-3);
}

TEST_CASE("the pad-value rewrite makes the affine fold exact for zero-padded convs",
          "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(110);
  CAPTURE(seed);
  random_source rng(seed);
  const std::vector<conv_case> cases = {
      {5, 3, 3, 3, geometry_of(1, 1, 1, 1, 1, 1, 1, padding_mode::zeros)},
      {10, 6, 3, 3, geometry_of(1, 1, 1, 1, 2, 2, 1, padding_mode::zeros)},
      {7, 7, 5, 5, geometry_of(2, 2, 2, 2, 1, 7, 1, padding_mode::zeros)},
      {15, 9, 3, 5, geometry_of(2, 1, 0, 2, 2, 3, 1, padding_mode::zeros)},
      {7, 7, 3, 3, geometry_of(2, 2, 2, 2, 1, 7, 2, padding_mode::zeros)},
      {5, 3, 1, 1, geometry_of(1, 0, 0, 1, 1, 1, 1, padding_mode::zeros)},
  };
  for (const conv_case& c : cases) {
    CAPTURE(c);
    const conv2d conv = rng.conv(c.out, c.in, c.kh, c.kw, c.geometry);
    const activations x = rng.images(2, c.in, 7, 9);
    const channel_affine affine = bn_affine("test", rng.norm(c.in));
    const merge_result<conv2d> merged =
        fold_affine_before_with_pad_value(affine.scale, affine.shift, conv);
    CHECK(merged.is_exact);
    CHECK_THAT(merged.note, Contains("pad_value_for_affine"));
    CHECK(merged.layer.geometry.pad_top == 0);
    CHECK(merged.layer.geometry.pad_left == 0);
    const Eigen::VectorXd value = pad_value_for_affine(affine.scale, affine.shift);
    const activations padded = pad_constant(x, c.geometry, value);
    const activations expected =
        reference_conv2d(affine_images(x, affine.scale, affine.shift), conv);
    const activations actual = reference_conv2d(padded, merged.layer);
    // The pad value -t/s is rounded (relative u), so s * v + t is not exactly 0 but about
    // u |t| per padded tap; the merged magnitude sum |W s| |v| = sum |W| |t| covers it.
    const double bound =
        std::fmax(affine_conv_bound(x, affine.scale, affine.shift, conv),
                  max_abs(reference_conv2d(magnitude(padded), magnitude(merged.layer))));
    const double terms = static_cast<double>(taps(conv));
    CHECK(max_abs_diff(actual, expected) <= rounding_tolerance(terms, bound));
  }
}

TEST_CASE("pad_value_for_affine is -shift/scale and refuses a zero scale with a shift",
          "[structural]") {
  Eigen::VectorXd scale(3);
  scale << 2.0, -0.5, 0.0;
  Eigen::VectorXd shift(3);
  shift << 1.0, 3.0, 0.0;
  const Eigen::VectorXd value = pad_value_for_affine(scale, shift);
  CHECK(value[0] == -0.5);
  CHECK(value[1] == 6.0);
  CHECK(value[2] == 0.0);  // scale 0 and shift 0: the channel is 0 for every pad value
  shift[2] = 0.25;
  CHECK_THROWS_WITH(
      pad_value_for_affine(scale, shift),
      Contains("structural::pad_value_for_affine") && Contains("channel 2") && Contains("scale 0"));
  CHECK_THROWS_WITH(pad_value_for_affine(scale, Eigen::VectorXd::Zero(2)),
                    Contains("shift has 2 values"));
  random_source rng(reparam::test::test_seed(111));
  const conv2d conv = rng.conv(4, 3, 3, 3, conv_geometry::padded(1));
  CHECK_THROWS_WITH(fold_affine_before_with_pad_value(scale, shift, conv),
                    Contains("structural::pad_value_for_affine") && Contains("scale 0"));
  conv2d reflected = conv;
  reflected.geometry.mode = padding_mode::reflect;
  CHECK_THROWS_WITH(fold_affine_before_with_pad_value(Eigen::VectorXd::Ones(3),
                                                      Eigen::VectorXd::Ones(3), reflected),
                    Contains("reflect") && Contains("fold_affine_before is exact"));
}

// ---------------------------------------------------------------------------------------------
// T10

TEST_CASE("scale_outputs folds a LayerScale into a linear and a conv", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(112);
  CAPTURE(seed);
  random_source rng(seed);
  const linear layer = rng.dense(9, 13);
  const Eigen::VectorXd gamma = rng.vector(9, -1e-2, 1e-2);  // LayerScale init ~1e-2..1e-6
  const matrix<double> x = rng.uniform(5, 13, -2.0, 2.0);
  const merge_result<linear> merged = scale_outputs(layer, gamma);
  CHECK(merged.is_exact);
  const matrix<double> expected = reference_linear(x, layer) * gamma.asDiagonal();
  const double bound =
      (reference_linear(x.cwiseAbs(), magnitude(layer)) * gamma.cwiseAbs().asDiagonal()).maxCoeff();
  CHECK(max_abs_diff(reference_linear(x, merged.layer), expected) <=
        rounding_tolerance(13.0, bound));
  CHECK_THROWS_WITH(scale_outputs(layer, Eigen::VectorXd::Ones(13)),
                    Contains("structural::scale_outputs") && Contains("gamma has 13 values"));

  for (reparam::index groups : {reparam::index{1}, reparam::index{3}}) {
    CAPTURE(groups);
    const conv2d conv = rng.conv(9, 3 * groups, 3, 3, conv_geometry::padded(1, 2, groups));
    const Eigen::VectorXd g = rng.vector(9, -2.0, 2.0);
    const activations xi = rng.images(1, 3 * groups, 7, 9);
    const activations plain = reference_conv2d(xi, conv);
    const merge_result<conv2d> scaled = scale_outputs(conv, g);
    CHECK(scaled.is_exact);
    const activations actual = reference_conv2d(xi, scaled.layer);
    double diff = 0.0;
    for (reparam::index o = 0; o < 9; ++o) {
      for (reparam::index i = 0; i < plain.dimension(2); ++i) {
        for (reparam::index j = 0; j < plain.dimension(3); ++j) {
          diff = std::fmax(diff, std::fabs(actual(0, o, i, j) - g[o] * plain(0, o, i, j)));
        }
      }
    }
    const double conv_magnitude =
        g.cwiseAbs().maxCoeff() * max_abs(reference_conv2d(magnitude(xi), magnitude(conv)));
    CHECK(diff <= rounding_tolerance(27.0, conv_magnitude));
  }
}

TEST_CASE("fold_residual adds the identity to a conv (RepCPE) and a linear", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(113);
  CAPTURE(seed);
  random_source rng(seed);
  const std::vector<conv_case> cases = {
      {7, 7, 3, 3, geometry_of(1, 1, 1, 1, 1, 7, 1, padding_mode::zeros)},     // RepCPE dw 3x3
      {5, 5, 3, 3, geometry_of(1, 1, 1, 1, 1, 1, 1, padding_mode::zeros)},     // dense
      {6, 6, 5, 5, geometry_of(2, 2, 2, 2, 1, 2, 1, padding_mode::reflect)},   // groups 2
      {7, 7, 3, 3, geometry_of(2, 2, 2, 2, 1, 7, 2, padding_mode::circular)},  // dilation 2
      {5, 5, 1, 3, geometry_of(0, 0, 1, 1, 1, 5, 1, padding_mode::replicate)},
      {5, 5, 3, 3, geometry_of(2, 0, 0, 2, 1, 1, 1, padding_mode::zeros)},  // asymmetric
  };
  for (const conv_case& c : cases) {
    CAPTURE(c);
    const conv2d conv = rng.conv(c.out, c.in, c.kh, c.kw, c.geometry);
    const activations x = rng.images(2, c.in, 7, 9);
    const merge_result<conv2d> merged = fold_residual(conv);
    CHECK(merged.is_exact);
    const activations expected = x + reference_conv2d(x, conv);
    const double bound =
        max_abs(activations(magnitude(x) + reference_conv2d(magnitude(x), magnitude(conv))));
    const double terms = static_cast<double>(taps(conv));
    CHECK(max_abs_diff(reference_conv2d(x, merged.layer), expected) <=
          rounding_tolerance(terms, bound));
  }
  const conv2d wide = rng.conv(6, 3, 3, 3, conv_geometry::padded(1));
  CHECK_THROWS_WITH(fold_residual(wide),
                    Contains("structural::fold_residual") && Contains("3 input channels to 6"));
  CHECK_THROWS_WITH(fold_residual(rng.conv(4, 4, 3, 3, conv_geometry::padded(1, 2))),
                    Contains("stride 2x2"));
  CHECK_THROWS_WITH(fold_residual(rng.conv(4, 4, 3, 3, conv_geometry::padded(0))),
                    Contains("does not keep the input size"));
  CHECK_THROWS_WITH(
      fold_residual(rng.conv(4, 4, 3, 3, geometry_of(1, 3, 2, 2, 1, 1, 2, padding_mode::zeros))),
      Contains("not multiples of the dilation"));

  const linear layer = rng.dense(6, 6);
  const matrix<double> x = rng.uniform(4, 6, -2.0, 2.0);
  const merge_result<linear> merged = fold_residual(layer);
  const double bound = (x.cwiseAbs() + reference_linear(x.cwiseAbs(), magnitude(layer))).maxCoeff();
  CHECK(max_abs_diff(reference_linear(x, merged.layer), x + reference_linear(x, layer)) <=
        rounding_tolerance(6.0, bound));
  CHECK_THROWS_WITH(fold_residual(rng.dense(6, 5)), Contains("5 inputs to 6 outputs"));
}

TEST_CASE("fold_input_constant moves an additive input constant into the bias", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(114);
  CAPTURE(seed);
  random_source rng(seed);
  const linear layer = rng.dense(7, 11);
  const Eigen::VectorXd beta = rng.vector(11, -1.0, 1.0);  // GRN bias
  const matrix<double> x = rng.uniform(5, 11, -2.0, 2.0);
  const merge_result<linear> merged = fold_input_constant(beta, layer);
  CHECK(merged.is_exact);
  CHECK(merged.layer.weight == layer.weight);
  const matrix<double> expected =
      reference_linear(affine_tokens(x, Eigen::VectorXd::Ones(11), beta), layer);
  const double bound =
      reference_linear(affine_tokens(x.cwiseAbs(), Eigen::VectorXd::Ones(11), beta.cwiseAbs()),
                       magnitude(layer))
          .maxCoeff();
  CHECK(max_abs_diff(reference_linear(x, merged.layer), expected) <=
        rounding_tolerance(11.0, bound));
  CHECK_THROWS_WITH(fold_input_constant(Eigen::VectorXd::Zero(7), layer),
                    Contains("structural::fold_input_constant") && Contains("constant has 7"));
}

// ---------------------------------------------------------------------------------------------
// T11

TEST_CASE("conv_to_fc reproduces the conv on one partition", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(115);
  CAPTURE(seed);
  random_source rng(seed);
  struct fc_case {
    conv_case conv;
    reparam::index height;
    reparam::index width;
  };
  const std::vector<fc_case> cases = {
      {{4, 4, 3, 3, geometry_of(1, 1, 1, 1, 1, 2, 1, padding_mode::zeros)}, 5, 7},  // RepMLP
      {{5, 5, 5, 5, geometry_of(2, 2, 2, 2, 1, 5, 1, padding_mode::zeros)}, 3, 7},  // k > h
      {{7, 3, 3, 3, geometry_of(1, 1, 1, 1, 2, 1, 1, padding_mode::zeros)}, 5, 6},  // stride 2
      {{3, 3, 3, 3, geometry_of(1, 1, 1, 1, 1, 3, 1, padding_mode::reflect)}, 4, 5},
      {{3, 3, 3, 3, geometry_of(1, 1, 1, 1, 1, 1, 1, padding_mode::replicate)}, 1, 5},
      {{6, 3, 3, 3, geometry_of(2, 2, 2, 2, 1, 3, 2, padding_mode::circular)}, 5, 3},
      {{2, 3, 1, 1, geometry_of(0, 0, 0, 0, 1, 1, 1, padding_mode::zeros)}, 3, 3},
  };
  for (const fc_case& c : cases) {
    CAPTURE(c.conv, c.height, c.width);
    const conv2d conv = rng.conv(c.conv.out, c.conv.in, c.conv.kh, c.conv.kw, c.conv.geometry);
    const merge_result<linear> fc = conv_to_fc(conv, c.height, c.width);
    CHECK(fc.is_exact);
    const activations x = rng.images(3, c.conv.in, c.height, c.width);
    const activations expected = reference_conv2d(x, conv);
    const reparam::index per_sample_out = expected.size() / 3;
    REQUIRE(fc.layer.out_features() == per_sample_out);
    REQUIRE(fc.layer.in_features() == c.conv.in * c.height * c.width);
    if (c.conv.geometry.stride_h == 1 && c.conv.kh == 2 * c.conv.geometry.pad_top + 1) {
      CHECK(fc.layer.out_features() == c.conv.out * c.height * c.width);  // [(O h w) x (C h w)]
    }
    // NCHW row-major: sample b's (c, i, j) values are contiguous in that order.
    const Eigen::Map<const matrix<double>> x_rows(x.data(), 3, fc.layer.in_features());
    const Eigen::Map<const matrix<double>> expected_rows(expected.data(), 3, per_sample_out);
    const matrix<double> actual = reference_linear(x_rows, fc.layer);
    const double bound = max_abs(reference_conv2d(magnitude(x), magnitude(conv)));
    const double terms = static_cast<double>(c.conv.in * c.height * c.width);
    CHECK(max_abs_diff(actual, expected_rows) <= rounding_tolerance(terms, bound));
  }
  const conv2d big = rng.conv(2, 2, 5, 5, conv_geometry::padded(0));
  CHECK_THROWS_WITH(conv_to_fc(big, 3, 7),
                    Contains("structural::conv_to_fc") && Contains("does not fit"));
  conv2d reflect = rng.conv(2, 2, 5, 5, conv_geometry::padded(2));
  reflect.geometry.mode = padding_mode::reflect;
  CHECK_THROWS_WITH(conv_to_fc(reflect, 2, 7), Contains("reflect padding"));
  CHECK_THROWS_WITH(conv_to_fc(big, 0, 7), Contains("at least 1x1"));
}

// ---------------------------------------------------------------------------------------------
// T12

TEST_CASE("collapse_chain collapses linear chains with and without a residual", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(116);
  CAPTURE(seed);
  random_source rng(seed);
  const std::vector<std::vector<reparam::index>> widths = {
      {7, 11, 5, 7}, {7, 3, 9}, {5, 5}, {1, 4, 1}};
  for (const auto& dims : widths) {
    for (bool has_residual : {false, true}) {
      if (has_residual && dims.front() != dims.back()) {
        continue;
      }
      CAPTURE(dims, has_residual);
      std::vector<linear> layers;
      for (std::size_t i = 1; i < dims.size(); ++i) {
        layers.push_back(rng.dense(dims[i], dims[i - 1]));
      }
      const matrix<double> x = rng.uniform(6, dims.front(), -2.0, 2.0);
      matrix<double> expected = x;
      matrix<double> bound = x.cwiseAbs();
      double terms = 0.0;
      for (const linear& l : layers) {
        expected = reference_linear(expected, l);
        bound = reference_linear(bound, magnitude(l));
        terms += static_cast<double>(l.in_features());
      }
      if (has_residual) {
        expected += x;
        bound += x.cwiseAbs();
      }
      const merge_result<linear> merged = collapse_chain(layers, has_residual);
      CHECK(merged.is_exact);
      CHECK(max_abs_diff(reference_linear(x, merged.layer), expected) <=
            rounding_tolerance(terms, bound.maxCoeff()));
    }
  }
}

TEST_CASE("collapse_chain is associative and refuses broken chains", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(117);
  CAPTURE(seed);
  random_source rng(seed);
  const linear a = rng.dense(6, 5);
  const linear b = rng.dense(9, 6);
  const linear c = rng.dense(5, 9);
  const linear all = collapse_chain({a, b, c}, true).layer;
  const linear nested = collapse_chain({collapse_chain({a, b}, false).layer, c}, true).layer;
  // Entries are sums of 6 * 9 products of weights in (-1, 1); the two orders differ by the
  // rounding of those sums: (6 + 9) * eps * (sum of |products|) <= 15 * eps * 54.
  CHECK(max_abs_diff(all.weight, nested.weight) <= rounding_tolerance(15.0, 54.0));
  CHECK((all.bias - nested.bias).cwiseAbs().maxCoeff() <=
        rounding_tolerance(15.0, 54.0 + 9.0 + 1.0));

  CHECK_THROWS_WITH(collapse_chain({}, false),
                    Contains("structural::collapse_chain") && Contains("no layers"));
  CHECK_THROWS_WITH(collapse_chain({a, c}, false),
                    Contains("layers[1] takes 9 inputs but layers[0] gives 6 outputs"));
  CHECK_THROWS_WITH(collapse_chain({a, b}, true),
                    Contains("maps 5 inputs to 9 outputs") && Contains("residual"));
}

// ---------------------------------------------------------------------------------------------
// T13 (FFN)

TEST_CASE("merge_parallel_ffn concatenates hidden units of parallel FFNs", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(118);
  CAPTURE(seed);
  random_source rng(seed);
  const reparam::index in = 7;
  const reparam::index out = 5;
  std::vector<ffn> branches;
  for (reparam::index hidden : {reparam::index{5}, reparam::index{1}, reparam::index{8}}) {
    branches.push_back({rng.dense(hidden, in), rng.dense(out, hidden)});
  }
  branches[1].down.bias.resize(0);  // a branch without output bias
  const matrix<double> x = rng.uniform(9, in, -2.0, 2.0);
  const merge_result<ffn> merged = merge_parallel_ffn(branches);
  CHECK(merged.is_exact);
  REQUIRE(merged.layer.up.out_features() == 14);
  REQUIRE(merged.layer.down.in_features() == 14);

  std::vector<ffn> reversed(branches.rbegin(), branches.rend());
  const ffn merged_reversed = merge_parallel_ffn(reversed).layer;
  double bound = 0.0;
  for (const ffn& branch : branches) {
    bound += ffn_magnitude(x.cwiseAbs(), branch);
  }
  // Longest path: in + 14 hidden terms; activations are 1-Lipschitz (ReLU) or 1.13-Lipschitz
  // (GELU), so the hidden errors carry over at most 1.13x: use 2x.
  const double tolerance = 2.0 * rounding_tolerance(static_cast<double>(in + 14), bound);
  CAPTURE(tolerance);
  for (int activation = 0; activation < 2; ++activation) {
    CAPTURE(activation);
    const auto act = [activation](double v) { return activation == 0 ? gelu(v) : relu(v); };
    matrix<double> expected = matrix<double>::Zero(9, out);
    for (const ffn& branch : branches) {
      expected += run_ffn(x, branch, act);
    }
    CHECK(max_abs_diff(run_ffn(x, merged.layer, act), expected) <= tolerance);
    // Branch order changes the unit order, not the function.
    CHECK(max_abs_diff(run_ffn(x, merged_reversed, act), expected) <= tolerance);
  }
}

TEST_CASE("merge_parallel_ffn refuses branches that do not share input and output",
          "[structural]") {
  random_source rng(reparam::test::test_seed(119));
  const ffn a{rng.dense(4, 6), rng.dense(6, 4)};
  CHECK_THROWS_WITH(merge_parallel_ffn({}),
                    Contains("structural::merge_parallel_ffn") && Contains("no branches"));
  CHECK_THROWS_WITH(merge_parallel_ffn({a, ffn{rng.dense(4, 5), rng.dense(6, 4)}}),
                    Contains("branches[1] takes 5 inputs but branches[0] takes 6"));
  CHECK_THROWS_WITH(merge_parallel_ffn({a, ffn{rng.dense(4, 6), rng.dense(3, 4)}}),
                    Contains("branches[1] gives 3 outputs but branches[0] gives 6"));
  CHECK_THROWS_WITH(merge_parallel_ffn({a, ffn{rng.dense(4, 6), rng.dense(6, 5)}}),
                    Contains("branches[1].down takes 5 inputs but branches[1].up gives 4"));
}

// ---------------------------------------------------------------------------------------------
// T15

TEST_CASE("average_experts averages parameters and flags the result approximate", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(120);
  CAPTURE(seed);
  random_source rng(seed);
  const ffn base{rng.dense(6, 5), rng.dense(5, 6)};
  std::vector<ffn> experts;
  for (int i = 0; i < 3; ++i) {
    ffn expert = base;
    expert.up.weight += rng.uniform(6, 5, -0.05, 0.05);
    expert.down.bias += rng.vector(5, -0.05, 0.05);
    experts.push_back(expert);
  }
  expert_average_report report;
  const merge_result<ffn> averaged = average_experts(experts, &report);
  CHECK_FALSE(averaged.is_exact);
  CHECK_THAT(averaged.note, Contains("approximate"));
  CHECK(report.expert_count == 3);
  // The average, elementwise (three terms, one division: a few ulps).
  const matrix<double> mean_up =
      (experts[0].up.weight + experts[1].up.weight + experts[2].up.weight) / 3.0;
  CHECK(max_abs_diff(averaged.layer.up.weight, mean_up) <= 4.0 * machine_epsilon * 2.0);
  // Equal in all experts: (3 w) / 3 is w up to two roundings.
  CHECK(max_abs_diff(averaged.layer.down.weight, base.down.weight) <= 2.0 * machine_epsilon);
  // The report, recomputed from its definition.
  const auto flatten = [](const ffn& f) {
    std::vector<double> theta(f.up.weight.data(), f.up.weight.data() + f.up.weight.size());
    theta.insert(theta.end(), f.up.bias.data(), f.up.bias.data() + f.up.bias.size());
    theta.insert(theta.end(), f.down.weight.data(), f.down.weight.data() + f.down.weight.size());
    theta.insert(theta.end(), f.down.bias.data(), f.down.bias.data() + f.down.bias.size());
    return Eigen::Map<const Eigen::VectorXd>(theta.data(),
                                             static_cast<reparam::index>(theta.size()))
        .eval();
  };
  const Eigen::VectorXd mean = flatten(averaged.layer);
  double worst = 0.0;
  double largest = 0.0;
  for (const ffn& expert : experts) {
    worst = std::fmax(worst, (flatten(expert) - mean).norm() / mean.norm());
    largest = std::fmax(largest, (flatten(expert) - mean).cwiseAbs().maxCoeff());
  }
  CHECK(report.max_relative_deviation == Approx(worst).epsilon(1e-12));
  CHECK(report.max_abs_deviation == Approx(largest).epsilon(1e-12));
  CHECK(report.max_relative_deviation > 0.0);
  CHECK(report.mean_relative_deviation <= report.max_relative_deviation);
  CHECK(report.worst_expert >= 0);
  CHECK(report.worst_expert < 3);

  // Identical experts: exact, and the result is the expert itself.
  const merge_result<ffn> same = average_experts({base, base, base}, nullptr);
  CHECK(same.is_exact);
  CHECK(same.layer.up.weight == base.up.weight);
  CHECK(same.layer.up.bias == base.up.bias);
  CHECK(same.layer.down.weight == base.down.weight);
  CHECK(same.layer.down.bias == base.down.bias);
  expert_average_report zero;
  average_experts({base, base}, &zero);
  CHECK(zero.max_relative_deviation == 0.0);
  CHECK(zero.max_abs_deviation == 0.0);

  CHECK_THROWS_WITH(average_experts({}, nullptr),
                    Contains("structural::average_experts") && Contains("no experts"));
  CHECK_THROWS_WITH(average_experts({base, ffn{rng.dense(7, 5), rng.dense(5, 7)}}, nullptr),
                    Contains("experts[1] has up [7, 5]"));
}

// ---------------------------------------------------------------------------------------------
// T16

TEST_CASE("fold_low_rank adds scale * B A in double", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(121);
  CAPTURE(seed);
  random_source rng(seed);
  const linear base = rng.dense(9, 13);
  const matrix<double> b = rng.uniform(9, 3, -1.0, 1.0);
  const matrix<double> a = rng.uniform(3, 13, -1.0, 1.0);
  const double scale = 16.0 / 3.0;  // alpha / rank
  const matrix<double> x = rng.uniform(5, 13, -2.0, 2.0);
  const merge_result<linear> merged = fold_low_rank(base, b, a, scale);
  CHECK(merged.is_exact);
  // Reference: W x + b + scale * B (A x), never forming B A.
  const matrix<double> ax = x * a.transpose();
  const matrix<double> expected = reference_linear(x, base) + scale * ax * b.transpose();
  const matrix<double> bound =
      reference_linear(x.cwiseAbs(), magnitude(base)) +
      scale * (x.cwiseAbs() * a.cwiseAbs().transpose()) * b.cwiseAbs().transpose();
  CHECK(max_abs_diff(reference_linear(x, merged.layer), expected) <=
        rounding_tolerance(13.0 + 3.0, bound.maxCoeff()));
  // Folding rank 1 then rank 2 equals folding the rank-3 update at once.
  const linear split = fold_low_rank(fold_low_rank(base, b.leftCols(1), a.topRows(1), scale).layer,
                                     b.rightCols(2), a.bottomRows(2), scale)
                           .layer;
  // Weight entries: w + scale * (3-term sum of products in (-1, 1)): |terms| <= 1 + 3 scale.
  CHECK(max_abs_diff(split.weight, merged.layer.weight) <=
        rounding_tolerance(3.0, 1.0 + 3.0 * scale));

  CHECK_THROWS_WITH(fold_low_rank(base, b, a.leftCols(12), scale),
                    Contains("structural::fold_low_rank") && Contains("a [3, 12]"));
  CHECK_THROWS_WITH(fold_low_rank(base, b, a, std::numeric_limits<double>::infinity()),
                    Contains("not finite"));
}

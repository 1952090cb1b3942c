// SPDX-License-Identifier: Apache-2.0
// The conv primitives of structural/conv_merge.hpp (T1, T3-T9, T14) against running the unmerged
// layers through the direct double-precision reference conv (tests/support/reference_conv.hpp;
// random layers, magnitude twins and tolerances from tests/support/structural_layers.hpp):
// BN statistics far from identity, odd channel counts, groups 1 / 2 / depthwise, stride 1 / 2,
// odd 9x7 inputs, every padding mode where it applies, non-square kernels; every refusal; bitwise
// order independence and idempotence; and the one rounding to float.
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/tensor_views.hpp>
#include <reparam/structural/conv_merge.hpp>
#include <reparam/structural/types.hpp>

#include "support/random.hpp"
#include "support/reference_conv.hpp"
#include "support/structural_layers.hpp"

namespace {

namespace st = reparam::structural;
using Catch::Matchers::Contains;
using reparam::index;
using namespace reparam::test;  // NOLINT(google-build-using-namespace): test vocabulary

// Odd channel counts; groups 2 with odd per-group counts; depthwise; depthwise with multiplier 2.
struct channel_case {
  index in;
  index out;
  index groups;
};
const std::vector<channel_case> channel_cases = {{3, 5, 1}, {6, 10, 2}, {7, 7, 7}, {5, 10, 5}};

// One conv configuration of the sweeps below: channels, stride and padding mode.
struct conv_variant {
  index in;
  index out;
  index groups;
  index stride;
  st::padding_mode mode;
};

std::ostream& operator<<(std::ostream& out, const conv_variant& v) {
  return out << "in " << v.in << ", out " << v.out << ", groups " << v.groups << ", stride "
             << v.stride << ", mode " << st::padding_mode_name(v.mode);
}

// Every channel case at stride 1 and 2 in each of `modes` (channel case outermost, mode
// innermost: the order the random layers are drawn in).
std::vector<conv_variant> conv_variants(
    const std::vector<st::padding_mode>& modes = all_padding_modes) {
  std::vector<conv_variant> variants;
  for (const channel_case& cc : channel_cases) {
    for (const index stride : {1, 2}) {
      for (const st::padding_mode mode : modes) {
        variants.push_back({cc.in, cc.out, cc.groups, stride, mode});
      }
    }
  }
  return variants;
}

// --- T1 ---

TEST_CASE("fold_batch_norm equals conv then BatchNorm", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(101);
  CAPTURE(seed);
  uniform_stream rng(seed);
  int variant = 0;
  for (const conv_variant& v : conv_variants()) {
    ++variant;
    const bool has_bias = variant % 2 == 0;
    const bool is_affine = variant % 3 != 0;
    const index kh = 3;
    const index kw = variant % 2 == 0 ? 5 : 3;
    CAPTURE(v, has_bias, is_affine, kw);
    const st::conv2d c = random_conv(rng, v.out, v.in, kh, kw,
                                     geometry_of(1, kw / 2, v.stride, v.groups, v.mode), has_bias);
    const st::batch_norm bn = random_bn(rng, v.out, is_affine);
    const activations x = random_input(rng, v.in);
    const st::merge_result<st::conv2d> folded = st::fold_batch_norm(c, bn);
    CHECK(folded.is_exact);
    CHECK(folded.layer.geometry == c.geometry);
    const double bound = max_abs(norm(conv(magnitude(x), magnitude(c)), magnitude(bn)));
    check_merged(x, folded.layer, norm(conv(x, c), bn), bound, taps(c) + 8);
  }
}

TEST_CASE("fold_batch_norm of a transposed conv scales weight axis 1", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(102);
  CAPTURE(seed);
  uniform_stream rng(seed);
  for (const conv_variant& v : conv_variants({st::padding_mode::zeros})) {
    CAPTURE(v);
    st::conv_transpose2d c;
    c.geometry = geometry_of(1, 0, v.stride, v.groups);
    c.output_padding_h = v.stride - 1;
    c.weight = reparam::tensor<double, 4>(v.in, v.out / v.groups, 3, 2);
    for (index i = 0; i < c.weight.size(); ++i) {
      c.weight.data()[i] = rng.uniform(-1.0, 1.0);
    }
    if (v.stride == 1) {
      c.bias = Eigen::VectorXd::LinSpaced(v.out, -1.0, 1.0);
    }
    const st::batch_norm bn = random_bn(rng, v.out);
    const activations x = random_input(rng, v.in);
    const st::merge_result<st::conv_transpose2d> folded = st::fold_batch_norm(c, bn);
    CHECK(folded.is_exact);
    CHECK(folded.layer.output_padding_h == c.output_padding_h);
    const activations reference = norm(reparam::test::reference_conv_transpose2d(x, c), bn);
    const double bound = max_abs(
        norm(reparam::test::reference_conv_transpose2d(magnitude(x), magnitude(c)), magnitude(bn)));
    const double err =
        max_abs_diff(reparam::test::reference_conv_transpose2d(x, folded.layer), reference);
    // Each output accumulates at most C_in/g * kh * kw products, the bias and the BN.
    const double tolerance = double_tolerance(v.in / v.groups * 6 + 8, bound);
    CAPTURE(err, tolerance);
    CHECK(err <= tolerance);
  }
}

TEST_CASE("fold_batch_norm refuses BatchNorms that cannot be folded", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(103);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const st::conv2d c = random_conv(rng, 5, 3, 3, 3, geometry_of(1, 1, 1, 1));
  st::batch_norm training = random_bn(rng, 5);
  training.is_training = true;
  CHECK_THROWS_WITH(st::fold_batch_norm(c, training),
                    Contains("structural::fold_batch_norm") && Contains("training mode"));
  CHECK_THROWS_WITH(st::fold_post_sum_batch_norm(c, training),
                    Contains("structural::fold_post_sum_batch_norm") && Contains("training mode"));
  st::batch_norm no_stats = random_bn(rng, 5);
  no_stats.has_running_stats = false;
  CHECK_THROWS_WITH(st::fold_batch_norm(c, no_stats), Contains("no running statistics"));
  CHECK_THROWS_WITH(st::fold_batch_norm(c, random_bn(rng, 7)),
                    Contains("7 channels") && Contains("5 output channels"));

  st::conv_transpose2d t;
  t.geometry = geometry_of(0, 0, 2, 1);
  t.weight = reparam::tensor<double, 4>(3, 5, 2, 2);
  t.weight.setConstant(0.5);
  CHECK_THROWS_WITH(st::fold_batch_norm(t, training), Contains("training mode"));
  CHECK_THROWS_WITH(st::fold_batch_norm(t, no_stats), Contains("no running statistics"));
  CHECK_THROWS_WITH(st::fold_batch_norm(t, random_bn(rng, 3)),
                    Contains("3 channels") && Contains("5 output channels"));
}

TEST_CASE("folding an identity BatchNorm is a no-op within rounding", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(104);
  CAPTURE(seed);
  uniform_stream rng(seed);
  for (const double eps : {1e-5, 1e-3}) {
    const st::conv2d c = random_conv(rng, 7, 7, 3, 3, geometry_of(1, 1, 1, 7));
    const st::conv2d folded = st::fold_batch_norm(c, identity_bn(7, eps)).layer;
    // s = 1 / sqrt((1 - eps) + eps) is 1 within a few roundings of the sum and the sqrt, so
    // every weight and bias moves by at most ~3 u relative; 4 u is the bound checked.
    check_each_within(folded, c, 4.0 * unit_roundoff);
  }
}

// --- T3 ---

TEST_CASE("add_branches sums parallel convs in every padding mode", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(105);
  CAPTURE(seed);
  uniform_stream rng(seed);
  for (const conv_variant& v : conv_variants()) {
    CAPTURE(v);
    const st::conv_geometry g = geometry_of(1, 2, v.stride, v.groups, v.mode);
    const std::vector<st::conv2d> branches = {random_conv(rng, v.out, v.in, 3, 5, g),
                                              random_conv(rng, v.out, v.in, 3, 5, g, false),
                                              random_conv(rng, v.out, v.in, 3, 5, g)};
    const activations x = random_input(rng, v.in);
    const st::merge_result<st::conv2d> merged = st::add_branches(branches);
    CHECK(merged.is_exact);
    activations reference = conv(x, branches[0]);
    activations bound = conv(magnitude(x), magnitude(branches[0]));
    for (std::size_t b = 1; b < branches.size(); ++b) {
      reference = sum(reference, conv(x, branches[b]));
      bound = sum(bound, conv(magnitude(x), magnitude(branches[b])));
    }
    check_merged(x, merged.layer, reference, max_abs(bound), taps(branches[0]) + 8);

    // Order independence is bitwise: every element is summed in ascending value order.
    std::vector<st::conv2d> permuted = {branches[2], branches[0], branches[1]};
    CHECK(same_bits(st::add_branches(permuted).layer, merged.layer));
    permuted = {branches[1], branches[2], branches[0]};
    CHECK(same_bits(st::add_branches(permuted).layer, merged.layer));
  }
}

TEST_CASE("add_branches of one branch returns it unchanged", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(106);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const st::conv2d c = random_conv(rng, 5, 3, 3, 3, geometry_of(1, 1, 2, 1));
  const st::conv2d merged = st::add_branches({c}).layer;
  CHECK(same_bits(merged, c));
  CHECK(same_bits(st::add_branches({merged}).layer, c));
}

TEST_CASE("add_branches refuses branches that do not share a geometry", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(107);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const st::conv_geometry g = geometry_of(1, 1, 1, 1);
  const st::conv2d base = random_conv(rng, 6, 6, 3, 3, g);
  const auto with = [&](st::conv_geometry changed) {
    st::conv2d c = base;
    c.geometry = changed;
    return std::vector<st::conv2d>{base, c};
  };
  st::conv_geometry other = g;
  other.stride_w = 2;
  CHECK_THROWS_WITH(st::add_branches(with(other)), Contains("structural::add_branches") &&
                                                       Contains("branch 1 has stride 1x2") &&
                                                       Contains("branch 0 has stride 1x1"));
  other = g;
  other.pad_bottom = 2;
  CHECK_THROWS_WITH(st::add_branches(with(other)), Contains("padding (top 1, bottom 2"));
  other = g;
  other.dilation_h = 2;
  CHECK_THROWS_WITH(st::add_branches(with(other)), Contains("dilation 2x1"));
  other = g;
  other.mode = st::padding_mode::reflect;
  CHECK_THROWS_WITH(st::add_branches(with(other)), Contains("padding mode reflect"));
  st::conv2d grouped = random_conv(rng, 6, 6, 3, 3, geometry_of(1, 1, 1, 2));
  grouped.weight = base.weight;  // same shape, different groups (an invalid pair on purpose)
  CHECK_THROWS_WITH(st::add_branches({base, grouped}), Contains("groups 2"));
  CHECK_THROWS_WITH(st::add_branches({base, random_conv(rng, 6, 6, 1, 1, g)}),
                    Contains("weight shape [6, 6, 1, 1]") && Contains("embed_kernel"));
  CHECK_THROWS_WITH(st::add_branches({}), Contains("no branches"));
}

// --- T4 ---

struct embed_case {
  index kh;
  index kw;
  index big_h;
  index big_w;
  index dilation;
};

TEST_CASE("embed_kernel centres a small kernel into an aligned larger one", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(108);
  CAPTURE(seed);
  uniform_stream rng(seed);
  // 1x1 -> 3x3 (RepVGG), 1x3 / 3x1 -> 3x3 (ACNet), 1x3 -> 3x5 (non-square), 3x3 -> 5x5 with
  // dilation 2, 3x3 -> 7x5.
  const std::vector<embed_case> cases = {{1, 1, 3, 3, 1}, {1, 3, 3, 3, 1}, {3, 1, 3, 3, 1},
                                         {1, 3, 3, 5, 1}, {3, 3, 5, 5, 2}, {3, 3, 7, 5, 1}};
  for (const embed_case& ec : cases) {
    for (const conv_variant& v : conv_variants()) {
      CAPTURE(ec.kh, ec.kw, ec.big_h, ec.big_w, ec.dilation, v);
      // Target "same" padding plus one extra on top/left (asymmetric) to check per side.
      st::conv_geometry target =
          geometry_of(ec.dilation * (ec.big_h / 2), ec.dilation * (ec.big_w / 2), v.stride,
                      v.groups, v.mode, ec.dilation);
      target.pad_top += 1;
      target.pad_left += 1;
      st::conv_geometry small_g = target;
      small_g.pad_top -= ec.dilation * ((ec.big_h - ec.kh) / 2);
      small_g.pad_bottom -= ec.dilation * ((ec.big_h - ec.kh) / 2);
      small_g.pad_left -= ec.dilation * ((ec.big_w - ec.kw) / 2);
      small_g.pad_right -= ec.dilation * ((ec.big_w - ec.kw) / 2);
      const st::conv2d small = random_conv(rng, v.out, v.in, ec.kh, ec.kw, small_g);
      const activations x = random_input(rng, v.in);
      const st::merge_result<st::conv2d> embedded =
          st::embed_kernel(small, ec.big_h, ec.big_w, target);
      CHECK(embedded.is_exact);
      CHECK(embedded.layer.geometry == target);
      CHECK(embedded.layer.kernel_h() == ec.big_h);
      CHECK(embedded.layer.kernel_w() == ec.big_w);
      const double bound = max_abs(conv(magnitude(x), magnitude(small)));
      check_merged(x, embedded.layer, conv(x, small), bound, taps(embedded.layer) + 4);
    }
  }
  // Embedding into its own size changes nothing.
  const st::conv2d c = random_conv(rng, 5, 3, 3, 5, geometry_of(1, 2, 2, 1));
  CHECK(same_bits(st::embed_kernel(c, 3, 5, c.geometry).layer, c));
}

TEST_CASE("embed_kernel refuses kernels it cannot align", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(109);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const st::conv_geometry target = geometry_of(1, 1, 1, 1);
  const st::conv2d one = random_conv(rng, 5, 3, 1, 1, geometry_of(0, 0, 1, 1));
  // An even kernel in an odd one has no centre.
  const st::conv2d even = random_conv(rng, 5, 3, 2, 2, geometry_of(0, 0, 1, 1));
  CHECK_THROWS_WITH(st::embed_kernel(even, 3, 3, target),
                    Contains("structural::embed_kernel") && Contains("no centred position"));
  CHECK_THROWS_WITH(st::embed_kernel(random_conv(rng, 5, 3, 5, 5, geometry_of(2, 2, 1, 1)), 3, 3,
                                     geometry_of(1, 1, 1, 1)),
                    Contains("smaller 3x3"));
  CHECK_THROWS_WITH(st::embed_kernel(one, 3, 3, geometry_of(1, 1, 2, 1)),
                    Contains("stride 1x1") && Contains("target has stride 2x2"));
  CHECK_THROWS_WITH(
      st::embed_kernel(one, 3, 3, geometry_of(2, 2, 1, 1, st::padding_mode::zeros, 2)),
      Contains("dilation"));
  const st::conv2d one_g = random_conv(rng, 6, 6, 1, 1, geometry_of(0, 0, 1, 2));
  CHECK_THROWS_WITH(st::embed_kernel(one_g, 3, 3, geometry_of(1, 1, 1, 3)), Contains("groups"));
  CHECK_THROWS_WITH(
      st::embed_kernel(one, 3, 3, geometry_of(1, 1, 1, 1, st::padding_mode::circular)),
      Contains("padding mode zeros") && Contains("circular"));
  // Misaligned: a 1x1 padded 1 inside a 3x3 padded 1 reads shifted pixels.
  const st::conv2d padded_one = random_conv(rng, 5, 3, 1, 1, geometry_of(1, 1, 1, 1));
  CHECK_THROWS_WITH(st::embed_kernel(padded_one, 3, 3, target),
                    Contains("not aligned") && Contains("needs padding (top 0, bottom 0"));
  // Alignment would need a negative padding (ACNet's crop path): refused, never cropped.
  CHECK_THROWS_WITH(st::embed_kernel(one, 3, 3, geometry_of(0, 0, 1, 1)),
                    Contains("negative") && Contains("crop"));
}

// --- T5 ---

TEST_CASE("identity_conv reproduces its input and folds its BatchNorm", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(110);
  CAPTURE(seed);
  uniform_stream rng(seed);
  struct identity_case {
    index channels;
    index groups;
    index kh;
    index kw;
    index dilation;
  };
  const std::vector<identity_case> cases = {{5, 1, 3, 3, 1}, {6, 2, 3, 3, 1}, {7, 7, 3, 3, 1},
                                            {5, 1, 1, 1, 1}, {7, 7, 3, 5, 1}, {6, 3, 3, 3, 2},
                                            {5, 5, 5, 1, 1}};
  for (const identity_case& ic : cases) {
    for (const st::padding_mode mode : all_padding_modes) {
      CAPTURE(ic.channels, ic.groups, ic.kh, ic.kw, ic.dilation, st::padding_mode_name(mode));
      const st::conv_geometry g = geometry_of(ic.dilation * (ic.kh / 2), ic.dilation * (ic.kw / 2),
                                              1, ic.groups, mode, ic.dilation);
      const st::conv2d id = st::identity_conv(ic.channels, ic.groups, ic.kh, ic.kw, g);
      CHECK(id.geometry == g);
      const activations x = random_input(rng, ic.channels);
      // One product 1 * x and exact zeros: the identity is exact, not just close.
      CHECK(max_abs_diff(conv(x, id), x) == 0.0);
      const st::batch_norm bn = random_bn(rng, ic.channels);
      const st::conv2d folded = st::fold_batch_norm(id, bn).layer;
      const double bound = max_abs(norm(magnitude(x), magnitude(bn)));
      check_merged(x, folded, norm(x, bn), bound, taps(id) + 8);
    }
  }
}

TEST_CASE("identity_conv refuses what cannot be an identity", "[structural]") {
  CHECK_THROWS_WITH(
      st::identity_conv(5, 1, 2, 2, geometry_of(1, 1, 1, 1)),
      Contains("structural::identity_conv") && Contains("odd kernel") && Contains("2x2"));
  CHECK_THROWS_WITH(st::identity_conv(5, 1, 3, 3, geometry_of(1, 1, 2, 1)),
                    Contains("stride 1") && Contains("2x2"));
  CHECK_THROWS_WITH(st::identity_conv(5, 1, 3, 3, geometry_of(0, 0, 1, 1)),
                    Contains("needs padding (top 1, bottom 1, left 1, right 1)"));
  CHECK_THROWS_WITH(st::identity_conv(5, 2, 3, 3, geometry_of(1, 1, 1, 2)),
                    Contains("groups 2") && Contains("divide the 5 channels"));
  CHECK_THROWS_WITH(st::identity_conv(6, 2, 3, 3, geometry_of(1, 1, 1, 3)),
                    Contains("geometry.groups 3"));
}

// --- T6 ---

// The sequential branch evaluated as trained: 1x1 conv, optional BN, then the intermediate is
// padded per side with `pad_values` (the BN-and-pad value per channel) and the k x k conv runs
// with no padding of its own. With pad_values empty the k x k conv pads as its geometry says.
// The sequential branch's first stage: the 1x1 conv, then the BN if there is one.
activations first_stage(const activations& x, const st::conv2d& first, const st::batch_norm* bn) {
  const activations mid = conv(x, first);
  return bn != nullptr ? norm(mid, *bn) : mid;
}

activations sequential_reference(const activations& x, const st::conv2d& first,
                                 const st::batch_norm* bn, const st::conv2d& second,
                                 const Eigen::VectorXd& pad_values) {
  const activations mid = first_stage(x, first, bn);
  return pad_values.size() == 0 ? conv(mid, second) : conv_padded_with(mid, second, pad_values);
}

// What the 1x1 (+ BN) layer outputs for a zero input, channel by channel: its post-BN bias.
Eigen::VectorXd zero_response(const st::conv2d& first, const st::batch_norm* bn) {
  return output_at_zero(first.in_channels(),
                        [&](const activations& zero) { return first_stage(zero, first, bn); });
}

TEST_CASE("merge_sequential equals 1x1, BN-and-pad, then k x k", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(111);
  CAPTURE(seed);
  uniform_stream rng(seed);
  struct sequential_case {
    index in;
    index mid;
    index out;
    index groups;
  };
  const std::vector<sequential_case> cases = {{3, 5, 7, 1}, {6, 4, 10, 2}, {5, 10, 5, 5}};
  for (const sequential_case& sc : cases) {
    for (const index stride : {1, 2}) {
      for (const bool has_bn : {true, false}) {
        CAPTURE(sc.in, sc.mid, sc.out, sc.groups, stride, has_bn);
        const st::conv2d first =
            random_conv(rng, sc.mid, sc.in, 1, 1, geometry_of(0, 0, 1, sc.groups), !has_bn);
        const st::batch_norm bn_layer = random_bn(rng, sc.mid);
        const st::batch_norm* bn = has_bn ? &bn_layer : nullptr;
        const st::batch_norm bn_bound = magnitude(bn_layer);
        const st::batch_norm* bn_magnitude = has_bn ? &bn_bound : nullptr;
        const activations x = random_input(rng, sc.in);
        const st::conv2d second =
            random_conv(rng, sc.out, sc.mid, 3, 5, geometry_of(1, 2, stride, sc.groups));
        const index terms = taps(first) + taps(second) + 16;
        {
          // Intermediate padded with the layer's post-BN bias (DBB's BNAndPad): exact.
          INFO("BN-and-pad intermediate");
          const st::merge_result<st::conv2d> merged = st::merge_sequential(first, bn, second, true);
          CHECK(merged.is_exact);
          CHECK(merged.layer.geometry == second.geometry);
          const activations reference =
              sequential_reference(x, first, bn, second, zero_response(first, bn));
          const double bound = max_abs(
              sequential_reference(magnitude(x), magnitude(first), bn_magnitude, magnitude(second),
                                   zero_response(magnitude(first), bn_magnitude)));
          check_merged(x, merged.layer, reference, bound, terms);
          // The refusal of a zero-padded intermediate is not pedantry: at the borders the
          // branch differs from the merged conv by W2 * b1 terms.
          const double border_gap =
              max_abs_diff(conv(x, merged.layer), conv(conv(x, first), second));
          if (!has_bn) {
            CHECK(border_gap > 1e-3);
          }
        }
        {
          INFO("unpadded k x k, padding moved to the 1x1");
          st::conv2d unpadded = second;
          unpadded.geometry = geometry_of(0, 0, stride, sc.groups);
          st::conv2d padded_first = first;
          padded_first.geometry = geometry_of(1, 2, 1, sc.groups);
          const st::conv2d merged = st::merge_sequential(padded_first, bn, unpadded, false).layer;
          CHECK(merged.geometry == second.geometry);
          const activations reference =
              sequential_reference(x, padded_first, bn, unpadded, Eigen::VectorXd());
          st::conv2d padded_first_bound = magnitude(first);
          padded_first_bound.geometry = padded_first.geometry;
          const double bound =
              max_abs(sequential_reference(magnitude(x), padded_first_bound, bn_magnitude,
                                           magnitude(unpadded), Eigen::VectorXd()));
          check_merged(x, merged, reference, bound, terms);
        }
        for (const st::padding_mode mode :
             {st::padding_mode::reflect, st::padding_mode::replicate, st::padding_mode::circular}) {
          INFO("copy-padded intermediate: " << st::padding_mode_name(mode));
          st::conv2d copy_padded = second;
          copy_padded.geometry.mode = mode;
          const st::conv2d merged = st::merge_sequential(first, bn, copy_padded, false).layer;
          const activations reference =
              sequential_reference(x, first, bn, copy_padded, Eigen::VectorXd());
          st::conv2d copy_bound = magnitude(second);
          copy_bound.geometry.mode = mode;
          const double bound = max_abs(sequential_reference(
              magnitude(x), magnitude(first), bn_magnitude, copy_bound, Eigen::VectorXd()));
          check_merged(x, merged, reference, bound, terms);
        }
      }
    }
  }
}

TEST_CASE("merge_sequential refuses a zero-padded intermediate and other mismatches",
          "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(112);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const st::conv2d first = random_conv(rng, 4, 6, 1, 1, geometry_of(0, 0, 1, 2));
  const st::conv2d second = random_conv(rng, 10, 4, 3, 3, geometry_of(1, 1, 1, 2));
  const st::batch_norm bn = random_bn(rng, 4);
  CHECK_THROWS_WITH(st::merge_sequential(first, &bn, second, false),
                    Contains("structural::merge_sequential") && Contains("zero-pads") &&
                        Contains("not exact") && Contains("BNAndPad") &&
                        Contains("is_intermediate_padded_with_bias=true"));
  CHECK_THROWS_WITH(st::merge_sequential(random_conv(rng, 4, 6, 3, 3, geometry_of(1, 1, 1, 2)), &bn,
                                         second, true),
                    Contains("must be 1x1"));
  st::conv2d strided = first;
  strided.geometry.stride_h = 2;
  CHECK_THROWS_WITH(st::merge_sequential(strided, &bn, second, true),
                    Contains("stride 1") && Contains("2x1"));
  CHECK_THROWS_WITH(st::merge_sequential(random_conv(rng, 4, 6, 1, 1, geometry_of(0, 0, 1, 1)), &bn,
                                         second, true),
                    Contains("groups 1") && Contains("groups 2"));
  CHECK_THROWS_WITH(st::merge_sequential(random_conv(rng, 6, 6, 1, 1, geometry_of(0, 0, 1, 2)),
                                         nullptr, second, true),
                    Contains("6 output channels") && Contains("reads 4 channels"));
  st::conv2d reflecting = second;
  reflecting.geometry.mode = st::padding_mode::reflect;
  CHECK_THROWS_WITH(st::merge_sequential(first, &bn, reflecting, true),
                    Contains("constant (BNAndPad) padding") && Contains("reflect"));
  st::batch_norm training = bn;
  training.is_training = true;
  CHECK_THROWS_WITH(st::merge_sequential(first, &training, second, true),
                    Contains("training mode"));
  // Two padding stages (the 1x1 pads by reflection, then the k x k pads again) do not compose
  // into one padding of the input.
  st::conv2d padded_first = first;
  padded_first.geometry.pad_top = 1;
  padded_first.geometry.mode = st::padding_mode::reflect;
  CHECK_THROWS_WITH(st::merge_sequential(padded_first, &bn, reflecting, false),
                    Contains("two padding stages"));
}

// --- T7 ---

TEST_CASE("concat_outputs stacks convs along the output channels", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(113);
  CAPTURE(seed);
  uniform_stream rng(seed);
  for (const index stride : {1, 2}) {
    for (const st::padding_mode mode : all_padding_modes) {
      CAPTURE(stride, st::padding_mode_name(mode));
      const st::conv_geometry g = geometry_of(1, 2, stride, 1, mode);
      const std::vector<st::conv2d> convs = {random_conv(rng, 3, 5, 3, 5, g),
                                             random_conv(rng, 5, 5, 3, 5, g, false),
                                             random_conv(rng, 7, 5, 3, 5, g)};
      const activations x = random_input(rng, 5);
      const st::merge_result<st::conv2d> merged = st::concat_outputs(convs);
      CHECK(merged.is_exact);
      REQUIRE(merged.layer.out_channels() == 15);
      activations reference = conv(x, merged.layer);
      activations bound = reference;
      index offset = 0;
      for (const st::conv2d& c : convs) {
        const activations part = conv(x, c);
        const activations part_bound = conv(magnitude(x), magnitude(c));
        for (index b = 0; b < 2; ++b) {
          for (index o = 0; o < c.out_channels(); ++o) {
            for (index i = 0; i < part.dimension(2); ++i) {
              for (index j = 0; j < part.dimension(3); ++j) {
                reference(b, offset + o, i, j) = part(b, o, i, j);
                bound(b, offset + o, i, j) = part_bound(b, o, i, j);
              }
            }
          }
        }
        offset += c.out_channels();
      }
      check_merged(x, merged.layer, reference, max_abs(bound), taps(convs[0]) + 4);
    }
  }
}

TEST_CASE("concat_outputs refuses convs that do not stack", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(114);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const st::conv2d a = random_conv(rng, 3, 5, 3, 3, geometry_of(1, 1, 1, 1));
  CHECK_THROWS_WITH(st::concat_outputs({}), Contains("no convs"));
  CHECK_THROWS_WITH(st::concat_outputs({a, random_conv(rng, 6, 6, 3, 3, geometry_of(1, 1, 1, 2))}),
                    Contains("structural::concat_outputs") && Contains("groups 2"));
  CHECK_THROWS_WITH(st::concat_outputs({a, random_conv(rng, 3, 5, 3, 3, geometry_of(1, 1, 2, 1))}),
                    Contains("different geometry"));
  CHECK_THROWS_WITH(st::concat_outputs({a, random_conv(rng, 3, 5, 1, 3, geometry_of(1, 1, 1, 1))}),
                    Contains("kernel size must match"));
  CHECK_THROWS_WITH(st::concat_outputs({a, random_conv(rng, 3, 4, 3, 3, geometry_of(1, 1, 1, 1))}),
                    Contains("input channels"));
}

// --- T8 ---

TEST_CASE("avg_pool_as_conv equals average pooling", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(115);
  CAPTURE(seed);
  uniform_stream rng(seed);
  struct pool_case {
    index channels;
    index groups;
  };
  for (const pool_case pc : {pool_case{5, 1}, pool_case{6, 2}, pool_case{7, 7}}) {
    for (const index kernel : {2, 3}) {
      for (const index stride : {1, 2}) {
        for (const index pad : {0, 1}) {
          CAPTURE(pc.channels, pc.groups, kernel, stride, pad);
          const st::conv2d pool =
              st::avg_pool_as_conv(pc.channels, kernel, stride, pad, pc.groups, true);
          const activations x = random_input(rng, pc.channels);
          const activations reference = reparam::test::reference_avg_pool(x, kernel, stride, pad);
          const double bound =
              max_abs(reparam::test::reference_avg_pool(magnitude(x), kernel, stride, pad));
          check_merged(x, pool, reference, bound, taps(pool) + 4);
        }
      }
    }
  }
  // Without padding every window is full, so count_include_pad does not matter.
  const st::conv2d unpadded = st::avg_pool_as_conv(5, 3, 2, 0, 5, false);
  const activations x = random_input(rng, 5);
  CHECK(max_abs_diff(conv(x, unpadded), reparam::test::reference_avg_pool(x, 3, 2, 0)) <=
        double_tolerance(16, max_abs(x)));
}

TEST_CASE("avg_pool_as_conv refuses count_include_pad=false with padding", "[structural]") {
  CHECK_THROWS_WITH(st::avg_pool_as_conv(5, 3, 1, 1, 5, false),
                    Contains("structural::avg_pool_as_conv") &&
                        Contains("count_include_pad=false") && Contains("inexact"));
  CHECK_THROWS_WITH(st::avg_pool_as_conv(5, 3, 1, 1, 2, true), Contains("groups 2"));
  CHECK_THROWS_WITH(st::avg_pool_as_conv(5, 0, 1, 0, 1, true), Contains("kernel 0"));
}

// --- T9 ---

TEST_CASE("dilated_to_dense reads the same pixels", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(116);
  CAPTURE(seed);
  uniform_stream rng(seed);
  for (const conv_variant& v : conv_variants()) {
    CAPTURE(v);
    st::conv_geometry g = geometry_of(2, 3, v.stride, v.groups, v.mode);
    g.dilation_h = 2;
    g.dilation_w = 3;
    const st::conv2d c = random_conv(rng, v.out, v.in, 3, 2, g);
    const st::merge_result<st::conv2d> dense = st::dilated_to_dense(c);
    CHECK(dense.is_exact);
    CHECK(dense.layer.kernel_h() == 5);
    CHECK(dense.layer.kernel_w() == 4);
    CHECK(dense.layer.geometry.dilation_h == 1);
    CHECK(dense.layer.geometry.dilation_w == 1);
    const activations x = random_input(rng, v.in);
    const double bound = max_abs(conv(magnitude(x), magnitude(c)));
    check_merged(x, dense.layer, conv(x, c), bound, taps(dense.layer) + 4);
  }
  const st::conv2d plain = random_conv(rng, 5, 3, 3, 3, geometry_of(1, 1, 1, 1));
  CHECK(same_bits(st::dilated_to_dense(plain).layer, plain));
}

// --- T14 ---

TEST_CASE("fold_post_sum_batch_norm folds a BatchNorm applied after a branch sum", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(117);
  CAPTURE(seed);
  uniform_stream rng(seed);
  for (const conv_variant& v : conv_variants({st::padding_mode::zeros})) {
    CAPTURE(v);
    const st::conv_geometry g = geometry_of(1, 1, v.stride, v.groups);
    const st::conv2d a = random_conv(rng, v.out, v.in, 3, 3, g);
    const st::conv2d b = random_conv(rng, v.out, v.in, 3, 3, g);
    const st::batch_norm bn = random_bn(rng, v.out, v.stride == 1);
    const activations x = random_input(rng, v.in);
    const st::conv2d merged = st::add_branches({a, b}).layer;
    const st::merge_result<st::conv2d> folded = st::fold_post_sum_batch_norm(merged, bn);
    CHECK(folded.is_exact);
    const activations reference = norm(sum(conv(x, a), conv(x, b)), bn);
    const double bound = max_abs(norm(
        sum(conv(magnitude(x), magnitude(a)), conv(magnitude(x), magnitude(b))), magnitude(bn)));
    check_merged(x, folded.layer, reference, bound, taps(a) + 12);
  }
}

}  // namespace

// SPDX-License-Identifier: Apache-2.0
// The block recipes of structural/conv_recipes.hpp (RepVGG, ACNet, DBB, MobileOne, RepLKNet,
// UniRepLKNet, QARepVGG) against their training-time multi-branch blocks run through the direct
// double-precision reference layers (tests/support/reference_conv.hpp, helpers from
// tests/support/structural_layers.hpp), incl. DBB's BN-and-pad built by hand: BN statistics far
// from identity, odd channel counts, groups 1 / 2 / depthwise, stride 1 / 2, odd 9x7 inputs, the
// refusals each recipe documents, idempotence, order independence, and the one rounding to float.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include <reparam/core/tensor_views.hpp>
#include <reparam/structural/conv_merge.hpp>
#include <reparam/structural/conv_recipes.hpp>
#include <reparam/structural/types.hpp>

#include "support/random.hpp"
#include "support/reference_conv.hpp"
#include "support/structural_layers.hpp"

namespace {

namespace st = reparam::structural;
using Catch::Matchers::Contains;
using reparam::index;
using namespace reparam::test;   // NOLINT(google-build-using-namespace): test vocabulary
using reparam::test::magnitude;  // overloaded below for the blocks

// A conv-BN pair with the given geometry (a bias-free conv unless has_bias).
st::conv_bn random_conv_bn(uniform_stream& rng, index out, index in, index kernel_h, index kernel_w,
                           const st::conv_geometry& geometry, bool has_bias = false) {
  return {random_conv(rng, out, in, kernel_h, kernel_w, geometry, has_bias), random_bn(rng, out)};
}

// --- Branches of the unmerged blocks and their magnitude twins ---

activations branch(const activations& x, const st::conv_bn& cb) {
  return norm(conv(x, cb.conv), cb.bn);
}

// y plus the branch's output on x, if the block has that branch.
activations plus_branch(const activations& y, const activations& x,
                        const std::optional<st::conv_bn>& cb) {
  return cb ? sum(y, branch(x, *cb)) : y;
}

// y plus the BatchNorm identity branch's output on x, if the block has one.
activations plus_identity(const activations& y, const activations& x,
                          const std::optional<st::batch_norm>& bn) {
  return bn ? sum(y, norm(x, *bn)) : y;
}

st::conv_bn magnitude(const st::conv_bn& cb) { return {magnitude(cb.conv), magnitude(cb.bn)}; }

template <class Layer>
std::optional<Layer> magnitude(const std::optional<Layer>& layer) {
  return layer ? std::optional<Layer>(magnitude(*layer)) : std::nullopt;
}

template <class Layer>
std::vector<Layer> magnitude(const std::vector<Layer>& layers) {
  std::vector<Layer> out;
  for (const Layer& layer : layers) {
    out.push_back(magnitude(layer));
  }
  return out;
}

struct block_case {
  index in;
  index out;
  index groups;
  index stride;
};

std::ostream& operator<<(std::ostream& out, const block_case& bc) {
  return out << "in " << bc.in << ", out " << bc.out << ", groups " << bc.groups << ", stride "
             << bc.stride;
}

// The unmerged blocks and their magnitude twins (defined with each recipe's tests below).
activations reference(const activations& x, const st::repvgg_block& b);
activations reference(const activations& x, const st::acb_block& b);
activations reference(const activations& x, const st::dbb_block& b);
activations reference(const activations& x, const st::mobileone_block& b);
activations reference(const activations& x, const st::replknet_block& b);
activations reference(const activations& x, const st::unireplknet_block& b);
activations reference(const activations& x, const st::qarepvgg_block& b);
st::repvgg_block magnitude(const st::repvgg_block& b);
st::acb_block magnitude(const st::acb_block& b);
st::dbb_block magnitude(const st::dbb_block& b);
st::mobileone_block magnitude(const st::mobileone_block& b);
st::replknet_block magnitude(const st::replknet_block& b);
st::unireplknet_block magnitude(const st::unireplknet_block& b);
st::qarepvgg_block magnitude(const st::qarepvgg_block& b);

// Checks that a recipe's merge is exact and its merged conv equals the block it came from, in
// double and after the one rounding to float (check_merged); M from the magnitude twin.
template <class Block>
void check_block(const activations& x, const Block& block,
                 const st::merge_result<st::conv2d>& merged, index terms) {
  CHECK(merged.is_exact);
  const double bound = max_abs(reference(magnitude(x), magnitude(block)));
  check_merged(x, merged.layer, reference(x, block), bound, terms);
}

// --- RepVGG ---

activations reference(const activations& x, const st::repvgg_block& b) {
  return plus_identity(plus_branch(branch(x, b.dense), x, b.one_by_one), x, b.identity);
}

st::repvgg_block magnitude(const st::repvgg_block& b) {
  return {magnitude(b.dense), magnitude(b.one_by_one), magnitude(b.identity)};
}

st::repvgg_block random_repvgg(uniform_stream& rng, const block_case& bc, index kernel_h,
                               index kernel_w, bool has_one_by_one, bool has_identity) {
  const st::conv_geometry g = geometry_of(kernel_h / 2, kernel_w / 2, bc.stride, bc.groups);
  st::repvgg_block block{random_conv_bn(rng, bc.out, bc.in, kernel_h, kernel_w, g), std::nullopt,
                         std::nullopt};
  if (has_one_by_one) {
    block.one_by_one =
        random_conv_bn(rng, bc.out, bc.in, 1, 1, geometry_of(0, 0, bc.stride, bc.groups));
  }
  if (has_identity) {
    block.identity = random_bn(rng, bc.out);
  }
  return block;
}

TEST_CASE("merge_repvgg equals the three-branch RepVGG block", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(201);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const std::vector<block_case> cases = {{5, 5, 1, 1},  {3, 5, 1, 2}, {6, 6, 2, 1},
                                         {6, 10, 2, 2}, {7, 7, 7, 1}, {7, 7, 7, 2}};
  for (const block_case& bc : cases) {
    for (const index kernel_w : {3, 5}) {
      const bool has_identity = bc.in == bc.out && bc.stride == 1;
      CAPTURE(bc, kernel_w, has_identity);
      const st::repvgg_block block = random_repvgg(rng, bc, 3, kernel_w, true, has_identity);
      const activations x = random_input(rng, bc.in);
      check_block(x, block, st::merge_repvgg(block), taps(block.dense.conv) + 16);
    }
  }
  // Without the optional branches the recipe is the dense BN fold, bit for bit.
  const st::repvgg_block dense_only = random_repvgg(rng, {5, 5, 1, 1}, 3, 3, false, false);
  CHECK(same_bits(st::merge_repvgg(dense_only).layer,
                  st::fold_batch_norm(dense_only.dense.conv, dense_only.dense.bn).layer));
}

TEST_CASE("merge_repvgg is idempotent and independent of the merge order", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(202);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const st::repvgg_block block = random_repvgg(rng, {6, 6, 2, 1}, 3, 3, true, true);
  const st::conv2d merged = st::merge_repvgg(block).layer;

  // Re-merging the merged conv as a dense-only block behind an identity BN changes nothing
  // beyond the rounding of s = 1 / sqrt((1 - eps) + eps) (~3 u relative per value).
  const st::repvgg_block again{{merged, identity_bn(6, 1e-5)}, std::nullopt, std::nullopt};
  const st::conv2d remerged = st::merge_repvgg(again).layer;
  check_each_within(remerged, merged, 4.0 * unit_roundoff);

  // The same primitives composed by hand in another order give the same bits.
  const st::conv2d dense = st::fold_batch_norm(block.dense.conv, block.dense.bn).layer;
  const st::conv2d one =
      st::embed_kernel(st::fold_batch_norm(block.one_by_one->conv, block.one_by_one->bn).layer, 3,
                       3, dense.geometry)
          .layer;
  const st::conv2d identity =
      st::fold_batch_norm(st::identity_conv(6, 2, 3, 3, dense.geometry), *block.identity).layer;
  CHECK(same_bits(st::add_branches({identity, one, dense}).layer, merged));
  CHECK(same_bits(st::add_branches({one, dense, identity}).layer, merged));
}

TEST_CASE("merge_repvgg refuses blocks it cannot merge exactly", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(203);
  CAPTURE(seed);
  uniform_stream rng(seed);
  st::repvgg_block block = random_repvgg(rng, {3, 5, 1, 1}, 3, 3, true, false);
  block.identity = random_bn(rng, 5);
  CHECK_THROWS_WITH(st::merge_repvgg(block), Contains("structural::merge_repvgg") &&
                                                 Contains("in_channels == out_channels") &&
                                                 Contains("3 and 5"));
  block = random_repvgg(rng, {5, 5, 1, 2}, 3, 3, true, false);
  block.identity = random_bn(rng, 5);
  CHECK_THROWS_WITH(st::merge_repvgg(block), Contains("identity branch needs stride 1"));
  block = random_repvgg(rng, {5, 5, 1, 1}, 3, 3, true, true);
  block.one_by_one->bn.is_training = true;
  CHECK_THROWS_WITH(st::merge_repvgg(block), Contains("training mode"));
  block = random_repvgg(rng, {5, 5, 1, 1}, 3, 3, true, true);
  block.identity->has_running_stats = false;
  CHECK_THROWS_WITH(st::merge_repvgg(block), Contains("no running statistics"));
  block = random_repvgg(rng, {5, 5, 1, 1}, 3, 3, true, true);
  block.one_by_one->conv.geometry = geometry_of(1, 1, 1, 1);
  CHECK_THROWS_WITH(st::merge_repvgg(block), Contains("the 1x1 branch") && Contains("not aligned"));
  block = random_repvgg(rng, {6, 6, 2, 1}, 3, 3, true, true);
  block.one_by_one->conv.geometry.groups = 3;
  block.one_by_one->conv.weight = reparam::tensor<double, 4>(6, 2, 1, 1);
  block.one_by_one->conv.weight.setConstant(0.25);
  CHECK_THROWS_WITH(st::merge_repvgg(block), Contains("groups 3"));
  block = random_repvgg(rng, {5, 5, 1, 1}, 3, 3, true, true);
  block.dense.conv.geometry.dilation_h = 2;
  block.dense.conv.geometry.pad_top = block.dense.conv.geometry.pad_bottom = 2;
  CHECK_THROWS_WITH(st::merge_repvgg(block), Contains("dilation"));
}

// --- ACNet ---

activations reference(const activations& x, const st::acb_block& b) {
  return sum(sum(branch(x, b.square), branch(x, b.horizontal)), branch(x, b.vertical));
}

st::acb_block magnitude(const st::acb_block& b) {
  return {magnitude(b.square), magnitude(b.horizontal), magnitude(b.vertical)};
}

st::acb_block random_acb(uniform_stream& rng, const block_case& bc, index kernel, index pad,
                         st::padding_mode mode) {
  const index shift = kernel / 2;
  return {random_conv_bn(rng, bc.out, bc.in, kernel, kernel,
                         geometry_of(pad, pad, bc.stride, bc.groups, mode)),
          random_conv_bn(rng, bc.out, bc.in, 1, kernel,
                         geometry_of(pad - shift, pad, bc.stride, bc.groups, mode), true),
          random_conv_bn(rng, bc.out, bc.in, kernel, 1,
                         geometry_of(pad, pad - shift, bc.stride, bc.groups, mode))};
}

TEST_CASE("merge_acb equals the k x k + 1 x k + k x 1 block", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(204);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const std::vector<block_case> cases = {{3, 5, 1, 1}, {6, 10, 2, 2}, {7, 7, 7, 1}};
  for (const block_case& bc : cases) {
    for (const index kernel : {3, 5}) {
      for (const st::padding_mode mode : all_padding_modes) {
        // Padding k/2 ("same") and, for 5x5, over-padding 3 (ACNet's test covers both).
        for (const index pad : {kernel / 2, kernel / 2 + 1}) {
          CAPTURE(bc, kernel, pad, st::padding_mode_name(mode));
          const st::acb_block block = random_acb(rng, bc, kernel, pad, mode);
          const activations x = random_input(rng, bc.in);
          check_block(x, block, st::merge_acb(block), taps(block.square.conv) + 16);
        }
      }
    }
  }
}

TEST_CASE("merge_acb refuses the crop path and misaligned branches", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(205);
  CAPTURE(seed);
  uniform_stream rng(seed);
  // Square padding 0 < k/2: the 1 x k branch would need padding -1 on top (ACNet crops there).
  st::acb_block block = random_acb(rng, {3, 5, 1, 1}, 3, 1, st::padding_mode::zeros);
  block.square.conv.geometry = geometry_of(0, 0, 1, 1);
  block.horizontal.conv.geometry = geometry_of(0, 0, 1, 1);
  CHECK_THROWS_WITH(st::merge_acb(block), Contains("structural::merge_acb") &&
                                              Contains("horizontal") && Contains("crop"));
  block = random_acb(rng, {3, 5, 1, 1}, 3, 1, st::padding_mode::zeros);
  block.vertical.conv.geometry.stride_h = 2;
  CHECK_THROWS_WITH(st::merge_acb(block), Contains("vertical") && Contains("stride 2x1"));
  block = random_acb(rng, {3, 5, 1, 1}, 3, 1, st::padding_mode::zeros);
  block.horizontal.conv.geometry.mode = st::padding_mode::reflect;
  CHECK_THROWS_WITH(st::merge_acb(block), Contains("padding mode reflect"));
}

// --- DBB ---

// DBB's BNAndPad value: the BN's bias beta - mean gamma / sqrt(var + eps), i.e. bn(0).
Eigen::VectorXd bn_of_zero(const st::batch_norm& bn) {
  return output_at_zero(bn.channels(), [&](const activations& zero) { return norm(zero, bn); });
}

activations reference(const activations& x, const st::dbb_block& b) {
  const st::conv_geometry& g = b.origin.conv.geometry;
  const index kernel = b.origin.conv.kernel_h();
  activations y = plus_branch(branch(x, b.origin), x, b.one_by_one);
  activations pooled;
  if (b.avg_first) {
    const activations mid = branch(x, *b.avg_first);
    pooled = reparam::test::reference_avg_pool(pad_constant(mid, g, bn_of_zero(b.avg_first->bn)),
                                               kernel, g.stride_h, 0);
  } else {
    pooled = reparam::test::reference_avg_pool(x, kernel, g.stride_h, g.pad_top);
  }
  y = sum(y, norm(pooled, b.avg_bn));
  const activations mid = branch(x, b.kxk_first);
  return sum(y, norm(conv_padded_with(mid, b.kxk_second.conv, bn_of_zero(b.kxk_first.bn)),
                     b.kxk_second.bn));
}

st::dbb_block magnitude(const st::dbb_block& b) {
  return {magnitude(b.origin), magnitude(b.one_by_one), magnitude(b.avg_first),
          magnitude(b.avg_bn), magnitude(b.kxk_first),  magnitude(b.kxk_second)};
}

struct dbb_case {
  block_case channels;
  index kernel;
  index internal;  // width of the kxk branch's 1x1 (DBB: C, or 2C for depthwise)
  bool has_one_by_one;
  bool has_avg_first;
};

st::dbb_block random_dbb(uniform_stream& rng, const dbb_case& dc) {
  const block_case& bc = dc.channels;
  const index pad = dc.kernel / 2;
  const st::conv_geometry g = geometry_of(pad, pad, bc.stride, bc.groups);
  const st::conv_geometry pointwise = geometry_of(0, 0, 1, bc.groups);
  st::dbb_block block;
  block.origin = random_conv_bn(rng, bc.out, bc.in, dc.kernel, dc.kernel, g);
  if (dc.has_one_by_one) {
    block.one_by_one =
        random_conv_bn(rng, bc.out, bc.in, 1, 1, geometry_of(0, 0, bc.stride, bc.groups), true);
  }
  if (dc.has_avg_first) {
    block.avg_first = random_conv_bn(rng, bc.out, bc.in, 1, 1, pointwise);
  }
  block.avg_bn = random_bn(rng, bc.out);
  block.kxk_first = random_conv_bn(rng, dc.internal, bc.in, 1, 1, pointwise);
  block.kxk_second = random_conv_bn(rng, bc.out, dc.internal, dc.kernel, dc.kernel, g, true);
  return block;
}

TEST_CASE("merge_dbb equals the four-branch Diverse Branch Block", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(206);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const std::vector<dbb_case> cases = {
      {{3, 5, 1, 1}, 3, 3, true, true},   {{3, 5, 1, 2}, 3, 3, true, true},
      {{6, 10, 2, 2}, 3, 6, true, true},  {{6, 10, 2, 1}, 5, 6, false, true},
      {{5, 5, 1, 1}, 5, 5, true, false},  {{7, 7, 7, 1}, 3, 14, false, false},
      {{7, 7, 7, 2}, 3, 14, false, false}};
  for (const dbb_case& dc : cases) {
    const block_case& bc = dc.channels;
    CAPTURE(bc, dc.kernel, dc.internal, dc.has_one_by_one, dc.has_avg_first);
    const st::dbb_block block = random_dbb(rng, dc);
    const activations x = random_input(rng, bc.in);
    // Longest chain: 1x1 (C/g taps) -> BN -> k x k over D/g channels -> BN, then the sum.
    const index terms = bc.in / bc.groups + taps(block.kxk_second.conv) + 24;
    check_block(x, block, st::merge_dbb(block), terms);
  }
}

TEST_CASE("merge_dbb refuses blocks it cannot merge exactly", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(207);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const dbb_case base{{3, 5, 1, 1}, 3, 3, true, true};
  st::dbb_block block = random_dbb(rng, base);
  block.kxk_first.conv.bias = Eigen::VectorXd::Constant(3, 0.5);
  CHECK_THROWS_WITH(st::merge_dbb(block), Contains("structural::merge_dbb") &&
                                              Contains("1x1-kxk") && Contains("no bias"));
  block = random_dbb(rng, base);
  block.avg_first->conv.bias = Eigen::VectorXd::Constant(5, 0.5);
  CHECK_THROWS_WITH(st::merge_dbb(block), Contains("average-pool") && Contains("no bias"));
  block = random_dbb(rng, base);
  block.origin.conv.geometry.mode = st::padding_mode::reflect;
  CHECK_THROWS_WITH(st::merge_dbb(block),
                    Contains("average-pool branch copies") && Contains("mode reflect"));
  block = random_dbb(rng, base);
  block.avg_first.reset();
  CHECK_THROWS_WITH(st::merge_dbb(block), Contains("depthwise form") && Contains("3 and 5"));
  block = random_dbb(rng, base);
  block.kxk_second.bn.is_training = true;
  CHECK_THROWS_WITH(st::merge_dbb(block), Contains("training mode"));
  block = random_dbb(rng, base);
  block.kxk_first.conv.geometry.stride_h = 2;
  CHECK_THROWS_WITH(st::merge_dbb(block), Contains("1x1-kxk") && Contains("stride 1"));
}

// --- MobileOne ---

activations reference(const activations& x, const st::mobileone_block& b) {
  activations y = branch(x, b.branches.front());
  for (std::size_t i = 1; i < b.branches.size(); ++i) {
    y = sum(y, branch(x, b.branches[i]));
  }
  return plus_identity(plus_branch(y, x, b.scale), x, b.identity);
}

st::mobileone_block magnitude(const st::mobileone_block& b) {
  return {magnitude(b.branches), magnitude(b.scale), magnitude(b.identity)};
}

st::mobileone_block random_mobileone(uniform_stream& rng, const block_case& bc, index kernel,
                                     index branch_count) {
  const st::conv_geometry g = geometry_of(kernel / 2, kernel / 2, bc.stride, bc.groups);
  st::mobileone_block block;
  for (index i = 0; i < branch_count; ++i) {
    block.branches.push_back(random_conv_bn(rng, bc.out, bc.in, kernel, kernel, g));
  }
  if (kernel > 1) {
    block.scale = random_conv_bn(rng, bc.out, bc.in, 1, 1, geometry_of(0, 0, bc.stride, bc.groups));
  }
  if (bc.in == bc.out && bc.stride == 1) {
    block.identity = random_bn(rng, bc.out);
  }
  return block;
}

TEST_CASE("merge_mobileone equals the over-parameterised MobileOne block", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(208);
  CAPTURE(seed);
  uniform_stream rng(seed);
  struct mobileone_case {
    block_case channels;
    index kernel;
    index branch_count;
  };
  // Depthwise 3x3 (stride 1 with identity, stride 2 without), grouped, pointwise 1x1.
  const std::vector<mobileone_case> cases = {{{7, 7, 7, 1}, 3, 3},
                                             {{7, 7, 7, 2}, 3, 4},
                                             {{6, 6, 2, 1}, 3, 2},
                                             {{5, 5, 1, 1}, 1, 3},
                                             {{5, 7, 1, 1}, 1, 2}};
  for (const mobileone_case& mc : cases) {
    const block_case& bc = mc.channels;
    CAPTURE(bc, mc.kernel, mc.branch_count);
    const st::mobileone_block block = random_mobileone(rng, bc, mc.kernel, mc.branch_count);
    const activations x = random_input(rng, bc.in);
    check_block(x, block, st::merge_mobileone(block),
                taps(block.branches.front().conv) + 8 + 2 * mc.branch_count);
  }
}

TEST_CASE("merge_mobileone refuses blocks it cannot merge", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(209);
  CAPTURE(seed);
  uniform_stream rng(seed);
  st::mobileone_block block = random_mobileone(rng, {7, 7, 7, 1}, 3, 2);
  st::mobileone_block empty = block;
  empty.branches.clear();
  CHECK_THROWS_WITH(st::merge_mobileone(empty),
                    Contains("structural::merge_mobileone") && Contains("no k x k conv branch"));
  st::mobileone_block strided = random_mobileone(rng, {7, 7, 7, 2}, 3, 2);
  strided.identity = random_bn(rng, 7);
  CHECK_THROWS_WITH(st::merge_mobileone(strided), Contains("identity branch needs stride 1"));
  block.branches[1] =
      random_conv_bn(rng, 7, 7, 5, 5, geometry_of(2, 2, 1, 7));  // a different kernel size
  CHECK_THROWS_WITH(st::merge_mobileone(block),
                    Contains("k x k branch 1") && Contains("weight shape [7, 1, 5, 5]"));
}

// --- RepLKNet ---

activations reference(const activations& x, const st::replknet_block& b) {
  return plus_branch(branch(x, b.large), x, b.small);
}

st::replknet_block magnitude(const st::replknet_block& b) {
  return {magnitude(b.large), magnitude(b.small)};
}

TEST_CASE("merge_replknet equals the large + small kernel block", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(210);
  CAPTURE(seed);
  uniform_stream rng(seed);
  const std::vector<block_case> cases = {{5, 5, 5, 1}, {5, 5, 5, 2}, {7, 7, 7, 1}, {3, 5, 1, 2}};
  for (const block_case& bc : cases) {
    for (const index small : {3, 5}) {
      CAPTURE(bc, small);
      const st::replknet_block block{
          random_conv_bn(rng, bc.out, bc.in, 7, 7, geometry_of(3, 3, bc.stride, bc.groups)),
          random_conv_bn(rng, bc.out, bc.in, small, small,
                         geometry_of(small / 2, small / 2, bc.stride, bc.groups), true)};
      const activations x = random_input(rng, bc.in);
      check_block(x, block, st::merge_replknet(block), taps(block.large.conv) + 12);
    }
  }
  const st::replknet_block large_only{random_conv_bn(rng, 5, 5, 7, 7, geometry_of(3, 3, 1, 5)),
                                      std::nullopt};
  CHECK(same_bits(st::merge_replknet(large_only).layer,
                  st::fold_batch_norm(large_only.large.conv, large_only.large.bn).layer));
}

TEST_CASE("merge_replknet refuses a misaligned small kernel", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(211);
  CAPTURE(seed);
  uniform_stream rng(seed);
  st::replknet_block block{random_conv_bn(rng, 5, 5, 7, 7, geometry_of(3, 3, 1, 5)),
                           random_conv_bn(rng, 5, 5, 3, 3, geometry_of(3, 3, 1, 5))};
  CHECK_THROWS_WITH(st::merge_replknet(block), Contains("structural::merge_replknet") &&
                                                   Contains("small-kernel") &&
                                                   Contains("not aligned"));
  block.small->conv.geometry = geometry_of(1, 1, 2, 5);
  CHECK_THROWS_WITH(st::merge_replknet(block), Contains("stride 2x2"));
}

// --- UniRepLKNet ---

activations reference(const activations& x, const st::unireplknet_block& b) {
  activations y = branch(x, b.large);
  for (const st::conv_bn& d : b.dilated) {
    y = sum(y, branch(x, d));
  }
  return y;
}

st::unireplknet_block magnitude(const st::unireplknet_block& b) {
  return {magnitude(b.large), magnitude(b.dilated)};
}

struct dilated_case {
  index kernel;
  index dilation;
};

st::unireplknet_block random_unireplknet(uniform_stream& rng, const block_case& bc, index large,
                                         const std::vector<dilated_case>& branches) {
  st::unireplknet_block block{
      random_conv_bn(rng, bc.out, bc.in, large, large,
                     geometry_of(large / 2, large / 2, bc.stride, bc.groups)),
      {}};
  for (const dilated_case& dc : branches) {
    const index pad = dc.dilation * (dc.kernel - 1) / 2;
    block.dilated.push_back(random_conv_bn(
        rng, bc.out, bc.in, dc.kernel, dc.kernel,
        geometry_of(pad, pad, bc.stride, bc.groups, st::padding_mode::zeros, dc.dilation)));
  }
  return block;
}

TEST_CASE("merge_unireplknet equals the large + dilated kernel block", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(212);
  CAPTURE(seed);
  uniform_stream rng(seed);
  // UniRepLKNet's presets shrunk to a 9x7 input: L = 7 with (k, r) = (5, 1), (3, 2), (3, 3);
  // L = 9 with (5, 1), (5, 2), (3, 3), (3, 4).
  const std::vector<dilated_case> seven = {{5, 1}, {3, 2}, {3, 3}};
  const std::vector<dilated_case> nine = {{5, 1}, {5, 2}, {3, 3}, {3, 4}};
  for (const block_case& bc :
       {block_case{5, 5, 5, 1}, block_case{5, 5, 5, 2}, block_case{6, 6, 2, 1}}) {
    for (const bool is_nine : {false, true}) {
      CAPTURE(bc, is_nine);
      const st::unireplknet_block block =
          random_unireplknet(rng, bc, is_nine ? 9 : 7, is_nine ? nine : seven);
      const activations x = random_input(rng, bc.in);
      check_block(x, block, st::merge_unireplknet(block), taps(block.large.conv) + 16);
    }
  }
}

TEST_CASE("merge_unireplknet refuses dilated branches that do not fit", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(213);
  CAPTURE(seed);
  uniform_stream rng(seed);
  // r (k - 1) + 1 = 9 > 7.
  st::unireplknet_block block = random_unireplknet(rng, {5, 5, 5, 1}, 7, {{3, 4}});
  CHECK_THROWS_WITH(st::merge_unireplknet(block), Contains("structural::merge_unireplknet") &&
                                                      Contains("dilated branch 0") &&
                                                      Contains("smaller 7x7"));
  block = random_unireplknet(rng, {5, 5, 5, 1}, 7, {{3, 2}});
  block.large.conv.geometry.dilation_h = 2;
  CHECK_THROWS_WITH(st::merge_unireplknet(block), Contains("must not be dilated"));
  block = random_unireplknet(rng, {5, 5, 5, 1}, 7, {{3, 2}});
  block.dilated[0].conv.geometry.pad_left = 1;
  CHECK_THROWS_WITH(st::merge_unireplknet(block), Contains("not aligned"));
}

// --- QARepVGG ---

activations reference(const activations& x, const st::qarepvgg_block& b) {
  activations y = branch(x, b.dense);
  if (b.one_by_one) {
    y = sum(y, conv(x, *b.one_by_one));
  }
  if (b.has_identity) {
    y = sum(y, x);
  }
  return norm(y, b.post_bn);
}

st::qarepvgg_block magnitude(const st::qarepvgg_block& b) {
  return {magnitude(b.dense), magnitude(b.one_by_one), b.has_identity, magnitude(b.post_bn)};
}

st::qarepvgg_block random_qarepvgg(uniform_stream& rng, const block_case& bc, bool has_one_by_one,
                                   bool has_one_by_one_bias) {
  st::qarepvgg_block block;
  block.dense = random_conv_bn(rng, bc.out, bc.in, 3, 3, geometry_of(1, 1, bc.stride, bc.groups));
  if (has_one_by_one) {
    block.one_by_one = random_conv(rng, bc.out, bc.in, 1, 1,
                                   geometry_of(0, 0, bc.stride, bc.groups), has_one_by_one_bias);
  }
  block.has_identity = bc.in == bc.out && bc.stride == 1;
  block.post_bn = random_bn(rng, bc.out);
  return block;
}

TEST_CASE("merge_qarepvgg equals the block with its post-sum BatchNorm", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(214);
  CAPTURE(seed);
  uniform_stream rng(seed);
  struct qa_case {
    block_case channels;
    bool has_one_by_one;
    bool has_bias;
  };
  const std::vector<qa_case> cases = {{{5, 5, 1, 1}, true, false},  {{5, 5, 1, 1}, true, true},
                                      {{6, 6, 2, 1}, true, false},  {{3, 5, 1, 2}, true, false},
                                      {{7, 7, 7, 1}, false, false}, {{6, 10, 2, 2}, true, true}};
  for (const qa_case& qc : cases) {
    const block_case& bc = qc.channels;
    CAPTURE(bc, qc.has_one_by_one, qc.has_bias);
    const st::qarepvgg_block block = random_qarepvgg(rng, bc, qc.has_one_by_one, qc.has_bias);
    const activations x = random_input(rng, bc.in);
    check_block(x, block, st::merge_qarepvgg(block), taps(block.dense.conv) + 16);
  }
}

TEST_CASE("merge_qarepvgg refuses an identity it cannot represent", "[structural]") {
  const std::uint64_t seed = reparam::test::test_seed(215);
  CAPTURE(seed);
  uniform_stream rng(seed);
  st::qarepvgg_block block = random_qarepvgg(rng, {5, 5, 1, 2}, true, false);
  block.has_identity = true;
  CHECK_THROWS_WITH(st::merge_qarepvgg(block), Contains("structural::merge_qarepvgg") &&
                                                   Contains("identity branch needs stride 1"));
  block = random_qarepvgg(rng, {3, 5, 1, 1}, true, false);
  block.has_identity = true;
  CHECK_THROWS_WITH(st::merge_qarepvgg(block), Contains("in_channels == out_channels"));
  block = random_qarepvgg(rng, {5, 5, 1, 1}, true, false);
  block.post_bn.is_training = true;
  CHECK_THROWS_WITH(st::merge_qarepvgg(block), Contains("training mode"));
}

}  // namespace

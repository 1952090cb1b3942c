// SPDX-License-Identifier: Apache-2.0
// Block recipes of structural re-parameterization (the T-numbered transforms of conv_merge.hpp and
// linear_merge.hpp, composed): the training-time multi-branch conv blocks of RepVGG (arXiv
// 2101.03697), ACNet (arXiv 1908.03930), Diverse Branch Block (arXiv 2103.13425), MobileOne (arXiv
// 2206.04040), RepLKNet (arXiv 2203.06717), UniRepLKNet (arXiv 2311.15599) and QARepVGG (arXiv
// 2212.01593), each as a plain struct of layers, and their merge into one inference conv by
// composing the primitives of conv_merge.hpp (T1 BN fold, T3 add, T4 embed, T5 identity, T6
// sequential, T8 avg-pool, T9 dilated, T14 post-sum BN). Hyper-parameters live in each conv's
// geometry and are checked, never inferred from the kernel size. Every recipe is exact or refuses
// with reparam::error; each allocates its result and keeps no state.
#ifndef REPARAM_STRUCTURAL_CONV_RECIPES_HPP
#define REPARAM_STRUCTURAL_CONV_RECIPES_HPP

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/structural/conv_merge.hpp>
#include <reparam/structural/types.hpp>

namespace reparam::structural {

/// A conv followed by an inference BatchNorm over its output channels: bn(conv(x)).
struct conv_bn {
  conv2d conv;
  batch_norm bn;
};

/// RepVGG block (training form): y = bn_d(conv_kxk(x)) + bn_1(conv_1x1(x)) + bn_id(x), summed
/// before the activation. The 1x1 branch uses padding p - k/2 of the dense padding p, same stride
/// and groups; the identity branch exists only for C_in == C_out and stride 1.
struct repvgg_block {
  conv_bn dense;
  std::optional<conv_bn> one_by_one;
  std::optional<batch_norm> identity;
};

/// ACNet asymmetric convolution block: y = bn_s(conv_kxk(x)) + bn_h(conv_1xk(x)) +
/// bn_v(conv_kx1(x)). The 1 x k branch pads (p - k/2, p) and the k x 1 branch (p, p - k/2)
/// (top/bottom, left/right) of the square padding p; same stride, dilation and groups.
struct acb_block {
  conv_bn square;
  conv_bn horizontal;  // 1 x k
  conv_bn vertical;    // k x 1
};

/// Diverse Branch Block (training form), four branches summed:
///   origin:      bn(conv_kxk(x))                         (defines the output geometry)
///   one_by_one:  bn(conv_1x1(x))                         (DBB has it when groups < out_channels)
///   average:     avg_bn(avgpool(bn_pad(conv_1x1(x))))    with avg_first = {conv_1x1, bn_pad};
///                avg_bn(avgpool(x))                      without avg_first (depthwise form,
///                                                        needs C_in == C_out)
///   kxk:         bn(conv_kxk'(bn_pad(conv_1x1(x))))      with kxk_first = {conv_1x1, bn_pad},
///                                                        kxk_second = {conv_kxk', bn}
/// bn_pad is DBB's BNAndPad: BatchNorm, then pad every channel with its BN bias
/// beta - mean gamma / sqrt(var + eps). The average pool copies the origin's kernel size, stride
/// and padding (AvgPool(k, stride, pad 0) after a BNAndPad(p), or AvgPool(k, stride, p) in the
/// depthwise form), so the origin needs a square kernel, equal strides, symmetric padding,
/// dilation 1 and zeros padding mode. kxk_second.conv.geometry holds the padding BNAndPad applies
/// (DBB's conv itself pads 0) and the stride/dilation/groups of the k x k conv. The 1x1 conv of
/// the kxk branch is its effective kernel (DBB's IdentityBasedConv1x1: weight + identity). The
/// 1x1 convs in front of a BNAndPad have no bias (as in DBB; a bias is refused, see merge_dbb).
struct dbb_block {
  conv_bn origin;
  std::optional<conv_bn> one_by_one;
  std::optional<conv_bn> avg_first;
  batch_norm avg_bn;
  conv_bn kxk_first;
  conv_bn kxk_second;
};

/// MobileOne block (training form): y = sum_i bn_i(conv_kxk_i(x)) + bn_s(conv_1x1(x)) + bn_id(x).
/// `branches` are the n over-parameterised k x k conv-BN branches (at least one; all the same
/// shape and geometry); `scale` is the 1x1 conv-BN (present when k > 1); `identity` the BN-only
/// skip (C_in == C_out, stride 1). Depthwise (groups = C) and pointwise (k = 1) blocks alike.
struct mobileone_block {
  std::vector<conv_bn> branches;
  std::optional<conv_bn> scale;
  std::optional<batch_norm> identity;
};

/// RepLKNet re-parameterised large kernel: y = bn_L(dwconv_KxK(x)) + bn_s(dwconv_kxk(x)), the
/// small kernel padded k/2 where the large one pads K/2 (any aligned padding is accepted).
struct replknet_block {
  conv_bn large;
  std::optional<conv_bn> small;
};

/// UniRepLKNet dilated re-param block: y = bn_L(dwconv_LxL(x)) + sum_i bn_i(dwconv_kixki,ri(x)),
/// branch i a k_i x k_i conv with dilation r_i and padding r_i (k_i - 1) / 2, r_i (k_i - 1) + 1 <=
/// L.
struct unireplknet_block {
  conv_bn large;
  std::vector<conv_bn> dilated;
};

/// QARepVGG block: y = post_bn(bn_d(conv_3x3(x)) + conv_1x1(x) + x), the 1x1 without BN (its bias,
/// if any, kept) and the identity without BN (present when has_identity; C_in == C_out, stride 1).
struct qarepvgg_block {
  conv_bn dense;
  std::optional<conv2d> one_by_one;
  bool has_identity = false;
  batch_norm post_bn;
};

namespace detail::recipe_impl {

using reparam::detail::check;
using reparam::detail::concat;

/// Sums labelled branches (T3).
class branch_list {
 public:
  void add(conv2d layer, std::string label) {
    layers_.push_back(std::move(layer));
    labels_.push_back(std::move(label));
  }

  conv2d sum(const char* function) const {
    std::vector<const conv2d*> pointers;
    for (const conv2d& layer : layers_) {
      pointers.push_back(&layer);
    }
    return conv_impl::add(function, pointers, labels_);
  }

 private:
  std::vector<conv2d> layers_;
  std::vector<std::string> labels_;
};

/// T1 on one conv-BN pair.
inline conv2d fold(const char* function, const std::string& what, const conv_bn& pair) {
  return conv_impl::fold_bn(function, what, pair.conv, pair.bn);
}

/// T4 into the kernel size and geometry of `reference`.
inline conv2d embed_like(const char* function, const std::string& what, const conv2d& layer,
                         const conv2d& reference) {
  return conv_impl::embed(function, what, layer, reference.kernel_h(), reference.kernel_w(),
                          reference.geometry);
}

/// T5 (+ T1 when `bn` is given) shaped like `reference`, after the recipe-level checks.
inline conv2d identity_like(const char* function, const conv2d& reference, const batch_norm* bn) {
  const conv_geometry& g = reference.geometry;
  check(reference.in_channels() == reference.out_channels(), function,
        "the identity branch needs in_channels == out_channels, got ", reference.in_channels(),
        " and ", reference.out_channels());
  check(g.stride_h == 1 && g.stride_w == 1, function, "the identity branch needs stride 1, got ",
        g.stride_h, "x", g.stride_w);
  const conv2d unit = conv_impl::identity(function, reference.out_channels(), g.groups,
                                          reference.kernel_h(), reference.kernel_w(), g);
  return bn == nullptr ? unit : conv_impl::fold_bn(function, "the identity branch", unit, *bn);
}

}  // namespace detail::recipe_impl

/// Merges a RepVGG block into one conv with the dense branch's kernel and geometry: T1 on each
/// branch, T4 for the 1x1, T5 + T1 for the identity, T3. Groups supported. Exact.
/// Throws reparam::error if a BN cannot be folded (training mode, no running statistics, channel
/// mismatch), the 1x1 is not aligned with the dense conv, or the identity is present with
/// C_in != C_out, stride != 1, or padding that does not keep pixels in place.
inline merge_result<conv2d> merge_repvgg(const repvgg_block& block) {
  constexpr const char* function = "structural::merge_repvgg";
  namespace impl = detail::recipe_impl;
  const conv2d dense = impl::fold(function, "the dense branch", block.dense);
  impl::branch_list branches;
  if (block.one_by_one) {
    branches.add(impl::embed_like(function, "the 1x1 branch",
                                  impl::fold(function, "the 1x1 branch", *block.one_by_one), dense),
                 "the 1x1 branch");
  }
  if (block.identity) {
    branches.add(impl::identity_like(function, dense, &*block.identity), "the identity branch");
  }
  branches.add(dense, "the dense branch");
  return {branches.sum(function), true, ""};
}

/// Merges an ACNet block: T1 on each branch, T4 of the 1 x k and k x 1 kernels into the square
/// one's central row / column, T3. Exact for every padding mode. Throws reparam::error if a BN
/// cannot be folded or an asymmetric branch is not aligned with the square conv (ACNet's crop
/// path, square padding < k/2, is refused: the branch would need a negative padding).
inline merge_result<conv2d> merge_acb(const acb_block& block) {
  constexpr const char* function = "structural::merge_acb";
  namespace impl = detail::recipe_impl;
  const conv2d square = impl::fold(function, "the square branch", block.square);
  impl::branch_list branches;
  branches.add(square, "the square branch");
  branches.add(impl::embed_like(
                   function, "the horizontal (1xk) branch",
                   impl::fold(function, "the horizontal (1xk) branch", block.horizontal), square),
               "the horizontal (1xk) branch");
  branches.add(
      impl::embed_like(function, "the vertical (kx1) branch",
                       impl::fold(function, "the vertical (kx1) branch", block.vertical), square),
      "the vertical (kx1) branch");
  return {branches.sum(function), true, ""};
}

/// Merges a Diverse Branch Block: T1 (origin, 1x1), T4 (1x1), T8 + T6 + T1 (average branch, the
/// BNAndPad making T6 exact), T6 + T1 (1x1 -> k x k branch), T3. Grouped blocks supported. Exact.
/// Throws reparam::error if a BN cannot be folded, the origin's geometry cannot host the average
/// pool (see dbb_block), the depthwise-form average branch has C_in != C_out, a 1x1 conv before
/// a BNAndPad has a bias, group counts differ, or a branch is not aligned with the origin.
inline merge_result<conv2d> merge_dbb(const dbb_block& block) {
  constexpr const char* function = "structural::merge_dbb";
  namespace impl = detail::recipe_impl;
  using reparam::detail::check;
  const conv2d origin = impl::fold(function, "the origin (kxk) branch", block.origin);
  const conv_geometry& g = origin.geometry;
  check(origin.kernel_h() == origin.kernel_w() && g.stride_h == g.stride_w &&
            g.pad_top == g.pad_bottom && g.pad_top == g.pad_left && g.pad_top == g.pad_right &&
            g.dilation_h == 1 && g.dilation_w == 1 && g.mode == padding_mode::zeros,
        function,
        "the average-pool branch copies the origin's kernel, stride and padding, so the origin "
        "needs a square kernel, equal strides, symmetric padding, dilation 1 and zeros padding "
        "mode; got kernel ",
        origin.kernel_h(), "x", origin.kernel_w(), ", stride ", g.stride_h, "x", g.stride_w,
        ", padding ", detail::conv_impl::padding_text(g), ", dilation ", g.dilation_h, "x",
        g.dilation_w, ", mode ", padding_mode_name(g.mode));
  impl::branch_list branches;
  branches.add(origin, "the origin (kxk) branch");
  if (block.one_by_one) {
    branches.add(
        impl::embed_like(function, "the 1x1 branch",
                         impl::fold(function, "the 1x1 branch", *block.one_by_one), origin),
        "the 1x1 branch");
  }
  const index kernel = origin.kernel_h();
  // BNAndPad pads with the BN's bias t; the merge (T6) assumes the pad holds what the 1x1 + BN
  // layer outputs for a zero input, s b + t, so the two agree only for a bias-free 1x1 (as DBB's).
  const auto check_no_bias = [function](const conv2d& conv, const char* what) {
    check(conv.bias.size() == 0 || conv.bias.isZero(0.0), function, what,
          " 1x1 conv before a BNAndPad must have no bias (DBB's has none): BNAndPad pads with the "
          "BN bias, which is the layer's output on a padded zero only without a conv bias");
  };
  check_no_bias(block.kxk_first.conv, "the 1x1-kxk branch's");
  conv2d average;
  if (block.avg_first) {
    check_no_bias(block.avg_first->conv, "the average-pool branch's");
    const conv2d pool = detail::conv_impl::avg_pool(function, block.avg_first->conv.out_channels(),
                                                    kernel, g.stride_h, g.pad_top, g.groups, true);
    average =
        detail::conv_impl::sequential(function, "the average-pool branch: ", block.avg_first->conv,
                                      &block.avg_first->bn, pool, true);
  } else {
    check(origin.in_channels() == origin.out_channels(), function,
          "the average-pool branch without a 1x1 conv (depthwise form) needs in_channels == "
          "out_channels, got ",
          origin.in_channels(), " and ", origin.out_channels());
    average = detail::conv_impl::avg_pool(function, origin.in_channels(), kernel, g.stride_h,
                                          g.pad_top, g.groups, true);
  }
  branches.add(
      detail::conv_impl::fold_bn(function, "the average-pool branch", average, block.avg_bn),
      "the average-pool branch");
  const conv2d chain =
      detail::conv_impl::sequential(function, "the 1x1-kxk branch: ", block.kxk_first.conv,
                                    &block.kxk_first.bn, block.kxk_second.conv, true);
  branches.add(impl::embed_like(function, "the 1x1-kxk branch",
                                detail::conv_impl::fold_bn(function, "the 1x1-kxk branch", chain,
                                                           block.kxk_second.bn),
                                origin),
               "the 1x1-kxk branch");
  return {branches.sum(function), true, ""};
}

/// Merges a MobileOne block: T1 on each of the n k x k branches and the 1x1 scale branch, T4 for
/// the scale branch, T5 + T1 for the identity, T3. Exact. Throws reparam::error if there is no
/// k x k branch, a BN cannot be folded, branches differ in shape or geometry, the scale branch is
/// not aligned, or the identity is present with C_in != C_out or stride != 1.
inline merge_result<conv2d> merge_mobileone(const mobileone_block& block) {
  constexpr const char* function = "structural::merge_mobileone";
  namespace impl = detail::recipe_impl;
  using reparam::detail::check;
  using reparam::detail::concat;
  check(!block.branches.empty(), function,
        "the block has no k x k conv branch (at least one is needed to define the kernel)");
  impl::branch_list branches;
  std::vector<conv2d> convs;
  for (std::size_t i = 0; i < block.branches.size(); ++i) {
    const std::string name = concat("k x k branch ", i);
    convs.push_back(impl::fold(function, name, block.branches[i]));
  }
  const conv2d& reference = convs.front();
  if (block.scale) {
    branches.add(
        impl::embed_like(function, "the scale (1x1) branch",
                         impl::fold(function, "the scale (1x1) branch", *block.scale), reference),
        "the scale (1x1) branch");
  }
  if (block.identity) {
    branches.add(impl::identity_like(function, reference, &*block.identity), "the identity branch");
  }
  for (std::size_t i = 0; i < convs.size(); ++i) {
    branches.add(convs[i], concat("k x k branch ", i));
  }
  return {branches.sum(function), true, ""};
}

/// Merges a RepLKNet large-kernel block: T1 on both, T4 of the small kernel into the large one,
/// T3. Exact. Throws reparam::error if a BN cannot be folded or the small branch is not aligned
/// (stride, dilation, groups, padding p_small = p_large - (K - k)/2).
inline merge_result<conv2d> merge_replknet(const replknet_block& block) {
  constexpr const char* function = "structural::merge_replknet";
  namespace impl = detail::recipe_impl;
  const conv2d large = impl::fold(function, "the large-kernel branch", block.large);
  impl::branch_list branches;
  branches.add(large, "the large-kernel branch");
  if (block.small) {
    branches.add(
        impl::embed_like(function, "the small-kernel branch",
                         impl::fold(function, "the small-kernel branch", *block.small), large),
        "the small-kernel branch");
  }
  return {branches.sum(function), true, ""};
}

/// Merges a UniRepLKNet dilated re-param block: T1 on every branch, T9 (dilated -> dense
/// r (k - 1) + 1 kernel), T4 into the large kernel, T3. Exact. Throws reparam::error if a BN
/// cannot be folded, the large conv is dilated, or a branch's dense kernel is larger than the
/// large one or not aligned with it.
inline merge_result<conv2d> merge_unireplknet(const unireplknet_block& block) {
  constexpr const char* function = "structural::merge_unireplknet";
  namespace impl = detail::recipe_impl;
  using reparam::detail::check;
  using reparam::detail::concat;
  const conv2d large = impl::fold(function, "the large-kernel branch", block.large);
  check(large.geometry.dilation_h == 1 && large.geometry.dilation_w == 1, function,
        "the large-kernel branch must not be dilated, got dilation ", large.geometry.dilation_h,
        "x", large.geometry.dilation_w);
  impl::branch_list branches;
  branches.add(large, "the large-kernel branch");
  for (std::size_t i = 0; i < block.dilated.size(); ++i) {
    const std::string name = concat("dilated branch ", i);
    const conv2d folded = impl::fold(function, name, block.dilated[i]);
    const conv2d dense = dilated_to_dense(folded).layer;
    branches.add(impl::embed_like(function, name, dense, large), name);
  }
  return {branches.sum(function), true, ""};
}

/// Merges a QARepVGG block: T1 on the dense branch, T4 for the BN-free 1x1, T5 for the BN-free
/// identity, T3, then T14 (the post-sum BN folded with the merged bias). Exact. Throws
/// reparam::error if a BN cannot be folded, the 1x1 is not aligned, or the identity is present
/// with C_in != C_out or stride != 1.
inline merge_result<conv2d> merge_qarepvgg(const qarepvgg_block& block) {
  constexpr const char* function = "structural::merge_qarepvgg";
  namespace impl = detail::recipe_impl;
  const conv2d dense = impl::fold(function, "the dense branch", block.dense);
  impl::branch_list branches;
  branches.add(dense, "the dense branch");
  if (block.one_by_one) {
    branches.add(impl::embed_like(function, "the 1x1 branch", *block.one_by_one, dense),
                 "the 1x1 branch");
  }
  if (block.has_identity) {
    branches.add(impl::identity_like(function, dense, nullptr), "the identity branch");
  }
  return {detail::conv_impl::fold_bn(function, "the merged conv", branches.sum(function),
                                     block.post_bn),
          true, ""};
}

}  // namespace reparam::structural

#endif  // REPARAM_STRUCTURAL_CONV_RECIPES_HPP

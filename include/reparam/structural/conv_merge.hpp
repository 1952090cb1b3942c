// SPDX-License-Identifier: Apache-2.0
// The convolution primitives of structural re-parameterization (transforms
// numbered T1-T16 across conv_merge.hpp and linear_merge.hpp): BatchNorm folding into a conv or
// transposed conv (T1), branch addition (T3), centred kernel embedding (T4), the identity as a conv
// (T5), the sequential 1x1 -> (BN) -> kxk merge (T6), output concatenation (T7), average pooling as
// a conv (T8), dilated -> dense kernels (T9) and the post-sum BatchNorm fold (T14). These are DBB's
// "Transforms I-VI" (Ding et al., Diverse Branch Block, arXiv 2103.13425 section 3) plus the
// RepVGG identity (arXiv 2101.03697 section 3.3) and UniRepLKNet's dilated kernel conversion
// (arXiv 2311.15599). The block recipes in conv_recipes.hpp compose them.
//
// Every function takes const layers and returns a new one, computes in double, and either returns
// an exact result (merge_result::is_exact) or refuses with reparam::error naming the condition
// that fails; no primitive here returns an approximate result. Every function allocates its
// result (merges run offline, once per model) and keeps no state, so concurrent calls are safe.
#ifndef REPARAM_STRUCTURAL_CONV_MERGE_HPP
#define REPARAM_STRUCTURAL_CONV_MERGE_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/tensor_views.hpp>
#include <reparam/structural/types.hpp>

namespace reparam::structural {
namespace detail::conv_impl {

using reparam::detail::check;
using reparam::detail::concat;

inline std::string shape_text(const tensor<double, 4>& w) {
  return concat("[", w.dimension(0), ", ", w.dimension(1), ", ", w.dimension(2), ", ",
                w.dimension(3), "]");
}

inline std::string stride_text(const conv_geometry& g) {
  return concat(g.stride_h, "x", g.stride_w);
}

inline std::string dilation_text(const conv_geometry& g) {
  return concat(g.dilation_h, "x", g.dilation_w);
}

inline std::string padding_text(const conv_geometry& g) {
  return concat("(top ", g.pad_top, ", bottom ", g.pad_bottom, ", left ", g.pad_left, ", right ",
                g.pad_right, ")");
}

inline std::string padding_text(index top, index bottom, index left, index right) {
  return concat("(top ", top, ", bottom ", bottom, ", left ", left, ", right ", right, ")");
}

/// Geometry sanity: strides, dilations and groups >= 1, padding >= 0.
inline void check_geometry(const char* function, const std::string& what, const conv_geometry& g) {
  check(g.stride_h >= 1 && g.stride_w >= 1, function, what, " stride ", stride_text(g),
        " must be >= 1");
  check(g.dilation_h >= 1 && g.dilation_w >= 1, function, what, " dilation ", dilation_text(g),
        " must be >= 1");
  check(g.pad_top >= 0 && g.pad_bottom >= 0 && g.pad_left >= 0 && g.pad_right >= 0, function, what,
        " padding ", padding_text(g), " must be >= 0");
  check(g.groups >= 1, function, what, " groups ", g.groups, " must be >= 1");
}

/// A well-formed conv: non-empty weight, groups dividing O, bias of O values (or empty = none),
/// finite values (checked once per call; merges are offline, so O(weights) is fine here).
inline void check_conv(const char* function, const std::string& what, const conv2d& c) {
  check_geometry(function, what, c.geometry);
  check(c.weight.size() > 0, function, what, " has an empty weight ", shape_text(c.weight));
  check(c.out_channels() % c.geometry.groups == 0, function, what, ": groups ", c.geometry.groups,
        " does not divide the ", c.out_channels(), " output channels");
  check(c.bias.size() == 0 || c.bias.size() == c.out_channels(), function, what, " bias has ",
        c.bias.size(), " values but the weight ", shape_text(c.weight), " has ", c.out_channels(),
        " output channels");
  for (index i = 0; i < c.weight.size(); ++i) {
    check(std::isfinite(c.weight.data()[i]), function, what, " weight has the non-finite value ",
          c.weight.data()[i], " at flat index ", i);
  }
  for (index i = 0; i < c.bias.size(); ++i) {
    check(std::isfinite(c.bias[i]), function, what, " bias has the non-finite value ", c.bias[i],
          " at index ", i);
  }
}

/// The bias as O values (zeros for a layer without bias).
inline Eigen::VectorXd bias_or_zero(const conv2d& c) {
  return c.bias.size() == 0 ? Eigen::VectorXd(Eigen::VectorXd::Zero(c.out_channels()))
                            : Eigen::VectorXd(c.bias);
}

/// T1: W'[o] = s_o W[o], b'_o = s_o b_o + t_o with (s, t) = bn_affine(bn).
inline conv2d fold_bn(const char* function, const std::string& what, const conv2d& conv,
                      const batch_norm& bn) {
  check_conv(function, what, conv);
  const channel_affine affine = bn_affine(function, bn);
  const index out = conv.out_channels();
  check(bn.channels() == out, function, what, ": the BatchNorm has ", bn.channels(),
        " channels but the conv has ", out, " output channels");
  conv2d folded;
  folded.weight = conv.weight;
  folded.geometry = conv.geometry;
  const Eigen::VectorXd bias = bias_or_zero(conv);
  folded.bias.resize(out);
  const index per_channel = conv.weight.size() / out;
  for (index o = 0; o < out; ++o) {
    double* row = folded.weight.data() + o * per_channel;
    for (index i = 0; i < per_channel; ++i) {
      row[i] *= affine.scale[o];
    }
    folded.bias[o] = affine.scale[o] * bias[o] + affine.shift[o];
  }
  return folded;
}

/// T3 with labelled branches. Each merged element is the sum of the branch values taken in
/// ascending order, so the result is bitwise independent of the branch order.
inline conv2d add(const char* function, const std::vector<const conv2d*>& branches,
                  const std::vector<std::string>& labels) {
  check(!branches.empty(), function, "there are no branches to add");
  for (std::size_t b = 0; b < branches.size(); ++b) {
    check_conv(function, labels[b], *branches[b]);
  }
  const conv2d& first = *branches.front();
  const conv_geometry& g0 = first.geometry;
  const std::string& name0 = labels.front();
  for (std::size_t b = 1; b < branches.size(); ++b) {
    const conv2d& c = *branches[b];
    const conv_geometry& g = c.geometry;
    const std::string& name = labels[b];
    constexpr const char* why =
        " (branches must share weight shape, stride, padding, dilation, groups and padding mode to "
        "be summed; embed smaller kernels with embed_kernel first)";
    check(c.weight.dimensions() == first.weight.dimensions(), function, name, " has weight shape ",
          shape_text(c.weight), " but ", name0, " has ", shape_text(first.weight), why);
    check(g.stride_h == g0.stride_h && g.stride_w == g0.stride_w, function, name, " has stride ",
          stride_text(g), " but ", name0, " has stride ", stride_text(g0), why);
    check(g.pad_top == g0.pad_top && g.pad_bottom == g0.pad_bottom && g.pad_left == g0.pad_left &&
              g.pad_right == g0.pad_right,
          function, name, " has padding ", padding_text(g), " but ", name0, " has padding ",
          padding_text(g0), why);
    check(g.dilation_h == g0.dilation_h && g.dilation_w == g0.dilation_w, function, name,
          " has dilation ", dilation_text(g), " but ", name0, " has dilation ", dilation_text(g0),
          why);
    check(g.groups == g0.groups, function, name, " has groups ", g.groups, " but ", name0,
          " has groups ", g0.groups, why);
    check(g.mode == g0.mode, function, name, " has padding mode ", padding_mode_name(g.mode),
          " but ", name0, " has padding mode ", padding_mode_name(g0.mode), why);
  }
  std::vector<double> terms(branches.size());
  const auto sorted_sum = [&terms]() {
    std::sort(terms.begin(), terms.end());
    double sum = terms.front();
    for (std::size_t i = 1; i < terms.size(); ++i) {
      sum += terms[i];
    }
    return sum;
  };
  conv2d out;
  out.geometry = g0;
  out.weight = tensor<double, 4>(first.weight.dimensions());
  for (index i = 0; i < first.weight.size(); ++i) {
    for (std::size_t b = 0; b < branches.size(); ++b) {
      terms[b] = branches[b]->weight.data()[i];
    }
    out.weight.data()[i] = sorted_sum();
  }
  out.bias.resize(first.out_channels());
  for (index o = 0; o < first.out_channels(); ++o) {
    for (std::size_t b = 0; b < branches.size(); ++b) {
      terms[b] = branches[b]->bias.size() == 0 ? 0.0 : branches[b]->bias[o];
    }
    out.bias[o] = sorted_sum();
  }
  return out;
}

/// T4 with a label: zero-pads `small` into kernel_h x kernel_w under `target`.
inline conv2d embed(const char* function, const std::string& what, const conv2d& small,
                    index kernel_h, index kernel_w, const conv_geometry& target) {
  check_conv(function, what, small);
  check_geometry(function, "the target", target);
  const index kh = small.kernel_h();
  const index kw = small.kernel_w();
  const conv_geometry& g = small.geometry;
  check(kernel_h >= kh && kernel_w >= kw, function, what, ": cannot embed a ", kh, "x", kw,
        " kernel into a smaller ", kernel_h, "x", kernel_w, " kernel");
  check((kernel_h - kh) % 2 == 0 && (kernel_w - kw) % 2 == 0, function, what, ": a ", kh, "x", kw,
        " kernel has no centred position in a ", kernel_h, "x", kernel_w,
        " kernel (the size difference must be even on each axis; an even kernel cannot be centred "
        "in an odd one)");
  check(g.stride_h == target.stride_h && g.stride_w == target.stride_w, function, what,
        " has stride ", stride_text(g), " but the target has stride ", stride_text(target));
  check(g.dilation_h == target.dilation_h && g.dilation_w == target.dilation_w, function, what,
        " has dilation ", dilation_text(g), " but the target has dilation ", dilation_text(target));
  check(g.groups == target.groups, function, what, " has groups ", g.groups,
        " but the target has groups ", target.groups);
  check(g.mode == target.mode, function, what, " has padding mode ", padding_mode_name(g.mode),
        " but the target has padding mode ", padding_mode_name(target.mode));
  const index offset_h = (kernel_h - kh) / 2;
  const index offset_w = (kernel_w - kw) / 2;
  // The embedded taps move by dilation * offset pixels, so the small branch must pad that much
  // less on each side to read the same input pixels.
  const index shift_h = target.dilation_h * offset_h;
  const index shift_w = target.dilation_w * offset_w;
  const index top = target.pad_top - shift_h;
  const index bottom = target.pad_bottom - shift_h;
  const index left = target.pad_left - shift_w;
  const index right = target.pad_right - shift_w;
  check(top >= 0 && bottom >= 0 && left >= 0 && right >= 0, function, what, ": a ", kh, "x", kw,
        " kernel centred in ", kernel_h, "x", kernel_w, " under target padding ",
        padding_text(target), " would need padding ", padding_text(top, bottom, left, right),
        " (target padding minus dilation*(K-k)/2 per side), which is negative: the branch would "
        "have to crop its input, which embed_kernel does not do; the padding cannot be aligned");
  check(g.pad_top == top && g.pad_bottom == bottom && g.pad_left == left && g.pad_right == right,
        function, what, " has padding ", padding_text(g),
        ", which is not aligned with the target: a ", kh, "x", kw, " kernel centred in ", kernel_h,
        "x", kernel_w, " under target padding ", padding_text(target), " needs padding ",
        padding_text(top, bottom, left, right),
        " (target padding minus dilation*(K-k)/2 per side)");
  conv2d out;
  out.geometry = target;
  out.bias = bias_or_zero(small);
  const index o_count = small.weight.dimension(0);
  const index c_count = small.weight.dimension(1);
  out.weight = tensor<double, 4>(o_count, c_count, kernel_h, kernel_w);
  out.weight.setZero();
  for (index o = 0; o < o_count; ++o) {
    for (index c = 0; c < c_count; ++c) {
      for (index u = 0; u < kh; ++u) {
        for (index v = 0; v < kw; ++v) {
          out.weight(o, c, offset_h + u, offset_w + v) = small.weight(o, c, u, v);
        }
      }
    }
  }
  return out;
}

/// T5 with a caller name.
inline conv2d identity(const char* function, index channels, index groups, index kernel_h,
                       index kernel_w, const conv_geometry& geometry) {
  check_geometry(function, "the identity", geometry);
  check(channels >= 1 && groups >= 1 && channels % groups == 0, function, "groups ", groups,
        " must be >= 1 and divide the ", channels, " channels");
  check(geometry.groups == groups, function, "geometry.groups ", geometry.groups,
        " differs from groups ", groups);
  check(kernel_h >= 1 && kernel_w >= 1 && kernel_h % 2 == 1 && kernel_w % 2 == 1, function,
        "the identity needs an odd kernel with a centre tap, got ", kernel_h, "x", kernel_w);
  check(geometry.stride_h == 1 && geometry.stride_w == 1, function,
        "an identity branch needs stride 1, got stride ", stride_text(geometry),
        " (a strided block has no identity shortcut)");
  const index pad_h = geometry.dilation_h * (kernel_h / 2);
  const index pad_w = geometry.dilation_w * (kernel_w / 2);
  check(geometry.pad_top == pad_h && geometry.pad_bottom == pad_h && geometry.pad_left == pad_w &&
            geometry.pad_right == pad_w,
        function, "the identity as a ", kernel_h, "x", kernel_w, " conv with dilation ",
        dilation_text(geometry), " needs padding ", padding_text(pad_h, pad_h, pad_w, pad_w),
        " to keep every pixel in place, got ", padding_text(geometry));
  const index per_group = channels / groups;
  conv2d out;
  out.geometry = geometry;
  out.weight = tensor<double, 4>(channels, per_group, kernel_h, kernel_w);
  out.weight.setZero();
  for (index o = 0; o < channels; ++o) {
    out.weight(o, o % per_group, kernel_h / 2, kernel_w / 2) = 1.0;
  }
  out.bias = Eigen::VectorXd::Zero(channels);
  return out;
}

/// T8 with a caller name.
inline conv2d avg_pool(const char* function, index channels, index kernel, index stride, index pad,
                       index groups, bool count_include_pad) {
  check(channels >= 1 && groups >= 1 && channels % groups == 0, function, "groups ", groups,
        " must be >= 1 and divide the ", channels, " channels");
  check(kernel >= 1 && stride >= 1 && pad >= 0, function, "kernel ", kernel, " and stride ", stride,
        " must be >= 1 and pad ", pad, " >= 0");
  check(count_include_pad || pad == 0, function,
        "count_include_pad=false divides a border window by its number of valid pixels, which no "
        "fixed kernel reproduces: the conv form would be inexact at the borders (pad ",
        pad, "); use count_include_pad=true or pad 0");
  const index per_group = channels / groups;
  conv2d out;
  out.geometry = conv_geometry::padded(pad, stride, groups);
  out.weight = tensor<double, 4>(channels, per_group, kernel, kernel);
  out.weight.setZero();
  const double value = 1.0 / static_cast<double>(kernel * kernel);
  for (index o = 0; o < channels; ++o) {
    for (index u = 0; u < kernel; ++u) {
      for (index v = 0; v < kernel; ++v) {
        out.weight(o, o % per_group, u, v) = value;
      }
    }
  }
  out.bias = Eigen::VectorXd::Zero(channels);
  return out;
}

/// T6 with a caller name; `middle_bn` may be null.
/// `what` prefixes every message (empty, or e.g. "the average-pool branch: ").
inline conv2d sequential(const char* function, const std::string& what, const conv2d& first_1x1,
                         const batch_norm* middle_bn, const conv2d& second,
                         bool is_intermediate_padded_with_bias) {
  check_conv(function, what + "the first (1x1) conv", first_1x1);
  check_conv(function, what + "the second conv", second);
  const conv_geometry& g1 = first_1x1.geometry;
  const conv_geometry& g2 = second.geometry;
  check(first_1x1.kernel_h() == 1 && first_1x1.kernel_w() == 1, function, what,
        "the first conv must be 1x1, got ", first_1x1.kernel_h(), "x", first_1x1.kernel_w());
  check(g1.stride_h == 1 && g1.stride_w == 1, function, what,
        "the first (1x1) conv must have stride 1 (the second conv owns the stride), got ",
        stride_text(g1));
  check(g1.groups == g2.groups, function, what, "the first conv has groups ", g1.groups,
        " but the second has groups ", g2.groups, " (both must use the same group count)");
  const index mid = first_1x1.out_channels();
  check(second.in_channels() == mid, function, what, "the first conv has ", mid,
        " output channels but the second conv reads ", second.in_channels(), " channels");
  const conv2d first = middle_bn == nullptr
                           ? first_1x1
                           : fold_bn(function, what + "the first conv", first_1x1, *middle_bn);
  const bool is_first_padded =
      g1.pad_top != 0 || g1.pad_bottom != 0 || g1.pad_left != 0 || g1.pad_right != 0;
  const bool is_second_padded =
      g2.pad_top != 0 || g2.pad_bottom != 0 || g2.pad_left != 0 || g2.pad_right != 0;
  check(!is_intermediate_padded_with_bias || g2.mode == padding_mode::zeros, function, what,
        "is_intermediate_padded_with_bias describes constant (BNAndPad) padding, but the second "
        "conv's padding mode is ",
        padding_mode_name(g2.mode));
  if (is_first_padded) {
    check(!is_second_padded || (g1.mode == padding_mode::zeros && g2.mode == padding_mode::zeros),
          function, what, "both convs pad (first ", padding_text(g1), " mode ",
          padding_mode_name(g1.mode), ", second ", padding_text(g2), " mode ",
          padding_mode_name(g2.mode), "): two padding stages merge into one only with zeros mode");
  }
  // The merged conv pads the input x; the 1x1 conv maps a padded zero to its (post-BN) bias b1.
  // The branch is reproduced iff every padded tap of the intermediate also holds b1 (DBB's
  // BNAndPad), or is a copy of an interior value (reflect/replicate/circular), or there is none.
  check(!is_second_padded || g2.mode != padding_mode::zeros || is_intermediate_padded_with_bias,
        function, what, "the second conv zero-pads the intermediate ", padding_text(g2),
        ", but the merged conv would see the first conv's bias (W1*0 + b1 = b1) at those taps, so "
        "the merge is not exact at the borders. It is exact only if the intermediate is padded "
        "with the first layer's post-BN bias (DBB's BNAndPad: pass "
        "is_intermediate_padded_with_bias=true), or if the second conv has no padding (pad the "
        "first conv instead)");
  const index groups = g2.groups;
  const index in_per_group = first.weight.dimension(1);
  const index mid_per_group = mid / groups;
  const index out_count = second.out_channels();
  const index out_per_group = out_count / groups;
  const index kh = second.kernel_h();
  const index kw = second.kernel_w();
  const Eigen::VectorXd b1 = bias_or_zero(first);
  const Eigen::VectorXd b2 = bias_or_zero(second);
  conv2d out;
  out.geometry = g2;
  out.geometry.pad_top = g1.pad_top + g2.pad_top;
  out.geometry.pad_bottom = g1.pad_bottom + g2.pad_bottom;
  out.geometry.pad_left = g1.pad_left + g2.pad_left;
  out.geometry.pad_right = g1.pad_right + g2.pad_right;
  if (is_first_padded && !is_second_padded) {
    out.geometry.mode = g1.mode;
  }
  out.weight = tensor<double, 4>(out_count, in_per_group, kh, kw);
  out.weight.setZero();
  out.bias.resize(out_count);
  for (index e = 0; e < out_count; ++e) {
    const index mid_base = (e / out_per_group) * mid_per_group;
    double bias = b2[e];
    for (index d = 0; d < mid_per_group; ++d) {
      for (index u = 0; u < kh; ++u) {
        for (index v = 0; v < kw; ++v) {
          const double w2 = second.weight(e, d, u, v);
          bias += w2 * b1[mid_base + d];
          for (index c = 0; c < in_per_group; ++c) {
            out.weight(e, c, u, v) += w2 * first.weight(mid_base + d, c, 0, 0);
          }
        }
      }
    }
    out.bias[e] = bias;
  }
  return out;
}

}  // namespace detail::conv_impl

/// T1: folds a BatchNorm that follows `conv` into it: W'[o] = s_o W[o], b'_o = s_o b_o + t_o with
/// s = gamma / sqrt(running_var + eps), t = beta - running_mean s (bn's own eps; affine=False is
/// gamma 1, beta 0; an existing conv bias is kept, an empty one is zero). Any groups, incl.
/// depthwise, any padding mode. Exact. Allocates the result.
/// Throws reparam::error if the BN is in training mode or has no running statistics (bn_affine),
/// if its channel count differs from conv.out_channels(), or if the conv is malformed.
inline merge_result<conv2d> fold_batch_norm(const conv2d& conv, const batch_norm& bn) {
  return {detail::conv_impl::fold_bn("structural::fold_batch_norm", "the conv", conv, bn), true,
          ""};
}

/// T1 for a transposed conv: the output channel is axis 1 of the [C_in, O/g, kh, kw] weight, so
/// W'[ic, ol] = s_o W[ic, ol] with o = group(ic) * O/g + ol; b'_o = s_o b_o + t_o. Exact.
/// Throws reparam::error on a training-mode / no-running-stats BN, a channel count different from
/// conv.out_channels(), groups not dividing C_in, or a malformed layer.
inline merge_result<conv_transpose2d> fold_batch_norm(const conv_transpose2d& conv,
                                                      const batch_norm& bn) {
  constexpr const char* function = "structural::fold_batch_norm";
  using reparam::detail::check;
  detail::conv_impl::check_geometry(function, "the transposed conv", conv.geometry);
  check(conv.weight.size() > 0, function, "the transposed conv has an empty weight ",
        detail::conv_impl::shape_text(conv.weight));
  const index groups = conv.geometry.groups;
  const index in_count = conv.in_channels();
  check(in_count % groups == 0, function, "groups ", groups, " does not divide the ", in_count,
        " input channels of the transposed conv");
  const index out = conv.out_channels();
  check(conv.bias.size() == 0 || conv.bias.size() == out, function, "the transposed conv bias has ",
        conv.bias.size(), " values but ", out, " output channels");
  const channel_affine affine = bn_affine(function, bn);
  check(bn.channels() == out, function, "the BatchNorm has ", bn.channels(),
        " channels but the transposed conv has ", out, " output channels");
  conv_transpose2d folded = conv;
  const index out_per_group = conv.weight.dimension(1);
  const index in_per_group = in_count / groups;
  const index taps = conv.weight.dimension(2) * conv.weight.dimension(3);
  for (index ic = 0; ic < in_count; ++ic) {
    for (index ol = 0; ol < out_per_group; ++ol) {
      const double s = affine.scale[(ic / in_per_group) * out_per_group + ol];
      double* tap = folded.weight.data() + (ic * out_per_group + ol) * taps;
      for (index i = 0; i < taps; ++i) {
        tap[i] *= s;
      }
    }
  }
  folded.bias.resize(out);
  for (index o = 0; o < out; ++o) {
    const double b = conv.bias.size() == 0 ? 0.0 : conv.bias[o];
    folded.bias[o] = affine.scale[o] * b + affine.shift[o];
  }
  return {std::move(folded), true, ""};
}

/// T3: sum of parallel convs on the same input, conv(x; sum W_i, sum b_i). Every branch must have
/// the same weight shape and geometry (stride, padding, dilation, groups, padding mode); embed
/// smaller kernels first (embed_kernel). Each merged value is summed in ascending order of the
/// branch values, so the result is bitwise independent of the branch order; a single branch is
/// returned unchanged. Exact. Throws reparam::error naming the first mismatch.
inline merge_result<conv2d> add_branches(const std::vector<conv2d>& branches) {
  std::vector<const conv2d*> pointers;
  std::vector<std::string> labels;
  for (std::size_t b = 0; b < branches.size(); ++b) {
    pointers.push_back(&branches[b]);
    labels.push_back(reparam::detail::concat("branch ", b));
  }
  return {detail::conv_impl::add("structural::add_branches", pointers, labels), true, ""};
}

/// T4: zero-pads `small`'s kh x kw kernel into kernel_h x kernel_w, centred, and gives it the
/// `target` geometry, so that it can be added to a target-sized branch. Alignment per side:
/// small padding = target padding - dilation * (K - k) / 2 (for dilation 1 this is RepVGG's
/// p_small = p - (K - k)/2); stride, dilation, groups and padding mode must be equal. Asymmetric
/// 1 x k / k x 1 kernels embed per axis (ACNet). Exact for every padding mode (aligned taps read
/// the same padded pixels). Throws reparam::error if K < k or K - k is odd on an axis (an even
/// kernel in an odd one), if stride/dilation/groups/mode differ, or if the small padding is not
/// the aligned one (including when alignment would need a negative padding, i.e. a crop).
inline merge_result<conv2d> embed_kernel(const conv2d& small, index kernel_h, index kernel_w,
                                         const conv_geometry& target) {
  return {detail::conv_impl::embed("structural::embed_kernel", "the small branch", small, kernel_h,
                                   kernel_w, target),
          true, ""};
}

/// T5: the identity map as a [channels, channels/groups, kernel_h, kernel_w] conv (one 1 at the
/// centre tap of I[o, o mod (channels/groups)]), zero bias, `geometry`. Fold the identity
/// branch's BN into it with fold_batch_norm. Depthwise is groups == channels. Exact.
/// Throws reparam::error on an even kernel (no centre tap), stride != 1, groups not dividing
/// channels or != geometry.groups, or padding other than dilation * (kernel / 2) on each side
/// (the padding that keeps every pixel in place; the padding mode is irrelevant).
inline conv2d identity_conv(index channels, index groups, index kernel_h, index kernel_w,
                            const conv_geometry& geometry) {
  return detail::conv_impl::identity("structural::identity_conv", channels, groups, kernel_h,
                                     kernel_w, geometry);
}

/// T6: merges first_1x1 -> (middle_bn, may be null) -> second into one conv (DBB Transform III):
/// per group q, W[e, c] = sum_d W2[e, d] W1[q D/g + d, c] and
/// b_e = b2_e + sum_{d,h,w} W2[e, d, h, w] b1[q D/g + d], with (W1, b1) the BN-folded first conv.
/// The second conv owns stride, dilation and padding mode; the merged padding is the sum of both.
/// second.geometry's padding is the padding applied to the intermediate, whether the conv does it
/// or (DBB) a BNAndPad layer in front of an unpadded conv.
/// The padding trap: the merged conv zero-pads x, and the 1x1 conv (+ BN) turns a padded zero
/// into its post-BN bias b1 = s b1_conv + t. So the merge is exact only if the intermediate's
/// padded taps hold b1 (is_intermediate_padded_with_bias = true; DBB's BNAndPad pads with the BN
/// bias t, which is b1 because DBB's 1x1 has no bias), or the second conv does not pad, or it
/// pads by reflect/replicate/circular (copies commute with a 1x1 conv). A zero-padded
/// intermediate is refused (the result would be wrong at the borders; DBB issue #9).
/// Throws reparam::error also if the first conv is not 1x1 with stride 1, group counts differ,
/// channel counts do not chain, both convs pad with a non-zeros mode, or the flag is set with a
/// non-zeros second padding mode.
inline merge_result<conv2d> merge_sequential(const conv2d& first_1x1, const batch_norm* middle_bn,
                                             const conv2d& second,
                                             bool is_intermediate_padded_with_bias) {
  return {detail::conv_impl::sequential("structural::merge_sequential", "", first_1x1, middle_bn,
                                        second, is_intermediate_padded_with_bias),
          true, ""};
}

/// T7: convs on the same input whose outputs are concatenated along channels = one conv with
/// W = [W_a; W_b; ...], b = [b_a; b_b; ...]. All convs need the same input channels, kernel size
/// and geometry, and groups 1 (a grouped conv's output order is group-major, so a concatenation
/// of grouped convs is not a grouped conv). Exact. Throws reparam::error on any mismatch.
inline merge_result<conv2d> concat_outputs(const std::vector<conv2d>& convs) {
  constexpr const char* function = "structural::concat_outputs";
  using reparam::detail::check;
  using reparam::detail::concat;
  check(!convs.empty(), function, "there are no convs to concatenate");
  index total = 0;
  for (std::size_t b = 0; b < convs.size(); ++b) {
    const conv2d& c = convs[b];
    const std::string name = concat("conv ", b);
    detail::conv_impl::check_conv(function, name, c);
    check(c.geometry.groups == 1, function, name, " has groups ", c.geometry.groups,
          ": only groups 1 convs concatenate into one conv");
    check(c.geometry == convs.front().geometry, function, name,
          " has a different geometry from conv 0 (stride, padding, dilation and padding mode must "
          "match)");
    check(c.weight.dimension(1) == convs.front().weight.dimension(1) &&
              c.kernel_h() == convs.front().kernel_h() && c.kernel_w() == convs.front().kernel_w(),
          function, name, " has weight shape ", detail::conv_impl::shape_text(c.weight),
          " but conv 0 has ", detail::conv_impl::shape_text(convs.front().weight),
          " (input channels and kernel size must match)");
    total += c.out_channels();
  }
  const conv2d& first = convs.front();
  conv2d out;
  out.geometry = first.geometry;
  out.weight =
      tensor<double, 4>(total, first.weight.dimension(1), first.kernel_h(), first.kernel_w());
  out.bias.resize(total);
  const index per_channel = first.weight.size() / first.out_channels();
  index row = 0;
  for (const conv2d& c : convs) {
    const Eigen::VectorXd bias = detail::conv_impl::bias_or_zero(c);
    std::copy(c.weight.data(), c.weight.data() + c.weight.size(),
              out.weight.data() + row * per_channel);
    out.bias.segment(row, c.out_channels()) = bias;
    row += c.out_channels();
  }
  return {std::move(out), true, ""};
}

/// T8: AvgPool2d(kernel, stride, pad) on `channels` channels as a conv with groups `groups`
/// (groups == channels: depthwise form): W[o, o mod (channels/groups)] = 1/kernel^2 on every
/// tap, zero bias, zeros padding. Floor mode only (no ceil-mode windows). Exact with
/// count_include_pad=true (PyTorch's default), or with pad 0 where every window is full.
/// Throws reparam::error for count_include_pad=false with pad > 0 (border windows are divided
/// by their valid pixel count, which no fixed kernel reproduces), groups not dividing channels, or
/// kernel/stride < 1, pad < 0.
inline conv2d avg_pool_as_conv(index channels, index kernel, index stride, index pad, index groups,
                               bool count_include_pad) {
  return detail::conv_impl::avg_pool("structural::avg_pool_as_conv", channels, kernel, stride, pad,
                                     groups, count_include_pad);
}

/// T9: a dilated kh x kw conv as the equivalent dense conv with kernel
/// (d_h (kh - 1) + 1) x (d_w (kw - 1) + 1), W_eq[..., d_h i, d_w j] = W[..., i, j], zeros between,
/// dilation 1, same stride, padding, groups and mode. Exact (the taps read the same pixels).
/// A conv with dilation 1 is returned unchanged. Throws reparam::error on a malformed conv.
inline merge_result<conv2d> dilated_to_dense(const conv2d& conv) {
  constexpr const char* function = "structural::dilated_to_dense";
  detail::conv_impl::check_conv(function, "the conv", conv);
  const conv_geometry& g = conv.geometry;
  const index kh = conv.kernel_h();
  const index kw = conv.kernel_w();
  conv2d out;
  out.geometry = g;
  out.geometry.dilation_h = 1;
  out.geometry.dilation_w = 1;
  out.bias = detail::conv_impl::bias_or_zero(conv);
  const index o_count = conv.weight.dimension(0);
  const index c_count = conv.weight.dimension(1);
  out.weight =
      tensor<double, 4>(o_count, c_count, g.dilation_h * (kh - 1) + 1, g.dilation_w * (kw - 1) + 1);
  out.weight.setZero();
  for (index o = 0; o < o_count; ++o) {
    for (index c = 0; c < c_count; ++c) {
      for (index u = 0; u < kh; ++u) {
        for (index v = 0; v < kw; ++v) {
          out.weight(o, c, g.dilation_h * u, g.dilation_w * v) = conv.weight(o, c, u, v);
        }
      }
    }
  }
  return {std::move(out), true, ""};
}

/// T14: folds a BatchNorm applied after a branch sum (QARepVGG, RepViT RepVggDw) into the merged
/// conv: the same math as fold_batch_norm (T1) with the merged bias kept, as a named recipe step.
/// Exact. Throws reparam::error as fold_batch_norm does.
inline merge_result<conv2d> fold_post_sum_batch_norm(const conv2d& merged, const batch_norm& bn) {
  return {detail::conv_impl::fold_bn("structural::fold_post_sum_batch_norm", "the merged conv",
                                     merged, bn),
          true, ""};
}

}  // namespace reparam::structural

#endif  // REPARAM_STRUCTURAL_CONV_MERGE_HPP

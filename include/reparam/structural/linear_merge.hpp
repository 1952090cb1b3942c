// SPDX-License-Identifier: Apache-2.0
// Weight transforms around fully connected layers, and the per-channel conv folds that go with
// them (transforms numbered T1-T16 across conv_merge.hpp and linear_merge.hpp):
//   T1  BatchNorm after a Linear, also BN1d over flattened tokens (DBB "Transform I",
//       arXiv 2103.13425 section 3; LeViT LinearNorm, timm levit.py);
//   T2  affine / BatchNorm before a Linear or a conv (timm NormLinear.fuse, NextViT merge_pre_bn),
//       with the zero-padding border check and the pad-value rewrite;
//   T10 LayerScale, residual identity (FastViT RepCPE, arXiv 2303.14189) and additive input
//       constants (UniRepLKNet GRN bias, arXiv 2311.15599);
//   T11 conv -> fully connected on a fixed h x w partition (RepMLP, arXiv 2105.01883);
//   T12 collapse of a chain of Linears with an optional residual (RePaViT, arXiv 2505.21847);
//   T13 width merge of parallel FFN / attention branches that share one input (derived);
//   T15 expert averaging, approximate (EWA, arXiv 2308.06093);
//   T16 low-rank adapter folding W + scale * B A (LoRA, arXiv 2106.09685).
// Every transform takes const inputs, computes in double and returns a new layer in a
// merge_result that says whether the result reproduces the original computation exactly.
// Vector parameters (scales, shifts, gammas) must be finite or the call throws; non-finite weights
// are not inspected and propagate into the result. All functions allocate; none keeps state.
#ifndef REPARAM_STRUCTURAL_LINEAR_MERGE_HPP
#define REPARAM_STRUCTURAL_LINEAR_MERGE_HPP

#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/tensor_views.hpp>
#include <reparam/core/views.hpp>
#include <reparam/structural/types.hpp>

namespace reparam::structural {

/// A two-layer feed-forward block y = down(act(up(x))) with an elementwise activation `act`
/// that the block does not store (GELU, ReLU, SiLU, ...).
struct ffn {
  linear up;    // [hidden, in]
  linear down;  // [out, hidden]
};

/// Multi-head self-attention on tokens x [tokens, in]: q, k, v = x W^T + b, each split into
/// `heads` contiguous row blocks of head_dim() rows; head h computes
/// softmax(q_h k_h^T / sqrt(head_dim)) v_h; the heads are concatenated in order and projected by
/// `out` (weight [out_features, heads * head_dim]).
struct mhsa {
  linear q;
  linear k;
  linear v;
  linear out;
  index heads = 1;

  index head_dim() const noexcept { return heads > 0 ? q.out_features() / heads : 0; }
};

/// Dispersion of the experts around their average (T15), so a caller can judge how far the
/// averaged FFN is from the mixture. Parameters are taken as one vector per expert
/// theta_i = (up.weight, up.bias, down.weight, down.bias).
struct expert_average_report {
  /// max_i ||theta_i - mean|| / ||mean|| (Euclidean norms; +inf if the mean is 0 and some
  /// expert is not).
  double max_relative_deviation = 0.0;
  /// The average over experts of ||theta_i - mean|| / ||mean||.
  double mean_relative_deviation = 0.0;
  /// max over experts and parameters of |theta_i - mean|.
  double max_abs_deviation = 0.0;
  /// The expert with the largest relative deviation.
  index worst_expert = 0;
  index expert_count = 0;
};

namespace detail::linear_merge {

using reparam::detail::check;

/// Checks a linear layer's shapes; returns its bias as a full vector (zeros for none).
inline Eigen::VectorXd checked_bias(const char* function, const char* argument,
                                    const linear& layer) {
  check(layer.weight.rows() >= 1 && layer.weight.cols() >= 1, function, argument,
        " has an empty weight [", layer.weight.rows(), ", ", layer.weight.cols(), "]");
  check(layer.bias.size() == 0 || layer.bias.size() == layer.weight.rows(), function, argument,
        " has ", layer.bias.size(), " bias values but ", layer.weight.rows(), " outputs");
  if (layer.bias.size() == 0) {
    return Eigen::VectorXd::Zero(layer.weight.rows());
  }
  return layer.bias;
}

/// Checks a conv's geometry and shapes; returns its bias as a full vector (zeros for none).
inline Eigen::VectorXd checked_bias(const char* function, const char* argument,
                                    const conv2d& conv) {
  const conv_geometry& g = conv.geometry;
  check(conv.weight.size() > 0, function, argument, " has an empty weight [",
        conv.weight.dimension(0), ", ", conv.weight.dimension(1), ", ", conv.weight.dimension(2),
        ", ", conv.weight.dimension(3), "]");
  check(g.groups >= 1 && conv.out_channels() % g.groups == 0, function, argument, ": groups ",
        g.groups, " does not divide the ", conv.out_channels(), " output channels");
  check(g.stride_h >= 1 && g.stride_w >= 1 && g.dilation_h >= 1 && g.dilation_w >= 1, function,
        argument, ": stride ", g.stride_h, "x", g.stride_w, " and dilation ", g.dilation_h, "x",
        g.dilation_w, " must be >= 1");
  check(g.pad_top >= 0 && g.pad_bottom >= 0 && g.pad_left >= 0 && g.pad_right >= 0, function,
        argument, ": padding top/bottom/left/right ", g.pad_top, "/", g.pad_bottom, "/", g.pad_left,
        "/", g.pad_right, " must be >= 0");
  check(conv.bias.size() == 0 || conv.bias.size() == conv.out_channels(), function, argument,
        " has ", conv.bias.size(), " bias values but ", conv.out_channels(), " output channels");
  if (conv.bias.size() == 0) {
    return Eigen::VectorXd::Zero(conv.out_channels());
  }
  return conv.bias;
}

/// Checks that `values` has `expected` finite entries.
inline void check_vector(const char* function, const char* argument, const Eigen::VectorXd& values,
                         index expected, const char* what) {
  check(values.size() == expected, function, argument, " has ", values.size(), " values but ", what,
        " has ", expected);
  reparam::detail::check_finite(function, argument, values.data(), values.size());
}

/// Checks an FFN's internal shapes; `argument` names it in messages.
inline void check_ffn(const char* function, const std::string& argument, const ffn& block) {
  checked_bias(function, (argument + ".up").c_str(), block.up);
  checked_bias(function, (argument + ".down").c_str(), block.down);
  check(block.down.in_features() == block.up.out_features(), function, argument, ".down takes ",
        block.down.in_features(), " inputs but ", argument, ".up gives ", block.up.out_features(),
        " hidden units");
}

/// Checks an attention module's shapes; `argument` names it in messages.
inline void check_mhsa(const char* function, const std::string& argument, const mhsa& block) {
  checked_bias(function, (argument + ".q").c_str(), block.q);
  checked_bias(function, (argument + ".k").c_str(), block.k);
  checked_bias(function, (argument + ".v").c_str(), block.v);
  checked_bias(function, (argument + ".out").c_str(), block.out);
  check(block.heads >= 1, function, argument, ".heads is ", block.heads, " but must be >= 1");
  const index width = block.q.out_features();
  check(block.k.out_features() == width && block.v.out_features() == width, function, argument,
        ": q, k, v give ", width, ", ", block.k.out_features(), ", ", block.v.out_features(),
        " features but must give the same number");
  check(width % block.heads == 0, function, argument, ": ", block.heads,
        " heads do not divide the ", width, " q/k/v features");
  check(block.k.in_features() == block.q.in_features() &&
            block.v.in_features() == block.q.in_features(),
        function, argument, ": q, k, v take ", block.q.in_features(), ", ", block.k.in_features(),
        ", ", block.v.in_features(), " inputs but self-attention reads one input");
  check(block.out.in_features() == width, function, argument, ".out takes ",
        block.out.in_features(), " inputs but the heads give ", width);
}

/// W'[o, c_l, :, :] = W[o, c_l, :, :] s_c, b'_o = b_o + sum_{c_l,u,v} W[o, c_l, u, v] t_c with
/// c = group(o) * C/g + c_l. Shapes already checked.
inline conv2d fold_affine_into_conv(const Eigen::VectorXd& scale, const Eigen::VectorXd& shift,
                                    const conv2d& conv, const Eigen::VectorXd& bias) {
  conv2d out;
  out.weight = conv.weight;
  out.bias = bias;
  out.geometry = conv.geometry;
  const index o_total = conv.out_channels();
  const index per_group_in = conv.weight.dimension(1);
  const index per_group_out = o_total / conv.geometry.groups;
  const index taps = conv.kernel_h() * conv.kernel_w();
  double* w = out.weight.data();
  for (index o = 0; o < o_total; ++o) {
    const index first_channel = (o / per_group_out) * per_group_in;
    double shift_sum = 0.0;
    for (index cl = 0; cl < per_group_in; ++cl) {
      const index c = first_channel + cl;
      double* kernel = w + (o * per_group_in + cl) * taps;
      for (index tap = 0; tap < taps; ++tap) {
        shift_sum += kernel[tap] * shift[c];
        kernel[tap] *= scale[c];
      }
    }
    out.bias[o] += shift_sum;
  }
  return out;
}

/// T2 for a linear layer; `function` names the public entry point in messages.
inline merge_result<linear> affine_before(const char* function, const Eigen::VectorXd& scale,
                                          const Eigen::VectorXd& shift, const linear& layer) {
  const Eigen::VectorXd bias = checked_bias(function, "layer", layer);
  check_vector(function, "scale", scale, layer.in_features(), "the layer input");
  check_vector(function, "shift", shift, layer.in_features(), "the layer input");
  merge_result<linear> result;
  result.layer.weight = layer.weight * scale.asDiagonal();
  result.layer.bias = bias;
  result.layer.bias.noalias() += layer.weight * shift;
  return result;
}

/// T2 for a conv, refusing zero padding with a shift; `function` names the entry point.
inline merge_result<conv2d> affine_before(const char* function, const Eigen::VectorXd& scale,
                                          const Eigen::VectorXd& shift, const conv2d& conv) {
  const Eigen::VectorXd bias = checked_bias(function, "conv", conv);
  check_vector(function, "scale", scale, conv.in_channels(), "the conv input");
  check_vector(function, "shift", shift, conv.in_channels(), "the conv input");
  const conv_geometry& g = conv.geometry;
  const bool has_padding = g.pad_top > 0 || g.pad_bottom > 0 || g.pad_left > 0 || g.pad_right > 0;
  const double max_shift = shift.cwiseAbs().maxCoeff();
  check(!(has_padding && g.mode == padding_mode::zeros && max_shift > 0.0), function,
        "the conv (kernel ", conv.kernel_h(), "x", conv.kernel_w(), ") zero-pads its input by top/",
        "bottom/left/right ", g.pad_top, "/", g.pad_bottom, "/", g.pad_left, "/", g.pad_right,
        " and the affine has a nonzero shift (max |shift| ", max_shift,
        "): the original conv sees 0 at padded border taps, a merged conv would see the affine "
        "image of 0 (= shift) there, so border outputs would be wrong and the fold is not exact. "
        "Alternative: pad the raw input with pad_value_for_affine(scale, shift) = -shift/scale and "
        "use fold_affine_before_with_pad_value (exact), or use reflect/replicate/circular padding");
  merge_result<conv2d> result;
  result.layer = fold_affine_into_conv(scale, shift, conv, bias);
  return result;
}

}  // namespace detail::linear_merge

// ---------------------------------------------------------------------------------------------
// T1: BatchNorm after a Linear

/// Folds an inference BatchNorm that follows `layer` into it (T1): W' = diag(s) W,
/// b' = s (b - mean) + beta with s = gamma / sqrt(running_var + eps). The same fold applies to a
/// BatchNorm1d over flattened tokens [batch * tokens, features] after a Linear (LeViT), since it
/// normalises each output feature. Exact. Throws reparam::error if the BatchNorm is in training
/// mode or has no running statistics, its channel count differs from layer.out_features(), or
/// shapes are inconsistent. Allocates.
inline merge_result<linear> fold_batch_norm_after(const linear& layer, const batch_norm& bn) {
  constexpr const char* function = "structural::fold_batch_norm_after";
  using reparam::detail::check;
  const Eigen::VectorXd bias = detail::linear_merge::checked_bias(function, "layer", layer);
  const channel_affine affine = bn_affine(function, bn);
  check(affine.scale.size() == layer.out_features(), function, "the BatchNorm has ",
        affine.scale.size(), " channels but the layer has ", layer.out_features(), " outputs");
  merge_result<linear> result;
  result.layer.weight = affine.scale.asDiagonal() * layer.weight;
  result.layer.bias = affine.scale.cwiseProduct(bias) + affine.shift;
  return result;
}

// ---------------------------------------------------------------------------------------------
// T2: affine / BatchNorm before a Linear or a conv

/// Folds the per-feature affine x -> scale * x + shift that precedes `layer` into it (T2):
/// W'[:, c] = W[:, c] scale_c, b' = b + W shift. Also folds a LayerNorm's elementwise affine
/// (gamma, beta) into the next Linear. Exact. Throws reparam::error if scale/shift do not have
/// layer.in_features() finite values. Allocates.
inline merge_result<linear> fold_affine_before(const Eigen::VectorXd& scale,
                                               const Eigen::VectorXd& shift, const linear& layer) {
  return detail::linear_merge::affine_before("structural::fold_affine_before", scale, shift, layer);
}

/// Folds an inference BatchNorm (BatchNorm1d, also over flattened tokens) that precedes `layer`
/// into it: fold_affine_before with the BatchNorm's s and t. Exact. Throws reparam::error for a
/// BatchNorm in training mode or without running statistics, or on a channel mismatch.
inline merge_result<linear> fold_batch_norm_before(const batch_norm& bn, const linear& layer) {
  constexpr const char* function = "structural::fold_batch_norm_before";
  const channel_affine affine = bn_affine(function, bn);
  reparam::detail::check(affine.scale.size() == layer.in_features(), function, "the BatchNorm has ",
                         affine.scale.size(), " channels but the layer takes ", layer.in_features(),
                         " inputs");
  return detail::linear_merge::affine_before(function, affine.scale, affine.shift, layer);
}

/// The per-channel value v_c = -shift_c / scale_c that the affine x -> scale * x + shift maps to
/// 0. A conv that zero-pads the affine's output equals the conv returned by
/// fold_affine_before_with_pad_value applied to the raw input padded with these values (same
/// per-side amounts as the original padding): padded taps then see scale * v + shift = 0, exactly
/// what the original conv saw. A channel with scale 0 and shift 0 outputs 0 for any input and
/// gets v = 0. Throws reparam::error on a size mismatch, non-finite values, or a channel with
/// scale 0 and shift != 0 (its affine output is the constant shift, so no pad value maps to 0).
inline Eigen::VectorXd pad_value_for_affine(const Eigen::VectorXd& scale,
                                            const Eigen::VectorXd& shift) {
  constexpr const char* function = "structural::pad_value_for_affine";
  using reparam::detail::check;
  namespace lm = detail::linear_merge;
  check(scale.size() >= 1, function, "scale is empty");
  lm::check_vector(function, "scale", scale, scale.size(), "scale");
  lm::check_vector(function, "shift", shift, scale.size(), "scale");
  Eigen::VectorXd value(scale.size());
  for (index c = 0; c < scale.size(); ++c) {
    check(scale[c] != 0.0 || shift[c] == 0.0, function, "channel ", c, " has scale 0 and shift ",
          shift[c],
          ": its affine output is that constant for every input, so no input pad value is "
          "mapped to 0 (keep this affine as a separate layer)");
    value[c] = scale[c] == 0.0 ? 0.0 : -shift[c] / scale[c];
  }
  return value;
}

/// Folds the per-input-channel affine x -> scale * x + shift that precedes `conv` into it (T2):
/// W'[o, c_l, :, :] = W[o, c_l, :, :] scale_c and b'_o = b_o + sum W[o, c_l, u, v] shift_c, with
/// c the input channel c_l of o's group (any groups, depthwise included). Geometry unchanged.
///
/// Exact when every tap of the conv reads an affine-transformed value: no padding, or
/// reflect / replicate / circular padding (padded values are copies of transformed values), or a
/// pure scale (shift == 0, since scale * 0 = 0), whatever the kernel size. With zero padding and
/// a nonzero shift it is NOT exact: the original conv sees 0 at padded taps, the merged one would
/// see the affine image of 0, i.e. shift, so border outputs would gain the W * shift terms of the
/// padded taps. That case is refused; use pad_value_for_affine with
/// fold_affine_before_with_pad_value, switch to a non-zero padding mode, or keep the affine
/// separate. Throws reparam::error for that case, for scale/shift not having in_channels() finite
/// values, and for inconsistent conv shapes. Allocates.
inline merge_result<conv2d> fold_affine_before(const Eigen::VectorXd& scale,
                                               const Eigen::VectorXd& shift, const conv2d& conv) {
  return detail::linear_merge::affine_before("structural::fold_affine_before", scale, shift, conv);
}

/// Folds an inference BatchNorm2d that precedes `conv`: fold_affine_before with the
/// BatchNorm's s and t, with the same exactness rule and refusals (a zero-padded conv after a
/// BatchNorm with nonzero shift is refused), plus a refusal for a training-mode BatchNorm or one
/// without running statistics.
inline merge_result<conv2d> fold_batch_norm_before(const batch_norm& bn, const conv2d& conv) {
  constexpr const char* function = "structural::fold_batch_norm_before";
  const channel_affine affine = bn_affine(function, bn);
  reparam::detail::check(affine.scale.size() == conv.in_channels(), function, "the BatchNorm has ",
                         affine.scale.size(), " channels but the conv takes ", conv.in_channels(),
                         " input channels");
  return detail::linear_merge::affine_before(function, affine.scale, affine.shift, conv);
}

/// The pad-value rewrite of T2 for a zero-padded conv after an affine x -> scale * x + shift:
/// returns the conv with the folded weights and bias of fold_affine_before and NO padding
/// (pad_* = 0, same stride, dilation, groups). It is exact if the caller pads its raw input
/// explicitly by the original conv's top/bottom/left/right amounts with the per-channel value
/// pad_value_for_affine(scale, shift) before applying it; the note repeats the amounts.
/// Throws reparam::error if the conv's padding mode is not zeros (fold_affine_before is exact
/// there), on the conditions of pad_value_for_affine, and on shape mismatches. Allocates.
inline merge_result<conv2d> fold_affine_before_with_pad_value(const Eigen::VectorXd& scale,
                                                              const Eigen::VectorXd& shift,
                                                              const conv2d& conv) {
  constexpr const char* function = "structural::fold_affine_before_with_pad_value";
  using reparam::detail::check;
  namespace lm = detail::linear_merge;
  const Eigen::VectorXd bias = lm::checked_bias(function, "conv", conv);
  lm::check_vector(function, "scale", scale, conv.in_channels(), "the conv input");
  lm::check_vector(function, "shift", shift, conv.in_channels(), "the conv input");
  const conv_geometry& g = conv.geometry;
  check(g.mode == padding_mode::zeros, function, "the conv uses ", padding_mode_name(g.mode),
        " padding, which copies transformed values: fold_affine_before is exact for it");
  pad_value_for_affine(scale, shift);  // refuses scale 0 with shift != 0
  merge_result<conv2d> result;
  result.layer = lm::fold_affine_into_conv(scale, shift, conv, bias);
  result.layer.geometry.pad_top = 0;
  result.layer.geometry.pad_bottom = 0;
  result.layer.geometry.pad_left = 0;
  result.layer.geometry.pad_right = 0;
  result.note = reparam::detail::concat(
      "exact only if the raw input is padded by top/bottom/left/right ", g.pad_top, "/",
      g.pad_bottom, "/", g.pad_left, "/", g.pad_right,
      " with the per-channel value pad_value_for_affine(scale, shift) = -shift/scale; the "
      "merged conv itself does not pad");
  return result;
}

// ---------------------------------------------------------------------------------------------
// T10: per-channel output scale (LayerScale), residual identity, additive input constant

/// Folds a per-output scale gamma applied after `layer` (LayerScale) into it: W' = diag(gamma) W,
/// b' = gamma * b. Exact. Throws reparam::error unless gamma has out_features() finite values.
inline merge_result<linear> scale_outputs(const linear& layer, const Eigen::VectorXd& gamma) {
  constexpr const char* function = "structural::scale_outputs";
  namespace lm = detail::linear_merge;
  const Eigen::VectorXd bias = lm::checked_bias(function, "layer", layer);
  lm::check_vector(function, "gamma", gamma, layer.out_features(), "the layer output");
  merge_result<linear> result;
  result.layer.weight = gamma.asDiagonal() * layer.weight;
  result.layer.bias = gamma.cwiseProduct(bias);
  return result;
}

/// Folds a per-output-channel scale gamma applied after `conv` into it: W'[o] = gamma_o W[o],
/// b' = gamma * b. Exact for any geometry. Throws reparam::error unless gamma has
/// out_channels() finite values.
inline merge_result<conv2d> scale_outputs(const conv2d& conv, const Eigen::VectorXd& gamma) {
  constexpr const char* function = "structural::scale_outputs";
  namespace lm = detail::linear_merge;
  const Eigen::VectorXd bias = lm::checked_bias(function, "conv", conv);
  lm::check_vector(function, "gamma", gamma, conv.out_channels(), "the conv output");
  merge_result<conv2d> result;
  result.layer.weight = conv.weight;
  result.layer.geometry = conv.geometry;
  const index per_channel = conv.weight.size() / conv.out_channels();
  double* w = result.layer.weight.data();
  for (index o = 0; o < conv.out_channels(); ++o) {
    for (index i = 0; i < per_channel; ++i) {
      w[o * per_channel + i] *= gamma[o];
    }
  }
  result.layer.bias = gamma.cwiseProduct(bias);
  return result;
}

/// Folds the residual y = x + layer(x) into the layer: W' = W + I. Exact. Throws reparam::error
/// unless the layer is square.
inline merge_result<linear> fold_residual(const linear& layer) {
  constexpr const char* function = "structural::fold_residual";
  using reparam::detail::check;
  const Eigen::VectorXd bias = detail::linear_merge::checked_bias(function, "layer", layer);
  check(layer.in_features() == layer.out_features(), function, "the layer maps ",
        layer.in_features(), " inputs to ", layer.out_features(),
        " outputs; a residual needs them equal");
  merge_result<linear> result;
  result.layer.weight = layer.weight;
  result.layer.weight.diagonal().array() += 1.0;
  result.layer.bias = bias;
  return result;
}

/// Folds the residual y = x + conv(x) into the conv (FastViT RepCPE: W = I + W_pe): adds 1 at
/// W[o, o mod (C/g), pad_top / dilation_h, pad_left / dilation_w], the tap that reads x[o] at the
/// output position. Exact for any padding mode (that tap never reads padding). Requires
/// in_channels() == out_channels(), stride 1, output size == input size for every input size
/// (pad_top + pad_bottom == dilation_h (kh - 1), same for w) and pad_top, pad_left multiples of
/// the dilation. Throws reparam::error otherwise.
inline merge_result<conv2d> fold_residual(const conv2d& conv) {
  constexpr const char* function = "structural::fold_residual";
  using reparam::detail::check;
  const Eigen::VectorXd bias = detail::linear_merge::checked_bias(function, "conv", conv);
  const conv_geometry& g = conv.geometry;
  check(conv.in_channels() == conv.out_channels(), function, "the conv maps ", conv.in_channels(),
        " input channels to ", conv.out_channels(), "; a residual needs them equal");
  check(g.stride_h == 1 && g.stride_w == 1, function, "the conv has stride ", g.stride_h, "x",
        g.stride_w, "; a residual needs stride 1");
  check(g.pad_top + g.pad_bottom == g.dilation_h * (conv.kernel_h() - 1) &&
            g.pad_left + g.pad_right == g.dilation_w * (conv.kernel_w() - 1),
        function, "padding top/bottom/left/right ", g.pad_top, "/", g.pad_bottom, "/", g.pad_left,
        "/", g.pad_right, " does not keep the input size for a ", conv.kernel_h(), "x",
        conv.kernel_w(), " kernel with dilation ", g.dilation_h, "x", g.dilation_w);
  check(g.pad_top % g.dilation_h == 0 && g.pad_left % g.dilation_w == 0, function, "pad_top ",
        g.pad_top, " / pad_left ", g.pad_left, " are not multiples of the dilation ", g.dilation_h,
        "x", g.dilation_w, ", so no kernel tap reads the centre pixel");
  merge_result<conv2d> result;
  result.layer.weight = conv.weight;
  result.layer.bias = bias;
  result.layer.geometry = g;
  const index per_group = conv.weight.dimension(1);
  const index centre_h = g.pad_top / g.dilation_h;
  const index centre_w = g.pad_left / g.dilation_w;
  for (index o = 0; o < conv.out_channels(); ++o) {
    result.layer.weight(o, o % per_group, centre_h, centre_w) += 1.0;
  }
  return result;
}

/// Folds a constant added to the input of `layer`, y = W (x + constant) + b (UniRepLKNet's GRN
/// bias before the next Linear), into the bias: b' = b + W constant. Exact. Throws
/// reparam::error unless constant has in_features() finite values.
inline merge_result<linear> fold_input_constant(const Eigen::VectorXd& constant,
                                                const linear& layer) {
  constexpr const char* function = "structural::fold_input_constant";
  namespace lm = detail::linear_merge;
  const Eigen::VectorXd bias = lm::checked_bias(function, "layer", layer);
  lm::check_vector(function, "constant", constant, layer.in_features(), "the layer input");
  merge_result<linear> result;
  result.layer.weight = layer.weight;
  result.layer.bias = bias;
  result.layer.bias.noalias() += layer.weight * constant;
  return result;
}

// ---------------------------------------------------------------------------------------------
// T11: conv -> fully connected

/// The conv applied to one `height` x `width` image (one RepMLP partition, padded on its own) as
/// a dense Linear: input x flattened as (c, i, j) -> (c * height + i) * width + j, output as
/// (o, i', j') over the conv's output grid oh x ow (= height x width for a stride-1 "same" conv,
/// giving the [(O h w) x (C h w)] matrix of RepMLP). Entry (row, col) sums the kernel taps that
/// read input pixel col for output row, so reflect / replicate / circular padding (several taps
/// on one pixel) are included; bias b_o is repeated oh * ow times. Exact. Throws reparam::error
/// for height/width < 1, an output grid smaller than 1 x 1, reflect padding not smaller than the
/// size, or inconsistent conv shapes. Allocates (O oh ow) x (C height width) doubles.
inline merge_result<linear> conv_to_fc(const conv2d& conv, index height, index width) {
  constexpr const char* function = "structural::conv_to_fc";
  using reparam::detail::check;
  namespace lm = detail::linear_merge;
  const Eigen::VectorXd bias = lm::checked_bias(function, "conv", conv);
  const conv_geometry& g = conv.geometry;
  check(height >= 1 && width >= 1, function, "the partition is ", height, "x", width,
        " but must be at least 1x1");
  const index kh = conv.kernel_h();
  const index kw = conv.kernel_w();
  const index span_h = height + g.pad_top + g.pad_bottom - g.dilation_h * (kh - 1) - 1;
  const index span_w = width + g.pad_left + g.pad_right - g.dilation_w * (kw - 1) - 1;
  check(span_h >= 0 && span_w >= 0, function, "a ", kh, "x", kw, " kernel with dilation ",
        g.dilation_h, "x", g.dilation_w, " does not fit the padded ", height, "x", width,
        " partition");
  check(g.mode != padding_mode::reflect || (g.pad_top < height && g.pad_bottom < height &&
                                            g.pad_left < width && g.pad_right < width),
        function, "reflect padding top/bottom/left/right ", g.pad_top, "/", g.pad_bottom, "/",
        g.pad_left, "/", g.pad_right, " must be smaller than the ", height, "x", width,
        " partition");
  const index out_h = span_h / g.stride_h + 1;
  const index out_w = span_w / g.stride_w + 1;
  const index o_total = conv.out_channels();
  const index per_group_in = conv.weight.dimension(1);
  const index per_group_out = o_total / g.groups;
  merge_result<linear> result;
  result.layer.weight =
      matrix<double>::Zero(o_total * out_h * out_w, conv.in_channels() * height * width);
  result.layer.bias.resize(o_total * out_h * out_w);
  for (index o = 0; o < o_total; ++o) {
    const index first_channel = (o / per_group_out) * per_group_in;
    for (index i = 0; i < out_h; ++i) {
      for (index j = 0; j < out_w; ++j) {
        const index row = (o * out_h + i) * out_w + j;
        result.layer.bias[row] = bias[o];
        for (index cl = 0; cl < per_group_in; ++cl) {
          for (index u = 0; u < kh; ++u) {
            const index sy = structural::detail::padded_source(
                i * g.stride_h - g.pad_top + u * g.dilation_h, height, g.mode);
            if (sy < 0) {
              continue;
            }
            for (index v = 0; v < kw; ++v) {
              const index sx = structural::detail::padded_source(
                  j * g.stride_w - g.pad_left + v * g.dilation_w, width, g.mode);
              if (sx < 0) {
                continue;
              }
              const index col = ((first_channel + cl) * height + sy) * width + sx;
              result.layer.weight(row, col) += conv.weight(o, cl, u, v);
            }
          }
        }
      }
    }
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// T12: chain collapse

/// Collapses y = L_n(... L_2(L_1(x))) (+ x if has_residual), with no nonlinearity between the
/// layers, into one Linear: W = W_n ... W_1 (+ I), b = W_n (... (W_2 b_1 + b_2) ...) + b_n.
/// Exact up to the double rounding of the products. Throws reparam::error for an empty chain,
/// layers[i].in_features() != layers[i-1].out_features(), or a residual around a non-square
/// chain. Allocates.
inline merge_result<linear> collapse_chain(const std::vector<linear>& layers, bool has_residual) {
  constexpr const char* function = "structural::collapse_chain";
  using reparam::detail::check;
  namespace lm = detail::linear_merge;
  check(!layers.empty(), function, "the chain has no layers");
  merge_result<linear> result;
  result.layer.weight = layers[0].weight;
  result.layer.bias = lm::checked_bias(function, "layers[0]", layers[0]);
  for (std::size_t i = 1; i < layers.size(); ++i) {
    const linear& next = layers[i];
    const std::string name = reparam::detail::concat("layers[", i, "]");
    const Eigen::VectorXd next_bias = lm::checked_bias(function, name.c_str(), next);
    check(next.in_features() == result.layer.weight.rows(), function, name, " takes ",
          next.in_features(), " inputs but layers[", i - 1, "] gives ",
          layers[i - 1].out_features(), " outputs");
    Eigen::VectorXd bias = next_bias;
    bias.noalias() += next.weight * result.layer.bias;
    matrix<double> weight(next.weight.rows(), result.layer.weight.cols());
    weight.noalias() = next.weight * result.layer.weight;
    result.layer.weight = std::move(weight);
    result.layer.bias = std::move(bias);
  }
  if (has_residual) {
    check(result.layer.weight.rows() == result.layer.weight.cols(), function, "the chain maps ",
          result.layer.weight.cols(), " inputs to ", result.layer.weight.rows(),
          " outputs; a residual needs them equal");
    result.layer.weight.diagonal().array() += 1.0;
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// T13: width merge of parallel branches sharing one input

/// Merges parallel FFNs that read the same input and whose outputs are summed,
/// y = sum_i down_i(act(up_i(x))), into one wider FFN: up = [up_1; up_2; ...] (hidden units
/// concatenated, biases concatenated), down = [down_1, down_2, ...] (columns concatenated),
/// down bias = sum of the down biases. Exact for any elementwise activation shared by all
/// branches. Throws reparam::error for no branches, different input or output widths, or a
/// branch whose down does not take its up's hidden units. Allocates.
inline merge_result<ffn> merge_parallel_ffn(const std::vector<ffn>& branches) {
  constexpr const char* function = "structural::merge_parallel_ffn";
  using reparam::detail::check;
  namespace lm = detail::linear_merge;
  check(!branches.empty(), function, "there are no branches");
  const index in = branches[0].up.in_features();
  const index out = branches[0].down.out_features();
  index hidden = 0;
  for (std::size_t i = 0; i < branches.size(); ++i) {
    const std::string name = reparam::detail::concat("branches[", i, "]");
    lm::check_ffn(function, name, branches[i]);
    check(branches[i].up.in_features() == in, function, name, " takes ",
          branches[i].up.in_features(), " inputs but branches[0] takes ", in,
          "; parallel branches must share one input");
    check(branches[i].down.out_features() == out, function, name, " gives ",
          branches[i].down.out_features(), " outputs but branches[0] gives ", out);
    hidden += branches[i].up.out_features();
  }
  merge_result<ffn> result;
  result.layer.up.weight.resize(hidden, in);
  result.layer.up.bias.resize(hidden);
  result.layer.down.weight.resize(out, hidden);
  result.layer.down.bias = Eigen::VectorXd::Zero(out);
  index offset = 0;
  for (const ffn& branch : branches) {
    const index width = branch.up.out_features();
    result.layer.up.weight.middleRows(offset, width) = branch.up.weight;
    result.layer.up.bias.segment(offset, width) =
        lm::checked_bias(function, "branch.up", branch.up);
    result.layer.down.weight.middleCols(offset, width) = branch.down.weight;
    result.layer.down.bias += lm::checked_bias(function, "branch.down", branch.down);
    offset += width;
  }
  return result;
}

/// Merges parallel self-attention modules that read the same input and whose outputs are
/// summed into one module with all their heads: q, k, v weights and biases stacked by rows
/// (branch 0's heads first), out weights concatenated by columns, out biases summed, heads
/// added. Exact. Every branch must have the same head_dim(), so the merged module keeps the
/// softmax scale 1/sqrt(head_dim) of every head (it is not recomputed from the new width).
/// Throws reparam::error for no branches, different head dims, different input or output
/// widths, or inconsistent shapes within a branch. Allocates.
inline merge_result<mhsa> merge_parallel_attention(const std::vector<mhsa>& branches) {
  constexpr const char* function = "structural::merge_parallel_attention";
  using reparam::detail::check;
  namespace lm = detail::linear_merge;
  check(!branches.empty(), function, "there are no branches");
  const index in = branches[0].q.in_features();
  const index out = branches[0].out.out_features();
  index width = 0;
  index heads = 0;
  index head_dim = 0;
  for (std::size_t i = 0; i < branches.size(); ++i) {
    const std::string name = reparam::detail::concat("branches[", i, "]");
    lm::check_mhsa(function, name, branches[i]);
    if (i == 0) {
      head_dim = branches[0].head_dim();
    }
    check(branches[i].head_dim() == head_dim, function, name, " has head dim ",
          branches[i].head_dim(), " (", branches[i].q.out_features(), " features / ",
          branches[i].heads, " heads) but branches[0] has ", head_dim,
          "; heads of different dims cannot be concatenated into one attention module, whose "
          "heads share one width and one softmax scale 1/sqrt(head_dim)");
    check(branches[i].q.in_features() == in, function, name, " takes ", branches[i].q.in_features(),
          " inputs but branches[0] takes ", in, "; parallel branches must share one input");
    check(branches[i].out.out_features() == out, function, name, " gives ",
          branches[i].out.out_features(), " outputs but branches[0] gives ", out);
    width += branches[i].q.out_features();
    heads += branches[i].heads;
  }
  merge_result<mhsa> result;
  result.layer.heads = heads;
  const std::array<linear*, 3> targets = {&result.layer.q, &result.layer.k, &result.layer.v};
  for (linear* projection : targets) {
    projection->weight.resize(width, in);
    projection->bias.resize(width);
  }
  result.layer.out.weight.resize(out, width);
  result.layer.out.bias = Eigen::VectorXd::Zero(out);
  index offset = 0;
  for (const mhsa& branch : branches) {
    const index rows = branch.q.out_features();
    const std::array<const linear*, 3> sources = {&branch.q, &branch.k, &branch.v};
    for (std::size_t p = 0; p < targets.size(); ++p) {
      targets[p]->weight.middleRows(offset, rows) = sources[p]->weight;
      targets[p]->bias.segment(offset, rows) =
          lm::checked_bias(function, "branch projection", *sources[p]);
    }
    result.layer.out.weight.middleCols(offset, rows) = branch.out.weight;
    result.layer.out.bias += lm::checked_bias(function, "branch.out", branch.out);
    offset += rows;
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// T15: expert averaging (approximate)

/// Converts a mixture of expert FFNs into one FFN by averaging every parameter elementwise
/// (Experts Weights Averaging, arXiv 2308.06093: after EWA training the experts stay close, so
/// the average approximates the mixture). APPROXIMATE: is_exact is false and the note says so,
/// unless all experts are bitwise identical, in which case the result is expert 0 (exact). If
/// `report` is not null it receives the dispersion of the experts around the average. Throws
/// reparam::error for no experts or experts of different shapes. Allocates.
inline merge_result<ffn> average_experts(const std::vector<ffn>& experts,
                                         expert_average_report* report) {
  constexpr const char* function = "structural::average_experts";
  using reparam::detail::check;
  namespace lm = detail::linear_merge;
  check(!experts.empty(), function, "there are no experts");
  const ffn& first = experts[0];
  // theta_i: the expert's parameters as one vector (up.weight, up.bias, down.weight, down.bias).
  const auto flatten = [&](const ffn& expert) {
    const Eigen::VectorXd up_bias = lm::checked_bias(function, "expert.up", expert.up);
    const Eigen::VectorXd down_bias = lm::checked_bias(function, "expert.down", expert.down);
    Eigen::VectorXd theta(expert.up.weight.size() + up_bias.size() + expert.down.weight.size() +
                          down_bias.size());
    index at = 0;
    theta.segment(at, expert.up.weight.size()) =
        Eigen::Map<const Eigen::VectorXd>(expert.up.weight.data(), expert.up.weight.size());
    at += expert.up.weight.size();
    theta.segment(at, up_bias.size()) = up_bias;
    at += up_bias.size();
    theta.segment(at, expert.down.weight.size()) =
        Eigen::Map<const Eigen::VectorXd>(expert.down.weight.data(), expert.down.weight.size());
    at += expert.down.weight.size();
    theta.segment(at, down_bias.size()) = down_bias;
    return theta;
  };
  std::vector<Eigen::VectorXd> thetas;
  thetas.reserve(experts.size());
  for (std::size_t i = 0; i < experts.size(); ++i) {
    const std::string name = reparam::detail::concat("experts[", i, "]");
    lm::check_ffn(function, name, experts[i]);
    check(experts[i].up.weight.rows() == first.up.weight.rows() &&
              experts[i].up.weight.cols() == first.up.weight.cols() &&
              experts[i].down.weight.rows() == first.down.weight.rows(),
          function, name, " has up [", experts[i].up.weight.rows(), ", ",
          experts[i].up.weight.cols(), "] and down [", experts[i].down.weight.rows(), ", ",
          experts[i].down.weight.cols(), "] but experts[0] has up [", first.up.weight.rows(), ", ",
          first.up.weight.cols(), "] and down [", first.down.weight.rows(), ", ",
          first.down.weight.cols(), "]");
    thetas.push_back(flatten(experts[i]));
  }
  bool is_identical = true;
  Eigen::VectorXd mean = Eigen::VectorXd::Zero(thetas[0].size());
  for (const Eigen::VectorXd& theta : thetas) {
    is_identical = is_identical && (theta.array() == thetas[0].array()).all();
    mean += theta;
  }
  mean /= static_cast<double>(thetas.size());
  if (is_identical) {
    mean = thetas[0];  // the exact copy; a sum then a division could round
  }
  merge_result<ffn> result;
  const index hidden = first.up.weight.rows();
  const index in = first.up.weight.cols();
  const index out = first.down.weight.rows();
  index at = 0;
  result.layer.up.weight = Eigen::Map<const matrix<double>>(mean.data() + at, hidden, in);
  at += hidden * in;
  result.layer.up.bias = mean.segment(at, hidden);
  at += hidden;
  result.layer.down.weight = Eigen::Map<const matrix<double>>(mean.data() + at, out, hidden);
  at += out * hidden;
  result.layer.down.bias = mean.segment(at, out);

  expert_average_report stats;
  stats.expert_count = static_cast<index>(experts.size());
  const double mean_norm = mean.norm();
  double sum_relative = 0.0;
  for (std::size_t i = 0; i < thetas.size(); ++i) {
    const Eigen::VectorXd deviation = thetas[i] - mean;
    const double deviation_norm = deviation.norm();
    double relative = 0.0;
    if (deviation_norm > 0.0) {
      relative =
          mean_norm > 0.0 ? deviation_norm / mean_norm : std::numeric_limits<double>::infinity();
    }
    if (relative > stats.max_relative_deviation) {
      stats.max_relative_deviation = relative;
      stats.worst_expert = static_cast<index>(i);
    }
    sum_relative += relative;
    stats.max_abs_deviation = std::fmax(stats.max_abs_deviation, deviation.cwiseAbs().maxCoeff());
  }
  stats.mean_relative_deviation = sum_relative / static_cast<double>(thetas.size());
  result.is_exact = is_identical;
  result.note =
      is_identical
          ? reparam::detail::concat("exact: all ", experts.size(),
                                    " experts are identical, so their average is each of them")
          : reparam::detail::concat(
                "approximate: the average of ", experts.size(),
                " experts (EWA) is not the mixture's function unless the experts are identical; "
                "max relative parameter deviation from the average ",
                stats.max_relative_deviation, " (expert ", stats.worst_expert, ")");
  if (report != nullptr) {
    *report = stats;
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// T16: low-rank adapter folding

/// Folds a low-rank update into `base`: W' = W + scale * B A with B [out, rank] and
/// A [rank, in] (LoRA: scale = alpha / rank), computed in double and rounded once by the caller's
/// to_float. The bias is unchanged. Exact up to that rounding; rank 0 returns base. Throws
/// reparam::error on shape mismatches or a non-finite scale. Allocates.
inline merge_result<linear> fold_low_rank(const linear& base, const matrix<double>& b,
                                          const matrix<double>& a, double scale) {
  constexpr const char* function = "structural::fold_low_rank";
  using reparam::detail::check;
  const Eigen::VectorXd bias = detail::linear_merge::checked_bias(function, "base", base);
  check(std::isfinite(scale), function, "scale ", scale, " is not finite");
  check(b.rows() == base.out_features() && a.cols() == base.in_features() && b.cols() == a.rows(),
        function, "b [", b.rows(), ", ", b.cols(), "] and a [", a.rows(), ", ", a.cols(),
        "] do not form a [", base.out_features(), ", ", base.in_features(),
        "] update (need b [out, rank], a [rank, in])");
  merge_result<linear> result;
  result.layer.weight = base.weight;
  if (b.cols() > 0) {
    result.layer.weight.noalias() += scale * (b * a);
  }
  result.layer.bias = bias;
  return result;
}

}  // namespace reparam::structural

#endif  // REPARAM_STRUCTURAL_LINEAR_MERGE_HPP

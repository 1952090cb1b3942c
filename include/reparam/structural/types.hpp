// SPDX-License-Identifier: Apache-2.0
// Vocabulary of the structural family (RepVGG / DBB / ACNet / MobileOne / RepLKNet / RePaViT
// branch merging): convolution, transposed convolution, linear and BatchNorm layers in the
// double working precision of the merges, their conversion from float checkpoint views, the one
// rounding back to float, and the result type every transform returns (new weights + whether they
// reproduce the original block exactly).
//
// Layouts (PyTorch / ONNX): conv weight OIHW [O, C/groups, kh, kw]; transposed conv weight
// [C_in, O/groups, kh, kw] (output channel on axis 1); linear weight [out, in]; activations NCHW.
// All tensors are Eigen RowMajor, so a [O, C, kh, kw] buffer from safetensors maps directly.
#ifndef REPARAM_STRUCTURAL_TYPES_HPP
#define REPARAM_STRUCTURAL_TYPES_HPP

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/tensor_views.hpp>
#include <reparam/core/views.hpp>

namespace reparam::structural {

/// How a convolution pads its input (PyTorch padding_mode).
enum class padding_mode : std::uint8_t { zeros = 0, reflect = 1, replicate = 2, circular = 3 };

constexpr const char* padding_mode_name(padding_mode mode) noexcept {
  switch (mode) {
    case padding_mode::zeros:
      return "zeros";
    case padding_mode::reflect:
      return "reflect";
    case padding_mode::replicate:
      return "replicate";
    case padding_mode::circular:
      return "circular";
  }
  return "unknown";
}

namespace detail {

/// Where padded coordinate `p` (in [-pad_before, size + pad_after)) reads from along an axis of
/// `size` under `mode`, or -1 for a zero. Reflect does not repeat the edge (PyTorch "reflect");
/// the caller has checked that the pads fit the mode. No allocation.
inline index padded_source(index p, index size, padding_mode mode) noexcept {
  if (p >= 0 && p < size) {
    return p;
  }
  switch (mode) {
    case padding_mode::zeros:
      return -1;
    case padding_mode::reflect:
      return p < 0 ? -p : 2 * (size - 1) - p;
    case padding_mode::replicate:
      return p < 0 ? 0 : size - 1;
    case padding_mode::circular:
      return ((p % size) + size) % size;
  }
  return -1;
}

}  // namespace detail

/// Geometry of a 2-D convolution (PyTorch Conv2d semantics). Padding is explicit per side, never
/// inferred from the kernel size: output height = (H + pad_top + pad_bottom - dilation_h*(kh-1)
/// - 1) / stride_h + 1.
struct conv_geometry {
  index stride_h = 1;
  index stride_w = 1;
  index pad_top = 0;
  index pad_bottom = 0;
  index pad_left = 0;
  index pad_right = 0;
  index dilation_h = 1;
  index dilation_w = 1;
  index groups = 1;
  padding_mode mode = padding_mode::zeros;

  /// Symmetric padding `pad` on every side.
  static conv_geometry padded(index pad, index stride = 1, index groups = 1, index dilation = 1,
                              padding_mode mode = padding_mode::zeros) noexcept {
    conv_geometry g;
    g.stride_h = g.stride_w = stride;
    g.pad_top = g.pad_bottom = g.pad_left = g.pad_right = pad;
    g.dilation_h = g.dilation_w = dilation;
    g.groups = groups;
    g.mode = mode;
    return g;
  }

  friend bool operator==(const conv_geometry& a, const conv_geometry& b) noexcept {
    return a.stride_h == b.stride_h && a.stride_w == b.stride_w && a.pad_top == b.pad_top &&
           a.pad_bottom == b.pad_bottom && a.pad_left == b.pad_left && a.pad_right == b.pad_right &&
           a.dilation_h == b.dilation_h && a.dilation_w == b.dilation_w && a.groups == b.groups &&
           a.mode == b.mode;
  }
  friend bool operator!=(const conv_geometry& a, const conv_geometry& b) noexcept {
    return !(a == b);
  }
};

/// A 2-D convolution in double: weight [O, C/groups, kh, kw], bias [O] (zeros for a layer
/// without bias).
struct conv2d {
  tensor<double, 4> weight;
  Eigen::VectorXd bias;
  conv_geometry geometry;

  index out_channels() const noexcept { return weight.dimension(0); }
  index in_channels() const noexcept { return weight.dimension(1) * geometry.groups; }
  index kernel_h() const noexcept { return weight.dimension(2); }
  index kernel_w() const noexcept { return weight.dimension(3); }
};

/// A 2-D transposed convolution in double: weight [C_in, O/groups, kh, kw], bias [O].
/// geometry.pad_* is the padding removed from the full output (PyTorch `padding`); output_padding
/// adds rows/columns at the bottom/right.
struct conv_transpose2d {
  tensor<double, 4> weight;
  Eigen::VectorXd bias;
  conv_geometry geometry;
  index output_padding_h = 0;
  index output_padding_w = 0;

  index in_channels() const noexcept { return weight.dimension(0); }
  index out_channels() const noexcept { return weight.dimension(1) * geometry.groups; }
};

/// A fully connected layer in double: y = W x + b, weight [out, in], bias [out].
struct linear {
  matrix<double> weight;
  Eigen::VectorXd bias;

  index out_features() const noexcept { return weight.rows(); }
  index in_features() const noexcept { return weight.cols(); }
};

/// BatchNorm in inference form: y_c = gamma_c (x_c - running_mean_c) / sqrt(running_var_c + eps)
/// + beta_c. The running statistics are named as such on purpose: folding uses them, never batch
/// statistics. An empty gamma/beta means affine=False (1 and 0). A layer recorded in training
/// mode (is_training) or without running statistics (has_running_stats false) cannot be folded,
/// and every transform refuses it with an error that says so.
struct batch_norm {
  Eigen::VectorXd gamma;  // empty: affine=False
  Eigen::VectorXd beta;   // empty: affine=False
  Eigen::VectorXd running_mean;
  Eigen::VectorXd running_var;
  double eps = 1e-5;
  bool is_training = false;
  bool has_running_stats = true;

  index channels() const noexcept { return running_mean.size(); }
};

/// The per-channel affine s, t of an inference BatchNorm: bn(x)_c = s_c x_c + t_c with
/// s_c = gamma_c / sqrt(var_c + eps), t_c = beta_c - mean_c s_c, in double. Throws reparam::error
/// (naming `function`) if the layer is in training mode, has no running statistics, has
/// inconsistent sizes, a negative eps or variance, or non-finite values.
struct channel_affine {
  Eigen::VectorXd scale;
  Eigen::VectorXd shift;
};

inline channel_affine bn_affine(const char* function, const batch_norm& bn) {
  using reparam::detail::check;
  check(!bn.is_training, function,
        "the BatchNorm is in training mode: its output uses batch statistics, which cannot be "
        "folded into weights (switch the model to eval mode and export running statistics)");
  check(bn.has_running_stats, function,
        "the BatchNorm has no running statistics (track_running_stats=False) and cannot be "
        "folded");
  const index c = bn.running_mean.size();
  check(c >= 1 && bn.running_var.size() == c, function, "BatchNorm running_mean has ", c,
        " values but running_var has ", bn.running_var.size());
  const bool is_affine = bn.gamma.size() != 0 || bn.beta.size() != 0;
  check(!is_affine || (bn.gamma.size() == c && bn.beta.size() == c), function,
        "BatchNorm gamma/beta have ", bn.gamma.size(), "/", bn.beta.size(), " values but ", c,
        " channels");
  check(std::isfinite(bn.eps) && bn.eps >= 0.0, function, "BatchNorm eps ", bn.eps,
        " must be finite and >= 0");
  channel_affine out{Eigen::VectorXd(c), Eigen::VectorXd(c)};
  for (index i = 0; i < c; ++i) {
    const double var = bn.running_var[i];
    const double mean = bn.running_mean[i];
    const double gamma = is_affine ? bn.gamma[i] : 1.0;
    const double beta = is_affine ? bn.beta[i] : 0.0;
    check(std::isfinite(var) && std::isfinite(mean) && std::isfinite(gamma) && std::isfinite(beta),
          function, "BatchNorm channel ", i, " has a non-finite statistic or affine value");
    check(var + bn.eps > 0.0, function, "BatchNorm channel ", i, " has running_var ", var,
          " + eps ", bn.eps, " <= 0");
    out.scale[i] = gamma / std::sqrt(var + bn.eps);
    out.shift[i] = beta - mean * out.scale[i];
  }
  return out;
}

/// What a transform returns: the new layer and whether it reproduces the original computation
/// exactly (up to the final rounding to float). `note` says why a result is approximate.
template <class Layer>
struct merge_result {
  Layer layer;
  bool is_exact = true;
  std::string note;
};

/// The float form of a merged convolution (rounded once from double).
struct conv2d_f {
  tensor<float, 4> weight;
  Eigen::VectorXf bias;
  conv_geometry geometry;
};

/// The float form of a merged linear layer.
struct linear_f {
  matrix<float> weight;
  Eigen::VectorXf bias;
};

/// A double conv2d from a float checkpoint view (weight [O, C/groups, kh, kw] row-major; `bias`
/// of O values, or empty for none). Throws reparam::error on a bias of the wrong size, groups
/// not dividing O, or non-finite weights.
inline conv2d conv2d_from(const const_tensor_map<float, 4>& weight, const Eigen::VectorXf& bias,
                          const conv_geometry& geometry) {
  constexpr const char* function = "structural::conv2d_from";
  using reparam::detail::check;
  const index o = weight.dimension(0);
  check(o >= 1 && weight.size() > 0, function, "the weight is empty");
  check(geometry.groups >= 1 && o % geometry.groups == 0, function, "groups ", geometry.groups,
        " does not divide the ", o, " output channels");
  check(bias.size() == 0 || bias.size() == o, function, "bias has ", bias.size(),
        " values but the weight has ", o, " output channels");
  conv2d out;
  out.weight = weight.cast<double>();
  out.bias = bias.size() == 0 ? Eigen::VectorXd::Zero(o) : Eigen::VectorXd(bias.cast<double>());
  out.geometry = geometry;
  for (index i = 0; i < out.weight.size(); ++i) {
    check(std::isfinite(out.weight.data()[i]), function, "weight element ", i, " is not finite");
  }
  return out;
}

/// Rounds a merged convolution to float once.
inline conv2d_f to_float(const conv2d& c) {
  return {c.weight.cast<float>(), c.bias.cast<float>(), c.geometry};
}

/// Rounds a merged linear layer to float once.
inline linear_f to_float(const linear& l) { return {l.weight.cast<float>(), l.bias.cast<float>()}; }

}  // namespace reparam::structural

#endif  // REPARAM_STRUCTURAL_TYPES_HPP

// SPDX-License-Identifier: Apache-2.0
// A small inference forward for checking structural merges on real data: 2-D convolution (every
// padding mode, stride, dilation, groups; im2col + one Eigen GEMM per image and group),
// eval-mode BatchNorm, ReLU, average pooling, global average pooling and linear layers, on
// activations [N, C, H, W] row-major in float or double. It runs the layers of
// structural/types.hpp (conv2d / linear in double, conv2d_f / linear_f in float) so a network can
// be evaluated before and after its branches are merged; the examples use it on a CIFAR-10
// ResNet-20 and the benches on RepVGG blocks. Semantics are PyTorch's (Conv2d with padding_mode,
// BatchNorm2d.eval(), AvgPool2d with count_include_pad=True, Linear).
//
// Not a kernel library: the functions allocate their outputs (conv2d_forward also one im2col
// buffer; conv2d_forward_into reuses caller-owned ones), and none of them is tuned beyond letting
// Eigen's GEMM do the arithmetic. No function keeps state: all are safe to call concurrently.
#ifndef REPARAM_STRUCTURAL_FORWARD_HPP
#define REPARAM_STRUCTURAL_FORWARD_HPP

#include <algorithm>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/scalar_traits.hpp>
#include <reparam/core/tensor_views.hpp>
#include <reparam/core/views.hpp>
#include <reparam/structural/types.hpp>

namespace reparam::structural {

/// Activations [N, C, H, W], row-major: channel c of image n is the contiguous H x W plane at
/// offset (n C + c) H W.
template <class Scalar>
using activations = tensor<Scalar, 4>;

/// Spatial size of a convolution's output.
struct conv_output_size {
  index height = 0;
  index width = 0;
};

namespace detail {

/// The checks every public conv entry point shares; returns the output size.
inline conv_output_size forward_conv_output(const char* function, const conv_geometry& g,
                                            index height, index width, index kernel_h,
                                            index kernel_w) {
  using reparam::detail::check;
  check(g.stride_h >= 1 && g.stride_w >= 1, function, "stride ", g.stride_h, "x", g.stride_w,
        " must be >= 1");
  check(g.dilation_h >= 1 && g.dilation_w >= 1, function, "dilation ", g.dilation_h, "x",
        g.dilation_w, " must be >= 1");
  check(g.pad_top >= 0 && g.pad_bottom >= 0 && g.pad_left >= 0 && g.pad_right >= 0, function,
        "padding (top ", g.pad_top, ", bottom ", g.pad_bottom, ", left ", g.pad_left, ", right ",
        g.pad_right, ") must be >= 0");
  check(kernel_h >= 1 && kernel_w >= 1, function, "kernel ", kernel_h, "x", kernel_w,
        " must be at least 1x1");
  check(height >= 1 && width >= 1, function, "input ", height, "x", width, " is empty");
  const index max_pad_h = std::max(g.pad_top, g.pad_bottom);
  const index max_pad_w = std::max(g.pad_left, g.pad_right);
  if (g.mode == padding_mode::reflect) {
    check(max_pad_h < height && max_pad_w < width, function, "reflect padding (", max_pad_h, ", ",
          max_pad_w, ") must be smaller than the input ", height, "x", width);
  }
  if (g.mode == padding_mode::circular) {
    check(max_pad_h <= height && max_pad_w <= width, function, "circular padding (", max_pad_h,
          ", ", max_pad_w, ") must not exceed the input ", height, "x", width);
  }
  const index span_h = g.dilation_h * (kernel_h - 1) + 1;
  const index span_w = g.dilation_w * (kernel_w - 1) + 1;
  const index padded_h = height + g.pad_top + g.pad_bottom;
  const index padded_w = width + g.pad_left + g.pad_right;
  check(padded_h >= span_h && padded_w >= span_w, function, "the padded input ", padded_h, "x",
        padded_w, " is smaller than the dilated kernel ", span_h, "x", span_w);
  return {(padded_h - span_h) / g.stride_h + 1, (padded_w - span_w) / g.stride_w + 1};
}

/// A convolution's parameters as raw views (weight [O, C/groups, kh, kw] row-major, bias of O
/// values or none), so one implementation serves conv2d and conv2d_f.
template <class Scalar>
struct forward_conv_view {
  const Scalar* weight = nullptr;
  index out_channels = 0;
  index group_channels = 0;  // C / groups
  index kernel_h = 0;
  index kernel_w = 0;
  const Scalar* bias = nullptr;  // nullptr: no bias
  index bias_size = 0;
  conv_geometry geometry;
};

/// Smallest j >= 0 with j * stride + offset >= 0 (stride >= 1).
inline index forward_first_at_least_zero(index offset, index stride) noexcept {
  return offset >= 0 ? 0 : (-offset + stride - 1) / stride;
}

/// Row `target` (out_width values) of the im2col matrix for one input row `source` (width
/// values, or nullptr for a zero-padded row), kernel column offset `start` = v dilation - pad_left:
/// target[j] = source at padded column j stride + start. Interior columns are a strided copy;
/// only the border columns consult the padding mode. No allocation.
template <class Scalar>
void forward_gather_row(Scalar* target, const Scalar* source, index out_width, index width,
                        index stride, index start, padding_mode mode) noexcept {
  if (source == nullptr) {
    std::fill(target, target + out_width, Scalar(0));
    return;
  }
  const index begin = std::min(forward_first_at_least_zero(start, stride), out_width);
  const index end =
      std::max(begin, std::min(forward_first_at_least_zero(start - width, stride), out_width));
  for (index j = 0; j < begin; ++j) {
    const index sx = padded_source(j * stride + start, width, mode);
    target[j] = sx < 0 ? Scalar(0) : source[sx];
  }
  if (stride == 1) {
    std::copy(source + begin + start, source + end + start, target + begin);
  } else {
    for (index j = begin; j < end; ++j) {
      target[j] = source[j * stride + start];
    }
  }
  for (index j = end; j < out_width; ++j) {
    const index sx = padded_source(j * stride + start, width, mode);
    target[j] = sx < 0 ? Scalar(0) : source[sx];
  }
}

template <class Scalar>
void forward_conv2d(const activations<Scalar>& x, const forward_conv_view<Scalar>& c,
                    activations<Scalar>& y, matrix<Scalar>& columns) {
  constexpr const char* function = "structural::conv2d_forward";
  using reparam::detail::check;
  const conv_geometry& g = c.geometry;
  const index batch = x.dimension(0);
  const index channels = x.dimension(1);
  const index height = x.dimension(2);
  const index width = x.dimension(3);
  check(g.groups >= 1, function, "groups ", g.groups, " must be >= 1");
  check(c.out_channels >= 1 && c.out_channels % g.groups == 0, function, "groups ", g.groups,
        " does not divide the ", c.out_channels, " output channels");
  check(c.group_channels * g.groups == channels, function, "the input has ", channels,
        " channels but the weight expects ", c.group_channels, " per group x ", g.groups,
        " groups = ", c.group_channels * g.groups);
  check(c.bias_size == 0 || c.bias_size == c.out_channels, function, "bias has ", c.bias_size,
        " values but the weight has ", c.out_channels, " output channels");
  check(batch >= 1, function, "the input batch is empty");
  check(&x != &y, function, "the output must not be the input");
  const conv_output_size out =
      forward_conv_output(function, g, height, width, c.kernel_h, c.kernel_w);

  const index plane = height * width;
  const index out_plane = out.height * out.width;
  const index group_out = c.out_channels / g.groups;
  const index taps = c.group_channels * c.kernel_h * c.kernel_w;  // GEMM depth
  const Eigen::array<index, 4> out_dims{batch, c.out_channels, out.height, out.width};
  if (y.dimensions() != out_dims) {
    y.resize(out_dims);
  }
  const const_matrix_map<Scalar> weight = row_major_map(c.weight, c.out_channels, taps);

  // A 1x1 kernel with stride 1 and no padding reads the input planes as they are.
  const bool is_pointwise = c.kernel_h == 1 && c.kernel_w == 1 && g.stride_h == 1 &&
                            g.stride_w == 1 && g.pad_top == 0 && g.pad_bottom == 0 &&
                            g.pad_left == 0 && g.pad_right == 0;
  if (!is_pointwise && (columns.rows() != taps || columns.cols() != out_plane)) {
    columns.resize(taps, out_plane);
  }

  for (index n = 0; n < batch; ++n) {
    for (index q = 0; q < g.groups; ++q) {
      const Scalar* input = x.data() + (n * channels + q * c.group_channels) * plane;
      if (!is_pointwise) {
        // im2col: row (cl, u, v) of `columns` holds the input values tap (u, v) of local input
        // channel cl sees at every output position.
        for (index cl = 0; cl < c.group_channels; ++cl) {
          const Scalar* source_plane = input + cl * plane;
          for (index u = 0; u < c.kernel_h; ++u) {
            for (index v = 0; v < c.kernel_w; ++v) {
              Scalar* row = columns.data() + ((cl * c.kernel_h + u) * c.kernel_w + v) * out_plane;
              for (index i = 0; i < out.height; ++i) {
                const index sy =
                    padded_source(i * g.stride_h - g.pad_top + u * g.dilation_h, height, g.mode);
                forward_gather_row(row + i * out.width,
                                   sy < 0 ? nullptr : source_plane + sy * width, out.width, width,
                                   g.stride_w, v * g.dilation_w - g.pad_left, g.mode);
              }
            }
          }
        }
      }
      const const_matrix_map<Scalar> patches =
          is_pointwise ? row_major_map(input, taps, out_plane)
                       : row_major_map(static_cast<const Scalar*>(columns.data()), taps, out_plane);
      matrix_map<Scalar> result = row_major_map(
          y.data() + (n * c.out_channels + q * group_out) * out_plane, group_out, out_plane);
      result.noalias() = weight.middleRows(q * group_out, group_out) * patches;
      if (c.bias != nullptr && c.bias_size != 0) {
        result.colwise() += const_vector_map<Scalar>(c.bias + q * group_out, group_out);
      }
    }
  }
}

template <class Scalar, class Conv>
forward_conv_view<Scalar> forward_view_of(const Conv& conv) noexcept {
  return {conv.weight.data(),       conv.weight.dimension(0),
          conv.weight.dimension(1), conv.weight.dimension(2),
          conv.weight.dimension(3), conv.bias.data(),
          conv.bias.size(),         conv.geometry};
}

}  // namespace detail

/// Output size of a convolution with geometry `geometry` and a kernel_h x kernel_w kernel on a
/// height x width input: (size + pads - dilation (k - 1) - 1) / stride + 1 per axis. Throws
/// reparam::error (naming structural::conv2d_output_size) on a stride or dilation < 1, a negative
/// pad, an empty input or kernel, pads too large for reflect (>= size) or circular (> size)
/// padding, or a dilated kernel larger than the padded input. No allocation.
inline conv_output_size conv2d_output_size(const conv_geometry& geometry, index height, index width,
                                           index kernel_h, index kernel_w) {
  return detail::forward_conv_output("structural::conv2d_output_size", geometry, height, width,
                                     kernel_h, kernel_w);
}

/// y = conv(x) for a double convolution (PyTorch Conv2d semantics: per-side padding in any
/// padding_mode, stride, dilation, groups; output channel o reads the input channels of group
/// o / (O/groups)). x is [N, C, H, W] with C = weight.dimension(1) * groups.
/// Cost: per image and group, an im2col copy of (C/g) kh kw x OH OW values (skipped for a 1x1
/// kernel with stride 1 and no padding) and one GEMM of O/g x (C/g) kh kw x OH OW: in total
/// N O (C/g) kh kw OH OW multiply-adds. Allocates the output and one im2col buffer (and Eigen's
/// GEMM its packing blocks). Accumulation order is Eigen's GEMM order, so results differ from a
/// direct loop by rounding only.
/// Throws reparam::error (structural::conv2d_forward) on a channel or bias mismatch, groups not
/// dividing O, and every geometry error of conv2d_output_size. Thread safe (no shared state).
inline activations<double> conv2d_forward(const activations<double>& x, const conv2d& conv) {
  activations<double> y;
  matrix<double> columns;
  detail::forward_conv2d(x, detail::forward_view_of<double>(conv), y, columns);
  return y;
}

/// The float form of conv2d_forward, for a convolution rounded to float once (to_float). Same
/// semantics, cost and errors; accumulates in float.
inline activations<float> conv2d_forward(const activations<float>& x, const conv2d_f& conv) {
  activations<float> y;
  matrix<float> columns;
  detail::forward_conv2d(x, detail::forward_view_of<float>(conv), y, columns);
  return y;
}

/// conv2d_forward into caller-owned buffers, for loops that run the same shapes repeatedly: `y`
/// is resized to [N, O, OH, OW] and `columns` (the im2col scratch) to [(C/g) kh kw, OH OW] only
/// when their shapes differ, so from the second call on the only allocations are Eigen's GEMM
/// packing blocks. `y` must not be `x`. Same semantics, cost and errors as conv2d_forward.
inline void conv2d_forward_into(const activations<double>& x, const conv2d& conv,
                                activations<double>& y, matrix<double>& columns) {
  detail::forward_conv2d(x, detail::forward_view_of<double>(conv), y, columns);
}

/// The float form of conv2d_forward_into.
inline void conv2d_forward_into(const activations<float>& x, const conv2d_f& conv,
                                activations<float>& y, matrix<float>& columns) {
  detail::forward_conv2d(x, detail::forward_view_of<float>(conv), y, columns);
}

/// Eval-mode BatchNorm over the channel axis: y_c = s_c x_c + t_c with s, t from bn_affine
/// (computed in double, then rounded to Scalar, so a float result carries up to about 4 roundings
/// relative to |s x| + |t|). Throws reparam::error (structural::batch_norm_forward) if the layer
/// is in training mode or has no running statistics (a forward with batch statistics is not an
/// inference forward), on inconsistent or non-finite statistics, or if its channel count differs
/// from x's. Allocates the output; O(N C H W).
template <class Scalar>
activations<Scalar> batch_norm_forward(const activations<Scalar>& x, const batch_norm& bn) {
  static_assert(is_supported_scalar_v<Scalar>, "reparam: Scalar must be float or double");
  constexpr const char* function = "structural::batch_norm_forward";
  const channel_affine affine = bn_affine(function, bn);
  reparam::detail::check(bn.channels() == x.dimension(1), function, "the BatchNorm has ",
                         bn.channels(), " channels but the input has ", x.dimension(1));
  const index channels = x.dimension(1);
  const index plane = x.dimension(2) * x.dimension(3);
  activations<Scalar> y(x.dimensions());
  for (index n = 0; n < x.dimension(0); ++n) {
    for (index ch = 0; ch < channels; ++ch) {
      const index offset = (n * channels + ch) * plane;
      const auto scale = static_cast<Scalar>(affine.scale[ch]);
      const auto shift = static_cast<Scalar>(affine.shift[ch]);
      Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>(y.data() + offset, plane) =
          Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>(x.data() + offset, plane) *
              scale +
          shift;
    }
  }
  return y;
}

/// x = max(x, 0) elementwise, in place (NaN stays NaN). No allocation; O(size).
template <class Scalar>
void relu_in_place(activations<Scalar>& x) noexcept {
  Scalar* data = x.data();
  for (index i = 0; i < x.size(); ++i) {
    data[i] = data[i] < Scalar(0) ? Scalar(0) : data[i];
  }
}

/// max(x, 0) elementwise (NaN stays NaN). Allocates the output; O(size).
template <class Scalar>
activations<Scalar> relu(const activations<Scalar>& x) {
  activations<Scalar> y = x;
  relu_in_place(y);
  return y;
}

/// Average pooling with a kernel x kernel window, stride `stride` and zero padding `pad` on every
/// side, the padded zeros counted in the divisor (PyTorch AvgPool2d with count_include_pad=True,
/// ceil_mode=False), which is the form that equals a convolution (catalogue T8). Throws
/// reparam::error (structural::avg_pool2d_forward) unless kernel >= 1, stride >= 1,
/// 0 <= pad <= kernel / 2 and the padded input holds one window. Allocates the output;
/// O(N C OH OW kernel^2).
template <class Scalar>
activations<Scalar> avg_pool2d_forward(const activations<Scalar>& x, index kernel, index stride,
                                       index pad) {
  static_assert(is_supported_scalar_v<Scalar>, "reparam: Scalar must be float or double");
  constexpr const char* function = "structural::avg_pool2d_forward";
  using reparam::detail::check;
  check(kernel >= 1 && stride >= 1, function, "kernel ", kernel, " and stride ", stride,
        " must be >= 1");
  check(pad >= 0 && 2 * pad <= kernel, function, "pad ", pad,
        " must be in [0, kernel / 2] for kernel ", kernel);
  const index height = x.dimension(2);
  const index width = x.dimension(3);
  check(height + 2 * pad >= kernel && width + 2 * pad >= kernel, function, "the padded input ",
        height + 2 * pad, "x", width + 2 * pad, " is smaller than the kernel ", kernel);
  const index out_h = (height + 2 * pad - kernel) / stride + 1;
  const index out_w = (width + 2 * pad - kernel) / stride + 1;
  const auto divisor = static_cast<Scalar>(kernel * kernel);
  activations<Scalar> y(x.dimension(0), x.dimension(1), out_h, out_w);
  for (index nc = 0; nc < x.dimension(0) * x.dimension(1); ++nc) {
    const Scalar* source = x.data() + nc * height * width;
    Scalar* target = y.data() + nc * out_h * out_w;
    for (index i = 0; i < out_h; ++i) {
      const index top = std::max<index>(i * stride - pad, 0);
      const index bottom = std::min<index>(i * stride - pad + kernel, height);
      for (index j = 0; j < out_w; ++j) {
        const index left = std::max<index>(j * stride - pad, 0);
        const index right = std::min<index>(j * stride - pad + kernel, width);
        Scalar sum(0);
        for (index r = top; r < bottom; ++r) {
          for (index s = left; s < right; ++s) {
            sum += source[r * width + s];
          }
        }
        target[i * out_w + j] = sum / divisor;
      }
    }
  }
  return y;
}

/// The mean of every H x W plane: [N, C] (row n = image n). Throws reparam::error
/// (structural::global_avg_pool) on an empty plane. Allocates the output; O(N C H W).
template <class Scalar>
matrix<Scalar> global_avg_pool(const activations<Scalar>& x) {
  static_assert(is_supported_scalar_v<Scalar>, "reparam: Scalar must be float or double");
  const index plane = x.dimension(2) * x.dimension(3);
  reparam::detail::check(plane >= 1, "structural::global_avg_pool", "the input planes are empty (",
                         x.dimension(2), "x", x.dimension(3), ")");
  matrix<Scalar> y(x.dimension(0), x.dimension(1));
  for (index n = 0; n < x.dimension(0); ++n) {
    for (index ch = 0; ch < x.dimension(1); ++ch) {
      y(n, ch) =
          const_vector_map<Scalar>(x.data() + (n * x.dimension(1) + ch) * plane, plane).sum() /
          static_cast<Scalar>(plane);
    }
  }
  return y;
}

namespace detail {

template <class Scalar, class Weight, class Bias>
matrix<Scalar> forward_linear(const matrix<Scalar>& x, const Weight& weight, const Bias& bias) {
  constexpr const char* function = "structural::linear_forward";
  using reparam::detail::check;
  check(x.cols() == weight.cols(), function, "the input has ", x.cols(),
        " features but the weight expects ", weight.cols());
  check(bias.size() == 0 || bias.size() == weight.rows(), function, "bias has ", bias.size(),
        " values but the weight has ", weight.rows(), " outputs");
  matrix<Scalar> y(x.rows(), weight.rows());
  y.noalias() = x * weight.transpose();
  if (bias.size() != 0) {
    y.rowwise() += bias.transpose();
  }
  return y;
}

}  // namespace detail

/// y = x W^T + b for every row of x [rows, in]: [rows, out]. Throws reparam::error
/// (structural::linear_forward) on a feature or bias mismatch. Allocates the output; one GEMM.
inline matrix<double> linear_forward(const matrix<double>& x, const linear& layer) {
  return detail::forward_linear(x, layer.weight, layer.bias);
}

/// The float form of linear_forward, for a layer rounded to float once (to_float).
inline matrix<float> linear_forward(const matrix<float>& x, const linear_f& layer) {
  return detail::forward_linear(x, layer.weight, layer.bias);
}

}  // namespace reparam::structural

#endif  // REPARAM_STRUCTURAL_FORWARD_HPP

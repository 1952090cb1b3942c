// SPDX-License-Identifier: Apache-2.0
// Direct double-precision reference layers for the structural tests: 2-D convolution (any stride,
// per-side padding, padding mode, dilation, groups), transposed convolution, BatchNorm (eval),
// average pooling and linear layers, written as the textbook loops (no im2col, no GEMM) so they
// are an oracle independent of the library. Activations are [N, C, H, W] row-major.
#ifndef REPARAM_TESTS_SUPPORT_REFERENCE_CONV_HPP
#define REPARAM_TESTS_SUPPORT_REFERENCE_CONV_HPP

#include <cmath>
#include <stdexcept>

#include <reparam/core/tensor_views.hpp>
#include <reparam/structural/types.hpp>

namespace reparam::test {

using activations = tensor<double, 4>;  // [N, C, H, W]

/// The source index of padded coordinate `p` (in [-pad, size + pad)) along an axis of `size`,
/// or -1 for a zero-padded position.
inline index padded_source(index p, index size, structural::padding_mode mode) {
  if (p >= 0 && p < size) {
    return p;
  }
  switch (mode) {
    case structural::padding_mode::zeros:
      return -1;
    case structural::padding_mode::reflect: {
      // Reflection without repeating the edge (PyTorch "reflect"); pads < size.
      index q = p < 0 ? -p : 2 * (size - 1) - p;
      if (q < 0 || q >= size) {
        throw std::invalid_argument("reference conv: reflect padding larger than the input");
      }
      return q;
    }
    case structural::padding_mode::replicate:
      return p < 0 ? 0 : size - 1;
    case structural::padding_mode::circular:
      return ((p % size) + size) % size;
  }
  return -1;
}

/// y = conv(x) with weight [O, C/g, kh, kw], bias [O], geometry g.
inline activations reference_conv2d(const activations& x, const structural::conv2d& c) {
  const auto& g = c.geometry;
  const index n = x.dimension(0);
  const index cin = x.dimension(1);
  const index h = x.dimension(2);
  const index w = x.dimension(3);
  const index o = c.weight.dimension(0);
  const index cg = c.weight.dimension(1);
  const index kh = c.weight.dimension(2);
  const index kw = c.weight.dimension(3);
  if (cg * g.groups != cin || o % g.groups != 0) {
    throw std::invalid_argument("reference conv: channel mismatch");
  }
  const index oh = (h + g.pad_top + g.pad_bottom - g.dilation_h * (kh - 1) - 1) / g.stride_h + 1;
  const index ow = (w + g.pad_left + g.pad_right - g.dilation_w * (kw - 1) - 1) / g.stride_w + 1;
  activations y(n, o, oh, ow);
  const index og = o / g.groups;
  for (index b = 0; b < n; ++b) {
    for (index oc = 0; oc < o; ++oc) {
      const index group = oc / og;
      for (index i = 0; i < oh; ++i) {
        for (index j = 0; j < ow; ++j) {
          double sum = c.bias.size() == 0 ? 0.0 : c.bias[oc];
          for (index cl = 0; cl < cg; ++cl) {
            const index ic = group * cg + cl;
            for (index u = 0; u < kh; ++u) {
              const index sy =
                  padded_source(i * g.stride_h - g.pad_top + u * g.dilation_h, h, g.mode);
              if (sy < 0) {
                continue;
              }
              for (index v = 0; v < kw; ++v) {
                const index sx =
                    padded_source(j * g.stride_w - g.pad_left + v * g.dilation_w, w, g.mode);
                if (sx < 0) {
                  continue;
                }
                sum += c.weight(oc, cl, u, v) * x(b, ic, sy, sx);
              }
            }
          }
          y(b, oc, i, j) = sum;
        }
      }
    }
  }
  return y;
}

/// y = conv_transpose(x): every input pixel scatters weight[ic, ol, u, v] * x into output
/// (i * stride - pad_top + u * dilation, j * stride - pad_left + v * dilation) of channel
/// group * O/g + ol (zero padding only, as PyTorch).
inline activations reference_conv_transpose2d(const activations& x,
                                              const structural::conv_transpose2d& c) {
  const auto& g = c.geometry;
  const index n = x.dimension(0);
  const index cin = x.dimension(1);
  const index h = x.dimension(2);
  const index w = x.dimension(3);
  const index og = c.weight.dimension(1);
  const index kh = c.weight.dimension(2);
  const index kw = c.weight.dimension(3);
  const index o = og * g.groups;
  const index ig = cin / g.groups;
  const index oh = (h - 1) * g.stride_h - g.pad_top - g.pad_bottom + g.dilation_h * (kh - 1) +
                   c.output_padding_h + 1;
  const index ow = (w - 1) * g.stride_w - g.pad_left - g.pad_right + g.dilation_w * (kw - 1) +
                   c.output_padding_w + 1;
  activations y(n, o, oh, ow);
  for (index b = 0; b < n; ++b) {
    for (index oc = 0; oc < o; ++oc) {
      for (index i = 0; i < oh; ++i) {
        for (index j = 0; j < ow; ++j) {
          y(b, oc, i, j) = c.bias.size() == 0 ? 0.0 : c.bias[oc];
        }
      }
    }
    for (index ic = 0; ic < cin; ++ic) {
      const index group = ic / ig;
      for (index ol = 0; ol < og; ++ol) {
        const index oc = group * og + ol;
        for (index i = 0; i < h; ++i) {
          for (index j = 0; j < w; ++j) {
            for (index u = 0; u < kh; ++u) {
              const index ty = i * g.stride_h - g.pad_top + u * g.dilation_h;
              if (ty < 0 || ty >= oh) {
                continue;
              }
              for (index v = 0; v < kw; ++v) {
                const index tx = j * g.stride_w - g.pad_left + v * g.dilation_w;
                if (tx < 0 || tx >= ow) {
                  continue;
                }
                y(b, oc, ty, tx) += c.weight(ic, ol, u, v) * x(b, ic, i, j);
              }
            }
          }
        }
      }
    }
  }
  return y;
}

/// Eval-mode BatchNorm over the channel axis, straight from its formula.
inline activations reference_batch_norm(const activations& x, const structural::batch_norm& bn) {
  activations y(x.dimensions());
  const bool is_affine = bn.gamma.size() != 0;
  for (index b = 0; b < x.dimension(0); ++b) {
    for (index c = 0; c < x.dimension(1); ++c) {
      const double inv = 1.0 / std::sqrt(bn.running_var[c] + bn.eps);
      for (index i = 0; i < x.dimension(2); ++i) {
        for (index j = 0; j < x.dimension(3); ++j) {
          const double z = (x(b, c, i, j) - bn.running_mean[c]) * inv;
          y(b, c, i, j) = is_affine ? bn.gamma[c] * z + bn.beta[c] : z;
        }
      }
    }
  }
  return y;
}

/// Average pooling k x k, stride s, zero padding p, count_include_pad (divisor k*k always).
inline activations reference_avg_pool(const activations& x, index k, index s, index p) {
  const index h = x.dimension(2);
  const index w = x.dimension(3);
  const index oh = (h + 2 * p - k) / s + 1;
  const index ow = (w + 2 * p - k) / s + 1;
  activations y(x.dimension(0), x.dimension(1), oh, ow);
  for (index b = 0; b < x.dimension(0); ++b) {
    for (index c = 0; c < x.dimension(1); ++c) {
      for (index i = 0; i < oh; ++i) {
        for (index j = 0; j < ow; ++j) {
          double sum = 0.0;
          for (index u = 0; u < k; ++u) {
            for (index v = 0; v < k; ++v) {
              const index sy = i * s - p + u;
              const index sx = j * s - p + v;
              if (sy >= 0 && sy < h && sx >= 0 && sx < w) {
                sum += x(b, c, sy, sx);
              }
            }
          }
          y(b, c, i, j) = sum / static_cast<double>(k * k);
        }
      }
    }
  }
  return y;
}

/// y = W x + b for every row of x [tokens, in].
inline matrix<double> reference_linear(const matrix<double>& x, const structural::linear& l) {
  matrix<double> y(x.rows(), l.weight.rows());
  for (index t = 0; t < x.rows(); ++t) {
    for (index o = 0; o < l.weight.rows(); ++o) {
      double sum = l.bias.size() == 0 ? 0.0 : l.bias[o];
      for (index i = 0; i < l.weight.cols(); ++i) {
        sum += l.weight(o, i) * x(t, i);
      }
      y(t, o) = sum;
    }
  }
  return y;
}

/// Largest |a - b| over two equally shaped tensors (throws on a shape mismatch).
inline double max_abs_diff(const activations& a, const activations& b) {
  if (a.dimensions() != b.dimensions()) {
    throw std::invalid_argument("max_abs_diff: shapes differ");
  }
  double m = 0.0;
  for (index i = 0; i < a.size(); ++i) {
    m = std::fmax(m, std::fabs(a.data()[i] - b.data()[i]));
  }
  return m;
}

/// Largest |a| (the scale for relative tolerances).
inline double max_abs(const activations& a) {
  double m = 0.0;
  for (index i = 0; i < a.size(); ++i) {
    m = std::fmax(m, std::fabs(a.data()[i]));
  }
  return m;
}

}  // namespace reparam::test

#endif  // REPARAM_TESTS_SUPPORT_REFERENCE_CONV_HPP

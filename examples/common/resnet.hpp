// SPDX-License-Identifier: Apache-2.0
// A small CIFAR-10 ResNet runner for the structural family, shared by reparam_structural_resnet,
// the demo's structural section and tests/examples/structural_real_test.cpp. It loads the bundled
// akamaster ResNet-20 (data/resnet_cifar10: stem conv-BN-ReLU, 3 stages of BasicBlocks with
// option-A shortcuts, global average pooling, linear) and the first CIFAR-10 test images
// (data/cifar10_test_1000), and runs it with reparam::structural's inference forward in float or
// double: as trained (every BatchNorm a separate layer), with every conv+BN folded
// (structural::fold_batch_norm), and with stage 1 rebuilt as RepVGG blocks (a 1x1 conv-BN and an
// identity BN added next to each 3x3 conv-BN), multi-branch or merged (structural::merge_repvgg).
// Lives above the library: nothing in include/reparam depends on it.
#ifndef REPARAM_EXAMPLES_COMMON_RESNET_HPP
#define REPARAM_EXAMPLES_COMMON_RESNET_HPP

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/tensor_views.hpp>
#include <reparam/core/views.hpp>
#include <reparam/io/safetensors.hpp>
#include <reparam/structural/conv_merge.hpp>
#include <reparam/structural/conv_recipes.hpp>
#include <reparam/structural/forward.hpp>
#include <reparam/structural/types.hpp>

namespace examples::resnet {

namespace st = reparam::structural;
using reparam::index;

inline constexpr index image_side = 32;
inline constexpr index image_channels = 3;
inline constexpr index class_count = 10;
/// One CIFAR-10 binary record: a label byte, then 1024 R, 1024 G and 1024 B bytes (CHW).
inline constexpr index cifar_record_bytes = 1 + image_channels * image_side * image_side;

// --- the model ----------------------------------------------------------------------------------

/// One BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). The shortcut is the
/// identity (shortcut_pad == 0) or option A: x[:, :, ::2, ::2] with shortcut_pad zero channels
/// added on each side.
struct basic_block {
  st::conv_bn first;
  st::conv_bn second;
  index shortcut_pad = 0;
};

/// A CIFAR ResNet (6n + 2 layers) as loaded, in the double working form of the structural family.
struct model {
  st::conv_bn stem;
  std::vector<basic_block> blocks;  // stage-major: stage s holds blocks [s n, (s + 1) n)
  index blocks_per_stage = 0;
  st::linear head;
  std::array<float, 3> mean{};    // input normalisation per RGB channel
  std::array<float, 3> stddev{};  // (x / 255 - mean) / stddev
  std::map<std::string, std::string> metadata;
};

namespace detail {

inline Eigen::VectorXd load_vector(const reparam::io::safetensors_file& file,
                                   const std::string& name) {
  const std::vector<float> values = file.to_float(name);
  Eigen::VectorXd out(static_cast<index>(values.size()));
  for (std::size_t i = 0; i < values.size(); ++i) {
    out[static_cast<index>(i)] = static_cast<double>(values[i]);
  }
  return out;
}

inline st::conv2d load_conv(const reparam::io::safetensors_file& file, const std::string& name,
                            const st::conv_geometry& geometry) {
  const std::vector<index>& shape = file.info(name).shape;
  reparam::detail::check_io(shape.size() == 4, "examples::resnet::load_model", "'", file.path(),
                            "': ", name, " has rank ", shape.size(), ", expected 4 (OIHW)");
  const std::vector<float> values = file.to_float(name);
  const reparam::const_tensor_map<float, 4> weight(values.data(), shape[0], shape[1], shape[2],
                                                   shape[3]);
  return st::conv2d_from(weight, Eigen::VectorXf(), geometry);
}

inline st::batch_norm load_bn(const reparam::io::safetensors_file& file, const std::string& prefix,
                              double eps) {
  st::batch_norm bn;
  bn.gamma = load_vector(file, prefix + ".weight");
  bn.beta = load_vector(file, prefix + ".bias");
  bn.running_mean = load_vector(file, prefix + ".running_mean");
  bn.running_var = load_vector(file, prefix + ".running_var");
  bn.eps = eps;
  return bn;
}

/// "a,b,c" -> {a, b, c}, or `fallback` when the text is empty.
inline std::array<float, 3> parse_triple(const std::string& text, std::array<float, 3> fallback) {
  if (text.empty()) {
    return fallback;
  }
  std::array<float, 3> out{};
  std::istringstream in(text);
  for (std::size_t i = 0; i < 3; ++i) {
    std::string item;
    std::getline(in, item, ',');
    out[i] = std::stof(item);
  }
  return out;
}

}  // namespace detail

/// Loads a CIFAR ResNet from its safetensors (data/resnet_cifar10/README.md has the names and the
/// architecture): the number of blocks per stage comes from the tensor names, the BN eps and the
/// input normalisation from __metadata__ (defaults 1e-5 and the ImageNet constants). Throws
/// reparam::io_error on a missing or malformed file or tensor.
inline model load_model(const std::string& path) {
  const reparam::io::safetensors_file file = reparam::io::safetensors_file::open(path);
  model m;
  m.metadata = file.metadata();
  const auto meta = [&](const char* key) {
    const auto it = m.metadata.find(key);
    return it == m.metadata.end() ? std::string() : it->second;
  };
  const double eps = meta("bn_eps").empty() ? 1e-5 : std::stod(meta("bn_eps"));
  m.mean = detail::parse_triple(meta("input_normalization_mean"), {0.485f, 0.456f, 0.406f});
  m.stddev = detail::parse_triple(meta("input_normalization_std"), {0.229f, 0.224f, 0.225f});
  while (file.contains("layer1." + std::to_string(m.blocks_per_stage) + ".conv1.weight")) {
    ++m.blocks_per_stage;
  }
  reparam::detail::check_io(m.blocks_per_stage >= 1, "examples::resnet::load_model", "'", path,
                            "' has no layer1.0.conv1.weight: not a CIFAR ResNet");
  m.stem = {detail::load_conv(file, "conv1.weight", st::conv_geometry::padded(1)),
            detail::load_bn(file, "bn1", eps)};
  index channels = m.stem.conv.out_channels();
  for (int stage = 1; stage <= 3; ++stage) {
    for (index i = 0; i < m.blocks_per_stage; ++i) {
      const std::string prefix = "layer" + std::to_string(stage) + "." + std::to_string(i);
      const index stride = stage > 1 && i == 0 ? 2 : 1;
      basic_block block;
      block.first = {
          detail::load_conv(file, prefix + ".conv1.weight", st::conv_geometry::padded(1, stride)),
          detail::load_bn(file, prefix + ".bn1", eps)};
      block.second = {
          detail::load_conv(file, prefix + ".conv2.weight", st::conv_geometry::padded(1)),
          detail::load_bn(file, prefix + ".bn2", eps)};
      const index planes = block.first.conv.out_channels();
      reparam::detail::check_io(block.first.conv.in_channels() == channels,
                                "examples::resnet::load_model", "'", path, "': ", prefix, " reads ",
                                block.first.conv.in_channels(),
                                " channels but the previous layer has ", channels);
      if (stride != 1 || planes != channels) {
        reparam::detail::check_io(stride == 2 && planes == 2 * channels,
                                  "examples::resnet::load_model", "'", path, "': ", prefix,
                                  " changes ", channels, " to ", planes,
                                  " channels; option A needs stride 2 and twice the channels");
        block.shortcut_pad = planes / 4;
      }
      channels = planes;
      m.blocks.push_back(std::move(block));
    }
  }
  m.head.weight = file.load_matrix("linear.weight").cast<double>();
  m.head.bias = detail::load_vector(file, "linear.bias");
  reparam::detail::check_io(
      m.head.weight.cols() == channels && m.head.bias.size() == m.head.weight.rows(),
      "examples::resnet::load_model", "'", path, "': linear layer ", m.head.weight.rows(), "x",
      m.head.weight.cols(), " does not follow ", channels, " channels");
  return m;
}

// --- the data -----------------------------------------------------------------------------------

/// Images [N, 3, 32, 32] normalised for the model, and their labels (0..9).
struct dataset {
  st::activations<float> images;
  std::vector<int> labels;
};

/// Reads the first `count` records of a CIFAR-10 binary file and normalises them as the model was
/// trained: (float(byte) / 255 - mean) / stddev per channel, in float (torchvision's ToTensor and
/// Normalize). Throws reparam::io_error if the file cannot be read or holds fewer records.
inline dataset load_cifar10(const std::string& path, index count, const std::array<float, 3>& mean,
                            const std::array<float, 3>& stddev) {
  constexpr const char* function = "examples::resnet::load_cifar10";
  std::ifstream in(path, std::ios::binary);
  reparam::detail::check_io(in.is_open(), function, "cannot open '", path, "'");
  std::vector<unsigned char> bytes(static_cast<std::size_t>(count * cifar_record_bytes));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  reparam::detail::check_io(in.gcount() == static_cast<std::streamsize>(bytes.size()), function,
                            "'", path, "' holds fewer than ", count, " records of ",
                            cifar_record_bytes, " bytes");
  dataset out{st::activations<float>(count, image_channels, image_side, image_side), {}};
  constexpr index plane = image_side * image_side;
  for (index i = 0; i < count; ++i) {
    const unsigned char* record = bytes.data() + i * cifar_record_bytes;
    out.labels.push_back(static_cast<int>(record[0]));
    for (index c = 0; c < image_channels; ++c) {
      const auto channel = static_cast<std::size_t>(c);
      float* target = out.images.data() + (i * image_channels + c) * plane;
      for (index p = 0; p < plane; ++p) {
        const float value = static_cast<float>(record[1 + c * plane + p]) / 255.0f;
        target[p] = (value - mean[channel]) / stddev[channel];
      }
    }
  }
  return out;
}

/// The reference file data/resnet_cifar10/resnet20_ref_logits_first1000.safetensors: PyTorch's
/// float32 logits [N, 10], its predictions and the labels.
struct reference_logits {
  reparam::matrix<float> logits;
  std::vector<int> predictions;
  std::vector<int> labels;
};

inline reference_logits load_reference_logits(const std::string& path) {
  const reparam::io::safetensors_file file = reparam::io::safetensors_file::open(path);
  reference_logits out;
  out.logits = file.load_matrix("logits");
  for (const std::int32_t p : file.to_int32("pred")) {
    out.predictions.push_back(p);
  }
  for (const std::int32_t l : file.to_int32("labels")) {
    out.labels.push_back(l);
  }
  return out;
}

// --- executable networks ------------------------------------------------------------------------

/// The convolution type the forward runs in Scalar: conv2d (double) or conv2d_f (float).
template <class Scalar>
using conv_type = std::conditional_t<std::is_same_v<Scalar, double>, st::conv2d, st::conv2d_f>;
template <class Scalar>
using linear_type = std::conditional_t<std::is_same_v<Scalar, double>, st::linear, st::linear_f>;

/// A double layer in the Scalar the forward runs in (float: rounded once).
template <class Scalar>
conv_type<Scalar> in_scalar(const st::conv2d& c) {
  if constexpr (std::is_same_v<Scalar, double>) {
    return c;
  } else {
    return st::to_float(c);
  }
}

template <class Scalar>
linear_type<Scalar> in_scalar(const st::linear& l) {
  if constexpr (std::is_same_v<Scalar, double>) {
    return l;
  } else {
    return st::to_float(l);
  }
}

/// A conv, then its BatchNorm as a separate layer if `bn` is set (absent once folded).
template <class Scalar>
struct conv_step {
  conv_type<Scalar> conv;
  std::optional<st::batch_norm> bn;
};

template <class Scalar>
st::activations<Scalar> apply(const conv_step<Scalar>& step, const st::activations<Scalar>& x) {
  st::activations<Scalar> y = st::conv2d_forward(x, step.conv);
  if (step.bn) {
    y = st::batch_norm_forward(y, *step.bn);
  }
  return y;
}

template <class Scalar>
struct block_step {
  conv_step<Scalar> first;
  conv_step<Scalar> second;
  index shortcut_pad = 0;
};

/// A ResNet ready to run in Scalar.
template <class Scalar>
struct network {
  conv_step<Scalar> stem;
  std::vector<block_step<Scalar>> blocks;
  linear_type<Scalar> head;
};

/// The network as trained: every BatchNorm a separate layer after its conv.
template <class Scalar>
network<Scalar> reference_network(const model& m) {
  const auto step = [](const st::conv_bn& layer) {
    return conv_step<Scalar>{in_scalar<Scalar>(layer.conv), layer.bn};
  };
  network<Scalar> net{step(m.stem), {}, in_scalar<Scalar>(m.head)};
  for (const basic_block& b : m.blocks) {
    net.blocks.push_back({step(b.first), step(b.second), b.shortcut_pad});
  }
  return net;
}

/// Every conv+BN folded into one conv with bias (structural::fold_batch_norm, in double, then
/// rounded to Scalar once). `all_exact` (if given) receives whether every fold said it is exact.
template <class Scalar>
network<Scalar> folded_network(const model& m, bool* all_exact = nullptr) {
  bool exact = true;
  const auto step = [&exact](const st::conv_bn& layer) {
    const st::merge_result<st::conv2d> folded = st::fold_batch_norm(layer.conv, layer.bn);
    exact = exact && folded.is_exact;
    return conv_step<Scalar>{in_scalar<Scalar>(folded.layer), std::nullopt};
  };
  network<Scalar> net{step(m.stem), {}, in_scalar<Scalar>(m.head)};
  for (const basic_block& b : m.blocks) {
    net.blocks.push_back({step(b.first), step(b.second), b.shortcut_pad});
  }
  if (all_exact != nullptr) {
    *all_exact = exact;
  }
  return net;
}

/// Option A: x[:, :, ::2, ::2] with `pad` zero channels before and after.
template <class Scalar>
st::activations<Scalar> option_a_shortcut(const st::activations<Scalar>& x, index pad) {
  const index channels = x.dimension(1);
  const index height = x.dimension(2);
  const index width = x.dimension(3);
  const index out_h = (height + 1) / 2;
  const index out_w = (width + 1) / 2;
  st::activations<Scalar> y(x.dimension(0), channels + 2 * pad, out_h, out_w);
  y.setZero();
  for (index n = 0; n < x.dimension(0); ++n) {
    for (index c = 0; c < channels; ++c) {
      for (index i = 0; i < out_h; ++i) {
        for (index j = 0; j < out_w; ++j) {
          y(n, pad + c, i, j) = x(n, c, 2 * i, 2 * j);
        }
      }
    }
  }
  return y;
}

template <class Scalar>
st::activations<Scalar> block_forward(const block_step<Scalar>& block,
                                      const st::activations<Scalar>& x) {
  st::activations<Scalar> h = apply(block.first, x);
  st::relu_in_place(h);
  st::activations<Scalar> out = apply(block.second, h);
  if (block.shortcut_pad == 0) {
    out += x;
  } else {
    out += option_a_shortcut(x, block.shortcut_pad);
  }
  st::relu_in_place(out);
  return out;
}

/// relu(stem(images)): the input of stage 1.
template <class Scalar>
st::activations<Scalar> stem_forward(const network<Scalar>& net,
                                     const st::activations<Scalar>& images) {
  st::activations<Scalar> x = apply(net.stem, images);
  st::relu_in_place(x);
  return x;
}

/// Logits [N, classes] of a batch of normalised images [N, 3, 32, 32].
template <class Scalar>
reparam::matrix<Scalar> forward(const network<Scalar>& net, const st::activations<Scalar>& images) {
  st::activations<Scalar> x = stem_forward(net, images);
  for (const block_step<Scalar>& block : net.blocks) {
    x = block_forward(block, x);
  }
  return st::linear_forward(st::global_avg_pool(x), net.head);
}

/// Images [first, first + count) of `images` as a Scalar tensor (a copy).
template <class Scalar>
st::activations<Scalar> slice(const st::activations<float>& images, index first, index count) {
  const index per_image = images.dimension(1) * images.dimension(2) * images.dimension(3);
  st::activations<Scalar> out(count, images.dimension(1), images.dimension(2), images.dimension(3));
  const float* source = images.data() + first * per_image;
  for (index i = 0; i < count * per_image; ++i) {
    out.data()[i] = static_cast<Scalar>(source[i]);
  }
  return out;
}

/// Logits of the first `count` images (all if count < 0), in batches of `batch` images.
template <class Scalar>
reparam::matrix<Scalar> classify(const network<Scalar>& net, const st::activations<float>& images,
                                 index count = -1, index batch = 50) {
  const index total = count < 0 ? images.dimension(0) : std::min(count, images.dimension(0));
  reparam::matrix<Scalar> logits(total, net.head.weight.rows());
  for (index first = 0; first < total; first += batch) {
    const index size = std::min(batch, total - first);
    logits.middleRows(first, size) = forward(net, slice<Scalar>(images, first, size));
  }
  return logits;
}

/// The index of the largest value of every row (the first one on ties).
template <class Derived>
std::vector<int> argmax_rows(const Eigen::MatrixBase<Derived>& logits) {
  std::vector<int> out;
  for (index r = 0; r < logits.rows(); ++r) {
    index best = 0;
    logits.row(r).maxCoeff(&best);
    out.push_back(static_cast<int>(best));
  }
  return out;
}

/// How many of `predictions` equal `labels` over their common length.
inline index count_equal(const std::vector<int>& predictions, const std::vector<int>& labels) {
  index same = 0;
  for (std::size_t i = 0; i < std::min(predictions.size(), labels.size()); ++i) {
    same += predictions[i] == labels[i] ? 1 : 0;
  }
  return same;
}

/// max |a - b| over the top-left block both share.
template <class A, class B>
double max_abs_difference(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const index rows = std::min(a.rows(), b.rows());
  const index cols = std::min(a.cols(), b.cols());
  return (a.topLeftCorner(rows, cols).template cast<double>() -
          b.topLeftCorner(rows, cols).template cast<double>())
      .cwiseAbs()
      .maxCoeff();
}

// --- stage 1 as RepVGG blocks -------------------------------------------------------------------

/// Stage 1 with every 3x3 conv-BN turned into a RepVGG block (2 per BasicBlock, in order).
/// The added branches are derived deterministically from the real weights, not trained: the 1x1
/// kernel is half the 3x3 kernel's centre tap, and the 1x1 and identity BatchNorms have
/// statistics drawn from fixed Philox streams, far from identity (small variances, non-zero
/// means, gamma away from 1). The stage then computes a different function than the trained one;
/// what matters is that the multi-branch and merged forms agree.
struct repvgg_stage {
  std::vector<st::repvgg_block> units;
};

inline repvgg_stage make_repvgg_stage(const model& m, std::uint64_t seed = 0x5eed2024) {
  repvgg_stage stage;
  reparam::philox_engine engine(seed, 0);
  const auto uniform = [&engine](double lo, double hi) {
    return lo + (hi - lo) * reparam::uniform_open01_double(engine(), engine());
  };
  const auto random_bn = [&](index channels, double gamma_lo, double gamma_hi) {
    st::batch_norm bn;
    bn.gamma.resize(channels);
    bn.beta.resize(channels);
    bn.running_mean.resize(channels);
    bn.running_var.resize(channels);
    for (index c = 0; c < channels; ++c) {
      bn.gamma[c] = uniform(gamma_lo, gamma_hi);
      bn.beta[c] = uniform(-0.2, 0.2);
      bn.running_mean[c] = uniform(-0.3, 0.3);
      bn.running_var[c] = uniform(0.01, 0.3);
    }
    return bn;
  };
  for (index b = 0; b < m.blocks_per_stage; ++b) {
    for (const st::conv_bn* dense : {&m.blocks[static_cast<std::size_t>(b)].first,
                                     &m.blocks[static_cast<std::size_t>(b)].second}) {
      const index out = dense->conv.out_channels();
      const index in = dense->conv.in_channels();
      st::conv_bn one;
      one.conv.weight = reparam::tensor<double, 4>(out, in, 1, 1);
      for (index o = 0; o < out; ++o) {
        for (index c = 0; c < in; ++c) {
          one.conv.weight(o, c, 0, 0) = 0.5 * dense->conv.weight(o, c, 1, 1);
        }
      }
      one.conv.bias = Eigen::VectorXd::Zero(out);
      one.conv.geometry = st::conv_geometry::padded(0);
      one.bn = random_bn(out, 0.1, 0.6);
      stage.units.push_back({*dense, one, random_bn(out, 0.05, 0.3)});
    }
  }
  return stage;
}

/// A RepVGG block as its three branches, run separately and summed.
template <class Scalar>
struct multi_branch_unit {
  conv_step<Scalar> dense;
  conv_step<Scalar> one_by_one;
  st::batch_norm identity;
};

template <class Scalar>
st::activations<Scalar> apply(const multi_branch_unit<Scalar>& unit,
                              const st::activations<Scalar>& x) {
  st::activations<Scalar> y = apply(unit.dense, x);
  y += apply(unit.one_by_one, x);
  y += st::batch_norm_forward(x, unit.identity);
  return y;
}

template <class Scalar>
std::vector<multi_branch_unit<Scalar>> multi_branch_units(const repvgg_stage& stage) {
  std::vector<multi_branch_unit<Scalar>> out;
  for (const st::repvgg_block& u : stage.units) {
    out.push_back({{in_scalar<Scalar>(u.dense.conv), u.dense.bn},
                   {in_scalar<Scalar>(u.one_by_one->conv), u.one_by_one->bn},
                   *u.identity});
  }
  return out;
}

/// Every unit merged (structural::merge_repvgg, in double) into one conv, rounded to Scalar once.
template <class Scalar>
std::vector<conv_step<Scalar>> merged_units(const std::vector<st::conv2d>& merged) {
  std::vector<conv_step<Scalar>> out;
  for (const st::conv2d& c : merged) {
    out.push_back({in_scalar<Scalar>(c), std::nullopt});
  }
  return out;
}

/// Stage 1 (identity shortcuts) over units given two per BasicBlock.
template <class Scalar, class Unit>
st::activations<Scalar> stage_forward(const std::vector<Unit>& units, st::activations<Scalar> x) {
  for (std::size_t b = 0; b + 1 < units.size(); b += 2) {
    st::activations<Scalar> h = apply(units[b], x);
    st::relu_in_place(h);
    st::activations<Scalar> out = apply(units[b + 1], h);
    out += x;
    st::relu_in_place(out);
    x = std::move(out);
  }
  return x;
}

/// What check_repvgg_stage measured. Bound ratios are max |difference| / derived bound over all
/// elements (<= 1 means within the bound).
struct repvgg_stage_report {
  index images = 0;
  index units = 0;
  bool is_exact = true;                // every merge_repvgg result says it is exact
  double max_abs_diff_double = 0.0;    // stage output, merged vs multi-branch, in double
  double max_abs_output_double = 0.0;  // largest |stage output|
  double unit_bound_ratio = 0.0;       // each unit on the same input, double
  double stage_bound_ratio = 0.0;      // the whole stage, double, propagated bound
  double max_abs_diff_float = 0.0;     // stage output, merged vs multi-branch, in float
  double max_abs_output_float = 0.0;
  double float_unit_bound_ratio = 0.0;          // each unit on the same input, float
  double float_bound_ratio = 0.0;               // the whole stage, float, same propagated bound
  double seconds_per_image_multi_branch = 0.0;  // float stage forward, best of `repeats`
  double seconds_per_image_merged = 0.0;
};

namespace detail {

inline st::conv2d absolute(const st::conv2d& c) {
  st::conv2d a;
  a.weight = c.weight.abs();
  a.bias = Eigen::VectorXd::Zero(c.out_channels());
  a.geometry = c.geometry;
  return a;
}

/// sum_b |s_b| (|W_b| * |x|) + |t_b| over the three branches of a RepVGG unit: the magnitude
/// both the multi-branch and the merged computations round against.
inline st::activations<double> unit_magnitude(const st::repvgg_block& unit,
                                              const st::activations<double>& x) {
  const st::activations<double> ax = x.abs();
  const auto scaled = [&](st::activations<double> v, const st::batch_norm& bn) {
    const st::channel_affine a = st::bn_affine("examples::resnet::unit_magnitude", bn);
    for (index n = 0; n < v.dimension(0); ++n) {
      for (index c = 0; c < v.dimension(1); ++c) {
        for (index i = 0; i < v.dimension(2); ++i) {
          for (index j = 0; j < v.dimension(3); ++j) {
            v(n, c, i, j) = std::abs(a.scale[c]) * v(n, c, i, j) + std::abs(a.shift[c]);
          }
        }
      }
    }
    return v;
  };
  st::activations<double> m =
      scaled(st::conv2d_forward(ax, absolute(unit.dense.conv)), unit.dense.bn);
  m += scaled(st::conv2d_forward(ax, absolute(unit.one_by_one->conv)), unit.one_by_one->bn);
  m += scaled(ax, *unit.identity);
  return m;
}

inline double max_ratio(const st::activations<double>& diff, const st::activations<double>& bound) {
  double worst = 0.0;
  for (index i = 0; i < diff.size(); ++i) {
    const double d = diff.data()[i];
    if (d != 0.0) {
      worst = std::max(worst, d / bound.data()[i]);
    }
  }
  return worst;
}

inline double max_abs(const st::activations<double>& x) {
  double worst = 0.0;
  for (index i = 0; i < x.size(); ++i) {
    worst = std::max(worst, std::abs(x.data()[i]));
  }
  return worst;
}

}  // namespace detail

/// Runs stage 1 as RepVGG blocks on the stem output of the first `count` images, multi-branch
/// and merged, in double and in float, and compares the outputs with a bound derived from the
/// rounding analysis (first order in the unit roundoff u):
/// - one unit on the same input x: each of the two computations is within (K + 4) u M of the
///   exact value with the same BN scale/shift, where K = C kh kw = 144 accumulated products and
///   M = sum_b |s_b| (|W_b| * |x|) + |t_b| (detail::unit_magnitude): the conv sum (gamma_K), the
///   BN scale and shift (2 u) and the 2 branch additions (2 u) on one side; the merged weight
///   products and 3-term sums (3 u), the bias sum and the conv on the other. Bound per element:
///   2 (K + 6) u M (the +2 per side absorbs the final rounding, in float the rounding of s, t
///   and of the merged weights to float, and second-order terms).
/// - through the stage: an input difference e propagates through a merged unit as
///   |W_merged| * e (ReLU is 1-Lipschitz), the residual add contributes 2 u |sum|, so
///   e_out = local bound + |W'| * e_in, summed along the chain exactly as the forward runs.
/// The bound is linear in u: computed once, it is scaled by u = 2^-53 (double) and 2^-24 (float).
/// Times the float stage (multi-branch vs merged) in batches of `batch`, best of `repeats`.
inline repvgg_stage_report check_repvgg_stage(const model& m, const repvgg_stage& stage,
                                              const st::activations<float>& images, index count,
                                              index batch = 50, int repeats = 3) {
  using clock = std::chrono::steady_clock;
  repvgg_stage_report report;
  report.images = count;
  report.units = static_cast<index>(stage.units.size());
  std::vector<st::conv2d> merged;
  for (const st::repvgg_block& unit : stage.units) {
    st::merge_result<st::conv2d> r = st::merge_repvgg(unit);
    report.is_exact = report.is_exact && r.is_exact;
    merged.push_back(std::move(r.layer));
  }

  // Double: multi-branch chain (x_u), merged chain (x_m) and the bound (in units of u).
  constexpr double unit_roundoff = std::numeric_limits<double>::epsilon() / 2.0;
  constexpr double unit_roundoff_float =
      static_cast<double>(std::numeric_limits<float>::epsilon()) / 2.0;
  const network<double> ref = reference_network<double>(m);
  const std::vector<multi_branch_unit<double>> multi = multi_branch_units<double>(stage);
  const std::vector<conv_step<double>> single = merged_units<double>(merged);
  const std::vector<multi_branch_unit<float>> multi_f = multi_branch_units<float>(stage);
  const std::vector<conv_step<float>> single_f = merged_units<float>(merged);
  const st::activations<double> stem = stem_forward(ref, slice<double>(images, 0, count));
  st::activations<double> x_u = stem;
  st::activations<double> x_m = stem;
  st::activations<double> bound = stem.constant(0.0);
  // The local bound of unit `u` on input x (in units of u), after checking the unit on that same
  // input, multi-branch vs merged, in double and (on x rounded to float) in float.
  const auto local = [&](std::size_t u, const st::activations<double>& x) {
    const double taps = static_cast<double>(merged[u].weight.size() / merged[u].out_channels());
    const st::activations<double> mag = detail::unit_magnitude(stage.units[u], x);
    const st::activations<double> b = mag * (2.0 * (taps + 6.0));
    const st::activations<double> d = (apply(multi[u], x) - apply(single[u], x)).abs();
    report.unit_bound_ratio =
        std::max(report.unit_bound_ratio, detail::max_ratio(d, b * unit_roundoff));
    const st::activations<float> xf = x.cast<float>();
    const st::activations<double> d_f =
        (apply(multi_f[u], xf) - apply(single_f[u], xf)).cast<double>().abs();
    report.float_unit_bound_ratio =
        std::max(report.float_unit_bound_ratio, detail::max_ratio(d_f, b * unit_roundoff_float));
    return b;
  };
  const auto propagate = [&](std::size_t u, const st::activations<double>& e) {
    return st::conv2d_forward(e, detail::absolute(merged[u]));
  };
  for (std::size_t u = 0; u + 1 < stage.units.size(); u += 2) {
    // First unit of the BasicBlock, each chain on its own input.
    const st::activations<double> e_first = local(u, x_u) + propagate(u, bound);
    st::activations<double> h_u = apply(multi[u], x_u);
    st::activations<double> h_m = apply(single[u], x_m);
    st::relu_in_place(h_u);
    st::relu_in_place(h_m);
    // Second unit, the residual add (2 u |sum|) and the ReLU (1-Lipschitz).
    const st::activations<double> local_second = local(u + 1, h_u);
    st::activations<double> o_u = apply(multi[u + 1], h_u);
    st::activations<double> o_m = apply(single[u + 1], h_m);
    o_u += x_u;
    o_m += x_m;
    bound = local_second + propagate(u + 1, e_first) + bound + o_u.abs() * 2.0;
    st::relu_in_place(o_u);
    st::relu_in_place(o_m);
    x_u = std::move(o_u);
    x_m = std::move(o_m);
  }
  const st::activations<double> diff = (x_u - x_m).abs();
  report.max_abs_diff_double = detail::max_abs(diff);
  report.max_abs_output_double = detail::max_abs(x_u);
  report.stage_bound_ratio = detail::max_ratio(diff, bound * unit_roundoff);

  // Float: the same comparison, and the timings.
  const network<float> ref_f = reference_network<float>(m);
  std::vector<st::activations<float>> inputs;
  for (index first = 0; first < count; first += batch) {
    inputs.push_back(
        stem_forward(ref_f, slice<float>(images, first, std::min(batch, count - first))));
  }
  const auto run = [&](const auto& units, double* best_seconds) {
    std::vector<st::activations<float>> outputs;
    for (int r = 0; r < std::max(repeats, 1); ++r) {
      outputs.clear();
      const auto start = clock::now();
      for (const st::activations<float>& x : inputs) {
        outputs.push_back(stage_forward<float>(units, x));
      }
      const double seconds = std::chrono::duration<double>(clock::now() - start).count();
      *best_seconds = r == 0 ? seconds : std::min(*best_seconds, seconds);
    }
    return outputs;
  };
  double multi_seconds = 0.0;
  double merged_seconds = 0.0;
  const std::vector<st::activations<float>> out_u = run(multi_f, &multi_seconds);
  const std::vector<st::activations<float>> out_m = run(single_f, &merged_seconds);
  const index per_image = x_u.size() / count;
  st::activations<double> diff_f(x_u.dimensions());
  for (std::size_t b = 0; b < out_u.size(); ++b) {
    const index offset = static_cast<index>(b) * batch * per_image;
    for (index i = 0; i < out_u[b].size(); ++i) {
      const double a = static_cast<double>(out_u[b].data()[i]);
      diff_f.data()[offset + i] = std::abs(a - static_cast<double>(out_m[b].data()[i]));
      report.max_abs_output_float = std::max(report.max_abs_output_float, std::abs(a));
    }
  }
  report.max_abs_diff_float = detail::max_abs(diff_f);
  report.float_bound_ratio = detail::max_ratio(diff_f, bound * unit_roundoff_float);
  report.seconds_per_image_multi_branch = multi_seconds / static_cast<double>(count);
  report.seconds_per_image_merged = merged_seconds / static_cast<double>(count);
  return report;
}

/// Seconds per image of classify() over the first `count` images, best of `repeats` runs.
template <class Scalar>
double seconds_per_image(const network<Scalar>& net, const st::activations<float>& images,
                         index count, index batch = 50, int repeats = 1) {
  using clock = std::chrono::steady_clock;
  double best = 0.0;
  for (int r = 0; r < std::max(repeats, 1); ++r) {
    const auto start = clock::now();
    const reparam::matrix<Scalar> logits = classify(net, images, count, batch);
    const double seconds = std::chrono::duration<double>(clock::now() - start).count();
    best = r == 0 ? seconds : std::min(best, seconds);
    reparam::detail::check(logits.rows() == count, "examples::resnet::seconds_per_image",
                           "classified ", logits.rows(), " of ", count, " images");
  }
  return best / static_cast<double>(count);
}

/// One network evaluated on the first `images` images: logits (as double), predictions, top-1
/// against the labels, argmax agreement and max |logit difference| against the reference file,
/// and the time classify() took (one run, batches of `batch`).
struct evaluation {
  reparam::matrix<double> logits;
  std::vector<int> predictions;
  index images = 0;
  index correct = 0;
  index agree_with_file = 0;
  double max_abs_diff_file = 0.0;
  double seconds = 0.0;

  double top1() const { return static_cast<double>(correct) / static_cast<double>(images); }
  double images_per_second() const { return static_cast<double>(images) / seconds; }
};

template <class Scalar>
evaluation evaluate(const network<Scalar>& net, const dataset& data, const reference_logits& ref,
                    index images, index batch = 50) {
  using clock = std::chrono::steady_clock;
  evaluation e;
  e.images = std::min(images, data.images.dimension(0));
  const auto start = clock::now();
  e.logits = classify(net, data.images, e.images, batch).template cast<double>();
  e.seconds = std::chrono::duration<double>(clock::now() - start).count();
  e.predictions = argmax_rows(e.logits);
  e.correct = count_equal(e.predictions, data.labels);
  e.agree_with_file = count_equal(e.predictions, ref.predictions);
  e.max_abs_diff_file = max_abs_difference(e.logits, ref.logits);
  return e;
}

}  // namespace examples::resnet

#endif  // REPARAM_EXAMPLES_COMMON_RESNET_HPP

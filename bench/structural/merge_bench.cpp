// SPDX-License-Identifier: Apache-2.0
// What structural merging costs and what it buys (structural/conv_recipes.hpp merge_repvgg,
// structural/forward.hpp):
//
//   structural/merge_repvgg_b0/merge      merge every block of a RepVGG-B0-sized network
//                                         (arXiv 2101.03697 table 2, a = 1, b = 2.5: widths 64,
//                                         64 x4, 128 x6, 256 x16, 1280 x1; each stage's first block
//                                         has stride 2 and no identity branch) from its 3x3
//                                         conv-BN, 1x1 conv-BN and identity-BN branches, random
//                                         weights
//   structural/merge_repvgg_b0/memcpy     copying the same parameter bytes: the floor for any
//                                         pass over the training-time weights
//   structural/repvgg_forward/unmerged    a stack of `blocks` RepVGG blocks (C -> C, stride 1,
//                                         identity branch) on one C x size x size image in float:
//                                         3x3 conv + 1x1 conv, then the three BatchNorms, the two
//                                         additions and the ReLU fused into one pass (the
//                                         unmerged form at its cheapest)
//   structural/repvgg_forward/merged      the same stack merged: one 3x3 conv with bias + ReLU
//
// Forward args: channels, size, blocks. Both forwards use structural::conv2d_forward_into with
// buffers sized before the timed loop (the only allocations left are Eigen's GEMM packing
// blocks). bytes_per_second counts the parameter bytes for the merge and memcpy impls (counter
// weight_bytes), and weights + each block's input and output activations for the forwards.
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#include <reparam/core/index.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/tensor_views.hpp>
#include <reparam/core/views.hpp>
#include <reparam/structural/conv_recipes.hpp>
#include <reparam/structural/forward.hpp>
#include <reparam/structural/types.hpp>

#include "support/bench_context.hpp"

namespace {

namespace st = reparam::structural;
using reparam::index;

class uniform_source {
 public:
  explicit uniform_source(std::uint64_t seed) : engine_(seed, 0) {}
  double next(double lo, double hi) {
    return lo + (hi - lo) * reparam::uniform_open01_double(engine_(), engine_());
  }

 private:
  reparam::philox_engine engine_;
};

st::batch_norm random_bn(index channels, uniform_source& random) {
  st::batch_norm bn;
  bn.gamma.resize(channels);
  bn.beta.resize(channels);
  bn.running_mean.resize(channels);
  bn.running_var.resize(channels);
  for (index c = 0; c < channels; ++c) {
    bn.gamma[c] = random.next(0.5, 1.5);
    bn.beta[c] = random.next(-0.1, 0.1);
    bn.running_mean[c] = random.next(-0.1, 0.1);
    bn.running_var[c] = random.next(0.5, 1.5);
  }
  return bn;
}

st::conv_bn random_conv_bn(index out, index in, index kernel, index stride,
                           uniform_source& random) {
  st::conv_bn layer;
  layer.conv.weight = reparam::tensor<double, 4>(out, in, kernel, kernel);
  // He-style scale so a stack of blocks keeps its activations in range.
  const double scale = 1.0 / static_cast<double>(in * kernel * kernel);
  for (index i = 0; i < layer.conv.weight.size(); ++i) {
    layer.conv.weight.data()[i] = random.next(-scale, scale);
  }
  layer.conv.bias.resize(0);
  layer.conv.geometry = st::conv_geometry::padded(kernel / 2, stride);
  layer.bn = random_bn(out, random);
  return layer;
}

st::repvgg_block random_repvgg(index in, index out, index stride, uniform_source& random) {
  st::repvgg_block block;
  block.dense = random_conv_bn(out, in, 3, stride, random);
  block.one_by_one = random_conv_bn(out, in, 1, stride, random);
  if (in == out && stride == 1) {
    block.identity = random_bn(out, random);
  }
  return block;
}

/// RepVGG-B0's 28 blocks, built once (about 116 MB of double parameters).
const std::vector<st::repvgg_block>& repvgg_b0() {
  static const std::vector<st::repvgg_block> blocks = [] {
    const index widths[] = {64, 64, 128, 256, 1280};
    const index depths[] = {1, 4, 6, 16, 1};
    uniform_source random(0xb0);
    std::vector<st::repvgg_block> out;
    index channels = 3;
    for (std::size_t stage = 0; stage < 5; ++stage) {
      for (index i = 0; i < depths[stage]; ++i) {
        out.push_back(random_repvgg(channels, widths[stage], i == 0 ? 2 : 1, random));
        channels = widths[stage];
      }
    }
    return out;
  }();
  return blocks;
}

/// Every parameter array of the blocks as (pointer, bytes).
std::vector<std::pair<const void*, std::size_t>> parameter_spans(
    const std::vector<st::repvgg_block>& blocks) {
  std::vector<std::pair<const void*, std::size_t>> spans;
  const auto add_bn = [&](const st::batch_norm& bn) {
    for (const Eigen::VectorXd* v : {&bn.gamma, &bn.beta, &bn.running_mean, &bn.running_var}) {
      spans.emplace_back(v->data(), static_cast<std::size_t>(v->size()) * sizeof(double));
    }
  };
  const auto add_conv_bn = [&](const st::conv_bn& layer) {
    spans.emplace_back(layer.conv.weight.data(),
                       static_cast<std::size_t>(layer.conv.weight.size()) * sizeof(double));
    add_bn(layer.bn);
  };
  for (const st::repvgg_block& b : blocks) {
    add_conv_bn(b.dense);
    if (b.one_by_one) {
      add_conv_bn(*b.one_by_one);
    }
    if (b.identity) {
      add_bn(*b.identity);
    }
  }
  return spans;
}

std::size_t total_bytes(const std::vector<std::pair<const void*, std::size_t>>& spans) {
  std::size_t bytes = 0;
  for (const auto& span : spans) {
    bytes += span.second;
  }
  return bytes;
}

void set_parameter_counters(benchmark::State& state, std::size_t bytes) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(bytes));
  state.counters["weight_bytes"] = static_cast<double>(bytes);
  state.counters["blocks"] = static_cast<double>(repvgg_b0().size());
}

void merge_b0(benchmark::State& state) {
  const std::vector<st::repvgg_block>& blocks = repvgg_b0();
  for (auto _ : state) {
    for (const st::repvgg_block& block : blocks) {
      const st::merge_result<st::conv2d> merged = st::merge_repvgg(block);
      benchmark::DoNotOptimize(merged.layer.weight.data());
    }
    benchmark::ClobberMemory();
  }
  set_parameter_counters(state, total_bytes(parameter_spans(blocks)));
}

void memcpy_b0(benchmark::State& state) {
  const auto spans = parameter_spans(repvgg_b0());
  const std::size_t bytes = total_bytes(spans);
  std::vector<unsigned char> target(bytes);
  std::memset(target.data(), 0, bytes);  // touch the pages before timing
  for (auto _ : state) {
    unsigned char* out = target.data();
    for (const auto& span : spans) {
      std::memcpy(out, span.first, span.second);
      out += span.second;
    }
    benchmark::DoNotOptimize(target.data());
    benchmark::ClobberMemory();
  }
  set_parameter_counters(state, bytes);
}

// --- forward -------------------------------------------------------------------------------------

/// One unmerged block in float: the two convs without bias, and per channel the BN scale of
/// each branch and the sum of the three BN shifts.
struct unmerged_block {
  st::conv2d_f dense;
  st::conv2d_f one_by_one;
  Eigen::ArrayXf dense_scale;
  Eigen::ArrayXf one_scale;
  Eigen::ArrayXf identity_scale;
  Eigen::ArrayXf shift;
};

struct forward_case {
  std::vector<unmerged_block> unmerged;
  std::vector<st::conv2d_f> merged;
  st::activations<float> input;
  std::size_t unmerged_bytes = 0;  // weights + BN parameters + activations in and out
  std::size_t merged_bytes = 0;
};

forward_case make_forward_case(index channels, index size, index blocks) {
  forward_case c;
  uniform_source random(0xf0 + static_cast<std::uint64_t>(channels));
  const auto plane_bytes = static_cast<std::size_t>(channels * size * size) * sizeof(float);
  for (index b = 0; b < blocks; ++b) {
    const st::repvgg_block block = random_repvgg(channels, channels, 1, random);
    const st::channel_affine dense = st::bn_affine("bench", block.dense.bn);
    const st::channel_affine one = st::bn_affine("bench", block.one_by_one->bn);
    const st::channel_affine identity = st::bn_affine("bench", *block.identity);
    c.unmerged.push_back({st::to_float(block.dense.conv), st::to_float(block.one_by_one->conv),
                          dense.scale.cast<float>().array(), one.scale.cast<float>().array(),
                          identity.scale.cast<float>().array(),
                          (dense.shift + one.shift + identity.shift).cast<float>().array()});
    c.merged.push_back(st::to_float(st::merge_repvgg(block).layer));
    c.unmerged_bytes +=
        static_cast<std::size_t>(10 * channels * channels + 4 * channels) * sizeof(float) +
        2 * plane_bytes;
    c.merged_bytes += static_cast<std::size_t>(9 * channels * channels + channels) * sizeof(float) +
                      2 * plane_bytes;
  }
  c.input = st::activations<float>(1, channels, size, size);
  for (index i = 0; i < c.input.size(); ++i) {
    c.input.data()[i] = static_cast<float>(random.next(-1.0, 1.0));
  }
  return c;
}

void set_forward_counters(benchmark::State& state, std::size_t bytes) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(bytes));
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));  // images
}

void forward_unmerged(benchmark::State& state) {
  const forward_case c = make_forward_case(state.range(0), state.range(1), state.range(2));
  const index channels = state.range(0);
  const index plane = state.range(1) * state.range(1);
  st::activations<float> dense_out;
  st::activations<float> one_out;
  st::activations<float> a = c.input;
  st::activations<float> b = c.input;
  reparam::matrix<float> columns;
  for (auto _ : state) {
    const st::activations<float>* x = &c.input;
    st::activations<float>* y = &a;
    for (const unmerged_block& block : c.unmerged) {
      st::conv2d_forward_into(*x, block.dense, dense_out, columns);
      st::conv2d_forward_into(*x, block.one_by_one, one_out, columns);
      for (index ch = 0; ch < channels; ++ch) {
        const index offset = ch * plane;
        using plane_map = Eigen::Map<Eigen::ArrayXf>;
        using const_plane_map = Eigen::Map<const Eigen::ArrayXf>;
        plane_map(y->data() + offset, plane) =
            (const_plane_map(dense_out.data() + offset, plane) * block.dense_scale[ch] +
             const_plane_map(one_out.data() + offset, plane) * block.one_scale[ch] +
             const_plane_map(x->data() + offset, plane) * block.identity_scale[ch] +
             block.shift[ch])
                .max(0.0f);
      }
      x = y;
      y = y == &a ? &b : &a;
    }
    benchmark::DoNotOptimize(x->data());
    benchmark::ClobberMemory();
  }
  set_forward_counters(state, c.unmerged_bytes);
}

void forward_merged(benchmark::State& state) {
  const forward_case c = make_forward_case(state.range(0), state.range(1), state.range(2));
  st::activations<float> a = c.input;
  st::activations<float> b = c.input;
  reparam::matrix<float> columns;
  for (auto _ : state) {
    const st::activations<float>* x = &c.input;
    st::activations<float>* y = &a;
    for (const st::conv2d_f& conv : c.merged) {
      st::conv2d_forward_into(*x, conv, *y, columns);
      st::relu_in_place(*y);
      x = y;
      y = y == &a ? &b : &a;
    }
    benchmark::DoNotOptimize(x->data());
    benchmark::ClobberMemory();
  }
  set_forward_counters(state, c.merged_bytes);
}

void forward_args(benchmark::internal::Benchmark* b) {
  // RepVGG-B0's stage shapes at 224x224 input, and one odd shape.
  b->ArgNames({"channels", "size", "blocks"})
      ->Args({64, 56, 3})
      ->Args({128, 28, 3})
      ->Args({256, 14, 3})
      ->Args({48, 31, 3})
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(memcpy_b0)->Name("structural/merge_repvgg_b0/memcpy")->Unit(benchmark::kMillisecond);
BENCHMARK(merge_b0)->Name("structural/merge_repvgg_b0/merge")->Unit(benchmark::kMillisecond);
BENCHMARK(forward_unmerged)->Name("structural/repvgg_forward/unmerged")->Apply(forward_args);
BENCHMARK(forward_merged)->Name("structural/repvgg_forward/merged")->Apply(forward_args);

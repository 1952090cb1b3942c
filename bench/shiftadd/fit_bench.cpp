// SPDX-License-Identifier: Apache-2.0
// Time to fit one layer with the shift-add quantizers: weight-only BCQ and RTN, and the
// activation-aware ShiftAdd (BCQ inside GPTQ, row-wise and column-wise scales) and GPTQ, at 3 bits,
// group 128. The Hessian comes from 4096 synthetic correlated input samples and is built once,
// outside the timed loops. The `dense` baseline is the layer's float forward pass over those 4096
// calibration samples (Y = X W^T, one single-threaded Eigen GEMM): the least work any
// activation-aware method spends per layer, so the ratio reads "fit time in forward passes".
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <utility>

#include <benchmark/benchmark.h>

#include <reparam/core/random.hpp>
#include <reparam/core/second_moment.hpp>
#include <reparam/core/views.hpp>
#include <reparam/shiftadd/bcq.hpp>
#include <reparam/shiftadd/gptq.hpp>
#include <reparam/shiftadd/uniform.hpp>

#include "support/bench_context.hpp"

namespace {

namespace sa = reparam::shiftadd;
using reparam::index;
using reparam::matrix;

constexpr index calibration_samples = 4096;

// Standard normal matrix (Box-Muller on Philox), deterministic per (seed, row).
matrix<float> gaussian(index rows, index cols, std::uint64_t seed) {
  matrix<float> out(rows, cols);
  for (index r = 0; r < rows; ++r) {
    reparam::philox_engine engine(seed, static_cast<std::uint64_t>(r));
    for (index c = 0; c < cols; ++c) {
      const double u1 = reparam::uniform_open01_double(engine(), engine());
      const double u2 = reparam::uniform_open01_double(engine(), engine());
      out(r, c) =
          static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
  }
  return out;
}

struct layer_data {
  matrix<float> weights;   // [rows, cols]
  matrix<float> inputs;    // [samples, cols]
  matrix<double> hessian;  // mean second moment of the inputs
};

// Weights ~ N(0, 1/cols); inputs correlated along channels (x_c = z_c + 0.8 x_{c-1}) with every
// 64th channel scaled 10x (outlier channels, as in LLM activations).
const layer_data& data_for(index rows, index cols) {
  static std::map<std::pair<index, index>, std::unique_ptr<layer_data>> cache;
  auto& slot = cache[{rows, cols}];
  if (!slot) {
    slot = std::make_unique<layer_data>();
    slot->weights = gaussian(rows, cols, 1) / std::sqrt(static_cast<float>(cols));
    slot->inputs = gaussian(calibration_samples, cols, 2);
    for (index c = 1; c < cols; ++c) {
      slot->inputs.col(c) += 0.8f * slot->inputs.col(c - 1);
    }
    for (index c = 0; c < cols; c += 64) {
      slot->inputs.col(c) *= 10.0f;
    }
    reparam::second_moment h(cols);
    h.add(slot->inputs);
    slot->hessian = h.mean();
  }
  return *slot;
}

void set_counters(benchmark::State& state, index rows, index cols) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * rows * cols *
                          static_cast<std::int64_t>(sizeof(float)));
  state.counters["weight_bytes"] = static_cast<double>(rows * cols * 4);
}

void fit_dense(benchmark::State& state) {
  const index rows = state.range(0);
  const index cols = state.range(1);
  const layer_data& data = data_for(rows, cols);
  matrix<float> outputs(calibration_samples, rows);
  for (auto _ : state) {
    outputs.noalias() = data.inputs * data.weights.transpose();
    benchmark::DoNotOptimize(outputs.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, rows, cols);
}

void fit_bcq(benchmark::State& state) {
  const index rows = state.range(0);
  const index cols = state.range(1);
  const layer_data& data = data_for(rows, cols);
  sa::bcq_params params;
  params.bits = static_cast<int>(state.range(2));
  for (auto _ : state) {
    sa::binary_coded_matrix result = sa::quantize_bcq(data.weights, params, state.range(3));
    benchmark::DoNotOptimize(result.scales().data());
    benchmark::ClobberMemory();
  }
  set_counters(state, rows, cols);
}

void fit_shiftadd(benchmark::State& state, sa::scale_axis axis) {
  const index rows = state.range(0);
  const index cols = state.range(1);
  const layer_data& data = data_for(rows, cols);
  sa::shiftadd_params params;
  params.bcq.bits = static_cast<int>(state.range(2));
  params.group_size = state.range(3);
  params.axis = axis;
  for (auto _ : state) {
    sa::binary_coded_matrix result = sa::quantize_shiftadd(data.weights, data.hessian, params);
    benchmark::DoNotOptimize(result.scales().data());
    benchmark::ClobberMemory();
  }
  set_counters(state, rows, cols);
}

void fit_shiftadd_rows(benchmark::State& state) { fit_shiftadd(state, sa::scale_axis::rows); }
void fit_shiftadd_columns(benchmark::State& state) { fit_shiftadd(state, sa::scale_axis::columns); }

void fit_rtn(benchmark::State& state) {
  const index rows = state.range(0);
  const index cols = state.range(1);
  const layer_data& data = data_for(rows, cols);
  const sa::uniform_params params{static_cast<int>(state.range(2)), state.range(3), false};
  for (auto _ : state) {
    sa::uniform_matrix result = sa::quantize_rtn(data.weights, params);
    benchmark::DoNotOptimize(result.codes.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, rows, cols);
}

void fit_gptq(benchmark::State& state) {
  const index rows = state.range(0);
  const index cols = state.range(1);
  const layer_data& data = data_for(rows, cols);
  const sa::uniform_params params{static_cast<int>(state.range(2)), state.range(3), false};
  for (auto _ : state) {
    sa::uniform_matrix result = sa::quantize_gptq(data.weights, data.hessian, params);
    benchmark::DoNotOptimize(result.codes.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, rows, cols);
}

// The 4096x4096 layer (3 bits, group 128) runs once per benchmark: fits take seconds. The
// 512x512 shape is the quick smoke-run size.
void large(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "bits", "group"})
      ->Args({4096, 4096, 3, 128})
      ->Unit(benchmark::kMillisecond)
      ->Iterations(1);
}
void small(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "bits", "group"})
      ->Args({512, 512, 3, 128})
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(fit_dense)->Name("shiftadd/fit/dense")->Apply(small);
BENCHMARK(fit_bcq)->Name("shiftadd/fit/bcq")->Apply(small);
BENCHMARK(fit_shiftadd_rows)->Name("shiftadd/fit/shiftadd")->Apply(small);
BENCHMARK(fit_shiftadd_columns)->Name("shiftadd/fit/shiftadd_columns")->Apply(small);
BENCHMARK(fit_rtn)->Name("shiftadd/fit/rtn")->Apply(small);
BENCHMARK(fit_gptq)->Name("shiftadd/fit/gptq")->Apply(small);
BENCHMARK(fit_dense)->Name("shiftadd/fit/dense")->Apply(large);
BENCHMARK(fit_bcq)->Name("shiftadd/fit/bcq")->Apply(large);
BENCHMARK(fit_shiftadd_rows)->Name("shiftadd/fit/shiftadd")->Apply(large);
BENCHMARK(fit_shiftadd_columns)->Name("shiftadd/fit/shiftadd_columns")->Apply(large);
BENCHMARK(fit_rtn)->Name("shiftadd/fit/rtn")->Apply(large);
BENCHMARK(fit_gptq)->Name("shiftadd/fit/gptq")->Apply(large);

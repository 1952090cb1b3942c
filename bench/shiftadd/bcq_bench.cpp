// SPDX-License-Identifier: Apache-2.0
// Cost of the BCQ group fitter and its pieces (shiftadd/bcq.hpp) per weight: fit_bcq_group with
// float and APoT(3) scales across bit widths and group sizes, the nearest-level code assignment
// alone, and the weight-only matrix quantizer on both scale axes. Whole-layer timings of every
// quantizer live in fit_bench.cpp.
#include <cmath>
#include <cstdint>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#include <reparam/core/random.hpp>
#include <reparam/core/views.hpp>
#include <reparam/shiftadd/bcq.hpp>

#include "support/bench_context.hpp"

namespace {

namespace sa = reparam::shiftadd;
using reparam::index;

// Standard normal values (Box-Muller on Philox), deterministic.
std::vector<float> gaussian(index count, std::uint64_t seed) {
  std::vector<float> out(static_cast<std::size_t>(count));
  reparam::philox_engine engine(seed, 0);
  for (float& x : out) {
    const double u1 = reparam::uniform_open01_double(engine(), engine());
    const double u2 = reparam::uniform_open01_double(engine(), engine());
    x = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  return out;
}

// 2^18 weights per iteration, as groups of `group` values.
constexpr index weights_per_iteration = index{1} << 18;

void set_counters(benchmark::State& state, index weights) {
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * weights);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * weights *
                          static_cast<std::int64_t>(sizeof(float)));
  state.counters["weight_bytes"] = static_cast<double>(weights) * sizeof(float);
}

void fit_group(benchmark::State& state, int apot_terms) {
  const auto bits = static_cast<int>(state.range(0));
  const index group = state.range(1);
  const std::vector<float> values = gaussian(weights_per_iteration, 1);
  std::vector<float> alphas(8);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(group));
  std::vector<sa::apot_term> terms(64);
  const sa::bcq_params params{bits, 20, apot_terms};
  for (auto _ : state) {
    for (index g = 0; g < weights_per_iteration / group; ++g) {
      sa::fit_bcq_group(values.data() + g * group, group, 1, params, alphas.data(), codes.data(),
                        terms.data());
      benchmark::DoNotOptimize(alphas.data());
      benchmark::DoNotOptimize(codes.data());
    }
    benchmark::ClobberMemory();
  }
  set_counters(state, weights_per_iteration);
}

void fit_group_float(benchmark::State& state) { fit_group(state, 0); }
void fit_group_apot3(benchmark::State& state) { fit_group(state, 3); }

void assign_codes(benchmark::State& state) {
  const auto bits = static_cast<int>(state.range(0));
  const index group = state.range(1);
  const std::vector<float> values = gaussian(weights_per_iteration, 2);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(weights_per_iteration));
  std::vector<float> alphas(static_cast<std::size_t>(bits));
  for (int p = 0; p < bits; ++p) {
    alphas[static_cast<std::size_t>(p)] = std::ldexp(0.9f, -p);
  }
  for (auto _ : state) {
    for (index g = 0; g < weights_per_iteration / group; ++g) {
      sa::assign_bcq_codes(values.data() + g * group, group, 1, alphas.data(), bits,
                           codes.data() + g * group);
    }
    benchmark::DoNotOptimize(codes.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, weights_per_iteration);
}

void quantize_matrix(benchmark::State& state, sa::scale_axis axis) {
  const index rows = state.range(0);
  const index cols = state.range(1);
  const auto bits = static_cast<int>(state.range(2));
  const index group = state.range(3);
  const std::vector<float> values = gaussian(rows * cols, 3);
  const auto weights = reparam::row_major_map(values.data(), rows, cols);
  for (auto _ : state) {
    sa::binary_coded_matrix result = sa::quantize_bcq(weights, {bits, 20, 0}, group, axis);
    benchmark::DoNotOptimize(result.planes().data());
    benchmark::ClobberMemory();
  }
  set_counters(state, rows * cols);
}

// Baselines with the same arguments (tools/bench_ratio.py pairs them by name): one pass of Eigen
// over the same weights, so a fitter's time reads as "how many passes over the data it costs".
// Groups: the per-group squared norm; matrices: the dense product y = W x of STYLE.md section 9.
void dense_group(benchmark::State& state) {
  const index group = state.range(1);
  const std::vector<float> values = gaussian(weights_per_iteration, 1);
  for (auto _ : state) {
    float total = 0.0f;
    for (index g = 0; g < weights_per_iteration / group; ++g) {
      total += Eigen::Map<const Eigen::VectorXf>(values.data() + g * group, group).squaredNorm();
    }
    benchmark::DoNotOptimize(total);
  }
  set_counters(state, weights_per_iteration);
}

void dense_matrix(benchmark::State& state) {
  const index rows = state.range(0);
  const index cols = state.range(1);
  const std::vector<float> values = gaussian(rows * cols, 3);
  const auto weights = reparam::row_major_map(values.data(), rows, cols);
  const Eigen::VectorXf x = Eigen::VectorXf::Ones(cols);
  Eigen::VectorXf y(rows);
  for (auto _ : state) {
    y.noalias() = weights * x;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, rows * cols);
}

void quantize_rows(benchmark::State& state) { quantize_matrix(state, sa::scale_axis::rows); }
void quantize_columns(benchmark::State& state) { quantize_matrix(state, sa::scale_axis::columns); }

void group_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"bits", "group"})
      ->Args({2, 128})
      ->Args({3, 128})
      ->Args({4, 128})
      ->Args({8, 128})
      ->Args({3, 32})
      ->Args({3, 4096})
      ->Unit(benchmark::kMillisecond);
}

void matrix_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "bits", "group"})
      ->Args({768, 768, 3, 128})
      ->Args({1023, 1021, 3, 0})
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(dense_group)->Name("shiftadd/fit_bcq_group/dense")->Apply(group_args);
BENCHMARK(dense_group)->Name("shiftadd/assign_bcq_codes/dense")->Apply(group_args);
BENCHMARK(dense_matrix)->Name("shiftadd/quantize_bcq/dense")->Apply(matrix_args);
BENCHMARK(fit_group_float)->Name("shiftadd/fit_bcq_group/float")->Apply(group_args);
BENCHMARK(fit_group_apot3)->Name("shiftadd/fit_bcq_group/apot3")->Apply(group_args);
BENCHMARK(assign_codes)->Name("shiftadd/assign_bcq_codes/reference")->Apply(group_args);
BENCHMARK(quantize_rows)->Name("shiftadd/quantize_bcq/rows")->Apply(matrix_args);
BENCHMARK(quantize_columns)->Name("shiftadd/quantize_bcq/columns")->Apply(matrix_args);

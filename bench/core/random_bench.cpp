// SPDX-License-Identifier: Apache-2.0
// Filling a buffer with uniform floats: Philox4x32-10 (counter-based, split-independent) against
// the usual std::mt19937 + std::uniform_real_distribution baseline, with identical arguments.
#include <cstdint>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include <reparam/core/random.hpp>

#include "support/bench_context.hpp"

namespace {

void uniform_fill_philox(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  std::vector<float> out(count);
  std::uint64_t stream = 0;
  for (auto _ : state) {
    reparam::philox_engine engine(1234, stream++);
    for (float& x : out) x = reparam::uniform_open01_float(engine());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(count * sizeof(float)));
}

void uniform_fill_mt19937(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  std::vector<float> out(count);
  std::mt19937 engine(1234);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  for (auto _ : state) {
    for (float& x : out) x = uniform(engine);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(count * sizeof(float)));
}

}  // namespace

BENCHMARK(uniform_fill_mt19937)
    ->Name("core/uniform_fill/mt19937")
    ->ArgNames({"count"})
    ->Arg(32000)
    ->Arg(1 << 20);
BENCHMARK(uniform_fill_philox)
    ->Name("core/uniform_fill/philox")
    ->ArgNames({"count"})
    ->Arg(32000)
    ->Arg(1 << 20);

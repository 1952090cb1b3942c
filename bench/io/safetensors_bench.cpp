// SPDX-License-Identifier: Apache-2.0
// safetensors I/O costs: bfloat16/binary16 <-> float conversion (reference loops against a memcpy
// of the same output bytes), opening the real model (mmap + header validation) and loading one
// weight as a float matrix, each against a memcpy of the bytes involved.
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include <reparam/core/half.hpp>
#include <reparam/io/safetensors.hpp>

#include "support/bench_context.hpp"

namespace {

const std::string& model_path() {
  static const std::string path =
      std::string(REPARAM_DATA_DIR) + "/llama2c_stories260K/stories260K.safetensors";
  return path;
}

std::vector<std::uint16_t> random_halves(std::size_t count) {
  std::mt19937 engine(1234);
  std::uniform_real_distribution<float> uniform(-4.f, 4.f);
  std::vector<std::uint16_t> halves(count);
  for (std::uint16_t& h : halves) {
    h = reparam::float_to_bf16(uniform(engine));
  }
  return halves;
}

std::vector<float> random_floats(std::size_t count) {
  std::mt19937 engine(1234);
  std::uniform_real_distribution<float> uniform(-4.f, 4.f);
  std::vector<float> floats(count);
  for (float& x : floats) {
    x = uniform(engine);
  }
  return floats;
}

void set_bytes(benchmark::State& state, std::size_t bytes_per_iteration) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(bytes_per_iteration));
}

// 16-bit -> float: reads 2 bytes, writes 4 bytes per element.
template <void (*Convert)(const std::uint16_t*, float*, reparam::index) noexcept>
void widen(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  const std::vector<std::uint16_t> source = random_halves(count);
  std::vector<float> out(count);
  for (auto _ : state) {
    Convert(source.data(), out.data(), state.range(0));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, count * 6);
}

// float -> 16-bit: reads 4 bytes, writes 2 bytes per element.
template <void (*Convert)(const float*, std::uint16_t*, reparam::index) noexcept>
void narrow(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  const std::vector<float> source = random_floats(count);
  std::vector<std::uint16_t> out(count);
  for (auto _ : state) {
    Convert(source.data(), out.data(), state.range(0));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, count * 6);
}

// Baseline: a memcpy of the conversion's output bytes (the floor for any conversion).
void memcpy_output(benchmark::State& state, std::size_t bytes_per_element) {
  const auto bytes = static_cast<std::size_t>(state.range(0)) * bytes_per_element;
  const std::vector<char> source(bytes, 1);
  std::vector<char> out(bytes);
  for (auto _ : state) {
    std::memcpy(out.data(), source.data(), bytes);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, bytes / bytes_per_element * 6);
}

void memcpy_floats(benchmark::State& state) { memcpy_output(state, sizeof(float)); }
void memcpy_halves(benchmark::State& state) { memcpy_output(state, sizeof(std::uint16_t)); }

void open_mmap(benchmark::State& state) {
  for (auto _ : state) {
    const auto file = reparam::io::safetensors_file::open(model_path());
    benchmark::DoNotOptimize(file.tensors().data());
  }
  state.counters["tensors"] =
      static_cast<double>(reparam::io::safetensors_file::open(model_path()).tensors().size());
}

// Baseline for open: copying the whole file image, what a read-everything loader pays at least.
void open_memcpy(benchmark::State& state) {
  const auto file = reparam::io::safetensors_file::open(model_path());
  const reparam::io::tensor_info& last = file.tensors().back();
  const std::size_t size = last.data_end;
  const std::byte* first = file.bytes(file.tensors().front().name);
  std::vector<std::byte> copy(size);
  for (auto _ : state) {
    std::memcpy(copy.data(), first, size);
    benchmark::DoNotOptimize(copy.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, size);
}

void load_matrix_reference(benchmark::State& state) {
  const auto file = reparam::io::safetensors_file::open(model_path());
  for (auto _ : state) {
    const reparam::matrix<float> w1 = file.load_matrix("w1");
    benchmark::DoNotOptimize(w1.data());
  }
  set_bytes(state, file.info("w1").size_bytes());
}

void load_matrix_memcpy(benchmark::State& state) {
  const auto file = reparam::io::safetensors_file::open(model_path());
  const reparam::io::tensor_info& info = file.info("w1");
  for (auto _ : state) {
    std::vector<float> copy(static_cast<std::size_t>(info.numel()));
    std::memcpy(copy.data(), file.bytes("w1"), info.size_bytes());
    benchmark::DoNotOptimize(copy.data());
  }
  set_bytes(state, info.size_bytes());
}

}  // namespace

// Sizes: one 4096x4096 layer would be 1 << 24; 768*768 and an odd count cover the rest.
#define REPARAM_IO_COUNTS ArgNames({"count"})->Arg(768 * 768)->Arg(1 << 22)->Arg(1023 * 1021)

BENCHMARK(memcpy_floats)->Name("io/bf16_to_float/memcpy")->REPARAM_IO_COUNTS;
BENCHMARK_TEMPLATE(widen, reparam::bf16_to_float_n)
    ->Name("io/bf16_to_float/reference")
    ->REPARAM_IO_COUNTS;
BENCHMARK(memcpy_floats)->Name("io/f16_to_float/memcpy")->REPARAM_IO_COUNTS;
BENCHMARK_TEMPLATE(widen, reparam::f16_to_float_n)
    ->Name("io/f16_to_float/reference")
    ->REPARAM_IO_COUNTS;
BENCHMARK(memcpy_halves)->Name("io/float_to_bf16/memcpy")->REPARAM_IO_COUNTS;
BENCHMARK_TEMPLATE(narrow, reparam::float_to_bf16_n)
    ->Name("io/float_to_bf16/reference")
    ->REPARAM_IO_COUNTS;
BENCHMARK(memcpy_halves)->Name("io/float_to_f16/memcpy")->REPARAM_IO_COUNTS;
BENCHMARK_TEMPLATE(narrow, reparam::float_to_f16_n)
    ->Name("io/float_to_f16/reference")
    ->REPARAM_IO_COUNTS;
BENCHMARK(open_memcpy)->Name("io/open/memcpy");
BENCHMARK(open_mmap)->Name("io/open/mmap");
BENCHMARK(load_matrix_memcpy)->Name("io/load_matrix/memcpy");
BENCHMARK(load_matrix_reference)->Name("io/load_matrix/reference");

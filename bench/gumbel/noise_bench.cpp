// SPDX-License-Identifier: Apache-2.0
// Gumbel noise for a [batch, vocab] logits matrix (gumbel/noise.hpp fill_gumbel), single thread,
// against the usual C++ way of drawing it:
//
//   gumbel/noise/mt19937      std::mt19937 + std::uniform_real_distribution<double> and
//                             -std::log(-std::log(u)) per element (the baseline; note that u
//                             may be 0 there, giving -inf)
//   gumbel/noise/reference    kernels::gumbel_noise_fill_reference (scalar Philox4x32-10, 52-bit
//                             open uniform, std::log1p and std::log)
//   gumbel/noise/simd         gumbel::fill_gumbel with the default arch (argument checks
//                             included)
//   gumbel/noise/simd_avx2    the same through the AVX2 kernel (xsimd::fma3<xsimd::avx2>)
//
// gumbel/noise/... write double noise, gumbel/noise_float/... the same values rounded to float.
// Args batch (rows) and vocab (columns: Llama-2's 32000 and Llama-3's 128256). bytes_per_second
// counts the noise written. Every iteration draws a new step of the key, as a decoder would.
#include <cmath>
#include <cstdint>
#include <random>

#include <benchmark/benchmark.h>

#include <reparam/core/views.hpp>
#include <reparam/gumbel/noise.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>
#include <reparam/kernels/simd/gumbel_noise.hpp>

#include "support/bench_context.hpp"

namespace {

namespace gb = reparam::gumbel;
using reparam::index;
using reparam::matrix;

void set_counters(benchmark::State& state, index batch, index vocab, std::size_t element_bytes) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * batch * vocab *
                          static_cast<std::int64_t>(element_bytes));
}

/// The benchmark loop over a [batch, vocab] output: fill(key, out) per iteration, each with the
/// next step of the key, as a decoder would.
template <class T, class Fill>
void run_fill(benchmark::State& state, Fill fill) {
  const index batch = state.range(0);
  const index vocab = state.range(1);
  matrix<T> out(batch, vocab);
  gb::noise_key key{20240607u, 0};
  for (auto _ : state) {
    fill(key, out);
    ++key.step;
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, batch, vocab, sizeof(T));
}

template <class T>
void bm_mt19937(benchmark::State& state) {
  std::mt19937 engine(20240607u);
  std::uniform_real_distribution<double> uniform;
  run_fill<T>(state, [&](gb::noise_key, matrix<T>& out) {
    for (index r = 0; r < out.rows(); ++r) {
      T* row = out.row(r).data();
      for (index c = 0; c < out.cols(); ++c) {
        row[c] = static_cast<T>(-std::log(-std::log(uniform(engine))));
      }
    }
  });
}

template <class T>
void bm_reference(benchmark::State& state) {
  run_fill<T>(state, [](gb::noise_key key, matrix<T>& out) {
    reparam::kernels::gumbel_noise_fill_reference<T>(key, 0, out.rows(), out.cols(), out.data(),
                                                     out.cols());
  });
}

template <class Arch, class T>
void bm_simd(benchmark::State& state) {
  run_fill<T>(state, [](gb::noise_key key, matrix<T>& out) { gb::fill_gumbel<Arch, T>(key, out); });
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "vocab"});
  for (const index vocab : {32000, 128256}) {
    for (const index batch : {1, 8}) {
      b->Args({batch, vocab});
    }
  }
}

BENCHMARK(bm_mt19937<double>)->Name("gumbel/noise/mt19937")->Apply(shapes);
BENCHMARK(bm_reference<double>)->Name("gumbel/noise/reference")->Apply(shapes);
BENCHMARK(bm_simd<reparam::default_arch, double>)->Name("gumbel/noise/simd")->Apply(shapes);
#if REPARAM_HAS_GUMBEL_NOISE_AVX2
BENCHMARK(bm_simd<xsimd::fma3<xsimd::avx2>, double>)->Name("gumbel/noise/simd_avx2")->Apply(shapes);
#endif

BENCHMARK(bm_mt19937<float>)->Name("gumbel/noise_float/mt19937")->Apply(shapes);
BENCHMARK(bm_reference<float>)->Name("gumbel/noise_float/reference")->Apply(shapes);
BENCHMARK(bm_simd<reparam::default_arch, float>)->Name("gumbel/noise_float/simd")->Apply(shapes);
#if REPARAM_HAS_GUMBEL_NOISE_AVX2
BENCHMARK(bm_simd<xsimd::fma3<xsimd::avx2>, float>)
    ->Name("gumbel/noise_float/simd_avx2")
    ->Apply(shapes);
#endif

}  // namespace

// SPDX-License-Identifier: Apache-2.0
// Exact Gumbel-max / Gumbel-top-k sampling of LLM-sized rows (gumbel/sample.hpp) against the
// plain way of writing it, single thread:
//
//   gumbel/<op>/mt19937      baseline: std::mt19937 + std::uniform_real_distribution<double>,
//                            g = -std::log(-std::log(u)) added to every logit (double) and a
//                            running argmax; top_k: all perturbed values into a preallocated
//                            buffer, std::nth_element + std::sort of the first k; from_probs:
//                            running argmax of p / E with E = -std::log(u)
//   gumbel/<op>/reference    kernels::reference::*_row (Philox noise and two logs per class)
//   gumbel/<op>/simd         the public entry point with its default arch (argument checks
//                            included): pruned scan, exact evaluation of the survivors only
//   gumbel/<op>/simd_avx2    the same through the fma3<avx2> path (when the build has AVX-512)
//
// Ops: max (gumbel_max_rows), top_k (gumbel_top_k_rows, k = 40, no values output), from_probs
// (sample_from_probs_rows on softmax(logits)). Args batch (rows), vocab (classes), logits: 0 =
// Gaussian with sd 3 (the body of a decoder's logits), 1 = the log of a Zipf law, l = -1.1
// log(rank), with the ranks shuffled over the vocabulary (a peaked, heavy-headed distribution),
// 2 = all logits equal: the worst natural case for the pruning (no class is ruled out by its
// logit; only the noise bound and the running maximum prune). Every iteration uses a new noise
// step. bytes_per_second counts the float logits (or probabilities) read once.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include <reparam/core/random.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/gumbel/sample.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/gumbel_max.hpp>
#include <reparam/kernels/simd/gumbel_max.hpp>

#include "support/bench_context.hpp"

namespace {

namespace gumbel = reparam::gumbel;
using reparam::index;
using reparam::matrix;

constexpr index top_k = 40;

struct shape {
  index batch;
  index vocab;
  int kind;
};

shape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1), static_cast<int>(state.range(2))};
}

/// [batch, vocab] logits of `kind` (see the file comment), deterministic.
matrix<float> make_logits(const shape& s) {
  reparam::philox_engine engine(static_cast<std::uint64_t>(s.vocab * 31 + s.batch), 9);
  const auto uniform = [&engine] { return reparam::uniform_open01_double(engine(), engine()); };
  matrix<float> logits(s.batch, s.vocab);
  std::vector<index> ranks(static_cast<std::size_t>(s.vocab));
  for (index r = 0; r < s.batch; ++r) {
    if (s.kind == 1) {
      for (index c = 0; c < s.vocab; ++c) {
        ranks[static_cast<std::size_t>(c)] = c + 1;
      }
      for (index c = s.vocab - 1; c > 0; --c) {  // Fisher-Yates with the Philox stream
        const auto j = static_cast<index>(uniform() * static_cast<double>(c + 1));
        std::swap(ranks[static_cast<std::size_t>(c)], ranks[static_cast<std::size_t>(j)]);
      }
    }
    for (index c = 0; c < s.vocab; ++c) {
      double x = 0.0;
      if (s.kind == 0) {
        x = 3.0 * std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform());
      } else if (s.kind == 1) {
        x = -1.1 * std::log(static_cast<double>(ranks[static_cast<std::size_t>(c)]));
      }
      logits(r, c) = static_cast<float>(x);
    }
  }
  return logits;
}

matrix<float> softmax_rows(const matrix<float>& logits) {
  matrix<float> p(logits.rows(), logits.cols());
  for (index r = 0; r < logits.rows(); ++r) {
    const double top = static_cast<double>(logits.row(r).maxCoeff());
    double sum = 0.0;
    for (index c = 0; c < logits.cols(); ++c) {
      sum += std::exp(static_cast<double>(logits(r, c)) - top);
    }
    for (index c = 0; c < logits.cols(); ++c) {
      p(r, c) = static_cast<float>(std::exp(static_cast<double>(logits(r, c)) - top) / sum);
    }
  }
  return p;
}

void set_bytes(benchmark::State& state, const shape& s) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * s.batch * s.vocab *
                          static_cast<std::int64_t>(sizeof(float)));
}

/// The benchmark loop: iteration(key) once per iteration, each with a new noise step, then
/// `out` made observable.
template <class Out, class Iteration>
void run(benchmark::State& state, const shape& s, const Out& out, Iteration iteration) {
  std::uint32_t step = 0;
  for (auto _ : state) {
    iteration(gumbel::noise_key{0x5eed, step++});
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, s);
}

/// out[r] = the first class c < vocab with the largest value(r, c) above `floor`, every row.
template <class Value>
void running_argmax(const shape& s, double floor, std::vector<index>& out, Value value) {
  for (index r = 0; r < s.batch; ++r) {
    double best = floor;
    index arg = 0;
    for (index c = 0; c < s.vocab; ++c) {
      const double v = value(r, c);
      if (v > best) {
        best = v;
        arg = c;
      }
    }
    out[static_cast<std::size_t>(r)] = arg;
  }
}

/// out[r] = pick(r), every row.
template <class Pick>
void per_row(const shape& s, std::vector<index>& out, Pick pick) {
  for (index r = 0; r < s.batch; ++r) {
    out[static_cast<std::size_t>(r)] = pick(static_cast<std::uint64_t>(r));
  }
}

// ---- max ----

void bm_max_mt19937(benchmark::State& state) {
  const shape s = shape_of(state);
  const matrix<float> logits = make_logits(s);
  std::mt19937 engine(42);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<index> out(static_cast<std::size_t>(s.batch));
  for (auto _ : state) {
    running_argmax(s, -std::numeric_limits<double>::infinity(), out, [&](index r, index c) {
      return static_cast<double>(logits(r, c)) - std::log(-std::log(uniform(engine)));
    });
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, s);
}

void bm_max_reference(benchmark::State& state) {
  const shape s = shape_of(state);
  const matrix<float> logits = make_logits(s);
  std::vector<index> out(static_cast<std::size_t>(s.batch));
  run(state, s, out, [&](gumbel::noise_key key) {
    per_row(s, out, [&](std::uint64_t r) {
      return reparam::kernels::reference::gumbel_max_row(logits.row(static_cast<index>(r)).data(),
                                                         s.vocab, 1.0, key, r);
    });
  });
}

template <class Arch>
void bm_max_simd(benchmark::State& state) {
  const shape s = shape_of(state);
  const matrix<float> logits = make_logits(s);
  gumbel::index_vector out(s.batch);
  run(state, s, out, [&](gumbel::noise_key key) {
    gumbel::gumbel_max_rows<Arch>(logits, key, out, reparam::all_rows(s.batch));
  });
}

// ---- top_k ----

void bm_top_k_mt19937(benchmark::State& state) {
  const shape s = shape_of(state);
  const matrix<float> logits = make_logits(s);
  std::mt19937 engine(42);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<std::pair<double, index>> perturbed(static_cast<std::size_t>(s.vocab));
  gumbel::index_matrix out(s.batch, top_k);
  const auto before = [](const std::pair<double, index>& a, const std::pair<double, index>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  run(state, s, out, [&](gumbel::noise_key) {
    for (index r = 0; r < s.batch; ++r) {
      for (index c = 0; c < s.vocab; ++c) {
        perturbed[static_cast<std::size_t>(c)] = {
            static_cast<double>(logits(r, c)) - std::log(-std::log(uniform(engine))), c};
      }
      std::nth_element(perturbed.begin(), perturbed.begin() + top_k, perturbed.end(), before);
      std::sort(perturbed.begin(), perturbed.begin() + top_k, before);
      for (index j = 0; j < top_k; ++j) {
        out(r, j) = perturbed[static_cast<std::size_t>(j)].second;
      }
    }
  });
}

void bm_top_k_reference(benchmark::State& state) {
  const shape s = shape_of(state);
  const matrix<float> logits = make_logits(s);
  gumbel::index_matrix out(s.batch, top_k);
  std::vector<double> values(static_cast<std::size_t>(top_k));
  run(state, s, out, [&](gumbel::noise_key key) {
    for (index r = 0; r < s.batch; ++r) {
      reparam::kernels::reference::gumbel_top_k_row(logits.row(r).data(), s.vocab, 1.0, key,
                                                    static_cast<std::uint64_t>(r), top_k,
                                                    out.row(r).data(), values.data());
    }
  });
}

template <class Arch>
void bm_top_k_simd(benchmark::State& state) {
  const shape s = shape_of(state);
  const matrix<float> logits = make_logits(s);
  gumbel::index_matrix out(s.batch, top_k);
  run(state, s, out, [&](gumbel::noise_key key) {
    gumbel::gumbel_top_k_rows<Arch>(logits, top_k, key, out, reparam::all_rows(s.batch));
  });
}

// ---- from_probs ----

void bm_from_probs_mt19937(benchmark::State& state) {
  const shape s = shape_of(state);
  const matrix<float> probs = softmax_rows(make_logits(s));
  std::mt19937 engine(42);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<index> out(static_cast<std::size_t>(s.batch));
  for (auto _ : state) {
    running_argmax(s, -1.0, out, [&](index r, index c) {
      return static_cast<double>(probs(r, c)) / -std::log(uniform(engine));
    });
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, s);
}

void bm_from_probs_reference(benchmark::State& state) {
  const shape s = shape_of(state);
  const matrix<float> probs = softmax_rows(make_logits(s));
  std::vector<index> out(static_cast<std::size_t>(s.batch));
  run(state, s, out, [&](gumbel::noise_key key) {
    per_row(s, out, [&](std::uint64_t r) {
      return reparam::kernels::reference::sample_from_probs_row(
          probs.row(static_cast<index>(r)).data(), s.vocab, key, r);
    });
  });
}

template <class Arch>
void bm_from_probs_simd(benchmark::State& state) {
  const shape s = shape_of(state);
  const matrix<float> probs = softmax_rows(make_logits(s));
  gumbel::index_vector out(s.batch);
  run(state, s, out, [&](gumbel::noise_key key) {
    gumbel::sample_from_probs_rows<Arch>(probs, key, out, reparam::all_rows(s.batch));
  });
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "vocab", "logits"});
  for (const int kind : {0, 1}) {
    for (const index vocab : {32000, 128256}) {  // Llama-2 and Llama-3 vocabularies
      for (const index batch : {1, 8}) {
        b->Args({batch, vocab, kind});
      }
    }
  }
  b->Args({1, 32000, 2});  // all logits equal: the pruning's worst natural case
  b->Args({1, 128256, 2});
  b->Unit(benchmark::kMicrosecond);
}

#define REPARAM_GUMBEL_SAMPLE_BENCH(op)                                            \
  BENCHMARK(bm_##op##_mt19937)->Name("gumbel/" #op "/mt19937")->Apply(shapes);     \
  BENCHMARK(bm_##op##_reference)->Name("gumbel/" #op "/reference")->Apply(shapes); \
  BENCHMARK(bm_##op##_simd<reparam::default_arch>)->Name("gumbel/" #op "/simd")->Apply(shapes)

REPARAM_GUMBEL_SAMPLE_BENCH(max);
REPARAM_GUMBEL_SAMPLE_BENCH(top_k);
REPARAM_GUMBEL_SAMPLE_BENCH(from_probs);

#if REPARAM_HAS_GUMBEL_MAX_AVX2 && REPARAM_HAS_GUMBEL_MAX_AVX512
BENCHMARK(bm_max_simd<xsimd::fma3<xsimd::avx2>>)->Name("gumbel/max/simd_avx2")->Apply(shapes);
BENCHMARK(bm_top_k_simd<xsimd::fma3<xsimd::avx2>>)->Name("gumbel/top_k/simd_avx2")->Apply(shapes);
BENCHMARK(bm_from_probs_simd<xsimd::fma3<xsimd::avx2>>)
    ->Name("gumbel/from_probs/simd_avx2")
    ->Apply(shapes);
#endif

}  // namespace

// SPDX-License-Identifier: Apache-2.0
// What the factored orthogonal eraser P = I - Q^T Q (unlearn/projector.hpp) costs against the
// same projector stored dense, single thread, float activations and weights:
//
//   unlearn/erase_rows/dense       y.noalias() = x * P, P precomputed as a float [d, d] matrix
//                                  (Eigen GEMM / GEMV, Eigen::setNbThreads(1))
//   unlearn/erase_rows/factored    orthogonal_eraser::apply_rows(x, all rows): x <- x - (x Q^T) Q
//                                  in place, Q [k, d] in double, one rounding per row
//   unlearn/fold_output/dense      W'.noalias() = P * W, float [d, d] x [d, d] GEMM
//   unlearn/fold_output/factored   fold_output_side(eraser, W) in place: W <- W - Q^T (Q W) in
//                                  double, with its finiteness check and fold_report (it
//                                  allocates the double copies: an offline operation)
//
// erase_rows args: rows (a batch of residual activations), dim d (64 = stories260K, 288, 768,
// 4096), rank k of the erased subspace. fold_output args: dim d, cols (= d, a square writer such
// as o_proj), rank k. Q is unlearn::random_subspace(d, k, seed); x and W are uniform in (-1, 1).
// The in-place impls are timed without restoring their input: P is idempotent, so after the first
// iteration x (W) stays in the complement of span Q and every iteration does the same work (the
// flops and bytes do not depend on the values, and the coefficients x Q^T settle at ~1e-8 |x|,
// far from subnormal). bytes_per_second counts what each impl touches: dense reads x (W) and the
// float P and writes y (W'); factored reads and writes x (W) and reads Q in double. The non-rate
// counter weight_bytes is the size of the stored projector (4 d^2 dense, 8 k d factored).
#include <cstdint>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#include <reparam/core/index.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/projector.hpp>
#include <reparam/unlearn/subspace.hpp>

#include "support/bench_context.hpp"

namespace {

namespace ul = reparam::unlearn;
using reparam::index;
using reparam::matrix;

constexpr index float_bytes = static_cast<index>(sizeof(float));
constexpr index double_bytes = static_cast<index>(sizeof(double));

/// rows x cols floats uniform in (-1, 1), deterministic for the shape.
matrix<float> random_floats(index rows, index cols, std::uint64_t stream) {
  reparam::philox_engine engine(static_cast<std::uint64_t>(rows * 7919 + cols), stream);
  matrix<float> out(rows, cols);
  for (index r = 0; r < rows; ++r) {
    for (index c = 0; c < cols; ++c) {
      out(r, c) =
          static_cast<float>(2.0 * reparam::uniform_open01_double(engine(), engine()) - 1.0);
    }
  }
  return out;
}

ul::orthogonal_eraser make_eraser(index d, index k) {
  return ul::orthogonal_eraser(ul::random_subspace(d, k, static_cast<std::uint64_t>(d * 131 + k)));
}

void set_counters(benchmark::State& state, index bytes, index weight_bytes) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * bytes);
  state.counters["weight_bytes"] = static_cast<double>(weight_bytes);
}

void bm_erase_dense(benchmark::State& state) {
  Eigen::setNbThreads(1);
  const index rows = state.range(0);
  const index d = state.range(1);
  const index k = state.range(2);
  const matrix<float> p = make_eraser(d, k).dense().cast<float>();
  const matrix<float> x = random_floats(rows, d, 1);
  matrix<float> y(rows, d);
  for (auto _ : state) {
    y.noalias() = x * p;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, (2 * rows * d + d * d) * float_bytes, d * d * float_bytes);
}

void bm_erase_factored(benchmark::State& state) {
  const index rows = state.range(0);
  const index d = state.range(1);
  const index k = state.range(2);
  const ul::orthogonal_eraser eraser = make_eraser(d, k);
  matrix<float> x = random_floats(rows, d, 1);
  for (auto _ : state) {
    eraser.apply_rows(x, reparam::all_rows(rows));
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2 * rows * d * float_bytes + k * d * double_bytes, k * d * double_bytes);
}

void bm_fold_dense(benchmark::State& state) {
  Eigen::setNbThreads(1);
  const index d = state.range(0);
  const index cols = state.range(1);
  const index k = state.range(2);
  const matrix<float> p = make_eraser(d, k).dense().cast<float>();
  const matrix<float> w = random_floats(d, cols, 2);
  matrix<float> folded(d, cols);
  for (auto _ : state) {
    folded.noalias() = p * w;
    benchmark::DoNotOptimize(folded.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, (d * d + 2 * d * cols) * float_bytes, d * d * float_bytes);
}

void bm_fold_factored(benchmark::State& state) {
  const index d = state.range(0);
  const index cols = state.range(1);
  const index k = state.range(2);
  const ul::orthogonal_eraser eraser = make_eraser(d, k);
  matrix<float> w = random_floats(d, cols, 2);
  for (auto _ : state) {
    const ul::fold_report report = ul::fold_output_side(eraser, w);
    benchmark::DoNotOptimize(report);
    benchmark::DoNotOptimize(w.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 2 * d * cols * float_bytes + k * d * double_bytes, k * d * double_bytes);
}

void erase_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "dim", "rank"});
  for (const index rows : {1, 8, 64}) {
    for (const index d : {64, 288, 768, 4096}) {
      for (const index k : {1, 8, 32}) {
        b->Args({rows, d, k});
      }
    }
  }
}

void fold_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"dim", "cols", "rank"});
  for (const index d : {64, 288, 768}) {
    for (const index k : {1, 8, 32}) {
      b->Args({d, d, k});
    }
  }
}

BENCHMARK(bm_erase_dense)->Name("unlearn/erase_rows/dense")->Apply(erase_shapes);
BENCHMARK(bm_erase_factored)->Name("unlearn/erase_rows/factored")->Apply(erase_shapes);
BENCHMARK(bm_fold_dense)->Name("unlearn/fold_output/dense")->Apply(fold_shapes);
BENCHMARK(bm_fold_factored)->Name("unlearn/fold_output/factored")->Apply(fold_shapes);

}  // namespace

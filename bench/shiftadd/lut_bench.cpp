// SPDX-License-Identifier: Apache-2.0
// The lookup-table product on packed binary-coded weights (shiftadd::multiply with lut_tables)
// against the dense Eigen float product on the same shape, in the same run:
//
//   shiftadd/lut_multiply/dense          Y = X W^T with W float [rows, cols] (Eigen; 2 threads
//                                        split the rows with OpenMP, as the LUT wrapper does)
//   shiftadd/lut_multiply/lut_fast       int8 tables (fast mode), best kernel path
//   shiftadd/lut_multiply/lut_fast_f16scales   the same with binary16 scales in the packed stream
//   shiftadd/lut_multiply/lut_lossless   float tables (lossless mode), best kernel path
//   shiftadd/lut_multiply/lut_<mode>_<path>   every usable path, 4096x14336, batch 1, 1 thread
//   shiftadd/read_bandwidth/memcpy|sum   a 1 GiB read probe (sum of floats) with memcpy as
//                                        its baseline, to state results as a fraction of the
//                                        machine's read bandwidth
//
// Arguments rows, cols, bits, batch, threads; group size 128. The time of a LUT product includes
// building the activation tables. bytes_per_second counts the bytes of weights read: the whole
// packed stream (signs, scales, padding) for the LUT impls, 4 * rows * cols for dense. The
// counter weight_bytes records the same per product. tools/bench_lut_report.py turns the JSON
// into the README table and plot.
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>
#include <xsimd/xsimd.hpp>

#include <reparam/core/random.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/kernels/simd/bcq_lut.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/multiply.hpp>
#include <reparam/shiftadd/packed.hpp>

#include "support/bench_context.hpp"

namespace {

namespace sa = reparam::shiftadd;
using reparam::index;
using reparam::matrix;

constexpr index group_size = 128;

/// Random signs and scales, straight into the planes (fast enough for 4096 x 14336 x 4 bits).
sa::binary_coded_matrix random_weights(index rows, index cols, int bits) {
  sa::binary_coded_matrix w(sa::bcq_shape{rows, cols, bits, group_size});
  reparam::philox_engine engine(static_cast<std::uint64_t>(rows * 131 + cols * 7 + bits), 0);
  for (std::uint32_t& word : w.planes()) {
    word = engine();
  }
  // Clear the padding bits past cols in each row's last word (the format keeps them 0).
  if (cols % 32 != 0) {
    const std::uint32_t keep = (1u << (cols % 32)) - 1u;
    for (int p = 0; p < bits; ++p) {
      for (index r = 0; r < rows; ++r) {
        w.plane_row(p, r)[w.words_per_row() - 1] &= keep;
      }
    }
  }
  for (float& s : w.scales()) {
    s = static_cast<float>(reparam::uniform_open01_double(engine(), engine())) * 0.01f;
  }
  return w;
}

/// Bytes of weights each impl cycles through, so that successive products read cold weights from
/// memory, as the layers of a real model do (one 18 MB packed matrix would otherwise stay in the
/// last-level cache between iterations and report cache bandwidth).
constexpr double working_set_bytes = 1.2e9;

/// Copies of one operand totalling at least working_set_bytes. Only the most recently requested
/// key is kept (the benchmarks are registered so that a key's runs are consecutive).
template <class Key, class Value, class Make>
const std::vector<Value>& operand_copies(const Key& key, std::size_t bytes, const Make& make) {
  static Key current{};
  static std::vector<Value> copies;
  if (copies.empty() || !(current == key)) {
    copies.clear();
    copies.shrink_to_fit();
    const auto count = static_cast<std::size_t>(working_set_bytes / static_cast<double>(bytes)) + 1;
    copies.push_back(make());
    for (std::size_t i = 1; i < count; ++i) {
      copies.push_back(copies.front());
    }
    current = key;
  }
  return copies;
}

const std::vector<matrix<float>>& dense_weights(index rows, index cols) {
  return operand_copies<std::pair<index, index>, matrix<float>>(
      {rows, cols}, static_cast<std::size_t>(rows * cols) * sizeof(float), [&] {
        matrix<float> w = matrix<float>::Constant(rows, cols, 0.01f);
        for (index r = 0; r < rows; r += 7) {
          w.row(r).setConstant(-0.02f);
        }
        return w;
      });
}

const std::vector<sa::packed_binary_coded_matrix>& packed_weights(index rows, index cols, int bits,
                                                                  sa::scale_storage storage) {
  const sa::packed_binary_coded_matrix probe(random_weights(64, cols, bits), storage);
  const std::size_t bytes = probe.size_bytes() * static_cast<std::size_t>((rows + 63) / 64);
  return operand_copies<std::tuple<index, index, int, sa::scale_storage>,
                        sa::packed_binary_coded_matrix>({rows, cols, bits, storage}, bytes, [&] {
    return sa::packed_binary_coded_matrix(random_weights(rows, cols, bits), storage);
  });
}

matrix<float> activations(index batch, index cols) {
  matrix<float> x(batch, cols);
  reparam::philox_engine engine(static_cast<std::uint64_t>(batch * 977 + cols), 1);
  for (index i = 0; i < x.size(); ++i) {
    x.data()[i] = static_cast<float>(reparam::uniform_open01_double(engine(), engine()) - 0.5);
  }
  return x;
}

void set_counters(benchmark::State& state, double weight_bytes) {
  state.SetBytesProcessed(
      static_cast<std::int64_t>(static_cast<double>(state.iterations()) * weight_bytes));
  state.counters["weight_bytes"] = weight_bytes;
}

void dense_product(benchmark::State& state) {
  const index rows = state.range(0);
  const index cols = state.range(1);
  const index batch = state.range(3);
  const auto threads = static_cast<int>(state.range(4));
  const std::vector<matrix<float>>& copies = dense_weights(rows, cols);
  const matrix<float> x = activations(batch, cols);
  matrix<float> y(batch, rows);
  Eigen::setNbThreads(1);
  std::size_t next = 0;
  for (auto _ : state) {
    const matrix<float>& w = copies[next++ % copies.size()];
    if (batch == 1) {
      // GEMV: Eigen's row-major matrix-vector kernel on each thread's rows.
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int part = 0; part < threads; ++part) {
        const reparam::row_range r = reparam::split_rows_part(rows, threads, part, 64);
        y.row(0).segment(r.begin, r.size()).noalias() =
            (w.middleRows(r.begin, r.size()) * x.row(0).transpose()).transpose();
      }
    } else {
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int part = 0; part < threads; ++part) {
        const reparam::row_range r = reparam::split_rows_part(rows, threads, part, 64);
        y.middleCols(r.begin, r.size()).noalias() = x * w.middleRows(r.begin, r.size()).transpose();
      }
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 4.0 * static_cast<double>(rows) * static_cast<double>(cols));
}

void lut_product(benchmark::State& state, sa::lut_mode mode, sa::lut_path path,
                 sa::scale_storage storage = sa::scale_storage::f32) {
  const index rows = state.range(0);
  const index cols = state.range(1);
  const auto bits = static_cast<int>(state.range(2));
  const index batch = state.range(3);
  const auto threads = static_cast<int>(state.range(4));
  const std::vector<sa::packed_binary_coded_matrix>& copies =
      packed_weights(rows, cols, bits, storage);
  const sa::packed_binary_coded_matrix& first = copies.front();
  const matrix<float> x = activations(batch, cols);
  matrix<float> y(batch, rows);
  sa::lut_tables tables(first, batch, mode);
  std::size_t next = 0;
  for (auto _ : state) {
    sa::multiply(copies[next++ % copies.size()], x, y, tables, threads, path);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(reparam::kernels::lut_path_name(path));
  set_counters(state, static_cast<double>(first.size_bytes()));
}

// --- read-bandwidth probe ---------------------------------------------------------------------

constexpr index probe_floats = index{1} << 28;  // 1 GiB

const std::vector<float>& probe_array() {
  static const std::vector<float> data(static_cast<std::size_t>(probe_floats), 1.0f);
  return data;
}

/// Sum of `count` floats (a multiple of 4 batches) read as two sequential streams (the two
/// halves) with four independent vector accumulators, so the loop is bound by memory reads, not
/// by the add latency (the LUT kernels also read two streams).
float sum_floats(const float* data, index count) {
  using batch = xsimd::batch<float>;
  constexpr auto lanes = static_cast<index>(batch::size);
  const float* second = data + count / 2;
  batch a0(0.0f);
  batch a1(0.0f);
  batch a2(0.0f);
  batch a3(0.0f);
  for (index i = 0; i < count / 2; i += 2 * lanes) {
    a0 += batch::load_unaligned(data + i);
    a1 += batch::load_unaligned(data + i + lanes);
    a2 += batch::load_unaligned(second + i);
    a3 += batch::load_unaligned(second + i + lanes);
  }
  return xsimd::hadd((a0 + a1) + (a2 + a3));
}

void bandwidth_sum(benchmark::State& state) {
  const auto threads = static_cast<int>(state.range(0));
  const std::vector<float>& data = probe_array();
  for (auto _ : state) {
    float total = 0.0f;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (int part = 0; part < threads; ++part) {
      const reparam::row_range r = reparam::split_rows_part(probe_floats, threads, part, 4096);
      total += sum_floats(data.data() + r.begin, r.size());
    }
    benchmark::DoNotOptimize(total);
  }
  set_counters(state, 4.0 * static_cast<double>(probe_floats));
}

void bandwidth_memcpy(benchmark::State& state) {
  const auto threads = static_cast<int>(state.range(0));
  const std::vector<float>& data = probe_array();
  static std::vector<float> target(static_cast<std::size_t>(probe_floats), 0.0f);
  for (auto _ : state) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int part = 0; part < threads; ++part) {
      const reparam::row_range r = reparam::split_rows_part(probe_floats, threads, part, 4096);
      std::memcpy(target.data() + r.begin, data.data() + r.begin,
                  sizeof(float) * static_cast<std::size_t>(r.size()));
    }
    benchmark::DoNotOptimize(target.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 4.0 * static_cast<double>(probe_floats));
}

// --- registration -------------------------------------------------------------------------------

struct shape {
  index rows;
  index cols;
};
constexpr shape shapes[] = {{4096, 4096}, {4096, 14336}, {14336, 4096}, {4097, 11008}};

void add_args(benchmark::internal::Benchmark* b, bool all_configs) {
  b->ArgNames({"rows", "cols", "bits", "batch", "threads"});
  // A shape's (and for LUT impls a bit width's) runs are consecutive: they share the copies.
  for (const shape& s : shapes) {
    for (const int bits : {1, 2, 3, 4}) {
      for (const int threads : {1, 2}) {
        for (const index batch : {index{1}, index{8}, index{32}}) {
          if (all_configs || (s.rows == 4096 && s.cols == 14336 && batch == 1 && threads == 1)) {
            b->Args({s.rows, s.cols, bits, batch, threads});
          }
        }
      }
    }
  }
  b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

const bool registered = [] {
  add_args(benchmark::RegisterBenchmark("shiftadd/lut_multiply/dense", dense_product), true);
  const sa::lut_path best = sa::best_path();
  add_args(benchmark::RegisterBenchmark(
               "shiftadd/lut_multiply/lut_fast",
               [best](benchmark::State& state) { lut_product(state, sa::lut_mode::fast, best); }),
           true);
  add_args(benchmark::RegisterBenchmark("shiftadd/lut_multiply/lut_fast_f16scales",
                                        [best](benchmark::State& state) {
                                          lut_product(state, sa::lut_mode::fast, best,
                                                      sa::scale_storage::f16);
                                        }),
           true);
  add_args(benchmark::RegisterBenchmark("shiftadd/lut_multiply/lut_lossless",
                                        [best](benchmark::State& state) {
                                          lut_product(state, sa::lut_mode::lossless, best);
                                        }),
           true);
  for (const sa::lut_path path : reparam::kernels::all_lut_paths) {
    if (!reparam::kernels::is_lut_path_usable(path)) {
      continue;
    }
    for (const sa::lut_mode mode : {sa::lut_mode::fast, sa::lut_mode::lossless}) {
      const std::string name = std::string("shiftadd/lut_multiply/lut_") +
                               (mode == sa::lut_mode::fast ? "fast_" : "lossless_") +
                               reparam::kernels::lut_path_name(path);
      add_args(benchmark::RegisterBenchmark(
                   name.c_str(),
                   [mode, path](benchmark::State& state) { lut_product(state, mode, path); }),
               false);
    }
  }
  for (const char* impl : {"memcpy", "sum"}) {
    auto* b = benchmark::RegisterBenchmark((std::string("shiftadd/read_bandwidth/") + impl).c_str(),
                                           impl[0] == 'm' ? bandwidth_memcpy : bandwidth_sum);
    b->ArgNames({"threads"})->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  return true;
}();

}  // namespace

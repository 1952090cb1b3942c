// SPDX-License-Identifier: Apache-2.0
// The shift-form product of log-sqrt2 attention probabilities with integer values
// (scale/log_quantizer.hpp multiply_shift_form_rows, RepQ-ViT's reparameterized P V) against the
// dense Eigen float product of the same dequantized matrices, single thread:
//
//   scale/log_shift_product/dense       y.noalias() = P_hat * V_hat, float [rows, keys] x
//                                       [keys, cols] (Eigen GEMM, Eigen::setNbThreads(1))
//   scale/log_shift_product/reference   kernels::reference::log_shift_matmul_rows
//   scale/log_shift_product/simd        scale::multiply_shift_form_rows with its default arch
//                                       (argument checks and the code scan included)
//   scale/log_shift_product/simd_<path> the same through the other compiled kernel paths
//                                       (avx512vnni: reparam::kernel_arch; avx2: fma3<avx2>)
//
// Args rows (queries), keys (inner), cols (head dim), bits (log-sqrt2, extra zero code). P is
// the row-wise softmax of Gaussian logits (standard deviation 2), quantized with a scale from
// calibrate_log; V holds int16 codes in [-127, 127] (an 8-bit value quantizer) with scale 0.02.
// bytes_per_second counts the codes (1 byte per P entry for the shift form, 4 for dense) and V
// (2 bytes per entry for the shift form, 4 for dense) read once, plus the float output. The
// counter zero_fraction is the share of P entries that got the zero code (skipped by the shift
// form, multiplied by 0 in dense).
#include <cmath>
#include <cstdint>
#include <vector>

#include <Eigen/Core>
#include <benchmark/benchmark.h>

#include <reparam/core/random.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/reference/log_shift_matmul.hpp>
#include <reparam/kernels/simd/log_shift_matmul.hpp>
#include <reparam/scale/log_quantizer.hpp>

#include "support/bench_context.hpp"

namespace {

namespace sc = reparam::scale;
using reparam::index;
using reparam::matrix;

constexpr float v_scale = 0.02f;

struct problem {
  sc::log_quantizer q;
  sc::log_code_matrix p_codes;
  matrix<std::int16_t> v_codes;
  matrix<float> p_hat;
  matrix<float> v_hat;
  double zero_fraction = 0.0;
};

/// Softmax rows of N(0, 2^2) logits, calibrated and encoded; V uniform in [-127, 127].
problem make_problem(index rows, index keys, index cols, int bits) {
  reparam::philox_engine engine(static_cast<std::uint64_t>(rows * 7919 + keys * 31 + cols), 5);
  const auto uniform = [&engine] { return reparam::uniform_open01_double(engine(), engine()); };
  const auto gaussian = [&uniform] {
    const double u1 = uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  };
  matrix<float> p(rows, keys);
  for (index i = 0; i < rows; ++i) {
    std::vector<double> logits(static_cast<std::size_t>(keys));
    double top = -1e300;
    for (double& l : logits) {
      l = 2.0 * gaussian();
      top = l > top ? l : top;
    }
    double sum = 0.0;
    for (double& l : logits) {
      l = std::exp(l - top);
      sum += l;
    }
    for (index j = 0; j < keys; ++j) {
      p(i, j) = static_cast<float>(logits[static_cast<std::size_t>(j)] / sum);
    }
  }
  problem out;
  sc::log_quantizer spec;
  spec.base = sc::log_base::sqrt2;
  spec.bits = bits;
  spec.zeros = sc::zero_policy::extra_zero;
  out.q = sc::calibrate_log(p, spec);
  out.p_codes.resize(rows, keys);
  sc::encode(p, out.q, out.p_codes);
  out.p_hat.resize(rows, keys);
  sc::decode(out.p_codes, out.q, out.p_hat);
  out.zero_fraction = static_cast<double>((out.p_codes.array() == out.q.zero_code()).count()) /
                      static_cast<double>(rows * keys);
  out.v_codes.resize(keys, cols);
  for (index j = 0; j < keys; ++j) {
    for (index c = 0; c < cols; ++c) {
      out.v_codes(j, c) = static_cast<std::int16_t>(static_cast<int>(uniform() * 255.0) - 127);
    }
  }
  out.v_hat = out.v_codes.cast<float>() * v_scale;
  return out;
}

struct shape {
  index rows;
  index keys;
  index cols;
  int bits;
};

shape shape_of(const benchmark::State& state) {
  return {state.range(0), state.range(1), state.range(2), static_cast<int>(state.range(3))};
}

void set_counters(benchmark::State& state, const shape& s, index p_bytes, index v_bytes,
                  double zero_fraction) {
  const index bytes = s.rows * s.keys * p_bytes + s.keys * s.cols * v_bytes +
                      s.rows * s.cols * static_cast<index>(sizeof(float));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * bytes);
  state.counters["zero_fraction"] = zero_fraction;
}

void bm_dense(benchmark::State& state) {
  Eigen::setNbThreads(1);
  const shape s = shape_of(state);
  const problem pr = make_problem(s.rows, s.keys, s.cols, s.bits);
  matrix<float> y(s.rows, s.cols);
  for (auto _ : state) {
    y.noalias() = pr.p_hat * pr.v_hat;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s, 4, 4, pr.zero_fraction);
}

reparam::kernels::log_shift_operand operand_of(const problem& pr) {
  reparam::kernels::log_shift_operand op;
  op.codes = pr.p_codes.data();
  op.code_row_stride = pr.p_codes.cols();
  op.v = pr.v_codes.data();
  op.v_row_stride = pr.v_codes.cols();
  op.inner = pr.p_codes.cols();
  op.cols = pr.v_codes.cols();
  op.levels = pr.q.levels();
  op.is_sqrt2 = pr.q.base == sc::log_base::sqrt2;
  op.scale = static_cast<double>(pr.q.scale) * static_cast<double>(v_scale);
  return op;
}

void bm_reference(benchmark::State& state) {
  const shape s = shape_of(state);
  const problem pr = make_problem(s.rows, s.keys, s.cols, s.bits);
  const reparam::kernels::log_shift_operand op = operand_of(pr);
  matrix<float> y(s.rows, s.cols);
  std::vector<std::int32_t> workspace(
      static_cast<std::size_t>(sc::log_shift_workspace_size(pr.q, s.cols)));
  for (auto _ : state) {
    reparam::kernels::reference::log_shift_matmul_rows(op, y.data(), s.cols, 0, s.rows,
                                                       workspace.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s, 1, 2, pr.zero_fraction);
}

template <class Arch>
void bm_simd(benchmark::State& state) {
  const shape s = shape_of(state);
  const problem pr = make_problem(s.rows, s.keys, s.cols, s.bits);
  matrix<float> y(s.rows, s.cols);
  const index workspace_size = sc::log_shift_workspace_size(pr.q, s.cols);
  std::vector<std::int32_t> workspace(static_cast<std::size_t>(workspace_size));
  for (auto _ : state) {
    sc::multiply_shift_form_rows<Arch>(pr.p_codes, pr.q, pr.v_codes, v_scale, y,
                                       reparam::all_rows(s.rows), workspace.data(), workspace_size);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s, 1, 2, pr.zero_fraction);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "keys", "cols", "bits"});
  b->Args({128, 512, 64, 4});    // a ViT/LLM prefill head (head dim 64)
  b->Args({128, 2048, 128, 4});  // long context, head dim 128
  b->Args({1, 2048, 128, 4});    // decode: one query against the KV cache
  b->Args({64, 512, 8, 4});      // stories260K (head dim 8)
  b->Args({197, 197, 64, 4});    // DeiT-S attention (197 tokens, head dim 64)
  b->Args({128, 512, 64, 6});    // finer grid, more levels to combine
}

BENCHMARK(bm_dense)->Name("scale/log_shift_product/dense")->Apply(shapes);
BENCHMARK(bm_reference)->Name("scale/log_shift_product/reference")->Apply(shapes);
BENCHMARK(bm_simd<reparam::default_arch>)->Name("scale/log_shift_product/simd")->Apply(shapes);
#if REPARAM_HAS_LOG_SHIFT_AVX512 && REPARAM_WITH_AVX512VBMI_VNNI
BENCHMARK(bm_simd<reparam::avx512vbmi_vnni>)
    ->Name("scale/log_shift_product/simd_avx512vnni")
    ->Apply(shapes);
#endif
#if REPARAM_HAS_LOG_SHIFT_AVX2
BENCHMARK(bm_simd<xsimd::fma3<xsimd::avx2>>)
    ->Name("scale/log_shift_product/simd_avx2")
    ->Apply(shapes);
#endif

}  // namespace

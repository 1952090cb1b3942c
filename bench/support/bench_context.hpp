// SPDX-License-Identifier: Apache-2.0
// Context every reparam benchmark records: the xsimd arch the TU was compiled for and the build
// type, so results from different machines and builds are never compared blindly.
#ifndef REPARAM_BENCH_SUPPORT_BENCH_CONTEXT_HPP
#define REPARAM_BENCH_SUPPORT_BENCH_CONTEXT_HPP

#include <benchmark/benchmark.h>

#include <reparam/kernels/arch.hpp>
#include <reparam/version.hpp>

namespace reparam::bench {

inline void add_context() {
  benchmark::AddCustomContext("xsimd_arch", reparam::default_arch::name());
#if defined(NDEBUG)
  benchmark::AddCustomContext("reparam_build", "release");
#else
  benchmark::AddCustomContext("reparam_build", "debug");
#endif
}

/// Registers the context once per program, before main runs the benchmarks.
inline const bool context_registered = (add_context(), true);

}  // namespace reparam::bench

#endif  // REPARAM_BENCH_SUPPORT_BENCH_CONTEXT_HPP

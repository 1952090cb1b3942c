// SPDX-License-Identifier: Apache-2.0
// AVX2 path of the LUT product (placeholder until the kernel lands).
#ifndef REPARAM_KERNELS_SIMD_BCQ_LUT_AVX2_HPP
#define REPARAM_KERNELS_SIMD_BCQ_LUT_AVX2_HPP
#define REPARAM_HAS_LUT_AVX2 0
#endif  // REPARAM_KERNELS_SIMD_BCQ_LUT_AVX2_HPP

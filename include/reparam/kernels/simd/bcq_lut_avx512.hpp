// SPDX-License-Identifier: Apache-2.0
// AVX-512 paths of the LUT product (placeholder until the kernels land).
#ifndef REPARAM_KERNELS_SIMD_BCQ_LUT_AVX512_HPP
#define REPARAM_KERNELS_SIMD_BCQ_LUT_AVX512_HPP
#define REPARAM_HAS_LUT_AVX512BW 0
#define REPARAM_HAS_LUT_AVX512VBMI 0
#endif  // REPARAM_KERNELS_SIMD_BCQ_LUT_AVX512_HPP

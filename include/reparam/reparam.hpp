// SPDX-License-Identifier: Apache-2.0
// Umbrella header: includes every public reparam header.
#ifndef REPARAM_REPARAM_HPP
#define REPARAM_REPARAM_HPP

#include <reparam/config.hpp>
#include <reparam/core/error.hpp>
#include <reparam/core/half.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/random.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/scalar_traits.hpp>
#include <reparam/core/second_moment.hpp>
#include <reparam/core/tensor_views.hpp>
#include <reparam/core/views.hpp>
#include <reparam/core/workspace.hpp>
#include <reparam/gumbel/gumbel.hpp>
#include <reparam/io/safetensors.hpp>
#include <reparam/io/shiftadd.hpp>
#include <reparam/kernels/arch.hpp>
#include <reparam/kernels/bcq_lut_layout.hpp>
#include <reparam/kernels/bcq_lut_tables.hpp>
#include <reparam/kernels/reference/bcq_multiply.hpp>
#include <reparam/kernels/reference/gumbel_max.hpp>
#include <reparam/kernels/reference/gumbel_noise.hpp>
#include <reparam/kernels/reference/log_shift_matmul.hpp>
#include <reparam/kernels/simd/bcq_lut.hpp>
#include <reparam/kernels/simd/bcq_lut_avx2.hpp>
#include <reparam/kernels/simd/bcq_lut_avx512.hpp>
#include <reparam/kernels/simd/bcq_lut_generic.hpp>
#include <reparam/kernels/simd/gumbel_max.hpp>
#include <reparam/kernels/simd/gumbel_noise.hpp>
#include <reparam/kernels/simd/log_shift_matmul.hpp>
#include <reparam/scale/scale.hpp>
#include <reparam/shiftadd/shiftadd.hpp>
#include <reparam/structural/structural.hpp>
#include <reparam/unlearn/unlearn.hpp>
#include <reparam/version.hpp>

#endif  // REPARAM_REPARAM_HPP

// SPDX-License-Identifier: Apache-2.0
// Front door of the shift-add family (ShiftAddLLM, You et al., NeurIPS 2024): binary-coded weights
// (formats.hpp), the per-group BCQ fitter with optional power-of-two scales (bcq.hpp), uniform
// RTN and its exact conversion (uniform.hpp), activation-aware GPTQ-style fitting (gptq.hpp),
// per-layer bit allocation (bit_allocation.hpp) and the reference multiply (multiply.hpp).
#ifndef REPARAM_SHIFTADD_SHIFTADD_HPP
#define REPARAM_SHIFTADD_SHIFTADD_HPP

#include <reparam/shiftadd/bcq.hpp>
#include <reparam/shiftadd/bit_allocation.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/gptq.hpp>
#include <reparam/shiftadd/multiply.hpp>
#include <reparam/shiftadd/packed.hpp>
#include <reparam/shiftadd/uniform.hpp>

#endif  // REPARAM_SHIFTADD_SHIFTADD_HPP

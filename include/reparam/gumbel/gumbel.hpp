// SPDX-License-Identifier: Apache-2.0
// Front door of reparam::gumbel: open-interval Gumbel noise on Philox, Gumbel-max and top-k
// sampling, Gumbel-softmax with gradients and Concrete log-densities, and SofT-GRPO soft tokens.
#ifndef REPARAM_GUMBEL_GUMBEL_HPP
#define REPARAM_GUMBEL_GUMBEL_HPP

#include <reparam/gumbel/noise.hpp>
#include <reparam/gumbel/sample.hpp>
#include <reparam/gumbel/soft_token.hpp>
#include <reparam/gumbel/softmax.hpp>
#include <reparam/gumbel/types.hpp>

#endif  // REPARAM_GUMBEL_GUMBEL_HPP

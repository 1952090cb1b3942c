// SPDX-License-Identifier: Apache-2.0
// Front door of the structural family: exact branch merging for conv and transformer blocks
// (RepVGG, ACNet, DBB, MobileOne, RepLKNet/UniRepLKNet, QARepVGG, RepMLP, RePaViT, parallel-branch
// ViTs), BatchNorm / affine / scale folds, low-rank adapter folding, expert averaging, and the
// inference forward used to check merges on real data.
#ifndef REPARAM_STRUCTURAL_STRUCTURAL_HPP
#define REPARAM_STRUCTURAL_STRUCTURAL_HPP

#include <reparam/structural/conv_merge.hpp>
#include <reparam/structural/conv_recipes.hpp>
#include <reparam/structural/forward.hpp>
#include <reparam/structural/linear_merge.hpp>
#include <reparam/structural/transformer_recipes.hpp>
#include <reparam/structural/types.hpp>

#endif  // REPARAM_STRUCTURAL_STRUCTURAL_HPP

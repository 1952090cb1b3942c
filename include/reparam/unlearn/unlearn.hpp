// SPDX-License-Identifier: Apache-2.0
// Front door of reparam::unlearn: rank-revealing subspaces, factored projectors and their folds
// (orthogonal, LEACE, INLP), residual-stream ablation folded into every writer, closed-form
// least-squares editors, gradient projection (GU), and projection merging (OPCM, MergeLock).
#ifndef REPARAM_UNLEARN_UNLEARN_HPP
#define REPARAM_UNLEARN_UNLEARN_HPP

#include <reparam/unlearn/ablation.hpp>
#include <reparam/unlearn/editor.hpp>
#include <reparam/unlearn/gradient.hpp>
#include <reparam/unlearn/merge.hpp>
#include <reparam/unlearn/projector.hpp>
#include <reparam/unlearn/subspace.hpp>

#endif  // REPARAM_UNLEARN_UNLEARN_HPP

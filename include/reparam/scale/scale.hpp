// SPDX-License-Identifier: Apache-2.0
// Front door of the scale family: uniform quantizers and calibrators, log2 / log-sqrt2
// quantizers with RepQ-ViT's shift-form product, exact channel-affine folds into norms and
// linears, their initialisers (RepQ-ViT, SmoothQuant, AWQ, OmniQuant LET) and rotation folds.
#ifndef REPARAM_SCALE_SCALE_HPP
#define REPARAM_SCALE_SCALE_HPP

#include <reparam/scale/calibrate.hpp>
#include <reparam/scale/fold.hpp>
#include <reparam/scale/log_quantizer.hpp>
#include <reparam/scale/quantizer.hpp>
#include <reparam/scale/reparameterize.hpp>
#include <reparam/scale/rotation.hpp>

#endif  // REPARAM_SCALE_SCALE_HPP

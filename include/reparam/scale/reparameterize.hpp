// SPDX-License-Identifier: Apache-2.0
// Initialisers of the channel-affine fold (r, t) (fold.hpp): RepQ-ViT's per-channel -> layer-wise
// activation quantizer reparameterization, SmoothQuant's alpha migration, AWQ's activation-aware
// scale grid search and OmniQuant's LET initialization (scale and shift). Each returns (r, t) and
// the quantizer the folded activation should use; folding is a separate, exact step.
// Sources and formulas: research/scale_and_gumbel.md A2 (RepQ-ViT), A4 (SmoothQuant, AWQ,
// OmniQuant).
//
// Everything here computes in double, validates every input before computing (reparam::error
// naming the function, argument and value; NaN/Inf are refused, never clamped), allocates its
// result, keeps no state (concurrent calls are safe) and is meant for offline use.
#ifndef REPARAM_SCALE_REPARAMETERIZE_HPP
#define REPARAM_SCALE_REPARAMETERIZE_HPP

#include <cmath>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/fold.hpp>
#include <reparam/scale/quantizer.hpp>

namespace reparam::scale {

namespace detail {

/// SmoothQuant's lower clamp of the weight maxima and of r (smoothquant/smooth.py).
inline constexpr double smooth_min_value = 1e-5;

/// AWQ's lower clamp of mean|X|^ratio (llm-awq auto_scale.py).
inline constexpr double awq_min_scale = 1e-4;

/// Refuses an empty list (argument `name`) or a missing, empty or non-finite weight or one without
/// `channels` columns.
inline void check_reparam_weights(const char* function, const char* name,
                                  const std::vector<const matrix<float>*>& weights,
                                  index channels) {
  reparam::detail::check(!weights.empty(), function, name, " is empty");
  for (std::size_t k = 0; k < weights.size(); ++k) {
    reparam::detail::check(weights[k] != nullptr, function, name, "[", k, "] is null");
    const matrix<float>& w = *weights[k];
    reparam::detail::check(w.rows() >= 1 && w.cols() >= 1, function, name, "[", k, "] is empty (",
                           w.rows(), " x ", w.cols(), ")");
    reparam::detail::check(w.cols() == channels, function, name, "[", k, "] has ", w.cols(),
                           " input columns, expected ", channels, " channels");
    for (index i = 0; i < w.rows(); ++i) {
      for (index j = 0; j < w.cols(); ++j) {
        reparam::detail::check(std::isfinite(w(i, j)), function, name, "[", k, "](", i, ", ", j,
                               ") = ", w(i, j), " is not finite");
      }
    }
  }
}

/// Refuses an empty per-channel statistic or one with a negative or non-finite entry.
inline void check_reparam_statistic(const char* function, const char* name,
                                    const vector<float>& v) {
  reparam::detail::check(v.size() >= 1, function, name, " is empty (no channels)");
  for (index c = 0; c < v.size(); ++c) {
    reparam::detail::check(std::isfinite(v[c]) && v[c] >= 0.0f, function, name, "[", c,
                           "] = ", v[c], " must be >= 0 and finite");
  }
}

/// Refuses alpha outside [0, 1] (and NaN).
inline void check_reparam_alpha(const char* function, double alpha) {
  reparam::detail::check(alpha >= 0.0 && alpha <= 1.0, function, "alpha ", alpha,
                         " must be in [0, 1]");
}

/// max_i |W_ij| over every consumer, clamped to >= 1e-5 (inputs validated).
inline vector<double> smooth_weight_absmax(const std::vector<const matrix<float>*>& weights,
                                           index channels) {
  vector<double> out = vector<double>::Zero(channels);
  for (const matrix<float>* w : weights) {
    for (index i = 0; i < w->rows(); ++i) {
      for (index j = 0; j < channels; ++j) {
        const double v = std::abs(static_cast<double>((*w)(i, j)));
        out[j] = v > out[j] ? v : out[j];
      }
    }
  }
  for (index j = 0; j < channels; ++j) {
    out[j] = out[j] > smooth_min_value ? out[j] : smooth_min_value;
  }
  return out;
}

/// r_j = max(a_j^alpha / w_j^(1 - alpha), 1e-5) (inputs validated; pow(0, 0) = 1 as in torch).
inline vector<double> smooth_scale(const vector<double>& act, const vector<double>& weight_max,
                                   double alpha) {
  vector<double> r(act.size());
  for (index j = 0; j < act.size(); ++j) {
    const double v = std::pow(act[j], alpha) / std::pow(weight_max[j], 1.0 - alpha);
    r[j] = v > smooth_min_value ? v : smooth_min_value;
  }
  return r;
}

}  // namespace detail

/// RepQ-ViT (Li et al., ICCV 2023, section 4.2): a per-column (per-channel) activation quantizer
/// (scale_c, zero_c) becomes one layer-wise quantizer (mean scale, mean zero point) after the
/// fold r_c = scale_c / s~, t_c = -scale_c (zero_c - z~) (x' = (x - t) / r).
/// round_target_zero_point = true rounds z~ (half even) so every integer code of the layer-wise
/// quantizer on x' equals the channel-wise code on x (exact integer equivalence);
/// false reproduces the official code (z~ = mean, not rounded), which changes codes.
///
/// s~ is the mean of the scales in double, rounded once to float (the layer quantizer's
/// storage), and r, t are computed from that float value so the fold matches the stored
/// quantizer exactly. The equivalence is x'/s~ = x/scale_c + (zero_c - z~) in exact arithmetic:
/// the codes agree whenever rounding commutes with the integer shift zero_c - z~, i.e. always
/// for floor and half_up and everywhere but exact ties for half_even / half_away_from_zero (the
/// float x' the folded network computes is itself rounded, so ties are not reproducible anyway).
/// With round_target_zero_point = false the layer quantizer's zero_point is the non-integer mean,
/// as in the official code (it breaks uniform_quantizer's "integer valued" invariant on purpose).
/// Preconditions (reparam::error otherwise): spec.axis == per_column; bits in [1, 16] (asymmetric)
/// or [2, 16] (symmetric); at least one channel; zero_point the same size as scale; scales > 0
/// and finite; zero points finite and integer valued (0 when symmetric).
/// Uses only the quantizer's data members. Allocates the result.
struct repq_result {
  channel_affine affine;
  uniform_quantizer layer_quantizer;  ///< per_tensor, same bits/symmetry/rounding
};
inline repq_result repq_vit_reparameterize(const uniform_quantizer& channel_quantizer,
                                           bool round_target_zero_point = true) {
  constexpr const char* function = "scale::repq_vit_reparameterize";
  const uniform_spec& spec = channel_quantizer.spec;
  reparam::detail::check(spec.axis == granularity::per_column, function,
                         "channel_quantizer.spec.axis must be per_column (one slot per channel)");
  const int min_bits = spec.is_symmetric ? 2 : 1;
  reparam::detail::check(spec.bits >= min_bits && spec.bits <= 16, function,
                         "channel_quantizer.spec.bits ", spec.bits, " is outside [", min_bits,
                         ", 16]");
  const index channels = channel_quantizer.scale.size();
  reparam::detail::check(channels >= 1, function, "channel_quantizer.scale is empty (no channels)");
  reparam::detail::check(channel_quantizer.zero_point.size() == channels, function,
                         "channel_quantizer.zero_point has ", channel_quantizer.zero_point.size(),
                         " entries, expected ", channels, " (one per scale)");
  for (index c = 0; c < channels; ++c) {
    const float s = channel_quantizer.scale[c];
    reparam::detail::check(std::isfinite(s) && s > 0.0f, function, "channel_quantizer.scale[", c,
                           "] = ", s, " must be > 0 and finite");
    const float z = channel_quantizer.zero_point[c];
    reparam::detail::check(std::isfinite(z) && std::floor(z) == z, function,
                           "channel_quantizer.zero_point[", c, "] = ", z,
                           " must be a finite integer");
    reparam::detail::check(!spec.is_symmetric || z == 0.0f, function,
                           "channel_quantizer.zero_point[", c, "] = ", z,
                           " must be 0 for a symmetric quantizer");
  }

  double scale_sum = 0.0;
  double zero_sum = 0.0;
  for (index c = 0; c < channels; ++c) {
    scale_sum += static_cast<double>(channel_quantizer.scale[c]);
    zero_sum += static_cast<double>(channel_quantizer.zero_point[c]);
  }
  const auto count = static_cast<double>(channels);
  const auto target_scale = static_cast<float>(scale_sum / count);
  double target_zero = zero_sum / count;
  if (round_target_zero_point) {
    // A mean in [-0.5, 0) rounds to -0.0; the + 0.0 stores +0.0 (zero point and shifts).
    target_zero = round(target_zero, rounding::half_even) + 0.0;
  }
  const auto target_zero_stored = static_cast<float>(target_zero);
  const auto s_t = static_cast<double>(target_scale);
  const auto z_t = static_cast<double>(target_zero_stored);

  repq_result out;
  out.affine.scale.resize(channels);
  out.affine.shift.resize(channels);
  for (index c = 0; c < channels; ++c) {
    const auto s = static_cast<double>(channel_quantizer.scale[c]);
    const auto z = static_cast<double>(channel_quantizer.zero_point[c]);
    out.affine.scale[c] = s / s_t;
    out.affine.shift[c] = s * (z_t - z);  // = -scale_c (zero_c - z~)
  }
  out.layer_quantizer.spec = spec;
  out.layer_quantizer.spec.axis = granularity::per_tensor;
  out.layer_quantizer.spec.group_size = 0;
  out.layer_quantizer.scale = vector<float>::Constant(1, target_scale);
  out.layer_quantizer.zero_point = vector<float>::Constant(1, target_zero_stored);
  return out;
}

/// SmoothQuant (Xiao et al., ICML 2023, eq. 4): r_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha),
/// the weight max taken over every consumer sharing the input (q, k, v), the weight max clamped
/// to >= 1e-5 and r clamped to >= 1e-5 (smoothquant/smooth.py; the activation max is not
/// clamped there, so a dead channel, absmax 0, gets r = 1e-5 for alpha > 0 and 1 / max|W_j| for
/// alpha = 0, pow(0, 0) = 1 as in torch). t = 0 (empty shift). alpha in [0, 1].
/// act_absmax has one entry per channel (>= 0, finite).
/// Preconditions (reparam::error otherwise): those, plus a non-empty list of non-null, non-empty,
/// finite consumer weights with act_absmax.size() input columns each.
inline channel_affine smoothquant_affine(const vector<float>& act_absmax,
                                         const std::vector<const matrix<float>*>& consumer_weights,
                                         double alpha = 0.5) {
  constexpr const char* function = "scale::smoothquant_affine";
  detail::check_reparam_alpha(function, alpha);
  detail::check_reparam_statistic(function, "act_absmax", act_absmax);
  detail::check_reparam_weights(function, "consumer_weights", consumer_weights, act_absmax.size());
  const vector<double> weight_max =
      detail::smooth_weight_absmax(consumer_weights, act_absmax.size());
  channel_affine out;
  out.scale = detail::smooth_scale(act_absmax.cast<double>(), weight_max, alpha);
  return out;
}

/// OmniQuant LET initialization (omniquant.py, generate_act_scale_shift.py): shift
/// t = (max + min) / 2 per channel, then the SmoothQuant scale of the shifted activation
/// (absmax (max - min) / 2) with `alpha`. act_min/act_max per channel.
/// The shifted absmax is clamped to >= 1e-5 (omniquant.py clamps the activation statistic), the
/// weight max over all consumers to >= 1e-5 and r to >= 1e-5. Differences from omniquant.py,
/// on purpose: it takes the activation absmax before the shift (we use the absmax of the shifted
/// activation, the tensor the quantizer sees after the fold), the signed column max of q_proj
/// only (we use max |W| over every consumer, as SmoothQuant), and an EMA of the per-batch shift
/// (the caller passes the statistic it wants as act_min/act_max).
/// Preconditions (reparam::error otherwise): act_min and act_max the same non-zero size, finite,
/// act_min <= act_max; alpha in [0, 1]; weights as in smoothquant_affine.
inline channel_affine omniquant_affine(const vector<float>& act_min, const vector<float>& act_max,
                                       const std::vector<const matrix<float>*>& consumer_weights,
                                       double alpha = 0.5) {
  constexpr const char* function = "scale::omniquant_affine";
  detail::check_reparam_alpha(function, alpha);
  const index channels = act_max.size();
  reparam::detail::check(channels >= 1, function, "act_max is empty (no channels)");
  reparam::detail::check(act_min.size() == channels, function, "act_min has ", act_min.size(),
                         " entries, act_max has ", channels);
  for (index c = 0; c < channels; ++c) {
    reparam::detail::check(std::isfinite(act_min[c]) && std::isfinite(act_max[c]), function,
                           "act_min[", c, "] = ", act_min[c], " / act_max[", c, "] = ", act_max[c],
                           " must be finite");
    reparam::detail::check(act_min[c] <= act_max[c], function, "act_min[", c, "] = ", act_min[c],
                           " > act_max[", c, "] = ", act_max[c]);
  }
  detail::check_reparam_weights(function, "consumer_weights", consumer_weights, channels);
  const vector<double> weight_max = detail::smooth_weight_absmax(consumer_weights, channels);
  vector<double> shifted_absmax(channels);
  channel_affine out;
  out.shift.resize(channels);
  for (index c = 0; c < channels; ++c) {
    const auto lo = static_cast<double>(act_min[c]);
    const auto hi = static_cast<double>(act_max[c]);
    out.shift[c] = (hi + lo) / 2.0;
    const double half_range = (hi - lo) / 2.0;
    shifted_absmax[c] =
        half_range > detail::smooth_min_value ? half_range : detail::smooth_min_value;
  }
  out.scale = detail::smooth_scale(shifted_absmax, weight_max, alpha);
  return out;
}

/// AWQ (Lin et al., MLSys 2024; llm-awq auto_scale.py): for ratio a in {0, 1/grid, ...,
/// (grid-1)/grid}, r = max(mean|X_j|^a, 1e-4) normalized by sqrt(max(r) min(r)); score
/// loss(r); keep the smallest (first on ties). `loss` receives the candidate affine and returns
/// the block-output error of the quantized block (the caller fake-quantizes W diag(r) and runs its
/// block). act_mean_abs per channel (>= 0, finite). t = 0.
/// `loss` is called once per grid point, in order of increasing ratio, on this thread. A
/// non-finite loss is an error naming the ratio (llm-awq raises when no finite loss exists).
/// Preconditions (reparam::error otherwise): loss non-empty, grid >= 1, act_mean_abs non-empty
/// with entries >= 0 and finite. Allocates the result.
struct awq_result {
  channel_affine affine;
  double ratio = 0.0;
  double loss = 0.0;
  std::vector<double> losses;  ///< per grid point
};
inline awq_result awq_search(const vector<float>& act_mean_abs,
                             const std::function<double(const channel_affine&)>& loss,
                             int grid = 20) {
  constexpr const char* function = "scale::awq_search";
  reparam::detail::check(static_cast<bool>(loss), function, "loss is an empty function");
  reparam::detail::check(grid >= 1, function, "grid ", grid, " must be >= 1");
  detail::check_reparam_statistic(function, "act_mean_abs", act_mean_abs);
  const index channels = act_mean_abs.size();
  awq_result out;
  out.losses.reserve(static_cast<std::size_t>(grid));
  channel_affine candidate;
  candidate.scale.resize(channels);
  for (int k = 0; k < grid; ++k) {
    const double ratio = static_cast<double>(k) / static_cast<double>(grid);
    double largest = 0.0;
    double smallest = 0.0;
    for (index c = 0; c < channels; ++c) {
      const double v = std::pow(static_cast<double>(act_mean_abs[c]), ratio);
      const double s = v > detail::awq_min_scale ? v : detail::awq_min_scale;
      candidate.scale[c] = s;
      largest = c == 0 || s > largest ? s : largest;
      smallest = c == 0 || s < smallest ? s : smallest;
    }
    const double norm = std::sqrt(largest * smallest);
    candidate.scale /= norm;
    const double value = loss(candidate);
    reparam::detail::check(std::isfinite(value), function, "loss returned ", value, " for ratio ",
                           ratio);
    out.losses.push_back(value);
    if (k == 0 || value < out.loss) {
      out.affine = candidate;
      out.ratio = ratio;
      out.loss = value;
    }
  }
  return out;
}

/// The default AWQ block loss over a norm's consumers: sum over consumers and samples of
/// ||Q(W diag(r)) diag(r)^-1 x - W x||^2 for the calibration inputs x [tokens, in]
/// (rows are tokens), with `quantize_weight` the caller's weight fake-quantizer.
/// W diag(r) is formed as the fold forms it (double product rounded once to float) before it is
/// passed to quantize_weight, which must return a finite matrix of the same shape. With a shift
/// t (OmniQuant-style affines) the folded block is Q(W diag r) (x - t) / r + (c + W t), so the
/// loss is sum ||(Q(W diag r) diag(r)^-1 - W)(x - t)||^2; t = 0 gives AWQ's formula. Computed in
/// double. Preconditions (reparam::error otherwise): quantize_weight non-empty; x non-empty and
/// finite; affine valid for x.cols() channels; weights as in smoothquant_affine with x.cols()
/// columns. Allocates temporaries.
inline double awq_consumer_loss(
    const matrix<float>& x, const std::vector<const matrix<float>*>& weights,
    const channel_affine& affine,
    const std::function<matrix<float>(const matrix<float>&)>& quantize_weight) {
  constexpr const char* function = "scale::awq_consumer_loss";
  reparam::detail::check(static_cast<bool>(quantize_weight), function,
                         "quantize_weight is an empty function");
  reparam::detail::check(x.rows() >= 1 && x.cols() >= 1, function, "x is empty (", x.rows(), " x ",
                         x.cols(), ")");
  const index channels = x.cols();
  for (index i = 0; i < x.rows(); ++i) {
    for (index j = 0; j < channels; ++j) {
      reparam::detail::check(std::isfinite(x(i, j)), function, "x(", i, ", ", j, ") = ", x(i, j),
                             " is not finite");
    }
  }
  detail::check_fold_affine(function, affine, channels);
  detail::check_reparam_weights(function, "weights", weights, channels);

  matrix<double> centered = x.cast<double>();
  if (affine.has_shift()) {
    centered.rowwise() -= affine.shift.transpose();
  }
  double total = 0.0;
  for (std::size_t k = 0; k < weights.size(); ++k) {
    const matrix<float>& w = *weights[k];
    matrix<float> scaled(w.rows(), channels);
    for (index i = 0; i < w.rows(); ++i) {
      for (index j = 0; j < channels; ++j) {
        scaled(i, j) = static_cast<float>(static_cast<double>(w(i, j)) * affine.scale[j]);
      }
    }
    const matrix<float> quantized = quantize_weight(scaled);
    reparam::detail::check(quantized.rows() == w.rows() && quantized.cols() == channels, function,
                           "quantize_weight returned ", quantized.rows(), " x ", quantized.cols(),
                           " for weights[", k, "] of ", w.rows(), " x ", channels);
    matrix<double> delta(w.rows(), channels);
    for (index i = 0; i < w.rows(); ++i) {
      for (index j = 0; j < channels; ++j) {
        const float q = quantized(i, j);
        reparam::detail::check(std::isfinite(q), function, "quantize_weight returned ", q, " at (",
                               i, ", ", j, ") for weights[", k, "]");
        delta(i, j) = static_cast<double>(q) / affine.scale[j] - static_cast<double>(w(i, j));
      }
    }
    const matrix<double> residual = centered * delta.transpose();
    total += residual.squaredNorm();
  }
  return total;
}

}  // namespace reparam::scale

#endif  // REPARAM_SCALE_REPARAMETERIZE_HPP

// SPDX-License-Identifier: Apache-2.0
// Exact channel-to-layer scale folds: the per-channel affine change of variables
// x' = (x - t) / r moved into the producer of x (LayerNorm, RMSNorm, or a linear layer's rows)
// and into every consumer linear (W' = W diag(r), c' = c + W t), so the float network computes
// the same function while the quantized tensor x' has the ranges a layer-wise quantizer wants.
// RepQ-ViT, SmoothQuant, AWQ and OmniQuant's LET are all this fold with different (r, t)
// (research/scale_and_gumbel.md A2, table "special cases"); reparameterize.hpp computes them.
//
// All folds compute in double and round once to float; they take const inputs and return new
// parameters (nothing is modified in place). Errors (reparam::error) name the function, the
// argument and the offending values: r with a zero, negative or non-finite entry, t non-finite,
// size mismatches, a shift on a producer that cannot absorb it.
//
// Bias rule (every fold): an output bias exists when the input had one or when the shift has a
// nonzero entry; a shift whose entries are all zero counts as no shift and creates no bias.
// Non-finite entries in any input (gains, biases, weights, r, t) are refused, never propagated.
// All folds allocate their results (offline use); they keep no state, so concurrent calls are safe.
#ifndef REPARAM_SCALE_FOLD_HPP
#define REPARAM_SCALE_FOLD_HPP

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>

namespace reparam::scale {

/// x' = (x - shift) / scale per channel. scale > 0 and finite (a negative r would be exact too,
/// but flips quantizer ranges; refused to keep ranges meaningful); shift finite; an empty shift
/// means 0.
struct channel_affine {
  vector<double> scale;  ///< r
  vector<double> shift;  ///< t (size 0 or the channel count)

  index channels() const noexcept { return scale.size(); }
  bool has_shift() const noexcept { return shift.size() != 0; }
};

/// A normalization's affine part: y = normalized(x) * gain + bias. LayerNorm or RMSNorm (the
/// normalization itself is unchanged by a fold); bias size 0 = no bias.
struct norm_affine {
  vector<float> gain;
  vector<float> bias;
};

/// A linear layer y = W x + bias, W [out, in] row-major; bias size 0 = no bias.
struct linear {
  matrix<float> weight;
  vector<float> bias;
};

/// A folded norm and its folded consumers, in the consumers' order (fold_channel_affine,
/// fold_norm_gain).
struct folded_norm_block {
  norm_affine norm;
  std::vector<linear> consumers;
};

namespace detail {

/// True when the shift has an entry != 0 (an all-zero shift is no shift).
inline bool fold_has_nonzero_shift(const channel_affine& affine) noexcept {
  for (index c = 0; c < affine.shift.size(); ++c) {
    if (affine.shift[c] != 0.0) {
      return true;
    }
  }
  return false;
}

/// Refuses an affine that is not (channels) positive finite scales and an empty or (channels)
/// finite shift. The messages name the channel and the value.
inline void check_fold_affine(const char* function, const channel_affine& affine, index channels) {
  reparam::detail::check(affine.scale.size() >= 1, function, "affine.scale is empty (no channels)");
  reparam::detail::check(affine.scale.size() == channels, function, "affine.scale has ",
                         affine.scale.size(), " entries, expected ", channels, " channels");
  for (index c = 0; c < channels; ++c) {
    const double r = affine.scale[c];
    reparam::detail::check(std::isfinite(r) && r > 0.0, function, "affine.scale[", c, "] = ", r,
                           " must be > 0 and finite");
  }
  reparam::detail::check(affine.shift.size() == 0 || affine.shift.size() == channels, function,
                         "affine.shift has ", affine.shift.size(), " entries, expected 0 or ",
                         channels, " channels");
  for (index c = 0; c < affine.shift.size(); ++c) {
    reparam::detail::check(std::isfinite(affine.shift[c]), function, "affine.shift[", c,
                           "] = ", affine.shift[c], " is not finite");
  }
}

/// Refuses a vector with a non-finite entry, naming `name`, the position and the value.
template <class Vector>
void check_fold_finite_vector(const char* function, const std::string& name, const Vector& v) {
  for (index i = 0; i < v.size(); ++i) {
    reparam::detail::check(std::isfinite(v[i]), function, name, "[", i, "] = ", v[i],
                           " is not finite");
  }
}

/// Refuses a norm whose gain does not have `channels` entries, whose bias is neither empty nor
/// `channels` long, or with a non-finite entry.
inline void check_fold_norm(const char* function, const norm_affine& norm, index channels) {
  reparam::detail::check(norm.gain.size() == channels, function, "norm.gain has ", norm.gain.size(),
                         " entries, expected ", channels, " channels");
  reparam::detail::check(norm.bias.size() == 0 || norm.bias.size() == channels, function,
                         "norm.bias has ", norm.bias.size(), " entries, expected 0 or ", channels);
  check_fold_finite_vector(function, "norm.gain", norm.gain);
  check_fold_finite_vector(function, "norm.bias", norm.bias);
}

/// Refuses a linear with no rows or no columns, `in_features` columns when in_features >= 0 is
/// given, a bias that is neither empty nor [rows], or a non-finite weight or bias entry.
inline void check_fold_linear(const char* function, const std::string& name, const linear& layer,
                              index in_features) {
  const index rows = layer.weight.rows();
  const index cols = layer.weight.cols();
  reparam::detail::check(rows >= 1 && cols >= 1, function, name, ".weight is empty (", rows, " x ",
                         cols, ")");
  if (in_features >= 0) {
    reparam::detail::check(cols == in_features, function, name, ".weight has ", cols,
                           " input columns, expected ", in_features, " channels");
  }
  reparam::detail::check(layer.bias.size() == 0 || layer.bias.size() == rows, function, name,
                         ".bias has ", layer.bias.size(), " entries, expected 0 or ", rows,
                         " (the weight's rows)");
  for (index i = 0; i < rows; ++i) {
    for (index j = 0; j < cols; ++j) {
      reparam::detail::check(std::isfinite(layer.weight(i, j)), function, name, ".weight(", i, ", ",
                             j, ") = ", layer.weight(i, j), " is not finite");
    }
  }
  check_fold_finite_vector(function, name + ".bias", layer.bias);
}

/// The producer-side bias bias' = (bias - t) / r per channel, in double, rounded once; empty when
/// there is neither a bias nor a nonzero shift (inputs validated, bias empty or affine-sized).
inline vector<float> fold_producer_bias(const vector<float>& bias, const channel_affine& affine) {
  const index channels = affine.channels();
  const bool is_shifted = fold_has_nonzero_shift(affine);
  const bool has_bias = bias.size() != 0;
  vector<float> out;
  if (has_bias || is_shifted) {
    out.resize(channels);
    for (index c = 0; c < channels; ++c) {
      const double b = has_bias ? static_cast<double>(bias[c]) : 0.0;
      const double shift = is_shifted ? affine.shift[c] : 0.0;
      out[c] = static_cast<float>((b - shift) / affine.scale[c]);
    }
  }
  return out;
}

/// gain' = gain / r, bias' = (bias - t) / r, in double, rounded once (inputs validated).
inline norm_affine fold_norm_unchecked(const norm_affine& norm, const channel_affine& affine) {
  const index channels = affine.channels();
  norm_affine out;
  out.gain.resize(channels);
  for (index c = 0; c < channels; ++c) {
    out.gain[c] = static_cast<float>(static_cast<double>(norm.gain[c]) / affine.scale[c]);
  }
  out.bias = fold_producer_bias(norm.bias, affine);
  return out;
}

/// Consumer fold with column j reading channel source[j] (identity when source is null):
/// W'_ij = W_ij r_src(j), bias'_i = bias_i + sum_j W_ij t_src(j) with the original W, the sum in
/// double (inputs validated).
inline linear fold_consumer_unchecked(const linear& layer, const channel_affine& affine,
                                      const index* source) {
  const index rows = layer.weight.rows();
  const index cols = layer.weight.cols();
  const bool is_shifted = fold_has_nonzero_shift(affine);
  const bool has_bias = layer.bias.size() != 0;
  linear out;
  out.weight.resize(rows, cols);
  if (has_bias || is_shifted) {
    out.bias.resize(rows);
  }
  for (index i = 0; i < rows; ++i) {
    double acc = has_bias ? static_cast<double>(layer.bias[i]) : 0.0;
    for (index j = 0; j < cols; ++j) {
      const index c = source != nullptr ? source[j] : j;
      const auto w = static_cast<double>(layer.weight(i, j));
      out.weight(i, j) = static_cast<float>(w * affine.scale[c]);
      if (is_shifted) {
        acc += w * affine.shift[c];
      }
    }
    if (out.bias.size() != 0) {
      out.bias[i] = static_cast<float>(acc);
    }
  }
  return out;
}

/// Producer fold on rows: W'_i. = W_i. / r_i, bias'_i = (bias_i - t_i) / r_i (inputs validated).
inline linear fold_producer_unchecked(const linear& layer, const channel_affine& affine) {
  const index rows = layer.weight.rows();
  const index cols = layer.weight.cols();
  linear out;
  out.weight.resize(rows, cols);
  for (index i = 0; i < rows; ++i) {
    const double r = affine.scale[i];
    for (index j = 0; j < cols; ++j) {
      out.weight(i, j) = static_cast<float>(static_cast<double>(layer.weight(i, j)) / r);
    }
  }
  out.bias = fold_producer_bias(layer.bias, affine);
  return out;
}

/// The norm and every consumer folded with one affine (inputs validated).
inline folded_norm_block fold_norm_block_unchecked(const norm_affine& norm,
                                                   const std::vector<linear>& consumers,
                                                   const channel_affine& affine) {
  folded_norm_block out;
  out.norm = fold_norm_unchecked(norm, affine);
  out.consumers.reserve(consumers.size());
  for (const linear& consumer : consumers) {
    out.consumers.push_back(fold_consumer_unchecked(consumer, affine, nullptr));
  }
  return out;
}

/// "consumers[i]" for messages.
inline std::string fold_consumer_name(std::size_t i) {
  return reparam::detail::concat("consumers[", i, "]");
}

}  // namespace detail

/// gain' = gain / r, bias' = (bias - t) / r. A shift on a bias-less norm creates the bias
/// (RMSNorm with a shift becomes RMSNorm + bias: the caller's runtime must apply it).
/// Preconditions (reparam::error otherwise): gain has affine.channels() entries, bias 0 or that
/// many, all finite; affine valid (r > 0 finite, t finite, sizes). Allocates the result.
inline norm_affine fold_into_norm(const norm_affine& norm, const channel_affine& affine) {
  constexpr const char* function = "scale::fold_into_norm";
  reparam::detail::check(norm.gain.size() >= 1, function, "norm.gain is empty (no channels)");
  detail::check_fold_affine(function, affine, norm.gain.size());
  detail::check_fold_norm(function, norm, affine.channels());
  return detail::fold_norm_unchecked(norm, affine);
}

/// W' = W diag(r), bias' = bias + W t (the original W, accumulated in double). Creates the bias
/// when t != 0 and there was none.
/// Preconditions (reparam::error otherwise): weight non-empty with affine.channels() columns,
/// bias 0 or [rows] entries, all finite; affine valid. Allocates the result.
inline linear fold_into_consumer(const linear& layer, const channel_affine& affine) {
  constexpr const char* function = "scale::fold_into_consumer";
  detail::check_fold_affine(function, affine, layer.weight.cols());
  detail::check_fold_linear(function, "layer", layer, affine.channels());
  return detail::fold_consumer_unchecked(layer, affine, nullptr);
}

/// The whole fold of one producer norm and all its consumers (q, k, v share one norm; w1, w3
/// another). Refuses an empty consumer list: a fold that misses a reader of x is inexact (the
/// list must name every reader; nothing can check that for the caller).
/// Every input is validated before anything is computed; errors name the consumer by its index.
/// Allocates the result.
inline folded_norm_block fold_channel_affine(const norm_affine& norm,
                                             const std::vector<linear>& consumers,
                                             const channel_affine& affine) {
  constexpr const char* function = "scale::fold_channel_affine";
  reparam::detail::check(norm.gain.size() >= 1, function, "norm.gain is empty (no channels)");
  reparam::detail::check(
      !consumers.empty(), function,
      "consumers is empty: every linear that reads the norm's output must be folded");
  detail::check_fold_affine(function, affine, norm.gain.size());
  detail::check_fold_norm(function, norm, affine.channels());
  for (std::size_t i = 0; i < consumers.size(); ++i) {
    detail::check_fold_linear(function, detail::fold_consumer_name(i), consumers[i],
                              affine.channels());
  }
  return detail::fold_norm_block_unchecked(norm, consumers, affine);
}

/// Producer linear -> consumer linear (AWQ's v -> o and up -> down, OmniQuant's fc1 -> fc2):
/// producer rows W1' = diag(1/r) W1, b1' = (b1 - t) / r; consumer W2' = W2 diag(r) over its input
/// columns, b2' = b2 + W2 t. consumer_source[j] (size = consumer in-features) names the producer
/// row that consumer column j reads (empty: identity, which needs equal sizes); with grouped-query
/// attention every query head reads its KV head's rows. Exact when the map between the two is
/// linear and acts per channel (attention P V: rows of P sum to 1, so shifts are exact too;
/// SwiGLU's up projection: t must be 0, refused otherwise when `is_multiplicative_gate`).
/// affine has one entry per producer row. Preconditions (reparam::error otherwise): both layers
/// non-empty and finite with valid bias sizes; affine valid for the producer's rows; consumer
/// in-features equal to the producer rows (no source) or to consumer_source.size(), every
/// source entry in [0, producer rows); no nonzero shift when is_multiplicative_gate.
/// Allocates the result.
struct folded_linear_pair {
  linear producer;
  linear consumer;
};
inline folded_linear_pair fold_linear_pair(const linear& producer, const linear& consumer,
                                           const channel_affine& affine,
                                           const std::vector<index>& consumer_source = {},
                                           bool is_multiplicative_gate = false) {
  constexpr const char* function = "scale::fold_linear_pair";
  const index channels = producer.weight.rows();
  detail::check_fold_linear(function, "producer", producer, -1);
  detail::check_fold_affine(function, affine, channels);
  if (consumer_source.empty()) {
    detail::check_fold_linear(function, "consumer", consumer, channels);
  } else {
    const auto sources = static_cast<index>(consumer_source.size());
    detail::check_fold_linear(function, "consumer", consumer, sources);
    for (std::size_t j = 0; j < consumer_source.size(); ++j) {
      const index c = consumer_source[j];
      reparam::detail::check(c >= 0 && c < channels, function, "consumer_source[", j, "] = ", c,
                             " is outside [0, ", channels, ") (the producer's rows)");
    }
  }
  if (is_multiplicative_gate) {
    for (index c = 0; c < affine.shift.size(); ++c) {
      reparam::detail::check(
          affine.shift[c] == 0.0, function, "affine.shift[", c, "] = ", affine.shift[c],
          " is nonzero, but the producer feeds a multiplicative gate (SwiGLU up): a "
          "shift is not exact there, use t = 0");
    }
  }
  folded_linear_pair out;
  out.producer = detail::fold_producer_unchecked(producer, affine);
  out.consumer = detail::fold_consumer_unchecked(
      consumer, affine, consumer_source.empty() ? nullptr : consumer_source.data());
  return out;
}

/// The gain fold (norm -> consumers with r = gain, t = 0): gain' = 1, W' = W diag(gain). Leaves a
/// pure normalization, the precondition of rotation folds. A zero gain is refused (it would need
/// r = 0); the error names the channel.
/// Unlike channel_affine, a negative gain is accepted (the fold is exact for any r != 0 and no
/// quantizer range is involved). A norm bias stays, divided by the gain (bias' = bias / gain,
/// the r = gain fold); the rotation folds rotate it with the stream. Other preconditions as in
/// fold_channel_affine (non-empty consumer list, sizes, finite values). Allocates the result.
inline folded_norm_block fold_norm_gain(const norm_affine& norm,
                                        const std::vector<linear>& consumers) {
  constexpr const char* function = "scale::fold_norm_gain";
  const index channels = norm.gain.size();
  reparam::detail::check(
      !consumers.empty(), function,
      "consumers is empty: every linear that reads the norm's output must be folded");
  reparam::detail::check(channels >= 1, function, "norm.gain is empty (no channels)");
  detail::check_fold_norm(function, norm, channels);
  for (index c = 0; c < channels; ++c) {
    reparam::detail::check(norm.gain[c] != 0.0f, function, "norm.gain[", c,
                           "] = 0 cannot be folded (it would need r = 0)");
  }
  for (std::size_t i = 0; i < consumers.size(); ++i) {
    detail::check_fold_linear(function, detail::fold_consumer_name(i), consumers[i], channels);
  }
  // The channel-affine fold with r = gain and no shift (the unchecked folds accept r < 0): gain'
  // = gain / gain = 1 exactly, bias' = bias / gain, W' = W diag(gain), consumer biases unchanged.
  channel_affine by_gain;
  by_gain.scale = norm.gain.cast<double>();
  return detail::fold_norm_block_unchecked(norm, consumers, by_gain);
}

}  // namespace reparam::scale

#endif  // REPARAM_SCALE_FOLD_HPP

// SPDX-License-Identifier: Apache-2.0
// Scale-family helpers shared by the examples and their tests: a runner linear layer that
// fake-quantizes its input and computes with fake-quantized weights (and a bias, which shift folds
// create), the calibration pass that captures every linear input and the attention
// probabilities of the bundled model, and the recipes that turn calibration data into a quantized
// model: plain calibrators, the RMSNorm gain fold, SmoothQuant, AWQ, OmniQuant's LET init and
// RepQ-ViT, each applied with reparam::scale and installed into a llama::model. Lives above the
// library.
#ifndef REPARAM_EXAMPLES_COMMON_SCALE_WORKBENCH_HPP
#define REPARAM_EXAMPLES_COMMON_SCALE_WORKBENCH_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <reparam/core/error.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/calibrate.hpp>
#include <reparam/scale/fold.hpp>
#include <reparam/scale/log_quantizer.hpp>
#include <reparam/scale/quantizer.hpp>
#include <reparam/scale/reparameterize.hpp>

#include "runner/forward.hpp"
#include "runner/model.hpp"

namespace examples {

namespace sc = reparam::scale;

/// How a layer treats its input: unquantized, a calibrated static quantizer, or dynamic
/// per-token quantization with the given spec.
using activation_quantizer = std::variant<std::monostate, sc::uniform_quantizer, sc::uniform_spec>;

/// y = Q_a(x) W_hat^T + bias: the input is fake-quantized per `act`, W_hat is already
/// fake-quantized (or not) by the caller. Owns a [max_batch, in] scratch for the quantized input,
/// so forward() allocates nothing but is not thread safe (one model per thread, as the runner).
class fake_quant_linear final : public llama::linear_layer {
 public:
  fake_quant_linear(reparam::matrix<float> weight, reparam::vector<float> bias,
                    activation_quantizer act, reparam::index max_batch)
      : weight_(std::move(weight)),
        bias_(std::move(bias)),
        act_(std::move(act)),
        scratch_(max_batch, weight_.cols()) {}

  reparam::index rows() const override { return weight_.rows(); }
  reparam::index cols() const override { return weight_.cols(); }
  void forward(const reparam::const_matrix_map<float>& x,
               reparam::matrix_map<float> y) const override {
    const reparam::index count = x.rows();
    reparam::detail::check(count <= scratch_.rows(), "examples::fake_quant_linear::forward",
                           "batch ", count, " exceeds max_batch ", scratch_.rows());
    auto in = scratch_.topRows(count);
    in = x;
    if (const auto* q = std::get_if<sc::uniform_quantizer>(&act_)) {
      sc::fake_quantize(in, *q, in);
    } else if (const auto* spec = std::get_if<sc::uniform_spec>(&act_)) {
      sc::fake_quantize_dynamic(in, *spec, in);
    }
    y.noalias() = in * weight_.transpose();
    if (bias_.size() != 0) y.rowwise() += bias_.transpose();
  }

 private:
  reparam::matrix<float> weight_;
  reparam::vector<float> bias_;
  activation_quantizer act_;
  mutable reparam::matrix<float> scratch_;
};

/// What one calibration pass saw: the input of every linear slot, [tokens, in], indexed
/// [layer * llama::input_slot_count + slot], and the attention probabilities above 0 of every
/// head (up to a cap, evenly subsampled by a stride over the calls).
struct calibration_data {
  std::vector<reparam::matrix<float>> inputs;
  std::vector<float> probabilities;

  const reparam::matrix<float>& input(int layer, int slot) const {
    return inputs[static_cast<std::size_t>(layer * llama::input_slot_count + slot)];
  }
};

/// Runs every window (each from an empty KV cache) through `m` as it is and records its linear
/// inputs and attention probabilities. Allocates.
inline calibration_data capture_calibration(const llama::model& m,
                                            const std::vector<std::vector<int>>& windows,
                                            std::size_t max_probabilities = 1u << 20) {
  const llama::model_config& config = m.config();
  const auto slots = static_cast<std::size_t>(config.n_layers * llama::input_slot_count);
  std::vector<std::vector<float>> rows(slots);
  std::vector<reparam::index> widths(slots, 0);
  calibration_data data;
  llama::runner r(m);
  r.set_capture([&](llama::linear_id id, const reparam::const_matrix_map<float>& x) {
    if (!llama::owns_input_slot(id.kind)) return;
    const auto s =
        static_cast<std::size_t>(id.layer * llama::input_slot_count + llama::input_slot(id.kind));
    widths[s] = x.cols();
    for (reparam::index t = 0; t < x.rows(); ++t) {
      rows[s].insert(rows[s].end(), x.row(t).data(), x.row(t).data() + x.cols());
    }
  });
  std::size_t seen = 0;
  r.set_probability_hook([&](int, int, reparam::matrix_map<float> p) {
    // Keep every 7th positive probability (odd stride: no alignment with head or row sizes).
    for (reparam::index i = 0; i < p.rows(); ++i) {
      for (reparam::index j = 0; j < p.cols(); ++j) {
        if (p(i, j) > 0.0f && (seen++ % 7) == 0 && data.probabilities.size() < max_probabilities) {
          data.probabilities.push_back(p(i, j));
        }
      }
    }
  });
  for (const std::vector<int>& window : windows) {
    r.reset();
    r.prefill(window, /*all_logits=*/false);
  }
  for (std::size_t s = 0; s < slots; ++s) {
    const reparam::index width = widths[s];
    const auto tokens = width == 0 ? 0 : static_cast<reparam::index>(rows[s].size()) / width;
    data.inputs.emplace_back(reparam::row_major_map(rows[s].data(), tokens, width));
  }
  return data;
}

// --- recipes -------------------------------------------------------------------------------------

/// The methods of the accuracy table. Every one quantizes all 35 linears: weights per output row
/// (asymmetric), activations (the input of every linear) per tensor with a static calibrated
/// quantizer unless said otherwise.
enum class scale_method {
  fp32,                ///< no quantization
  rtn,                 ///< min-max weights and activations
  rtn_percentile_act,  ///< min-max weights, percentile activations (the folds' baseline)
  dynamic_per_token,   ///< min-max weights, activations per token at run time (not static)
  percentile,          ///< RepQ-ViT's percentile search for weights and activations
  mse,                 ///< GPTQ's MSE grid search for weights, percentile activations
  gain_fold,           ///< RMSNorm gains folded into the consumers, then min-max
  smoothquant,         ///< SmoothQuant alpha 0.5 at both norms, then min-max
  awq,                 ///< AWQ scale search at both norms and up -> down, output-aware clip
  omniquant_init,      ///< OmniQuant LET init (shift + scale) at both norms and v -> o
  channelwise,         ///< per-channel activation quantizers at the norms (not layer-wise)
  repq_vit,            ///< RepQ-ViT: channel-wise -> layer-wise with rounded target zero point
  repq_vit_official,   ///< the same with the official non-rounded mean zero point
};

inline const char* method_name(scale_method m) {
  switch (m) {
    case scale_method::fp32:
      return "fp32";
    case scale_method::rtn:
      return "RTN min-max";
    case scale_method::rtn_percentile_act:
      return "RTN, percentile act";
    case scale_method::dynamic_per_token:
      return "RTN, per-token dynamic act";
    case scale_method::percentile:
      return "percentile (RepQ-ViT init)";
    case scale_method::mse:
      return "MSE search (GPTQ grid)";
    case scale_method::gain_fold:
      return "RMSNorm gain fold";
    case scale_method::smoothquant:
      return "SmoothQuant a=0.5";
    case scale_method::awq:
      return "AWQ scales + clip";
    case scale_method::omniquant_init:
      return "OmniQuant LET init";
    case scale_method::channelwise:
      return "per-channel act (not foldable)";
    case scale_method::repq_vit:
      return "RepQ-ViT (rounded z)";
    case scale_method::repq_vit_official:
      return "RepQ-ViT (official z)";
  }
  return "?";
}

/// Whether the method folds a channel affine into the norms (the others leave them alone).
inline bool is_folding(scale_method m) {
  return m == scale_method::gain_fold || m == scale_method::smoothquant || m == scale_method::awq ||
         m == scale_method::omniquant_init || m == scale_method::repq_vit ||
         m == scale_method::repq_vit_official;
}

struct quant_scheme {
  int weight_bits = 8;  ///< 0: float weights
  int act_bits = 8;     ///< 0: float activations
};

namespace detail {

inline sc::uniform_spec spec(int bits, sc::granularity axis) {
  sc::uniform_spec s;
  s.bits = bits;
  s.is_symmetric = false;
  s.axis = axis;
  return s;
}

/// Per-channel statistics of x [tokens, channels].
inline reparam::vector<float> column_absmax(const reparam::matrix<float>& x) {
  return x.cwiseAbs().colwise().maxCoeff().transpose();
}

/// x' = (x - t) / r per column, in double then rounded: the activations after a fold.
inline reparam::matrix<float> apply_affine(const reparam::matrix<float>& x,
                                           const sc::channel_affine& a) {
  reparam::matrix<float> out(x.rows(), x.cols());
  for (reparam::index t = 0; t < x.rows(); ++t) {
    for (reparam::index c = 0; c < x.cols(); ++c) {
      const double shift = a.has_shift() ? a.shift(c) : 0.0;
      out(t, c) = static_cast<float>((static_cast<double>(x(t, c)) - shift) / a.scale(c));
    }
  }
  return out;
}

/// consumer_source of the v -> o fold: attention-output column c (query head c / head_size) reads
/// value channel (kv head of that query head) * head_size + c % head_size.
inline std::vector<reparam::index> value_sources(const llama::model_config& config) {
  const reparam::index head_size = config.head_size();
  const reparam::index group = config.n_heads / config.n_kv_heads;
  std::vector<reparam::index> source(static_cast<std::size_t>(config.dim));
  for (reparam::index c = 0; c < config.dim; ++c) {
    source[static_cast<std::size_t>(c)] = (c / head_size / group) * head_size + c % head_size;
  }
  return source;
}

}  // namespace detail

/// The weight quantizer of `method` for w [out, in] with inputs x [tokens, in] (after any fold).
inline sc::uniform_quantizer weight_quantizer(scale_method method, int bits,
                                              const reparam::matrix<float>& w,
                                              const reparam::matrix<float>& x) {
  const sc::uniform_spec s = detail::spec(bits, sc::granularity::per_row);
  switch (method) {
    case scale_method::percentile:
    case scale_method::channelwise:
    case scale_method::repq_vit:
    case scale_method::repq_vit_official:
      return sc::calibrate_percentile(w, s);
    case scale_method::mse:
      return sc::calibrate_mse(w, s);
    case scale_method::awq:
      return sc::calibrate_output_clip(w, x, s);
    default:
      return sc::calibrate_minmax(w, s);
  }
}

/// The static per-tensor activation quantizer of `method` for inputs x: min-max for plain RTN,
/// RepQ-ViT's percentile search for every other method, so the fold rows differ from the
/// "RTN, percentile act" row by their fold alone.
inline sc::uniform_quantizer activation_quantizer_for(scale_method method, int bits,
                                                      const reparam::matrix<float>& x) {
  const sc::uniform_spec s = detail::spec(bits, sc::granularity::per_tensor);
  return method == scale_method::rtn ? sc::calibrate_minmax(x, s) : sc::calibrate_percentile(x, s);
}

/// What a recipe did, for the tables.
struct recipe_report {
  int folds = 0;                ///< norm groups folded
  int pair_folds = 0;           ///< linear -> linear folds (AWQ up -> down, OmniQuant v -> o)
  bool has_norm_bias = false;   ///< a shift fold created RMSNorm biases
  double awq_mean_ratio = 0.0;  ///< AWQ: mean chosen alpha over groups
};

/// Quantizes `m` (a freshly loaded fp32 model, edited in place) with `method` at `scheme`, from
/// calibration data captured on that fp32 model. Folds go into the RMSNorm gains (and biases,
/// created when a fold shifts) and into the consumer weights; every linear is replaced by a
/// fake_quant_linear. With scheme bits 0 the fold is applied but nothing is quantized, which must
/// leave the model's function unchanged (the examples check it). Allocates.
inline recipe_report apply_scale_recipe(llama::model& m, const calibration_data& calib,
                                        scale_method method, quant_scheme scheme,
                                        reparam::index max_batch) {
  const llama::model_config& config = m.config();
  recipe_report report;
  reparam::matrix<float> att_bias = reparam::matrix<float>::Zero(config.n_layers, config.dim);
  reparam::matrix<float> ffn_bias = reparam::matrix<float>::Zero(config.n_layers, config.dim);
  for (int layer = 0; layer < config.n_layers; ++layer) {
    // Per input slot: the (possibly folded) calibration inputs and activation quantizer.
    std::vector<reparam::matrix<float>> x(llama::input_slot_count);
    std::vector<activation_quantizer> act(llama::input_slot_count);
    std::vector<sc::linear> linears(llama::linear_kind_count);
    for (const llama::linear_kind kind : llama::all_linear_kinds) {
      linears[static_cast<std::size_t>(kind)].weight = m.dense_weight({layer, kind});
    }
    for (int slot = 0; slot < llama::input_slot_count; ++slot) {
      x[static_cast<std::size_t>(slot)] = calib.input(layer, slot);
    }
    // The two norm groups: rms_att -> {wq, wk, wv} (slot 0), rms_ffn -> {w1, w3} (slot 2).
    for (const int slot : {0, 2}) {
      const bool is_att = slot == 0;
      const std::vector<llama::linear_kind> kinds =
          is_att ? std::vector<llama::linear_kind>{llama::linear_kind::wq, llama::linear_kind::wk,
                                                   llama::linear_kind::wv}
                 : std::vector<llama::linear_kind>{llama::linear_kind::w1, llama::linear_kind::w3};
      auto& xs = x[static_cast<std::size_t>(slot)];
      std::vector<sc::linear> consumers;
      std::vector<const reparam::matrix<float>*> weights;
      for (const auto kind : kinds) {
        consumers.push_back(linears[static_cast<std::size_t>(kind)]);
        weights.push_back(&linears[static_cast<std::size_t>(kind)].weight);
      }
      sc::norm_affine norm;
      norm.gain = (is_att ? m.rms_att() : m.rms_ffn()).row(layer).transpose();

      std::optional<sc::channel_affine> affine;
      std::optional<sc::uniform_quantizer> folded_act;  // RepQ-ViT's layer-wise quantizer
      switch (method) {
        case scale_method::gain_fold: {
          sc::channel_affine a;
          a.scale = norm.gain.cast<double>();
          affine = a;
          break;
        }
        case scale_method::smoothquant:
          affine = sc::smoothquant_affine(detail::column_absmax(xs), weights, 0.5);
          break;
        case scale_method::omniquant_init:
          affine = sc::omniquant_affine(xs.colwise().minCoeff().transpose(),
                                        xs.colwise().maxCoeff().transpose(), weights, 0.5);
          break;
        case scale_method::awq: {
          const int bits = scheme.weight_bits > 0 ? scheme.weight_bits : 8;
          const auto quantize_weight = [bits](const reparam::matrix<float>& w) {
            return sc::make_fake_quantized(
                w, sc::calibrate_minmax(w, detail::spec(bits, sc::granularity::per_row)));
          };
          const reparam::vector<float> mean_abs = xs.cwiseAbs().colwise().mean().transpose();
          const sc::awq_result found = sc::awq_search(mean_abs, [&](const sc::channel_affine& a) {
            return sc::awq_consumer_loss(xs, weights, a, quantize_weight);
          });
          affine = found.affine;
          report.awq_mean_ratio += found.ratio / (2.0 * config.n_layers);
          break;
        }
        case scale_method::repq_vit:
        case scale_method::repq_vit_official: {
          const int bits = scheme.act_bits > 0 ? scheme.act_bits : 8;
          const sc::uniform_quantizer channel =
              sc::calibrate_percentile(xs, detail::spec(bits, sc::granularity::per_column));
          const sc::repq_result r =
              sc::repq_vit_reparameterize(channel, method == scale_method::repq_vit);
          affine = r.affine;
          folded_act = r.layer_quantizer;
          break;
        }
        default:
          break;
      }
      if (affine) {
        const sc::folded_norm_block folded = sc::fold_channel_affine(norm, consumers, *affine);
        auto gains = is_att ? m.mutable_rms_att() : m.mutable_rms_ffn();
        gains.row(layer) = folded.norm.gain.transpose();
        if (folded.norm.bias.size() != 0) {
          (is_att ? att_bias : ffn_bias).row(layer) = folded.norm.bias.transpose();
          report.has_norm_bias = report.has_norm_bias || !folded.norm.bias.isZero(0.0f);
        }
        for (std::size_t i = 0; i < kinds.size(); ++i) {
          linears[static_cast<std::size_t>(kinds[i])] = folded.consumers[i];
        }
        xs = detail::apply_affine(xs, *affine);
        ++report.folds;
      }
      if (scheme.act_bits > 0) {
        if (folded_act) {
          act[static_cast<std::size_t>(slot)] = *folded_act;
        } else if (method == scale_method::channelwise) {
          act[static_cast<std::size_t>(slot)] = sc::calibrate_percentile(
              xs, detail::spec(scheme.act_bits, sc::granularity::per_column));
        }
      }
    }
    // Linear -> linear folds (AWQ: up -> down through the SwiGLU gate, scale only; OmniQuant:
    // v -> o through attention, scale and shift, with grouped-query sources).
    if (method == scale_method::awq) {
      auto& xs = x[3];
      const int bits = scheme.weight_bits > 0 ? scheme.weight_bits : 8;
      const auto quantize_weight = [bits](const reparam::matrix<float>& w) {
        return sc::make_fake_quantized(
            w, sc::calibrate_minmax(w, detail::spec(bits, sc::granularity::per_row)));
      };
      auto& up = linears[static_cast<std::size_t>(llama::linear_kind::w3)];
      auto& down = linears[static_cast<std::size_t>(llama::linear_kind::w2)];
      const std::vector<const reparam::matrix<float>*> weights = {&down.weight};
      const reparam::vector<float> mean_abs = xs.cwiseAbs().colwise().mean().transpose();
      const sc::awq_result found = sc::awq_search(mean_abs, [&](const sc::channel_affine& a) {
        return sc::awq_consumer_loss(xs, weights, a, quantize_weight);
      });
      sc::folded_linear_pair pair =
          sc::fold_linear_pair(up, down, found.affine, {}, /*is_multiplicative_gate=*/true);
      up = std::move(pair.producer);
      down = std::move(pair.consumer);
      xs = detail::apply_affine(xs, found.affine);
      ++report.pair_folds;
    }
    if (method == scale_method::omniquant_init) {
      auto& xs = x[1];
      const std::vector<reparam::index> source = detail::value_sources(config);
      auto& value = linears[static_cast<std::size_t>(llama::linear_kind::wv)];
      auto& out = linears[static_cast<std::size_t>(llama::linear_kind::wo)];
      const reparam::index kv_dim = value.weight.rows();
      // Per value channel: the range over every output column that reads it, and a weight
      // matrix whose column k holds every wo column reading channel k (for max |W|).
      reparam::vector<float> lo = reparam::vector<float>::Constant(kv_dim, 0.0f);
      reparam::vector<float> hi = reparam::vector<float>::Constant(kv_dim, 0.0f);
      std::vector<reparam::index> seen(static_cast<std::size_t>(kv_dim), 0);
      const reparam::index group = static_cast<reparam::index>(source.size()) / kv_dim;
      reparam::matrix<float> readers(out.weight.rows() * group, kv_dim);
      for (reparam::index c = 0; c < static_cast<reparam::index>(source.size()); ++c) {
        const reparam::index k = source[static_cast<std::size_t>(c)];
        auto& n = seen[static_cast<std::size_t>(k)];
        const float col_lo = xs.col(c).minCoeff();
        const float col_hi = xs.col(c).maxCoeff();
        lo(k) = n == 0 ? col_lo : std::min(lo(k), col_lo);
        hi(k) = n == 0 ? col_hi : std::max(hi(k), col_hi);
        readers.block(n * out.weight.rows(), k, out.weight.rows(), 1) = out.weight.col(c);
        ++n;
      }
      const sc::channel_affine a = sc::omniquant_affine(lo, hi, {&readers}, 0.5);
      sc::folded_linear_pair pair = sc::fold_linear_pair(value, out, a, source);
      value = std::move(pair.producer);
      out = std::move(pair.consumer);
      sc::channel_affine expanded;  // the same affine per column of the attention output
      expanded.scale.resize(static_cast<reparam::index>(source.size()));
      expanded.shift.resize(expanded.scale.size());
      for (reparam::index c = 0; c < expanded.scale.size(); ++c) {
        expanded.scale(c) = a.scale(source[static_cast<std::size_t>(c)]);
        expanded.shift(c) = a.has_shift() ? a.shift(source[static_cast<std::size_t>(c)]) : 0.0;
      }
      xs = detail::apply_affine(xs, expanded);
      ++report.pair_folds;
    }
    // Slots without a dedicated quantizer get the method's per-tensor (or dynamic) one.
    for (int slot = 0; slot < llama::input_slot_count; ++slot) {
      auto& a = act[static_cast<std::size_t>(slot)];
      if (scheme.act_bits == 0 || method == scale_method::fp32 ||
          !std::holds_alternative<std::monostate>(a)) {
        continue;
      }
      if (method == scale_method::dynamic_per_token) {
        a = detail::spec(scheme.act_bits, sc::granularity::per_row);
      } else {
        a = activation_quantizer_for(method, scheme.act_bits, x[static_cast<std::size_t>(slot)]);
      }
    }
    for (const llama::linear_kind kind : llama::all_linear_kinds) {
      const int slot = llama::input_slot(kind);
      sc::linear& lin = linears[static_cast<std::size_t>(kind)];
      reparam::matrix<float> w = lin.weight;
      if (scheme.weight_bits > 0 && method != scale_method::fp32) {
        const sc::uniform_quantizer q =
            weight_quantizer(method, scheme.weight_bits, w, x[static_cast<std::size_t>(slot)]);
        sc::fake_quantize(w, q, w);
      }
      m.set_linear({layer, kind},
                   std::make_unique<fake_quant_linear>(
                       std::move(w), lin.bias, act[static_cast<std::size_t>(slot)], max_batch));
    }
  }
  if (report.has_norm_bias) m.set_norm_biases(std::move(att_bias), std::move(ffn_bias));
  return report;
}

// --- attention probabilities ---------------------------------------------------------------------

/// The operands of one attention head's product P V over `tokens` fed from an empty KV cache in
/// one prefill: the probabilities [T, T] (causal, zeros above the diagonal) and the head's values
/// [T, head_size] (its KV head's columns of x wv^T, with the model's dense wv).
struct attention_operands {
  reparam::matrix<float> probabilities;
  reparam::matrix<float> values;
};

inline attention_operands capture_attention(const llama::model& m, const std::vector<int>& tokens,
                                            int layer, int head) {
  const llama::model_config& config = m.config();
  const auto count = static_cast<reparam::index>(tokens.size());
  const reparam::index head_size = config.head_size();
  const reparam::index kv_head = head / (config.n_heads / config.n_kv_heads);
  attention_operands out;
  out.probabilities = reparam::matrix<float>::Zero(count, count);
  llama::runner r(m, count);
  reparam::index next_row = 0;
  r.set_probability_hook([&](int l, int h, reparam::matrix_map<float> block) {
    if (l == layer && h == head) {
      out.probabilities.block(next_row, 0, block.rows(), block.cols()) = block;
      next_row += block.rows();
    }
  });
  r.set_capture([&](llama::linear_id id, const reparam::const_matrix_map<float>& x) {
    if (id.layer == layer && id.kind == llama::linear_kind::wv) {
      out.values = (x * m.dense_weight(id).transpose()).middleCols(kv_head * head_size, head_size);
    }
  });
  r.prefill(tokens, /*all_logits=*/false);
  reparam::detail::check(next_row == count, "examples::capture_attention", "captured ", next_row,
                         " query rows of ", count);
  return out;
}

/// A quantizer for the attention probabilities: none, uniform (per tensor on [0, 1] data), or
/// logarithmic.
using probability_quantizer =
    std::variant<std::monostate, sc::uniform_quantizer, sc::log_quantizer>;

/// Installs `q` as the runner's probability hook (fake quantization in place).
inline void set_probability_quantizer(llama::runner& r, const probability_quantizer& q) {
  if (std::holds_alternative<std::monostate>(q)) {
    r.set_probability_hook(nullptr);
    return;
  }
  r.set_probability_hook([q](int, int, reparam::matrix_map<float> p) {
    if (const auto* u = std::get_if<sc::uniform_quantizer>(&q)) {
      sc::fake_quantize(p, *u, p);
    } else if (const auto* l = std::get_if<sc::log_quantizer>(&q)) {
      sc::fake_quantize(p, *l, p);
    }
  });
}

}  // namespace examples

#endif  // REPARAM_EXAMPLES_COMMON_SCALE_WORKBENCH_HPP

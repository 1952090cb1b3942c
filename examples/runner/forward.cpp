// SPDX-License-Identifier: Apache-2.0
// The forward pass: one code path for prefill (T tokens) and decode (T = 1). Linear layers and the
// attention products are Eigen GEMMs on preallocated buffers; nothing is allocated per call.
#include "runner/forward.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include <reparam/core/error.hpp>

namespace llama {

using reparam::index;

namespace {

// Query rows per attention block in prefill: small enough that little of the causal mask is
// computed, large enough for GEMM efficiency.
constexpr index attention_block = 64;

// The top `rows` rows of a work buffer, as a linear layer's output y ...
reparam::matrix_map<float> output_rows(reparam::matrix<float>& m, index rows) {
  return reparam::row_major_map(m.data(), rows, m.cols());
}

// ... or as its input x.
reparam::const_matrix_map<float> input_rows(const reparam::matrix<float>& m, index rows) {
  return reparam::row_major_map(static_cast<const float*>(m.data()), rows, m.cols());
}

// out.row(t) = x.row(t) / sqrt(mean(x.row(t)^2) + eps) * gain, for t < rows.
template <class Gain>
void rms_norm(const reparam::matrix<float>& x, const Gain& gain, index rows,
              reparam::matrix<float>& out) {
  const auto width = static_cast<float>(x.cols());
  for (index t = 0; t < rows; ++t) {
    const float scale = 1.0f / std::sqrt(x.row(t).squaredNorm() / width + rms_norm_eps);
    out.row(t) = (x.row(t) * scale).cwiseProduct(gain);
  }
}

// The same plus the optional per-layer bias (row `layer` of `bias`, or nothing if it is empty).
template <class Gain>
void rms_norm(const reparam::matrix<float>& x, const Gain& gain, const reparam::matrix<float>& bias,
              int layer, index rows, reparam::matrix<float>& out) {
  rms_norm(x, gain, rows, out);
  if (bias.size() != 0) out.topRows(rows).rowwise() += bias.row(layer);
}

}  // namespace

runner::runner(const model& m, index max_batch)
    : model_(&m), config_(m.config()), max_batch_(max_batch == 0 ? m.config().seq_len : max_batch) {
  reparam::detail::check(max_batch_ >= 1 && max_batch_ <= config_.seq_len, "llama::runner",
                         "max_batch ", max_batch, " not in [1, seq_len ", config_.seq_len, "]");
  const index head_size = config_.head_size();
  const index pairs = head_size / 2;
  // Angles pos * theta^(-2j / head_size) in double, so long positions do not lose precision
  // (run.c uses float; the difference is far below the logit tolerance at seq_len 512).
  rope_cos_.resize(config_.seq_len, pairs);
  rope_sin_.resize(config_.seq_len, pairs);
  for (index pos = 0; pos < config_.seq_len; ++pos) {
    for (index j = 0; j < pairs; ++j) {
      const double frequency =
          std::pow(rope_theta, -2.0 * static_cast<double>(j) / static_cast<double>(head_size));
      const double angle = static_cast<double>(pos) * frequency;
      rope_cos_(pos, j) = static_cast<float>(std::cos(angle));
      rope_sin_(pos, j) = static_cast<float>(std::sin(angle));
    }
  }
  const auto layers = static_cast<std::size_t>(config_.n_layers);
  key_cache_.assign(layers, reparam::matrix<float>::Zero(config_.kv_dim(), config_.seq_len));
  value_cache_.assign(layers, reparam::matrix<float>::Zero(config_.seq_len, config_.kv_dim()));
  x_.setZero(max_batch_, config_.dim);
  xb_.setZero(max_batch_, config_.dim);
  xb2_.setZero(max_batch_, config_.dim);
  q_.setZero(max_batch_, config_.dim);
  k_.setZero(max_batch_, config_.kv_dim());
  v_.setZero(max_batch_, config_.kv_dim());
  hb_.setZero(max_batch_, config_.hidden_dim);
  hb2_.setZero(max_batch_, config_.hidden_dim);
  scores_.setZero(std::min(max_batch_, attention_block), config_.seq_len);
  logits_.setZero(max_batch_, config_.vocab_size);
}

void runner::apply_linear(int layer, linear_kind kind, const reparam::const_matrix_map<float>& x,
                          reparam::matrix_map<float> y) const {
  const linear_id id{layer, kind};
  if (capture_) capture_(id, x);
  model_->linear(id).forward(x, y);
}

void runner::attention(int layer, index count) {
  const index head_size = config_.head_size();
  const index group = config_.n_heads / config_.n_kv_heads;  // query heads per KV head
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_size));
  const auto& keys = key_cache_[static_cast<std::size_t>(layer)];
  const auto& values = value_cache_[static_cast<std::size_t>(layer)];
  // Queries go in blocks of attention_block rows, each against only the keys its last row can
  // see, so a long prefill skips most of the masked upper triangle (about half the work).
  for (index first = 0; first < count; first += attention_block) {
    const index rows = std::min(attention_block, count - first);
    const index context = position_ + first + rows;  // keys visible to the block's last query
    const auto q = reparam::row_major_map(static_cast<const float*>(q_.data()) + first * q_.cols(),
                                          rows, q_.cols());
    auto out = reparam::row_major_map(xb_.data() + first * xb_.cols(), rows, xb_.cols());
    auto scores = reparam::row_major_map(scores_.data(), rows, context, scores_.cols());
    for (index h = 0; h < config_.n_heads; ++h) {
      const index kv = (h / group) * head_size;
      scores.noalias() =
          q.middleCols(h * head_size, head_size) * keys.block(kv, 0, head_size, context);
      // Causal softmax: query t (at position position_ + first + t) sees keys up to itself.
      for (index t = 0; t < rows; ++t) {
        const index visible = position_ + first + t + 1;
        auto row = scores.row(t);
        auto seen = row.head(visible);
        seen *= scale;
        const float max_score = seen.maxCoeff();
        seen = (seen.array() - max_score).exp();
        seen /= seen.sum();
        row.tail(context - visible).setZero();
      }
      if (probability_hook_) probability_hook_(layer, static_cast<int>(h), scores);
      out.middleCols(h * head_size, head_size).noalias() =
          scores * values.block(0, kv, context, head_size);
    }
  }
}

reparam::const_matrix_map<float> runner::prefill(const int* tokens, index count, bool all_logits) {
  constexpr const char* function = "llama::runner::prefill";
  check_batch(function, count);
  for (index t = 0; t < count; ++t) {
    reparam::detail::check(tokens[t] >= 0 && tokens[t] < config_.vocab_size, function, "tokens[", t,
                           "] = ", tokens[t], " not in [0, vocab_size ", config_.vocab_size, ")");
  }
  for (index t = 0; t < count; ++t) x_.row(t) = model_->token_embedding().row(tokens[t]);
  return run_layers(count, all_logits);
}

reparam::const_matrix_map<float> runner::prefill_embeddings(
    const reparam::const_matrix_map<float>& embeddings, bool all_logits) {
  constexpr const char* function = "llama::runner::prefill_embeddings";
  const index count = embeddings.rows();
  reparam::detail::check(embeddings.cols() == config_.dim, function, "embeddings have ",
                         embeddings.cols(), " columns; the model's dim is ", config_.dim);
  check_batch(function, count);
  for (index t = 0; t < count; ++t) {
    for (index c = 0; c < config_.dim; ++c) {
      reparam::detail::check(std::isfinite(embeddings(t, c)), function, "embeddings(", t, ", ", c,
                             ") is ", embeddings(t, c));
    }
  }
  x_.topRows(count) = embeddings;
  return run_layers(count, all_logits);
}

reparam::const_vector_map<float> runner::step_embedding(const reparam::const_vector_map<float>& x) {
  const auto logits =
      prefill_embeddings(reparam::row_major_map(x.data(), 1, static_cast<index>(x.size())), false);
  return reparam::const_vector_map<float>(logits.data(), logits.cols());
}

void runner::check_batch(const char* function, index count) const {
  reparam::detail::check(count >= 1 && count <= max_batch_, function, "count ", count,
                         " not in [1, max_batch ", max_batch_, "]");
  reparam::detail::check(position_ + count <= config_.seq_len, function, "position ", position_,
                         " + count ", count, " exceeds seq_len ", config_.seq_len,
                         "; call reset()");
}

void runner::residual(int layer, residual_point point, reparam::matrix<float>& x, index count) {
  if (residual_hook_) {
    residual_hook_(layer, point, output_rows(x, count));
  }
}

reparam::const_matrix_map<float> runner::run_layers(index count, bool all_logits) {
  const model& m = *model_;
  const index head_size = config_.head_size();
  const index kv_dim = config_.kv_dim();

  for (int layer = 0; layer < config_.n_layers; ++layer) {
    residual(layer, residual_point::block_input, x_, count);
    // Attention block.
    rms_norm(x_, m.rms_att().row(layer), m.rms_att_bias(), layer, count, xb_);
    const auto normed = input_rows(xb_, count);
    apply_linear(layer, linear_kind::wq, normed, output_rows(q_, count));
    apply_linear(layer, linear_kind::wk, normed, output_rows(k_, count));
    apply_linear(layer, linear_kind::wv, normed, output_rows(v_, count));
    // RoPE on adjacent pairs (2j, 2j + 1) of every head; keys have kv_dim columns.
    for (index t = 0; t < count; ++t) {
      const index pos = position_ + t;
      for (index i = 0; i < config_.dim; i += 2) {
        const index pair = (i % head_size) / 2;
        const float c = rope_cos_(pos, pair);
        const float s = rope_sin_(pos, pair);
        const float q0 = q_(t, i), q1 = q_(t, i + 1);
        q_(t, i) = q0 * c - q1 * s;
        q_(t, i + 1) = q0 * s + q1 * c;
        if (i < kv_dim) {
          const float k0 = k_(t, i), k1 = k_(t, i + 1);
          k_(t, i) = k0 * c - k1 * s;
          k_(t, i + 1) = k0 * s + k1 * c;
        }
      }
    }
    auto& keys = key_cache_[static_cast<std::size_t>(layer)];
    auto& values = value_cache_[static_cast<std::size_t>(layer)];
    keys.middleCols(position_, count) = k_.topRows(count).transpose();
    values.middleRows(position_, count) = v_.topRows(count);
    attention(layer, count);  // writes xb_
    apply_linear(layer, linear_kind::wo, input_rows(xb_, count), output_rows(xb2_, count));
    x_.topRows(count) += xb2_.topRows(count);
    residual(layer, residual_point::after_attention, x_, count);

    // SwiGLU feed-forward block.
    rms_norm(x_, m.rms_ffn().row(layer), m.rms_ffn_bias(), layer, count, xb_);
    const auto ffn_in = input_rows(xb_, count);
    apply_linear(layer, linear_kind::w1, ffn_in, output_rows(hb_, count));
    apply_linear(layer, linear_kind::w3, ffn_in, output_rows(hb2_, count));
    auto gate = hb_.topRows(count).array();
    gate = gate / (1.0f + (-gate).exp()) * hb2_.topRows(count).array();
    apply_linear(layer, linear_kind::w2, input_rows(hb_, count), output_rows(xb2_, count));
    x_.topRows(count) += xb2_.topRows(count);
  }

  residual(config_.n_layers, residual_point::final_input, x_, count);
  rms_norm(x_, m.rms_final().transpose(), count, xb_);
  residual(config_.n_layers, residual_point::classifier_input, xb_, count);
  position_ += count;
  // The classifier is tied to the embedding: logits = x E^T.
  const index first = all_logits ? 0 : count - 1;
  const index rows = count - first;
  output_rows(logits_, rows).noalias() =
      xb_.middleRows(first, rows) * m.token_embedding().transpose();
  return input_rows(logits_, rows);
}

reparam::const_matrix_map<float> runner::prefill(const std::vector<int>& tokens, bool all_logits) {
  return prefill(tokens.data(), static_cast<index>(tokens.size()), all_logits);
}

reparam::const_vector_map<float> runner::step(int token) {
  const auto logits = prefill(&token, 1, false);
  return reparam::const_vector_map<float>(logits.data(), logits.cols());
}

}  // namespace llama

// SPDX-License-Identifier: Apache-2.0
// The float32 Llama-2 forward pass over a llama::model: a batched prefill over T tokens (linear
// layers see [T, in] row-major blocks, i.e. GEMMs) and a single-token decode step, both with a
// KV cache, plus a hook that captures every linear layer's input for calibration.
#ifndef REPARAM_EXAMPLES_RUNNER_FORWARD_HPP
#define REPARAM_EXAMPLES_RUNNER_FORWARD_HPP

#include <functional>
#include <vector>

#include <reparam/core/views.hpp>

#include "runner/model.hpp"

namespace llama {

/// Receives the input x [T, in] of linear (layer, kind) for each forward call (T = tokens in the
/// call). wq, wk and wv share one input and each get a call. The view dies with the call.
using capture_fn = std::function<void(linear_id id, const reparam::const_matrix_map<float>& x)>;

/// Receives the attention probabilities of (layer, head) for a block of queries after the causal
/// softmax, [queries, keys] (masked keys hold 0), and may rewrite them in place (e.g. quantize
/// them) before they multiply the values. The view dies with the call.
using probability_fn =
    std::function<void(int layer, int head, reparam::matrix_map<float> probabilities)>;

/// Points of the residual stream a residual hook sees: the input of block `layer`, the stream
/// after block `layer`'s attention write, the final norm's input (layer = n_layers) and the
/// classifier's input, i.e. the final norm's output (layer = n_layers).
enum class residual_point { block_input, after_attention, final_input, classifier_input };

/// Receives the residual stream x [T, dim] at `point` (T = tokens in the call) and may rewrite it
/// in place (e.g. project a direction out at run time). The view dies with the call.
using residual_fn =
    std::function<void(int layer, residual_point point, reparam::matrix_map<float> x)>;

/// Forward state for one sequence: the KV cache and every work buffer, allocated once in the
/// constructor. Not thread safe; use one runner per thread (they may share a const model).
///
/// Semantics (llama2.c run.c): pre-norm blocks with RMSNorm (eps 1e-5), RoPE on adjacent pairs
/// (theta 10000), causal grouped-query attention scaled by 1/sqrt(head_size), SwiGLU FFN
/// w2(silu(w1 x) * w3 x), final RMSNorm and logits = token_embedding * x.
class runner {
 public:
  /// Binds `m`, which must outlive the runner; linear layers are looked up on every call, so
  /// set_linear takes effect immediately. `max_batch` bounds the tokens per prefill call
  /// (0: the model's seq_len). Allocates all buffers.
  explicit runner(const model& m, reparam::index max_batch = 0);

  const model& bound_model() const { return *model_; }
  reparam::index max_batch() const { return max_batch_; }

  /// Empties the KV cache: the next token goes to position 0.
  void reset() { position_ = 0; }
  /// Tokens in the KV cache (the position of the next token).
  reparam::index position() const { return position_; }

  /// Feeds tokens[0..count) at positions position().. in one batch. Returns the logits
  /// [count, vocab] of every position, or [1, vocab] of the last one if !all_logits. The view is
  /// valid until the next call. Throws reparam::error if count is not in [1, max_batch()], the
  /// cache would overflow seq_len, or a token is out of range.
  reparam::const_matrix_map<float> prefill(const int* tokens, reparam::index count,
                                           bool all_logits = true);
  reparam::const_matrix_map<float> prefill(const std::vector<int>& tokens, bool all_logits = true);

  /// Feeds one token (decode step) and returns its logits [vocab]. Does not allocate with the
  /// dense default layers (and an allocation-free capture hook).
  reparam::const_vector_map<float> step(int token);

  /// Feeds input embeddings [count, dim] instead of tokens (soft tokens: mixtures of embedding
  /// rows), at positions position().. in one batch; otherwise as prefill. Throws on a width other
  /// than dim, non-finite entries, or count outside [1, max_batch()] / past seq_len.
  reparam::const_matrix_map<float> prefill_embeddings(
      const reparam::const_matrix_map<float>& embeddings, bool all_logits = true);
  /// One decode step on an input embedding [dim]; returns its logits [vocab].
  reparam::const_vector_map<float> step_embedding(const reparam::const_vector_map<float>& x);

  /// Installs (or, with an empty function, removes) the capture hook. When unset it costs one
  /// branch per linear call.
  void set_capture(capture_fn fn) { capture_ = std::move(fn); }

  /// Installs (or removes) the attention-probability hook; one branch per head block when unset.
  void set_probability_hook(probability_fn fn) { probability_hook_ = std::move(fn); }
  /// Installs (or removes) the residual-stream hook; one branch per residual point when unset.
  void set_residual_hook(residual_fn fn) { residual_hook_ = std::move(fn); }

 private:
  void apply_linear(int layer, linear_kind kind, const reparam::const_matrix_map<float>& x,
                    reparam::matrix_map<float> y) const;
  void attention(int layer, reparam::index count);
  void check_batch(const char* function, reparam::index count) const;
  void residual(int layer, residual_point point, reparam::matrix<float>& x, reparam::index count);
  // The transformer over the inputs already in x_[0, count): layers, final norm, classifier.
  reparam::const_matrix_map<float> run_layers(reparam::index count, bool all_logits);

  const model* model_;
  model_config config_;
  reparam::index max_batch_;
  reparam::index position_ = 0;
  capture_fn capture_;
  probability_fn probability_hook_;
  residual_fn residual_hook_;

  // RoPE rotation for (position, pair): rows = positions, cols = head_size / 2.
  reparam::matrix<float> rope_cos_, rope_sin_;
  // Per layer. Keys are stored transposed, [kv_dim, seq_len], so that a decode step's scores
  // q K^T are a row vector times a row-major block: contiguous axpys over positions instead of
  // head_size-long dot products (2x faster decode at head_size 8).
  std::vector<reparam::matrix<float>> key_cache_;    // [kv_dim, seq_len]
  std::vector<reparam::matrix<float>> value_cache_;  // [seq_len, kv_dim]

  // Work buffers, [max_batch, width]; a call uses the top `count` rows.
  reparam::matrix<float> x_;         // residual stream [, dim]
  reparam::matrix<float> xb_;        // normed input / attention output [, dim]
  reparam::matrix<float> xb2_;       // linear output [, dim]
  reparam::matrix<float> q_;         // [, dim]
  reparam::matrix<float> k_, v_;     // [, kv_dim]
  reparam::matrix<float> hb_, hb2_;  // [, hidden_dim]
  reparam::matrix<float> scores_;    // attention probabilities of one query block [, seq_len]
  reparam::matrix<float> logits_;    // [, vocab]
};

}  // namespace llama

#endif  // REPARAM_EXAMPLES_RUNNER_FORWARD_HPP

// SPDX-License-Identifier: Apache-2.0
// The workbench model for every example: a float32 Llama-2 (llama2.c's stories260K) with its
// config, norms, token embedding and one swappable linear layer per (layer, kind), plus loaders
// for the llama2.c "version 0" checkpoint and its safetensors copy. Lives above the library.
#ifndef REPARAM_EXAMPLES_RUNNER_MODEL_HPP
#define REPARAM_EXAMPLES_RUNNER_MODEL_HPP

#include <array>
#include <memory>
#include <string>
#include <vector>

#include <reparam/core/views.hpp>

namespace llama {

/// The seven header values of a llama2.c checkpoint.
struct model_config {
  int dim = 0;         // residual stream width
  int hidden_dim = 0;  // FFN width
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (grouped-query attention)
  int vocab_size = 0;
  int seq_len = 0;  // maximum context (KV cache length)

  int head_size() const { return dim / n_heads; }
  int kv_dim() const { return n_kv_heads * head_size(); }
};

/// Throws reparam::io_error naming `function` and `source` unless the values describe a model
/// this runner can execute (positive, heads divide dim, even head size, sane upper bounds).
void validate_config(const model_config& config, const char* function, const std::string& source);

inline constexpr float rms_norm_eps = 1e-5f;
inline constexpr double rope_theta = 10000.0;
inline constexpr int bos_token = 1;

/// The linear layers of one transformer block, in llama2.c's order.
enum class linear_kind : int { wq, wk, wv, wo, w1, w2, w3 };
inline constexpr int linear_kind_count = 7;
inline constexpr std::array<linear_kind, linear_kind_count> all_linear_kinds = {
    linear_kind::wq, linear_kind::wk, linear_kind::wv, linear_kind::wo,
    linear_kind::w1, linear_kind::w2, linear_kind::w3};

/// Linear layers that read the same input share an input slot: wq, wk, wv (0, the normed residual),
/// wo (1, the attention output), w1, w3 (2, the normed residual of the FFN), w2 (3, the gated
/// hidden). Calibration captures each slot once, from its owner's call.
inline constexpr int input_slot_count = 4;
inline int input_slot(linear_kind kind) {
  switch (kind) {
    case linear_kind::wq:
    case linear_kind::wk:
    case linear_kind::wv:
      return 0;
    case linear_kind::wo:
      return 1;
    case linear_kind::w1:
    case linear_kind::w3:
      return 2;
    case linear_kind::w2:
      return 3;
  }
  return 0;
}
/// The kind whose capture call owns its slot (the others see the same input).
inline bool owns_input_slot(linear_kind kind) {
  return kind == linear_kind::wq || kind == linear_kind::wo || kind == linear_kind::w1 ||
         kind == linear_kind::w2;
}

/// "wq", "wk", ... (the safetensors tensor names).
const char* kind_name(linear_kind kind);

struct linear_id {
  int layer = 0;
  linear_kind kind = linear_kind::wq;
};

inline bool operator==(linear_id a, linear_id b) { return a.layer == b.layer && a.kind == b.kind; }
inline bool operator!=(linear_id a, linear_id b) { return !(a == b); }

/// "layers.2.w1".
std::string to_string(linear_id id);

/// [out, in] of a linear layer: wq, wo [dim, dim]; wk, wv [kv_dim, dim]; w1, w3 [hidden, dim];
/// w2 [dim, hidden].
struct linear_shape {
  reparam::index rows = 0;  // out features
  reparam::index cols = 0;  // in features
};
linear_shape shape_of(const model_config& config, linear_kind kind);

/// A linear map y = x W^T applied to a batch of rows. Implementations are swapped into a model
/// per (layer, kind): dense Eigen by default, quantized or transformed formats later.
class linear_layer {
 public:
  linear_layer() = default;
  linear_layer(const linear_layer&) = delete;
  linear_layer& operator=(const linear_layer&) = delete;
  virtual ~linear_layer() = default;

  virtual reparam::index rows() const = 0;  // out features
  virtual reparam::index cols() const = 0;  // in features

  /// y = x W^T. x is [batch, cols()], y is [batch, rows()], sized by the caller; x and y never
  /// alias. Called with batch 1 in the decode loop, where implementations should not allocate.
  virtual void forward(const reparam::const_matrix_map<float>& x,
                       reparam::matrix_map<float> y) const = 0;
};

/// The default layer: a GEMM with a dense [out, in] weight it views but does not own (the model's
/// own dense storage, or any matrix that outlives the layer). No allocation for batch 1.
class dense_linear final : public linear_layer {
 public:
  explicit dense_linear(const reparam::matrix<float>& weight) : weight_(&weight) {}

  reparam::index rows() const override { return weight_->rows(); }
  reparam::index cols() const override { return weight_->cols(); }
  void forward(const reparam::const_matrix_map<float>& x,
               reparam::matrix_map<float> y) const override;
  const reparam::matrix<float>& weight() const { return *weight_; }

 private:
  const reparam::matrix<float>* weight_;
};

/// Every tensor of a model, in llama2.c's layout. `linears[layer * 7 + kind]` is [out, in].
struct model_weights {
  reparam::matrix<float> token_embedding;  // [vocab_size, dim], also the (tied) classifier
  reparam::matrix<float> rms_att;          // [n_layers, dim]
  reparam::matrix<float> rms_ffn;          // [n_layers, dim]
  reparam::vector<float> rms_final;        // [dim]
  std::vector<reparam::matrix<float>> linears;
  // Optional biases after the RMSNorm gains ("RMSNorm + bias"), [n_layers, dim] or empty (none):
  // llama2.c has none; the shift folds of the scale family create them.
  reparam::matrix<float> rms_att_bias;
  reparam::matrix<float> rms_ffn_bias;
};

/// A loaded model. Move-only: the default linear layers view the model's own dense weights.
class model {
 public:
  /// Checks `config` and every shape against it; throws reparam::error naming the tensor.
  model(const model_config& config, model_weights weights);
  model(model&&) noexcept = default;
  model& operator=(model&&) noexcept = default;
  model(const model&) = delete;
  model& operator=(const model&) = delete;
  ~model() = default;

  const model_config& config() const { return config_; }

  const reparam::matrix<float>& token_embedding() const { return weights_.token_embedding; }
  const reparam::matrix<float>& rms_att() const { return weights_.rms_att; }  // row = layer
  const reparam::matrix<float>& rms_ffn() const { return weights_.rms_ffn; }  // row = layer
  const reparam::vector<float>& rms_final() const { return weights_.rms_final; }

  /// Writable views (fixed shape) for transforms that edit weights in place, e.g. folding the
  /// RMSNorm gains into the following linears.
  reparam::matrix_map<float> mutable_token_embedding();
  reparam::matrix_map<float> mutable_rms_att();
  reparam::matrix_map<float> mutable_rms_ffn();
  reparam::vector_map<float> mutable_rms_final();

  /// The optional norm biases ([n_layers, dim], or empty: none). set_norm_biases takes both
  /// (each empty or [n_layers, dim]; throws reparam::error otherwise).
  const reparam::matrix<float>& rms_att_bias() const { return weights_.rms_att_bias; }
  const reparam::matrix<float>& rms_ffn_bias() const { return weights_.rms_ffn_bias; }
  void set_norm_biases(reparam::matrix<float> att, reparam::matrix<float> ffn);

  /// The dense weight [out, in] of (layer, kind). The default layer computes with it, so in-place
  /// edits take effect there; a layer installed with set_linear does not see it.
  const reparam::matrix<float>& dense_weight(linear_id id) const;
  reparam::matrix_map<float> mutable_dense_weight(linear_id id);

  /// The layer the forward pass calls for (layer, kind).
  const linear_layer& linear(linear_id id) const;
  /// Installs `layer` for (layer, kind); throws reparam::error on null or a wrong shape.
  void set_linear(linear_id id, std::unique_ptr<linear_layer> layer);
  /// Restores the dense default for (layer, kind).
  void reset_linear(linear_id id);

  /// Weights excluding llama2.c's legacy RoPE tables (260,032 for stories260K).
  reparam::index parameter_count() const;

 private:
  std::size_t slot(linear_id id, const char* function) const;

  model_config config_;
  model_weights weights_;
  std::vector<std::unique_ptr<linear_layer>> layers_;
};

/// Reads a whole file; throws reparam::io_error("<function>: cannot open '<path>'") and friends.
std::string read_file(const std::string& path, const char* function);

/// Loads a llama2.c "version 0" checkpoint (7 int32 header values, then float32 arrays; the
/// classifier is tied to the embedding). Checks header values, the exact file size and that
/// every weight is finite; throws reparam::io_error naming the file and values otherwise.
model load_llama2c(const std::string& path);

/// Loads the safetensors copy: tensors token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2,
/// w3, rms_final (F32, F16 or BF16) and the 7 header values in __metadata__. Same checks.
model load_safetensors(const std::string& path);

/// Dispatches on the extension: ".safetensors" or llama2.c otherwise.
model load_model(const std::string& path);

}  // namespace llama

#endif  // REPARAM_EXAMPLES_RUNNER_MODEL_HPP

// SPDX-License-Identifier: Apache-2.0
// Model storage, the dense default layer and the two checkpoint loaders (llama2.c .bin and
// safetensors), which validate every header value, size and shape before trusting the file.
#include "runner/model.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <utility>

#include <reparam/core/error.hpp>
#include <reparam/io/safetensors.hpp>

namespace llama {

using reparam::index;

namespace {

// Generous upper bounds: they only exist so that size arithmetic on hostile headers cannot
// overflow (all products below stay far under 2^63).
constexpr int max_width = 1 << 16;
constexpr int max_layers = 1 << 10;
constexpr int max_vocab = 1 << 20;
constexpr int max_seq_len = 1 << 20;

void check_finite_io(const float* data, index count, const char* function, const std::string& path,
                     const char* tensor) {
  for (index i = 0; i < count; ++i) {
    reparam::detail::check_io(std::isfinite(data[i]), function, "'", path, "': tensor ", tensor,
                              " has non-finite value ", data[i], " at flat index ", i);
  }
}

std::size_t linear_slot(int layer, linear_kind kind) {
  return static_cast<std::size_t>(layer * linear_kind_count + static_cast<int>(kind));
}

std::string shape_text(const std::vector<index>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i == 0 ? "" : ", ") + std::to_string(shape[i]);
  }
  return text + "]";
}

}  // namespace

void validate_config(const model_config& c, const char* function, const std::string& source) {
  const auto values = [&] {
    return reparam::detail::concat("(dim ", c.dim, ", hidden_dim ", c.hidden_dim, ", n_layers ",
                                   c.n_layers, ", n_heads ", c.n_heads, ", n_kv_heads ",
                                   c.n_kv_heads, ", vocab_size ", c.vocab_size, ", seq_len ",
                                   c.seq_len, ")");
  };
  const auto in_range = [](int value, int upper) { return value > 0 && value <= upper; };
  reparam::detail::check_io(in_range(c.dim, max_width) && in_range(c.hidden_dim, max_width) &&
                                in_range(c.n_layers, max_layers) && in_range(c.n_heads, c.dim) &&
                                in_range(c.n_kv_heads, c.n_heads) &&
                                in_range(c.vocab_size, max_vocab) &&
                                in_range(c.seq_len, max_seq_len),
                            function, "'", source, "': header values out of range ", values());
  reparam::detail::check_io(c.dim % c.n_heads == 0, function, "'", source, "': n_heads ", c.n_heads,
                            " does not divide dim ", c.dim, " ", values());
  reparam::detail::check_io(c.n_heads % c.n_kv_heads == 0, function, "'", source, "': n_kv_heads ",
                            c.n_kv_heads, " does not divide n_heads ", c.n_heads, " ", values());
  reparam::detail::check_io(c.head_size() % 2 == 0, function, "'", source, "': head size ",
                            c.head_size(), " is odd, RoPE needs pairs ", values());
}

const char* kind_name(linear_kind kind) {
  switch (kind) {
    case linear_kind::wq:
      return "wq";
    case linear_kind::wk:
      return "wk";
    case linear_kind::wv:
      return "wv";
    case linear_kind::wo:
      return "wo";
    case linear_kind::w1:
      return "w1";
    case linear_kind::w2:
      return "w2";
    case linear_kind::w3:
      return "w3";
  }
  return "?";
}

std::string to_string(linear_id id) {
  return reparam::detail::concat("layers.", id.layer, ".", kind_name(id.kind));
}

linear_shape shape_of(const model_config& c, linear_kind kind) {
  switch (kind) {
    case linear_kind::wq:
    case linear_kind::wo:
      return {c.dim, c.dim};
    case linear_kind::wk:
    case linear_kind::wv:
      return {c.kv_dim(), c.dim};
    case linear_kind::w1:
    case linear_kind::w3:
      return {c.hidden_dim, c.dim};
    case linear_kind::w2:
      return {c.dim, c.hidden_dim};
  }
  return {};
}

void dense_linear::forward(const reparam::const_matrix_map<float>& x,
                           reparam::matrix_map<float> y) const {
  y.noalias() = x * weight_->transpose();
}

std::string read_file(const std::string& path, const char* function) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  reparam::detail::check_io(in.is_open(), function, "cannot open '", path, "'");
  const std::streamoff size = in.tellg();
  reparam::detail::check_io(size >= 0, function, "cannot size '", path, "'");
  std::string bytes(static_cast<std::size_t>(size), '\0');
  in.seekg(0);
  in.read(bytes.data(), size);
  reparam::detail::check_io(in.gcount() == size, function, "read ", in.gcount(), " of ", size,
                            " bytes of '", path, "'");
  return bytes;
}

// --- model ---------------------------------------------------------------------------------------

model::model(const model_config& config, model_weights weights)
    : config_(config), weights_(std::move(weights)) {
  constexpr const char* function = "llama::model";
  try {
    validate_config(config_, function, "model_config");
  } catch (const reparam::io_error& e) {
    // Not a file here: report a bad argument.
    reparam::detail::raise<reparam::error>(e.what());
  }
  const auto check_shape = [&](const auto& m, index rows, index cols, const std::string& name) {
    reparam::detail::check(m.rows() == rows && m.cols() == cols, function, name, " is [", m.rows(),
                           ", ", m.cols(), "], expected [", rows, ", ", cols, "]");
  };
  check_shape(weights_.token_embedding, config_.vocab_size, config_.dim, "token_embedding");
  check_shape(weights_.rms_att, config_.n_layers, config_.dim, "rms_att");
  check_shape(weights_.rms_ffn, config_.n_layers, config_.dim, "rms_ffn");
  check_shape(weights_.rms_final, config_.dim, 1, "rms_final");
  if (weights_.rms_att_bias.size() != 0) {
    check_shape(weights_.rms_att_bias, config_.n_layers, config_.dim, "rms_att_bias");
  }
  if (weights_.rms_ffn_bias.size() != 0) {
    check_shape(weights_.rms_ffn_bias, config_.n_layers, config_.dim, "rms_ffn_bias");
  }
  const auto expected = static_cast<std::size_t>(config_.n_layers) * linear_kind_count;
  reparam::detail::check(weights_.linears.size() == expected, function, "linears has ",
                         weights_.linears.size(), " matrices, expected n_layers * 7 = ", expected);
  layers_.resize(expected);
  for (int layer = 0; layer < config_.n_layers; ++layer) {
    for (const linear_kind kind : all_linear_kinds) {
      const linear_id id{layer, kind};
      const linear_shape shape = shape_of(config_, kind);
      const std::size_t s = slot(id, function);
      check_shape(weights_.linears[s], shape.rows, shape.cols, to_string(id));
      layers_[s] = std::make_unique<dense_linear>(weights_.linears[s]);
    }
  }
}

std::size_t model::slot(linear_id id, const char* function) const {
  const auto kind = static_cast<int>(id.kind);
  reparam::detail::check(
      id.layer >= 0 && id.layer < config_.n_layers && kind >= 0 && kind < linear_kind_count,
      function, "linear_id (layer ", id.layer, ", kind ", kind, ") out of range for n_layers ",
      config_.n_layers);
  return linear_slot(id.layer, id.kind);
}

reparam::matrix_map<float> model::mutable_token_embedding() {
  auto& m = weights_.token_embedding;
  return reparam::row_major_map(m.data(), m.rows(), m.cols());
}

reparam::matrix_map<float> model::mutable_rms_att() {
  auto& m = weights_.rms_att;
  return reparam::row_major_map(m.data(), m.rows(), m.cols());
}

reparam::matrix_map<float> model::mutable_rms_ffn() {
  auto& m = weights_.rms_ffn;
  return reparam::row_major_map(m.data(), m.rows(), m.cols());
}

reparam::vector_map<float> model::mutable_rms_final() {
  return reparam::vector_map<float>(weights_.rms_final.data(), weights_.rms_final.size());
}

void model::set_norm_biases(reparam::matrix<float> att, reparam::matrix<float> ffn) {
  constexpr const char* function = "llama::model::set_norm_biases";
  for (const auto* bias : {&att, &ffn}) {
    reparam::detail::check(
        bias->size() == 0 || (bias->rows() == config_.n_layers && bias->cols() == config_.dim),
        function, bias == &att ? "att" : "ffn", " is [", bias->rows(), ", ", bias->cols(),
        "], expected empty or [", config_.n_layers, ", ", config_.dim, "]");
    reparam::detail::check(bias->allFinite(), function, bias == &att ? "att" : "ffn",
                           " has a non-finite value");
  }
  weights_.rms_att_bias = std::move(att);
  weights_.rms_ffn_bias = std::move(ffn);
}

const reparam::matrix<float>& model::dense_weight(linear_id id) const {
  return weights_.linears[slot(id, "llama::model::dense_weight")];
}

reparam::matrix_map<float> model::mutable_dense_weight(linear_id id) {
  auto& m = weights_.linears[slot(id, "llama::model::mutable_dense_weight")];
  return reparam::row_major_map(m.data(), m.rows(), m.cols());
}

const linear_layer& model::linear(linear_id id) const {
  return *layers_[slot(id, "llama::model::linear")];
}

void model::set_linear(linear_id id, std::unique_ptr<linear_layer> layer) {
  constexpr const char* function = "llama::model::set_linear";
  const std::size_t s = slot(id, function);
  reparam::detail::check(layer != nullptr, function, to_string(id), ": layer is null");
  const linear_shape shape = shape_of(config_, id.kind);
  reparam::detail::check(layer->rows() == shape.rows && layer->cols() == shape.cols, function,
                         to_string(id), ": layer is [", layer->rows(), ", ", layer->cols(),
                         "], expected [", shape.rows, ", ", shape.cols, "]");
  layers_[s] = std::move(layer);
}

void model::reset_linear(linear_id id) {
  const std::size_t s = slot(id, "llama::model::reset_linear");
  layers_[s] = std::make_unique<dense_linear>(weights_.linears[s]);
}

index model::parameter_count() const {
  index count = weights_.token_embedding.size() + weights_.rms_att.size() +
                weights_.rms_ffn.size() + weights_.rms_final.size();
  for (const auto& w : weights_.linears) count += w.size();
  return count;
}

// --- llama2.c loader -----------------------------------------------------------------------------

namespace {

// Sequential reader over the checkpoint bytes. The caller has verified the total size up front, so
// the per-read bound check can only fire on a logic error; it stays because it is cheap.
class byte_cursor {
 public:
  byte_cursor(const std::string& bytes, std::size_t offset, const std::string& path)
      : bytes_(bytes), path_(path), offset_(offset) {}

  void read_floats(float* out, index count, const char* function, const std::string& tensor) {
    const auto bytes = static_cast<std::size_t>(count) * sizeof(float);
    reparam::detail::check_io(offset_ + bytes <= bytes_.size(), function, "'", path_,
                              "': truncated in tensor ", tensor, " at byte offset ", offset_);
    std::memcpy(out, bytes_.data() + offset_, bytes);
    offset_ += bytes;
    check_finite_io(out, count, function, path_, tensor.c_str());
  }

 private:
  const std::string& bytes_;
  const std::string& path_;
  std::size_t offset_;
};

model_weights allocate_weights(const model_config& c) {
  model_weights w;
  w.token_embedding.resize(c.vocab_size, c.dim);
  w.rms_att.resize(c.n_layers, c.dim);
  w.rms_ffn.resize(c.n_layers, c.dim);
  w.rms_final.resize(c.dim);
  w.linears.resize(static_cast<std::size_t>(c.n_layers) * linear_kind_count);
  for (int layer = 0; layer < c.n_layers; ++layer) {
    for (const linear_kind kind : all_linear_kinds) {
      const linear_shape s = shape_of(c, kind);
      w.linears[linear_slot(layer, kind)].resize(s.rows, s.cols);
    }
  }
  return w;
}

}  // namespace

model load_llama2c(const std::string& path) {
  constexpr const char* function = "llama::load_llama2c";
  const std::string bytes = read_file(path, function);
  constexpr std::size_t header_bytes = 7 * sizeof(std::int32_t);
  reparam::detail::check_io(bytes.size() >= header_bytes, function, "'", path, "' has ",
                            bytes.size(), " bytes, fewer than the 28-byte header");
  std::int32_t header[7];
  std::memcpy(header, bytes.data(), header_bytes);
  const model_config c{header[0], header[1], header[2], header[3], header[4], header[5], header[6]};
  // A negative vocab_size marks an untied classifier (wcls after the RoPE tables) in llama2.c;
  // the stories models all tie it.
  reparam::detail::check_io(c.vocab_size >= 0, function, "'", path, "': vocab_size ", c.vocab_size,
                            " < 0 means an untied classifier, not supported");
  validate_config(c, function, path);

  // Products of bounded values (validate_config): no overflow in int64.
  const std::int64_t dim = c.dim, hidden = c.hidden_dim, layers = c.n_layers;
  const std::int64_t kv_dim = c.kv_dim(), vocab = c.vocab_size, seq = c.seq_len;
  const std::int64_t per_layer = 2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim;
  // Embedding, blocks, final norm, then the legacy freq_cis_real/imag tables [seq_len, hs/2] each.
  const std::int64_t floats = vocab * dim + layers * per_layer + dim + seq * c.head_size();
  const std::uint64_t expected_bytes =
      header_bytes + static_cast<std::uint64_t>(floats) * sizeof(float);
  reparam::detail::check_io(bytes.size() == expected_bytes, function, "'", path, "' has ",
                            bytes.size(), " bytes but its header (dim ", c.dim, ", hidden_dim ",
                            c.hidden_dim, ", n_layers ", c.n_layers, ", n_heads ", c.n_heads,
                            ", n_kv_heads ", c.n_kv_heads, ", vocab_size ", c.vocab_size,
                            ", seq_len ", c.seq_len, ") implies ", expected_bytes);

  model_weights w = allocate_weights(c);
  byte_cursor cursor(bytes, header_bytes, path);
  cursor.read_floats(w.token_embedding.data(), w.token_embedding.size(), function,
                     "token_embedding");
  // The file groups tensors by kind across layers: rms_att[L], wq[L], wk[L], wv[L], wo[L],
  // rms_ffn[L], w1[L], w2[L], w3[L].
  const auto read_kind = [&](linear_kind kind) {
    for (int layer = 0; layer < c.n_layers; ++layer) {
      auto& m = w.linears[linear_slot(layer, kind)];
      cursor.read_floats(m.data(), m.size(), function, to_string({layer, kind}));
    }
  };
  cursor.read_floats(w.rms_att.data(), w.rms_att.size(), function, "rms_att");
  for (const linear_kind kind :
       {linear_kind::wq, linear_kind::wk, linear_kind::wv, linear_kind::wo}) {
    read_kind(kind);
  }
  cursor.read_floats(w.rms_ffn.data(), w.rms_ffn.size(), function, "rms_ffn");
  for (const linear_kind kind : {linear_kind::w1, linear_kind::w2, linear_kind::w3}) {
    read_kind(kind);
  }
  cursor.read_floats(w.rms_final.data(), w.rms_final.size(), function, "rms_final");
  // The freq_cis tables that follow are unused: the runner computes RoPE angles in double.
  return model(c, std::move(w));
}

// --- safetensors loader --------------------------------------------------------------------------

namespace {

int metadata_int(const reparam::io::safetensors_file& file, const std::string& key,
                 const char* function, const std::string& path) {
  const auto& metadata = file.metadata();
  const auto it = metadata.find(key);
  reparam::detail::check_io(it != metadata.end(), function, "'", path, "': __metadata__ has no '",
                            key, "'");
  const std::string& text = it->second;
  std::size_t used = 0;
  long value = 0;
  try {
    value = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  reparam::detail::check_io(
      used == text.size() && !text.empty() && value >= std::numeric_limits<int>::min() &&
          value <= std::numeric_limits<int>::max(),
      function, "'", path, "': __metadata__ '", key, "' = '", text, "' is not an int32");
  return static_cast<int>(value);
}

// Copies tensor `name` (any float dtype, converted to float) into `out` after checking its shape.
void read_tensor(const reparam::io::safetensors_file& file, const std::string& name,
                 const std::vector<index>& shape, float* out, const char* function,
                 const std::string& path) {
  reparam::detail::check_io(file.contains(name), function, "'", path, "': no tensor '", name, "'");
  const auto& info = file.info(name);
  reparam::detail::check_io(info.shape == shape, function, "'", path, "': tensor '", name,
                            "' has shape ", shape_text(info.shape), ", expected ",
                            shape_text(shape));
  const std::vector<float> values = file.to_float(name);
  reparam::detail::check_io(values.size() == static_cast<std::size_t>(info.numel()), function, "'",
                            path, "': tensor '", name, "' converted to ", values.size(),
                            " floats, expected ", info.numel());
  std::memcpy(out, values.data(), values.size() * sizeof(float));
  check_finite_io(out, static_cast<index>(values.size()), function, path, name.c_str());
}

}  // namespace

model load_safetensors(const std::string& path) {
  constexpr const char* function = "llama::load_safetensors";
  const auto file = reparam::io::safetensors_file::open(path);
  model_config c;
  c.dim = metadata_int(file, "dim", function, path);
  c.hidden_dim = metadata_int(file, "hidden_dim", function, path);
  c.n_layers = metadata_int(file, "n_layers", function, path);
  c.n_heads = metadata_int(file, "n_heads", function, path);
  c.n_kv_heads = metadata_int(file, "n_kv_heads", function, path);
  c.vocab_size = metadata_int(file, "vocab_size", function, path);
  c.seq_len = metadata_int(file, "seq_len", function, path);
  validate_config(c, function, path);

  model_weights w = allocate_weights(c);
  const index layers = c.n_layers, dim = c.dim;
  read_tensor(file, "token_embedding", {c.vocab_size, dim}, w.token_embedding.data(), function,
              path);
  read_tensor(file, "rms_att", {layers, dim}, w.rms_att.data(), function, path);
  read_tensor(file, "rms_ffn", {layers, dim}, w.rms_ffn.data(), function, path);
  read_tensor(file, "rms_final", {dim}, w.rms_final.data(), function, path);
  for (const linear_kind kind : all_linear_kinds) {
    // Stored as one [n_layers, out, in] tensor per kind; split it into per-layer matrices.
    const linear_shape s = shape_of(c, kind);
    std::vector<float> stacked(static_cast<std::size_t>(layers * s.rows * s.cols));
    read_tensor(file, kind_name(kind), {layers, s.rows, s.cols}, stacked.data(), function, path);
    for (int layer = 0; layer < c.n_layers; ++layer) {
      auto& m = w.linears[linear_slot(layer, kind)];
      std::memcpy(m.data(), stacked.data() + static_cast<std::size_t>(layer * m.size()),
                  static_cast<std::size_t>(m.size()) * sizeof(float));
    }
  }
  return model(c, std::move(w));
}

model load_model(const std::string& path) {
  const std::string suffix = ".safetensors";
  const bool is_safetensors = path.size() >= suffix.size() &&
                              path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  return is_safetensors ? load_safetensors(path) : load_llama2c(path);
}

}  // namespace llama

// SPDX-License-Identifier: Apache-2.0
// Residual-stream directional ablation (Arditi et al. 2024 "refusal direction", abliteration,
// MRP's projection applied to the whole stream) folded into the weights of every writer of the
// residual stream: token and position embeddings, attention output and FFN down projections, and
// their biases. The caller lists the model's writers and states how many the architecture has; a
// fold that leaves one out is not equivalent to the run-time hook, and the report says so.
// Definitions: reparam/unlearn/detail/ablation_impl.hpp (included at the end).
#ifndef REPARAM_UNLEARN_ABLATION_HPP
#define REPARAM_UNLEARN_ABLATION_HPP

#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/projector.hpp>
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {

/// Which index of a writer's weight is the residual coordinate (width d).
enum class writer_layout {
  residual_rows,     ///< [d, in]: rows are residual coordinates (HF nn.Linear o_proj, down_proj,
                     ///< llama2.c wo, w2). Folded on the output side: W <- P W.
  residual_columns,  ///< [n, d]: columns are residual coordinates (token / position embeddings,
                     ///< GPT-2 Conv1D [in, out], TransformerLens W_O). Folded as W <- W P.
};

/// One writer of the residual stream: a non-owning view of its weight (and bias) plus what the
/// fold needs to know. The caller owns the storage, which must outlive the fold. Copying or
/// assigning a writer copies the view, never the tensor data (so std::vector<residual_writer>
/// can be edited freely). `layer` is the block index, -1 for embeddings. The bias is absent or
/// has d entries: it is folded too (b <- P b). `scale` multiplies the schedule's strength for this
/// writer only (heretic's per-component weights, e.g. 0.5 on the MLP writers); anything but one
/// common effective strength makes the fold inexact. `tied_reader`: the same tensor is also read,
/// as the tied classifier / unembedding (llama2.c, GPT-2): folding it also projects the
/// classifier's input, and the report lists it in `tied`.
template <class T>
class residual_writer {
 public:
  residual_writer(std::string writer_name, int writer_layer, writer_layout orientation,
                  matrix_ref<T> weight)
      : name(std::move(writer_name)),
        layer(writer_layer),
        layout(orientation),
        weight_(weight.data()),
        rows_(weight.rows()),
        cols_(weight.cols()),
        stride_(weight.outerStride()) {}
  residual_writer(std::string writer_name, int writer_layer, writer_layout orientation,
                  matrix_ref<T> weight, Eigen::Ref<vector<T>> bias)
      : residual_writer(std::move(writer_name), writer_layer, orientation, weight) {
    bias_ = bias.data();
    bias_size_ = bias.size();
  }

  std::string name;
  int layer = -1;
  writer_layout layout = writer_layout::residual_rows;
  double scale = 1.0;
  bool tied_reader = false;

  /// Views of the caller's tensors (the bias view has size 0 when there is none).
  matrix_map<T> weight() const {
    return matrix_map<T>(weight_, rows_, cols_, Eigen::OuterStride<>(stride_));
  }
  vector_map<T> bias() const { return vector_map<T>(bias_, bias_size_); }
  bool has_bias() const noexcept { return bias_ != nullptr; }

 private:
  T* weight_;
  index rows_;
  index cols_;
  index stride_;
  T* bias_ = nullptr;
  index bias_size_ = 0;
};

/// The residual stream of a model: its width, every writer the caller lists, and the number of
/// writers the architecture has (e.g. 1 + 2 n_layers for a Llama without biases: the embedding,
/// and wo and w2 of every block; a bias belongs to its writer). expected_writers < 0 means
/// "unknown": the fold then never calls itself exact.
template <class T>
struct residual_stream {
  index width = 0;
  std::vector<residual_writer<T>> writers;
  index expected_writers = -1;
};

/// Strength per layer: a writer of layer l >= 0 is folded with strength layer_strength[l] * scale,
/// an embedding (layer -1) with embedding_strength * scale. Strength 1 is the full projection,
/// (0, 1) a partial ablation, 0 leaves the writer unchanged. An empty layer_strength means 1 for
/// every layer (writers may then have any layer >= -1).
struct ablation_schedule {
  double embedding_strength = 1.0;
  std::vector<double> layer_strength;

  /// s for the embeddings and each of `layers` blocks (exact with the hook when every writer is
  /// listed). Throws if s is not finite or layers < 0.
  static ablation_schedule uniform(double s, int layers);
  /// heretic's linear kernel over blocks: s(l) = max + (|l - peak| / width) (min - max) when
  /// |l - peak| <= width, else 0; embeddings 0 (heretic leaves them alone). Inexact by
  /// construction. Throws on non-finite arguments, width <= 0 or layers < 0.
  static ablation_schedule kernel(double peak, double width, double max, double min, int layers);
};

/// What fold_residual_ablation did.
struct ablation_report {
  std::vector<std::string> folded;      ///< writer names, in the order listed
  std::vector<double> strength;         ///< effective strength per folded writer
  std::vector<fold_report> per_writer;  ///< weight change per folded writer
  std::vector<std::string> tied;        ///< folded writers that are also read (tied classifier)
  index missing = 0;                    ///< expected_writers - listed (0 when unknown)
  bool uniform = false;                 ///< one effective strength for every writer
  /// Every writer listed (expected_writers known and met) and the strength uniform. Then, for
  /// strength s, the folded network equals the unfolded one with x <- x - s Q^T Q x applied to the
  /// input of every reader of the stream (every block's norm and the final norm, plus the
  /// classifier's input for each tied writer), by induction on the stream: each partial sum of
  /// folded writes is P applied once to the hooked network's partial sum. For s = 1 (P idempotent)
  /// this is also the refusal-direction hook at every residual point.
  bool exact = false;
  std::string reason;  ///< why exact is false (empty when exact)
};

/// Folds x <- x - s Q^T Q x into every listed writer in place (per writer: computed in double,
/// rounded once to T), with s from the schedule. Validates everything before changing anything:
/// width >= 1 and equal to the subspace's dim; at least one writer; each weight non-empty with its
/// residual index of size width; biases absent or of size width; every weight and bias finite;
/// no tensor listed twice (same data); layers in [-1, layer_strength.size()) when the schedule has
/// per-layer strengths; finite strengths and scales; expected_writers >= listed when known.
/// Throws reparam::error naming "unlearn::fold_residual_ablation", the writer and the values.
/// Allocates O(size of the largest writer) doubles; not safe to run concurrently on the same
/// tensors.
template <class T>
ablation_report fold_residual_ablation(residual_stream<T>& stream, const subspace& directions,
                                       const ablation_schedule& schedule = {});

}  // namespace reparam::unlearn

#include <reparam/unlearn/detail/ablation_impl.hpp>

#endif  // REPARAM_UNLEARN_ABLATION_HPP

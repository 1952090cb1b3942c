// SPDX-License-Identifier: Apache-2.0
// Residual-stream directional ablation (Arditi et al. 2024 "refusal direction", abliteration,
// MRP applied at every residual point) folded into the weights of every writer of the residual
// stream: token (and position) embeddings, attention output projections, FFN down projections
// and their biases. The fold equals the run-time hook x <- x - s Q^T Q x at every residual point
// only if EVERY writer is folded (the stream is the sum of their outputs); the caller describes
// the model's writers, and the report lists any writer left out and marks the fold inexact.
// Strength and per-layer schedules (heretic-style kernels) are supported; a non-uniform schedule
// is inexact by construction and says so.
// DRAFT CONTRACT (wip/unlearn): declarations and docs only.
#ifndef REPARAM_UNLEARN_ABLATION_HPP
#define REPARAM_UNLEARN_ABLATION_HPP

#include <string>
#include <vector>

#include <reparam/core/views.hpp>
#include <reparam/unlearn/projector.hpp>

namespace reparam::unlearn {

/// How a writer's weight is laid out relative to the residual width d.
enum class writer_layout {
  output_rows,    ///< [d, in] (HF nn.Linear o_proj / down_proj: rows are residual coordinates)
  embedding_rows, ///< [vocab, d] (rows are tokens, columns residual coordinates)
};

/// One writer of the residual stream, by reference (the caller owns the tensors). `layer` is the
/// block index (-1 for embeddings); `bias` may be null.
struct residual_writer {
  std::string name;
  int layer = -1;
  writer_layout layout = writer_layout::output_rows;
  matrix<float>* weight = nullptr;
  vector<float>* bias = nullptr;
};

/// The residual stream of a model: its width and every writer the caller knows of. `expected`
/// is the caller's statement of how many writers the architecture has (e.g. 1 + 2 n_layers for a
/// Llama without biases); the fold refuses to call itself exact when fewer are listed.
struct residual_stream {
  index width = 0;
  std::vector<residual_writer> writers;
  index expected_writers = -1;
};

/// Strength per layer: s(layer) multiplies the ablation (1 = full projection). `uniform(s)` is exact
/// with the hook; `kernel(peak, width, max, min)` is heretic's linear kernel
/// s = max + (|l - peak| / width)(min - max) for |l - peak| <= width, else 0.
struct ablation_schedule {
  double embedding_strength = 1.0;
  std::vector<double> layer_strength;  ///< one per layer; empty: 1 everywhere
  static ablation_schedule uniform(double s, int layers);
  static ablation_schedule kernel(double peak, double width, double max, double min, int layers);
};

struct ablation_report {
  std::vector<std::string> folded;    ///< writer names, in order
  std::vector<std::string> missing;   ///< described by the architecture but not listed (inexact)
  bool exact = false;                 ///< every writer folded with one uniform strength
  std::vector<fold_report> per_writer;
};

/// Folds x <- x - s Q^T Q x into every listed writer (output side for output_rows, rows for
/// embedding_rows; biases too), in double, in place. Validates everything first (shapes, finite
/// weights, schedule length, eraser dim == width) and changes nothing on error.
ablation_report fold_residual_ablation(residual_stream& stream, const subspace& directions,
                                       const ablation_schedule& schedule = {});

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_ABLATION_HPP

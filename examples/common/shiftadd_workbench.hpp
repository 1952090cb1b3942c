// SPDX-License-Identifier: Apache-2.0
// Shift-add helpers shared by the examples and their tests: a runner linear layer that computes
// with packed binary-coded weights (reparam::shiftadd::multiply), and the calibration pass that
// captures every linear layer's input through llama::runner and accumulates its second moment
// (the Hessian H of GPTQ / ShiftAddLLM). Lives above the library.
#ifndef REPARAM_EXAMPLES_COMMON_SHIFTADD_WORKBENCH_HPP
#define REPARAM_EXAMPLES_COMMON_SHIFTADD_WORKBENCH_HPP

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include <reparam/core/error.hpp>
#include <reparam/core/second_moment.hpp>
#include <reparam/core/views.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/multiply.hpp>
#include <reparam/shiftadd/packed.hpp>

#include "common/text_split.hpp"
#include "runner/forward.hpp"
#include "runner/model.hpp"

namespace examples {

/// y = x W^T with W kept packed: every call runs the scalar reference product on the sign planes
/// (no dense copy of W exists). Batch 1 does not allocate.
class bcq_linear final : public llama::linear_layer {
 public:
  explicit bcq_linear(reparam::shiftadd::binary_coded_matrix weights)
      : weights_(std::move(weights)) {}

  reparam::index rows() const override { return weights_.rows(); }
  reparam::index cols() const override { return weights_.cols(); }
  void forward(const reparam::const_matrix_map<float>& x,
               reparam::matrix_map<float> y) const override {
    reparam::shiftadd::multiply(weights_, x, y);
  }
  const reparam::shiftadd::binary_coded_matrix& weights() const { return weights_; }

 private:
  reparam::shiftadd::binary_coded_matrix weights_;
};

/// y = x W^T with W repacked for the lookup-table kernels (shiftadd::packed_binary_coded_matrix)
/// in `mode`, on the best kernel path of this build and CPU, `threads` threads. The activation
/// tables live in the layer and are rebuilt per call for up to `max_tokens` tokens at a time
/// (longer inputs run in chunks), so forward() allocates nothing but is not thread safe: use one
/// model per thread, as llama::runner requires anyway.
class lut_linear final : public llama::linear_layer {
 public:
  static constexpr reparam::index max_tokens = 64;

  lut_linear(const reparam::shiftadd::binary_coded_matrix& weights,
             reparam::shiftadd::lut_mode mode, int threads = 1,
             reparam::shiftadd::scale_storage storage = reparam::shiftadd::scale_storage::f32)
      : weights_(weights, storage), tables_(weights_, max_tokens, mode), threads_(threads) {}

  reparam::index rows() const override { return weights_.rows(); }
  reparam::index cols() const override { return weights_.cols(); }
  void forward(const reparam::const_matrix_map<float>& x,
               reparam::matrix_map<float> y) const override {
    for (reparam::index first = 0; first < x.rows(); first += max_tokens) {
      const reparam::index count = std::min(max_tokens, x.rows() - first);
      reparam::shiftadd::multiply(weights_, x.middleRows(first, count), y.middleRows(first, count),
                                  tables_, threads_);
    }
  }

 private:
  reparam::shiftadd::packed_binary_coded_matrix weights_;
  mutable reparam::shiftadd::lut_tables tables_;
  int threads_ = 1;
};

/// Linear layers that read the same input share one Hessian (llama::input_slot).
inline constexpr int hessian_slots = llama::input_slot_count;
inline int hessian_slot(llama::linear_kind kind) { return llama::input_slot(kind); }
inline bool owns_hessian(llama::linear_kind kind) { return llama::owns_input_slot(kind); }

/// H = mean of x x^T over every token of `windows` (each scored from an empty KV cache) for each
/// linear input of the layers in [layer_begin, layer_end), indexed [layer * hessian_slots +
/// slot]; other layers get empty matrices. Runs one prefill per window through `m` as it is
/// (with whatever layers and weights are installed), so calling it after quantizing the earlier
/// layers gives GPTQ's sequential calibration. Allocates.
inline std::vector<reparam::matrix<double>> calibrate_hessians(
    const llama::model& m, const std::vector<std::vector<int>>& windows, int layer_begin,
    int layer_end) {
  const llama::model_config& config = m.config();
  reparam::detail::check(
      0 <= layer_begin && layer_begin <= layer_end && layer_end <= config.n_layers,
      "examples::calibrate_hessians", "layer range [", layer_begin, ", ", layer_end,
      ") is not inside [0, ", config.n_layers, ")");
  std::vector<reparam::second_moment> moments;
  for (int layer = 0; layer < config.n_layers; ++layer) {
    for (const llama::linear_kind kind : {llama::linear_kind::wq, llama::linear_kind::wo,
                                          llama::linear_kind::w1, llama::linear_kind::w2}) {
      const bool is_used = layer >= layer_begin && layer < layer_end;
      moments.emplace_back(is_used ? llama::shape_of(config, kind).cols : 1);
    }
  }
  llama::runner r(m);
  r.set_capture([&](llama::linear_id id, const reparam::const_matrix_map<float>& x) {
    if (id.layer >= layer_begin && id.layer < layer_end && owns_hessian(id.kind)) {
      moments[static_cast<std::size_t>(id.layer * hessian_slots + hessian_slot(id.kind))].add(x);
    }
  });
  for (const std::vector<int>& window : windows) {
    r.reset();
    r.prefill(window, /*all_logits=*/false);
  }
  std::vector<reparam::matrix<double>> hessians(moments.size());
  for (std::size_t i = 0; i < moments.size(); ++i) {
    const auto layer = static_cast<int>(i) / hessian_slots;
    if (layer >= layer_begin && layer < layer_end) {
      hessians[i] = moments[i].mean();
    }
  }
  return hessians;
}

/// The Hessian of linear `id` in the result of calibrate_hessians.
inline const reparam::matrix<double>& hessian_of(const std::vector<reparam::matrix<double>>& all,
                                                 llama::linear_id id) {
  return all[static_cast<std::size_t>(id.layer * hessian_slots + hessian_slot(id.kind))];
}

}  // namespace examples

#endif  // REPARAM_EXAMPLES_COMMON_SHIFTADD_WORKBENCH_HPP

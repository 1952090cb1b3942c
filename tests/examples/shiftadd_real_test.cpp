// SPDX-License-Identifier: Apache-2.0
// Shift-add quantization of the bundled real model (stories260K), end to end through the runner:
// 4-bit ShiftAddLLM stays near float32, 2-bit ShiftAddLLM beats 2-bit round-to-nearest, and a
// quantized model saved to a file and reloaded computes identical logits on its packed planes.
#include <cmath>
#include <cstddef>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/io/shiftadd.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/gptq.hpp>
#include <reparam/shiftadd/uniform.hpp>

#include "common/shiftadd_workbench.hpp"
#include "runner/eval.hpp"
#include "runner_fixture.hpp"

namespace {

namespace sa = reparam::shiftadd;

// Few windows keep the test fast under ASan (the calibration's second moments run unoptimized in
// a Debug build): 2 calibration windows from the end of the paragraph stream (1024 samples for
// Hessians of 64 and 172 inputs), 2 evaluation windows from its start (1024 scored tokens).
constexpr reparam::index calibration_windows = 2;
constexpr reparam::index evaluation_windows = 2;

/// ShiftAddLLM with row-group scales (groups of 64 inputs; whole rows for w2's 172 inputs).
sa::binary_coded_matrix shiftadd(const reparam::matrix<float>& w, const reparam::matrix<double>& h,
                                 int bits) {
  sa::shiftadd_params params;
  params.bcq.bits = bits;
  params.bcq.rounds = 5;
  params.group_size = w.cols() % 64 == 0 ? 64 : 0;
  return sa::quantize_shiftadd(w, h, params);
}

struct workbench {
  llama::model model = llama::load_model(runner_test::model_bin);
  std::vector<int> stream = llama::paragraph_stream(
      runner_test::tok512(), llama::read_text_file(runner_test::valid_head_txt));
  std::vector<reparam::matrix<double>> hessians = examples::calibrate_hessians(
      model, examples::tail_windows(stream, calibration_windows, 512, evaluation_windows * 512 + 1),
      0, model.config().n_layers);
  std::vector<reparam::matrix<float>> original = [this] {
    std::vector<reparam::matrix<float>> out;
    for (const llama::linear_id id : linears()) {
      out.push_back(model.dense_weight(id));
    }
    return out;
  }();

  std::vector<sa::binary_coded_matrix> shiftadd_2bit_layers;

  /// Every linear layer quantized by 2-bit ShiftAdd (computed once, shared by two tests).
  const std::vector<sa::binary_coded_matrix>& shiftadd_2bit() {
    if (shiftadd_2bit_layers.empty()) {
      const std::vector<llama::linear_id> ids = linears();
      for (std::size_t i = 0; i < ids.size(); ++i) {
        shiftadd_2bit_layers.push_back(
            shiftadd(original[i], examples::hessian_of(hessians, ids[i]), 2));
      }
    }
    return shiftadd_2bit_layers;
  }

  std::vector<llama::linear_id> linears() const {
    std::vector<llama::linear_id> ids;
    for (int layer = 0; layer < model.config().n_layers; ++layer) {
      for (const llama::linear_kind kind : llama::all_linear_kinds) {
        ids.push_back({layer, kind});
      }
    }
    return ids;
  }

  double perplexity() {
    llama::runner r(model);
    const llama::nll_total total = llama::score_windows(r, stream, 512, evaluation_windows);
    return std::exp(total.nll_sum / static_cast<double>(total.tokens));
  }

  /// Perplexity with every linear layer replaced by `quantize(weight, hessian)` (dense).
  template <class Quantize>
  double quantized_perplexity(Quantize quantize) {
    const std::vector<llama::linear_id> ids = linears();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      model.mutable_dense_weight(ids[i]) =
          quantize(original[i], examples::hessian_of(hessians, ids[i]));
    }
    const double ppl = perplexity();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      model.mutable_dense_weight(ids[i]) = original[i];
    }
    return ppl;
  }
};

workbench& shared_workbench() {
  static workbench bench;
  return bench;
}

}  // namespace

TEST_CASE("4-bit ShiftAdd stays within 20 percent of the float32 perplexity", "[shiftadd][real]") {
  workbench& bench = shared_workbench();
  const double fp32 = bench.perplexity();
  const double quantized = bench.quantized_perplexity(
      [](const reparam::matrix<float>& w, const reparam::matrix<double>& h) {
        return sa::reconstruct(shiftadd(w, h, 4));
      });
  CAPTURE(fp32, quantized);
  // Not "a few percent": this 64-wide model loses more at 4 bits than large LLMs do. Measured
  // with the example (32 calibration windows, 20 rounds, 16 evaluation windows): fp32 4.026,
  // 4-bit ShiftAdd (row, group 64) 4.373, +8.6%; with this test's 2 calibration windows, 5
  // rounds and 2 evaluation windows: 4.090 vs 4.612, +12.8% (+10% to +14% over nearby
  // settings). 3-bit RTN is +171% and 2-bit ShiftAdd 6.6x fp32, so the bound still separates.
  CHECK(quantized > fp32 * 0.98);
  CHECK(quantized < fp32 * 1.20);
}

TEST_CASE("2-bit ShiftAdd has a lower perplexity than 2-bit round-to-nearest", "[shiftadd][real]") {
  workbench& bench = shared_workbench();
  std::size_t next = 0;
  const double shiftadd_ppl = bench.quantized_perplexity(
      [&](const reparam::matrix<float>& /*w*/, const reparam::matrix<double>& /*h*/) {
        return sa::reconstruct(bench.shiftadd_2bit()[next++]);
      });
  const double rtn_ppl = bench.quantized_perplexity(
      [](const reparam::matrix<float>& w, const reparam::matrix<double>& /*h*/) {
        return sa::quantize_rtn(w, sa::uniform_params{2, w.cols() % 64 == 0 ? 64 : 0}).dequantize();
      });
  CAPTURE(shiftadd_ppl, rtn_ppl);
  // Measured with the example (16 windows): 26.8 vs 407.
  CHECK(shiftadd_ppl * 4.0 < rtn_ppl);
}

TEST_CASE("a quantized model saved to a file and reloaded computes identical logits",
          "[shiftadd][real]") {
  workbench& bench = shared_workbench();
  const std::vector<llama::linear_id> ids = bench.linears();
  std::map<std::string, sa::binary_coded_matrix> saved;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    saved.emplace(llama::to_string(ids[i]), bench.shiftadd_2bit()[i]);
  }
  const std::string path = runner_test::scratch_path("shiftadd_2bit.safetensors");
  reparam::io::write_binary_coded_file(path, saved, {{"model", "stories260K"}});
  const std::map<std::string, sa::binary_coded_matrix> loaded =
      reparam::io::read_binary_coded_file(path);
  REQUIRE(loaded.size() == ids.size());

  // Logits of a 24-token prefix computed on the packed planes: original vs reloaded matrices.
  const std::vector<int> prompt(bench.stream.begin(), bench.stream.begin() + 24);
  const auto logits_with = [&](const std::map<std::string, sa::binary_coded_matrix>& layers) {
    for (const llama::linear_id id : ids) {
      bench.model.set_linear(
          id, std::make_unique<examples::bcq_linear>(layers.at(llama::to_string(id))));
    }
    llama::runner r(bench.model);
    const reparam::matrix<float> logits = r.prefill(prompt);
    for (const llama::linear_id id : ids) {
      bench.model.reset_linear(id);
    }
    return logits;
  };
  const reparam::matrix<float> expected = logits_with(saved);
  const reparam::matrix<float> actual = logits_with(loaded);
  REQUIRE(actual.rows() == 24);
  REQUIRE(actual.allFinite());
  CHECK(std::memcmp(actual.data(), expected.data(),
                    static_cast<std::size_t>(actual.size()) * sizeof(float)) == 0);
  // And the packed model is not the float32 one (the check above could not pass trivially).
  llama::runner r(bench.model);
  const reparam::matrix<float> fp32 = r.prefill(prompt);
  CHECK((fp32 - actual).cwiseAbs().maxCoeff() > 1e-3f);
}

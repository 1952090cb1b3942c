// SPDX-License-Identifier: Apache-2.0
// Scale reparameterization of the bundled real model (stories260K), end to end through the
// runner: every fold alone leaves the logits unchanged (the oracle is the unfolded model), RepQ-ViT
// with the rounded target zero point reproduces the channel-wise integer codes of the real
// activations exactly while the official mean zero point does not, W8A8 stays near float32, and
// the shift form of P V on real attention probabilities equals the dequantized product.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <reparam/scale/calibrate.hpp>
#include <reparam/scale/fold.hpp>
#include <reparam/scale/log_quantizer.hpp>
#include <reparam/scale/quantizer.hpp>
#include <reparam/scale/reparameterize.hpp>

#include "common/scale_workbench.hpp"
#include "common/text_split.hpp"
#include "runner/eval.hpp"
#include "runner_fixture.hpp"

namespace {

namespace sc = reparam::scale;
using examples::scale_method;

// 2 calibration windows from the end of the paragraph stream, 2 evaluation windows from its start.
constexpr reparam::index calibration_windows = 2;
constexpr reparam::index evaluation_windows = 2;
constexpr reparam::index window = 512;

struct workbench {
  llama::model fp32 = llama::load_model(runner_test::model_bin);
  std::vector<int> stream = llama::paragraph_stream(
      runner_test::tok512(), llama::read_text_file(runner_test::valid_head_txt),
      (calibration_windows + evaluation_windows + 8) * window);
  std::vector<std::vector<int>> calibration =
      examples::tail_windows(stream, calibration_windows, window, evaluation_windows* window + 1);
  examples::calibration_data calib = examples::capture_calibration(fp32, calibration);

  std::vector<int> eval_window() const { return {stream.begin(), stream.begin() + window}; }
  double perplexity(const llama::model& m) const {
    llama::runner r(m, window);
    const std::vector<int> head(stream.begin(), stream.begin() + evaluation_windows * window + 1);
    const llama::nll_total t = llama::score_windows(r, head, window, evaluation_windows);
    return std::exp(t.nll_sum / static_cast<double>(t.tokens));
  }
};

workbench& bench() {
  static workbench w;
  return w;
}

reparam::matrix<float> logits(const llama::model& m, const std::vector<int>& tokens) {
  llama::runner r(m, window);
  return r.prefill(tokens);
}

}  // namespace

TEST_CASE("every scale fold alone leaves the real model's logits unchanged", "[scale][real]") {
  workbench& w = bench();
  const std::vector<int> tokens = w.eval_window();
  const reparam::matrix<float> reference = logits(w.fp32, tokens);
  const double scale = static_cast<double>(reference.cwiseAbs().maxCoeff());
  for (const scale_method method :
       {scale_method::gain_fold, scale_method::smoothquant, scale_method::omniquant_init,
        scale_method::awq, scale_method::repq_vit, scale_method::repq_vit_official}) {
    llama::model m = llama::load_model(runner_test::model_bin);
    const examples::recipe_report report =
        examples::apply_scale_recipe(m, w.calib, method, {0, 0}, window);
    const double diff = static_cast<double>((logits(m, tokens) - reference).cwiseAbs().maxCoeff());
    CAPTURE(examples::method_name(method), diff, scale);
    CHECK(report.folds == 2 * m.config().n_layers);
    CHECK(report.pair_folds ==
          (method == scale_method::awq || method == scale_method::omniquant_init
               ? m.config().n_layers
               : 0));
    // Float rounding only: each folded weight and norm parameter is within half an ulp of its
    // exact value, which moves logits of magnitude ~10-20 by ~1e-5 through 5 blocks; 1e-4 of the
    // largest logit leaves a margin of ~10x and fails on any inexact fold (a wrong bias or a
    // missed consumer changes logits by O(1)).
    CHECK(diff <= 1e-4 * scale);
  }
}

TEST_CASE("a fold that misses one consumer changes the real model's logits", "[scale][real]") {
  workbench& w = bench();
  const std::vector<int> tokens = w.eval_window();
  llama::model m = llama::load_model(runner_test::model_bin);
  // SmoothQuant at layer 0's attention norm, folded into wq and wk but not wv.
  const auto x = w.calib.input(0, 0);
  std::vector<const reparam::matrix<float>*> weights;
  std::vector<sc::linear> consumers;
  for (const auto kind : {llama::linear_kind::wq, llama::linear_kind::wk}) {
    consumers.push_back({m.dense_weight({0, kind}), {}});
  }
  for (const auto& c : consumers) weights.push_back(&c.weight);
  const sc::channel_affine affine =
      sc::smoothquant_affine(x.cwiseAbs().colwise().maxCoeff().transpose(), weights, 0.5);
  sc::norm_affine norm{m.rms_att().row(0).transpose(), {}};
  const sc::folded_norm_block folded = sc::fold_channel_affine(norm, consumers, affine);
  m.mutable_rms_att().row(0) = folded.norm.gain.transpose();
  m.mutable_dense_weight({0, llama::linear_kind::wq}) = folded.consumers[0].weight;
  m.mutable_dense_weight({0, llama::linear_kind::wk}) = folded.consumers[1].weight;
  const reparam::matrix<float> reference = logits(w.fp32, tokens);
  const double diff = static_cast<double>((logits(m, tokens) - reference).cwiseAbs().maxCoeff());
  CAPTURE(diff);
  CHECK(diff > 1e-2 * static_cast<double>(reference.cwiseAbs().maxCoeff()));
}

TEST_CASE("RepQ-ViT with a rounded zero point keeps the real activations' integer codes",
          "[scale][real]") {
  workbench& w = bench();
  for (const int slot : {0, 2}) {  // the inputs after rms_att and rms_ffn
    const reparam::matrix<float>& x = w.calib.input(1, slot);
    sc::uniform_spec spec;
    spec.bits = 4;
    spec.axis = sc::granularity::per_column;
    const sc::uniform_quantizer channel = sc::calibrate_percentile(x, spec);
    sc::code_matrix expected(x.rows(), x.cols());
    sc::quantize(x, channel, expected);
    for (const bool is_rounded : {true, false}) {
      const sc::repq_result r = sc::repq_vit_reparameterize(channel, is_rounded);
      // x' = (x - t) / r in double, as the folded norm computes it up to float rounding.
      reparam::matrix<double> folded(x.rows(), x.cols());
      for (reparam::index c = 0; c < x.cols(); ++c) {
        folded.col(c) = (x.col(c).cast<double>().array() - r.affine.shift(c)) / r.affine.scale(c);
      }
      // Compare in x's units: the layer-wise fake-quantized x' mapped back through the fold,
      // r x_hat' + t, against the channel-wise dequantized codes. A different code moves an
      // entry by a whole step scale_c, so a quarter step separates "same code" from rounding.
      reparam::matrix<double> folded_hat(x.rows(), x.cols());
      sc::fake_quantize(folded, r.layer_quantizer, folded_hat);
      reparam::matrix<float> channel_hat(x.rows(), x.cols());
      sc::dequantize(expected, channel, channel_hat);
      reparam::index mismatches = 0;
      for (reparam::index t = 0; t < x.rows(); ++t) {
        for (reparam::index c = 0; c < x.cols(); ++c) {
          const double back = folded_hat(t, c) * r.affine.scale(c) + r.affine.shift(c);
          const double step = static_cast<double>(channel.scale(c));
          mismatches += std::abs(back - static_cast<double>(channel_hat(t, c))) > 0.25 * step;
        }
      }
      CAPTURE(slot, is_rounded, mismatches, x.size());
      if (is_rounded) {
        // And the integer codes themselves: the layer-wise codes of x' are the channel-wise
        // codes of x.
        sc::code_matrix codes(x.rows(), x.cols());
        sc::quantize(folded, r.layer_quantizer, codes);
        CHECK((codes.array() != expected.array()).count() == 0);
        CHECK(mismatches == 0);
      } else {
        // The official non-integer mean zero point shifts every code boundary: a documented,
        // measured difference, not a rounding accident.
        CHECK(mismatches > x.size() / 100);
      }
    }
  }
}

TEST_CASE("W8A8 static quantization of the real model stays near float32", "[scale][real]") {
  workbench& w = bench();
  const double fp32 = w.perplexity(w.fp32);
  for (const scale_method method :
       {scale_method::rtn, scale_method::smoothquant, scale_method::repq_vit}) {
    llama::model m = llama::load_model(runner_test::model_bin);
    examples::apply_scale_recipe(m, w.calib, method, {8, 8}, window);
    const double ppl = w.perplexity(m);
    CAPTURE(examples::method_name(method), ppl, fp32);
    CHECK(ppl < 1.05 * fp32);
    CHECK(ppl > 0.95 * fp32);
  }
}

TEST_CASE("the shift form of P V on real attention probabilities equals the dequantized product",
          "[scale][real]") {
  workbench& w = bench();
  const llama::model_config& config = w.fp32.config();
  const reparam::index head_size = config.head_size();
  const examples::attention_operands ops =
      examples::capture_attention(w.fp32, w.calibration.front(), /*layer=*/0, /*head=*/0);
  const reparam::matrix<float>& p = ops.probabilities;
  const reparam::matrix<float>& v = ops.values;
  REQUIRE(p.rows() == window);
  REQUIRE(v.rows() == window);
  REQUIRE(v.cols() == head_size);

  sc::log_quantizer spec;  // log-sqrt2, 4 bits, extra zero (RepQ-ViT)
  const sc::log_quantizer q = sc::calibrate_log(p, spec);
  sc::log_code_matrix codes(p.rows(), p.cols());
  sc::encode(p, q, codes);
  sc::uniform_spec vs;
  vs.bits = 8;
  const sc::uniform_quantizer vq = sc::calibrate_minmax(v, vs);
  sc::code_matrix v_codes(v.rows(), v.cols());
  sc::quantize(v, vq, v_codes);
  const Eigen::Matrix<std::int16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> centred =
      (v_codes.array() - static_cast<std::int32_t>(vq.zero_point(0))).cast<std::int16_t>();
  const reparam::matrix<float> shift = sc::multiply_shift_form(codes, q, centred, vq.scale(0));
  // Oracle: the dequantized operands multiplied in double, entry by entry from the quantizer
  // definitions (level q -> scale 2^(-q/2), code -> scale (v - z)).
  double max_diff = 0.0;
  double max_abs = 0.0;
  for (reparam::index i = 0; i < window; ++i) {
    for (reparam::index c = 0; c < head_size; ++c) {
      double sum = 0.0;
      for (reparam::index j = 0; j < window; ++j) {
        const int level = codes(i, j);
        if (level == q.zero_code()) continue;
        const double p_hat =
            static_cast<double>(q.scale) * std::pow(2.0, -0.5 * static_cast<double>(level));
        sum += p_hat * static_cast<double>(vq.scale(0)) * static_cast<double>(centred(j, c));
      }
      max_diff = std::max(max_diff, std::abs(static_cast<double>(shift(i, c)) - sum));
      max_abs = std::max(max_abs, std::abs(sum));
    }
  }
  CAPTURE(max_diff, max_abs);
  // One float rounding of each output (<= 2^-24 relative) plus the double combine: 1e-6 of the
  // largest output is a ~16x margin over the float rounding.
  CHECK(max_diff <= 1e-6 * max_abs);
  CHECK(max_abs > 0.0);
}

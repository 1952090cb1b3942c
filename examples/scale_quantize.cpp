// SPDX-License-Identifier: Apache-2.0
// The scale-reparameterization accuracy table on the bundled real model (llama2.c stories260K):
// quantizes the weights and the activations (the input of every linear) at W8A8, W4A8 and W4A4
// with plain calibrators and with each fold/initialiser of reparam::scale (RMSNorm gain fold,
// SmoothQuant, AWQ, OmniQuant's LET init, RepQ-ViT), calibrated on the end of the TinyStories
// paragraph stream and evaluated on its disjoint start. Also checks that every fold alone leaves
// the model's perplexity unchanged, compares uniform, log2 and log-sqrt2 quantizers for the
// attention probabilities, and runs RepQ-ViT's shift form of the probability-value product on
// real attention data. --json writes the same records.
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/scale/calibrate.hpp>
#include <reparam/scale/log_quantizer.hpp>
#include <reparam/scale/quantizer.hpp>

#include "common/cli.hpp"
#include "common/results.hpp"
#include "common/scale_workbench.hpp"
#include "common/text_split.hpp"
#include "runner/eval.hpp"

namespace {

namespace sc = reparam::scale;
using clock_type = std::chrono::steady_clock;
using examples::scale_method;

constexpr reparam::index window_size = 512;  // the paragraph-stream protocol's window

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

struct options {
  std::string data_dir = REPARAM_DATA_DIR;
  std::string model_path;  // default: <data>/llama2c_stories260K/stories260K.bin
  std::string json_path;
  long eval_windows = 16;
  long calib_windows = 8;
};

struct context {
  options opts;
  std::vector<int> eval_stream;  // the first eval_windows * 512 + 1 tokens
  std::vector<std::vector<int>> calibration;
  examples::calibration_data calib;
  double fp32_ppl = 0.0;
  examples::results results;
};

double perplexity(const llama::model& m, const context& ctx,
                  const examples::probability_quantizer& p = {}) {
  llama::runner r(m, window_size);
  examples::set_probability_quantizer(r, p);
  const llama::nll_total total =
      llama::score_windows(r, ctx.eval_stream, window_size, ctx.opts.eval_windows);
  return std::exp(total.nll_sum / static_cast<double>(total.tokens));
}

llama::model load(const context& ctx) { return llama::load_model(ctx.opts.model_path); }

/// Largest |logit difference| between two models over the first evaluation window.
double max_logit_difference(const llama::model& a, const llama::model& b, const context& ctx) {
  llama::runner ra(a, window_size);
  llama::runner rb(b, window_size);
  const std::vector<int> window(ctx.eval_stream.begin(), ctx.eval_stream.begin() + window_size);
  const reparam::matrix<float> la = ra.prefill(window);
  const reparam::matrix<float> lb = rb.prefill(window);
  return static_cast<double>((la - lb).cwiseAbs().maxCoeff());
}

const std::vector<scale_method> folding_methods = {
    scale_method::gain_fold,      scale_method::smoothquant, scale_method::awq,
    scale_method::omniquant_init, scale_method::repq_vit,    scale_method::repq_vit_official};

// --- sections ------------------------------------------------------------------------------------

void section_folds(context& ctx) {
  const llama::model fp32 = load(ctx);
  for (const scale_method method : folding_methods) {
    llama::model m = load(ctx);
    const auto report = examples::apply_scale_recipe(m, ctx.calib, method, {0, 0}, window_size);
    const double ppl = perplexity(m, ctx);
    ctx.results.add({{"section", "folds"},
                     {"method", examples::method_name(method)},
                     {"norm_folds", report.folds},
                     {"linear_pair_folds", report.pair_folds},
                     {"norm_bias", report.has_norm_bias},
                     {"ppl", ppl},
                     {"ppl_rel_change", ppl / ctx.fp32_ppl - 1.0},
                     {"max_logit_diff", max_logit_difference(fp32, m, ctx)}});
  }
}

void section_accuracy(context& ctx) {
  const std::vector<scale_method> methods = {scale_method::rtn,
                                             scale_method::rtn_percentile_act,
                                             scale_method::dynamic_per_token,
                                             scale_method::percentile,
                                             scale_method::mse,
                                             scale_method::gain_fold,
                                             scale_method::smoothquant,
                                             scale_method::awq,
                                             scale_method::omniquant_init,
                                             scale_method::channelwise,
                                             scale_method::repq_vit,
                                             scale_method::repq_vit_official};
  const std::vector<examples::quant_scheme> schemes = {{8, 8}, {4, 8}, {4, 4}};
  ctx.results.add({{"section", "accuracy"},
                   {"method", "fp32"},
                   {"scheme", "-"},
                   {"bits", 32},
                   {"act_bits", 32},
                   {"static_act", true},
                   {"ppl", ctx.fp32_ppl},
                   {"seconds", 0.0}});
  for (const auto& scheme : schemes) {
    for (const scale_method method : methods) {
      const auto start = clock_type::now();
      llama::model m = load(ctx);
      examples::apply_scale_recipe(m, ctx.calib, method, scheme, window_size);
      const double seconds = seconds_since(start);
      const double ppl = perplexity(m, ctx);
      ctx.results.add({{"section", "accuracy"},
                       {"method", examples::method_name(method)},
                       {"scheme", "W" + std::to_string(scheme.weight_bits) + "A" +
                                      std::to_string(scheme.act_bits)},
                       {"bits", scheme.weight_bits},
                       {"act_bits", scheme.act_bits},
                       {"static_act", method != scale_method::dynamic_per_token &&
                                          method != scale_method::channelwise},
                       {"ppl", ppl},
                       {"seconds", seconds}});
      std::cerr << '.' << std::flush;
    }
  }
  std::cerr << '\n';
}

/// Quantizers for the attention probabilities, calibrated on the captured probabilities; the
/// rest of the model stays fp32.
void section_probabilities(context& ctx) {
  const llama::model m = load(ctx);
  const auto& values = ctx.calib.probabilities;
  const reparam::matrix<float> samples =
      reparam::row_major_map(values.data(), 1, static_cast<reparam::index>(values.size()));
  struct row {
    std::string name;
    int bits;
    examples::probability_quantizer q;
  };
  std::vector<row> rows;
  for (const int bits : {4, 3}) {
    sc::uniform_spec u;
    u.bits = bits;
    u.axis = sc::granularity::per_tensor;
    rows.push_back({"uniform min-max", bits, sc::calibrate_minmax(samples, u)});
    sc::log_quantizer fixed;
    fixed.base = sc::log_base::two;
    fixed.bits = bits;
    fixed.scale = 1.0f;
    rows.push_back({"log2, scale 1 (FQ-ViT)", bits, fixed});
    for (const auto base : {sc::log_base::two, sc::log_base::sqrt2}) {
      for (const auto zeros : {sc::zero_policy::extra_zero, sc::zero_policy::reserve_top_code}) {
        sc::log_quantizer spec;
        spec.base = base;
        spec.bits = bits;
        spec.zeros = zeros;
        std::string name = base == sc::log_base::two ? "log2" : "log-sqrt2";
        name += zeros == sc::zero_policy::extra_zero ? ", extra zero" : ", reserved zero code";
        rows.push_back({name + ", calibrated", bits, sc::calibrate_log(samples, spec)});
      }
    }
  }
  for (const row& r : rows) {
    float scale = 0.0f;
    if (const auto* l = std::get_if<sc::log_quantizer>(&r.q)) scale = l->scale;
    if (const auto* u = std::get_if<sc::uniform_quantizer>(&r.q)) scale = u->scale(0);
    ctx.results.add({{"section", "probabilities"},
                     {"method", r.name},
                     {"bits", r.bits},
                     {"scale", static_cast<double>(scale)},
                     {"ppl", perplexity(m, ctx, r.q)}});
  }
}

/// RepQ-ViT's shift form on real data: the probabilities of layer 0, head 0 over the first
/// calibration window (log-sqrt2 codes) times the values of its KV head (8-bit codes), computed
/// by reparam::scale::multiply_shift_form and by the dequantized float product.
void section_shift_form(context& ctx) {
  const llama::model m = load(ctx);
  const examples::attention_operands ops =
      examples::capture_attention(m, ctx.calibration.front(), /*layer=*/0, /*head=*/0);
  const reparam::matrix<float>& p = ops.probabilities;
  const reparam::matrix<float>& v = ops.values;
  for (const int bits : {4, 3}) {
    sc::log_quantizer spec;
    spec.base = sc::log_base::sqrt2;
    spec.bits = bits;
    const sc::log_quantizer q = sc::calibrate_log(p, spec);
    sc::log_code_matrix codes(p.rows(), p.cols());
    sc::encode(p, q, codes);
    sc::uniform_spec vs;
    vs.bits = 8;
    vs.axis = sc::granularity::per_tensor;
    const sc::uniform_quantizer vq = sc::calibrate_minmax(v, vs);
    sc::code_matrix v_codes(v.rows(), v.cols());
    sc::quantize(v, vq, v_codes);
    const Eigen::Matrix<std::int16_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> centred =
        (v_codes.array() - static_cast<std::int32_t>(vq.zero_point(0))).cast<std::int16_t>();
    const auto start = clock_type::now();
    const reparam::matrix<float> shift = sc::multiply_shift_form(codes, q, centred, vq.scale(0));
    const double seconds = seconds_since(start);
    // The dequantized product in double.
    reparam::matrix<float> p_hat(p.rows(), p.cols());
    sc::decode(codes, q, p_hat);
    reparam::matrix<float> v_hat(v.rows(), v.cols());
    sc::dequantize(v_codes, vq, v_hat);
    const reparam::matrix<double> dense = p_hat.cast<double>() * v_hat.cast<double>();
    const reparam::matrix<double> fp32 = p.cast<double>() * v.cast<double>();
    ctx.results.add(
        {{"section", "shift form"},
         {"method", "log-sqrt2 P x int8 V (layer 0, head 0)"},
         {"bits", bits},
         {"max_abs_diff_vs_dequantized", (shift.cast<double>() - dense).cwiseAbs().maxCoeff()},
         {"max_abs_out", dense.cwiseAbs().maxCoeff()},
         {"rel_error_vs_fp32", (dense - fp32).norm() / fp32.norm()},
         {"seconds", seconds}});
  }
}

void print_report(const context& ctx) {
  std::cout << "reparam scale: activation and weight quantization of llama2.c stories260K\n"
            << "evaluation: the first " << ctx.opts.eval_windows
            << " windows of 512 tokens of tinystories_valid_head.txt; calibration: its last "
            << ctx.opts.calib_windows << " windows (disjoint)\n"
            << "fp32 ppl " << ctx.fp32_ppl << "\n\n"
            << "Folds alone (no quantization): the function must not change\n";
  ctx.results.print(std::cout, "folds");
  std::cout << "\nAccuracy: every linear's weights (per output row, asymmetric) and input "
               "(per tensor, static, asymmetric unless noted). Weights: min-max unless the method "
               "searches; activations: min-max for RTN, the percentile search otherwise\n";
  ctx.results.print(std::cout, "accuracy");
  std::cout << "\nAttention probabilities quantized (everything else fp32)\n";
  ctx.results.print(std::cout, "probabilities");
  std::cout << "\nRepQ-ViT shift form of P V on real attention data\n";
  ctx.results.print(std::cout, "shift form");
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);
  options opts;
  examples::cli cli(
      "reparam_scale_quantize",
      "Quantizes weights and activations of the bundled llama2.c stories260K at W8A8, W4A8 and\n"
      "W4A4 with plain calibrators and with the scale folds (RMSNorm gain, SmoothQuant, AWQ,\n"
      "OmniQuant LET init, RepQ-ViT), and prints perplexity tables.");
  cli.add_option("--data", &opts.data_dir, "DIR",
                 "data directory with llama2c_stories260K/ and tinystories_text/");
  cli.add_option("--model", &opts.model_path, "FILE",
                 "checkpoint (default: DIR/llama2c_stories260K/stories260K.bin)");
  cli.add_option("--json", &opts.json_path, "FILE", "also write the results as a JSON list");
  cli.add_option("--windows", &opts.eval_windows, "N",
                 "evaluation windows of 512 tokens from the start of tinystories_valid_head.txt");
  cli.add_option("--calib-windows", &opts.calib_windows, "N",
                 "calibration windows of 512 tokens from the end of tinystories_valid_head.txt");
  if (const int code = cli.parse(argc, argv, std::cout, std::cerr);
      code != examples::cli::proceed) {
    return code;
  }
  if (opts.model_path.empty()) {
    opts.model_path = opts.data_dir + "/llama2c_stories260K/stories260K.bin";
  }
  if (opts.eval_windows < 1 || opts.calib_windows < 1) {
    std::cerr << "reparam_scale_quantize: window counts must be >= 1\n";
    return 2;
  }
  try {
    const auto total_start = clock_type::now();
    context ctx;
    ctx.opts = opts;
    const llama::model fp32 = load(ctx);
    const llama::tokenizer tok = llama::tokenizer::load(
        opts.data_dir + "/llama2c_stories260K/tok512.bin", fp32.config().vocab_size);
    const std::string valid_text =
        llama::read_text_file(opts.data_dir + "/tinystories_text/tinystories_valid_head.txt");
    const std::vector<int> stream = llama::paragraph_stream(tok, valid_text);
    const auto eval_tokens = static_cast<reparam::index>(opts.eval_windows * window_size + 1);
    ctx.calibration = examples::tail_windows(stream, opts.calib_windows, window_size, eval_tokens);
    ctx.eval_stream.assign(stream.begin(), stream.begin() + eval_tokens);
    ctx.calib = examples::capture_calibration(fp32, ctx.calibration);
    ctx.fp32_ppl = perplexity(fp32, ctx);
    std::cerr << "fp32 ppl " << ctx.fp32_ppl << "; running the table";
    section_folds(ctx);
    section_accuracy(ctx);
    section_probabilities(ctx);
    section_shift_form(ctx);
    print_report(ctx);
    std::cout << "\ntotal " << seconds_since(total_start) << " s\n";
    if (!opts.json_path.empty()) {
      ctx.results.write_json(opts.json_path);
      std::cout << "wrote " << ctx.results.records().size() << " records to " << opts.json_path
                << '\n';
    }
  } catch (const std::exception& e) {
    std::cerr << "reparam_scale_quantize: " << e.what() << '\n';
    return 1;
  }
  return 0;
}

// SPDX-License-Identifier: Apache-2.0
// The main demo: runs the reference workbench on the bundled real model (llama2.c stories260K)
// and prints one section per family: the model, the float32 baseline perplexity on the two
// bundled TinyStories texts, forward speed and generated stories. --json writes the same records.
// Later families add their own section functions next to section_baseline.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/gptq.hpp>
#include <reparam/shiftadd/multiply.hpp>
#include <reparam/shiftadd/uniform.hpp>
#include <reparam/unlearn/ablation.hpp>
#include <reparam/unlearn/subspace.hpp>

#include "common/cli.hpp"
#include "common/concept_erasure.hpp"
#include "common/resnet.hpp"
#include "common/results.hpp"
#include "common/scale_workbench.hpp"
#include "common/shiftadd_workbench.hpp"
#include "common/soft_thinking.hpp"
#include "runner/eval.hpp"

namespace {

struct options {
  std::string data_dir = REPARAM_DATA_DIR;
  std::string model_path;  // default: <data>/llama2c_stories260K/stories260K.bin
  std::string json_path;
  long windows = 16;
  long steps = 200;
  float temperature = 1.0f;
  float top_p = 0.9f;
  std::uint64_t seed = 42;
  double min_seconds = 0.25;
};

struct context {
  options opts;
  llama::model model;
  llama::tokenizer tok;
  std::string sample_text;      // tinystories_sample_cs336.txt
  std::string valid_head_text;  // tinystories_valid_head.txt
  examples::results results;
};

std::string shape_text(std::initializer_list<long> dims) {
  std::string text = "[";
  for (const long d : dims) text += (text.size() > 1 ? ", " : "") + std::to_string(d);
  return text + "]";
}

void print_header(const std::string& section, const std::string& title) {
  std::cout << "\n== " << section << ": " << title << " ==\n";
}

// --- sections ------------------------------------------------------------------------------------

void section_model(context& ctx) {
  const llama::model_config& c = ctx.model.config();
  print_header("model", ctx.opts.model_path);
  ctx.results.add({{"section", "model"},
                   {"metric", "config"},
                   {"dim", c.dim},
                   {"hidden_dim", c.hidden_dim},
                   {"n_layers", c.n_layers},
                   {"n_heads", c.n_heads},
                   {"n_kv_heads", c.n_kv_heads},
                   {"head_size", c.head_size()},
                   {"vocab_size", c.vocab_size},
                   {"seq_len", c.seq_len},
                   {"parameters", ctx.model.parameter_count()}});
  ctx.results.print(std::cout, "model");

  // The tensors in llama2.c's order, with their stacked shapes.
  examples::results tensors;
  const long layers = c.n_layers;
  const auto add = [&](const char* name, std::initializer_list<long> dims) {
    long count = 1;
    for (const long d : dims) count *= d;
    tensors.add({{"tensor", name}, {"shape", shape_text(dims)}, {"parameters", count}});
  };
  add("token_embedding", {c.vocab_size, c.dim});
  add("rms_att", {layers, c.dim});
  for (const llama::linear_kind kind : llama::all_linear_kinds) {
    if (kind == llama::linear_kind::w1) add("rms_ffn", {layers, c.dim});
    const llama::linear_shape s = llama::shape_of(c, kind);
    add(llama::kind_name(kind), {layers, s.rows, s.cols});
  }
  add("rms_final", {c.dim});
  std::cout << '\n';
  tensors.print(std::cout);
  std::cout << "classifier: tied to token_embedding; " << ctx.model.parameter_count()
            << " parameters\n";
}

void section_baseline(context& ctx) {
  print_header("baseline", "float32 perplexity on the bundled TinyStories text");
  llama::runner r(ctx.model);
  const auto record = [&](const char* data, const llama::perplexity_result& p, double ref_ppl) {
    ctx.results.add({{"section", "baseline"},
                     {"metric", "ppl"},
                     {"data", data},
                     {"protocol", p.protocol},
                     {"sequences", p.sequences},
                     {"windows", p.windows},
                     {"tokens", p.tokens},
                     {"nll", p.mean_nll},
                     {"ppl", p.ppl},
                     {"reference_ppl", ref_ppl > 0.0 ? examples::record(ref_ppl) : nullptr}});
  };
  record("tinystories_sample_cs336", llama::perplexity_stories(r, ctx.tok, ctx.sample_text), 3.548);
  const auto stream =
      llama::perplexity_paragraph_stream(r, ctx.tok, ctx.valid_head_text, ctx.opts.windows);
  // The README's numbers for the window counts it lists (752 windows is the whole file).
  const long windows = ctx.opts.windows;
  const double ref = windows == 16           ? 4.026
                     : windows == 64         ? 4.078
                     : stream.windows == 752 ? 5.354
                                             : -1.0;
  record("tinystories_valid_head", stream, ref);
  ctx.results.print(std::cout, "baseline");
  std::cout << "protocols: stories = each story [BOS]+encode(story); paragraph_stream = "
               "[BOS]+encode(paragraph) concatenated, windows of 512 inputs\n";
}

void section_speed(context& ctx) {
  print_header("speed", "forward pass, dense Eigen layers, 1 thread");
  llama::runner r(ctx.model);
  const std::vector<int> stream = llama::paragraph_stream(ctx.tok, ctx.valid_head_text, 512);
  const std::vector<int> window(stream.begin(), stream.begin() + 512);
  const llama::forward_speed speed =
      llama::measure_forward_speed(r, window, ctx.model.config().seq_len, ctx.opts.min_seconds);
  const auto record = [&](const char* metric, long tokens, double seconds, const char* note) {
    ctx.results.add({{"section", "speed"},
                     {"metric", metric},
                     {"tokens", tokens},
                     {"seconds", seconds},
                     {"value", static_cast<double>(tokens) / seconds},
                     {"threads", Eigen::nbThreads()},
                     {"note", note}});
  };
  record("prefill_tokens_per_s", speed.prefill_tokens, speed.prefill_seconds,
         "512-token windows, all logits");
  record("decode_tokens_per_s", speed.decode_tokens, speed.decode_seconds,
         "1 token per step, positions 0-511");
  ctx.results.print(std::cout, "speed");
}

void section_generate(context& ctx) {
  print_header("generate", "stories from BOS");
  llama::runner r(ctx.model);
  const auto run = [&](const char* metric, const llama::sampler_params& params) {
    const std::vector<int> tokens = llama::generate(r, {llama::bos_token}, ctx.opts.steps, params);
    const std::string text = ctx.tok.decode(tokens);
    ctx.results.add({{"section", "generate"},
                     {"metric", metric},
                     {"temperature", params.temperature},
                     {"top_p", params.top_p},
                     {"seed", params.seed},
                     {"tokens", static_cast<long>(tokens.size()) - 1},
                     {"text", text}});
    std::cout << "\n-- " << metric << " (temperature " << params.temperature << ", top_p "
              << params.top_p << ", seed " << params.seed << ", " << tokens.size() - 1
              << " tokens)\n"
              << text << '\n';
  };
  run("greedy", {0.0f, 0.0f, 0});
  run("sampled", {ctx.opts.temperature, ctx.opts.top_p, ctx.opts.seed});
}

/// The fitted ShiftAdd model on the lookup-table kernels: perplexity in both modes (lossless
/// equals the scalar reference bit for bit; fast uses int8 tables) and forward speed against the
/// dense fp32 layers and the scalar reference, 1 thread.
void section_shiftadd_kernels(context& ctx,
                              const std::vector<reparam::shiftadd::binary_coded_matrix>& weights) {
  namespace sa = reparam::shiftadd;
  print_header("shiftadd kernels",
               "3-bit ShiftAdd model on the LUT kernels vs dense fp32, 1 thread");
  const int n_layers = ctx.model.config().n_layers;
  const std::vector<int> stream = llama::paragraph_stream(ctx.tok, ctx.valid_head_text, 512);
  const std::vector<int> window(stream.begin(), stream.begin() + 512);
  const auto install = [&](const auto& make) {
    std::size_t next = 0;
    for (int layer = 0; layer < n_layers; ++layer) {
      for (const llama::linear_kind kind : llama::all_linear_kinds) {
        if (weights.empty()) {
          ctx.model.reset_linear({layer, kind});
        } else {
          ctx.model.set_linear({layer, kind}, make(weights[next]));
        }
        ++next;
      }
    }
  };
  const auto reset = [&] {
    for (int layer = 0; layer < n_layers; ++layer) {
      for (const llama::linear_kind kind : llama::all_linear_kinds) {
        ctx.model.reset_linear({layer, kind});
      }
    }
  };
  double dense_decode = 0.0;
  double dense_prefill = 0.0;
  double lossless_ppl = 0.0;
  const auto measure = [&](const char* engine, const char* path, bool score) {
    llama::runner r(ctx.model);
    double ppl = 0.0;
    if (score) {
      ppl =
          llama::perplexity_paragraph_stream(r, ctx.tok, ctx.valid_head_text, ctx.opts.windows).ppl;
    }
    const llama::forward_speed speed =
        llama::measure_forward_speed(r, window, ctx.model.config().seq_len, ctx.opts.min_seconds);
    if (dense_decode == 0.0) {
      dense_decode = speed.decode_tokens_per_s();
      dense_prefill = speed.prefill_tokens_per_s();
    }
    examples::record rec{{"section", "shiftadd_kernels"},
                         {"engine", engine},
                         {"kernel_path", path},
                         {"prefill_tokens_per_s", speed.prefill_tokens_per_s()},
                         {"decode_tokens_per_s", speed.decode_tokens_per_s()},
                         {"prefill_vs_dense", speed.prefill_tokens_per_s() / dense_prefill},
                         {"decode_vs_dense", speed.decode_tokens_per_s() / dense_decode}};
    if (score) {
      rec["ppl"] = ppl;
      if (lossless_ppl == 0.0) {
        lossless_ppl = ppl;
      }
      rec["ppl_vs_lossless_percent"] = (ppl / lossless_ppl - 1.0) * 100.0;
    }
    ctx.results.add(std::move(rec));
  };
  const std::string best = reparam::kernels::lut_path_name(sa::best_path());
  reset();
  measure("dense fp32 (Eigen)", "eigen", false);
  install(
      [](const sa::binary_coded_matrix& w) { return std::make_unique<examples::bcq_linear>(w); });
  measure("ShiftAdd, scalar reference", "reference", false);
  install([](const sa::binary_coded_matrix& w) {
    return std::make_unique<examples::lut_linear>(w, sa::lut_mode::lossless);
  });
  measure("ShiftAdd, LUT lossless", best.c_str(), true);
  install([](const sa::binary_coded_matrix& w) {
    return std::make_unique<examples::lut_linear>(w, sa::lut_mode::fast);
  });
  measure("ShiftAdd, LUT fast (int8 tables)", best.c_str(), true);
  install([](const sa::binary_coded_matrix& w) {
    return std::make_unique<examples::lut_linear>(w, sa::lut_mode::fast, 1, sa::scale_storage::f16);
  });
  measure("ShiftAdd, LUT fast, fp16 scales", best.c_str(), true);
  reset();
  ctx.results.print(std::cout, "shiftadd_kernels");
  std::cout
      << "\nlossless equals the scalar reference bit for bit (same perplexity); the model is "
         "tiny (dim 64), so per-call overheads dominate its speed: bench_shiftadd_lut has the "
         "kernel ratios at 4096x14336\n";
}

void section_shiftadd(context& ctx) {
  print_header("shiftadd", "3-bit binary-coded weights (ShiftAddLLM) vs 3-bit round-to-nearest");
  namespace sa = reparam::shiftadd;
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const int n_layers = ctx.model.config().n_layers;
  // Calibration on the last 32 windows of the paragraph stream, disjoint from the scored ones.
  const std::vector<int> stream = llama::paragraph_stream(ctx.tok, ctx.valid_head_text);
  const long scored = ctx.opts.windows < 0 ? 0 : ctx.opts.windows * 512 + 1;
  const std::vector<reparam::matrix<double>> hessians = examples::calibrate_hessians(
      ctx.model, examples::tail_windows(stream, 32, 512, scored), 0, n_layers);

  reparam::index linear_weights = 0;
  std::vector<reparam::matrix<float>> original;
  for (int layer = 0; layer < n_layers; ++layer) {
    for (const llama::linear_kind kind : llama::all_linear_kinds) {
      original.push_back(ctx.model.dense_weight({layer, kind}));
      linear_weights += original.back().size();
    }
  }
  const auto other_bytes = (ctx.model.parameter_count() - linear_weights) * 4;

  // Every linear layer at 3 bits, groups of 64 inputs per output row (w2, with 172 inputs: whole
  // rows). Perplexity with the dense reconstruction; the ShiftAdd story is generated on the
  // packed sign planes (reference multiply, examples::bcq_linear).
  std::vector<examples::record> stories;
  std::vector<sa::binary_coded_matrix> shiftadd_weights;
  const auto run = [&](const char* method, const char* scales, bool is_shiftadd) {
    std::size_t linear_bytes = 0;
    std::vector<sa::binary_coded_matrix> packed;
    for (int layer = 0; layer < n_layers; ++layer) {
      for (const llama::linear_kind kind : llama::all_linear_kinds) {
        const llama::linear_id id{layer, kind};
        const reparam::matrix<float>& weight =
            original[static_cast<std::size_t>(layer * llama::linear_kind_count) +
                     static_cast<std::size_t>(kind)];
        const reparam::index group = weight.cols() % 64 == 0 ? 64 : 0;
        if (is_shiftadd) {
          sa::shiftadd_params params;
          params.bcq.bits = 3;
          params.group_size = group;
          packed.push_back(
              sa::quantize_shiftadd(weight, examples::hessian_of(hessians, id), params));
          linear_bytes += packed.back().packed_size();
          ctx.model.mutable_dense_weight(id) = sa::reconstruct(packed.back());
        } else {
          const sa::uniform_matrix q = sa::quantize_rtn(weight, sa::uniform_params{3, group});
          linear_bytes += q.packed_size();
          ctx.model.mutable_dense_weight(id) = q.dequantize();
        }
      }
    }
    llama::runner r(ctx.model);
    const auto p =
        llama::perplexity_paragraph_stream(r, ctx.tok, ctx.valid_head_text, ctx.opts.windows);
    std::size_t next = 0;
    for (int layer = 0; layer < n_layers; ++layer) {
      for (const llama::linear_kind kind : llama::all_linear_kinds) {
        ctx.model.mutable_dense_weight({layer, kind}) = original[next];
        if (is_shiftadd) {
          shiftadd_weights.push_back(packed[next]);
          ctx.model.set_linear({layer, kind},
                               std::make_unique<examples::bcq_linear>(std::move(packed[next])));
        }
        ++next;
      }
    }
    const std::vector<int> story = llama::generate(r, {llama::bos_token}, 48, {0.0f, 0.0f, 0});
    for (int layer = 0; layer < n_layers; ++layer) {
      for (const llama::linear_kind kind : llama::all_linear_kinds) {
        ctx.model.reset_linear({layer, kind});
      }
    }
    ctx.results.add({{"section", "shiftadd"},
                     {"method", method},
                     {"bits", 3},
                     {"scales", scales},
                     {"windows", p.windows},
                     {"ppl", p.ppl},
                     {"model_bytes", static_cast<long>(linear_bytes) + other_bytes},
                     {"bits_per_weight", static_cast<double>(linear_bytes) * 8.0 /
                                             static_cast<double>(linear_weights)}});
    stories.push_back({{"section", "shiftadd_story"},
                       {"method", method},
                       {"tokens", static_cast<long>(story.size()) - 1},
                       {"text", ctx.tok.decode(story)}});
  };
  run("RTN", "fp16 scale + 3-bit zero per 64", false);
  run("ShiftAdd (BCQ in GPTQ)", "fp32 alpha per 64 and plane", true);
  ctx.results.print(std::cout, "shiftadd");
  for (examples::record& story : stories) {
    std::cout << "\n-- greedy, " << story["method"].get<std::string>() << " (" << story["tokens"]
              << " tokens)\n"
              << story["text"].get<std::string>() << '\n';
    ctx.results.add(std::move(story));
  }
  std::cout << "\nfp32: " << ctx.model.parameter_count() * 4
            << " bytes; calibration: the last 32 windows of the paragraph stream; the ShiftAdd "
               "story runs on the packed planes ("
            << std::chrono::duration<double>(clock::now() - start).count()
            << " s). Full table: reparam_shiftadd_quantize\n";
  section_shiftadd_kernels(ctx, shiftadd_weights);
}

/// Structural re-parameterization on the bundled CIFAR-10 ResNet-20 (the short form of
/// reparam_structural_resnet): every BatchNorm folded into its conv, and stage 1 rebuilt as RepVGG
/// blocks and merged, on the first 200 test images, 1 thread.
void section_structural(context& ctx) {
  namespace rn = examples::resnet;
  print_header("structural", "BatchNorm folding and RepVGG merging on a CIFAR-10 ResNet-20");
  constexpr reparam::index images = 200;
  constexpr reparam::index stage_images = 50;
  const rn::model model =
      rn::load_model(ctx.opts.data_dir + "/resnet_cifar10/resnet20_cifar10.safetensors");
  const rn::reference_logits ref = rn::load_reference_logits(
      ctx.opts.data_dir + "/resnet_cifar10/resnet20_ref_logits_first1000.safetensors");
  const rn::dataset data =
      rn::load_cifar10(ctx.opts.data_dir + "/cifar10_test_1000/cifar10_test_first1000.bin", images,
                       model.mean, model.stddev);
  bool is_fold_exact = false;
  const rn::evaluation before =
      rn::evaluate(rn::reference_network<float>(model), data, ref, images);
  const rn::evaluation after =
      rn::evaluate(rn::folded_network<float>(model, &is_fold_exact), data, ref, images);
  const auto add = [&](const std::string& network, const rn::evaluation& e,
                       const rn::evaluation* baseline) {
    ctx.results.add({{"section", "structural"},
                     {"network", network},
                     {"images", e.images},
                     {"top1_percent", 100.0 * e.top1()},
                     {"argmax_agree_pytorch", e.agree_with_file},
                     {"max_abs_logit_diff_pytorch", e.max_abs_diff_file},
                     {"max_abs_diff_vs_unmerged",
                      baseline == nullptr
                          ? examples::record(nullptr)
                          : examples::record(rn::max_abs_difference(e.logits, baseline->logits))},
                     {"bound_ratio", nullptr},
                     {"images_per_s", e.images_per_second()}});
  };
  add("ResNet-20, BN separate", before, nullptr);
  add("ResNet-20, BN folded (" + std::to_string(2 * model.blocks.size() + 1) + " convs)", after,
      &before);
  const rn::repvgg_stage_report s =
      rn::check_repvgg_stage(model, rn::make_repvgg_stage(model), data.images, stage_images);
  ctx.results.add({{"section", "structural"},
                   {"network", "RepVGG stage 1, multi-branch"},
                   {"images", s.images},
                   {"images_per_s", 1.0 / s.seconds_per_image_multi_branch}});
  ctx.results.add({{"section", "structural"},
                   {"network", "RepVGG stage 1, merged (6 convs)"},
                   {"images", s.images},
                   {"max_abs_diff_vs_unmerged", s.max_abs_diff_float},
                   {"bound_ratio", s.float_unit_bound_ratio},
                   {"images_per_s", 1.0 / s.seconds_per_image_merged}});
  ctx.results.print(std::cout, "structural");
  const bool is_ok = before.agree_with_file == images && after.predictions == before.predictions &&
                     before.max_abs_diff_file < 1e-4 && after.max_abs_diff_file < 1e-4 &&
                     is_fold_exact && s.is_exact && s.unit_bound_ratio <= 1.0 &&
                     s.float_unit_bound_ratio <= 1.0 && s.stage_bound_ratio <= 1.0 &&
                     s.float_bound_ratio <= 1.0;
  std::cout << "\nfolded predictions identical, logits within 1e-4 of PyTorch, RepVGG merge "
               "within its derived rounding bound (float, per unit; double stage diff "
            << s.max_abs_diff_double << "): " << (is_ok ? "yes" : "NO")
            << ". RepVGG rows time stage 1 only. Full table: reparam_structural_resnet\n";
}
void section_scale(context& ctx) {
  print_header("scale",
               "activation + weight quantization with exact scale folds (RepQ-ViT, "
               "SmoothQuant, AWQ)");
  using examples::scale_method;
  constexpr reparam::index window = 512;
  // Calibration on the last 8 windows of the paragraph stream, disjoint from the scored ones.
  const std::vector<int> stream = llama::paragraph_stream(ctx.tok, ctx.valid_head_text);
  const long windows = ctx.opts.windows < 0 ? 16 : ctx.opts.windows;
  const auto scored = static_cast<reparam::index>(windows * window + 1);
  const std::vector<int> eval(stream.begin(), stream.begin() + scored);
  const examples::calibration_data calib =
      examples::capture_calibration(ctx.model, examples::tail_windows(stream, 8, window, scored));
  const auto ppl = [&](const llama::model& m, const examples::probability_quantizer& p) {
    llama::runner r(m, window);
    examples::set_probability_quantizer(r, p);
    const llama::nll_total t = llama::score_windows(r, eval, window, windows);
    return std::exp(t.nll_sum / static_cast<double>(t.tokens));
  };
  const double fp32 = ppl(ctx.model, {});
  const auto add = [&](scale_method method, examples::quant_scheme scheme,
                       const examples::probability_quantizer& p, const std::string& probs) {
    llama::model m = llama::load_model(ctx.opts.model_path);
    examples::apply_scale_recipe(m, calib, method, scheme, window);
    const double value = ppl(m, p);
    ctx.results.add(
        {{"section", "scale"},
         {"method", examples::method_name(method)},
         {"scheme", scheme.weight_bits == 0 ? std::string("fold only")
                                            : "W" + std::to_string(scheme.weight_bits) + "A" +
                                                  std::to_string(scheme.act_bits)},
         {"probabilities", probs},
         {"ppl", value},
         {"vs_fp32", value / fp32}});
  };
  ctx.results.add({{"section", "scale"},
                   {"method", "fp32"},
                   {"scheme", "-"},
                   {"probabilities", "fp32"},
                   {"ppl", fp32},
                   {"vs_fp32", 1.0}});
  add(scale_method::smoothquant, {0, 0}, {}, "fp32");
  add(scale_method::repq_vit, {0, 0}, {}, "fp32");
  for (const examples::quant_scheme scheme :
       {examples::quant_scheme{8, 8}, examples::quant_scheme{4, 8}, examples::quant_scheme{4, 4}}) {
    for (const scale_method method : {scale_method::rtn_percentile_act, scale_method::smoothquant,
                                      scale_method::awq, scale_method::repq_vit}) {
      add(method, scheme, {}, "fp32");
    }
  }
  const reparam::matrix<float> samples = reparam::row_major_map(
      calib.probabilities.data(), 1, static_cast<reparam::index>(calib.probabilities.size()));
  reparam::scale::log_quantizer log_spec;  // log-sqrt2, 4 bits, RepQ-ViT's extra zero
  add(scale_method::repq_vit, {4, 4}, reparam::scale::calibrate_log(samples, log_spec),
      "log-sqrt2 4-bit");
  ctx.results.print(std::cout, "scale");
  std::cout << "\nweights per output row (min-max unless searched), activations (every linear "
               "input) per tensor, static, asymmetric, percentile-calibrated; \"fold only\" rows "
               "change the weights and norms but quantize "
               "nothing. Full table: reparam_scale_quantize\n";
}

}  // namespace

void section_gumbel(context& ctx) {
  print_header("gumbel", "soft-thinking decode with Gumbel-softmax soft tokens (SofT-GRPO)");
  // BOS + the first 4 tokens of the first 8 stories of the valid head; up to 96 tokens each.
  const std::vector<std::vector<int>> prompts =
      examples::story_prompts(llama::paragraph_stream(ctx.tok, ctx.valid_head_text), 8, 4);
  llama::runner r(ctx.model);
  std::string soft_sample;
  for (const double tau_g : {0.0, 0.1, 0.5, 1.0}) {
    examples::decode_settings settings;
    settings.mode =
        tau_g == 0.0 ? examples::decode_mode::discrete_full : examples::decode_mode::soft;
    settings.steps = 96;
    settings.tokens.tau_g = tau_g == 0.0 ? settings.tokens.tau_g : tau_g;
    std::vector<examples::decode_trace> traces;
    llama::nll_total nll;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      settings.seed = ctx.opts.seed + i;
      traces.push_back(examples::soft_decode(r, prompts[i], settings));
      nll += examples::score_generated(r, traces.back());
    }
    const auto [unique, total] = examples::distinct_ngrams(traces, 2);
    examples::record rec{{"section", "gumbel"},
                         {"method", examples::decode_mode_name(settings.mode)},
                         {"tau_g", nullptr},
                         {"tokens", nll.tokens},
                         {"ppl", std::exp(nll.nll_sum / static_cast<double>(nll.tokens))},
                         {"distinct_2", static_cast<double>(unique) /
                                            static_cast<double>(std::max<std::size_t>(total, 1))}};
    if (tau_g > 0.0) rec["tau_g"] = tau_g;
    ctx.results.add(rec);
    if (tau_g == 0.1) soft_sample = ctx.tok.decode(traces.front().tokens);
  }
  ctx.results.print(std::cout, "gumbel");
  std::cout << "\nppl of the generated text under the fp32 model (a soft run's text is its top "
               "candidates; top-5, top-p 0.95, noise clamped to [-1.5, 3]); distinct_2: unique / "
               "total bigrams. A soft-token story (tau_g 0.1):\n"
            << soft_sample << "\nFull table: reparam_gumbel_soft_thinking\n";
}

void section_unlearn(context& ctx) {
  namespace ul = reparam::unlearn;
  print_header("unlearn", "remove the name 'Lily' by folding a residual-stream projection");
  // Paragraphs 0-1499 of the valid head: 70% build the direction, 30% are held out.
  const examples::concept_split split =
      examples::split_by_concept(ctx.tok, ctx.valid_head_text, "Lily", 1500,
                                 static_cast<std::size_t>(ctx.model.config().seq_len));
  const int token = ctx.tok.encode("Lily").front();
  llama::runner base(ctx.model);
  const ul::subspace direction = examples::concept_direction(base, split);
  std::string before;
  std::string after;
  for (const char* name : {"none", "mean_diff", "random"}) {
    const std::string method = name;
    llama::model edited = llama::load_model(ctx.opts.model_path);
    examples::record rec{
        {"section", "unlearn"}, {"method", method}, {"exact", true}, {"hook_diff", 0.0}};
    if (method != "none") {
      const ul::subspace q =
          method == "random" ? ul::random_subspace(edited.config().dim, 1, 1) : direction;
      ul::residual_stream<float> stream = examples::llama_residual_stream(edited, "");
      rec["exact"] = ul::fold_residual_ablation(stream, q).exact;
      rec["hook_diff"] =
          examples::hook_mismatch(edited, ctx.model, q.directions, split.test_forget, 8);
    }
    llama::runner r(edited);
    const examples::concept_scores forget = examples::score_concept(r, split.test_forget, token);
    const examples::concept_scores retain = examples::score_concept(r, split.test_retain, token);
    rec["forget_ppl"] = forget.ppl;
    rec["retain_ppl"] = retain.ppl;
    rec["p_concept"] = forget.p_token;
    ctx.results.add(rec);
    llama::sampler_params greedy;
    greedy.temperature = 0.0f;
    const std::string story =
        ctx.tok.decode(llama::generate(r, {llama::tokenizer::bos_id}, 60, greedy));
    if (method == "none") before = story;
    if (method == "mean_diff") after = story;
  }
  ctx.results.print(std::cout, "unlearn");
  std::cout << "\nforget/retain_ppl: held-out paragraphs with / without 'Lily'; p_concept: mean "
               "p(' Lily') where it comes next; random: a random direction (control); hook_diff: "
               "fold vs run-time projection (relative max logit difference). Greedy from BOS:\n"
               "  before: "
            << before << "\n  after:  " << after << "\nFull table: reparam_unlearn_concept\n";
}

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);  // the results are single-threaded figures
  options opts;
  examples::cli cli("reparam_demo",
                    "Runs the reparam reference workbench on the bundled llama2.c stories260K "
                    "model:\nmodel summary, float32 perplexity on TinyStories, forward speed, "
                    "generated stories\nand 3-bit shift-add quantization.");
  cli.add_option("--data", &opts.data_dir, "DIR",
                 "data directory with llama2c_stories260K/ and "
                 "tinystories_text/");
  cli.add_option("--model", &opts.model_path, "FILE",
                 "checkpoint, .bin (llama2.c) or .safetensors (default: "
                 "DIR/llama2c_stories260K/stories260K.bin)");
  cli.add_option("--json", &opts.json_path, "FILE", "also write the results as a JSON list");
  cli.add_option("--windows", &opts.windows, "N",
                 "512-token windows of tinystories_valid_head.txt to score (-1: all)");
  cli.add_option("--steps", &opts.steps, "N", "generation length in tokens");
  cli.add_option("--temperature", &opts.temperature, "T", "sampling temperature");
  cli.add_option("--top-p", &opts.top_p, "P", "nucleus sampling mass (0 or 1: off)");
  cli.add_option("--seed", &opts.seed, "S", "sampling seed");
  cli.add_option("--min-seconds", &opts.min_seconds, "S", "minimum time per speed measurement");
  if (const int code = cli.parse(argc, argv, std::cout, std::cerr);
      code != examples::cli::proceed) {
    return code;
  }
  if (opts.model_path.empty()) {
    opts.model_path = opts.data_dir + "/llama2c_stories260K/stories260K.bin";
  }

  try {
    std::cout << "reparam demo: reference workbench on the bundled real model\ndata: "
              << opts.data_dir << '\n';
    llama::model model = llama::load_model(opts.model_path);
    llama::tokenizer tok = llama::tokenizer::load(opts.data_dir + "/llama2c_stories260K/tok512.bin",
                                                  model.config().vocab_size);
    context ctx{
        opts,
        std::move(model),
        std::move(tok),
        llama::read_text_file(opts.data_dir + "/tinystories_text/tinystories_sample_cs336.txt"),
        llama::read_text_file(opts.data_dir + "/tinystories_text/tinystories_valid_head.txt"),
        {}};
    section_model(ctx);
    section_baseline(ctx);
    section_speed(ctx);
    section_generate(ctx);
    section_shiftadd(ctx);
    section_structural(ctx);
    section_scale(ctx);
    section_gumbel(ctx);
    section_unlearn(ctx);
    if (!opts.json_path.empty()) {
      ctx.results.write_json(opts.json_path);
      std::cout << "\nwrote " << ctx.results.records().size() << " records to " << opts.json_path
                << '\n';
    }
  } catch (const std::exception& e) {
    std::cerr << "reparam_demo: " << e.what() << '\n';
    return 1;
  }
  return 0;
}

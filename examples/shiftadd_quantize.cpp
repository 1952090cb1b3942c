// SPDX-License-Identifier: Apache-2.0
// The shift-add accuracy table on the bundled real model (llama2.c stories260K): quantizes every
// linear layer (wq wk wv wo w1 w2 w3 of all layers) with RTN, GPTQ, weight-only BCQ, ShiftAddLLM
// (BCQ inside GPTQ, column-wise and row-group scales, APoT scales) and mixed bits from the
// allocator, and reports perplexity, model bytes, bits per weight and quantization time. Also
// measures how well ShiftAddLLM's sensitivity criterion ranks layers (Kendall tau) and runs one
// configuration through the packed reference multiply. --json writes the same records.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/second_moment.hpp>
#include <reparam/shiftadd/bcq.hpp>
#include <reparam/shiftadd/bit_allocation.hpp>
#include <reparam/shiftadd/formats.hpp>
#include <reparam/shiftadd/gptq.hpp>
#include <reparam/shiftadd/multiply.hpp>
#include <reparam/shiftadd/uniform.hpp>

#include "common/cli.hpp"
#include "common/results.hpp"
#include "common/shiftadd_workbench.hpp"
#include "runner/eval.hpp"

namespace {

namespace sa = reparam::shiftadd;
using reparam::matrix;
using clock_type = std::chrono::steady_clock;

constexpr reparam::index window_size = 512;  // the paragraph-stream protocol's window

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

struct options {
  std::string data_dir = REPARAM_DATA_DIR;
  std::string model_path;  // default: <data>/llama2c_stories260K/stories260K.bin
  std::string json_path;
  long eval_windows = 16;
  long calib_windows = 32;
  long tau_windows = 8;
  long multiply_windows = 2;
  int rounds = 20;
  bool all_sequential = false;
};

// --- methods
// ---------------------------------------------------------------------------------------

enum class method_kind { rtn, gptq, bcq, shiftadd };

struct method {
  std::string name;
  method_kind kind = method_kind::rtn;
  sa::scale_axis axis = sa::scale_axis::rows;
  int apot_terms = 0;

  bool needs_hessian() const { return kind == method_kind::gptq || kind == method_kind::shiftadd; }
};

const method rtn{"RTN", method_kind::rtn};
const method gptq{"GPTQ", method_kind::gptq};
const method bcq_weight_only{"BCQ (weight-only)", method_kind::bcq};
const method shiftadd_columns{"ShiftAdd (col)", method_kind::shiftadd, sa::scale_axis::columns};
const method shiftadd_rows{"ShiftAdd (row)", method_kind::shiftadd};
const method shiftadd_apot{"ShiftAdd+APoT3 (row)", method_kind::shiftadd, sa::scale_axis::rows, 3};

const char* axis_text(sa::scale_axis axis) { return axis == sa::scale_axis::rows ? "row" : "col"; }

std::string group_text(reparam::index group_size) {
  return group_size == 0 ? "whole" : std::to_string(group_size);
}

/// One quantized linear layer: its dense reconstruction (what the table's evaluation computes
/// with), its packed size, whether its group size had to fall back to the whole row/column, and
/// the packed binary-coded form when asked for.
struct quantized_layer {
  matrix<float> dense;
  std::size_t packed_bytes = 0;
  bool is_fallback = false;
  std::optional<sa::binary_coded_matrix> packed;
};

quantized_layer quantize_layer(const method& m, int bits, reparam::index group_size,
                               const matrix<float>& w, const matrix<double>* hessian, int rounds,
                               bool keep_packed = false) {
  quantized_layer out;
  const bool is_rows = m.kind != method_kind::shiftadd || m.axis == sa::scale_axis::rows;
  const reparam::index grouped = is_rows ? w.cols() : w.rows();
  reparam::index group = group_size;
  if (group != 0 && grouped % group != 0) {
    group = 0;  // e.g. w2's 172 columns at group 32: whole rows instead
    out.is_fallback = true;
  }
  const auto keep = [&](sa::binary_coded_matrix b) {
    out.dense = sa::reconstruct(b);
    out.packed_bytes = b.packed_size();
    if (keep_packed) {
      out.packed = std::move(b);
    }
  };
  switch (m.kind) {
    case method_kind::rtn: {
      const sa::uniform_matrix u = sa::quantize_rtn(w, sa::uniform_params{bits, group, false});
      out.dense = u.dequantize();
      out.packed_bytes = u.packed_size();
      if (keep_packed) {
        out.packed = sa::to_binary_coded(u);
      }
      break;
    }
    case method_kind::gptq: {
      const sa::uniform_matrix u =
          sa::quantize_gptq(w, *hessian, sa::uniform_params{bits, group, false});
      out.dense = u.dequantize();
      out.packed_bytes = u.packed_size();
      if (keep_packed) {
        out.packed = sa::to_binary_coded(u);
      }
      break;
    }
    case method_kind::bcq:
      keep(sa::quantize_bcq(w, sa::bcq_params{bits, rounds, m.apot_terms}, group, m.axis));
      break;
    case method_kind::shiftadd: {
      sa::shiftadd_params params;
      params.bcq = sa::bcq_params{bits, rounds, m.apot_terms};
      params.group_size = group;
      params.axis = m.axis;
      keep(sa::quantize_shiftadd(w, *hessian, params));
      break;
    }
  }
  return out;
}

// --- the workbench
// ---------------------------------------------------------------------------------

struct context {
  options opts;
  llama::model model;
  std::vector<llama::linear_id> linears;  // layer-major, llama2.c kind order
  std::vector<matrix<float>> fp32;        // the original weights, same order
  std::vector<int> valid_stream;          // first eval_windows * 512 + 1 tokens
  std::vector<std::vector<int>> stories;  // tinystories_sample_cs336, [BOS] + story
  std::vector<std::vector<int>> calibration;
  std::vector<matrix<double>> hessians;  // one-shot, from the fp32 model
  double calibration_seconds = 0.0;
  std::size_t fp32_other_bytes = 0;  // embedding and norms, kept fp32
  reparam::index linear_parameters = 0;
  double fp32_valid = 0.0;
  double fp32_stories = 0.0;
  examples::results results;
};

void install(context& ctx, const std::vector<quantized_layer>& layers) {
  for (std::size_t i = 0; i < ctx.linears.size(); ++i) {
    ctx.model.mutable_dense_weight(ctx.linears[i]) = layers[i].dense;
  }
}

void restore(context& ctx) {
  for (std::size_t i = 0; i < ctx.linears.size(); ++i) {
    ctx.model.mutable_dense_weight(ctx.linears[i]) = ctx.fp32[i];
  }
}

double ppl_valid(context& ctx, long windows) {
  llama::runner r(ctx.model);
  const llama::nll_total total = llama::score_windows(r, ctx.valid_stream, window_size, windows);
  return std::exp(total.nll_sum / static_cast<double>(total.tokens));
}

double ppl_stories(context& ctx) {
  llama::runner r(ctx.model);
  llama::nll_total total;
  for (const std::vector<int>& story : ctx.stories) {
    total += llama::score_windows(r, story, window_size);
  }
  return std::exp(total.nll_sum / static_cast<double>(total.tokens));
}

/// A whole-model configuration: one method, bits per linear, a nominal group size.
struct model_config {
  method m;
  std::vector<int> bits;  // per entry of ctx.linears
  reparam::index group_size = 0;
  bool is_sequential = false;
};

struct quantized_model {
  std::vector<quantized_layer> layers;
  double quant_seconds = 0.0;
  double calib_seconds = 0.0;
};

quantized_model quantize_model(context& ctx, const model_config& config, bool keep_packed = false) {
  quantized_model out;
  out.layers.resize(ctx.linears.size());
  const int n_layers = ctx.model.config().n_layers;
  for (int layer = 0; layer < n_layers; ++layer) {
    std::vector<matrix<double>> sequential;
    if (config.is_sequential && config.m.needs_hessian()) {
      // GPTQ's sequential calibration: this block's inputs through the already-quantized blocks.
      const auto start = clock_type::now();
      sequential = examples::calibrate_hessians(ctx.model, ctx.calibration, layer, layer + 1);
      out.calib_seconds += seconds_since(start);
    }
    const std::vector<matrix<double>>& hessians =
        config.is_sequential && config.m.needs_hessian() ? sequential : ctx.hessians;
    const auto start = clock_type::now();
    for (std::size_t i = 0; i < ctx.linears.size(); ++i) {
      const llama::linear_id id = ctx.linears[i];
      if (id.layer != layer) {
        continue;
      }
      const matrix<double>* h =
          config.m.needs_hessian() ? &examples::hessian_of(hessians, id) : nullptr;
      out.layers[i] = quantize_layer(config.m, config.bits[i], config.group_size, ctx.fp32[i], h,
                                     ctx.opts.rounds, keep_packed);
    }
    out.quant_seconds += seconds_since(start);
    if (config.is_sequential) {
      for (std::size_t i = 0; i < ctx.linears.size(); ++i) {
        if (ctx.linears[i].layer == layer) {
          ctx.model.mutable_dense_weight(ctx.linears[i]) = out.layers[i].dense;
        }
      }
    }
  }
  restore(ctx);
  if (!config.is_sequential && config.m.needs_hessian()) {
    out.calib_seconds = ctx.calibration_seconds;
  }
  return out;
}

/// Quantizes, evaluates and records one table row.
void run_row(context& ctx, const model_config& config) {
  const int bits = config.bits.front();
  std::cerr << "  " << config.m.name << " bits " << bits << " group "
            << group_text(config.group_size) << (config.is_sequential ? " (sequential)" : "")
            << "..." << std::flush;
  const auto start = clock_type::now();
  const quantized_model q = quantize_model(ctx, config);
  install(ctx, q.layers);
  const double valid = ppl_valid(ctx, ctx.opts.eval_windows);
  const double stories = ppl_stories(ctx);
  restore(ctx);
  std::size_t linear_bytes = 0;
  long fallbacks = 0;
  for (const quantized_layer& layer : q.layers) {
    linear_bytes += layer.packed_bytes;
    fallbacks += layer.is_fallback ? 1 : 0;
  }
  const bool is_activation_aware = config.m.needs_hessian();
  ctx.results.add(
      {{"section", "table"},
       {"method", config.m.name},
       {"bits", bits},
       {"group", group_text(config.group_size)},
       {"axis", config.m.kind == method_kind::shiftadd ? axis_text(config.m.axis) : "row"},
       {"calibration", !is_activation_aware   ? "none"
                       : config.is_sequential ? "sequential"
                                              : "one-shot"},
       {"ppl_valid16", valid},
       {"ppl_cs336", stories},
       {"model_bytes", static_cast<long>(linear_bytes + ctx.fp32_other_bytes)},
       {"bits_per_weight",
        static_cast<double>(linear_bytes) * 8.0 / static_cast<double>(ctx.linear_parameters)},
       {"quant_seconds", q.quant_seconds},
       {"calib_seconds", q.calib_seconds},
       {"fallback_layers", fallbacks}});
  std::cerr << " ppl " << valid << " / " << stories << " (" << seconds_since(start) << " s)\n";
}

model_config uniform_config(const context& ctx, const method& m, int bits,
                            reparam::index group_size, bool is_sequential) {
  return {m, std::vector<int>(ctx.linears.size(), bits), group_size, is_sequential};
}

// --- sections
// --------------------------------------------------------------------------------------

void section_table(context& ctx) {
  std::cerr << "table:\n";
  const auto record_fp32 = [&] {
    ctx.results.add({{"section", "table"},
                     {"method", "fp32"},
                     {"bits", 32},
                     {"group", "-"},
                     {"axis", "-"},
                     {"calibration", "none"},
                     {"ppl_valid16", ctx.fp32_valid},
                     {"ppl_cs336", ctx.fp32_stories},
                     {"model_bytes", static_cast<long>(ctx.model.parameter_count() * 4)},
                     {"bits_per_weight", 32.0},
                     {"quant_seconds", 0.0},
                     {"calib_seconds", 0.0},
                     {"fallback_layers", 0}});
  };
  record_fp32();
  const bool seq = ctx.opts.all_sequential;
  for (const method* m :
       {&rtn, &gptq, &bcq_weight_only, &shiftadd_columns, &shiftadd_rows, &shiftadd_apot}) {
    for (const int bits : {4, 3, 2}) {
      for (const reparam::index group : {32, 64, 0}) {
        run_row(ctx, uniform_config(ctx, *m, bits, group, seq && m->needs_hessian()));
      }
    }
  }
  if (!seq) {
    // Sequential calibration (GPTQ's protocol) for the activation-aware methods at 3 and 2 bits.
    for (const method* m : {&gptq, &shiftadd_columns, &shiftadd_rows}) {
      for (const int bits : {3, 2}) {
        run_row(ctx, uniform_config(ctx, *m, bits, 64, true));
      }
    }
  }
}

/// The quantizer of the mixed-precision rows and of the sensitivity study.
const method& mixed_method() { return shiftadd_rows; }
constexpr reparam::index mixed_group = 64;

void section_mixed(context& ctx) {
  std::cerr << "mixed bits and the sensitivity criterion:\n";
  const std::vector<int> candidates = {2, 3, 4};
  const std::size_t count = ctx.linears.size();
  // Every layer at every candidate width (one-shot Hessians), with its measured output error.
  std::vector<std::vector<quantized_layer>> by_bits(candidates.size());
  std::vector<sa::layer_cost> measured(count);
  std::vector<sa::layer_cost> criterion(count);
  std::vector<double> sensitivity(count);
  std::vector<std::vector<double>> seconds(candidates.size());  // quantizer time per layer
  for (std::size_t i = 0; i < count; ++i) {
    const matrix<double>& h = examples::hessian_of(ctx.hessians, ctx.linears[i]);
    sensitivity[i] = sa::sensitivity(ctx.fp32[i], h, 0.01);
    measured[i].parameters = ctx.fp32[i].size();
    criterion[i].parameters = ctx.fp32[i].size();
    for (std::size_t b = 0; b < candidates.size(); ++b) {
      const auto start = clock_type::now();
      by_bits[b].push_back(quantize_layer(mixed_method(), candidates[b], mixed_group, ctx.fp32[i],
                                          &h, ctx.opts.rounds));
      seconds[b].push_back(seconds_since(start));
      measured[i].cost.push_back(sa::output_error(ctx.fp32[i], by_bits[b].back().dense, h));
      // The criterion ranks layers; a b-bit quantizer's error scales as 4^-b.
      criterion[i].cost.push_back(sensitivity[i] * std::ldexp(1.0, -2 * candidates[b]));
    }
  }

  // Allocations at 2.2 and 2.5 average bits from both costs, each evaluated.
  examples::results allocations;
  for (const double budget : {2.2, 2.5}) {
    for (const bool is_measured : {true, false}) {
      const auto start = clock_type::now();
      const sa::bit_allocation a =
          sa::allocate_bits(is_measured ? measured : criterion, candidates, budget);
      // The quantizer time of the chosen widths plus the allocation (not the other widths).
      double quant_seconds = seconds_since(start);
      std::vector<quantized_layer> layers(count);
      std::size_t linear_bytes = 0;
      for (std::size_t i = 0; i < count; ++i) {
        const auto b = static_cast<std::size_t>(
            std::find(candidates.begin(), candidates.end(), a.bits[i]) - candidates.begin());
        layers[i].dense = by_bits[b][i].dense;
        linear_bytes += by_bits[b][i].packed_bytes;
        quant_seconds += seconds[b][i];
      }
      install(ctx, layers);
      const double valid = ppl_valid(ctx, ctx.opts.eval_windows);
      const double stories = ppl_stories(ctx);
      restore(ctx);
      const std::string name = std::string("ShiftAdd mixed (") +
                               (is_measured ? "output error" : "eq. 3 criterion") + ")";
      ctx.results.add({{"section", "table"},
                       {"method", name},
                       {"bits", a.average_bits},
                       {"group", group_text(mixed_group)},
                       {"axis", axis_text(mixed_method().axis)},
                       {"calibration", "one-shot"},
                       {"ppl_valid16", valid},
                       {"ppl_cs336", stories},
                       {"model_bytes", static_cast<long>(linear_bytes + ctx.fp32_other_bytes)},
                       {"bits_per_weight", static_cast<double>(linear_bytes) * 8.0 /
                                               static_cast<double>(ctx.linear_parameters)},
                       {"quant_seconds", quant_seconds},
                       {"calib_seconds", ctx.calibration_seconds},
                       {"fallback_layers", 0}});
      std::string per_layer;
      for (std::size_t i = 0; i < count; ++i) {
        per_layer += (i % 7 == 0 && i > 0 ? " | " : "") + std::to_string(a.bits[i]);
      }
      allocations.add({{"section", "allocation"},
                       {"budget", budget},
                       {"cost", is_measured ? "output_error" : "eq3_criterion"},
                       {"average_bits", a.average_bits},
                       {"bits_wq_wk_wv_wo_w1_w2_w3_per_layer", per_layer}});
      std::cerr << "  " << name << " budget " << budget << ": ppl " << valid << " / " << stories
                << '\n';
    }
  }
  for (const examples::record& r : allocations.records()) {
    ctx.results.add(r);
  }

  // How well each cost ranks layers: the perplexity increase when only that layer is quantized
  // at 2 bits (on the first tau_windows windows).
  const double base = ppl_valid(ctx, ctx.opts.tau_windows);
  std::vector<double> increase(count);
  std::vector<double> error_2bit(count);
  for (std::size_t i = 0; i < count; ++i) {
    ctx.model.mutable_dense_weight(ctx.linears[i]) = by_bits[0][i].dense;
    increase[i] = ppl_valid(ctx, ctx.opts.tau_windows) - base;
    ctx.model.mutable_dense_weight(ctx.linears[i]) = ctx.fp32[i];
    error_2bit[i] = measured[i].cost[0];
    ctx.results.add({{"section", "sensitivity"},
                     {"layer", llama::to_string(ctx.linears[i])},
                     {"parameters", static_cast<long>(ctx.fp32[i].size())},
                     {"criterion_eq3", sensitivity[i]},
                     {"output_error_2bit", error_2bit[i]},
                     {"ppl_increase_2bit", increase[i]}});
  }
  const double tau_criterion = sa::kendall_tau(sensitivity, increase);
  const double tau_error = sa::kendall_tau(error_2bit, increase);
  ctx.results.add({{"section", "kendall"},
                   {"ranking", "eq. 3 criterion vs ppl increase"},
                   {"tau", tau_criterion},
                   {"layers", static_cast<long>(count)},
                   {"windows", ctx.opts.tau_windows}});
  ctx.results.add({{"section", "kendall"},
                   {"ranking", "output error (2 bits) vs ppl increase"},
                   {"tau", tau_error},
                   {"layers", static_cast<long>(count)},
                   {"windows", ctx.opts.tau_windows}});
  // The paper's own check (appendix F): the criterion against the measured layer error.
  ctx.results.add({{"section", "kendall"},
                   {"ranking", "eq. 3 criterion vs output error (2 bits)"},
                   {"tau", sa::kendall_tau(sensitivity, error_2bit)},
                   {"layers", static_cast<long>(count)},
                   {"windows", nullptr}});
  std::cerr << "  Kendall tau: criterion " << tau_criterion << ", output error " << tau_error
            << '\n';
}

/// One configuration through the packed reference multiply (examples::bcq_linear), against the
/// dense reconstruction the table evaluates with, on the first multiply_windows windows.
void section_multiply(context& ctx) {
  std::cerr << "packed multiply check..." << std::flush;
  const model_config config = uniform_config(ctx, shiftadd_rows, 3, 64, false);
  quantized_model q = quantize_model(ctx, config, /*keep_packed=*/true);
  const long windows = ctx.opts.multiply_windows;

  install(ctx, q.layers);
  auto start = clock_type::now();
  const double dense_ppl = ppl_valid(ctx, windows);
  const double dense_seconds = seconds_since(start);
  restore(ctx);

  for (std::size_t i = 0; i < ctx.linears.size(); ++i) {
    ctx.model.set_linear(ctx.linears[i],
                         std::make_unique<examples::bcq_linear>(std::move(*q.layers[i].packed)));
  }
  start = clock_type::now();
  const double packed_ppl = ppl_valid(ctx, windows);
  const double packed_seconds = seconds_since(start);
  for (const llama::linear_id id : ctx.linears) {
    ctx.model.reset_linear(id);
  }
  const double tokens = static_cast<double>(windows * window_size);
  ctx.results.add({{"section", "multiply"},
                   {"config", "ShiftAdd (row) 3 bits, group 64"},
                   {"windows", windows},
                   {"ppl_dense_reconstruct", dense_ppl},
                   {"ppl_packed_multiply", packed_ppl},
                   {"relative_difference", std::abs(packed_ppl - dense_ppl) / dense_ppl},
                   {"dense_tokens_per_s", tokens / dense_seconds},
                   {"packed_tokens_per_s", tokens / packed_seconds}});
  std::cerr << " ppl " << dense_ppl << " vs " << packed_ppl << '\n';
}

/// The paper's expectation (at 3 and 2 bits ShiftAdd beats GPTQ, which beats RTN), checked per
/// (bits, group) on ppl_valid16 with one-shot calibration.
void section_expectation(context& ctx) {
  const auto ppl_of = [&](const std::string& method_name, int bits, const std::string& group) {
    for (const examples::record& r : ctx.results.records()) {
      if (r["section"] == "table" && r["method"] == method_name && r["bits"] == bits &&
          r["group"] == group && r["calibration"] != "sequential") {
        return r["ppl_valid16"].get<double>();
      }
    }
    return -1.0;
  };
  for (const int bits : {3, 2}) {
    for (const std::string group : {"32", "64", "whole"}) {
      const double r = ppl_of(rtn.name, bits, group);
      const double g = ppl_of(gptq.name, bits, group);
      const double col = ppl_of(shiftadd_columns.name, bits, group);
      const double row = ppl_of(shiftadd_rows.name, bits, group);
      const double best = std::min(col, row);
      ctx.results.add({{"section", "expectation"},
                       {"bits", bits},
                       {"group", group},
                       {"rtn", r},
                       {"gptq", g},
                       {"shiftadd_col", col},
                       {"shiftadd_row", row},
                       {"gptq_beats_rtn", g < r},
                       {"shiftadd_col_beats_gptq", col < g},
                       {"shiftadd_row_beats_gptq", row < g},
                       {"best_shiftadd_beats_gptq", best < g}});
    }
  }
}

void print_report(const context& ctx) {
  const llama::model_config& c = ctx.model.config();
  std::cout << "reparam shift-add quantization of " << ctx.opts.model_path << '\n'
            << "model: " << c.n_layers << " layers, dim " << c.dim << ", hidden " << c.hidden_dim
            << "; " << ctx.linears.size() << " linear layers, " << ctx.linear_parameters
            << " linear weights (quantized) + " << ctx.fp32_other_bytes / 4
            << " embedding/norm weights (kept fp32)\n"
            << "split: calibration = the last " << ctx.opts.calib_windows
            << " windows of 512 tokens of the paragraph stream of tinystories_valid_head.txt; "
               "evaluation = its first "
            << ctx.opts.eval_windows
            << " windows (ppl_valid16; fp32 4.026) and tinystories_sample_cs336.txt (ppl_cs336; "
               "stories protocol, fp32 3.548), disjoint from calibration\n"
            << "calibration: H = mean x x^T of each linear input (wq/wk/wv and w1/w3 share one), "
               "double; one-shot = from the fp32 model ("
            << ctx.calibration_seconds
            << " s, shared by all rows); sequential = per block, through the already-quantized "
               "blocks (GPTQ's protocol)\n";
  std::cout << "\n== table: perplexity, size and time of every quantizer ==\n";
  ctx.results.print(std::cout, "table");
  std::cout
      << "notes:\n"
      << "  group = weights per scale group along the axis (row: columns of a row, as LUT-GEMM "
         "and the kernels; col: rows of an input column, ShiftAddLLM's column-wise geometry); "
         "whole = one group per row/column.\n"
      << "  fallback_layers: group sizes that do not divide a layer's grouped dimension use "
         "whole rows/columns there: w2 (172 columns) at row groups 32 and 64; w1/w3 (172 rows) "
         "at column groups 32 and 64, and wk/wv (32 rows) at column group 64.\n"
      << "  bits_per_weight and model_bytes count each format's own storage: RTN/GPTQ pack "
         "codes at b bits plus an fp16 scale and a b-bit zero per group; BCQ/ShiftAdd store b "
         "sign planes plus fp32 scales per (group, plane), or 3 (sign, exponent) int8 pairs per "
         "scale with APoT; model_bytes adds the fp32 embedding and norms.\n"
      << "  quant_seconds: quantizer time for all linears (1 thread); calib_seconds: the "
         "calibration forward passes the row used.\n"
      << "  on this model group 64 and whole give the same rows: every layer but w2 has 64 "
         "inputs (and w2 falls back to whole rows), and with column groups only wq/wo/w2 have 64 "
         "rows.\n"
      << "  BCQ/ShiftAdd at b bits store more than RTN/GPTQ at b bits (fp32 scales per plane): "
         "compare at equal bits_per_weight as well as at equal bits.\n"
      << "  evaluation uses the dense reconstruction of the quantized weights; the packed "
         "multiply check below runs one configuration on the packed planes.\n";
  std::cout << "\n== mixed bits: allocations (bits per layer in the order wq wk wv wo w1 w2 w3, "
               "layers separated by |) ==\n";
  ctx.results.print(std::cout, "allocation");
  std::cout << "\n== sensitivity: ShiftAddLLM eq. 3 criterion vs measured damage (one layer at 2 "
               "bits, "
            << mixed_method().name << " group " << mixed_group << ") ==\n";
  ctx.results.print(std::cout, "sensitivity");
  ctx.results.print(std::cout, "kendall");
  std::cout << "\n== packed reference multiply vs dense reconstruction ==\n";
  ctx.results.print(std::cout, "multiply");
  std::cout << "\n== the paper's expectation at 3 and 2 bits (ppl_valid16, one-shot) ==\n";
  ctx.results.print(std::cout, "expectation");
  for (const int bits : {3, 2}) {
    const auto groups_where = [&](const char* field) {
      std::string groups;
      for (const examples::record& r : ctx.results.records()) {
        if (r["section"] == "expectation" && r["bits"] == bits && r[field].get<bool>()) {
          groups += (groups.empty() ? "" : ", ") + r["group"].get<std::string>();
        }
      }
      return groups.empty() ? std::string("no group") : "groups " + groups;
    };
    std::cout << bits << " bits: GPTQ beats RTN at " << groups_where("gptq_beats_rtn")
              << "; ShiftAdd (row) beats GPTQ at " << groups_where("shiftadd_row_beats_gptq")
              << "; ShiftAdd (col) beats GPTQ at " << groups_where("shiftadd_col_beats_gptq")
              << '\n';
  }
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);  // the results are single-threaded figures
  options opts;
  examples::cli cli(
      "reparam_shiftadd_quantize",
      "Quantizes every linear layer of the bundled llama2.c stories260K with RTN, GPTQ, BCQ,\n"
      "ShiftAddLLM (column-wise, row-group and APoT scales) and mixed bits, and prints\n"
      "perplexity, model bytes, bits per weight and quantization time.");
  cli.add_option("--data", &opts.data_dir, "DIR",
                 "data directory with llama2c_stories260K/ and tinystories_text/");
  cli.add_option("--model", &opts.model_path, "FILE",
                 "checkpoint (default: DIR/llama2c_stories260K/stories260K.bin)");
  cli.add_option("--json", &opts.json_path, "FILE", "also write the results as a JSON list");
  cli.add_option("--windows", &opts.eval_windows, "N",
                 "evaluation windows of 512 tokens from the start of tinystories_valid_head.txt");
  cli.add_option("--calib-windows", &opts.calib_windows, "N",
                 "calibration windows of 512 tokens from the end of tinystories_valid_head.txt");
  cli.add_option("--tau-windows", &opts.tau_windows, "N",
                 "evaluation windows per single-layer run of the sensitivity study");
  cli.add_option("--multiply-windows", &opts.multiply_windows, "N",
                 "evaluation windows run through the packed reference multiply");
  cli.add_option("--rounds", &opts.rounds, "N", "BCQ alternating rounds");
  cli.add_flag("--all-sequential", &opts.all_sequential,
               "sequential calibration for every GPTQ/ShiftAdd row (slower)");
  if (const int code = cli.parse(argc, argv, std::cout, std::cerr);
      code != examples::cli::proceed) {
    return code;
  }
  if (opts.model_path.empty()) {
    opts.model_path = opts.data_dir + "/llama2c_stories260K/stories260K.bin";
  }
  if (opts.eval_windows < 1 || opts.calib_windows < 1 || opts.tau_windows < 1 ||
      opts.multiply_windows < 1 || opts.rounds < 0) {
    std::cerr << "reparam_shiftadd_quantize: window counts must be >= 1 and rounds >= 0\n";
    return 2;
  }

  try {
    const auto total_start = clock_type::now();
    llama::model model = llama::load_model(opts.model_path);
    const llama::tokenizer tok = llama::tokenizer::load(
        opts.data_dir + "/llama2c_stories260K/tok512.bin", model.config().vocab_size);
    const std::string valid_text =
        llama::read_text_file(opts.data_dir + "/tinystories_text/tinystories_valid_head.txt");
    const std::string sample_text =
        llama::read_text_file(opts.data_dir + "/tinystories_text/tinystories_sample_cs336.txt");

    context ctx{opts, std::move(model), {}, {}, {}, {}, {}, {}, 0.0, 0, 0, 0.0, 0.0, {}};
    const llama::model_config& c = ctx.model.config();
    for (int layer = 0; layer < c.n_layers; ++layer) {
      for (const llama::linear_kind kind : llama::all_linear_kinds) {
        ctx.linears.push_back({layer, kind});
        ctx.fp32.push_back(ctx.model.dense_weight({layer, kind}));
        ctx.linear_parameters += ctx.fp32.back().size();
      }
    }
    ctx.fp32_other_bytes =
        static_cast<std::size_t>(ctx.model.parameter_count() - ctx.linear_parameters) * 4;

    // The split: evaluation from the start of the paragraph stream, calibration from its end.
    std::cerr << "encoding text..." << std::flush;
    const std::vector<int> stream = llama::paragraph_stream(tok, valid_text);
    const auto eval_tokens = static_cast<std::size_t>(opts.eval_windows * window_size + 1);
    ctx.calibration = examples::tail_windows(stream, opts.calib_windows, window_size,
                                             static_cast<reparam::index>(eval_tokens));
    ctx.valid_stream.assign(stream.begin(), stream.begin() + static_cast<long>(eval_tokens));
    ctx.stories = llama::story_sequences(tok, sample_text);
    std::cerr << " " << stream.size() << " tokens\n";

    ctx.fp32_valid = ppl_valid(ctx, opts.eval_windows);
    ctx.fp32_stories = ppl_stories(ctx);
    std::cerr << "fp32 ppl " << ctx.fp32_valid << " / " << ctx.fp32_stories << "\ncalibrating..."
              << std::flush;
    const auto calib_start = clock_type::now();
    ctx.hessians = examples::calibrate_hessians(ctx.model, ctx.calibration, 0, c.n_layers);
    ctx.calibration_seconds = seconds_since(calib_start);
    std::cerr << " " << ctx.calibration_seconds << " s\n";

    section_table(ctx);
    section_mixed(ctx);
    section_multiply(ctx);
    section_expectation(ctx);
    print_report(ctx);
    std::cout << "\ntotal " << seconds_since(total_start) << " s\n";
    if (!opts.json_path.empty()) {
      ctx.results.write_json(opts.json_path);
      std::cout << "wrote " << ctx.results.records().size() << " records to " << opts.json_path
                << '\n';
    }
  } catch (const std::exception& e) {
    std::cerr << "reparam_shiftadd_quantize: " << e.what() << '\n';
    return 1;
  }
  return 0;
}

// SPDX-License-Identifier: Apache-2.0
// Definitions for reparam/unlearn/ablation.hpp: schedule constructors, validation of a whole
// residual stream before anything is written, and the per-writer folds (through projector.hpp).
#ifndef REPARAM_UNLEARN_DETAIL_ABLATION_IMPL_HPP
#define REPARAM_UNLEARN_DETAIL_ABLATION_IMPL_HPP

#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/views.hpp>
#include <reparam/unlearn/ablation.hpp>  // the declarations (this file is included at its end)
#include <reparam/unlearn/projector.hpp>
#include <reparam/unlearn/subspace.hpp>

namespace reparam::unlearn {

inline ablation_schedule ablation_schedule::uniform(double s, int layers) {
  constexpr const char* fn = "unlearn::ablation_schedule::uniform";
  reparam::detail::check(std::isfinite(s), fn, "s ", s, " must be finite");
  reparam::detail::check(layers >= 0, fn, "layers ", layers, " must be >= 0");
  ablation_schedule schedule;
  schedule.embedding_strength = s;
  schedule.layer_strength.assign(static_cast<std::size_t>(layers), s);
  return schedule;
}

inline ablation_schedule ablation_schedule::kernel(double peak, double width, double max,
                                                   double min, int layers) {
  constexpr const char* fn = "unlearn::ablation_schedule::kernel";
  reparam::detail::check(std::isfinite(peak) && std::isfinite(max) && std::isfinite(min), fn,
                         "peak ", peak, ", max ", max, " and min ", min, " must be finite");
  reparam::detail::check(std::isfinite(width) && width > 0.0, fn, "width ", width,
                         " must be finite and > 0");
  reparam::detail::check(layers >= 0, fn, "layers ", layers, " must be >= 0");
  ablation_schedule schedule;
  schedule.embedding_strength = 0.0;
  schedule.layer_strength.resize(static_cast<std::size_t>(layers), 0.0);
  for (int l = 0; l < layers; ++l) {
    const double distance = std::abs(static_cast<double>(l) - peak);
    if (distance <= width) {
      schedule.layer_strength[static_cast<std::size_t>(l)] = max + (distance / width) * (min - max);
    }
  }
  return schedule;
}

namespace detail {

/// The residual-coordinate size and the other size of a writer's weight.
template <class T>
index writer_residual_size(const residual_writer<T>& writer) {
  return writer.layout == writer_layout::residual_rows ? writer.weight().rows()
                                                       : writer.weight().cols();
}

/// Effective strength of one writer under the schedule (layer range checked by the caller).
template <class T>
double writer_strength(const residual_writer<T>& writer, const ablation_schedule& schedule) {
  double base = 1.0;
  if (writer.layer < 0) {
    base = schedule.embedding_strength;
  } else if (!schedule.layer_strength.empty()) {
    base = schedule.layer_strength[static_cast<std::size_t>(writer.layer)];
  }
  return base * writer.scale;
}

/// Every check of fold_residual_ablation, before anything is written.
template <class T>
void check_residual_stream(const residual_stream<T>& stream, const subspace& directions,
                           const ablation_schedule& schedule) {
  constexpr const char* fn = "unlearn::fold_residual_ablation";
  using reparam::detail::check;
  const index d = stream.width;
  check(d >= 1, fn, "stream.width ", d, " must be >= 1");
  check(directions.dim() == d, fn, "directions have dim ", directions.dim(),
        " but stream.width is ", d);
  check(!stream.writers.empty(), fn, "stream.writers is empty");
  const auto listed = static_cast<index>(stream.writers.size());
  check(stream.expected_writers < 0 || stream.expected_writers >= listed, fn,
        "stream.expected_writers ", stream.expected_writers, " is smaller than the ", listed,
        " writers listed");
  check(std::isfinite(schedule.embedding_strength), fn, "schedule.embedding_strength ",
        schedule.embedding_strength, " must be finite");
  for (std::size_t l = 0; l < schedule.layer_strength.size(); ++l) {
    check(std::isfinite(schedule.layer_strength[l]), fn, "schedule.layer_strength[", l, "] ",
          schedule.layer_strength[l], " must be finite");
  }
  const auto layers = static_cast<index>(schedule.layer_strength.size());
  std::set<const void*> seen;
  for (const residual_writer<T>& w : stream.writers) {
    const std::string& name = w.name;
    check(w.layer >= -1, fn, "writer '", name, "' has layer ", w.layer, " (must be >= -1)");
    check(layers == 0 || w.layer < layers, fn, "writer '", name, "' has layer ", w.layer,
          " but the schedule has ", layers, " layer strengths");
    check(std::isfinite(w.scale), fn, "writer '", name, "' has scale ", w.scale,
          " (must be finite)");
    const matrix_map<T> weight = w.weight();
    const vector_map<T> bias = w.bias();
    check(weight.data() != nullptr && weight.size() > 0, fn, "writer '", name,
          "' has an empty weight (", weight.rows(), " x ", weight.cols(), ")");
    const bool rows = w.layout == writer_layout::residual_rows;
    check(writer_residual_size(w) == d, fn, "writer '", name, "' is ", weight.rows(), " x ",
          weight.cols(), " but its residual ", rows ? "rows" : "columns", " must number ", d);
    check(!w.has_bias() || bias.size() == d, fn, "writer '", name, "' has a bias of size ",
          bias.size(), " (must be ", d, ")");
    check(seen.insert(static_cast<const void*>(weight.data())).second, fn, "writer '", name,
          "' views a weight already listed (a tensor must be folded once)");
    if (w.has_bias()) {
      check(seen.insert(static_cast<const void*>(bias.data())).second, fn, "writer '", name,
            "' views a bias already listed");
    }
    for (index r = 0; r < weight.rows(); ++r) {
      for (index c = 0; c < weight.cols(); ++c) {
        check(std::isfinite(weight(r, c)), fn, "writer '", name, "' weight has non-finite value ",
              weight(r, c), " at (", r, ", ", c, ")");
      }
    }
    for (index i = 0; i < bias.size(); ++i) {
      check(std::isfinite(bias(i)), fn, "writer '", name, "' bias has non-finite value ", bias(i),
            " at ", i);
    }
  }
}

}  // namespace detail

template <class T>
ablation_report fold_residual_ablation(residual_stream<T>& stream, const subspace& directions,
                                       const ablation_schedule& schedule) {
  detail::check_residual_stream(stream, directions, schedule);
  // One eraser per distinct strength (the constructor checks the basis once per strength; a
  // non-orthonormal basis throws here, still before anything is written).
  std::map<double, orthogonal_eraser> erasers;
  for (const residual_writer<T>& w : stream.writers) {
    const double s = detail::writer_strength(w, schedule);
    if (erasers.find(s) == erasers.end()) {
      erasers.emplace(s, orthogonal_eraser(directions, s));
    }
  }
  ablation_report report;
  for (residual_writer<T>& w : stream.writers) {
    const double s = detail::writer_strength(w, schedule);
    const orthogonal_eraser& eraser = erasers.at(s);
    const matrix_map<T> weight = w.weight();
    vector_map<T> bias = w.bias();
    fold_report folded;
    if (w.layout == writer_layout::residual_rows) {
      folded =
          w.has_bias() ? fold_output_side(eraser, weight, bias) : fold_output_side(eraser, weight);
    } else {
      folded = fold_embedding_rows(eraser, weight);
      if (w.has_bias()) {
        // b [d] as a d x 1 matrix whose rows are residual coordinates.
        fold_output_side(eraser,
                         matrix_map<T>(bias.data(), bias.size(), 1, Eigen::OuterStride<>(1)));
      }
    }
    report.folded.push_back(w.name);
    report.strength.push_back(s);
    report.per_writer.push_back(folded);
    if (w.tied_reader) {
      report.tied.push_back(w.name);
    }
  }
  const auto listed = static_cast<index>(stream.writers.size());
  report.missing = stream.expected_writers < 0 ? 0 : stream.expected_writers - listed;
  report.uniform = erasers.size() == 1;
  if (stream.expected_writers < 0) {
    report.reason = "expected_writers is unknown: cannot tell whether every writer is listed";
  } else if (report.missing > 0) {
    report.reason = std::to_string(report.missing) + " of " +
                    std::to_string(stream.expected_writers) +
                    " writers are not listed: the unlisted ones still write into span Q";
  } else if (!report.uniform) {
    report.reason = "the effective strength differs between writers (" +
                    std::to_string(erasers.size()) + " distinct values)";
  }
  report.exact = report.reason.empty();
  return report;
}

}  // namespace reparam::unlearn

#endif  // REPARAM_UNLEARN_DETAIL_ABLATION_IMPL_HPP

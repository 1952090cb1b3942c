// SPDX-License-Identifier: Apache-2.0
// Calibrators: the ways a uniform quantizer's range is chosen from calibration data. Min-max and
// moving-average min-max observers (ONNX Runtime's CalibMovingAverage), the quantile with linear
// interpolation (torch.quantile / numpy.percentile default), RepQ-ViT's percentile search, GPTQ's
// MSE grid search with a p-norm, and AWQ's output-aware weight clip search.
// Sources: research/scale_and_gumbel.md A1 (formulas and defaults, with the repositories cited).
//
// Every calibrator turns a candidate range [lo, hi] per slot into (scale, zero point) with
// make_uniform_quantizer's rule (asymmetric ranges widened to include 0, min_scale floor), so a
// calibrated quantizer always represents 0 exactly. (RepQ-ViT's own percentile search does not
// widen the range; GPTQ and AWQ do or clamp the zero point.) Searches score a candidate by
// fake-quantizing with the spec's rounding mode in the data's Scalar and summing errors in double.
// Calibration inputs must be finite with |x| <= FLT_MAX / 2 (ranges are stored in float).
// These functions allocate (calibration time); all are thread safe on distinct objects.
#ifndef REPARAM_SCALE_CALIBRATE_HPP
#define REPARAM_SCALE_CALIBRATE_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include <reparam/core/error.hpp>
#include <reparam/core/index.hpp>
#include <reparam/core/row_range.hpp>
#include <reparam/core/views.hpp>
#include <reparam/scale/quantizer.hpp>

namespace reparam::scale {

/// Per-slot range (lo[i] <= hi[i]).
struct value_range {
  vector<float> lo;
  vector<float> hi;
};

namespace detail {

/// Refuses per_row/per_group for an activation observer (slots would depend on the token count).
inline void check_observer_spec(const uniform_spec& spec, const char* function) {
  check_uniform_spec(spec, function);
  reparam::detail::check(
      spec.axis == granularity::per_tensor || spec.axis == granularity::per_column, function,
      "axis ", spec.axis == granularity::per_row ? "per_row" : "per_group",
      " is refused: observers collect activations, whose rows are tokens (their number changes "
      "between batches); use per_tensor or per_column");
}

/// Per-slot min and max (in double) of a batch x [rows >= 1, cols >= 1] for per_tensor or
/// per_column; validates x first (finite, |x| <= FLT_MAX / 2, cols == expected_cols if >= 0).
template <class Derived>
void batch_min_max(const Eigen::MatrixBase<Derived>& x, granularity axis, index expected_cols,
                   const char* function, std::vector<double>& lo, std::vector<double>& hi) {
  using scalar_type = typename Derived::Scalar;
  reparam::detail::check(x.cols() >= 1, function, "x has 0 columns");
  reparam::detail::check(expected_cols < 0 || x.cols() == expected_cols, function, "x has ",
                         x.cols(), " columns but the observer saw ", expected_cols, " before");
  const input_rows<scalar_type> in = rows_of(x, function);
  check_finite_rows(function, "x", in, all_rows(x.rows()), x.cols(),
                    static_cast<double>(max_range_magnitude));
  const auto slots = static_cast<std::size_t>(axis == granularity::per_column ? x.cols() : 1);
  lo.assign(slots, std::numeric_limits<double>::infinity());
  hi.assign(slots, -std::numeric_limits<double>::infinity());
  for (index r = 0; r < x.rows(); ++r) {
    const scalar_type* row = in.row(r);
    for (index c = 0; c < x.cols(); ++c) {
      const std::size_t s = axis == granularity::per_column ? static_cast<std::size_t>(c) : 0;
      const auto v = static_cast<double>(row[c]);
      lo[s] = std::min(lo[s], v);
      hi[s] = std::max(hi[s], v);
    }
  }
}

/// value_range from double bounds (rounded to float, which keeps lo <= hi: rounding is monotone).
inline value_range to_value_range(const std::vector<double>& lo, const std::vector<double>& hi) {
  value_range out;
  const auto slots = static_cast<index>(lo.size());
  out.lo.resize(slots);
  out.hi.resize(slots);
  for (index s = 0; s < slots; ++s) {
    out.lo[s] = static_cast<float>(lo[static_cast<std::size_t>(s)]);
    out.hi[s] = static_cast<float>(hi[static_cast<std::size_t>(s)]);
  }
  return out;
}

/// The state both observers share: the spec, the column count fixed by the first batch, and the
/// per-slot range in double. observe() takes each batch's min/max (batch_min_max checks it); the
/// first batch sets the range, later ones go through merge(range, batch, is_lo) per bound.
class observed_ranges {
 public:
  observed_ranges(const uniform_spec& spec, const char* function) : spec_(spec) {
    check_observer_spec(spec, function);
  }
  template <class Derived, class Merge>
  void observe(const Eigen::MatrixBase<Derived>& x, const char* function, Merge merge) {
    reparam::detail::static_check_input<Derived>();
    if (x.rows() == 0) {
      return;
    }
    std::vector<double> lo;
    std::vector<double> hi;
    batch_min_max(x, spec_.axis, batches_ > 0 ? cols_ : -1, function, lo, hi);
    if (batches_ == 0) {
      lo_ = std::move(lo);
      hi_ = std::move(hi);
      cols_ = x.cols();
    } else {
      for (std::size_t s = 0; s < lo_.size(); ++s) {
        merge(lo_[s], lo[s], true);
        merge(hi_[s], hi[s], false);
      }
    }
    ++batches_;
  }
  value_range range(const char* function) const {
    reparam::detail::check(batches_ > 0, function, "observed no data");
    return to_value_range(lo_, hi_);
  }
  uniform_quantizer quantizer(const value_range& r) const {
    return make_uniform_quantizer(spec_, r.lo, r.hi);
  }
  index batches() const noexcept { return batches_; }

 private:
  uniform_spec spec_;
  index cols_ = -1;
  index batches_ = 0;
  std::vector<double> lo_;  ///< per slot, the combined range of the values seen (in double)
  std::vector<double> hi_;
};

}  // namespace detail

/// Running min/max per slot over every batch observed. The slot layout comes from `spec`
/// (axis, group_size); the number of columns is fixed by the first batch (per_row/per_group
/// slots would change with the number of rows, so those axes are refused: observers are for
/// activations, whose rows are tokens: use per_tensor or per_column).
/// The constructor throws reparam::error on a refused axis or an invalid spec. Not thread safe
/// (observe mutates); allocates.
class minmax_observer {
 public:
  explicit minmax_observer(const uniform_spec& spec) : state_(spec, "scale::minmax_observer") {}
  /// Adds x [tokens, cols] (float or double). Throws reparam::error on a non-finite value, on a
  /// cols change, and leaves the observer unchanged then. Empty x (0 rows) is a no-op.
  /// Also refuses 0 columns and |x| > FLT_MAX / 2.
  template <class Derived>
  void observe(const Eigen::MatrixBase<Derived>& x) {
    state_.observe(x, "scale::minmax_observer::observe",
                   [](double& range, double batch, bool is_lo) {
                     range = is_lo ? std::min(range, batch) : std::max(range, batch);
                   });
  }
  /// Throws reparam::error ("... observed no data") if nothing was observed.
  value_range range() const { return state_.range("scale::minmax_observer::range"); }
  /// make_uniform_quantizer(spec, range()).
  uniform_quantizer quantizer() const { return state_.quantizer(range()); }
  /// Number of non-empty batches observed.
  index batches() const noexcept { return state_.batches(); }

 private:
  detail::observed_ranges state_;
};

/// Exponential moving average of each batch's min/max: the first batch sets the range, then
/// range += momentum * (batch_range - range) (ONNX Runtime CalibMovingAverage, constant 0.01).
/// The update runs in double as (1 - momentum) * range + momentum * batch_range (the same value
/// up to rounding, and monotone, so lo <= hi always holds). momentum must be in (0, 1]
/// (reparam::error otherwise); same axis rules, checks and no-op on empty x as minmax_observer.
class moving_average_minmax_observer {
 public:
  explicit moving_average_minmax_observer(const uniform_spec& spec, double momentum = 0.01)
      : state_(spec, "scale::moving_average_minmax_observer"), momentum_(momentum) {
    reparam::detail::check(momentum > 0.0 && momentum <= 1.0,
                           "scale::moving_average_minmax_observer", "momentum ", momentum,
                           " is outside (0, 1]");
  }
  template <class Derived>
  void observe(const Eigen::MatrixBase<Derived>& x) {
    const double keep = 1.0 - momentum_;
    state_.observe(x, "scale::moving_average_minmax_observer::observe",
                   [keep, this](double& range, double batch, bool) {
                     range = keep * range + momentum_ * batch;
                   });
  }
  value_range range() const { return state_.range("scale::moving_average_minmax_observer::range"); }
  uniform_quantizer quantizer() const { return state_.quantizer(range()); }
  index batches() const noexcept { return state_.batches(); }

 private:
  detail::observed_ranges state_;
  double momentum_;
};

namespace detail {

/// numpy's _lerp / torch.lerp: a + (b - a) t for t < 0.5, b - (b - a) (1 - t) otherwise (the
/// second form returns b exactly at t = 1).
inline double lerp_like_numpy(double a, double b, double t) noexcept {
  const double difference = b - a;
  return t >= 0.5 ? b - difference * (1.0 - t) : a + difference * t;
}

/// The p-quantile of sorted[0..count) (count >= 1, p in [0, 1]), linear interpolation at
/// position p * (count - 1): numpy.percentile(method="linear"), torch.quantile("linear").
inline double quantile_sorted(const double* sorted, index count, double p) noexcept {
  const double position = p * static_cast<double>(count - 1);
  const double below = std::floor(position);
  const auto i = std::min(static_cast<index>(below), count - 1);
  const index j = std::min(i + 1, count - 1);
  return lerp_like_numpy(sorted[i], sorted[j], position - below);
}

/// Rearranges values[0..count) so that every position quantile_sorted reads for p and 1 - p
/// (p in `percentiles`) holds the value a full sort would put there. The positions cluster at
/// both ends (p >= 0.5 near the top, 1 - p near the bottom), so: one nth_element at the highest
/// lower position and a sort of the prefix up to it, one at the lowest upper position and a sort
/// of the suffix from it. O(count + tails log tails) instead of a full sort.
inline void select_for_quantiles(std::vector<double>& values, index count,
                                 const std::vector<double>& percentiles) {
  index lower_end = -1;       // highest position in the lower half (inclusive)
  index upper_begin = count;  // lowest position in the upper half
  for (const double p : percentiles) {
    for (const double q : {p, 1.0 - p}) {
      const double position = q * static_cast<double>(count - 1);
      const auto i = std::min(static_cast<index>(std::floor(position)), count - 1);
      for (const index k : {i, std::min(i + 1, count - 1)}) {
        if (2 * k < count) {
          lower_end = std::max(lower_end, k);
        } else {
          upper_begin = std::min(upper_begin, k);
        }
      }
    }
  }
  const auto begin = values.begin();
  const auto end = values.begin() + count;
  if (lower_end >= 0) {
    std::nth_element(begin, begin + lower_end, end);
    std::sort(begin, begin + lower_end);
  }
  if (upper_begin < count) {
    const index from = std::max(upper_begin, lower_end + 1);
    std::nth_element(begin + lower_end + 1, begin + from, end);
    std::sort(begin + from + 1, end);
  }
}

/// Common checks of the calibrators for x [rows, cols]: non-empty, finite, |x| <= FLT_MAX / 2,
/// unit inner stride; returns the slot count of spec (which validates it).
template <class Derived>
index check_calibration_input(const Eigen::MatrixBase<Derived>& x, const uniform_spec& spec,
                              const char* function) {
  const index slots = slot_count(spec, x.rows(), x.cols(), function);
  reparam::detail::check(x.rows() >= 1 && x.cols() >= 1, function, "x is empty ([", x.rows(), ", ",
                         x.cols(), "])");
  check_finite_rows(function, "x", rows_of(x, function), all_rows(x.rows()), x.cols(),
                    static_cast<double>(max_range_magnitude));
  return slots;
}

/// Calls body(slot, values, count) for every slot of x [rows, cols] in slot order, with the
/// slot's entries in row-major order (per_column and per_tensor slots are gathered into buffer).
template <class Scalar, class Body>
void for_each_slot(input_rows<Scalar> x, index rows, index cols, const uniform_spec& spec,
                   std::vector<Scalar>& buffer, Body&& body) {
  switch (spec.axis) {
    case granularity::per_row:
      for (index r = 0; r < rows; ++r) {
        body(r, x.row(r), cols);
      }
      break;
    case granularity::per_group: {
      const index size = spec.group_size;
      const index groups = cols / size;
      for (index r = 0; r < rows; ++r) {
        for (index g = 0; g < groups; ++g) {
          body(r * groups + g, x.row(r) + g * size, size);
        }
      }
      break;
    }
    case granularity::per_column:
      buffer.resize(static_cast<std::size_t>(rows));
      for (index c = 0; c < cols; ++c) {
        for (index r = 0; r < rows; ++r) {
          buffer[static_cast<std::size_t>(r)] = x.row(r)[c];
        }
        body(c, buffer.data(), rows);
      }
      break;
    case granularity::per_tensor:
    default:
      buffer.resize(static_cast<std::size_t>(rows * cols));
      for (index r = 0; r < rows; ++r) {
        std::copy(x.row(r), x.row(r) + cols, buffer.data() + r * cols);
      }
      body(index{0}, buffer.data(), rows * cols);
      break;
  }
}

/// Min and max of values[0..count) (count >= 1), rounded to float.
template <class Scalar>
void min_max_float(const Scalar* values, index count, float& lo, float& hi) noexcept {
  Scalar low = values[0];
  Scalar high = values[0];
  for (index j = 1; j < count; ++j) {
    low = std::min(low, values[j]);
    high = std::max(high, values[j]);
  }
  lo = static_cast<float>(low);
  hi = static_cast<float>(high);
}

/// (Sum over the values of |fake_quantize(v) - v|^norm) / divisor (norm 2: squares), in
/// double; the fake-quantized value is computed in Scalar exactly as fake_quantize does.
/// A search only keeps a candidate whose error is strictly below `bound` (its best so far), so
/// the sum stops early once it reaches the bound (partial sums of non-negative terms never
/// decrease, nor does dividing them by divisor > 0): the value returned is then >= bound and the
/// search's choice is the same as with the full sum.
template <rounding Mode, class Scalar>
double fake_quantize_error(const Scalar* values, index count, slot_params p, int bits,
                           bool is_symmetric, double norm, double divisor, double bound) noexcept {
  uniform_spec spec;
  spec.bits = bits;
  spec.is_symmetric = is_symmetric;
  const auto code_min = static_cast<Scalar>(code_min_of(spec));
  const auto code_max = static_cast<Scalar>(code_max_of(spec));
  const auto s = static_cast<Scalar>(p.scale);
  const auto z = static_cast<Scalar>(p.zero_point);
  constexpr index chunk = 256;
  double sum = 0.0;
  for (index begin = 0; begin < count; begin += chunk) {
    const index end = std::min(count, begin + chunk);
    for (index j = begin; j < end; ++j) {
      const Scalar x_hat = s * (code_of<Mode>(values[j], s, z, code_min, code_max) - z);
      const double difference =
          std::fabs(static_cast<double>(x_hat) - static_cast<double>(values[j]));
      sum += norm == 2.0 ? difference * difference : std::pow(difference, norm);
    }
    if (sum / divisor >= bound) {
      break;
    }
  }
  return sum / divisor;
}

inline uniform_quantizer empty_quantizer(const uniform_spec& spec, index slots) {
  uniform_quantizer q;
  q.spec = spec;
  q.scale.resize(slots);
  q.zero_point.resize(slots);
  return q;
}

/// The per-slot range search of calibrate_percentile and calibrate_mse (x validated, `slots` its
/// slot count): for every slot, candidates(values, count, try_range) calls try_range(lo, hi) once
/// per candidate range in search order; each range is fake-quantized and scored with
/// fake_quantize_error (|x_hat - x|^norm, summed, divided by the slot's entry count when
/// `is_mean`), and the first candidate with the smallest error is kept.
template <class Derived, class Candidates>
uniform_quantizer search_slot_ranges(const Eigen::MatrixBase<Derived>& x, const uniform_spec& spec,
                                     index slots, double norm, bool is_mean, const char* function,
                                     Candidates&& candidates) {
  using scalar_type = typename Derived::Scalar;
  uniform_quantizer q = empty_quantizer(spec, slots);
  std::vector<scalar_type> buffer;
  with_rounding(spec.mode, [&](auto mode) {
    for_each_slot(
        rows_of(x, function), x.rows(), x.cols(), spec, buffer,
        [&](index slot, const scalar_type* values, index count) {
          const double divisor = is_mean ? static_cast<double>(count) : 1.0;
          double best = std::numeric_limits<double>::infinity();
          candidates(values, count, [&](float lo, float hi) {
            const slot_params candidate = params_from_range(lo, hi, spec.bits, spec.is_symmetric);
            const double error = fake_quantize_error<decltype(mode)::value>(
                values, count, candidate, spec.bits, spec.is_symmetric, norm, divisor, best);
            if (error < best) {
              best = error;
              q.scale[slot] = candidate.scale;
              q.zero_point[slot] = candidate.zero_point;
            }
          });
        });
  });
  return q;
}

/// The checks of the shrink searches (calibrate_mse, calibrate_output_clip) on grid and
/// max_shrink; returns the candidate count max(1, floor(max_shrink * grid)).
inline int check_shrink_grid(const char* function, int grid, double max_shrink) {
  reparam::detail::check(grid >= 1, function, "grid ", grid, " must be >= 1");
  reparam::detail::check(max_shrink >= 0.0 && max_shrink <= 1.0, function, "max_shrink ",
                         max_shrink, " is outside [0, 1]");
  return std::max(1, static_cast<int>(std::floor(max_shrink * grid)));
}

/// Shrink factor float(1 - i / grid) of candidate i.
inline float shrink_of(int i, int grid) noexcept {
  return static_cast<float>(1.0 - static_cast<double>(i) / grid);
}

}  // namespace detail

/// The p-quantile of `values` (p in [0, 1]) with linear interpolation at position p * (n - 1) of
/// the sorted values: torch.quantile(interpolation="linear") and numpy.percentile's default.
/// Throws reparam::error on empty input, p outside [0, 1] or a non-finite value. Allocates a copy.
/// The interpolation is numpy's / torch's lerp (a + (b - a) t for t < 0.5, else
/// b - (b - a) (1 - t)), so the result matches them bit for bit on float64 data. O(n)
/// (nth_element). Thread safe.
inline double quantile(const std::vector<double>& values, double p) {
  constexpr const char* function = "scale::quantile";
  reparam::detail::check(!values.empty(), function, "values is empty");
  reparam::detail::check(p >= 0.0 && p <= 1.0, function, "p ", p, " is outside [0, 1]");
  reparam::detail::check_finite(function, "values", values.data(),
                                static_cast<index>(values.size()));
  std::vector<double> work = values;
  const auto count = static_cast<index>(work.size());
  const double position = p * static_cast<double>(count - 1);
  const double below = std::floor(position);
  const auto i = std::min(static_cast<index>(below), count - 1);
  const auto at = work.begin() + i;
  std::nth_element(work.begin(), at, work.end());
  const double a = *at;
  const double b = i + 1 < count ? *std::min_element(at + 1, work.end()) : a;
  return detail::lerp_like_numpy(a, b, position - below);
}

/// RepQ-ViT's percentile initialization: for each slot and each p in `percentiles`,
/// [lo, hi] = [quantile(1 - p), quantile(p)] over the slot's entries; fake-quantize the slot and
/// keep the candidate with the smallest mean squared error (first one on ties).
/// x is [rows, cols]; spec.axis may be any granularity. Throws on empty x, non-finite x, an empty
/// or out-of-(0, 1] percentile list.
/// Also refuses p < 0.5 (quantile(1 - p) would exceed quantile(p)); so p = 1 is min-max. The
/// quantiles are computed in double on the values widened to double (numpy.percentile on the
/// float64 data), then rounded to float. O(entries) selection per slot (no sort); allocates.
template <class Derived>
uniform_quantizer calibrate_percentile(const Eigen::MatrixBase<Derived>& x,
                                       const uniform_spec& spec,
                                       const std::vector<double>& percentiles = {0.999, 0.9999,
                                                                                 0.99999}) {
  reparam::detail::static_check_input<Derived>();
  using scalar_type = typename Derived::Scalar;
  constexpr const char* function = "scale::calibrate_percentile";
  reparam::detail::check(!percentiles.empty(), function, "percentiles is empty");
  for (const double p : percentiles) {
    reparam::detail::check(p >= 0.5 && p <= 1.0, function, "percentile ", p,
                           " is outside [0.5, 1]");
  }
  const index slots = detail::check_calibration_input(x, spec, function);
  std::vector<double> sorted;
  return detail::search_slot_ranges(
      x, spec, slots, 2.0, true, function,
      [&](const scalar_type* values, index count, auto&& try_range) {
        sorted.assign(values, values + count);
        detail::select_for_quantiles(sorted, count, percentiles);
        for (const double p : percentiles) {
          const auto lo =
              static_cast<float>(detail::quantile_sorted(sorted.data(), count, 1.0 - p));
          const auto hi = static_cast<float>(detail::quantile_sorted(sorted.data(), count, p));
          try_range(lo, hi);
        }
      });
}

/// GPTQ's MSE grid search: for i in [0, max_shrink * grid), shrink p = 1 - i / grid, range
/// [p * lo, p * hi] of the slot's min/max, error sum |x_hat - x|^norm; keep the best per slot.
/// Defaults grid 100, max_shrink 0.8, norm 2.4 (IST-DASLab/gptq quant.py).
/// Candidates i = 0 .. max(1, floor(max_shrink * grid)) - 1, so i = 0 (min-max) is always tried;
/// p is rounded to float and multiplies the float min/max, as GPTQ does on float32 tensors; a
/// candidate replaces the best only if strictly better (first on ties). Requires grid >= 1,
/// max_shrink in [0, 1], norm > 0 and finite. O(candidates * entries) pow calls; allocates.
struct mse_search_params {
  int grid = 100;
  double max_shrink = 0.8;
  double norm = 2.4;
};
template <class Derived>
uniform_quantizer calibrate_mse(const Eigen::MatrixBase<Derived>& x, const uniform_spec& spec,
                                const mse_search_params& params = {}) {
  reparam::detail::static_check_input<Derived>();
  using scalar_type = typename Derived::Scalar;
  constexpr const char* function = "scale::calibrate_mse";
  const int candidates = detail::check_shrink_grid(function, params.grid, params.max_shrink);
  reparam::detail::check(std::isfinite(params.norm) && params.norm > 0.0, function, "norm ",
                         params.norm, " must be > 0 and finite");
  const index slots = detail::check_calibration_input(x, spec, function);
  return detail::search_slot_ranges(x, spec, slots, params.norm, false, function,
                                    [&](const scalar_type* values, index count, auto&& try_range) {
                                      float lo = 0.0f;
                                      float hi = 0.0f;
                                      detail::min_max_float(values, count, lo, hi);
                                      for (int i = 0; i < candidates; ++i) {
                                        const float shrink = detail::shrink_of(i, params.grid);
                                        try_range(shrink * lo, shrink * hi);
                                      }
                                    });
}

/// AWQ's output-aware weight clip (llm-awq auto_clip.py): weights w [out, in] quantized with
/// spec (per_row or per_group), calibration inputs x [tokens, in]. For each slot (row, group) and
/// shrink i in [0, max_shrink * grid): clip range = (1 - i / grid) * the slot's original range
/// (AWQ shrinks max |w|, i.e. symmetric clip of [min, max]), error = sum over tokens of
/// ((w_hat_g - w_g) . x_g)^2 (the slot's contribution to the output); keep the best per slot.
/// At most max_tokens rows of x are used (evenly strided). Defaults grid 20, max_shrink 0.5,
/// max_tokens 512.
/// Precisely: m = max |w_g| (float), candidate i = 0 .. max(1, floor(max_shrink * grid)) - 1
/// clips to [max(min w_g, -c), min(max w_g, c)] with c = m * float(1 - i / grid); w_hat_g is the
/// candidate quantizer applied to the unclipped w_g (codes clamp, as the returned quantizer will
/// do); strictly better replaces (first on ties). Tokens used: rows 0, k, 2k, ... of x with
/// k = ceil(tokens / max_tokens). Errors in double (one GEMM per group and candidate).
/// Throws reparam::error on an empty or non-finite w or x, x.cols() != w.cols(), another axis,
/// grid < 1, max_shrink outside [0, 1], max_tokens < 1. Allocates.
struct clip_search_params {
  int grid = 20;
  double max_shrink = 0.5;
  index max_tokens = 512;
};
template <class DerivedW, class DerivedX>
uniform_quantizer calibrate_output_clip(const Eigen::MatrixBase<DerivedW>& w,
                                        const Eigen::MatrixBase<DerivedX>& x,
                                        const uniform_spec& spec,
                                        const clip_search_params& params = {}) {
  reparam::detail::static_check_input<DerivedW>();
  reparam::detail::static_check_input<DerivedX>();
  using scalar_type = typename DerivedW::Scalar;
  using x_type = typename DerivedX::Scalar;
  constexpr const char* function = "scale::calibrate_output_clip";
  reparam::detail::check(
      spec.axis == granularity::per_row || spec.axis == granularity::per_group, function,
      "axis must be per_row or per_group (slots are parts of output rows), got axis ",
      static_cast<int>(spec.axis));
  const int candidates = detail::check_shrink_grid(function, params.grid, params.max_shrink);
  reparam::detail::check(params.max_tokens >= 1, function, "max_tokens ", params.max_tokens,
                         " must be >= 1");
  const index slots = detail::check_calibration_input(w, spec, function);
  reparam::detail::check(x.rows() >= 1, function, "x has no tokens (0 rows)");
  reparam::detail::check(x.cols() == w.cols(), function, "x has ", x.cols(), " columns but w has ",
                         w.cols(), " (x is [tokens, in])");
  const detail::input_rows<x_type> x_rows = detail::rows_of(x, function);
  detail::check_finite_rows(function, "x", x_rows, all_rows(x.rows()), x.cols());

  const index rows = w.rows();
  const index cols = w.cols();
  const index stride = (x.rows() + params.max_tokens - 1) / params.max_tokens;
  const index tokens = (x.rows() + stride - 1) / stride;
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic> x_used(tokens, cols);  // col-major
  for (index t = 0; t < tokens; ++t) {
    for (index c = 0; c < cols; ++c) {
      x_used(t, c) = static_cast<double>(x_rows.row(t * stride)[c]);
    }
  }
  const index size = spec.axis == granularity::per_group ? spec.group_size : cols;
  const index groups = cols / size;
  const detail::input_rows<scalar_type> w_rows = detail::rows_of(w, function);
  const auto code_min = static_cast<scalar_type>(detail::code_min_of(spec));
  const auto code_max = static_cast<scalar_type>(detail::code_max_of(spec));

  uniform_quantizer q = detail::empty_quantizer(spec, slots);
  std::vector<float> lo(static_cast<std::size_t>(rows));
  std::vector<float> hi(static_cast<std::size_t>(rows));
  std::vector<double> best(static_cast<std::size_t>(rows));
  std::vector<detail::slot_params> params_of_row(static_cast<std::size_t>(rows));
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic> difference(size, rows);  // col per row
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic> output_error(tokens, rows);
  detail::with_rounding(spec.mode, [&](auto mode) {
    for (index g = 0; g < groups; ++g) {
      for (index r = 0; r < rows; ++r) {
        const auto u = static_cast<std::size_t>(r);
        detail::min_max_float(w_rows.row(r) + g * size, size, lo[u], hi[u]);
        best[u] = std::numeric_limits<double>::infinity();
      }
      for (int i = 0; i < candidates; ++i) {
        const float shrink = detail::shrink_of(i, params.grid);
        for (index r = 0; r < rows; ++r) {
          const auto u = static_cast<std::size_t>(r);
          const float clip = std::max(std::fabs(lo[u]), std::fabs(hi[u])) * shrink;
          const detail::slot_params p = detail::params_from_range(
              std::max(lo[u], -clip), std::min(hi[u], clip), spec.bits, spec.is_symmetric);
          params_of_row[u] = p;
          const auto s = static_cast<scalar_type>(p.scale);
          const auto z = static_cast<scalar_type>(p.zero_point);
          const scalar_type* w_run = w_rows.row(r) + g * size;
          for (index j = 0; j < size; ++j) {
            const scalar_type w_hat =
                s *
                (detail::code_of<decltype(mode)::value>(w_run[j], s, z, code_min, code_max) - z);
            difference(j, r) = static_cast<double>(w_hat) - static_cast<double>(w_run[j]);
          }
        }
        output_error.noalias() = x_used.middleCols(g * size, size) * difference;
        for (index r = 0; r < rows; ++r) {
          const auto u = static_cast<std::size_t>(r);
          const double error = output_error.col(r).squaredNorm();
          if (error < best[u]) {
            best[u] = error;
            q.scale[r * groups + g] = params_of_row[u].scale;
            q.zero_point[r * groups + g] = params_of_row[u].zero_point;
          }
        }
      }
    }
  });
  return q;
}

/// Min-max calibration in one call (no search).
/// Per slot: make_uniform_quantizer(spec, float(min), float(max)) of the slot's entries, any
/// granularity. Throws reparam::error on empty x, non-finite x, |x| > FLT_MAX / 2 or a bad spec.
/// Allocates.
template <class Derived>
uniform_quantizer calibrate_minmax(const Eigen::MatrixBase<Derived>& x, const uniform_spec& spec) {
  reparam::detail::static_check_input<Derived>();
  using scalar_type = typename Derived::Scalar;
  constexpr const char* function = "scale::calibrate_minmax";
  const index slots = detail::check_calibration_input(x, spec, function);
  vector<float> lo(slots);
  vector<float> hi(slots);
  std::vector<scalar_type> buffer;
  detail::for_each_slot(detail::rows_of(x, function), x.rows(), x.cols(), spec, buffer,
                        [&](index slot, const scalar_type* values, index count) {
                          detail::min_max_float(values, count, lo[slot], hi[slot]);
                        });
  return make_uniform_quantizer(spec, lo, hi);
}

}  // namespace reparam::scale

#endif  // REPARAM_SCALE_CALIBRATE_HPP
